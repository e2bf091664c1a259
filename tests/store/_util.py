"""Builders shared by the store tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from aion import events as ev
from aion.store import Status, WorkflowRecord, WriteHook, WriteInfo, WriteProbe

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def started(
    seq: int = 1,
    workflow_id: str = "wf",
    *,
    tenant: str = "default",
    run_id: str = "run-1",
    workflow_type: str = "order",
) -> ev.WorkflowStarted:
    return ev.WorkflowStarted(
        seq=seq,
        at=at(seq),
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        input=b"\x90",
        tenant=tenant,
    )


def signal(seq: int, name: str = "go", payload: bytes = b"\xc0") -> ev.SignalReceived:
    return ev.SignalReceived(seq=seq, at=at(seq), name=name, payload=payload)


def signals(first: int, count: int) -> list[ev.Event]:
    return [signal(first + i) for i in range(count)]


def record(
    workflow_id: str,
    *,
    tenant: str = "default",
    status: Status = Status.RUNNING,
    workflow_type: str = "order",
    created: float = 0.0,
    run_id: str = "run-1",
) -> WorkflowRecord:
    return WorkflowRecord(
        tenant=tenant,
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        status=status,
        created_at=at(created),
        run_started_at=at(created),
    )


class FailAtTable(WriteHook):
    """A write hook that fails every write at its first row in ``table``; ``rows`` lists the
    ``(op, table)`` of every row the writes reached before."""

    def __init__(self, table: str, error: Exception) -> None:
        self.table = table
        self.error = error
        self.rows: list[tuple[str, str]] = []

    def begin_write(self, write: WriteInfo) -> WriteProbe:
        return _FailAt(self)


class _FailAt(WriteProbe):
    def __init__(self, hook: FailAtTable) -> None:
        self.hook = hook

    def before_kv_write(self, op: Literal["put", "delete"], table: str, key: bytes) -> None:
        if table == self.hook.table:
            raise self.hook.error
        self.hook.rows.append((op, table))
