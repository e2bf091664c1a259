"""The resident set is bounded by estimated memory as well as by a count of runs, and an evicted
run leaves nothing behind: its driver is freed at once, not by a later full collection."""

from __future__ import annotations

import gc
import weakref
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aion
from aion._engine import _scheduler
from aion._engine._state import Actor
from aion._replay import Driver, definition_of
from aion.errors import InvalidArgument


@aion.workflow(name="budget-parked")
async def parked(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


async def noop(i: int) -> int:
    return i


@aion.workflow(name="budget-steps")
async def steps_then_park(ctx: aion.Context, n: int) -> Any:
    for i in range(n):
        await ctx.step(noop, i)
    return await ctx.wait_signal("go")


def _scheduler_for(max_resident: int, max_bytes: int) -> _scheduler.Scheduler:
    async def never(*_: Any) -> None:
        raise AssertionError("not processed in this test")

    return _scheduler.Scheduler(
        process=never,
        crashed=never,
        busy=nullcontext,
        max_resident=max_resident,
        max_resident_bytes=max_bytes,
        workers=1,
    )


def _resident(scheduler: _scheduler.Scheduler, name: str, events: int) -> Actor:
    actor = scheduler.actors[("t", name)] = Actor(("t", name))
    actor.driver = Driver(definition_of(parked))
    actor.head = events
    scheduler.charge(actor)
    return actor


def test_a_run_is_charged_by_its_driver_and_its_events() -> None:
    scheduler = _scheduler_for(100, 2**40)
    small = _resident(scheduler, "small", 1)
    big = _resident(scheduler, "big", 1001)
    assert small.charged == _scheduler.RESIDENT_RUN_BYTES + _scheduler.RESIDENT_EVENT_BYTES
    assert big.charged - small.charged == 1000 * _scheduler.RESIDENT_EVENT_BYTES
    assert scheduler.resident_bytes == small.charged + big.charged
    without = scheduler.actors[("t", "mail")] = Actor(("t", "mail"))
    scheduler.charge(without)
    assert without.charged == 0  # a run with mail and no driver yet
    scheduler.forget(big)
    assert scheduler.resident_bytes == small.charged
    assert big.driver is None and big.charged == 0


def test_idle_runs_are_evicted_past_the_byte_budget_oldest_first() -> None:
    one = _scheduler.cost_of(events=1)
    scheduler = _scheduler_for(1000, 3 * one)
    actors = [_resident(scheduler, f"r{i}", 1) for i in range(5)]
    actors[0].busy = True  # being processed: never evicted
    scheduler.evict()
    assert list(scheduler.actors) == [("t", "r0"), ("t", "r3"), ("t", "r4")]
    assert scheduler.resident_bytes == 3 * one
    assert all(a.driver is None for a in actors[1:3])


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "grow", "forget", "evict", "busy"]),
        st.integers(0, 9),
        st.integers(1, 500),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.integers(1, 6), st.integers(1, 12))
def test_the_byte_count_is_the_sum_of_the_resident_charges(
    ops: list[tuple[str, int, int]], max_resident: int, budget_runs: int
) -> None:
    scheduler = _scheduler_for(max_resident, budget_runs * _scheduler.cost_of(events=50))
    for op, i, n in ops:
        key = ("t", f"r{i}")
        actor = scheduler.actors.get(key)
        if op == "add" and actor is None:
            _resident(scheduler, f"r{i}", n)
        elif op == "grow" and actor is not None and actor.driver is not None:
            actor.head += n
            scheduler.charge(actor)
        elif op == "forget" and actor is not None:
            scheduler.forget(actor)
        elif op == "busy" and actor is not None:
            actor.busy = not actor.busy
        elif op == "evict":
            scheduler.evict()
            idle = [a for a in scheduler.actors.values() if a.idle]
            if idle:  # evicting stopped only once both limits held
                assert len(scheduler.actors) <= max_resident
                assert scheduler.resident_bytes <= scheduler._max_bytes
        assert scheduler.resident_bytes == sum(a.charged for a in scheduler.actors.values())


def test_the_byte_budget_is_checked(tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, "64MiB", True):
        with pytest.raises(InvalidArgument, match="max_resident_bytes"):
            aion.Engine(tmp_path / "d", max_resident_bytes=bad)


async def test_the_engine_keeps_its_resident_runs_within_the_byte_budget(tmp_path: Path) -> None:
    budget = 5 * _scheduler.cost_of(events=3)
    async with aion.Engine(
        tmp_path / "d", workflows=[steps_then_park], max_resident_bytes=budget
    ) as engine:
        for i in range(20):
            await engine.start(steps_then_park, 0, workflow_id=f"p{i}")
        assert engine.resident_runs <= 5
        assert engine.resident_bytes <= budget
        # Runs with longer histories cost more: fewer of them fit.
        for i in range(20):
            handle = await engine.start(steps_then_park, 20, workflow_id=f"s{i}")
        await engine.signal(handle.workflow_id, "go", "done")
        assert await handle.result(timeout=10) == "done"
        assert engine.resident_bytes <= budget
        # Every evicted run still gets its signal.
        for i in range(20):
            await engine.signal(f"p{i}", "go", i)
        for i in range(20):
            assert await engine.handle(f"p{i}").result(timeout=10) == i


async def test_an_evicted_run_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    async with aion.Engine(tmp_path / "d", workflows=[parked], max_resident_runs=1) as engine:
        await engine.start(parked, workflow_id="first")
        actor = engine._runtime.actors[("default", "first")]
        assert actor.driver is not None
        gone = weakref.ref(actor.driver)
        del actor
        gc.disable()
        try:
            await engine.start(parked, workflow_id="second")  # evicts "first"
            assert ("default", "first") not in engine._runtime.actors
            assert gone() is None, "the evicted run's driver waits for the cycle collector"
        finally:
            gc.enable()
        await engine.signal("first", "go", 1)
        assert await engine.handle("first").result(timeout=10) == 1
