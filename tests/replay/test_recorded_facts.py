"""A divergence the driver finds in a recorded fact (not in a command the code issued) raises
the same NondeterminismError as one found at a command: it used to leave the driver as the
internal ``Diverged`` signal, which the engine and ``aion.testing.replay`` did not expect."""

from __future__ import annotations

from datetime import timedelta

import pytest

import aion.testing
from aion import events as ev
from aion._replay import Context, workflow
from aion.errors import NondeterminismError

from ._sim import T0, Sim, replay


def add(a: int, b: int) -> int:
    return a + b


@workflow(name="facts")
async def two_steps(ctx: Context) -> int:
    first: int = await ctx.step(add, 1, 2)
    second: int = await ctx.step(add, first, 3)
    return second


@workflow(name="facts")
async def waits_instead(ctx: Context) -> int:
    return int(await ctx.wait_signal("go"))


def test_a_recorded_command_the_code_no_longer_issues_raises_nondeterminism() -> None:
    history = Sim(two_steps).run().history
    with pytest.raises(NondeterminismError) as caught:
        replay(waits_instead, history)
    assert "event 2" in str(caught.value)
    assert "history has step 'add' (#1)" in str(caught.value)
    assert "the code now does nothing" in str(caught.value)
    with pytest.raises(NondeterminismError):
        aion.testing.replay(waits_instead, history)


def test_a_fact_for_a_step_never_scheduled_raises_nondeterminism_live() -> None:
    sim = Sim(waits_instead)
    sim.run_one_step()
    driver = sim.driver
    completed = ev.StepCompleted(
        seq=sim.seq + 1, at=T0 + timedelta(seconds=1), step_seq=1, attempt=1, result=b"\x01"
    )
    with pytest.raises(NondeterminismError, match="a result for step #1"):
        driver.apply(completed)
