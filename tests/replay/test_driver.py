"""The pure replay driver: live runs, replays, divergence, and every context operation."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest

import aion
from aion import events as ev
from aion._codec import decode_payload, encode_payload
from aion._replay import Context, RetryPolicy, workflow
from aion._replay import _commands as c
from aion.errors import NondeterminismError, PayloadError, StepError, WaitTimedOut

from ._sim import T0, Sim, replay


def add(a: int, b: int) -> int:
    return a + b


def shout(text: str) -> str:
    return text.upper()


@workflow
async def order(ctx: Context, order_id: str, amount: int) -> dict[str, Any]:
    total = await ctx.step(add, amount, 5)
    await ctx.sleep(3600)
    decision = await ctx.wait_signal("ship", timeout=86400)
    return {"order": order_id, "total": total, "ship": decision, "at": ctx.now().isoformat()}


def result_of(sim: Sim) -> Any:
    outcome = sim.driver.outcome
    assert isinstance(outcome, c.CompleteWorkflow), outcome
    return decode_payload(outcome.result)


def test_live_run_records_a_replayable_history() -> None:
    sim = Sim(order, "o-1", 100).run(signals=[("ship", {"carrier": "ups"})])
    assert result_of(sim) == {
        "order": "o-1",
        "total": 105,
        "ship": {"carrier": "ups"},
        "at": (T0 + timedelta(hours=1)).isoformat(),
    }
    kinds = [type(e).__name__ for e in sim.history]
    assert kinds == [
        "WorkflowStarted", "StepScheduled", "StepStarted", "StepCompleted", "TimerScheduled",
        "TimerFired", "TimerScheduled", "SignalReceived", "TimerCancelled", "WorkflowCompleted",
    ]  # fmt: skip
    assert [e.seq for e in sim.history] == list(range(1, 11))
    again = replay(order, sim.history)
    assert again.outcome == sim.driver.outcome
    assert again.take_commands() == []  # everything the code did was recorded


def test_replay_of_a_prefix_continues_live_with_the_same_commands() -> None:
    sim = Sim(order, "o-1", 100).run(signals=[("ship", "x")])
    prefix = sim.history[:4]  # up to StepCompleted
    driver = replay(order, prefix)
    commands = driver.take_commands()
    # The activation after StepCompleted issued the timer, recorded next in the full history.
    assert len(commands) == 1 and isinstance(commands[0], c.StartTimer)
    assert c.matches(commands[0], sim.history[4])


def test_divergence_names_workflow_position_recorded_and_now() -> None:
    sim = Sim(order, "o-1", 100).run(signals=[("ship", None)])

    @workflow(name="order")
    async def changed(ctx: Context, order_id: str, amount: int) -> str:
        await ctx.step(shout, order_id)
        return "x"

    with pytest.raises(NondeterminismError) as info:
        replay(changed, sim.history)
    message = str(info.value)
    assert "'wf' (order)" in message
    assert "event 2" in message
    assert "history has step 'add' (#1)" in message
    assert "calls step 'shout' (#1)" in message
    assert "ctx.patched()" in message


def test_code_that_skips_a_recorded_step_diverges() -> None:
    sim = Sim(order, "o-1", 100).run(signals=[("ship", None)])

    @workflow(name="order")
    async def skipping(ctx: Context, order_id: str, amount: int) -> str:
        await ctx.sleep(3600)
        return "x"

    with pytest.raises(NondeterminismError, match="history has step 'add'"):
        replay(skipping, sim.history)


def test_code_that_returns_early_diverges() -> None:
    sim = Sim(order, "o-1", 100).run(signals=[("ship", None)])

    @workflow(name="order")
    async def early(ctx: Context, order_id: str, amount: int) -> int:
        return 1

    with pytest.raises(NondeterminismError, match=r"history has step 'add' \(#1\), the code now"):
        replay(early, sim.history)


def test_awaiting_a_non_aion_awaitable_fails_clearly() -> None:
    @workflow
    async def naughty(ctx: Context) -> None:
        await asyncio.sleep(0)  # yields to an event loop the driver does not have

    with pytest.raises(NondeterminismError, match=r"awaited asyncio.tasks.sleep\(\)") as info:
        Sim(naughty)
    assert "not an aion operation" in str(info.value)
    assert "test_driver.py" in str(info.value)


def test_now_random_uuid_are_the_same_on_replay() -> None:
    seen: list[Any] = []

    @workflow
    async def values(ctx: Context) -> list[Any]:
        out = [ctx.now().isoformat(), ctx.random().random(), str(ctx.uuid4())]
        await ctx.sleep(10)
        out += [ctx.now().isoformat(), ctx.random().randint(0, 10**9), str(ctx.uuid4())]
        seen.append(out)
        return out

    sim = Sim(values).run()
    live = result_of(sim)
    assert live[0] == T0.isoformat() and live[3] == (T0 + timedelta(seconds=10)).isoformat()
    replayed = replay(values, sim.history)
    assert seen[0] == seen[1] == live
    assert replayed.outcome == sim.driver.outcome
    other = Sim(values, run_id="r-other").run()
    assert result_of(other)[1] != live[1]  # seeded per run


def test_patched_is_false_for_old_histories_and_true_for_new_runs() -> None:
    @workflow(name="flow")
    async def old(ctx: Context) -> str:
        await ctx.step(shout, "a")
        return "old"

    @workflow(name="flow")
    async def new(ctx: Context) -> str:
        patched = ctx.patched("extra-step")
        if patched:
            await ctx.step(shout, "b")
        await ctx.step(shout, "a")
        return "new" if patched else "old"

    old_history = Sim(old).run().history
    # The old history replays through the new code, taking the old path.
    driver = replay(new, old_history)
    assert isinstance(driver.outcome, c.CompleteWorkflow)
    assert decode_payload(driver.outcome.result) == "old"
    # A new run takes the new path and records the patch, and replays the same way.
    sim = Sim(new).run()
    assert result_of(sim) == "new"
    assert any(isinstance(e, ev.PatchRecorded) for e in sim.history)
    assert replay(new, sim.history).outcome == sim.driver.outcome


def test_gather_steps_timers_and_coroutines_in_argument_order() -> None:
    @workflow
    async def fan(ctx: Context) -> list[Any]:
        async def two_steps(x: str) -> str:
            first = await ctx.step(shout, x)
            return await ctx.step(shout, first + "!")

        return await ctx.gather(ctx.step(add, 1, 2), two_steps("a"), ctx.sleep(5), two_steps("b"))

    sim = Sim(fan).run()
    assert result_of(sim) == [3, "A!", None, "B!"]
    assert replay(fan, sim.history).outcome == sim.driver.outcome


def test_signals_are_buffered_in_order_and_time_out() -> None:
    @workflow
    async def listener(ctx: Context) -> list[Any]:
        await ctx.sleep(1)  # signals arrive meanwhile and are buffered
        got = [await ctx.wait_signal("s"), await ctx.wait_signal("s")]
        try:
            await ctx.wait_signal("s", timeout=30)
        except WaitTimedOut as exc:
            got.append(f"timeout: {exc}")
        return got

    sim = Sim(listener)
    sim.signal("s", 1)
    sim.signal("s", 2)
    sim.run()
    result = result_of(sim)
    assert result[:2] == [1, 2]
    assert result[2].startswith("timeout: no signal 's' within 30")
    assert replay(listener, sim.history).outcome == sim.driver.outcome


def flaky_factory() -> Any:
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError(f"down {calls['n']}")
        return "up"

    return flaky, calls


def test_step_retries_then_succeeds() -> None:
    flaky, calls = flaky_factory()

    @workflow
    async def retrying(ctx: Context) -> str:
        return str(await ctx.step(flaky, retry=RetryPolicy(max_attempts=5)))

    sim = Sim(retrying).run()
    assert result_of(sim) == "up" and calls["n"] == 3
    fails = [e for e in sim.history if isinstance(e, ev.StepFailed)]
    assert [(f.attempt, f.will_retry) for f in fails] == [(1, True), (2, True)]
    assert replay(retrying, sim.history).outcome == sim.driver.outcome
    assert calls["n"] == 3  # replay does not run the step


def test_step_that_fails_for_good_raises_step_error_and_fails_the_run() -> None:
    def broken() -> None:
        raise ValueError("card declined")

    @workflow
    async def failing(ctx: Context) -> None:
        try:
            await ctx.step(broken, retry=RetryPolicy(max_attempts=2))
        except StepError as exc:
            assert exc.error_type == "ValueError" and exc.attempts == 2
            raise

    sim = Sim(failing).run()
    outcome = sim.driver.outcome
    assert isinstance(outcome, c.FailWorkflow)
    assert (outcome.error_type, outcome.message) == ("ValueError", "card declined")
    replayed = replay(failing, sim.history).outcome
    assert isinstance(replayed, c.FailWorkflow)
    assert (replayed.error_type, replayed.message) == ("ValueError", "card declined")


def test_non_retryable_errors_fail_at_once() -> None:
    calls = []

    def refuse() -> None:
        calls.append(1)
        raise KeyError("nope")

    @workflow
    async def wf(ctx: Context) -> None:
        await ctx.step(refuse, retry=RetryPolicy(max_attempts=5, non_retryable=(KeyError,)))

    sim = Sim(wf).run()
    assert len(calls) == 1 and isinstance(sim.driver.outcome, c.FailWorkflow)


def test_cancellation_raises_at_the_await_and_cleanup_may_run_steps() -> None:
    @workflow
    async def cancellable(ctx: Context) -> str:
        try:
            await ctx.sleep(1000)
        except aion.Cancelled:
            await ctx.step(shout, "cleanup")
            raise
        return "never"

    sim = Sim(cancellable)
    sim.cancel("user asked")
    sim.run()
    assert isinstance(sim.driver.outcome, c.CancelWorkflow)
    assert sim.step_calls == ["shout"]
    assert any(isinstance(e, ev.TimerCancelled) for e in sim.history)
    assert replay(cancellable, sim.history).outcome == sim.driver.outcome


def test_continue_as_new_and_child_and_failure_outcomes() -> None:
    @workflow
    async def looping(ctx: Context, n: int) -> None:
        ctx.continue_as_new(n + 1)

    sim = Sim(looping, 1)
    outcome = sim.driver.outcome
    assert isinstance(outcome, c.ContinueAsNew) and decode_payload(outcome.input) == [2]

    @workflow
    async def kid(ctx: Context, x: int) -> int:
        return x * 2

    @workflow
    async def parent(ctx: Context) -> int:
        return int(await ctx.child(kid, 21)) + 1

    sim = Sim(parent, child_results=lambda t, i: encode_payload(42)).run()
    assert result_of(sim) == 43
    started = [e for e in sim.history if isinstance(e, ev.ChildStarted)]
    assert started[0].child_workflow_id == "wf/child-1"

    @workflow
    async def boom(ctx: Context) -> None:
        raise RuntimeError("bad thing")

    outcome = Sim(boom).driver.outcome
    assert isinstance(outcome, c.FailWorkflow) and outcome.error_type == "RuntimeError"
    assert "bad thing" in outcome.traceback


def test_payload_errors_surface_at_the_call_site() -> None:
    @workflow
    async def wf(ctx: Context) -> str:
        try:
            await ctx.step(shout, object())
        except PayloadError as exc:
            return f"caught: {exc}"
        return "no"

    sim = Sim(wf).run()
    assert result_of(sim).startswith("caught: arguments of step 'shout' cannot be encoded")
    assert not any(isinstance(e, ev.StepScheduled) for e in sim.history)


class Receipt(msgspec.Struct):
    id: str
    when: datetime


def make_receipt(order_id: str) -> Receipt:
    return Receipt(order_id, T0)


def test_step_results_take_the_step_return_type() -> None:
    @workflow
    async def typed(ctx: Context) -> str:
        receipt = await ctx.step(make_receipt, "o-9")
        assert isinstance(receipt, Receipt) and receipt.when == T0
        return receipt.id

    sim = Sim(typed).run()
    assert result_of(sim) == "o-9"
    assert replay(typed, sim.history).outcome == sim.driver.outcome


def test_compensations_run_in_reverse_order() -> None:
    undone: list[str] = []

    def undo(x: str) -> None:
        undone.append(x)

    @workflow
    async def saga(ctx: Context) -> list[str]:
        await ctx.step(shout, "a", compensate=undo)
        await ctx.step(shout, "b", compensate=undo)
        await ctx.compensate()
        return undone

    sim = Sim(saga).run()
    assert result_of(sim) == ["b", "a"]


def test_a_finished_driver_is_freed_without_the_cycle_collector() -> None:
    # A reference cycle through the driver (it once kept its Context, which keeps it) leaves
    # every finished run to the cyclic collector: under load that was a fifth of the CPU.
    import gc
    import weakref

    sim = Sim(order, "o-1", 100).run(signals=[("ship", {"carrier": "ups"})])
    assert isinstance(sim.driver.outcome, c.CompleteWorkflow)
    history = sim.history
    del sim
    gc.disable()
    try:
        driver = replay(order, history)
        assert isinstance(driver.outcome, c.CompleteWorkflow)
        ref = weakref.ref(driver)
        del driver
        assert ref() is None, "the driver of a finished run is still referenced (a cycle?)"
    finally:
        gc.enable()
