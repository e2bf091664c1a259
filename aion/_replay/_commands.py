"""Commands: what workflow code asks the engine to do, and the events that record them.

A command is issued when workflow code calls a durable operation. Live, the actor records it as
an event and carries it out; during replay it is matched against the event recorded for it. The
match is by kind, per-kind sequence number and name.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from aion import events as ev

from ._definition import RetryPolicy

__all__ = [
    "COMMAND_EVENT_TYPES",
    "CancelTimer",
    "CancelWorkflow",
    "Command",
    "CompleteWorkflow",
    "ContinueAsNew",
    "CreateWaitpoint",
    "FailWorkflow",
    "RecordPatch",
    "RequestApproval",
    "ScheduleStep",
    "StartChild",
    "StartTimer",
    "UpsertSearchAttributes",
    "describe_command",
    "describe_event",
    "is_command_event",
    "matches",
    "to_event",
]


class Command(msgspec.Struct):
    """Base of every command. (Structs: made in C, one for every operation the code calls,
    replayed or live.)"""


class ScheduleStep(Command):
    seq: int
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    encoded_args: bytes
    retry: RetryPolicy
    timeout: float | None


class StartTimer(Command):
    seq: int
    due: datetime
    name: str = ""


class CancelTimer(Command):
    seq: int
    due: datetime  # so the engine can delete the timer's index row


class StartChild(Command):
    seq: int
    workflow_type: str
    workflow_id: str
    input: bytes


class RequestApproval(Command):
    seq: int
    approval_id: str
    action: str
    details: bytes
    digest: str
    timeout_at: datetime | None
    wait: Any = None  # the driver's record of it; the engine stamps the request time on it


class CreateWaitpoint(Command):
    seq: int
    waitpoint_id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    kid: str
    fingerprint: str


class RecordPatch(Command):
    patch_id: str


class UpsertSearchAttributes(Command):
    attributes: dict[str, ev.SearchValue]


class CompleteWorkflow(Command):
    result: bytes


class FailWorkflow(Command):
    error_type: str
    message: str
    traceback: str


class CancelWorkflow(Command):
    reason: str | None


class ContinueAsNew(Command):
    workflow_type: str
    input: bytes


_COMMAND_EVENTS: tuple[type[ev.Event], ...] = (
    ev.StepScheduled,
    ev.TimerScheduled,
    ev.TimerCancelled,
    ev.ChildStarted,
    ev.ApprovalRequested,
    ev.WaitpointCreated,
    ev.PatchRecorded,
    ev.SearchAttributesUpserted,
    ev.WorkflowCompleted,
    ev.WorkflowFailed,
    ev.WorkflowCancelled,
    ev.WorkflowContinuedAsNew,
)
#: The types of the events :func:`is_command_event` may call so (event types are never
#: subclassed: a test of ``type(event)`` is exact and O(1)).
COMMAND_EVENT_TYPES = frozenset(_COMMAND_EVENTS)


def is_command_event(event: ev.Event) -> bool:
    """True for events recorded because workflow code issued a command.

    An ``ApprovalRequested`` for a step held by the engine's approval policy is the engine's,
    not the code's: policies may change between deploys without breaking replay.
    """
    kind = type(event)
    if kind is ev.ApprovalRequested:
        return event.step_seq == 0  # type: ignore[attr-defined, no-any-return]
    return kind in COMMAND_EVENT_TYPES


def matches(command: Command, event: ev.Event) -> bool:
    """Whether ``event`` is the record of ``command`` (kind, sequence number and name).

    Only an event recorded for a command (:func:`is_command_event`) matches one. Checked for
    every replayed command: dispatch on the command, then the event's exact type (event types
    are never subclassed).
    """
    match command:
        case ScheduleStep():
            return (
                type(event) is ev.StepScheduled
                and command.seq == event.step_seq
                and command.name == event.name
            )
        case StartTimer():
            return type(event) is ev.TimerScheduled and command.seq == event.timer_seq
        case CancelTimer():
            return type(event) is ev.TimerCancelled and command.seq == event.timer_seq
        case StartChild():
            return (
                type(event) is ev.ChildStarted
                and command.seq == event.child_seq
                and command.workflow_type == event.workflow_type
            )
        case RequestApproval():
            # Bound to what is approved: other details are another approval. (One the engine's
            # policy requested for a held step, step_seq != 0, is not the code's.)
            return (
                type(event) is ev.ApprovalRequested
                and event.step_seq == 0
                and command.seq == event.approval_seq
                and command.action == event.action
                and command.digest == event.digest
            )
        case CreateWaitpoint():
            return (
                type(event) is ev.WaitpointCreated
                and command.seq == event.waitpoint_seq
                and command.name == event.name
            )
        case RecordPatch():
            return type(event) is ev.PatchRecorded and command.patch_id == event.patch_id
        case UpsertSearchAttributes():
            return type(event) is ev.SearchAttributesUpserted
        case CompleteWorkflow():
            return type(event) is ev.WorkflowCompleted
        case FailWorkflow():
            return type(event) is ev.WorkflowFailed
        case CancelWorkflow():
            return type(event) is ev.WorkflowCancelled
        case ContinueAsNew():
            return (
                type(event) is ev.WorkflowContinuedAsNew
                and command.workflow_type == event.workflow_type
            )
    return False


def to_event(command: Command, seq: int, at: datetime, **extra: Any) -> ev.Event:
    """The event that records ``command`` (``extra`` supplies what only the engine knows)."""
    match command:
        case ScheduleStep():
            return ev.StepScheduled(
                seq=seq, at=at, step_seq=command.seq, name=command.name, args=command.encoded_args
            )
        case StartTimer():
            return ev.TimerScheduled(
                seq=seq, at=at, timer_seq=command.seq, due=command.due, name=command.name
            )
        case CancelTimer():
            return ev.TimerCancelled(seq=seq, at=at, timer_seq=command.seq)
        case StartChild():
            return ev.ChildStarted(
                seq=seq,
                at=at,
                child_seq=command.seq,
                child_workflow_id=command.workflow_id,
                child_run_id=extra["child_run_id"],
                workflow_type=command.workflow_type,
                input=command.input,
            )
        case RequestApproval():
            return ev.ApprovalRequested(
                seq=seq,
                at=at,
                approval_seq=command.seq,
                approval_id=command.approval_id,
                action=command.action,
                details=command.details,
                digest=command.digest,
                timeout_at=command.timeout_at,
            )
        case CreateWaitpoint():
            return ev.WaitpointCreated(
                seq=seq,
                at=at,
                waitpoint_seq=command.seq,
                waitpoint_id=command.waitpoint_id,
                name=command.name,
                expires_at=command.expires_at,
                kid=command.kid,
                created_at=command.created_at,
            )
        case RecordPatch():
            return ev.PatchRecorded(seq=seq, at=at, patch_id=command.patch_id)
        case UpsertSearchAttributes():
            return ev.SearchAttributesUpserted(seq=seq, at=at, attributes=command.attributes)
        case CompleteWorkflow():
            return ev.WorkflowCompleted(seq=seq, at=at, result=command.result)
        case FailWorkflow():
            return ev.WorkflowFailed(
                seq=seq,
                at=at,
                error_type=command.error_type,
                message=command.message,
                traceback=command.traceback,
            )
        case CancelWorkflow():
            return ev.WorkflowCancelled(seq=seq, at=at, reason=command.reason)
        case ContinueAsNew():
            return ev.WorkflowContinuedAsNew(
                seq=seq,
                at=at,
                new_run_id=extra["new_run_id"],
                workflow_type=command.workflow_type,
                input=command.input,
            )
    raise TypeError(f"unknown command {command!r}")


def describe_command(command: Command | None) -> str:
    """A short phrase for error messages: ``step 'charge_card' (#2)``."""
    match command:
        case None:
            return "nothing (the code did not reach another durable operation)"
        case ScheduleStep():
            return f"step {command.name!r} (#{command.seq})"
        case StartTimer():
            return f"timer #{command.seq}"
        case CancelTimer():
            return f"cancel of timer #{command.seq}"
        case StartChild():
            return f"child workflow {command.workflow_type!r} (#{command.seq})"
        case RequestApproval():
            return f"approval {command.action!r} (#{command.seq}, digest {command.digest[:19]})"
        case CreateWaitpoint():
            return f"waitpoint {command.name!r} (#{command.seq})"
        case RecordPatch():
            return f"patch {command.patch_id!r}"
        case UpsertSearchAttributes():
            return "search attributes"
        case CompleteWorkflow():
            return "return (workflow completed)"
        case FailWorkflow():
            return f"raise {command.error_type} (workflow failed)"
        case CancelWorkflow():
            return "cancellation"
        case ContinueAsNew():
            return "continue-as-new"
    return repr(command)


def describe_event(event: ev.Event | None) -> str:
    """A short phrase for error messages about a recorded event."""
    match event:
        case None:
            return "nothing more"
        case ev.StepScheduled():
            return f"step {event.name!r} (#{event.step_seq})"
        case ev.TimerScheduled():
            return f"timer #{event.timer_seq}"
        case ev.TimerCancelled():
            return f"cancel of timer #{event.timer_seq}"
        case ev.ChildStarted():
            return f"child workflow {event.workflow_type!r} (#{event.child_seq})"
        case ev.ApprovalRequested():
            return f"approval {event.action!r} (#{event.approval_seq}, digest {event.digest[:19]})"
        case ev.WaitpointCreated():
            return f"waitpoint {event.name!r} (#{event.waitpoint_seq})"
        case ev.PatchRecorded():
            return f"patch {event.patch_id!r}"
        case ev.WorkflowCompleted():
            return "return (workflow completed)"
        case ev.WorkflowFailed():
            return f"raise {event.error_type} (workflow failed)"
        case ev.WorkflowContinuedAsNew():
            return "continue-as-new"
    return type(event).__name__
