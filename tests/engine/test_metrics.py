"""``engine.metrics``: what each instrument counts, exactly, on a real LMDB engine; that a
replay (a restart on the same directory, an evicted run woken) counts nothing; the store's
commit observer and timer counts on every backend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
from aion._engine._metrics import HistogramSample, Metrics, Sample
from aion.store import ForwardingStore, LmdbStore, MemoryStore, TimerRow, Write
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)

attempts: dict[str, int] = {}
BROKEN = [True]


def ok(x: int) -> int:
    return x + 1


def flaky_step(key: str) -> str:
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] == 1:
        raise ConnectionError("the first attempt fails")
    return "ok"


@aion.workflow
async def done(ctx: aion.Context) -> int:
    return int(await ctx.step(ok, 1))


@aion.workflow
async def boom(ctx: aion.Context) -> None:
    raise ValueError("no")


@aion.workflow
async def waiter(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


@aion.workflow
async def parked(ctx: aion.Context) -> Any:
    await ctx.step(ok, 1)
    return await ctx.wait_signal("go")


@aion.workflow
async def again(ctx: aion.Context, n: int) -> int:
    if n > 0:
        ctx.continue_as_new(n - 1)
    return n


@aion.workflow
async def flaky(ctx: aion.Context) -> str:
    retry = aion.RetryPolicy(max_attempts=3, initial_interval=5)
    return str(await ctx.step(flaky_step, ctx.info.workflow_id, retry=retry))


@aion.workflow
async def sleeper(ctx: aion.Context, seconds: float) -> None:
    await ctx.sleep(seconds)


@aion.workflow
async def fragile(ctx: aion.Context) -> Any:
    if BROKEN[0]:
        await asyncio.sleep(0.01)  # not an aion operation: the run is parked BLOCKED
    return await ctx.wait_signal("go")


ALL = [done, boom, waiter, parked, again, flaky, sleeper, fragile]


def flat(metrics: Metrics) -> dict[str, dict[tuple[str, ...], float]]:
    """name -> {label values: value}; a histogram's value is its number of observations."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in metrics.snapshot():
        series = out[family.name] = {}
        for sample in family.samples:
            if isinstance(sample, HistogramSample):
                assert family.kind == "histogram"
                assert sample.cumulative[-1] == sample.observations
                assert sample.bounds[-1] == float("inf")
                series[sample.labels] = sample.observations
            else:
                assert family.kind in ("counter", "gauge")
                series[sample.labels] = sample.value
    return out


def gauges(metrics: Metrics) -> dict[str, float]:
    snap = flat(metrics)
    names = [f.name for f in metrics.snapshot() if f.kind == "gauge"]
    return {name.removeprefix("aion_"): snap[name].get((), -1.0) for name in names}


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10) -> None:
    """Poll ``check`` (the inbox works on its own schedule) without touching the clock."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.005)


async def test_what_each_metric_counts_and_that_replay_counts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "data"
    attempts.clear()
    BROKEN[0] = True
    clock = ManualClock(T0)
    async with aion.Engine(path, workflows=ALL, clock=clock, max_resident_runs=2) as engine:
        m = engine.metrics
        assert flat(m)["aion_workflows_started_total"] == {}
        for wf in ("d1", "d2"):
            assert await (await engine.start(done, workflow_id=wf)).result(timeout=10) == 2
        with pytest.raises(aion.WorkflowFailed):
            await (await engine.start(boom, workflow_id="b1")).result(timeout=10)
        await engine.start(waiter, workflow_id="c1")
        await engine.wait_idle()
        await engine.cancel("c1")
        assert await (await engine.start(again, 2, workflow_id="a1")).result(timeout=10) == 0
        handle = await engine.start(flaky, workflow_id="f1")
        await engine.wait_idle()  # the first attempt failed; the retry waits 5 s
        assert attempts == {"f1": 1}
        clock.advance(5)
        assert await handle.result(timeout=10) == "ok"
        await engine.start(sleeper, 60, workflow_id="s1")
        await engine.start(sleeper, 3600, workflow_id="s2")
        await engine.start(fragile, workflow_id="fragile")
        assert (await engine.describe("fragile")).status is aion.Status.BLOCKED
        await engine.wait_idle()
        for i in range(1, 6):
            await engine.start(parked, workflow_id=f"p{i}")
        await engine.wait_idle()
        assert engine.resident_runs == 2  # the others are passivated
        attempts_before = dict(m.step_attempts.values)
        # p1 was evicted: the signal replays it (its step is not run again), then it ends.
        await engine.signal("p1", "go", 1)
        assert await engine.handle("p1").result(timeout=10) == 1
        assert dict(m.step_attempts.values) == attempts_before
        # A command another process leaves for a BLOCKED run waits in the inbox.
        async with aion.Client(engine.store) as client:
            await client.signal("fragile", "go", "later")
        await until(lambda: m.inbox_depth.value() == 1)
        await engine.wait_idle()
        await engine._store_counts.refresh()

        snap = flat(m)
        assert snap["aion_workflows_started_total"] == {
            ("done",): 2,
            ("boom",): 1,
            ("waiter",): 1,
            ("again",): 3,  # the first run and two continue-as-new successors
            ("flaky",): 1,
            ("sleeper",): 2,
            ("parked",): 5,
            ("fragile",): 1,
        }
        assert snap["aion_workflows_closed_total"] == {
            ("done", "completed"): 2,
            ("boom", "failed"): 1,
            ("waiter", "cancelled"): 1,
            ("again", "continued_as_new"): 2,
            ("again", "completed"): 1,
            ("flaky", "completed"): 1,
            ("parked", "completed"): 1,
        }
        steps = {("done", "ok"): 2, ("flaky", "flaky_step"): 2, ("parked", "ok"): 5}
        assert snap["aion_step_attempts_total"] == steps
        assert snap["aion_step_duration_seconds"] == steps
        assert snap["aion_step_failures_total"] == {("flaky", "flaky_step"): 1}
        assert snap["aion_step_retries_total"] == {("flaky", "flaky_step"): 1}
        assert snap["aion_workflow_restarts_total"] == {}
        assert snap["aion_service_restarts_total"] == {}
        # Open: s1, s2, p2..p5 and the BLOCKED run; two of them are in memory.
        assert gauges(m) == {
            "timers_pending": 2,
            "timers_overdue": 0,
            "runs_resident": 2,
            "runs_passivated": 4,
            "runs_blocked": 1,
            "inbox_depth": 1,
        }
        assert m.runs_open == 7
        commits = snap["aion_commit_seconds"][()]
        assert commits > 0
        assert snap["aion_fsync_seconds"][()] == snap["aion_commit_batch_size"][()] == commits
        batch = m.commit_batch_size.sample()
        fsync = m.fsync_seconds.sample()
        assert batch is not None and fsync is not None
        assert batch.sum >= commits and fsync.sum > 0

    # A restart on the same directory, two minutes later: s1 is overdue. The fixed code is
    # deployed: the BLOCKED run is retried, takes the signal that waited for it and ends.
    BROKEN[0] = False
    clock = ManualClock(T0 + timedelta(minutes=2))
    async with aion.Engine(path, workflows=ALL, clock=clock, inbox_interval=0.05) as engine:
        m = engine.metrics
        # Counted at start, before the timer wheel fired anything.
        assert gauges(m)["timers_pending"] == 2 and gauges(m)["timers_overdue"] == 1
        assert engine.recovery.timers_overdue == 1 and engine.recovery.runs_scanned == 7
        await engine.wait_idle()
        assert await engine.handle("fragile").result(timeout=10) == "later"
        await engine.handle("s1").result(timeout=10)
        await engine.signal("p2", "go", 2)
        assert await engine.handle("p2").result(timeout=10) == 2
        await engine.wait_idle()
        await until(lambda: m.inbox_depth.value() == 0)
        await engine._store_counts.refresh()

        snap = flat(m)
        # Every run here was replayed, none started, no step executed again.
        assert snap["aion_workflows_started_total"] == {}
        assert snap["aion_step_attempts_total"] == {}
        assert snap["aion_step_duration_seconds"] == {}
        assert snap["aion_workflows_closed_total"] == {
            ("fragile", "completed"): 1,
            ("sleeper", "completed"): 1,
            ("parked", "completed"): 1,
        }
        assert gauges(m) == {
            "timers_pending": 1,
            "timers_overdue": 0,
            "runs_resident": 0,
            "runs_passivated": 4,  # s2, p3, p4, p5
            "runs_blocked": 0,
            "inbox_depth": 0,
        }


class FailingReads(ForwardingStore):
    """Fails the next ``failures`` activations (an engine fault: the run actor crashes)."""

    failures = 0

    async def read_current_run(self, workflow_id: str, *, tenant: str = "default") -> Any:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("engine bug while activating")
        return await self.inner.read_current_run(workflow_id, tenant=tenant)


async def test_restarts_of_services_and_of_run_actors(tmp_path: Path) -> None:
    store = FailingReads(LmdbStore(tmp_path / "data"))
    clock = ManualClock(T0, auto_advance=True)  # restarts wait out their backoff at once
    engine = aion.Engine(store, workflows=ALL, clock=clock, max_resident_runs=1)
    fired = engine._timers._fire
    fails = [1]

    async def fire_or_fail(timer: Any) -> None:
        if fails[0]:
            fails[0] -= 1
            raise RuntimeError("timer wheel fault")
        await fired(timer)

    engine._timers._fire = fire_or_fail  # type: ignore[method-assign]
    try:
        async with engine:
            m = engine.metrics
            await (await engine.start(sleeper, 60, workflow_id="s")).result(timeout=10)
            assert flat(m)["aion_service_restarts_total"] == {("timer-wheel",): 1}
            await engine.start(waiter, workflow_id="w")
            await engine.start(waiter, workflow_id="other")  # w leaves memory
            await engine.wait_idle()
            store.failures = 2
            await engine.signal("w", "go", 1)  # two crashed activations, then it goes on
            assert await engine.handle("w").result(timeout=10) == 1
            snap = flat(m)
            assert snap["aion_workflow_restarts_total"] == {("waiter",): 2}
            assert snap["aion_workflows_started_total"] == {("sleeper",): 1, ("waiter",): 2}
            assert snap["aion_service_restarts_total"] == {("timer-wheel",): 1}
    finally:
        await store.inner.aclose()


@pytest.mark.parametrize("backend", ["memory", "lmdb", "postgres"])
async def test_the_commit_observer_and_the_timer_counts(backend: str, tmp_path: Path) -> None:
    """On every backend: the observer sees each committed transaction (not a refused one),
    and ``count_timers`` counts all rows, or those due before a time, up to a limit."""
    with _postgres.target(backend, tmp_path) as target:
        store = LmdbStore(target) if backend == "lmdb" else target
        try:
            seen: list[tuple[int, float, float | None]] = []
            threads: set[int] = set()

            def observe(writes: int, seconds: float, commit_seconds: float | None) -> None:
                threads.add(threading.get_ident())
                seen.append((writes, seconds, commit_seconds))

            assert store.set_commit_observer(observe) is None
            rows = [
                TimerRow(T0 + timedelta(seconds=s), "default", f"w{s}", "timer:1", "r")
                for s in (10, 20, 30)
            ]
            await store.commit(Write(timers_add=rows))
            assert len(seen) == 1
            writes, seconds, commit_seconds = seen[0]
            assert writes == 1 and seconds >= 0
            if backend == "memory":
                assert commit_seconds is None
            else:
                assert commit_seconds is not None and 0 <= commit_seconds <= seconds
                assert threading.get_ident() not in threads  # the writer thread's
            count = store.count_timers
            assert count() == 3
            assert count(limit=2) == 2
            assert count(due_before=T0 + timedelta(seconds=20)) == 1
            assert count(due_before=T0 + timedelta(seconds=21)) == 2
            assert count(due_before=T0 + timedelta(seconds=99), limit=2) == 2
            assert count(due_before=T0) == 0
            assert await anyio.to_thread.run_sync(count) == 3  # from a worker thread too
            assert store.set_commit_observer(None) is observe
            await store.commit(Write(timers_delete=rows[:1]))
            assert len(seen) == 1 and count() == 2
        finally:
            if backend == "lmdb":
                await store.aclose()


async def test_postgres_commit_histograms_move(tmp_path: Path) -> None:
    with _postgres.store() as store:
        clock = ManualClock(T0)
        async with aion.Engine(store, workflows=ALL, clock=clock) as engine:
            m = engine.metrics
            assert await (await engine.start(done, workflow_id="d")).result(timeout=10) == 2
            await engine.start(sleeper, 60, workflow_id="s")
            await engine.wait_idle()
            await engine._store_counts.refresh()
            snap = flat(m)
            commits = snap["aion_commit_seconds"][()]
            assert commits >= 2  # the start and the completion at least
            assert snap["aion_fsync_seconds"][()] == snap["aion_commit_batch_size"][()] == commits
            fsync = m.fsync_seconds.sample()
            assert fsync is not None and fsync.sum > 0
            assert snap["aion_workflows_closed_total"] == {("done", "completed"): 1}
            assert gauges(m)["timers_pending"] == 1 and gauges(m)["timers_overdue"] == 0
        # The engine leaves a store it was given without its observer.
        assert store.set_commit_observer(None) is None


def test_instruments() -> None:
    m = Metrics()
    h = m.step_duration
    for value in (0.0005, 0.001, 0.002, 400.0):
        h.observe(value, ("wf", "s"))
    sample = h.sample(("wf", "s"))
    assert sample is not None
    assert sample.bounds[:3] == (0.001, 0.0025, 0.005) and sample.bounds[-1] == float("inf")
    assert sample.cumulative[:3] == (2, 3, 3)  # upper bounds are inclusive
    assert sample.cumulative[-2:] == (3, 4) and sample.observations == 4
    assert sample.sum == pytest.approx(400.0035)
    assert h.sample(("other", "s")) is None
    c = m.workflows_started
    c.inc(("a",))
    c.inc(("a",), 2)
    assert c.value(("a",)) == 3 and c.value(("b",)) == 0
    names = [f.name for f in m.snapshot()]
    assert len(names) == len(set(names)) and all(n.startswith("aion_") for n in names)
    assert [f.name for f in m.snapshot() if f.kind == "counter"] == [
        "aion_workflows_started_total",
        "aion_workflows_closed_total",
        "aion_step_attempts_total",
        "aion_step_failures_total",
        "aion_step_retries_total",
        "aion_service_restarts_total",
        "aion_workflow_restarts_total",
    ]
    started = next(f for f in m.snapshot() if f.name == "aion_workflows_started_total")
    assert started.label_names == ("workflow_type",)
    assert started.samples == (Sample(("a",), 3.0),)

    # Observed from several threads at once (the commit histograms): nothing is lost.
    def commits() -> None:
        for _ in range(10_000):
            m.observe_commit(2, 0.001, 0.0005)

    workers = [threading.Thread(target=commits) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    batch = m.commit_batch_size.sample()
    assert batch is not None and batch.observations == 40_000 and batch.sum == 80_000
    with pytest.raises(ValueError, match="ascending"):
        type(h)("x", "x", bounds=(2.0, 1.0))


async def test_a_memory_store_engine_counts_too() -> None:
    """MemoryStore has the observer and the timer counts (the engine's tests use it a lot)."""
    store = MemoryStore()
    assert store.count_timers() == 0
    async with aion.Engine(store, workflows=ALL, clock=ManualClock(T0)) as engine:
        await engine.start(sleeper, 60, workflow_id="s")
        await engine.wait_idle()
        await engine._store_counts.refresh()
        assert gauges(engine.metrics)["timers_pending"] == 1
        snap = flat(engine.metrics)
        assert snap["aion_commit_seconds"][()] >= 1
        assert snap["aion_fsync_seconds"] == {}  # nothing to time apart in memory
