"""A workflow raising a BaseException that is not an Exception (issue 12, item 6).

``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` or a bare
``BaseException`` from workflow code is no outcome of the run: the run is parked BLOCKED with a
reason naming the exception and the code location, and the engine keeps serving every other
run; live, and when it happens while a restarted engine replays the history after a durable
timer. ``aion.Cancelled`` keeps its meaning (the run is cancelled).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import aion
import aion.errors
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)

KINDS: dict[str, type[BaseException]] = {
    "CancelledError": asyncio.CancelledError,
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
    "BaseException": BaseException,
}

#: Workflow ids whose code raises after its timer: a stand-in for a deploy of buggy code.
RAISE_AFTER_TIMER: set[str] = set()


@aion.workflow
async def poison_now(ctx: aion.Context, kind: str) -> None:
    raise KINDS[kind]("boom")


@aion.workflow
async def poison_later(ctx: aion.Context, kind: str) -> str:
    await ctx.sleep(60)
    if ctx.info.workflow_id in RAISE_AFTER_TIMER:
        raise KINDS[kind]("after the timer")
    signal: str = await ctx.wait_signal("go")
    return signal


async def _raise_in_branch(ctx: aion.Context, kind: str) -> None:
    await ctx.sleep(1)
    raise KINDS[kind]("in a gathered branch")


@aion.workflow
async def poison_in_gather(ctx: aion.Context, kind: str) -> None:
    await ctx.gather(_raise_in_branch(ctx, kind), ctx.sleep(5))


async def _stubborn_branch(ctx: aion.Context) -> None:
    try:
        await ctx.sleep(3600)
    finally:
        raise KeyboardInterrupt("from a cleanup after the run ended")


async def _quick(ctx: aion.Context) -> int:
    await ctx.sleep(1)
    raise ValueError("the run fails with this")


@aion.workflow
async def cleanup_raises(ctx: aion.Context) -> None:
    await ctx.gather(_quick(ctx), _stubborn_branch(ctx))


@aion.workflow
async def cancels_itself(ctx: aion.Context) -> None:
    await ctx.sleep(1)
    raise aion.Cancelled("the code gives up")


@aion.workflow
async def parent_of_poison(ctx: aion.Context, kind: str) -> str:
    try:
        await ctx.child(poison_now, kind, workflow_id="poisoned-child")
    except aion.WorkflowFailed:
        return "child failed"
    return "child done"


@aion.workflow
async def healthy(ctx: aion.Context, n: int) -> int:
    await ctx.sleep(10)
    return n * 2


ALL = [
    poison_now,
    poison_later,
    poison_in_gather,
    cleanup_raises,
    cancels_itself,
    parent_of_poison,
    healthy,
]


def _assert_parked(description: aion.WorkflowDescription, kind: str, where: str) -> None:
    assert description.status is aion.Status.BLOCKED
    reason = description.reason or ""
    assert f"raised {kind}" in reason, reason
    assert f"{Path(__file__).name}:" in reason and f"in {where}" in reason, reason
    assert "aion unblock" in reason, reason


@pytest.mark.parametrize("kind", KINDS)
async def test_raised_live_parks_the_run_and_others_complete(tmp_path: Path, kind: str) -> None:
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(tmp_path, workflows=ALL, clock=clock) as engine:
        others = [await engine.start(healthy, n) for n in range(3)]
        await engine.start(poison_now, kind, workflow_id="now")  # start() survives
        await engine.start(poison_in_gather, kind, workflow_id="branch")
        more = [await engine.start(healthy, n) for n in range(3, 6)]
        assert [await h.result(timeout=10) for h in others + more] == [0, 2, 4, 6, 8, 10]
        await engine.wait_idle()
        _assert_parked(await engine.describe("now"), kind, "poison_now")
        _assert_parked(await engine.describe("branch"), kind, "_raise_in_branch")
        assert engine.failure is None
        # The engine still takes new work after it.
        assert await (await engine.start(healthy, 21)).result(timeout=10) == 42


@pytest.mark.parametrize("kind", KINDS)
async def test_raised_when_a_durable_timer_fires_after_a_restart(tmp_path: Path, kind: str) -> None:
    workflow_id = f"later-{kind}"
    async with aion.Engine(tmp_path, workflows=ALL, clock=ManualClock(T0)) as engine:
        await engine.start(poison_later, kind, workflow_id=workflow_id)
        await engine.wait_idle()  # waits on its 60 s timer
    RAISE_AFTER_TIMER.add(workflow_id)
    try:
        # The timer is overdue when the next engine starts: it fires during its startup.
        clock = ManualClock(T0 + timedelta(minutes=5), auto_advance=True)
        async with aion.Engine(tmp_path, workflows=ALL, clock=clock) as engine:
            other = await engine.start(healthy, 4)
            assert await other.result(timeout=10) == 8
            await engine.wait_idle()
            _assert_parked(await engine.describe(workflow_id), kind, "poison_later")
        # Every later start finds it parked again, and starts.
        async with aion.Engine(tmp_path, workflows=ALL, clock=clock) as engine:
            await engine.wait_idle()
            _assert_parked(await engine.describe(workflow_id), kind, "poison_later")
            assert await (await engine.start(healthy, 5)).result(timeout=10) == 10
    finally:
        RAISE_AFTER_TIMER.discard(workflow_id)
    # Fixed: unblocking replays it, and it goes on from where it was.
    async with aion.Engine(tmp_path, workflows=ALL, clock=clock) as engine:
        await engine.wait_idle()
        description = await engine.describe(workflow_id)
        assert description.status is aion.Status.RUNNING, description  # a restart retried it
        await engine.signal(workflow_id, "go", "shipped")
        assert await engine.handle(workflow_id).result(timeout=10) == "shipped"


@pytest.mark.parametrize("kind", KINDS)
async def test_raised_while_a_restarted_engine_replays(tmp_path: Path, kind: str) -> None:
    workflow_id = f"replayed-{kind}"
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(tmp_path, workflows=ALL, clock=clock) as engine:
        await engine.start(poison_later, kind, workflow_id=workflow_id)
        await engine.wait_idle()  # past its timer, waiting for "go"
        assert (await engine.describe(workflow_id)).pending == {"signals": ["go"]}
    RAISE_AFTER_TIMER.add(workflow_id)  # the code now raises at a point its history passed
    try:
        async with aion.Engine(tmp_path, workflows=ALL, clock=clock) as engine:
            # The signal activates it: the replay raises, the run is parked, the signal kept.
            await engine.signal(workflow_id, "go", "kept")
            await engine.wait_idle()
            _assert_parked(await engine.describe(workflow_id), kind, "poison_later")
            assert await (await engine.start(healthy, 6)).result(timeout=10) == 12
            again = await engine.unblock(workflow_id)  # the cause is still there
            _assert_parked(again, kind, "poison_later")
    finally:
        RAISE_AFTER_TIMER.discard(workflow_id)
    async with aion.Engine(tmp_path, workflows=ALL, clock=clock) as engine:
        assert await engine.handle(workflow_id).result(timeout=10) == "kept"


async def test_a_cleanup_raising_after_the_run_ended_does_not_change_its_outcome(
    tmp_path: Path,
) -> None:
    async with aion.Engine(tmp_path, workflows=ALL, clock=ManualClock(T0, auto_advance=True)) as e:
        handle = await e.start(cleanup_raises)
        with pytest.raises(aion.WorkflowFailed, match="the run fails with this"):
            await handle.result(timeout=10)


async def test_aion_cancelled_raised_by_the_code_still_cancels_the_run(tmp_path: Path) -> None:
    async with aion.Engine(tmp_path, workflows=ALL, clock=ManualClock(T0, auto_advance=True)) as e:
        handle = await e.start(cancels_itself)
        with pytest.raises(aion.WorkflowCancelled):
            await handle.result(timeout=10)
        assert (await e.describe(handle.workflow_id)).status is aion.Status.CANCELLED


async def test_the_replayer_reports_it_as_activation_failed(tmp_path: Path) -> None:
    from aion.testing import replay

    async with aion.Engine(tmp_path, workflows=ALL, clock=ManualClock(T0, auto_advance=True)) as e:
        handle = await e.start(poison_now, "SystemExit")
        await e.wait_idle()
        history = await e.history(handle.workflow_id)
    with pytest.raises(aion.errors.ActivationFailed, match="raised SystemExit: boom"):
        replay(poison_now, history)


async def test_a_child_raising_one_is_parked_and_its_parent_waits(tmp_path: Path) -> None:
    async with aion.Engine(tmp_path, workflows=ALL, clock=ManualClock(T0, auto_advance=True)) as e:
        await e.start(parent_of_poison, "KeyboardInterrupt", workflow_id="parent")
        await e.wait_idle()
        _assert_parked(await e.describe("poisoned-child"), "KeyboardInterrupt", "poison_now")
        parent = await e.describe("parent")
        assert parent.status is aion.Status.RUNNING
        assert parent.pending == {"children": ["poisoned-child"]}
