"""Who did it: ``identity=`` on start, signal, cancel and unblock is recorded in the history
(the control plane passes an API key's label), from the engine and through the inbox."""

from __future__ import annotations

from pathlib import Path

import pytest

import aion

#: Workflow ids whose code raises a BaseException (parks the run BLOCKED) while listed.
BROKEN: set[str] = set()


@aion.workflow
async def waits(ctx: aion.Context) -> str:
    if ctx.info.workflow_id in BROKEN:
        raise SystemExit("a stand-in for a bad deploy")
    try:
        value: str = await ctx.wait_signal("go")
    except aion.Cancelled:
        return "cancelled"
    return value


async def test_engine_records_who_started_signalled_cancelled_and_unblocked(
    tmp_path: Path,
) -> None:
    async with aion.Engine(tmp_path, workflows=[waits]) as engine:
        await engine.start(waits, workflow_id="a", identity="alice-key")
        await engine.signal("a", "go", "x", identity="bob-key")
        assert await engine.handle("a").result(timeout=10) == "x"
        await engine.start(waits, workflow_id="b")
        await engine.cancel("b", reason="no longer needed", identity="carol")
        assert await engine.handle("b").result(timeout=10) == "cancelled"
        BROKEN.add("c")
        try:
            await engine.start(waits, workflow_id="c")
            await engine.wait_idle()
            assert (await engine.describe("c")).status is aion.Status.BLOCKED
        finally:
            BROKEN.discard("c")
        unblocked = await engine.unblock("c", identity="dave")
        assert unblocked.status is aion.Status.RUNNING
        history = {wf: await engine.history(wf) for wf in ("a", "b", "c")}
    a = {e.type: e.data for e in history["a"]}
    assert a["workflow.started"]["identity"] == "alice-key"
    assert a["signal.received"]["identity"] == "bob-key"
    b = {e.type: e.data for e in history["b"]}
    assert b["workflow.started"]["identity"] == ""  # not given: unknown
    assert b["workflow.cancel_requested"]["identity"] == "carol"
    c = {e.type: e.data for e in history["c"]}
    assert c["workflow.unblocked"]["identity"] == "dave"


async def test_client_requests_carry_identity_through_the_inbox(tmp_path: Path) -> None:
    async with aion.Engine(tmp_path, workflows=[waits]) as engine:
        async with aion.Client(engine.store) as client:
            handle = await client.start("waits", workflow_id="q", identity="ops")
            await client.signal("q", "go", "y", identity="ops-2")
            assert await handle.result(timeout=10) == "y"
            await client.start("waits", workflow_id="r")
            await client.cancel("r", identity="ops-3")
            assert await client.handle("r").result(timeout=10) == "cancelled"
        q = {e.type: e.data for e in await engine.history("q")}
        r = {e.type: e.data for e in await engine.history("r")}
    assert q["workflow.started"]["identity"] == "ops"
    assert q["signal.received"]["identity"] == "ops-2"
    assert r["workflow.cancel_requested"]["identity"] == "ops-3"


@pytest.mark.parametrize(
    "bad", [5, b"bytes", "x" * 257, "é" * 129], ids=["int", "bytes", "long", "long-utf8"]
)
async def test_a_bad_identity_is_refused_and_records_nothing(tmp_path: Path, bad: object) -> None:
    async with aion.Engine(tmp_path, workflows=[waits]) as engine:
        with pytest.raises(aion.InvalidArgument, match="identity"):
            await engine.start(waits, workflow_id="n", identity=bad)  # type: ignore[arg-type]
        with pytest.raises(aion.WorkflowNotFound):
            await engine.describe("n")
        await engine.start(waits, workflow_id="m")
        for call in (
            engine.signal("m", "go", 1, identity=bad),  # type: ignore[arg-type]
            engine.cancel("m", identity=bad),  # type: ignore[arg-type]
        ):
            with pytest.raises(aion.InvalidArgument, match="identity"):
                await call
        async with aion.Client(engine.store) as client:
            with pytest.raises(aion.InvalidArgument, match="identity"):
                await client.signal("m", "go", 1, identity=bad)  # type: ignore[arg-type]
        assert [e.type for e in await engine.history("m")] == ["workflow.started"]


async def test_list_takes_a_window_on_the_first_start(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from aion.testing import ManualClock

    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    async with aion.Engine(tmp_path, workflows=[waits], clock=clock) as engine:
        for i in range(5):
            await engine.start(waits, workflow_id=f"w{i}")
            clock.advance(60)
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        page = await engine.list(
            started_after=t0 + timedelta(minutes=1), started_before=t0 + timedelta(minutes=3)
        )
        assert [d.workflow_id for d in page.items] == ["w2", "w1"]
        first = await engine.list(started_after=t0 + timedelta(minutes=1), limit=2)
        assert [d.workflow_id for d in first.items] == ["w4", "w3"]
        rest = await engine.list(
            started_after=t0 + timedelta(minutes=1), limit=2, cursor=first.next_cursor
        )
        assert [d.workflow_id for d in rest.items] == ["w2", "w1"]
        with pytest.raises(aion.InvalidArgument, match="not issued for this query"):
            await engine.list(limit=2, cursor=first.next_cursor)
        with pytest.raises(aion.InvalidArgument, match="started_after"):
            await engine.list(started_after=datetime(2026, 1, 1))  # naive
        with pytest.raises(aion.InvalidArgument, match="started_before"):
            await engine.list(started_before="2026-01-01")  # type: ignore[arg-type]


@aion.workflow
async def tagged(ctx: aion.Context, region: str, priority: int) -> None:
    ctx.upsert_search_attributes(region=region, priority=priority, urgent=priority > 5)
    await ctx.child(leaf, workflow_id=f"{ctx.info.workflow_id}-leaf")


@aion.workflow
async def leaf(ctx: aion.Context) -> None:
    await ctx.wait_signal("never")


async def test_list_filters_by_parent_and_search_attributes(tmp_path: Path) -> None:
    async with aion.Engine(tmp_path, workflows=[tagged, leaf]) as engine:
        for i, (region, priority) in enumerate([("eu", 1), ("us", 7), ("eu", 7), ("eu", 1)]):
            await engine.start(tagged, region, priority, workflow_id=f"p{i}")
        await engine.wait_idle()

        async def ids(**filters: object) -> list[str]:
            found, cursor = [], None
            while True:  # through every page, two at a time
                page = await engine.list(limit=2, cursor=cursor, **filters)  # type: ignore[arg-type]
                found += [d.workflow_id for d in page.items]
                if page.next_cursor is None:
                    return found
                cursor = page.next_cursor

        assert await ids(search={"region": "eu"}) == ["p3", "p2", "p0"]
        assert await ids(search={"region": "eu", "priority": 7}) == ["p2"]
        assert await ids(search={"urgent": True}) == ["p2", "p1"]
        assert await ids(search={"priority": True}) == []  # a bool is not the int 1
        assert await ids(search={"priority": 1.0}) == []  # nor is a float
        assert await ids(parent_workflow_id="p1") == ["p1-leaf"]
        assert await ids(parent_workflow_id="p1", workflow_type="tagged") == []
        page = await engine.list(limit=1, search={"region": "eu"})
        with pytest.raises(aion.InvalidArgument, match="not issued for this query"):
            await engine.list(limit=1, search={"region": "us"}, cursor=page.next_cursor)
        with pytest.raises(aion.InvalidArgument):
            await engine.list(search={"region": ["eu"]})  # type: ignore[dict-item]
        with pytest.raises(aion.InvalidArgument):
            await engine.list(search="region=eu")  # type: ignore[arg-type]


async def test_list_filters_by_id_prefix(tmp_path: Path) -> None:
    async with aion.Engine(tmp_path, workflows=[waits]) as engine:
        for wf in ("order-1", "order-2", "refund-1", "order-3"):
            await engine.start(waits, workflow_id=wf)
        page = await engine.list(id_prefix="order-", limit=2)
        assert [d.workflow_id for d in page.items] == ["order-3", "order-2"]
        rest = await engine.list(id_prefix="order-", limit=2, cursor=page.next_cursor)
        assert [d.workflow_id for d in rest.items] == ["order-1"]
        with pytest.raises(aion.InvalidArgument, match="not issued for this query"):
            await engine.list(id_prefix="refund-", limit=2, cursor=page.next_cursor)
        with pytest.raises(aion.InvalidArgument, match="id_prefix"):
            await engine.list(id_prefix=7)  # type: ignore[arg-type]


async def test_a_filtered_page_reads_a_bounded_number_of_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aion.store import _queries

    monkeypatch.setattr(_queries, "SCAN_BUDGET", 3)
    async with aion.Engine(tmp_path, workflows=[waits]) as engine:
        for i in range(10):
            await engine.start(waits, workflow_id=f"{'hit' if i in (1, 8) else 'miss'}-{i}")
        pages, found, cursor = 0, [], None
        while True:
            page = await engine.list(id_prefix="hit-", limit=1, cursor=cursor)
            pages += 1
            assert len(page.items) <= 1
            found += [d.workflow_id for d in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert found == ["hit-8", "hit-1"]  # newest first, every match, none twice
        assert pages >= 3  # short pages: no page read more than limit + 3 rows
