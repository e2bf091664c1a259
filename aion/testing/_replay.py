"""Replaying recorded histories against current code: ``aion.testing.replay``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aion import events as ev
from aion._codec import decode_payload
from aion._engine import HistoryEvent, events_of
from aion._replay import Driver, WorkflowDefinition, definition_of
from aion._replay import _commands as c
from aion.errors import InvalidArgument

__all__ = ["ReplayResult", "replay"]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What replaying a history showed.

    Attributes:
        runs: run segments replayed (continue-as-new starts a new one).
        events: events replayed.
        status: ``"completed"``, ``"failed"``, ``"cancelled"``, ``"continued_as_new"`` or
            ``"running"`` (the history ends with the run still waiting).
        result: the decoded result of a completed run.
        error: ``"ErrorType: message"`` of a failed run.
        pending_commands: what the code would do next, live, after the last recorded event.
    """

    runs: int
    events: int
    status: str
    result: Any = None
    error: str | None = None
    pending_commands: tuple[str, ...] = ()


def replay(
    workflow: Any,
    history: Sequence[HistoryEvent | ev.Event],
    *,
    workflows: Sequence[Any] = (),
) -> ReplayResult:
    """Replay a recorded history (as ``engine.history()`` returns it) against the current code.

    Every run segment of the history is replayed in turn through the deterministic driver; no
    step runs and nothing is written.

    Args:
        workflow: the workflow function (or a definition) the history belongs to.
        history: the recorded events, oldest first.
        workflows: other workflows (children started by name) to resolve types.

    Raises:
        NondeterminismError: the code now does something other than what was recorded; the
            message names the workflow, the position, what was recorded and what the code did.
    """
    definition = definition_of(workflow)
    registry = {d.name: d for d in (definition_of(w) for w in workflows)}
    registry.setdefault(definition.name, definition)
    events = events_of(history)
    if not events:
        raise InvalidArgument("the history is empty: nothing to replay")
    driver: Driver | None = None
    segments = _segments(events)
    for segment in segments:
        first = segment[0]
        seg_definition = definition
        if isinstance(first, ev.WorkflowStarted) and first.workflow_type != definition.name:
            found = registry.get(first.workflow_type)
            if found is None:
                raise InvalidArgument(
                    f"the history's run is of workflow type {first.workflow_type!r}, not "
                    f"{definition.name!r}; pass the right workflow"
                )
            seg_definition = found
        driver = _replay_segment(seg_definition, segment, registry)
    assert driver is not None
    return _result(driver, len(segments), len(events))


def _segments(events: list[ev.Event]) -> list[Sequence[ev.Event]]:
    """The run segments of a history: each from a ``WorkflowStarted`` up to the next (the
    first from the first event, whatever it is)."""
    starts = [i for i, event in enumerate(events) if type(event) is ev.WorkflowStarted]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    if len(starts) == 1:
        return [events]  # one run, the common case: no copy
    ends = [*starts[1:], len(events)]
    return [events[start:end] for start, end in zip(starts, ends, strict=True)]


def _replay_segment(
    definition: WorkflowDefinition,
    segment: Sequence[ev.Event],
    registry: dict[str, WorkflowDefinition],
) -> Driver:
    driver = Driver(definition, resolve=registry.get)
    driver.replay(segment)
    return driver


def _result(driver: Driver, runs: int, count: int) -> ReplayResult:
    outcome = driver.outcome
    pending = tuple(c.describe_command(cmd) for cmd in driver.take_commands())
    match outcome:
        case c.CompleteWorkflow():
            return ReplayResult(runs, count, "completed", result=decode_payload(outcome.result))
        case c.FailWorkflow():
            return ReplayResult(
                runs, count, "failed", error=f"{outcome.error_type}: {outcome.message}"
            )
        case c.CancelWorkflow():
            return ReplayResult(runs, count, "cancelled")
        case c.ContinueAsNew():
            return ReplayResult(runs, count, "continued_as_new")
    return ReplayResult(runs, count, "running", pending_commands=pending)
