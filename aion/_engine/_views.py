"""Read-only views of workflows: what describe, history, list and result report.

Shared by the engine and by the command line, which reads a data directory without running an
engine (a client-role store).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from aion import _validate
from aion import events as ev
from aion._codec import decode_payload
from aion._control import pending_approvals as pending_rows
from aion._control import refuse_completion
from aion._replay import WorkflowDefinition
from aion._replay._definition import convert, return_type
from aion.errors import (
    AionError,
    InvalidArgument,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
)
from aion.store import (
    ApprovalRow,
    EventStore,
    Page,
    Status,
    WaitpointRow,
    WorkflowRecord,
)

from ._messages import Outcome
from ._types import (
    PENDING_KINDS,
    HistoryEvent,
    PendingApproval,
    StepFailure,
    WaitpointInfo,
    WorkflowDescription,
)

_PLURAL = {singular: plural for plural, singular in PENDING_KINDS.items()}

__all__ = [
    "Reader",
    "history_event",
    "last_step_failure",
    "pending_approval",
    "refuse_completion",
    "waitpoint_info",
]


class Reader:
    """Answers questions about workflows from a store."""

    def __init__(
        self,
        store: Callable[[], EventStore],
        definition: Callable[[str], WorkflowDefinition | None] = lambda name: None,
    ) -> None:
        self._store = store
        self.definition = definition

    @property
    def store(self) -> EventStore:
        return self._store()

    async def pending_approvals(
        self, *, tenant: str = "default", limit: int = 100, cursor: str | None = None
    ) -> Page[PendingApproval]:
        """Approvals waiting for a person across the tenant's runs, oldest first."""
        page = await self.store.pending_approvals(tenant=tenant, limit=limit, cursor=cursor)
        return Page([pending_approval(row) for row in page.items], page.next_cursor)

    async def run_approvals(self, workflow_id: str, tenant: str) -> list[PendingApproval]:
        """The run's pending approvals, oldest first.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
        """
        await self.record(workflow_id, tenant)
        rows = await pending_rows(self.store, workflow_id, tenant)
        return [pending_approval(row) for row in rows]

    async def pending_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointInfo]:
        """The workflow's pending waitpoints in creation order, keyset-paginated
        (``next_cursor`` only when more follow).

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: ``limit`` is below 1, or a cursor not issued for this query.
        """
        await self.record(workflow_id, tenant)
        if limit < 1:
            raise InvalidArgument(f"limit must be at least 1, not {limit}")
        page = await self.store.pending_waitpoints(
            workflow_id, tenant=tenant, limit=limit, cursor=cursor
        )
        kids: dict[str, str] = {}
        if any(r.fingerprint and not r.kid for r in page.items):
            # Rows written before aion kept the key id: the history recorded it.
            events = await self.store.read_current_run(workflow_id, tenant=tenant)
            kids = {e.waitpoint_id: e.kid for e in events if isinstance(e, ev.WaitpointCreated)}
        items = [waitpoint_info(r, kids.get(r.waitpoint_id, "")) for r in page.items]
        return Page(items, page.next_cursor)

    async def outcome(self, record: WorkflowRecord) -> Any:
        events = await self.store.read_current_run(record.workflow_id, tenant=record.tenant)
        return self._outcome_in(record, events)

    def _outcome_in(self, record: WorkflowRecord, events: list[ev.AnyEvent]) -> Any:
        outcome = Outcome.of_event(events[-1] if events else None)
        if outcome is None:
            raise AionError(f"workflow {record.workflow_id!r} has no outcome event")
        return self.outcome_of(record, outcome)

    def outcome_of(self, record: WorkflowRecord, outcome: Outcome) -> Any:
        """What ``result()`` returns, or raises, for a run that closed with ``outcome``."""
        match outcome.status:
            case Status.COMPLETED:
                return self._result_value(record, outcome.result)
            case Status.FAILED:
                raise WorkflowFailed(record.workflow_id, outcome.error_type, outcome.message)
        raise WorkflowCancelled(
            f"workflow {record.workflow_id!r} was cancelled"
            + (f": {outcome.message}" if outcome.message else "")
        )

    def _result_value(self, record: WorkflowRecord, result: bytes) -> Any:
        definition = self.definition(record.workflow_type)
        tp = _return_annotation(definition) if definition else Any
        return convert(decode_payload(result), tp, what="workflow result")

    async def record(self, workflow_id: str, tenant: str) -> WorkflowRecord:
        record = await self.store.get_workflow(workflow_id, tenant=tenant)
        if record is None:
            raise WorkflowNotFound(workflow_id, tenant)
        return record

    async def describe(self, workflow_id: str, *, tenant: str = "default") -> WorkflowDescription:
        """Status, times, result or error, history length and what the run waits on.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
        """
        # One read (one snapshot) for the row and the current run (continue-as-new bounds it):
        # the head, the outcome, the last failed step and a BLOCKED run's detail are in it.
        record, events = await self.store.read_workflow(workflow_id, tenant=tenant)
        if record is None:
            raise WorkflowNotFound(workflow_id, tenant)
        head = events[-1].seq if events else 0
        return await self.describe_record(record, with_outcome=True, head=head, events=events)

    async def describe_record(
        self,
        record: WorkflowRecord,
        *,
        with_outcome: bool,
        head: int | None = None,
        events: list[ev.AnyEvent] | None = None,
    ) -> WorkflowDescription:
        """The description of ``record``; ``head`` and the current run's ``events`` when the
        caller read them already (else they are read here)."""
        if head is None:
            head = await self.store.head(record.workflow_id, tenant=record.tenant)
        result: Any = None
        error: str | None = None
        failure: StepFailure | None = None
        if with_outcome:
            if events is None:
                events = await self.store.read_current_run(record.workflow_id, tenant=record.tenant)
            failure = last_step_failure(events)
            if record.status.is_terminal:
                try:
                    result = self._outcome_in(record, events)
                except (WorkflowFailed, WorkflowCancelled) as exc:
                    error = str(exc)
        detail = ""
        if record.status is Status.BLOCKED:
            if events is None:  # the last event of the history is the current run's last
                events = await self.store.read_history(
                    record.workflow_id, tenant=record.tenant, from_seq=max(head, 1)
                )
            if events and isinstance(events[-1], ev.WorkflowBlocked):
                detail = events[-1].detail or ""
        pending: dict[str, list[str]] = {}
        for item in record.waiting_on:
            kind, _, name = item.partition(":")
            pending.setdefault(_PLURAL.get(kind, kind), []).append(name)
        return WorkflowDescription(
            workflow_id=record.workflow_id,
            run_id=record.run_id,
            workflow_type=record.workflow_type,
            tenant=record.tenant,
            status=record.status,
            started_at=record.run_started_at,
            closed_at=record.closed_at,
            result=result,
            error=error,
            history_length=head,
            pending=pending,
            reason=record.reason,
            created_at=record.created_at,
            parent_workflow_id=record.parent_workflow_id,
            search_attributes=dict(record.search_attributes),
            detail=detail,
            last_step_failure=failure,
        )

    async def history(
        self,
        workflow_id: str,
        *,
        after_seq: int = 0,
        tenant: str = "default",
        limit: int | None = None,
    ) -> list[HistoryEvent]:
        """The recorded events after ``after_seq``, in order (at most ``limit``: only those
        are read).

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
        """
        await self.record(workflow_id, tenant)
        to_seq = None if limit is None else after_seq + limit  # sequence numbers are contiguous
        events = await self.store.read_history(
            workflow_id, tenant=tenant, from_seq=after_seq + 1, to_seq=to_seq
        )
        return [history_event(e) for e in events]

    async def list(
        self,
        *,
        status: Status | None = None,
        workflow_type: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        parent_workflow_id: str | None = None,
        search: Mapping[str, Any] | None = None,
        id_prefix: str | None = None,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowDescription]:
        """Workflows of ``tenant``, newest first, keyset-paginated (pass ``next_cursor`` back);
        ``started_after`` (inclusive) and ``started_before`` (exclusive) bound the first start;
        ``parent_workflow_id``: only that workflow's children; ``search``: only runs whose
        search attributes hold each of these values (same type and value); ``id_prefix``:
        only ids starting so (these three read the rows the indexed filters select). Every
        argument is checked here (the Engine's and the Client's ``list``).

        Raises:
            InvalidArgument: a filter, ``limit`` (1 to 10,000) or ``cursor`` is malformed, or
                the cursor was made for another query.
        """
        tenant = _validate.identifier(tenant, "tenant")
        if status is not None:
            status = _validate.member(status, Status, "status")
        workflow_type = _validate.optional_identifier(workflow_type, "workflow_type")
        if started_after is not None:
            started_after = _validate.aware_datetime(started_after, "started_after")
        if started_before is not None:
            started_before = _validate.aware_datetime(started_before, "started_before")
        parent_workflow_id = _validate.optional_identifier(parent_workflow_id, "parent_workflow_id")
        if search is not None:
            if not isinstance(search, Mapping):
                raise InvalidArgument(f"search must be a dict, not {type(search).__name__}")
            for key, value in search.items():
                _validate.search_value(key, value)
        page = await self.store.list_workflows(
            tenant=tenant,
            status=status,
            workflow_type=workflow_type,
            started_after=started_after,
            started_before=started_before,
            parent_workflow_id=parent_workflow_id,
            search=search,
            id_prefix=_validate.optional_text(
                id_prefix, "id_prefix", limit=_validate.MAX_NAME_BYTES
            ),
            limit=_validate.page_limit(limit),
            cursor=_validate.cursor(cursor),
        )
        # Every item's history length in one read (a round trip each would add up).
        heads = await self.store.heads([(r.tenant, r.workflow_id) for r in page.items])
        items = [
            await self.describe_record(r, with_outcome=False, head=head)
            for r, head in zip(page.items, heads, strict=True)
        ]
        return Page(items, page.next_cursor)


_PAYLOAD_FIELDS = {"input", "result", "payload", "args", "details"}


def history_event(event: ev.Event) -> HistoryEvent:
    """The public view of a stored event (payloads decoded, raw bytes kept for replay)."""
    data: dict[str, Any] = {}
    for name in event.__struct_fields__:
        if name in ("seq", "at"):
            continue
        value = getattr(event, name)
        if name in _PAYLOAD_FIELDS and isinstance(value, bytes):
            try:
                value = decode_payload(value) if value else None
            except AionError:
                value = value.hex()
        data[name] = value
    tag = type(event).__struct_config__.tag
    return HistoryEvent(
        seq=event.seq,
        type=str(tag),
        recorded_at=event.at,
        data=data,
        raw=msgspec.msgpack.encode(event),
    )


def last_step_failure(events: list[ev.AnyEvent]) -> StepFailure | None:
    """The most recent ``StepFailed`` of a run's events that its step's success did not
    follow (the step waits to retry, or failed for good), with the step's name."""
    failed: ev.StepFailed | None = None
    succeeded: set[int] = set()
    for event in reversed(events):
        if isinstance(event, ev.StepCompleted):
            succeeded.add(event.step_seq)
        elif isinstance(event, ev.StepFailed) and event.step_seq not in succeeded:
            failed = event
            break
    if failed is None:
        return None
    name = next(
        (
            e.name
            for e in events
            if isinstance(e, ev.StepScheduled) and e.step_seq == failed.step_seq
        ),
        "",
    )
    return StepFailure(
        step_name=name,
        step_seq=failed.step_seq,
        attempt=failed.attempt,
        error_type=failed.error_type,
        message=failed.message,
        traceback=failed.traceback,
        retryable=failed.retryable,
        will_retry=failed.will_retry,
        failed_at=failed.at,
    )


def _return_annotation(definition: WorkflowDefinition) -> Any:
    return return_type(definition.fn)


def pending_approval(row: ApprovalRow) -> PendingApproval:
    """The public view of a pending approval row (details decoded)."""
    try:
        details = decode_payload(row.details, what=f"details of approval {row.approval_id!r}")
    except AionError:
        details = row.details
    return PendingApproval(
        workflow_id=row.workflow_id,
        approval_id=row.approval_id,
        action=row.action,
        details=details,
        digest=row.digest,
        requested_at=row.requested_at,
        timeout_at=row.timeout_at,
        run_id=row.run_id,
        tenant=row.tenant,
        step="-s" in row.approval_id,
    )


def waitpoint_info(row: WaitpointRow, kid: str = "") -> WaitpointInfo:
    """The public view of a waitpoint row: a fingerprint of its token, never the token.
    ``kid`` stands in for the signing key's id of a row that does not carry it."""
    return WaitpointInfo(
        workflow_id=row.workflow_id,
        waitpoint_id=row.waitpoint_id,
        name=row.name,
        status=row.status.value,
        created_at=row.created_at,
        expires_at=row.expires_at,
        fingerprint=row.fingerprint,
        run_id=row.run_id,
        tenant=row.tenant,
        completed_at=row.completed_at,
        last_failed_validation_at=row.last_failed_validation_at,
        token_kid=row.kid or kid,
    )
