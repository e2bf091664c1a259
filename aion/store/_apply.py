"""Applying a prepared write inside the transaction: head checks, then every row it puts.

The caller makes it atomic (LMDB's write transaction; MemoryStore's undo log). Projection rows
bring their secondary indexes along (list indexes, the active set, pending approvals), and a
quarantined row its rebuilt replacement, all in the same transaction.
"""

from __future__ import annotations

import msgspec

from aion._codec import ENCODER
from aion.errors import InvalidArgument, SequenceConflict

from . import _keys as k
from ._prepare import Prepared
from ._records import (
    ApprovalRow,
    ApprovalStatus,
    CommitResult,
    DamagedRow,
    IndexRow,
    TimerRow,
    WaitpointRow,
    WaitpointStatus,
    WorkflowRecord,
)
from ._rows import (
    KV,
    STATUS_CODE,
    decode_row,
    head_of,
    index_key,
    list_key,
    pending_key,
    timer_key,
)

__all__ = ["apply", "check"]

_HEAD = k.be64


def check(kv: KV, prepared: Prepared) -> None:
    """Raise :class:`SequenceConflict` if any append's expected head is stale. Writes nothing."""
    for append in prepared.appends:
        head = head_of(kv, append.wf_key)
        if head != append.expected_seq:
            raise SequenceConflict(append.workflow_id, append.expected_seq, head, append.tenant)


def apply(kv: KV, prepared: Prepared, *, checked: bool = False) -> CommitResult:
    """Check (unless the caller just did), then apply ``prepared`` to ``kv``. The caller
    makes it atomic."""
    if not checked:
        check(kv, prepared)
    put = kv.put
    for append in prepared.appends:
        for key, value in append.rows:
            put("events", key, value)
        for key, value in append.runs:
            put("runs", key, value)
        put("heads", append.wf_key, _HEAD(append.new_head))
    if not prepared.only_appends:
        _apply_rows(kv, prepared)
    return prepared.result


def _apply_rows(kv: KV, prepared: Prepared) -> None:
    """Everything of ``prepared`` but its appends."""
    for record in prepared.workflows:
        _put_workflow(kv, record)
    for key in prepared.timers_delete:
        kv.delete("timers", key)
    for key, value in prepared.timers_add:
        kv.put("timers", key, value)
    for key, value in prepared.waitpoints:
        _put_waitpoint(kv, key, value)
    for row in prepared.approvals:
        _put_approval(kv, row)
    for key in prepared.index_delete:
        kv.delete("index", key)
    for key, value in prepared.index_put:
        kv.put("index", key, value)
    for key in prepared.inbox_delete:
        kv.delete("inbox", key)
    for key, value in prepared.inbox_put:
        kv.put("inbox", key, value)
    for damaged in prepared.quarantine:
        _quarantine(kv, damaged)


def _put_workflow(kv: KV, record: WorkflowRecord) -> None:
    wf_key = k.workflow_key(record.tenant, record.workflow_id)
    old_data = kv.get("workflows", wf_key)
    terminal = record.status.is_terminal
    if old_data is None:
        for table in _LIST_TABLES:
            kv.put(table, list_key(table, record), b"")
        if not terminal:
            kv.put("active", wf_key, b"")
    else:
        old = decode_row("workflows", wf_key, old_data, WorkflowRecord)
        if old.created_at != record.created_at:
            raise InvalidArgument(
                f"workflow {record.workflow_id!r}: created_at is immutable "
                f"({old.created_at.isoformat()} -> {record.created_at.isoformat()})"
            )
        # Index rows that stay the same are not written again: the creation row never changes
        # (created_at is immutable), the status row when the status does (closing a run), the
        # type row when continue-as-new changes the type. Most commits change none of them.
        changed = []
        if old.status is not record.status:
            changed.append("by_status")
        if old.workflow_type != record.workflow_type:
            changed.append("by_type")
        for table in changed:
            kv.delete(table, list_key(table, old))
            kv.put(table, list_key(table, record), b"")
        if terminal != old.status.is_terminal:
            if terminal:
                kv.delete("active", wf_key)
            else:
                kv.put("active", wf_key, b"")
    kv.put("workflows", wf_key, ENCODER.encode(record))


_LIST_TABLES = ("by_created", "by_status", "by_type")


def _put_waitpoint(kv: KV, key: bytes, value: bytes) -> None:
    """Upsert a waitpoint row. A waitpoint never goes back to pending once completed, expired or
    closed, and keeps the time of its last failed validation: writers that hold an older copy of
    the row (the engine noting a forged token, the run's actor rebuilding it) cannot undo
    either."""
    old_data = kv.get("waitpoints", key)
    if old_data is not None:
        old = decode_row("waitpoints", key, old_data, WaitpointRow)
        new = decode_row("waitpoints", key, value, WaitpointRow)
        pending = WaitpointStatus.PENDING
        base = old if new.status is pending and old.status is not pending else new
        times = [t for t in (old.last_failed_validation_at, new.last_failed_validation_at) if t]
        failed = max(times) if times else None
        if base is not new or base.last_failed_validation_at != failed:
            value = ENCODER.encode(msgspec.structs.replace(base, last_failed_validation_at=failed))
    kv.put("waitpoints", key, value)


def _put_approval(kv: KV, row: ApprovalRow) -> None:
    key = k.child_key(row.tenant, row.workflow_id, row.approval_id, "approval id")
    old_data = kv.get("approvals", key)
    if old_data is not None:
        old = decode_row("approvals", key, old_data, ApprovalRow)
        if old.status is ApprovalStatus.PENDING:
            kv.delete("approvals_pending", pending_key(old))
    if row.status is ApprovalStatus.PENDING:
        kv.put("approvals_pending", pending_key(row), key)
    kv.put("approvals", key, ENCODER.encode(row))


def _quarantine(kv: KV, row: DamagedRow) -> None:
    """Move a damaged row's bytes aside (the generic index ``quarantine``) and, for a
    projection row, put its rebuilt replacement in its place (fresh list index rows)."""
    data = kv.get(row.table, row.key)
    if data is None:
        return  # quarantined already
    kv.put("index", index_key(IndexRow("quarantine", "*", f"{row.table}:{row.key.hex()}")), data)
    kv.delete(row.table, row.key)
    record = row.replacement
    if isinstance(record, TimerRow):
        kv.put("timers", timer_key(record), ENCODER.encode(record))
        return
    if row.table != "workflows":
        return
    kv.delete("active", row.key)
    if not isinstance(record, WorkflowRecord):
        return
    # The damaged row's list index rows: same id and creation time, any status.
    for table in ("by_created", "by_type"):
        kv.delete(table, list_key(table, record))
    prefix = record.tenant.encode() + k.SEP
    for code in STATUS_CODE.values():
        status_key = k.created_key(prefix + code, record.created_at, record.workflow_id.encode())
        kv.delete("by_status", status_key)
    _put_workflow(kv, record)
