"""The store conformance suite: every backend must pass every test here.

The ``store`` fixture (tests/store/conftest.py) runs each test over MemoryStore, LmdbStore and
a ForwardingStore over a MemoryStore. A new backend joins by adding itself to that fixture.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import cast

import anyio
import msgspec
import pytest

from aion import events as ev
from aion.errors import InvalidArgument, SequenceConflict
from aion.store import (
    Append,
    ApprovalRow,
    ApprovalStatus,
    EventStore,
    InboxCommand,
    IndexRow,
    Status,
    SupportsWriteHook,
    TimerRow,
    WaitpointRow,
    Write,
)

from ._util import T0, FailAtTable, at, record, signal, signals, started

# --- appends and reads ---------------------------------------------------------------------------


async def test_round_trip_every_event_type(store: EventStore) -> None:
    from tests.test_codec import sample_events

    samples = [
        msgspec.structs.replace(e, workflow_id="wf", tenant="default")
        if isinstance(e, ev.WorkflowStarted)
        else e
        for e in sample_events()
    ]
    events = [msgspec.structs.replace(e, seq=i + 1) for i, e in enumerate(samples)]
    assert await store.append("wf", events, 0) == len(events)
    assert await store.read_history("wf") == events
    assert await store.head("wf") == len(events)


async def test_range_reads(store: EventStore) -> None:
    await store.append("wf", [started(), *signals(2, 9)], 0)
    history = await store.read_history("wf")
    assert [e.seq for e in history] == list(range(1, 11))
    assert await store.read_history("wf", from_seq=4) == history[3:]
    assert await store.read_history("wf", from_seq=4, to_seq=6) == history[3:6]
    assert await store.read_history("wf", from_seq=11) == []
    assert await store.read_history("wf", from_seq=0, to_seq=1) == history[:1]
    assert await store.read_history("unknown") == []
    assert await store.head("unknown") == 0


async def test_stale_expected_seq_writes_nothing(store: EventStore) -> None:
    await store.append("wf", [started(), signal(2)], 0)
    with pytest.raises(SequenceConflict) as info:
        await store.append("wf", [signal(2, name="late")], 1)
    assert info.value.expected_seq == 1
    assert info.value.actual_seq == 2
    assert "wf" in str(info.value)
    with pytest.raises(SequenceConflict):
        await store.append("wf", [signal(4)], 3)  # ahead of the head is stale too
    history = await store.read_history("wf")
    assert [e.seq for e in history] == [1, 2]
    assert isinstance(history[1], ev.SignalReceived) and history[1].name == "go"


async def test_new_history_must_expect_zero(store: EventStore) -> None:
    await store.append("wf", [started()], 0)
    with pytest.raises(SequenceConflict):
        await store.append("wf", [started()], 0)  # idempotent start relies on this


async def test_concurrent_appends_at_same_head_have_one_winner(store: EventStore) -> None:
    await store.append("wf", [started()], 0)
    outcomes: list[str] = []

    async def contender(i: int) -> None:
        try:
            await store.append("wf", [signal(2, name=f"c{i}")], 1)
            outcomes.append(f"c{i}")
        except SequenceConflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(contender, i)
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1
    assert outcomes.count("conflict") == 19
    history = await store.read_history("wf")
    assert len(history) == 2
    second = history[1]
    assert isinstance(second, ev.SignalReceived) and second.name == winners[0]


@pytest.mark.parametrize(
    ("seqs", "expected"),
    [([3], 1), ([2, 4], 1), ([2, 2], 1), ([1], 1), ([0], 0)],
)
async def test_non_contiguous_sequences_rejected(
    store: EventStore, seqs: list[int], expected: int
) -> None:
    if expected:
        await store.append("wf", [started()], 0)
    with pytest.raises(InvalidArgument, match="contiguous"):
        await store.append("wf", [signal(s) for s in seqs], expected)
    assert await store.head("wf") == expected


async def test_empty_append_and_bad_ids_rejected(store: EventStore) -> None:
    with pytest.raises(InvalidArgument, match="no events"):
        await store.append("wf", [], 0)
    for bad in ["", "a\x00b", "x" * 300]:
        with pytest.raises(InvalidArgument):
            await store.append(bad, [started(workflow_id=bad)], 0)
    with pytest.raises(InvalidArgument, match="tenant"):
        await store.read_history("wf", tenant="")


async def test_started_event_must_match_its_history(store: EventStore) -> None:
    with pytest.raises(InvalidArgument, match="WorkflowStarted"):
        await store.append("wf", [started(workflow_id="other")], 0)
    with pytest.raises(InvalidArgument, match="WorkflowStarted"):
        await store.append("wf", [started(workflow_id="wf", tenant="acme")], 0)


async def test_hundred_thousand_event_history(store: EventStore) -> None:
    await store.append("big", [started(workflow_id="big")], 0)
    head = 1
    while head < 100_000:
        n = min(10_000, 100_000 - head)
        head = await store.append("big", signals(head + 1, n), head)
    assert head == 100_000
    history = await store.read_history("big")
    assert len(history) == 100_000
    assert [e.seq for e in history] == list(range(1, 100_001))
    tail = await store.read_history("big", from_seq=99_990)
    assert [e.seq for e in tail] == list(range(99_990, 100_001))


# --- runs ----------------------------------------------------------------------------------------


async def test_run_chain_and_current_run_segment(store: EventStore) -> None:
    assert await store.run_chain("wf") == []
    assert await store.read_current_run("wf") == []
    first = [started(1, run_id="r1"), signal(2)]
    await store.append("wf", first, 0)
    closing = ev.WorkflowContinuedAsNew(
        seq=3, at=at(3), new_run_id="r2", workflow_type="order", input=b"\x91\x01"
    )
    second_start = msgspec.structs.replace(
        started(4, run_id="r2"), continued_from_run_id="r1", input=b"\x91\x01"
    )
    await store.append("wf", [closing, second_start, signal(5)], 2)
    chain = await store.run_chain("wf")
    assert [(r.run_id, r.first_seq, r.last_seq) for r in chain] == [("r1", 1, 3), ("r2", 4, 5)]
    assert chain[1].started_at == at(4)
    current = await store.read_current_run("wf")
    assert [e.seq for e in current] == [4, 5]
    assert current[0] == second_start
    assert len(await store.read_history("wf")) == 5


async def test_read_workflow_and_heads_read_one_snapshot(store: EventStore) -> None:
    assert await store.read_workflow("wf") == (None, [])
    assert await store.heads([]) == []
    await store.commit(
        Write(
            appends=[Append("wf", [started(1, run_id="r1"), signal(2)], 0)],
            workflows=[record("wf", run_id="r1")],
        )
    )
    closing = ev.WorkflowContinuedAsNew(
        seq=3, at=at(3), new_run_id="r2", workflow_type="order", input=b"\x91\x01"
    )
    second_start = msgspec.structs.replace(
        started(4, run_id="r2"), continued_from_run_id="r1", input=b"\x91\x01"
    )
    await store.commit(
        Write(
            appends=[Append("wf", [closing, second_start], 2)],
            workflows=[record("wf", run_id="r2")],
        )
    )
    row, events = await store.read_workflow("wf")
    assert row is not None and row.run_id == "r2"
    assert events == await store.read_current_run("wf") and [e.seq for e in events] == [4]
    assert await store.read_workflow("wf", tenant="other") == (None, [])
    await store.append("w2", [started(1, "w2", tenant="acme")], 0, tenant="acme")
    assert await store.heads([("default", "wf"), ("acme", "w2"), ("default", "w2")]) == [4, 1, 0]
    with pytest.raises(InvalidArgument):
        await store.heads([("default", "")])


# --- atomic writes -------------------------------------------------------------------------------


async def test_one_write_spans_histories_and_rows(store: EventStore) -> None:
    await store.append("parent", [started(workflow_id="parent")], 0)
    child_started = ev.ChildStarted(
        seq=2,
        at=at(2),
        child_seq=1,
        child_workflow_id="child",
        child_run_id="c1",
        workflow_type="order",
    )
    timer = TimerRow(due=at(100), tenant="default", workflow_id="child", timer_id="t1")
    result = await store.commit(
        Write(
            appends=[
                Append("parent", [child_started], 1),
                Append("child", [started(workflow_id="child", run_id="c1")], 0),
            ],
            workflows=[record("parent"), record("child", created=1)],
            timers_add=[timer],
        )
    )
    assert result.heads == (2, 1)
    assert (await store.read_history("parent"))[-1] == child_started
    assert (await store.get_workflow("child")) == record("child", created=1)
    assert await store.due_timers(at(100)) == [timer]


async def test_stale_append_fails_the_whole_write(store: EventStore) -> None:
    await store.append("a", [started(workflow_id="a")], 0)
    with pytest.raises(SequenceConflict):
        await store.commit(
            Write(
                appends=[
                    Append("b", [started(workflow_id="b")], 0),
                    Append("a", [signal(1)], 0),  # stale: "a" has head 1
                ],
                workflows=[record("b")],
                timers_add=[TimerRow(at(5), "default", "b", "t")],
            )
        )
    assert await store.head("b") == 0
    assert await store.get_workflow("b") is None
    assert await store.due_timers(at(10)) == []
    assert await store.head("a") == 1


async def test_exception_in_the_middle_of_a_write_leaves_nothing(store: EventStore) -> None:
    await store.append("a", [started(workflow_id="a")], 0)
    # Every backend here takes a write hook (ForwardingStore: its inner store's, through its
    # __getattr__, which a runtime protocol check does not see on Python >= 3.12).
    hooked = cast(SupportsWriteHook, store)
    hook = FailAtTable("timers", RuntimeError("boom in the middle of the write"))
    hooked.set_write_hook(hook)
    with pytest.raises(RuntimeError, match="boom"):
        await store.commit(
            Write(
                appends=[Append("a", [signal(2)], 1), Append("b", [started(workflow_id="b")], 0)],
                workflows=[record("b")],
                timers_add=[TimerRow(at(5), "default", "b", "t")],
            )
        )
    hooked.set_write_hook(None)
    # Raised after both appends and the projection row with its index rows were put.
    assert {"events", "heads", "runs", "workflows", "by_status"} <= {t for _, t in hook.rows}
    assert await store.head("a") == 1
    assert await store.head("b") == 0
    assert await store.read_history("b") == []
    assert await store.get_workflow("b") is None
    assert await store.due_timers(at(10)) == []
    assert (await store.list_workflows()).items == []
    # The store still works after the failed write.
    assert await store.append("a", [signal(2)], 1) == 2


async def test_created_at_is_immutable(store: EventStore) -> None:
    await store.commit(Write(workflows=[record("wf", created=1)]))
    with pytest.raises(InvalidArgument, match="immutable"):
        await store.commit(Write(workflows=[record("wf", created=2)]))
    rec = await store.get_workflow("wf")
    assert rec is not None and rec.created_at == at(1)


async def test_two_appends_to_one_history_in_one_write_rejected(store: EventStore) -> None:
    with pytest.raises(InvalidArgument, match="twice"):
        await store.commit(
            Write(appends=[Append("a", [started(workflow_id="a")], 0), Append("a", [signal(2)], 1)])
        )


# --- projections and lists -----------------------------------------------------------------------


async def test_projection_filters(store: EventStore) -> None:
    rows = [
        record("w1", status=Status.RUNNING, workflow_type="order", created=1),
        record("w2", status=Status.COMPLETED, workflow_type="order", created=2),
        record("w3", status=Status.RUNNING, workflow_type="report", created=3),
        record("w4", status=Status.FAILED, workflow_type="report", created=4),
        record("w5", status=Status.RUNNING, workflow_type="order", created=5),
    ]
    await store.commit(Write(workflows=rows))

    async def ids(**kw: object) -> list[str]:
        page = await store.list_workflows(**kw)  # type: ignore[arg-type]
        return [r.workflow_id for r in page.items]

    assert await ids() == ["w5", "w4", "w3", "w2", "w1"]  # newest first
    assert await ids(status=Status.RUNNING) == ["w5", "w3", "w1"]
    assert await ids(workflow_type="report") == ["w4", "w3"]
    assert await ids(status=Status.RUNNING, workflow_type="order") == ["w5", "w1"]
    assert await ids(started_after=at(2), started_before=at(4)) == ["w3", "w2"]
    assert await ids(status=Status.RUNNING, started_after=at(2)) == ["w5", "w3"]
    # A status change moves the row between status indexes, in place in the others.
    await store.commit(Write(workflows=[record("w1", status=Status.COMPLETED, created=1)]))
    assert await ids(status=Status.RUNNING) == ["w5", "w3"]
    assert await ids(status=Status.COMPLETED) == ["w2", "w1"]
    assert await ids() == ["w5", "w4", "w3", "w2", "w1"]
    assert (await store.get_workflow("w1")) == record("w1", status=Status.COMPLETED, created=1)


async def test_pagination_covers_everything_once(store: EventStore) -> None:
    await store.commit(Write(workflows=[record(f"w{i:03d}", created=i % 7) for i in range(95)]))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_workflows(limit=10, cursor=cursor)
        seen += [r.workflow_id for r in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 10
    assert sorted(seen) == sorted(f"w{i:03d}" for i in range(95))
    assert len(seen) == len(set(seen))


async def test_pagination_under_concurrent_inserts_and_updates(store: EventStore) -> None:
    rng = random.Random(7)
    existing = [f"old{i:03d}" for i in range(60)]
    await store.commit(Write(workflows=[record(w, created=i) for i, w in enumerate(existing)]))
    seen: list[str] = []
    cursor = None
    new = 0
    while True:
        page = await store.list_workflows(limit=7, cursor=cursor)
        seen += [r.workflow_id for r in page.items]
        # Between pages: new workflows arrive (newer than everything) and old ones change status.
        changed = rng.choice(existing)
        await store.commit(
            Write(
                workflows=[
                    record(f"new{new}", created=1000 + new),
                    record(
                        changed,
                        status=rng.choice(list(Status)),
                        created=existing.index(changed),
                    ),
                ]
            )
        )
        new += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    # Every row that existed before the listing began appears exactly once; rows inserted
    # during it sort before the cursor and are not repeated.
    assert sorted(w for w in seen if w.startswith("old")) == sorted(existing)
    assert len(seen) == len(set(seen))


async def test_status_filtered_pagination_never_repeats(store: EventStore) -> None:
    await store.commit(Write(workflows=[record(f"w{i:02d}", created=i) for i in range(30)]))
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_workflows(status=Status.RUNNING, limit=4, cursor=cursor)
        seen += [r.workflow_id for r in page.items]
        # Completing a row already listed must not shift the rest of the listing.
        if page.items:
            done = page.items[0]
            await store.commit(
                Write(workflows=[msgspec.structs.replace(done, status=Status.COMPLETED)])
            )
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"w{i:02d}" for i in reversed(range(30))]


async def test_cursor_is_bound_to_its_query(store: EventStore) -> None:
    await store.commit(Write(workflows=[record(f"w{i}", created=i) for i in range(5)]))
    page = await store.list_workflows(limit=2)
    assert page.next_cursor is not None
    with pytest.raises(InvalidArgument, match="not issued for this query"):
        await store.list_workflows(limit=2, cursor=page.next_cursor, status=Status.RUNNING)
    with pytest.raises(InvalidArgument, match="not issued for this query"):
        await store.list_workflows(limit=2, cursor=page.next_cursor, tenant="other")
    with pytest.raises(InvalidArgument, match="not issued for this query"):
        await store.list_workflows(cursor="garbage!!")
    with pytest.raises(InvalidArgument, match="limit"):
        await store.list_workflows(limit=0)


# --- timers --------------------------------------------------------------------------------------


async def test_due_timers_in_order_with_boundary_and_limit(store: EventStore) -> None:
    rows = [
        TimerRow(at(30), "default", "w1", "t1"),
        TimerRow(at(10), "default", "w2", "t1"),
        TimerRow(at(20), "acme", "w1", "t1"),
        TimerRow(at(20), "default", "w1", "t2"),
        TimerRow(at(20.000001), "default", "w3", "t1"),
    ]
    await store.commit(Write(timers_add=rows))
    due = await store.due_timers(at(20))
    assert due == [rows[1], rows[2], rows[3]]  # due <= until, exactly at the boundary included
    assert await store.due_timers(at(19.999999)) == [rows[1]]
    assert await store.due_timers(at(100), limit=2) == [rows[1], rows[2]]
    assert await store.due_timers(at(100), limit=2, after=rows[2]) == [rows[3], rows[4]]
    assert await store.due_timers(at(0)) == []


async def test_fired_timer_is_deleted_with_its_event(store: EventStore) -> None:
    await store.append("wf", [started()], 0)
    row = TimerRow(at(50), "default", "wf", "timer-1", run_id="run-1")
    scheduled = ev.TimerScheduled(seq=2, at=at(2), timer_seq=1, due=at(50))
    await store.commit(Write(appends=[Append("wf", [scheduled], 1)], timers_add=[row]))
    assert await store.due_timers(at(50)) == [row]
    fired = ev.TimerFired(seq=3, at=at(50), timer_seq=1)
    await store.commit(Write(appends=[Append("wf", [fired], 2)], timers_delete=[row]))
    assert await store.due_timers(at(10_000)) == []
    assert (await store.read_history("wf"))[-1] == fired


async def test_timer_delete_with_stale_append_keeps_the_row(store: EventStore) -> None:
    await store.append("wf", [started()], 0)
    row = TimerRow(at(5), "default", "wf", "t")
    await store.commit(Write(timers_add=[row]))
    with pytest.raises(SequenceConflict):
        await store.commit(
            Write(
                appends=[Append("wf", [ev.TimerFired(seq=1, at=at(5), timer_seq=1)], 0)],
                timers_delete=[row],
            )
        )
    assert await store.due_timers(at(5)) == [row]


# --- tenancy -------------------------------------------------------------------------------------


async def test_tenant_isolation_with_colliding_ids(store: EventStore) -> None:
    for tenant in ("acme", "globex"):
        await store.commit(
            Write(
                appends=[
                    Append(
                        "order-1",
                        [started(workflow_id="order-1", tenant=tenant, run_id=f"run-{tenant}")],
                        0,
                        tenant,
                    )
                ],
                workflows=[record("order-1", tenant=tenant, run_id=f"run-{tenant}")],
            )
        )
    await store.append("order-1", [signal(2, name="acme-only")], 1, tenant="acme")
    acme = await store.read_history("order-1", tenant="acme")
    globex = await store.read_history("order-1", tenant="globex")
    assert len(acme) == 2 and len(globex) == 1
    assert isinstance(globex[0], ev.WorkflowStarted) and globex[0].run_id == "run-globex"
    assert await store.read_history("order-1") == []  # the default tenant has none
    assert await store.get_workflow("order-1") is None
    rec = await store.get_workflow("order-1", tenant="globex")
    assert rec is not None and rec.run_id == "run-globex"
    assert [r.run_id for r in (await store.list_workflows(tenant="acme")).items] == ["run-acme"]
    assert (await store.list_workflows()).items == []
    # A tenant whose name is a prefix of another's sees nothing of it.
    assert (await store.list_workflows(tenant="acm")).items == []
    assert await store.run_chain("order-1", tenant="acm") == []


async def test_tenant_isolation_of_rows(store: EventStore) -> None:
    wp = WaitpointRow("acme", "wf", "wp1", "r1", "callback", at(1))
    ap = ApprovalRow("acme", "wf", "ap1", "r1", "pay", "digest", at(1))
    await store.commit(Write(waitpoints=[wp], approvals=[ap]))
    assert await store.get_waitpoint("wf", "wp1", tenant="acme") == wp
    assert await store.get_waitpoint("wf", "wp1") is None
    assert (await store.list_waitpoints("wf")).items == []
    assert (await store.pending_approvals()).items == []
    assert (await store.pending_approvals(tenant="acme")).items == [ap]
    assert await store.get_approval("wf", "ap1", tenant="globex") is None


# --- waitpoints, approvals, indexes, inbox -------------------------------------------------------


async def test_waitpoint_rows_and_pagination(store: EventStore) -> None:
    rows = [WaitpointRow("default", "wf", f"wp{i:02d}", "r1", "cb", at(i)) for i in range(12)]
    await store.commit(Write(waitpoints=rows))
    first = await store.list_waitpoints("wf", limit=5)
    assert first.items == rows[:5] and first.next_cursor
    second = await store.list_waitpoints("wf", limit=5, cursor=first.next_cursor)
    third = await store.list_waitpoints("wf", limit=5, cursor=second.next_cursor)
    assert second.items == rows[5:10] and third.items == rows[10:] and third.next_cursor is None
    assert (await store.list_waitpoints("wf2")).items == []


async def test_pending_approvals_index_follows_status(store: EventStore) -> None:
    rows = [ApprovalRow("default", f"wf{i}", "ap", "r1", "pay", "d", at(10 - i)) for i in range(5)]
    await store.commit(Write(approvals=rows))
    pending = await store.pending_approvals()
    assert [r.workflow_id for r in pending.items] == ["wf4", "wf3", "wf2", "wf1", "wf0"]
    decided = msgspec.structs.replace(
        rows[2], status=ApprovalStatus.APPROVED, decided_by="ann", decided_at=at(20)
    )
    await store.commit(Write(approvals=[decided]))
    pending = await store.pending_approvals(limit=2)
    assert [r.workflow_id for r in pending.items] == ["wf4", "wf3"]
    rest = await store.pending_approvals(limit=2, cursor=pending.next_cursor)
    assert [r.workflow_id for r in rest.items] == ["wf1", "wf0"]
    assert rest.next_cursor is None
    assert await store.get_approval("wf2", "ap") == decided
    assert (await store.list_approvals("wf2")).items == [decided]


async def test_generic_index(store: EventStore) -> None:
    rows = [IndexRow("by_customer", "default", f"cust-1/{w}", w.encode()) for w in ("a", "b")]
    other = IndexRow("by_customer", "default", "cust-2/c", b"c")
    await store.commit(Write(index_put=[*rows, other]))
    page = await store.scan_index("by_customer", prefix="cust-1/")
    assert page.items == rows
    await store.commit(Write(index_delete=[rows[0]]))
    assert (await store.scan_index("by_customer", prefix="cust-1/")).items == rows[1:]
    assert (await store.scan_index("by_customer", tenant="x")).items == []


async def test_inbox_put_read_and_drain(store: EventStore) -> None:
    cmds = [
        InboxCommand("signal", "default", "wf", T0 + timedelta(seconds=i), name=f"s{i}")
        for i in range(3)
    ]
    ids = [await store.put_inbox(c) for c in cmds]
    assert ids == sorted(ids) and len(set(ids)) == 3
    inbox = await store.read_inbox()
    assert [c.name for c in inbox] == ["s0", "s1", "s2"]
    assert [c.command_id for c in inbox] == ids
    # Applying a command deletes it in the same write as its effect.
    await store.commit(Write(appends=[Append("wf", [started()], 0)], inbox_delete=[ids[0]]))
    assert [c.name for c in await store.read_inbox()] == ["s1", "s2"]
    assert [c.name for c in await store.read_inbox(limit=1)] == ["s1"]


async def test_each_projection_update_keeps_every_index_in_step(store: EventStore) -> None:
    # A row's index entries are rewritten only when what they index changes: check each kind
    # of change, and unchanged rewrites, against what the lists and the active scan show.
    async def lists() -> dict[str, list[str]]:
        out = {"all": [r.workflow_id for r in (await store.list_workflows()).items]}
        for status in Status:
            page = await store.list_workflows(status=status)
            out[status.value] = [r.workflow_id for r in page.items]
        for kind in ("order", "report"):
            page = await store.list_workflows(workflow_type=kind)
            out[kind] = [r.workflow_id for r in page.items]
        out["active"] = [r.workflow_id for r in await store.scan_active()]
        return {k: v for k, v in out.items() if v}

    await store.commit(Write(workflows=[record("w", created=1), record("x", created=2)]))
    expected = {"all": ["x", "w"], "running": ["x", "w"], "order": ["x", "w"], "active": ["w", "x"]}
    assert await lists() == expected
    await store.commit(Write(workflows=[record("w", created=1, run_id="r2")]))  # no index change
    assert await lists() == expected
    await store.commit(Write(workflows=[record("w", created=1, status=Status.BLOCKED)]))
    assert await lists() == {**expected, "running": ["x"], "blocked": ["w"]}
    # Continue-as-new into another type: the type index moves, the run stays active.
    await store.commit(Write(workflows=[record("w", created=1, workflow_type="report")]))
    assert await lists() == {**expected, "order": ["x"], "report": ["w"]}
    await store.commit(
        Write(workflows=[record("w", created=1, workflow_type="report", status=Status.FAILED)])
    )
    assert await lists() == {
        "all": ["x", "w"],
        "running": ["x"],
        "failed": ["w"],
        "order": ["x"],
        "report": ["w"],
        "active": ["x"],
    }
    # Back to non-terminal (an operator's repair): active again.
    await store.commit(Write(workflows=[record("w", created=1, workflow_type="report")]))
    assert await lists() == {**expected, "order": ["x"], "report": ["w"]}


async def test_active_index_lists_non_terminal_workflows_of_all_tenants(
    store: EventStore,
) -> None:
    await store.commit(
        Write(
            workflows=[
                record("a", tenant="t1"),
                record("b", tenant="t1", status=Status.COMPLETED),
                record("c", tenant="t2", status=Status.BLOCKED),
                record("d", tenant="t2"),
            ]
        )
    )
    active = await store.scan_active()
    assert [(r.tenant, r.workflow_id) for r in active] == [("t1", "a"), ("t2", "c"), ("t2", "d")]
    assert [r.workflow_id for r in await store.scan_active(after=("t1", "a"), limit=1)] == ["c"]
    await store.commit(Write(workflows=[record("a", tenant="t1", status=Status.FAILED)]))
    assert [r.workflow_id for r in await store.scan_active()] == ["c", "d"]


async def test_next_timer_due(store: EventStore) -> None:
    assert await store.next_timer_due(at(0)) is None
    await store.commit(
        Write(timers_add=[TimerRow(at(10), "t", "w", "a"), TimerRow(at(20), "u", "w", "b")])
    )
    assert await store.next_timer_due(at(0)) == at(10)
    assert await store.next_timer_due(at(10)) == at(20)  # strictly after
    assert await store.next_timer_due(at(20)) is None


async def test_tenants_lists_each_tenant_once(store: EventStore) -> None:
    assert await store.tenants() == []
    await store.commit(Write(workflows=[record(f"w{i}", tenant=t) for i, t in enumerate("bcabca")]))
    await store.commit(Write(workflows=[record("x", tenant="a\x01b")]))
    assert await store.tenants() == ["a", "a\x01b", "b", "c"]
