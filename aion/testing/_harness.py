"""Run a workflow under a scripted schedule of signals and check that its history replays.

This is what users property-test their own workflows with (see docs/testing.md)::

    @given(schedule=aion.testing.strategies.signal_schedules({"approve": st.booleans()}))
    def test_expense_is_deterministic(schedule):
        aion.testing.check_determinism(expense, 120, signals=schedule)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from aion._clock import ManualClock
from aion._engine import Engine, HistoryEvent
from aion.errors import AionError, WorkflowCancelled, WorkflowFailed
from aion.store import MemoryStore

from ._replay import ReplayResult, replay

__all__ = ["RunOutcome", "SignalAt", "check_determinism", "run_workflow"]

DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SignalAt:
    """Send signal ``name`` with ``payload`` when ``after`` seconds of workflow time passed."""

    after: float
    name: str
    payload: Any = None


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a scripted run ended, with its recorded history."""

    status: str
    result: Any
    error: str | None
    history: list[HistoryEvent] = field(repr=False)
    replayed: ReplayResult | None = None


async def run_workflow(
    workflow: Any,
    *args: Any,
    signals: Sequence[SignalAt] = (),
    workflows: Sequence[Any] = (),
    start: datetime = DEFAULT_START,
    horizon: float = 365 * 86400.0,
) -> RunOutcome:
    """Run ``workflow(*args)`` on an in-memory engine with a manual clock, delivering ``signals``
    at their times, until it ends or waits with nothing left to happen (or ``horizon`` passes).

    Steps really run (they are your code); time is simulated, so a month-long wait takes
    milliseconds.
    """
    clock = ManualClock(start)
    registry = [workflow, *workflows]
    async with Engine(
        MemoryStore(),
        workflows=registry,
        clock=clock,
        activation_workers=4,
        max_concurrent_steps=8,
    ) as engine:
        handle = await engine.start(workflow, *args, workflow_id="run-under-test")
        end = clock.now() + horizon
        for sig in sorted(signals, key=lambda s: s.after):
            if await _closed(engine):
                break
            await _run_until(engine, clock, min(clock.now() + max(sig.after, 0), end))
            if await _closed(engine):
                break
            try:
                await engine.signal(handle.workflow_id, sig.name, sig.payload)
            except AionError:
                break  # it finished meanwhile
        while not await _closed(engine):
            await engine.wait_idle()
            deadline = clock.next_deadline()
            if deadline is None or deadline > end or await _closed(engine):
                break
            clock.set_time(deadline)
        desc = await engine.describe(handle.workflow_id)
        history = await engine.history(handle.workflow_id)
        status = desc.status.value
        result: Any = None
        error: str | None = None
        if desc.status.is_terminal:
            try:
                result = await handle.result()
            except (WorkflowFailed, WorkflowCancelled) as exc:
                error = str(exc)
        return RunOutcome(status, result, error, history)


async def _closed(engine: Engine) -> bool:
    return (await engine.describe("run-under-test")).status.is_terminal


async def _run_until(engine: Engine, clock: ManualClock, when: float) -> None:
    while True:
        await engine.wait_idle()
        deadline = clock.next_deadline()
        if deadline is None or deadline > when:
            clock.set_time(max(when, clock.now()))
            await engine.wait_idle()
            return
        clock.set_time(deadline)


def check_determinism(
    workflow: Any,
    *args: Any,
    signals: Sequence[SignalAt] = (),
    workflows: Sequence[Any] = (),
    start: datetime = DEFAULT_START,
) -> RunOutcome:
    """Run the workflow under ``signals`` and assert that its history replays exactly.

    Replays the recorded history against the code (same commands, same values, same outcome),
    runs the same schedule again and checks that it records the same sequence of events.
    Raises ``NondeterminismError`` or ``AssertionError`` with what differed. Call it from a
    synchronous test (it runs its own event loop).
    """

    async def go() -> RunOutcome:
        first = await run_workflow(
            workflow, *args, signals=signals, workflows=workflows, start=start
        )
        replayed = replay(workflow, first.history, workflows=workflows)
        if first.status == "running":
            assert replayed.status == "running", replayed
        else:
            assert replayed.status == first.status, (replayed, first)
            assert replayed.pending_commands == (), replayed
        second = await run_workflow(
            workflow, *args, signals=signals, workflows=workflows, start=start
        )
        assert _shape(first.history) == _shape(second.history), (
            "two runs with the same inputs and signals recorded different histories:\n"
            f"{_shape(first.history)}\n{_shape(second.history)}"
        )
        return RunOutcome(first.status, first.result, first.error, first.history, replayed)

    return anyio.run(go)


def _shape(history: Sequence[HistoryEvent]) -> list[tuple[str, Any]]:
    def key(h: HistoryEvent) -> Any:
        return h.data.get("name") or h.data.get("step_seq") or h.data.get("timer_seq")

    return [(h.type, key(h)) for h in history]
