"""What can happen to a run: the typed messages its actor takes, and how a run ends.

One vocabulary for everything that moves a run: the engine's methods, the inbox (commands left
by other processes: the ``aion`` command, :class:`aion.Client`), the timer wheel, the step
executor and other runs (children, parents) all send these. A message that waits for its
effect to be recorded carries a :class:`Reply`; one that came from the inbox carries the
command's id (the write that applies it deletes the command).

An :class:`Outcome` is how a run closed (completed, failed, cancelled): the one conversion from
the closing command or event, to the parent's :class:`ChildDone` and to what ``result()``
returns or raises.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from aion import events as ev
from aion._loop import Flag
from aion._replay import _commands as c
from aion.store import InboxCommand, Status, TimerRow

__all__ = [
    "Cancel",
    "ChildDone",
    "Complete",
    "Decide",
    "Message",
    "Outcome",
    "Reply",
    "Signal",
    "StepDone",
    "TimerDue",
    "Wake",
    "from_inbox",
    "to_inbox",
]


class Reply:
    """Completion of a request that waits for its message to be recorded (signal, cancel)."""

    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = Flag()  # not anyio's Event: that one asks sniffio for the backend
        self.error: BaseException | None = None

    def set(self, error: BaseException | None = None) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()

    async def wait(self) -> None:
        await self.event.wait()
        if self.error is not None:
            raise self.error


class _Mail(msgspec.Struct, frozen=True, kw_only=True):
    #: Answered once the message's effect is recorded (or with why it was not).
    reply: Reply | None = None
    #: The inbox command this message applies: deleted by the write that applies it.
    inbox_id: str | None = None


class Wake(_Mail, frozen=True, kw_only=True):
    """Activate the run (recovery, a restart after a crash); for a BLOCKED run: retry it
    (``identity``: the operator who asked, recorded with the release)."""

    identity: str = ""


class Signal(_Mail, frozen=True, kw_only=True):
    name: str
    payload: bytes
    identity: str = ""  # who sent it, recorded with it


class Cancel(_Mail, frozen=True, kw_only=True):
    reason: str | None = None
    identity: str = ""


class TimerDue(_Mail, frozen=True, kw_only=True):
    """A timer row came due (a durable timer, or a step's retry)."""

    row: TimerRow


class StepDone(_Mail, frozen=True, kw_only=True):
    """A step attempt ended: ``value`` when ``error`` is None."""

    seq: int
    attempt: int
    run_id: str
    value: Any = None
    error: BaseException | None = None


class ChildDone(_Mail, frozen=True, kw_only=True):
    """A child run closed (``outcome``), or could not start (``seq`` and ``refusal``)."""

    child_id: str
    outcome: Outcome | None = None
    seq: int | None = None  # which ``ctx.child`` (given for a refused start)
    refusal: str = ""  # why the child could not start


class Decide(_Mail, frozen=True, kw_only=True):
    """A person's decision on a pending approval."""

    approved: bool
    user: str
    comment: str | None = None
    approval_id: str | None = None
    digest: str | None = None


class Complete(_Mail, frozen=True, kw_only=True):
    """An outside system's completion of a waitpoint (its token verified)."""

    waitpoint_id: str
    payload: bytes
    token: str


Message = Wake | Signal | Cancel | TimerDue | StepDone | ChildDone | Decide | Complete


def to_inbox(message: Message, tenant: str, workflow_id: str, at: datetime) -> InboxCommand | None:
    """The inbox command that keeps ``message`` for later (a BLOCKED run's signals,
    completions and cancellations), or None for what is not kept that way."""
    match message:
        case Signal():
            return InboxCommand(
                "signal",
                tenant,
                workflow_id,
                at,
                name=message.name,
                payload=message.payload,
                user=message.identity,
            )
        case Complete():
            return InboxCommand(
                "complete_waitpoint",
                tenant,
                workflow_id,
                at,
                payload=message.payload,
                token=message.token,
            )
        case Cancel():
            return InboxCommand(
                "cancel", tenant, workflow_id, at, comment=message.reason, user=message.identity
            )
    return None


def from_inbox(command: InboxCommand, waitpoint_id: str = "") -> Message | None:
    """The message an inbox command stands for (its fields checked; ``waitpoint_id``: the one
    a completion's verified token names), or None for a kind that is not a message (a start
    begins a run) or is not understood."""
    inbox_id = command.command_id
    match command.kind:
        case "signal":
            return Signal(
                name=command.name, payload=command.payload, identity=command.user, inbox_id=inbox_id
            )
        case "cancel":
            return Cancel(reason=command.comment, identity=command.user, inbox_id=inbox_id)
        case "complete_waitpoint":
            return Complete(
                waitpoint_id=waitpoint_id,
                payload=command.payload,
                token=command.token,
                inbox_id=inbox_id,
            )
        case "approve" | "reject":
            return Decide(
                approved=command.kind == "approve",
                user=command.user,
                comment=command.comment,
                approval_id=command.target_id or None,
                digest=command.digest or None,
                inbox_id=inbox_id,
            )
        case "unblock":
            return Wake(identity=command.user, inbox_id=inbox_id)
    return None


class Outcome(msgspec.Struct, frozen=True):
    """How a run closed: ``status`` COMPLETED (``result``), FAILED (``error_type``,
    ``message``, ``traceback``) or CANCELLED (``message``: the reason, or empty)."""

    status: Status
    result: bytes = b""
    error_type: str = ""
    message: str = ""
    traceback: str = ""

    @classmethod
    def of_command(cls, command: c.Command) -> Outcome | None:
        match command:
            case c.CompleteWorkflow():
                return cls(Status.COMPLETED, result=command.result)
            case c.FailWorkflow():
                return cls(
                    Status.FAILED,
                    error_type=command.error_type,
                    message=command.message,
                    traceback=command.traceback,
                )
            case c.CancelWorkflow():
                return cls(Status.CANCELLED, message=command.reason or "")
        return None

    @classmethod
    def of_event(cls, event: ev.Event | None) -> Outcome | None:
        match event:
            case ev.WorkflowCompleted():
                return cls(Status.COMPLETED, result=event.result)
            case ev.WorkflowFailed():
                return cls(
                    Status.FAILED,
                    error_type=event.error_type,
                    message=event.message,
                    traceback=event.traceback,
                )
            case ev.WorkflowCancelled():
                return cls(Status.CANCELLED, message=event.reason or "")
        return None
