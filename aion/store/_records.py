"""Rows the store keeps beside the histories: projections, timers, waitpoints, approvals, inbox.

Like events, these Structs are on-disk schema (array-encoded, new fields appended with defaults;
see docs/design.md). The store maintains their secondary indexes itself.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Generic, TypeVar

import msgspec

from aion.events import Event, SearchValue, WorkflowStarted

__all__ = [
    "Append",
    "ApprovalRow",
    "ApprovalStatus",
    "CommitResult",
    "DamagedRow",
    "InboxCommand",
    "IndexRow",
    "Page",
    "RunInfo",
    "Status",
    "TimerRow",
    "WaitpointRow",
    "WaitpointStatus",
    "WorkflowRecord",
    "Write",
    "begin_run",
]

T = TypeVar("T")


class Status(enum.Enum):
    """Where a workflow stands. ``BLOCKED`` means parked by the engine, waiting for an operator."""

    RUNNING = "running"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CONTINUED_AS_NEW = "continued_as_new"

    @property
    def is_terminal(self) -> bool:
        """True for statuses a workflow id never leaves on its own."""
        # Identity tests, not a set: an Enum member hashes in Python code (hot: every commit).
        return self is Status.COMPLETED or self is Status.FAILED or self is Status.CANCELLED


class WorkflowRecord(msgspec.Struct, frozen=True, array_like=True):
    """The projection row of one workflow id (its current run), kept in step with its history.

    Attributes:
        created_at: when the workflow id was first started; immutable, the list order key.
        run_started_at: when the current run started (differs after continue-as-new).
        waiting_on: what the run waits for, e.g. ``("timer:3", "signal:ship")``.
    """

    tenant: str
    workflow_id: str
    run_id: str
    workflow_type: str
    status: Status
    created_at: datetime
    run_started_at: datetime
    closed_at: datetime | None = None
    waiting_on: tuple[str, ...] = ()
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None
    reason: str = ""
    search_attributes: dict[str, SearchValue] = {}


class RunInfo(msgspec.Struct, frozen=True, array_like=True):
    """One run in a workflow id's chain of runs (continue-as-new starts a new one).

    ``last_seq`` is the run's last event: the event before the next run's start, or the
    history head for the current run.
    """

    run_id: str
    first_seq: int
    workflow_type: str
    started_at: datetime
    last_seq: int = 0


class TimerRow(msgspec.Struct, frozen=True, array_like=True):
    """A durable timer in the due-time index. Identity: (due, tenant, workflow_id, timer_id)."""

    due: datetime
    tenant: str
    workflow_id: str
    timer_id: str
    run_id: str = ""


class WaitpointStatus(enum.Enum):
    """Life of a waitpoint."""

    PENDING = "pending"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CLOSED = "closed"


class WaitpointRow(msgspec.Struct, frozen=True, array_like=True):
    """A waitpoint an outside system can complete. Identity: (tenant, workflow_id, waitpoint_id).

    ``kid`` names the key that signed its token (empty in rows written before it was kept: the
    history's ``WaitpointCreated`` has it).
    """

    tenant: str
    workflow_id: str
    waitpoint_id: str
    run_id: str
    name: str
    created_at: datetime
    status: WaitpointStatus = WaitpointStatus.PENDING
    expires_at: datetime | None = None
    fingerprint: str = ""
    completed_at: datetime | None = None
    last_failed_validation_at: datetime | None = None
    kid: str = ""


class ApprovalStatus(enum.Enum):
    """Life of an approval."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CLOSED = "closed"


class ApprovalRow(msgspec.Struct, frozen=True, array_like=True):
    """An approval a person decides. Identity: (tenant, workflow_id, approval_id).

    Pending approvals are indexed per tenant in request order, across runs.
    """

    tenant: str
    workflow_id: str
    approval_id: str
    run_id: str
    action: str
    digest: str
    requested_at: datetime
    status: ApprovalStatus = ApprovalStatus.PENDING
    details: bytes = b""
    timeout_at: datetime | None = None
    decided_by: str | None = None
    comment: str | None = None
    decided_at: datetime | None = None


class InboxCommand(msgspec.Struct, frozen=True, array_like=True):
    """A command left by another process (CLI, another service) for the engine to apply.

    ``kind`` is one of ``signal``, ``cancel``, ``approve``, ``reject``, ``complete_waitpoint``,
    ``unblock``. ``command_id`` is assigned by the store (time-ordered); the engine deletes the
    command in the same transaction that applies it. ``digest`` (approve, reject): the decision
    applies only to an approval of exactly this digest; empty: any.
    """

    kind: str
    tenant: str
    workflow_id: str
    created_at: datetime
    name: str = ""
    payload: bytes = b""
    user: str = ""
    comment: str | None = None
    target_id: str = ""
    token: str = ""
    command_id: str = ""
    digest: str = ""


class DamagedRow(msgspec.Struct, frozen=True):
    """A stored row that cannot be decoded: its table, key and why.

    Quarantining it (``Write(quarantine=[...])``, ``aion recover --apply``) moves its bytes to
    the generic index ``quarantine`` (kept for inspection, never read by the engine) and, for
    a projection row, writes ``replacement`` in its place: the row rebuilt from the run's
    history, parked ``BLOCKED`` with the reason; for a timer row, the row rebuilt from its key
    (due time, run and timer id) and the run's current run id.
    """

    table: str
    key: bytes
    reason: str
    replacement: WorkflowRecord | TimerRow | None = None


class IndexRow(msgspec.Struct, frozen=True):
    """A row of a named, tenant-scoped secondary index (ordered by ``key``)."""

    index: str
    tenant: str
    key: str
    value: bytes = b""


class Append(msgspec.Struct, frozen=True):
    """Append ``events`` to a history whose head must be ``expected_seq`` (0 for a new one).

    The events' ``seq`` must run ``expected_seq + 1, expected_seq + 2, ...``.
    """

    workflow_id: str
    events: Sequence[Event]
    expected_seq: int
    tenant: str = "default"


class Write(msgspec.Struct, frozen=True, kw_only=True):
    """One atomic state change: after a crash either all of it is visible or none of it.

    Attributes:
        appends: history appends, each checked against its expected head.
        workflows: projection rows to upsert (their secondary indexes follow).
        timers_add / timers_delete: due-time index rows.
        waitpoints / approvals: rows to upsert.
        index_put / index_delete: generic secondary index rows.
        inbox_delete: ids of inbox commands this write applies.
        inbox_put: commands to leave in the inbox.
        quarantine: undecodable rows to move aside (see :class:`DamagedRow`).
    """

    appends: Sequence[Append] = ()
    workflows: Sequence[WorkflowRecord] = ()
    timers_add: Sequence[TimerRow] = ()
    timers_delete: Sequence[TimerRow] = ()
    waitpoints: Sequence[WaitpointRow] = ()
    approvals: Sequence[ApprovalRow] = ()
    index_put: Sequence[IndexRow] = ()
    index_delete: Sequence[IndexRow] = ()
    inbox_delete: Sequence[str] = ()
    inbox_put: Sequence[InboxCommand] = ()
    quarantine: Sequence[DamagedRow] = ()


class CommitResult(msgspec.Struct, frozen=True):
    """What a committed write produced: the new head of every appended history, in order."""

    heads: tuple[int, ...] = ()
    inbox_ids: tuple[str, ...] = ()


class Page(msgspec.Struct, Generic[T], frozen=True):
    """One page of a keyset-paginated list. Pass ``next_cursor`` back for the next page."""

    items: list[T]
    next_cursor: str | None = None


async def collect_pages(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[T]:
    """Every item of a keyset-paginated list: ``fetch(cursor)`` returns one page, starting
    from ``fetch(None)``, until a page has no ``next_cursor``."""
    items: list[T] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items


def begin_run(
    *,
    tenant: str,
    workflow_id: str,
    run_id: str,
    workflow_type: str,
    input: bytes,
    at: datetime,
    seq: int = 1,
    created_at: datetime | None = None,
    parent_workflow_id: str | None = None,
    parent_run_id: str | None = None,
    code_version: str | None = None,
    continued_from_run_id: str | None = None,
    identity: str = "",
    trace: str = "",
) -> tuple[WorkflowStarted, WorkflowRecord]:
    """The first event of a run and the RUNNING projection row that goes with it.

    Every place that starts a run (a start, a child, a repair) writes both in one ``Write``.
    ``created_at`` is the workflow id's first start (default ``at``: a new workflow id).
    """
    started = WorkflowStarted(
        seq=seq,
        at=at,
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        input=input,
        tenant=tenant,
        parent_workflow_id=parent_workflow_id,
        parent_run_id=parent_run_id,
        code_version=code_version,
        continued_from_run_id=continued_from_run_id,
        identity=identity,
        trace=trace,
    )
    record = WorkflowRecord(
        tenant=tenant,
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        status=Status.RUNNING,
        created_at=at if created_at is None else created_at,
        run_started_at=at,
        parent_workflow_id=parent_workflow_id,
        parent_run_id=parent_run_id,
    )
    return started, record
