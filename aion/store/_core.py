"""Store semantics over an ordered key-value transaction, shared by every backend.

A backend supplies a :class:`KV` (get, put, delete, ordered range scans over named tables) and a
way to make a batch of writes atomic. Everything else lives once, in four modules, so the
in-memory store and the LMDB store cannot drift apart in what they mean:

- ``_rows``: the tables, the KV protocol, key layout, row encoding and decoding;
- ``_prepare``: validating and encoding a write, outside the transaction;
- ``_apply``: checking heads and putting a prepared write's rows, inside the transaction;
- ``_queries``: reads, paged lists and scans.

This module gathers their names (``from aion.store._core import ...`` keeps working).
"""

from __future__ import annotations

from ._apply import apply, check
from ._prepare import Prepared, prepare, prepare_append
from ._queries import (
    current_run_start,
    damaged_rows,
    decode_cursor,
    due_timers,
    encode_cursor,
    get_workflow,
    inbox_pending,
    list_children,
    list_workflows,
    next_timer_due,
    pending_approvals,
    pending_waitpoints,
    read_current_run,
    read_history,
    read_inbox,
    run_chain,
    scan_active,
    scan_index,
    tenants,
)
from ._rows import (
    FORMAT_KEY,
    FORMAT_VERSION,
    KV,
    TABLES,
    approval_key,
    decode_event_rows,
    decode_or_skip,
    decode_row,
    get_row,
    head_of,
    waitpoint_key,
)

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "KV",
    "Prepared",
    "TABLES",
    "apply",
    "approval_key",
    "check",
    "current_run_start",
    "damaged_rows",
    "decode_cursor",
    "decode_event_rows",
    "decode_or_skip",
    "decode_row",
    "due_timers",
    "encode_cursor",
    "get_row",
    "get_workflow",
    "head_of",
    "inbox_pending",
    "list_children",
    "list_workflows",
    "next_timer_due",
    "pending_approvals",
    "pending_waitpoints",
    "prepare",
    "prepare_append",
    "read_current_run",
    "read_history",
    "read_inbox",
    "run_chain",
    "scan_active",
    "scan_index",
    "tenants",
    "waitpoint_key",
]
