"""Reads and queries over a KV transaction: histories, projection rows, paged lists, scans.

Every list pages on an immutable unique key with a signed cursor bound to its query and key
range (``_cursors``); scans skip (and report) rows they cannot decode instead of failing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from aion.errors import CorruptRecord
from aion.events import AnyEvent, SearchValue

from . import _keys as k
from ._cursors import CursorKey, refused
from ._records import (
    ApprovalRow,
    DamagedRow,
    InboxCommand,
    IndexRow,
    Page,
    RunInfo,
    Status,
    TimerRow,
    WaitpointRow,
    WaitpointStatus,
    WorkflowRecord,
)
from ._rows import (
    KV,
    STATUS_CODE,
    check_limit,
    decode_event_rows,
    decode_head,
    decode_or_skip,
    decode_row,
    get_row,
    head_of,
    timer_key,
)

__all__ = [
    "current_run_start",
    "damaged_rows",
    "decode_cursor",
    "due_timers",
    "encode_cursor",
    "get_workflow",
    "heads",
    "inbox_pending",
    "list_children",
    "list_workflows",
    "next_timer_due",
    "pending_approvals",
    "pending_waitpoints",
    "read_current_run",
    "workflow_and_run",
    "read_history",
    "read_inbox",
    "run_chain",
    "scan_active",
    "scan_index",
    "tenants",
]

R = TypeVar("R")

# --- reads ------------------------------------------------------------------------------------


def read_history(
    kv: KV, tenant: str, workflow_id: str, from_seq: int = 1, to_seq: int | None = None
) -> list[AnyEvent]:
    """Events ``from_seq`` .. ``to_seq`` (inclusive; default: the head)."""
    wf_key = k.workflow_key(tenant, workflow_id)
    head = head_of(kv, wf_key)
    first = max(from_seq, 1)
    last = head if to_seq is None else min(to_seq, head)
    if last < first:
        return []
    blobs = kv.values("events", k.seq_key(wf_key, first), last - first + 1)
    if len(blobs) != last - first + 1:
        raise CorruptRecord(
            "events",
            k.seq_key(wf_key, first + len(blobs)),
            f"history head is {head} but only {len(blobs)} of {last - first + 1} events exist",
        )
    return decode_event_rows(wf_key, first, blobs)


def run_chain(kv: KV, tenant: str, workflow_id: str) -> list[RunInfo]:
    """Every run of the workflow id, oldest first, with ``last_seq`` filled in."""
    wf_key = k.workflow_key(tenant, workflow_id)
    prefix = wf_key + k.SEP
    runs = [
        decode_row("runs", key, value, RunInfo)
        for key, value in kv.scan("runs", prefix, k.prefix_end(prefix))
    ]
    head = head_of(kv, wf_key)
    return [
        msgspec.structs.replace(
            run, last_seq=runs[i + 1].first_seq - 1 if i + 1 < len(runs) else head
        )
        for i, run in enumerate(runs)
    ]


def current_run_start(kv: KV, tenant: str, workflow_id: str) -> int:
    """First seq of the latest run (0 when the workflow does not exist)."""
    prefix = k.workflow_key(tenant, workflow_id) + k.SEP
    for key, _ in kv.scan("runs", prefix, k.prefix_end(prefix), reverse=True):
        return k.read_be64(key, len(prefix))
    return 0


def read_current_run(kv: KV, tenant: str, workflow_id: str) -> list[AnyEvent]:
    first = current_run_start(kv, tenant, workflow_id)
    if first == 0:
        return []
    return read_history(kv, tenant, workflow_id, first)


def workflow_and_run(
    kv: KV, tenant: str, workflow_id: str
) -> tuple[WorkflowRecord | None, list[AnyEvent]]:
    """The projection row and the current run's events, from one snapshot."""
    record = get_workflow(kv, tenant, workflow_id)
    if record is None:
        return None, []
    return record, read_current_run(kv, tenant, workflow_id)


def heads(kv: KV, workflows: Sequence[tuple[str, str]]) -> list[int]:
    """The history heads of ``(tenant, workflow id)`` pairs (0 for an unknown one)."""
    keys = [k.workflow_key(tenant, workflow_id) for tenant, workflow_id in workflows]
    return [
        decode_head(key, data) for key, data in zip(keys, kv.get_many("heads", keys), strict=True)
    ]


def get_workflow(kv: KV, tenant: str, workflow_id: str) -> WorkflowRecord | None:
    key = k.workflow_key(tenant, workflow_id)
    data = kv.get("workflows", key)
    return None if data is None else decode_row("workflows", key, data, WorkflowRecord)


# --- cursors ------------------------------------------------------------------------------------


def encode_cursor(cursors: CursorKey, query: Sequence[Any], last_key: bytes) -> str:
    """The cursor of the page after ``last_key``, signed for ``query`` (see ``_cursors``)."""
    return cursors.sign(query, last_key)


def decode_cursor(
    cursors: CursorKey, cursor: object, query: Sequence[Any], lo: bytes, hi: bytes
) -> bytes:
    """The last key of the previous page, which must lie in ``[lo, hi)``: the key range
    ``query`` may read (inside its tenant). Every paged scan resumes through here.

    Raises:
        InvalidArgument: the cursor was not issued by this store for ``query``, or its key lies
            outside the range (the same message: a cursor is either exactly one issued for this
            query, or refused).
    """
    last_key = cursors.verify(cursor, query)
    if not lo <= last_key < hi:
        raise refused()
    return last_key


# --- queries ------------------------------------------------------------------------------------


def list_workflows(
    kv: KV,
    tenant: str,
    *,
    cursors: CursorKey,
    status: Status | None = None,
    workflow_type: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    parent_workflow_id: str | None = None,
    search: Mapping[str, SearchValue] | None = None,
    id_prefix: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page[WorkflowRecord]:
    """Workflows of ``tenant``, newest first, filtered inside the tenant's key range (the
    parent and search attribute filters are checked on the rows of that range)."""
    check_limit(limit)
    tenant_prefix = k.ident(tenant, "tenant") + k.SEP
    if status is not None:
        table, prefix = "by_status", tenant_prefix + STATUS_CODE[Status(status).value]
    elif workflow_type is not None:
        table, prefix = "by_type", tenant_prefix + k.ident(workflow_type, "workflow type") + k.SEP
    else:
        table, prefix = "by_created", tenant_prefix
    lo = prefix if started_after is None else prefix + k.be64(k.micros(started_after))
    hi = (
        k.prefix_end(prefix)
        if started_before is None
        else prefix + k.be64(k.micros(started_before))
    )
    query: list[Any] = [
        "workflows",
        tenant,
        None if status is None else Status(status).value,
        workflow_type,
        None if started_after is None else k.micros(started_after),
        None if started_before is None else k.micros(started_before),
    ]
    wanted = sorted((search or {}).items())
    if parent_workflow_id is not None or wanted or id_prefix:  # (older cursors: their query)
        query += [parent_workflow_id, [[key, type(v).__name__, v] for key, v in wanted]]
        query += [id_prefix or None]
    if cursor is not None:
        # Newest first: the page ends just before the previous page's last key.
        hi = decode_cursor(cursors, cursor, query, lo, hi)
    items: list[WorkflowRecord] = []
    last_key = b""
    scanned, budget, scanned_key = 0, limit + SCAN_BUDGET, b""
    # The rows of a chunk of index keys in one read (a round trip each would add up).
    for chunk in _chunks(kv.scan(table, lo, hi, reverse=True), min(limit + 1, _CHUNK)):
        wf_keys = [k.workflow_key(tenant, key[len(prefix) + 8 :].decode()) for key, _ in chunk]
        for (key, _), wf_key, data in zip(
            chunk, wf_keys, kv.get_many("workflows", wf_keys), strict=True
        ):
            if scanned == budget:
                # Filters the index does not hold (type beside status, parent, search
                # attributes, id prefix) read rows that may not match: a page reads at most
                # this many, and its cursor goes on after the last one read (a short page,
                # even an empty one, with a cursor: nothing loads all runs).
                return Page(items, encode_cursor(cursors, query, scanned_key))
            scanned += 1
            scanned_key = key
            record = (
                None if data is None else decode_or_skip("workflows", wf_key, data, WorkflowRecord)
            )
            if record is None:
                continue  # damaged (reported by `aion recover`) or quarantined
            if workflow_type is not None and record.workflow_type != workflow_type:
                continue
            if parent_workflow_id is not None and record.parent_workflow_id != parent_workflow_id:
                continue
            if wanted and not _holds(record.search_attributes, wanted):
                continue
            if id_prefix and not record.workflow_id.startswith(id_prefix):
                continue
            if len(items) == limit:
                return Page(items, encode_cursor(cursors, query, last_key))
            items.append(record)
            last_key = key
    return Page(items, None)


#: Rows a page of a filtered list reads beyond its ``limit`` at most (see ``list_workflows``).
SCAN_BUDGET = 10_000


def _holds(attributes: Mapping[str, SearchValue], wanted: list[tuple[str, SearchValue]]) -> bool:
    """Whether ``attributes`` hold each wanted value (of the same type: ``True`` is not 1)."""
    for key, value in wanted:
        held = attributes.get(key, _MISSING)
        if type(held) is not type(value) or held != value:
            return False
    return True


_MISSING = object()

#: Most index keys whose rows one ``get_many`` reads.
_CHUNK = 256


def _chunks(rows: Iterator[tuple[bytes, bytes]], size: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """``rows`` in lists of up to ``size``, taken from the iterator only as they are needed."""
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def scan_active(kv: KV, after: tuple[str, str] | None, limit: int) -> list[WorkflowRecord]:
    """Non-terminal workflows of every tenant, by (tenant, workflow id), after ``after``."""
    check_limit(limit)
    lo = b"" if after is None else k.workflow_key(*after) + b"\x00"
    rows: list[WorkflowRecord] = []
    for chunk in _chunks(kv.scan("active", lo, b"\xff"), min(limit, _CHUNK)):
        keys = [key for key, _ in chunk]
        for key, data in zip(keys, kv.get_many("workflows", keys), strict=True):
            if data is None:
                raise CorruptRecord("active", key, "index row has no workflow record")
            record = decode_or_skip("workflows", key, data, WorkflowRecord)
            if record is not None:
                rows.append(record)
            if len(rows) == limit:
                return rows
    return rows


def tenants(kv: KV) -> list[str]:
    """Every tenant that has a workflow (a skip scan: one seek per tenant)."""
    out: list[str] = []
    lo = b""
    while True:
        found = next(kv.scan("workflows", lo, b"\xff"), None)
        if found is None:
            return out
        tenant = found[0].split(k.SEP, 1)[0]
        out.append(tenant.decode())
        lo = tenant + b"\x01"


def next_timer_due(kv: KV, after: datetime) -> datetime | None:
    """Due time of the earliest timer due strictly after ``after`` (all tenants)."""
    for key, _ in kv.scan("timers", k.be64(k.micros(after) + 1), b"\xff" * 9):
        return k.from_micros(k.read_be64(key))
    return None


def due_timers(kv: KV, until: datetime, limit: int, after: TimerRow | None) -> list[TimerRow]:
    """Timers due at or before ``until``, in due order, after ``after`` (exclusive)."""
    check_limit(limit)
    hi = k.be64(k.micros(until) + 1)
    lo = b"" if after is None else timer_key(after) + b"\x00"
    rows: list[TimerRow] = []
    for key, value in kv.scan("timers", lo, hi):
        row = decode_or_skip("timers", key, value, TimerRow)
        if row is not None:
            rows.append(row)
        if len(rows) == limit:
            break
    return rows


def list_children(
    kv: KV,
    table: str,
    typ: type[R],
    tenant: str,
    workflow_id: str,
    limit: int,
    cursor: str | None,
    cursors: CursorKey,
) -> Page[R]:
    """Waitpoint or approval rows of one workflow, ordered by id, keyset-paginated."""
    check_limit(limit)
    prefix = k.workflow_key(tenant, workflow_id) + k.SEP
    hi = k.prefix_end(prefix)
    query = [table, tenant, workflow_id]
    lo = prefix if cursor is None else decode_cursor(cursors, cursor, query, prefix, hi) + b"\x00"
    return _page(kv, table, typ, lo, hi, limit, query, cursors)


def pending_waitpoints(
    kv: KV, tenant: str, workflow_id: str, limit: int, cursor: str | None, cursors: CursorKey
) -> Page[WaitpointRow]:
    """Pending waitpoints of one workflow in creation order, keyset-paginated.

    A run numbers its waitpoints (``<run>-w1``, ``-w2``, ... ``-w10``), so creation order is id
    order with the trailing number compared as a number: :func:`_creation_order`. The table's
    keys sort ``-w10`` before ``-w2``, and the keys are left as they are (they are on disk, and
    the ids are recorded in histories), so this reads the workflow's rows (one key range,
    inside its tenant), keeps the pending ones and orders them here. The cursor is the key of the
    last row returned (its id orders); that order key is immutable and unique, so a page never
    skips or repeats a row that stays pending. ``next_cursor`` is set only when another pending
    row follows.
    """
    check_limit(limit)
    prefix = k.workflow_key(tenant, workflow_id) + k.SEP
    query = ["waitpoints_pending", tenant, workflow_id]
    after = None
    if cursor is not None:
        last_key = decode_cursor(cursors, cursor, query, prefix, k.prefix_end(prefix))
        try:
            after = _creation_order(last_key[len(prefix) :].decode())
        except UnicodeDecodeError:  # a key this store signed is an id: not reached
            raise refused() from None
    rows: list[tuple[tuple[str, int, str], WaitpointRow]] = []
    for key, value in kv.scan("waitpoints", prefix, k.prefix_end(prefix)):
        row = decode_row("waitpoints", key, value, WaitpointRow)
        if row.status is WaitpointStatus.PENDING:
            order = _creation_order(row.waitpoint_id)
            if after is None or order > after:
                rows.append((order, row))
    rows.sort(key=lambda pair: pair[0])
    items = [row for _, row in rows[:limit]]
    if len(rows) <= limit:
        return Page(items, None)
    return Page(items, encode_cursor(cursors, query, prefix + items[-1].waitpoint_id.encode()))


def _creation_order(waitpoint_id: str) -> tuple[str, int, str]:
    """Sort key of a waitpoint id: its trailing number compared as a number (``w2 < w10``),
    then the id itself, which keeps keys unique (``w01`` and ``w1``)."""
    stem = waitpoint_id.rstrip("0123456789")
    digits = waitpoint_id[len(stem) :]
    return (stem, int(digits) if digits else -1, waitpoint_id)


def pending_approvals(
    kv: KV, tenant: str, limit: int, cursor: str | None, cursors: CursorKey
) -> Page[ApprovalRow]:
    """Pending approvals of ``tenant`` across runs, oldest request first."""
    check_limit(limit)
    prefix = k.ident(tenant, "tenant") + k.SEP
    hi = k.prefix_end(prefix)
    query = ["approvals_pending", tenant]
    lo = prefix if cursor is None else decode_cursor(cursors, cursor, query, prefix, hi) + b"\x00"
    items: list[ApprovalRow] = []
    last = b""
    for key, row_key in kv.scan("approvals_pending", lo, hi):
        if len(items) == limit:
            return Page(items, encode_cursor(cursors, query, last))
        row = get_row(kv, "approvals", row_key, ApprovalRow)
        if row is None:
            raise CorruptRecord("approvals_pending", key, "index row has no approval")
        items.append(row)
        last = key
    return Page(items, None)


def scan_index(
    kv: KV,
    index: str,
    tenant: str,
    prefix: str,
    limit: int,
    cursor: str | None,
    cursors: CursorKey,
) -> Page[IndexRow]:
    """Rows of a generic secondary index whose key starts with ``prefix``, ascending."""
    check_limit(limit)
    head = k.ident(index, "index name") + k.SEP + k.ident(tenant, "tenant") + k.SEP
    full = head + prefix.encode()
    hi = k.prefix_end(full)
    query = ["index", index, tenant, prefix]
    lo = full if cursor is None else decode_cursor(cursors, cursor, query, full, hi) + b"\x00"
    items: list[IndexRow] = []
    last = b""
    for key, value in kv.scan("index", lo, hi):
        if len(items) == limit:
            return Page(items, encode_cursor(cursors, query, last))
        items.append(IndexRow(index, tenant, key[len(head) :].decode(), value))
        last = key
    return Page(items, None)


def read_inbox(kv: KV, limit: int, after: str | None = None) -> list[InboxCommand]:
    """Inbox commands, oldest first; with ``after``, those whose id sorts after it."""
    check_limit(limit)
    lo = b""
    if after is not None:
        lo = k.ident(after, "inbox command id") + b"\x00"
    rows: list[InboxCommand] = []
    for key, value in kv.scan("inbox", lo, b"\xff"):
        command = decode_or_skip("inbox", key, value, InboxCommand)
        if command is not None:
            rows.append(command)
        if len(rows) == limit:
            break
    return rows


def inbox_pending(kv: KV, command_ids: Iterable[str]) -> set[str]:
    """Which of ``command_ids`` are still in the inbox (not applied, not dropped)."""
    return {i for i in command_ids if kv.get("inbox", k.ident(i, "inbox command id")) is not None}


def _page(
    kv: KV,
    table: str,
    typ: type[R],
    lo: bytes,
    hi: bytes,
    limit: int,
    query: list[Any],
    cursors: CursorKey,
) -> Page[R]:
    items: list[R] = []
    last = b""
    for key, value in kv.scan(table, lo, hi):
        if len(items) == limit:
            return Page(items, encode_cursor(cursors, query, last))
        item = decode_or_skip(table, key, value, typ)
        if item is not None:
            items.append(item)
        last = key
    return Page(items, None)


#: Tables whose rows ``damaged_rows`` decodes, with their row types.
_ROW_TYPES: dict[str, type[Any]] = {
    "workflows": WorkflowRecord,
    "timers": TimerRow,
    "inbox": InboxCommand,
    "approvals": ApprovalRow,
    "waitpoints": WaitpointRow,
}


def damaged_rows(kv: KV, *, full: bool, limit: int) -> list[DamagedRow]:
    """Rows that cannot be decoded. ``full=False``: what an engine reads when it starts (the
    projection rows of open runs, timers, inbox); ``full=True``: every row of every table of
    rows (an ``aion recover`` scan)."""
    check_limit(limit)
    out: list[DamagedRow] = []
    for table, typ in _ROW_TYPES.items():
        if not full and table in ("approvals", "waitpoints"):
            continue
        if table == "workflows" and not full:
            rows: Iterator[tuple[bytes, bytes | None]] = (
                (key, kv.get("workflows", key)) for key, _ in kv.scan("active", b"", b"\xff")
            )
        else:
            rows = kv.scan(table, b"", b"\xff")
        for key, data in rows:
            if data is None:
                continue
            try:
                decode_row(table, key, data, typ)
            except CorruptRecord as exc:
                out.append(DamagedRow(table, key, str(exc)))
                if len(out) >= limit:
                    return out
    return out
