"""One round of a run as data: what it writes (:class:`Round`) and what it does once that is
recorded (the effects), plus the request for a new run (:class:`RunStart`).

The recorder fills a round; the actor commits it in one write and then carries out its effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import msgspec

from aion import events as ev
from aion._replay import _commands as c
from aion.errors import AionError
from aion.store import Append, ApprovalRow, TimerRow, WaitpointRow, WorkflowRecord

from ._messages import ChildDone, Message, Outcome, Reply
from ._state import Actor, Key

__all__ = [
    "Blocked",
    "CancelChild",
    "CheckChild",
    "ChildStart",
    "DispatchStep",
    "Effect",
    "HoldTimer",
    "Mail",
    "ReleaseTimer",
    "Round",
    "RunClosed",
    "RunStart",
]


# --- effects: what is done once a round is recorded ----------------------------------------------


class DispatchStep(msgspec.Struct, frozen=True):
    """Start attempt ``attempt`` of the step the code scheduled with ``command``."""

    command: c.ScheduleStep
    attempt: int


class HoldTimer(msgspec.Struct, frozen=True):
    row: TimerRow


class ReleaseTimer(msgspec.Struct, frozen=True):
    row: TimerRow


class RunClosed(msgspec.Struct, frozen=True):
    """The run closed: its result waiters and its parent learn the outcome."""

    record: WorkflowRecord
    outcome: Outcome


class CheckChild(msgspec.Struct, frozen=True):
    """After a replay: a child that finished while nobody listened reports now."""

    seq: int
    child_id: str


class CancelChild(msgspec.Struct, frozen=True):
    child_id: str


class Mail(msgspec.Struct, frozen=True):
    """A message to a run (the run itself: a child it could not start)."""

    key: Key
    message: Message


Effect = DispatchStep | HoldTimer | ReleaseTimer | RunClosed | CheckChild | CancelChild | Mail


class Blocked(Exception):
    """The run cannot go on with this code: park it BLOCKED with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RunStart(NamedTuple):
    """A new run of a workflow id (a start, a child's start)."""

    tenant: str
    workflow_id: str
    workflow_type: str
    input: bytes
    run_id: str
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None
    identity: str = ""  # who started it (recorded in WorkflowStarted)
    trace: str = ""  # the start's traceparent (recorded in WorkflowStarted)


class Round:
    """What one processing round writes and then does (two per workflow at least: a plain
    class with list displays, cheaper to make than a dataclass's default factories)."""

    __slots__ = (
        "approvals",
        "at",
        "children",
        "effects",
        "events",
        "inbox_delete",
        "refused",
        "replies",
        "tally",
        "timers_add",
        "timers_delete",
        "waitpoints",
    )

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.timers_add: list[TimerRow] = []
        self.timers_delete: list[TimerRow] = []
        self.approvals: list[ApprovalRow] = []
        self.waitpoints: list[WaitpointRow] = []
        self.inbox_delete: list[str] = []
        self.effects: list[Effect] = []
        self.replies: list[Reply] = []
        # Requests refused because of what this round decides (e.g. the loser of a race):
        # told only once that is recorded; if the commit fails they get its error instead.
        self.refused: list[tuple[Reply, AionError]] = []
        self.at: datetime | None = None  # one timestamp for everything one round records
        self.children: list[ChildStart] = []  # started with this write (checked, then merged)
        # Notes for the metrics, applied once this round is committed (``Metrics.tally``).
        self.tally: list[tuple[str, tuple[str, ...]]] = []

    @property
    def writes(self) -> bool:
        """Whether there is anything to commit."""
        return bool(
            self.events
            or self.timers_delete
            or self.inbox_delete
            or self.waitpoints
            or self.approvals
        )

    def refuse(self, reply: Reply, error: AionError) -> None:
        self.replies.append(reply)
        self.refused.append((reply, error))

    def answer(self) -> None:
        """The round is recorded: refusals get their error, everything else its
        acknowledgement."""
        for reply, error in self.refused:
            reply.set(error)
        for reply in self.replies:
            reply.set()


@dataclass(slots=True)
class ChildStart:
    """A child run started by a parent's write: its first events, rows and actor."""

    append: Append
    round: Round
    actor: Actor
    refused: ChildDone  # what the parent gets if the id turns out to be taken
    refused_to: Key  # the parent
