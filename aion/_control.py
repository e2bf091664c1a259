"""The rules that decide whether a request on a workflow can be taken, in one place.

The engine applies them when a request arrives (from its own methods or from its inbox), and the
:class:`aion.Client` and the ``aion`` command apply them before they queue anything, so all of
them refuse the same requests with the same error and the same message. Pure functions over the
store's rows and the replay driver's states: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from aion._tokens import TokenClaims
from aion.errors import (
    AionError,
    AmbiguousApproval,
    InvalidArgument,
    InvalidToken,
    NoPendingApproval,
    WaitpointClosed,
    WorkflowBlocked,
    WorkflowClosed,
)
from aion.store import (
    ApprovalRow,
    ApprovalStatus,
    EventStore,
    Status,
    WaitpointRow,
    WaitpointStatus,
    WorkflowRecord,
    collect_pages,
)

__all__ = [
    "ApprovalLike",
    "WaitpointLike",
    "check_blocked",
    "check_completable",
    "check_decidable",
    "check_open",
    "check_same_type",
    "check_waitpoint_row",
    "choose_approval",
    "closed_error",
    "refuse_completion",
    "refuse_waitpoint",
]

#: How the engine's error messages tell a caller to pick one of several pending approvals.
PICK_APPROVAL = "pass approval_id= to pick one"


class ApprovalLike(Protocol):
    """What the rules read of a pending approval: the driver's ``ApprovalState`` and the
    store's ``ApprovalRow`` both have it."""

    @property
    def approval_id(self) -> str: ...

    @property
    def action(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def timeout_at(self) -> datetime | None: ...


class WaitpointLike(Protocol):
    """What the rules read of a run's waitpoint (the driver's ``WaitpointState``)."""

    @property
    def pending(self) -> bool: ...

    @property
    def expired(self) -> bool: ...


A = TypeVar("A", bound=ApprovalLike)


# --- open, closed, blocked -----------------------------------------------------------------------


def closed_error(
    record: WorkflowRecord, *, what: str = "signals or cancellations"
) -> WorkflowClosed:
    """The error for a request that reaches a finished workflow (``what`` it takes no more)."""
    return WorkflowClosed(record.workflow_id, record.status.value, what)


def check_open(record: WorkflowRecord, *, what: str = "signals or cancellations") -> None:
    """A signal, a cancellation or a decision needs a workflow that has not finished.

    Raises:
        WorkflowClosed: it has finished (completed, failed or cancelled).
    """
    if record.status.is_terminal:
        raise closed_error(record, what=what)


def check_decidable(record: WorkflowRecord) -> None:
    """A decision on an approval needs a running run: it is taken against what the run waits
    on now, which a BLOCKED run does not know until it runs again.

    Raises:
        WorkflowClosed: the workflow has finished.
        WorkflowBlocked: the run is parked BLOCKED.
    """
    check_open(record, what="decisions")
    if record.status is Status.BLOCKED:
        raise WorkflowBlocked(record.workflow_id, record.reason, "the decision")


def check_blocked(record: WorkflowRecord) -> None:
    """``unblock`` retries a BLOCKED run, and only that.

    Raises:
        InvalidArgument: the run is not blocked.
    """
    if record.status is not Status.BLOCKED:
        raise InvalidArgument(
            f"workflow {record.workflow_id!r} is {record.status.value}, not blocked; nothing to do"
        )


def check_same_type(record: WorkflowRecord, workflow_type: str) -> None:
    """A start of an id that exists is idempotent for the same workflow type only.

    Raises:
        InvalidArgument: the id is taken by a run of another type.
    """
    if record.workflow_type != workflow_type:
        raise InvalidArgument(
            f"workflow id {record.workflow_id!r} is taken by a run of type "
            f"{record.workflow_type!r}; it cannot start a {workflow_type!r} run. Nothing "
            "was recorded: use another workflow_id"
        )


# --- approvals -----------------------------------------------------------------------------------


async def pending_approvals(store: EventStore, workflow_id: str, tenant: str) -> list[ApprovalRow]:
    """The run's approvals still pending (every page of them)."""
    rows = await collect_pages(
        lambda cursor: store.list_approvals(workflow_id, tenant=tenant, limit=100, cursor=cursor)
    )
    return [row for row in rows if row.status is ApprovalStatus.PENDING]


def choose_approval(
    workflow_id: str,
    pending: Sequence[A],
    approval_id: str | None,
    digest: str | None,
    now: datetime | None,
    *,
    pick: str = PICK_APPROVAL,
) -> A:
    """The pending approval a decision is for.

    Args:
        workflow_id: the run's id (for the messages).
        pending: the run's pending approvals, in request order.
        approval_id: the approval the decision names, or None for "the only one".
        digest: if given (not empty), the approval must be for exactly this.
        now: the time of the decision: an approval whose timeout is past is refused (its timer
            records the timeout). None leaves the timeout to whoever applies the decision.
        pick: how the message tells the caller to pick one of several (the ``aion`` command
            names its option).

    Raises:
        NoPendingApproval: nothing is pending, not that approval, not with that digest, or its
            timeout is past.
        AmbiguousApproval: several are pending and ``approval_id`` is None.
    """
    chosen: A | None
    if approval_id is None:
        if not pending:
            raise NoPendingApproval(f"workflow {workflow_id!r} has no pending approval to decide")
        if len(pending) > 1:
            ids = ", ".join(f"{a.approval_id} ({a.action})" for a in pending)
            raise AmbiguousApproval(
                f"workflow {workflow_id!r} has {len(pending)} pending approvals: {ids}; {pick}"
            )
        chosen = pending[0]
    else:
        chosen = next((a for a in pending if a.approval_id == approval_id), None)
        if chosen is None:
            raise NoPendingApproval(
                f"approval {approval_id!r} of workflow {workflow_id!r} is not pending: it was "
                "decided already, timed out, or never requested by this run"
            )
    if now is not None and chosen.timeout_at is not None and now >= chosen.timeout_at:
        raise NoPendingApproval(
            f"approval {chosen.approval_id!r} of workflow {workflow_id!r} timed out at "
            f"{chosen.timeout_at.isoformat()}; nothing was recorded"
        )
    if digest and digest != chosen.digest:
        raise NoPendingApproval(
            f"approval {chosen.approval_id!r} of workflow {workflow_id!r} is for something "
            f"else than what was decided (digest {digest!r}, pending {chosen.digest!r}); "
            "nothing was recorded"
        )
    return chosen


# --- waitpoints ----------------------------------------------------------------------------------


def check_completable(record: WorkflowRecord) -> None:
    """A waitpoint completion needs a workflow that has not finished.

    Raises:
        WaitpointClosed: the workflow has finished, and its waitpoints with it.
    """
    if record.status.is_terminal:
        raise WaitpointClosed(f"{closed_error(record)}; its waitpoints are closed")


def check_waitpoint_row(row: WaitpointRow | None, claims: TokenClaims) -> WaitpointRow:
    """The store's row of the waitpoint a verified token names, if it can still be completed.

    Raises:
        InvalidToken: the store has no such waitpoint (another store's token, or an earlier
            waitpoint of the same name), or it expired.
        WaitpointClosed: it was completed already, or its run has finished.
    """
    if row is None or row.created_at != claims.created_at:
        raise InvalidToken("the token names no waitpoint of this engine's store")
    if row.status is not WaitpointStatus.PENDING:
        raise refuse_completion(row)
    return row


def refuse_completion(row: WaitpointRow) -> AionError:
    """Why a waitpoint that is no longer pending cannot be completed."""
    what = f"waitpoint {row.name!r} of workflow {row.workflow_id!r}"
    if row.status is WaitpointStatus.EXPIRED:
        return InvalidToken(f"{what} expired at {row.expires_at}; its token no longer works")
    if row.status is WaitpointStatus.COMPLETED:
        return WaitpointClosed(
            f"{what} was completed already: a token completes its waitpoint once"
        )
    return WaitpointClosed(f"{what} is closed: its run has finished")


def refuse_waitpoint(waitpoint_id: str, state: WaitpointLike | None) -> WaitpointClosed | None:
    """Why the run cannot take a completion of ``waitpoint_id`` (its state in the replay
    driver, None if the current run has no such waitpoint), or None when it can."""
    if state is not None and state.pending:
        return None
    if state is None:
        how = "belongs to an earlier run of this workflow"
    elif state.expired:
        how = "expired"
    else:
        how = "was completed already"
    return WaitpointClosed(f"waitpoint {waitpoint_id!r} {how}; nothing was recorded")
