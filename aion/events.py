"""The event vocabulary: what aion records in a workflow's history.

These Structs *are* the on-disk schema. Each is frozen, encoded as a msgpack array whose first
element is its stable tag, followed by the fields in declaration order. The schema evolution
rules (docs/design.md, pinned by tests/test_codec_golden.py) are:

1. A tag, once released, names the same event forever; tags are never reused.
2. New fields are appended at the end of a Struct and always have a default, so old records
   decode (the field takes its default) and old readers ignore nothing they need.
3. Fields are never removed, reordered, renamed in meaning or retyped. The two base fields
   (``seq``, ``at``) are fixed forever: nothing is ever added to :class:`Event` itself.
4. A change that cannot follow these rules is a new event type with a new tag, and the store
   format version is raised.

Payloads (workflow input, step results, signal payloads ...) are stored as ``bytes`` holding the
msgpack encoding of the user's value, so the history decodes without knowing user types.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeAlias

import msgspec

__all__ = [
    "ALL_EVENT_TYPES",
    "AnyEvent",
    "ApprovalDecided",
    "ApprovalRequested",
    "ChildCompleted",
    "ChildFailed",
    "ChildStarted",
    "Event",
    "PatchRecorded",
    "RandomSeedRecorded",
    "SearchAttributesUpserted",
    "SignalReceived",
    "StepCompleted",
    "StepFailed",
    "StepRetryScheduled",
    "StepScheduled",
    "StepStarted",
    "TimeRecorded",
    "TimerCancelled",
    "TimerFired",
    "TimerScheduled",
    "WaitpointCompleted",
    "WaitpointCreated",
    "WorkflowBlocked",
    "WorkflowCancelRequested",
    "WorkflowCancelled",
    "WorkflowCompleted",
    "WorkflowContinuedAsNew",
    "WorkflowFailed",
    "WorkflowStarted",
    "WorkflowUnblocked",
]

SearchValue: TypeAlias = str | int | float | bool


class Event(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """Base of every history event.

    Attributes:
        seq: position in the workflow's history, contiguous from 1 across continue-as-new.
        at: when the event was recorded (aware UTC datetime).
    """

    seq: int
    at: datetime


# --- workflow lifecycle -------------------------------------------------------------------


class WorkflowStarted(Event, frozen=True, tag="workflow.started"):
    """A run began. Opens a run segment; a continued-as-new successor starts with one too."""

    workflow_id: str
    run_id: str
    workflow_type: str
    input: bytes
    tenant: str
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None
    code_version: str | None = None
    continued_from_run_id: str | None = None
    #: Who started the run (an API key's label, the ``identity=`` of ``start``); "" unknown.
    identity: str = ""
    #: The W3C ``traceparent`` of the start (OpenTelemetry): the run's spans join that trace.
    trace: str = ""


class WorkflowCompleted(Event, frozen=True, tag="workflow.completed"):
    """The run returned; ``result`` is the encoded return value."""

    result: bytes


class WorkflowFailed(Event, frozen=True, tag="workflow.failed"):
    """The run raised (an outcome, not a crash)."""

    error_type: str
    message: str
    traceback: str = ""


class WorkflowCancelRequested(Event, frozen=True, tag="workflow.cancel_requested"):
    """Someone asked the run to cancel; the workflow sees ``aion.Cancelled`` at its next await.
    ``identity``: who asked (an API key's label, ``cancel(identity=...)``); "" unknown."""

    reason: str | None = None
    identity: str = ""


class WorkflowCancelled(Event, frozen=True, tag="workflow.cancelled"):
    """The run ended cancelled."""

    reason: str | None = None


class WorkflowContinuedAsNew(Event, frozen=True, tag="workflow.continued_as_new"):
    """The run ended and asked for a successor run with this input under the same workflow id."""

    new_run_id: str
    workflow_type: str
    input: bytes


class WorkflowBlocked(Event, frozen=True, tag="workflow.blocked"):
    """The engine parked the run (non-determinism or a crash loop); it needs an operator or fix."""

    reason: str
    detail: str = ""


class WorkflowUnblocked(Event, frozen=True, tag="workflow.unblocked"):
    """An operator (or a restart after a fix) released a parked run; ``identity``: the
    operator who asked (``unblock(identity=...)``), "" for a restart or unknown."""

    reason: str = ""
    identity: str = ""


# --- steps ----------------------------------------------------------------------------------


class StepScheduled(Event, frozen=True, tag="step.scheduled"):
    """The workflow asked for step number ``step_seq``; ``args`` are the encoded arguments."""

    step_seq: int
    name: str
    args: bytes = b""


class StepStarted(Event, frozen=True, tag="step.started"):
    """An attempt of the step began executing (attempts count from 1)."""

    step_seq: int
    attempt: int


class StepCompleted(Event, frozen=True, tag="step.completed"):
    """The step returned; ``result`` is the encoded return value."""

    step_seq: int
    attempt: int
    result: bytes


class StepFailed(Event, frozen=True, tag="step.failed"):
    """An attempt raised. ``retryable`` classifies the error; ``will_retry`` says whether a
    ``StepRetryScheduled`` follows (otherwise the step has failed for good). ``traceback`` is
    the attempt's traceback from the step's own code, at most 8 KiB (its end is kept)."""

    step_seq: int
    attempt: int
    error_type: str
    message: str
    retryable: bool
    will_retry: bool = False
    traceback: str = ""


class StepRetryScheduled(Event, frozen=True, tag="step.retry_scheduled"):
    """The step will be attempted again at ``due`` (a durable timer)."""

    step_seq: int
    next_attempt: int
    due: datetime


# --- timers ---------------------------------------------------------------------------------


class TimerScheduled(Event, frozen=True, tag="timer.scheduled"):
    """A durable timer; its row in the due-time index is written in the same transaction."""

    timer_seq: int
    due: datetime
    name: str = ""


class TimerFired(Event, frozen=True, tag="timer.fired"):
    """The timer came due; its index row is deleted in the same transaction."""

    timer_seq: int


class TimerCancelled(Event, frozen=True, tag="timer.cancelled"):
    """The timer was cancelled before it fired; its index row is deleted with this event."""

    timer_seq: int


# --- signals, approvals, waitpoints -----------------------------------------------------------


class SignalReceived(Event, frozen=True, tag="signal.received"):
    """A signal arrived. ``signal_id`` (when the sender gave one) deduplicates redeliveries."""

    name: str
    payload: bytes
    signal_id: str = ""
    #: Who sent it (an API key's label, ``signal(identity=...)``); "" unknown.
    identity: str = ""


class ApprovalRequested(Event, frozen=True, tag="approval.requested"):
    """The run waits for a person. ``digest`` binds the decision to what is being approved."""

    approval_seq: int
    approval_id: str
    action: str
    details: bytes
    digest: str
    timeout_at: datetime | None = None
    step_seq: int = 0  # > 0: the engine's approval policy holds step ``step_seq`` for it


class ApprovalDecided(Event, frozen=True, tag="approval.decided"):
    """A person approved or rejected the approval ``approval_id``."""

    approval_id: str
    approved: bool
    user: str
    comment: str | None = None
    digest: str = ""  # the digest of what was decided (the request's ``digest``)


class WaitpointCreated(Event, frozen=True, tag="waitpoint.created"):
    """A waitpoint an outside system can complete with a signed token."""

    waitpoint_seq: int
    waitpoint_id: str
    name: str
    expires_at: datetime | None = None
    kid: str = ""  # the key that signed its token, so replay hands out the same token
    created_at: datetime | None = None  # the signed creation time (the workflow's time)


class WaitpointCompleted(Event, frozen=True, tag="waitpoint.completed"):
    """An outside system completed the waitpoint with ``payload`` (one-shot)."""

    waitpoint_id: str
    payload: bytes


# --- children -------------------------------------------------------------------------------


class ChildStarted(Event, frozen=True, tag="child.started"):
    """A child workflow was started; its own ``WorkflowStarted`` committed with this event."""

    child_seq: int
    child_workflow_id: str
    child_run_id: str
    workflow_type: str
    input: bytes = b""  # the child's input, so recovery can start a child that never started


class ChildCompleted(Event, frozen=True, tag="child.completed"):
    """The child returned ``result``."""

    child_seq: int
    result: bytes


class ChildFailed(Event, frozen=True, tag="child.failed"):
    """The child failed or was cancelled (``error_type`` says which)."""

    child_seq: int
    error_type: str
    message: str


# --- markers --------------------------------------------------------------------------------


class TimeRecorded(Event, frozen=True, tag="marker.time"):
    """A wall-clock value the workflow read, recorded so replay returns the same value."""

    marker_seq: int
    value: datetime


class RandomSeedRecorded(Event, frozen=True, tag="marker.random_seed"):
    """The seed of the run's deterministic random source."""

    seed: int


class PatchRecorded(Event, frozen=True, tag="marker.patch"):
    """``ctx.patched(patch_id)`` returned True at this point of the run."""

    patch_id: str


class SearchAttributesUpserted(Event, frozen=True, tag="search.upserted"):
    """Search attributes set by the workflow (indexed for listing)."""

    attributes: dict[str, SearchValue]


AnyEvent: TypeAlias = (
    WorkflowStarted
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCancelRequested
    | WorkflowCancelled
    | WorkflowContinuedAsNew
    | WorkflowBlocked
    | WorkflowUnblocked
    | StepScheduled
    | StepStarted
    | StepCompleted
    | StepFailed
    | StepRetryScheduled
    | TimerScheduled
    | TimerFired
    | TimerCancelled
    | SignalReceived
    | ApprovalRequested
    | ApprovalDecided
    | WaitpointCreated
    | WaitpointCompleted
    | ChildStarted
    | ChildCompleted
    | ChildFailed
    | TimeRecorded
    | RandomSeedRecorded
    | PatchRecorded
    | SearchAttributesUpserted
)

ALL_EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__

#: Events that close a run segment.
TERMINAL_EVENT_TYPES: tuple[type[Event], ...] = (
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCancelled,
    WorkflowContinuedAsNew,
)
