"""A driver that leaves memory (its run is evicted) is freed by reference counting.

An evicted run's driver used to become cyclic garbage (task -> coroutine frame -> context ->
driver -> task, futures <-> the tasks waiting on them): freed only by a full collection, which
runs rarely in a process with many long-lived objects, so the memory of evicted runs piled up
until then. ``Driver.discard`` takes the cycles apart.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import aion
from aion._replay import Driver

from ._sim import Sim


def echo(x: int) -> int:
    return x


@aion.workflow(name="discard-waits")
async def waits_everywhere(ctx: aion.Context) -> Any:
    """Waits on a signal, a timer, a step and a child at once, through gather."""
    first = await ctx.step(echo, 1)
    try:
        return await ctx.gather(
            ctx.wait_signal("go"),
            ctx.sleep(3600),
            ctx.step(echo, 2),
            ctx.child("discard-child", workflow_id="kid"),
            ctx.wait_signal("timeout", timeout=60),
        )
    finally:
        # Cleanup that calls an operation while the coroutine is closed: ignored.
        await ctx.step(echo, first)


@aion.workflow(name="discard-parked")
async def parked(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("workflow", [parked, waits_everywhere])
@pytest.mark.usefixtures("no_automatic_collection")
def test_a_discarded_driver_leaves_no_cyclic_garbage(workflow: Any) -> None:
    sim = Sim(workflow)
    sim.run_one_step()
    driver = sim.driver
    assert driver.outcome is None  # the run waits
    gone = weakref.ref(driver)
    gc.collect()
    driver.discard()
    del driver
    sim.driver = None  # type: ignore[assignment]
    assert gone() is None, "the driver is still referenced after discard()"
    assert gc.collect() == 0, "discard() left cyclic garbage"


@pytest.mark.usefixtures("no_automatic_collection")
def test_without_discard_the_driver_is_cyclic_garbage() -> None:
    # What the test above guards against: the same driver, dropped without discard().
    sim = Sim(parked)
    gone = weakref.ref(sim.driver)
    gc.collect()
    sim.driver = None  # type: ignore[assignment]
    assert gone() is not None
    assert gc.collect() > 0
    assert gone() is None


def test_a_replayed_driver_discarded_then_replayed_again_behaves_the_same() -> None:
    sim = Sim(waits_everywhere)
    sim.run_one_step()
    history = list(sim.history)
    first = Driver(sim.definition)
    first.replay(history)
    first.discard()
    second = Driver(sim.definition)
    second.replay(history)
    assert second.pending() == sim.driver.pending()
    second.discard()
    sim.driver.discard()


@aion.workflow(name="discard-finishes")
async def finishes(ctx: aion.Context) -> Any:
    await ctx.step(echo, 1)
    return await ctx.gather(ctx.step(echo, 2), ctx.sleep(0))


@pytest.mark.usefixtures("no_automatic_collection")
def test_a_finished_driver_needs_no_collector_either() -> None:
    sim = Sim(finishes)
    while sim.run_one_step() or sim.fire_next_timer():
        pass
    assert sim.driver.outcome is not None
    gone = weakref.ref(sim.driver)
    gc.collect()
    sim.driver.discard()
    sim.driver = None  # type: ignore[assignment]
    assert gone() is None
    assert gc.collect() == 0
