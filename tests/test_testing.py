"""aion.testing: replay of engine histories, the determinism harness, strategies, fixtures."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aion
from aion.errors import InvalidArgument
from aion.testing import SignalAt, check_determinism, replay, run_workflow
from aion.testing.strategies import signal_schedules


def reserve(item: str) -> str:
    return f"res-{item}"


@aion.workflow(name="expense")
async def expense(ctx: aion.Context, amount: int) -> dict[str, Any]:
    reservation = await ctx.step(reserve, f"amount-{amount}")
    try:
        approved = await ctx.wait_signal("approve", timeout=86400)
    except aion.WaitTimedOut:
        return {"status": "expired", "reservation": reservation}
    await ctx.sleep(60)
    return {"status": "approved" if approved else "rejected", "id": str(ctx.uuid4())}


async def test_replay_of_an_engine_history(aion_engine: aion.Engine) -> None:
    handle = await aion_engine.start(expense, 50, workflow_id="e1")
    await aion_engine.signal("e1", "approve", True)  # buffered until the workflow waits
    result = await handle.result(timeout=5)
    history = await aion_engine.history("e1")
    replayed = replay(expense, history)
    assert replayed.status == "completed" and replayed.result == result
    assert replayed.events == len(history) and replayed.runs == 1
    # A prefix replays too: the run is still waiting, and says on what.
    partial = replay(expense, history[:5])
    assert partial.status == "running"


async def test_replay_reports_divergence_of_changed_code(aion_engine: aion.Engine) -> None:
    await aion_engine.start(expense, 50, workflow_id="e2")
    await aion_engine.wait_idle()
    history = await aion_engine.history("e2")

    @aion.workflow(name="expense")
    async def changed(ctx: aion.Context, amount: int) -> None:
        await ctx.sleep(5)

    with pytest.raises(aion.NondeterminismError, match="history has step 'reserve'"):
        replay(changed, history)


async def test_replay_refuses_a_history_event_whose_raw_bytes_are_damaged(
    aion_engine: aion.Engine,
) -> None:
    await aion_engine.start(expense, 50, workflow_id="e3")
    await aion_engine.wait_idle()
    history = await aion_engine.history("e3")
    first = history[0]
    # Not msgpack at all, and the event with its workflow type made invalid UTF-8 (msgspec
    # raises a plain UnicodeDecodeError for that one).
    assert first.raw.count(b"expense") == 1
    for raw in (b"\xc1", first.raw.replace(b"expense", b"\xc3\x28xpense")):
        damaged = msgspec.structs.replace(first, raw=raw)
        with pytest.raises(InvalidArgument, match="history event 1 has a raw encoding"):
            replay(expense, [damaged, *history[1:]])


def test_run_workflow_follows_the_signal_schedule() -> None:
    import anyio

    outcome = anyio.run(
        lambda: run_workflow(expense, 10, signals=[SignalAt(3600, "approve", False)])
    )
    assert outcome.status == "completed"
    assert outcome.result["status"] == "rejected"
    received = [h for h in outcome.history if h.type == "signal.received"]
    assert received[0].recorded_at.timestamp() - outcome.history[0].recorded_at.timestamp() == (
        3600
    )
    expired = anyio.run(lambda: run_workflow(expense, 10))
    assert expired.result["status"] == "expired"


@settings(max_examples=15, deadline=None)
@given(schedule=signal_schedules({"approve": st.booleans()}, max_signals=3, max_after=2 * 86400))
def test_expense_is_deterministic_under_any_schedule(schedule: list[SignalAt]) -> None:
    outcome = check_determinism(expense, 120, signals=schedule)
    first_on_time = next((s for s in schedule if s.after < 86400), None)  # the timer wins ties
    if first_on_time is None:
        assert outcome.result["status"] == "expired"
    else:
        expected = "approved" if first_on_time.payload else "rejected"
        assert outcome.result["status"] == expected
    assert outcome.replayed is not None and outcome.replayed.status == "completed"


def test_check_determinism_catches_a_nondeterministic_workflow() -> None:
    @aion.workflow(name="flaky")
    async def flaky(ctx: aion.Context) -> None:
        if random.random() < 2:  # real randomness: a new decision on every replay
            await ctx.step(reserve, str(random.random()))
        if random.random() < 0.5:
            await ctx.step(reserve, "a")
        else:
            await ctx.sleep(1)

    random.seed(1)
    with pytest.raises((aion.NondeterminismError, AssertionError)):
        for _ in range(10):
            check_determinism(flaky)
