"""Public value types of the engine API: handles, descriptions, history events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec

from aion.store import Status

__all__ = [
    "PENDING_KINDS",
    "HistoryEvent",
    "PendingApproval",
    "StepFailure",
    "StepInfo",
    "WaitpointInfo",
    "WorkflowDescription",
    "WorkflowHandle",
]

#: The kinds of things a run waits on: plural (describe's ``pending`` keys) -> singular (the
#: prefix stored in the projection's ``waiting_on`` entries, e.g. ``"signal:ship"``).
PENDING_KINDS = {
    "steps": "step",
    "timers": "timer",
    "signals": "signal",
    "children": "child",
    "approvals": "approval",
    "waitpoints": "waitpoint",
}


class HistoryEvent(msgspec.Struct, frozen=True):
    """One recorded event, as ``engine.history()`` returns it.

    Attributes:
        seq: position in the workflow's history (from 1).
        type: the event's stable tag, e.g. ``"step.completed"``.
        recorded_at: when it was recorded (UTC).
        data: the event's fields; payloads (inputs, results, signal payloads) are decoded.
        raw: the exact stored encoding, which ``aion.testing.replay`` replays.
    """

    seq: int
    type: str
    recorded_at: datetime
    data: dict[str, Any]
    raw: bytes = b""


class StepFailure(msgspec.Struct, frozen=True):
    """A failed step attempt, as ``WorkflowDescription.last_step_failure`` reports it.

    Attributes:
        step_name: the step's recorded name.
        step_seq: the step's number in its run (from 1).
        attempt: which attempt failed (from 1).
        error_type: the exception's type name, e.g. ``"ConnectionError"``.
        message: the exception's message.
        traceback: the traceback from the step's own code (at most 8 KiB, its end kept);
            empty for failures recorded before aion kept tracebacks.
        retryable: whether the retry policy allows retrying this error at all.
        will_retry: another attempt is scheduled; ``False``: the step failed for good, and
            the workflow saw :class:`aion.StepError` at its ``await``.
        failed_at: when the failure was recorded (UTC).
    """

    step_name: str
    step_seq: int
    attempt: int
    error_type: str
    message: str
    traceback: str
    retryable: bool
    will_retry: bool
    failed_at: datetime


class WorkflowDescription(msgspec.Struct, frozen=True):
    """What ``engine.describe()`` (and each item of ``engine.list()``) reports about a workflow.

    ``pending`` maps kinds (``timers``, ``signals``, ``steps``, ``children``, ``approvals``,
    ``waitpoints``) to what the run waits on. ``reason`` says why a run is ``BLOCKED``;
    ``detail`` adds what to do, or the last traceback of an engine crash loop.
    ``last_step_failure`` is the current run's most recent failed step attempt, with its
    traceback, unless that step succeeded later: a step waiting to retry, or one that failed
    for good (``describe()`` only; ``None`` in ``list()`` items and when nothing failed).
    """

    workflow_id: str
    run_id: str
    workflow_type: str
    tenant: str
    status: Status
    started_at: datetime
    closed_at: datetime | None
    result: Any = None
    error: str | None = None
    history_length: int = 0
    pending: dict[str, list[str]] = {}
    reason: str = ""
    created_at: datetime | None = None
    parent_workflow_id: str | None = None
    search_attributes: dict[str, Any] = {}
    detail: str = ""
    last_step_failure: StepFailure | None = None


class PendingApproval(msgspec.Struct, frozen=True):
    """An approval that waits for a person (``engine.pending_approvals()``).

    ``action`` is what ``ctx.approval`` asked for, or the name of a step the approval policy
    holds (then ``step`` is True and ``details`` are the step's arguments). ``digest`` binds a
    decision to exactly this request: pass it to ``engine.approve(..., digest=...)`` to make
    sure what you approve is what you saw.
    """

    workflow_id: str
    approval_id: str
    action: str
    details: Any
    digest: str
    requested_at: datetime
    timeout_at: datetime | None
    run_id: str
    tenant: str
    step: bool = False


class WaitpointInfo(msgspec.Struct, frozen=True):
    """A waitpoint of a workflow (``engine.pending_waitpoints()``): never its token, only a
    fingerprint of it (the first 16 hex digits of its SHA-256), and ``token_kid``, the id of
    the key that signed it (during a key rotation: which tokens still depend on a retired key).
    """

    workflow_id: str
    waitpoint_id: str
    name: str
    status: str
    created_at: datetime
    expires_at: datetime | None
    fingerprint: str
    run_id: str
    tenant: str
    completed_at: datetime | None = None
    last_failed_validation_at: datetime | None = None
    token_kid: str = ""


class StepInfo(msgspec.Struct, frozen=True):
    """What a running step can learn about itself (``aion.current_step()``).

    ``idempotency_key`` is stable across retries and re-executions after a crash: pass it to
    outside systems so a repeated call has no second effect.
    """

    workflow_id: str
    run_id: str
    step_seq: int
    name: str
    attempt: int
    idempotency_key: str
    tenant: str = "default"


class WorkflowHandle:
    """A reference to one workflow id in one tenant."""

    __slots__ = ("_result", "tenant", "workflow_id")

    def __init__(
        self,
        workflow_id: str,
        tenant: str,
        result: Callable[[str, str, float | None], Awaitable[Any]],
    ) -> None:
        self.workflow_id = workflow_id
        self.tenant = tenant
        self._result = result

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the workflow to finish and return its result.

        Raises:
            WorkflowFailed: it raised (carries the original error type name and message).
            WorkflowCancelled: it was cancelled.
            TimeoutError: it did not finish within ``timeout`` seconds.
            WorkflowNotFound: there is no such workflow in this tenant.
        """
        return await self._result(self.workflow_id, self.tenant, timeout)

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r}, tenant={self.tenant!r})"
