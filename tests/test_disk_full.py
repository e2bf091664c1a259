"""Disk full: a store at its ``max_map_size`` refuses whole writes and keeps everything recorded.

- Store: writes of every part (history, projection row, timer and index rows) go in until the
  map cannot grow; the next one fails with :class:`aion.errors.StoreFull`, whose message says
  what to do, and leaves nothing behind; after a reopen every acknowledged write reads back
  exactly, and with a larger ``max_map_size`` the refused write goes in.
- Engine: runs on a store that fills up crash on their commits, restart with backoff and are
  parked ``BLOCKED`` with the reason past ``max_restarts``; a start on a full store fails with
  ``StoreFull``; nothing recorded is lost, and reopened with a larger ``max_map_size`` every
  run finishes with its right result.
- A signal to a run on a full store is answered with ``StoreFull`` (it made the engine spin);
  a run that cannot even be parked is retried later, never left without a retry.
- A write too big for the store fails alone: the requests batched with it go in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
from aion import events as ev
from aion.errors import StoreFull
from aion.store import (
    Append,
    IndexRow,
    LmdbStore,
    Status,
    TimerRow,
    WorkflowRecord,
    Write,
)
from aion.store._core import TABLES
from aion.testing import ManualClock
from aion.testing.faults import FaultPlan, FaultyStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KIB = 1024
FULL = (
    r"is full: its map reached max_map_size \(262144 bytes\)\. Nothing from this write was "
    r"recorded; raise max_map_size or free space, then retry\."
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def order(i: int, payload: int) -> Write:
    """One state change of every kind: a history, its projection row, a timer and an index row."""
    wf = f"order-{i}"
    started = ev.WorkflowStarted(
        seq=1, at=at(i), workflow_id=wf, run_id="r1", workflow_type="order",
        input=b"x" * payload, tenant="default",
    )  # fmt: skip
    signal = ev.SignalReceived(seq=2, at=at(i), name="go", payload=b"y" * payload)
    return Write(
        appends=[Append(wf, [started, signal], 0)],
        workflows=[WorkflowRecord("default", wf, "r1", "order", Status.RUNNING, at(i), at(i))],
        timers_add=[TimerRow(at(1000 + i), "default", wf, "timer:1", "r1")],
        index_put=[IndexRow("orders", "default", wf, b"v" * payload)],
    )


def dump(store: Any) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every row of every table, through the store's protected read transaction."""
    rows: dict[str, list[tuple[bytes, bytes]]] = store._read(
        lambda kv: {t: list(kv.scan(t, b"", b"\xff" * 64)) for t in TABLES}
    )
    return rows


async def test_a_full_store_refuses_whole_writes_and_keeps_every_recorded_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d"
    store = LmdbStore(path, map_size=64 * KIB, max_map_size=256 * KIB)
    acknowledged: list[Write] = []
    while True:
        i = len(acknowledged)
        write = order(i, payload=150 * (i % 5))
        before = dump(store)
        try:
            await store.commit(write)
        except StoreFull as exc:
            refused, error = write, exc
            break
        acknowledged.append(write)
        assert i < 10_000, "the store never filled up"
    assert len(acknowledged) > 20
    assert store.map_size() == 256 * KIB  # it grew as far as allowed first
    with pytest.raises(StoreFull, match=FULL):  # the message says what to do
        raise error
    assert dump(store) == before, "the refused write left rows behind"
    with pytest.raises(StoreFull, match=FULL):  # an append alone: the same clear refusal
        huge = ev.SignalReceived(seq=1, at=T0, name="x", payload=b"z" * 300 * KIB)
        await store.append("big", [huge], 0)
    await store.aclose()

    with LmdbStore(path, map_size=64 * KIB, max_map_size=256 * KIB) as reopened:
        assert dump(reopened) == before  # nothing recorded was lost, nothing partial appeared
        for write in acknowledged:
            (append,) = write.appends
            assert await reopened.read_history(append.workflow_id) == list(append.events)
            assert await reopened.get_workflow(append.workflow_id) == write.workflows[0]
        assert await reopened.head(refused.appends[0].workflow_id) == 0

    with LmdbStore(path, max_map_size=16 * 1024 * KIB) as larger:
        await larger.commit(refused)  # retried once the store may grow: it goes in whole
        assert larger.map_size() > 256 * KIB
        after = dump(larger)
        for table in TABLES:
            assert set(before[table]) <= set(after[table])


async def test_a_write_too_big_for_the_store_fails_alone_in_its_batch(tmp_path: Path) -> None:
    store = FaultyStore(LmdbStore(tmp_path / "d", map_size=64 * KIB, max_map_size=256 * KIB))
    outcomes: dict[str, BaseException | None] = {}

    async def commit(
        name: str, write: Write, *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()  # the parent resumes once this request is queued
        try:
            await store.commit(write)
            outcomes[name] = None
        except StoreFull as exc:
            outcomes[name] = exc

    hold = store.hold_writer()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(commit, "gate", Write(index_put=[IndexRow("gate", "default", "g")]))
            await anyio.to_thread.run_sync(hold.reached.wait)
            await tg.start(commit, "small-1", order(1, payload=10))
            await tg.start(commit, "too-big", order(2, payload=200 * KIB))  # > the whole map
            await tg.start(commit, "small-3", order(3, payload=10))
            hold.release()
    finally:
        hold.release()
    assert 3 in store.batch_sizes  # the three requests shared a batch
    assert isinstance(outcomes.pop("too-big"), StoreFull)
    assert outcomes == {"gate": None, "small-1": None, "small-3": None}
    await store.aclose()


# --- an engine on a store that fills up ----------------------------------------------------------

STEPS = 40


async def blob(i: int) -> str:
    # Step results of a few KB: a step's write fails while the map still has room for the much
    # smaller write that parks the run BLOCKED (which the test below wants to see happen).
    return f"x{i}" * 2000


@aion.workflow(name="disk_full.filler")
async def filler(ctx: aion.Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += len(await ctx.step(blob, i))
        await ctx.sleep(1)
    return total


EXPECTED = sum(len(f"x{i}" * 2000) for i in range(STEPS))
IDS = [f"f{i}" for i in range(3)]


async def settle(
    engine: aion.Engine, clock: ManualClock, ids: list[str], *, moves: int | None = None
) -> bool:
    """Move the clock from deadline to deadline until every run in ``ids`` finished (True) or
    nothing is left to happen (False). With ``moves``: False after that many moves too (runs
    that cannot even be parked on a full store retry, slowly, for as long as it stays full)."""
    for _ in range(moves or 10_000):
        await engine.wait_idle()
        if all([(await engine.describe(w)).status.is_terminal for w in ids]):
            return True
        deadline = clock.next_deadline()
        if deadline is None:
            return False
        clock.set_time(max(deadline, clock.now()))
    if moves is not None:
        await engine.wait_idle()
        return False
    raise AssertionError("the workflows keep going")


async def fill(store: LmdbStore) -> None:
    """Fill what room is left with index rows (no runs), until even an empty row is refused."""
    n = 0
    for size in (400, 40, 0):
        while True:
            n += 1
            row = IndexRow("ballast", "default", f"{n:06}", b"v" * size)
            try:
                await store.commit(Write(index_put=[row]))
            except StoreFull:
                break
    for _ in range(3):
        with pytest.raises(StoreFull):
            await store.commit(Write(index_put=[IndexRow("ballast", "default", "tiny")]))


async def test_an_engine_on_a_full_store_parks_its_runs_and_finishes_them_later(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d"
    store = LmdbStore(path, map_size=128 * KIB, max_map_size=256 * KIB, durable=False)
    clock = ManualClock(T0, auto_advance=True)
    recorded: dict[str, list[ev.Event]] = {}
    async with aion.Engine(
        store, workflows=[filler], clock=clock, max_restarts=2, restart_window=3600
    ) as engine:
        for wf in IDS:
            await engine.start(filler, STEPS, workflow_id=wf)
        assert not await settle(engine, clock, IDS, moves=2000), "the store should have filled up"
        blocked = 0
        for wf in IDS:
            desc = await engine.describe(wf)
            recorded[wf] = list(await store.read_history(wf))
            if desc.status is Status.BLOCKED:
                blocked += 1
                assert "crash loop: StoreFull" in desc.reason and "max_map_size" in desc.reason
                assert isinstance(recorded[wf][-1], ev.WorkflowBlocked)
            else:  # retrying, or finished before the store filled up
                assert desc.status in (Status.RUNNING, Status.COMPLETED), desc
        assert blocked >= 1
        await fill(store)
        with pytest.raises(StoreFull, match=FULL):
            await engine.start(filler, 1, workflow_id="late")
        with pytest.raises(aion.WorkflowNotFound):
            await engine.describe("late")  # nothing of it was written
        # Runs that could not be parked before kept retrying until the store was full to the
        # brim: count what the next engine will find now that nothing can be written.
        blocked = 0
        for wf in IDS:
            blocked += (await engine.describe(wf)).status is Status.BLOCKED
            recorded[wf] = list(await store.read_history(wf))
    await store.aclose()

    larger = LmdbStore(path, max_map_size=64 * 1024 * KIB, durable=False)
    async with aion.Engine(larger, workflows=[filler], clock=clock) as engine:
        assert engine.recovery.runs_blocked == blocked
        for wf in IDS:
            assert await engine.handle(wf).result(timeout=30) == EXPECTED
            history = await larger.read_history(wf)
            assert history[: len(recorded[wf])] == recorded[wf], f"{wf}: recorded events lost"
            assert [e.seq for e in history] == list(range(1, len(history) + 1))
            done = [e.step_seq for e in history if isinstance(e, ev.StepCompleted)]
            assert sorted(done) == list(range(1, STEPS + 1)), f"{wf}: a step recorded twice"
    async with aion.Engine(larger, workflows=[filler], clock=clock) as engine:
        assert engine.recovery.repairs == () and engine.recovery.runs_scanned == 0
    await larger.aclose()


@aion.workflow(name="disk_full.napper")
async def napper(ctx: aion.Context) -> int:
    await ctx.sleep(10)
    return len(await ctx.step(blob, 1))


async def run_clock(engine: aion.Engine, clock: ManualClock, *, steps: int | None = None) -> None:
    """Move the clock from deadline to deadline until nothing is left to happen (or, with
    ``steps``, for that many deadlines: retries that go on while the disk stays full)."""
    for _ in range(steps or 100):
        await engine.wait_idle()
        deadline = clock.next_deadline()
        if deadline is None:
            return
        clock.set_time(max(deadline, clock.now()))
    if steps is None:
        raise AssertionError("something keeps happening")
    await engine.wait_idle()  # what the last move of the clock woke has run


async def test_a_run_given_up_on_while_the_store_is_full_is_not_left_running(
    tmp_path: Path,
) -> None:
    store = LmdbStore(tmp_path / "d", map_size=128 * KIB, max_map_size=256 * KIB, durable=False)
    clock = ManualClock(T0)  # moved by hand: each retry is a step of the test
    async with aion.Engine(store, workflows=[napper], clock=clock, max_restarts=2) as engine:
        await engine.start(napper, workflow_id="n")
        await engine.wait_idle()  # it waits for its timer
        await fill(store)  # from now on every write fails, the BLOCKED marker's too
        # The timer fires, the run crashes, restarts, cannot be parked: it retries, slowly.
        await run_clock(engine, clock, steps=20)
        desc = await engine.describe("n")
        # Parked (the reason visible at least in memory), or a retry still to come.
        assert desc.status is Status.BLOCKED or clock.next_deadline() is not None, desc
    await store.aclose()


async def test_a_signal_to_a_blocked_run_on_a_full_store_is_answered(tmp_path: Path) -> None:
    inner = LmdbStore(tmp_path / "d", map_size=128 * KIB, max_map_size=256 * KIB, durable=False)
    store = FaultyStore(inner, FaultPlan(fail_writes={2}))  # also counts the engine's commits
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(store, workflows=[napper], clock=clock, max_restarts=0) as engine:
        await engine.start(napper, workflow_id="n")  # write 1; write 2 fails: parked at once
        await run_clock(engine, clock)
        assert (await engine.describe("n")).status is Status.BLOCKED
        await fill(inner)
        writes = store.writes
        outcome: list[BaseException | None] = []
        with anyio.move_on_after(1):  # an answer comes at once; a spin goes on forever
            try:
                await engine.signal("n", "go", 1)
                outcome.append(None)
            except StoreFull as exc:
                outcome.append(exc)
        attempts = store.writes - writes
        assert attempts < 30, f"{attempts} commits attempted for one signal: the engine spins"
        assert len(outcome) == 1, outcome
        kept = [c for c in await inner.read_inbox() if c.workflow_id == "n" and c.name == "go"]
        if outcome[0] is None:  # kept for the BLOCKED run: its inbox row found room
            assert len(kept) == 1
        else:  # refused: nothing of it was kept
            assert isinstance(outcome[0], StoreFull) and kept == [], outcome
    await store.aclose()
