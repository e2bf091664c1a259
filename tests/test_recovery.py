"""The startup recovery sweep: each half-done shape, detected and repaired once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import aion
from aion import events as ev
from aion._codec import encode_payload
from aion._recovery import RecoveryError, sweep
from aion.errors import SequenceConflict
from aion.store import Append, MemoryStore, Status, TimerRow, WorkflowRecord, Write
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


@aion.workflow(name="counter")
async def counter(ctx: aion.Context, n: int) -> int:
    if n < 3:
        ctx.continue_as_new(n + 1)
    return n


@aion.workflow(name="kid")
async def kid(ctx: aion.Context, x: int) -> int:
    return x * 10


@aion.workflow(name="parent")
async def parent(ctx: aion.Context) -> int:
    return int(await ctx.child(kid, 4, workflow_id="the-kid")) + 1


def record(wf: str, status: Status, run_id: str, wtype: str, **kw: Any) -> WorkflowRecord:
    return WorkflowRecord("default", wf, run_id, wtype, status, T0, T0, **kw)


def started(wf: str, run_id: str, wtype: str, payload: Any, seq: int = 1) -> ev.WorkflowStarted:
    return ev.WorkflowStarted(
        seq=seq, at=at(seq), workflow_id=wf, run_id=run_id, workflow_type=wtype,
        input=encode_payload(payload), tenant="default",
    )  # fmt: skip


async def stranded(store: MemoryStore) -> None:
    """A run that ended with continue-as-new, written by a writer that never started the next."""
    await store.commit(
        Write(
            appends=[
                Append("c", [
                    started("c", "r1", "counter", [1]),
                    ev.WorkflowContinuedAsNew(seq=2, at=at(2), new_run_id="r2",
                                              workflow_type="counter", input=encode_payload([2])),
                ], 0)
            ],
            workflows=[record("c", Status.CONTINUED_AS_NEW, "r1", "counter")],
        )
    )  # fmt: skip


async def test_stranded_continue_as_new_gets_its_successor() -> None:
    store = MemoryStore()
    await stranded(store)
    dry = await sweep(store, now=at(10), apply=False)
    assert [r.kind for r in dry.repairs] == ["stranded-continue-as-new"]
    assert await store.head("c") == 2  # a dry run writes nothing
    report = await sweep(store, now=at(10))
    assert [r.kind for r in report.repairs] == ["stranded-continue-as-new"]
    assert report.reactivate == (("default", "c"),)
    history = await store.read_history("c")
    successor = history[-1]
    assert isinstance(successor, ev.WorkflowStarted) and successor.run_id == "r2"
    assert successor.continued_from_run_id == "r1"
    rec = await store.get_workflow("c")
    assert rec is not None and rec.status is Status.RUNNING and rec.run_id == "r2"
    again = await sweep(store, now=at(10))
    assert again.repairs == ()  # idempotent
    # An engine finishes the run from there.
    async with aion.Engine(store, workflows=[counter], clock=ManualClock(at(20))) as engine:
        assert await engine.handle("c").result(timeout=5) == 3
        assert engine.recovery.repairs == ()


class RacingStore:
    """A store double: appends conflict; a successor appears after ``appear_after`` reads."""

    def __init__(self, store: MemoryStore, appear_after: int | None) -> None:
        self._store = store
        self.appear_after = appear_after
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, write: Write) -> Any:
        if write.appends:
            raise SequenceConflict("c", 2, 3, "default")
        return await self._store.commit(write)

    async def read_history(self, workflow_id: str, **kw: Any) -> Any:
        if kw.get("from_seq", 1) > 2:  # the re-read after the failed start
            self.reads += 1
            if self.appear_after is not None and self.reads >= self.appear_after:
                await self._store.append("c", [started("c", "r2", "counter", [2], 3)], 2)
        return await self._store.read_history(workflow_id, **kw)


async def test_losing_the_start_race_to_a_durable_successor_is_benign() -> None:
    store = MemoryStore()
    await stranded(store)
    racing = RacingStore(store, appear_after=1)
    report = await sweep(racing, now=at(10))  # type: ignore[arg-type]
    assert [r.kind for r in report.repairs] == ["stranded-continue-as-new"]
    assert racing.reads == 1
    assert isinstance((await store.read_history("c"))[-1], ev.WorkflowStarted)


async def test_a_failed_start_with_no_successor_stops_the_engine() -> None:
    store = MemoryStore()
    await stranded(store)
    racing = RacingStore(store, appear_after=None)
    with pytest.raises(RecoveryError, match="stranded continue-as-new workflow 'c'"):
        await sweep(racing, now=at(10))  # type: ignore[arg-type]
    with pytest.raises(RecoveryError):
        async with aion.Engine(racing, workflows=[counter]):  # type: ignore[arg-type]
            pass
    assert await store.head("c") == 2  # nothing half written


async def test_a_child_recorded_but_never_started_is_started() -> None:
    store = MemoryStore()
    child_started = ev.ChildStarted(
        seq=2, at=at(2), child_seq=1, child_workflow_id="the-kid", child_run_id="kr1",
        workflow_type="kid", input=encode_payload([4]),
    )  # fmt: skip
    await store.commit(
        Write(
            appends=[Append("p", [started("p", "pr1", "parent", []), child_started], 0)],
            workflows=[record("p", Status.RUNNING, "pr1", "parent", waiting_on=("child:the-kid",))],
        )
    )
    report = await sweep(store, now=at(10))
    assert [(r.kind, r.workflow_id) for r in report.repairs] == [("child-never-started", "the-kid")]
    kid_history = await store.read_history("the-kid")
    assert isinstance(kid_history[0], ev.WorkflowStarted)
    assert kid_history[0].run_id == "kr1" and kid_history[0].parent_workflow_id == "p"
    assert (await sweep(store, now=at(10))).repairs == ()
    async with aion.Engine(store, workflows=[parent, kid], clock=ManualClock(at(20))) as engine:
        assert await engine.handle("p").result(timeout=5) == 41


async def test_timer_rows_nothing_waits_on_are_deleted() -> None:
    store = MemoryStore()
    live = TimerRow(at(100), "default", "w", "timer:2", "r1")
    fired = TimerRow(at(5), "default", "w", "timer:1", "r1")
    stale = TimerRow(at(6), "default", "w", "timer:1", "r0")
    closed = TimerRow(at(7), "default", "done", "timer:1", "d1")
    missing = TimerRow(at(8), "default", "ghost", "timer:1", "g1")
    await store.commit(
        Write(
            appends=[
                Append("w", [
                    started("w", "r1", "counter", [1]),
                    ev.TimerScheduled(seq=2, at=at(2), timer_seq=1, due=at(5)),
                    ev.TimerFired(seq=3, at=at(5), timer_seq=1),
                    ev.TimerScheduled(seq=4, at=at(5), timer_seq=2, due=at(100)),
                ], 0),
                Append("done", [started("done", "d1", "counter", [3])], 0),
            ],
            workflows=[
                record("w", Status.RUNNING, "r1", "counter"),
                record("done", Status.COMPLETED, "d1", "counter"),
            ],
            timers_add=[live, fired, stale, closed, missing],
        )
    )  # fmt: skip
    report = await sweep(store, now=at(200))
    kinds = sorted((r.kind, r.workflow_id) for r in report.repairs)
    assert kinds == [
        ("fired-timer-row", "w"),
        ("stale-timer-row", "w"),
        ("timer-row-of-closed-run", "done"),
        ("timer-row-of-closed-run", "ghost"),
    ]
    assert report.timers_overdue == 1  # the live one, due at 100, now 200
    assert await store.due_timers(at(10_000)) == [live]
    assert (await sweep(store, now=at(200))).repairs == ()


async def test_the_engine_reports_its_sweep(tmp_path: Any) -> None:
    store = MemoryStore()
    await stranded(store)
    async with aion.Engine(store, workflows=[counter], clock=ManualClock(at(20))) as engine:
        report = engine.recovery
        assert [r.kind for r in report.repairs] == ["stranded-continue-as-new"]
        assert report.runs_scanned == 1 and report.applied
        assert "1 stranded-continue-as-new" in report.summary()
