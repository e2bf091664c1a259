"""The HTTP API's request and answer bodies and query parameters: msgspec types, the same
ones the Python API returns where there is one. Requests refuse unknown fields; the OpenAPI
document is generated from these types."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from aion._engine._types import HistoryEvent, PendingApproval, WaitpointInfo, WorkflowDescription

__all__ = [
    "ApprovalPage",
    "CancelBody",
    "CompleteBody",
    "DecisionBody",
    "HistoryPage",
    "HistoryQuery",
    "ListQuery",
    "PageQuery",
    "RecoveryBody",
    "StartBody",
    "Started",
    "StatusName",
    "StreamQuery",
    "WaitpointPage",
    "WorkflowPage",
]

StatusName = Literal["running", "blocked", "completed", "failed", "cancelled", "continued_as_new"]


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class StartBody(_Request, frozen=True):
    """Start a workflow: its registered type name, its arguments, and optionally its id (a
    second start with the same id starts nothing)."""

    workflow_type: str
    args: list[Any] = []
    workflow_id: str | None = None


class Started(msgspec.Struct, frozen=True):
    """The started (or already existing) workflow. ``run_id`` is null while the start waits
    in the inbox for the engine that drives the workflow's partition."""

    workflow_id: str
    run_id: str | None


class CancelBody(_Request, frozen=True):
    reason: str | None = None


class DecisionBody(_Request, frozen=True):
    """Approve or reject: an optional comment, and the digest of the request you saw (the
    decision then applies only to exactly that request)."""

    comment: str | None = None
    digest: str | None = None


class CompleteBody(_Request, frozen=True):
    """Complete a waitpoint: the token is the credential."""

    token: str
    payload: Any = None


class PageQuery(_Request, frozen=True):
    limit: int = 100
    cursor: str | None = None


class ListQuery(_Request, frozen=True):
    """Filters of the workflow list (``type``: the workflow type; the time window bounds the
    first start, ``started_after`` inclusive, ``started_before`` exclusive; ``parent``: only
    that workflow's children; ``search``: a JSON object of search attribute values, e.g.
    ``{"region": "eu", "priority": 2}``, all of which a run must hold)."""

    status: StatusName | None = None
    type: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    parent: str | None = None
    search: str | None = None
    prefix: str | None = None
    limit: int = 100
    cursor: str | None = None


class HistoryQuery(_Request, frozen=True):
    """``after_seq``: the events after this position; ``cursor``: the previous page's
    ``next_cursor`` (instead of ``after_seq``)."""

    after_seq: int = 0
    limit: int = 1000
    cursor: str | None = None


class StreamQuery(_Request, frozen=True):
    """``after_seq``: the events after this position (a ``Last-Event-ID`` header wins)."""

    after_seq: int = 0


class WorkflowPage(msgspec.Struct, frozen=True):
    items: list[WorkflowDescription]
    next_cursor: str | None


class HistoryPage(msgspec.Struct, frozen=True):
    items: list[HistoryEvent]
    next_cursor: str | None


class ApprovalPage(msgspec.Struct, frozen=True):
    items: list[PendingApproval]
    next_cursor: str | None


class WaitpointPage(msgspec.Struct, frozen=True):
    items: list[WaitpointInfo]
    next_cursor: str | None


class RecoveryBody(msgspec.Struct, frozen=True):
    """What the recovery sweep of the engine's start found and did."""

    runs_scanned: int
    runs_reactivated: int
    runs_blocked: int
    timers_overdue: int
    inbox_pending: int
    repairs: list[dict[str, Any]]
    applied: bool
    seconds: float
    summary: str
