"""Store semantics over an ordered key-value transaction, shared by every backend.

A backend supplies a :class:`KV` (get, put, delete, ordered range scans over named tables) and a
way to make a batch of writes atomic. Everything else lives here once: key layout, encoding,
sequence checks, projection indexes, queries and pagination. So the in-memory store and the LMDB
store cannot drift apart in what they mean.
"""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec

from aion._codec import DECODE_ERRORS, ENCODER, decode_event, decode_events
from aion.errors import CorruptRecord, InvalidArgument, SequenceConflict
from aion.events import ALL_EVENT_TYPES, AnyEvent, WorkflowStarted

from . import _keys as k
from ._cursors import CursorKey, refused
from ._records import (
    ApprovalRow,
    ApprovalStatus,
    CommitResult,
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
    Write,
)

__all__ = ["KV", "TABLES", "Prepared", "apply", "prepare", "prepare_append"]

R = TypeVar("R")

log = logging.getLogger("aion.store")

#: Every table a backend must provide.
TABLES = (
    "meta",
    "events",
    "heads",
    "runs",
    "workflows",
    "by_created",
    "by_status",
    "by_type",
    "active",
    "timers",
    "waitpoints",
    "approvals",
    "approvals_pending",
    "index",
    "inbox",
)

FORMAT_VERSION = 1
FORMAT_KEY = b"format_version"

_HEAD = k.be64
_STATUS_CODE = {status.value: bytes([i + 1]) for i, status in enumerate(Status)}


class KV(Protocol):
    """An ordered key-value transaction over the named tables in :data:`TABLES`."""

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def delete(self, table: str, key: bytes) -> None: ...

    def scan(
        self, table: str, lo: bytes, hi: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Items with ``lo <= key < hi``, ascending (or descending with ``reverse``)."""
        ...

    def values(self, table: str, start: bytes, count: int) -> list[bytes]:
        """Up to ``count`` consecutive values from the first key ``>= start`` (no bound check)."""
        ...


# --- decoding -------------------------------------------------------------------------------

_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}


def decode_row(table: str, key: bytes, data: bytes, typ: type[R]) -> R:
    """Decode a stored row, naming the table and key if it is unreadable."""
    decoder = _decoders.get(typ)
    if decoder is None:
        decoder = _decoders[typ] = msgspec.msgpack.Decoder(typ)
    try:
        return decoder.decode(data)  # type: ignore[no-any-return]
    except DECODE_ERRORS as exc:
        raise CorruptRecord(table, key, str(exc)) from exc


def decode_or_skip(table: str, key: bytes, data: bytes, typ: type[R]) -> R | None:
    """Decode a row that a scan comes across; one that cannot be decoded is skipped (None),
    with a WARNING the first time: one damaged row must not stop every list, the timer wheel,
    the inbox or the startup sweep. ``aion recover`` reports it, ``--apply`` quarantines it."""
    try:
        return decode_row(table, key, data, typ)
    except CorruptRecord as exc:
        if (table, key) not in _skipped:
            if len(_skipped) > 10_000:
                _skipped.clear()
            _skipped.add((table, key))
            log.warning("%s; skipped (run `aion recover` to report and quarantine it)", exc)
        return None


_skipped: set[tuple[str, bytes]] = set()

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
    _check_limit(limit)
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


def _quarantine(kv: KV, row: DamagedRow) -> None:
    """Move a damaged row's bytes aside (the generic index ``quarantine``) and, for a
    projection row, put its rebuilt replacement in its place (fresh list index rows)."""
    data = kv.get(row.table, row.key)
    if data is None:
        return  # quarantined already
    kv.put("index", _index_key(IndexRow("quarantine", "*", f"{row.table}:{row.key.hex()}")), data)
    kv.delete(row.table, row.key)
    record = row.replacement
    if isinstance(record, TimerRow):
        kv.put("timers", _timer_key(record), ENCODER.encode(record))
        return
    if row.table != "workflows":
        return
    kv.delete("active", row.key)
    if not isinstance(record, WorkflowRecord):
        return
    # The damaged row's list index rows: same id and creation time, any status.
    for table in ("by_created", "by_type"):
        kv.delete(table, _list_key(table, record))
    prefix = record.tenant.encode() + k.SEP
    for code in _STATUS_CODE.values():
        status_key = k.created_key(prefix + code, record.created_at, record.workflow_id.encode())
        kv.delete("by_status", status_key)
    _put_workflow(kv, record)


def decode_event_rows(wf_key: bytes, first_seq: int, blobs: Sequence[bytes]) -> list[AnyEvent]:
    """Decode a run of consecutive events, naming the exact key of an unreadable one."""
    try:
        events = decode_events(blobs)
    except DECODE_ERRORS:
        events = []
        for offset, blob in enumerate(blobs):
            key = k.seq_key(wf_key, first_seq + offset)
            events.extend(decode_event_rows_one(key, blob))
    for offset, event in enumerate(events):
        if event.seq != first_seq + offset:
            raise CorruptRecord(
                "events",
                k.seq_key(wf_key, first_seq + offset),
                f"event holds seq {event.seq}, expected {first_seq + offset}",
            )
    return events


def decode_event_rows_one(key: bytes, blob: bytes) -> list[AnyEvent]:
    try:
        return decode_events([blob])
    except DECODE_ERRORS as exc:
        raise CorruptRecord("events", key, str(exc)) from exc


# --- preparing a write (outside the transaction) -----------------------------------------------


# Prepared writes are never part of a reference cycle, and many are in flight at once: the
# garbage collector need not track them (gc=False), which keeps its passes short.


class _PreparedAppend(msgspec.Struct, gc=False):
    wf_key: bytes
    tenant: str
    workflow_id: str
    expected_seq: int
    new_head: int
    rows: Sequence[tuple[bytes, bytes]]
    runs: Sequence[tuple[bytes, bytes]] = ()


class Prepared(msgspec.Struct, gc=False):
    """A :class:`Write` validated and encoded, ready to apply inside a transaction.

    Only the parts a write has are filled; the rest stay empty tuples, and ``only_appends``
    lets :func:`apply` skip them (most writes on the hot path are a lone append). ``result``
    is known before the write is applied: the new heads follow from the expected ones.
    """

    appends: Sequence[_PreparedAppend]
    result: CommitResult
    only_appends: bool = False
    workflows: Sequence[WorkflowRecord] = ()
    timers_add: Sequence[tuple[bytes, bytes]] = ()
    timers_delete: Sequence[bytes] = ()
    waitpoints: Sequence[tuple[bytes, bytes]] = ()
    approvals: Sequence[ApprovalRow] = ()
    index_put: Sequence[tuple[bytes, bytes]] = ()
    index_delete: Sequence[bytes] = ()
    inbox_delete: Sequence[bytes] = ()
    inbox_put: Sequence[tuple[bytes, bytes]] = ()
    inbox_ids: tuple[str, ...] = ()
    quarantine: Sequence[DamagedRow] = ()


def prepare(write: Write, new_inbox_id: Callable[[], str] | None = None) -> Prepared:
    """Validate and encode ``write``. Raises :class:`InvalidArgument` on malformed input.

    Nothing here looks at stored state, so a malformed write fails at the caller, before it can
    reach a batch.
    """
    appends = tuple(
        _prepare_append(a.tenant, a.workflow_id, a.events, a.expected_seq) for a in write.appends
    )
    if len(appends) > 1:
        seen: set[bytes] = set()
        for append in appends:
            if append.wf_key in seen:
                raise InvalidArgument(
                    f"one write appends twice to workflow {append.workflow_id!r}; "
                    "merge the events into one append"
                )
            seen.add(append.wf_key)
    heads = tuple(a.new_head for a in appends)
    if not (
        write.workflows
        or write.timers_add
        or write.timers_delete
        or write.waitpoints
        or write.approvals
        or write.index_put
        or write.index_delete
        or write.inbox_delete
        or write.inbox_put
        or write.quarantine
    ):
        return Prepared(appends, CommitResult(heads), only_appends=True)
    for record in write.workflows:
        _check_record(record)
    inbox_put: list[tuple[bytes, bytes]] = []
    inbox_ids: list[str] = []
    for command in write.inbox_put:
        if new_inbox_id is None:
            raise InvalidArgument("this store cannot take inbox commands")
        k.workflow_key(command.tenant, command.workflow_id)
        command_id = new_inbox_id()
        inbox_ids.append(command_id)
        stored = msgspec.structs.replace(command, command_id=command_id)
        inbox_put.append((command_id.encode(), _readable_row("inbox", stored)))
    # Most writes have one or two of these parts: an empty part costs a truth test.
    return Prepared(
        appends=appends,
        result=CommitResult(heads, tuple(inbox_ids)),
        workflows=tuple(write.workflows),
        timers_add=[(_timer_key(t), ENCODER.encode(t)) for t in write.timers_add]
        if write.timers_add
        else (),
        timers_delete=[_timer_key(t) for t in write.timers_delete] if write.timers_delete else (),
        waitpoints=[
            (
                k.child_key(w.tenant, w.workflow_id, w.waitpoint_id, "waitpoint id"),
                ENCODER.encode(w),
            )
            for w in write.waitpoints
        ]
        if write.waitpoints
        else (),
        approvals=[_check_approval(a) for a in write.approvals] if write.approvals else (),
        index_put=[(_index_key(r), r.value) for r in write.index_put] if write.index_put else (),
        index_delete=[_index_key(r) for r in write.index_delete] if write.index_delete else (),
        inbox_delete=[k.ident(i, "inbox command id") for i in write.inbox_delete]
        if write.inbox_delete
        else (),
        inbox_put=inbox_put,
        inbox_ids=tuple(inbox_ids),
        quarantine=tuple(write.quarantine),
    )


def prepare_append(
    tenant: str, workflow_id: str, events: Sequence[Any], expected_seq: int
) -> Prepared:
    """:func:`prepare` of ``Write(appends=[Append(workflow_id, events, expected_seq, tenant)])``,
    without building the ``Write`` (the hot path: an actor recording its next events)."""
    append = _prepare_append(tenant, workflow_id, events, expected_seq)
    return Prepared((append,), CommitResult((append.new_head,)), only_appends=True)


#: Keys of recently appended workflows: built, and their ids checked, once rather than per append.
_wf_keys: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_WF_KEYS_MAX = 4096
#: Workflow type names found valid (there are few).
_checked_types: set[str] = set()


def _workflow_keys(tenant: str, workflow_id: str) -> tuple[bytes, bytes]:
    """The workflow key, and the prefix of its event keys."""
    wf_key = k.workflow_key(tenant, workflow_id)
    if len(_wf_keys) >= _WF_KEYS_MAX:
        _wf_keys.clear()
    keys = _wf_keys[tenant, workflow_id] = (wf_key, wf_key + k.SEP)
    return keys


def _check_record(record: WorkflowRecord) -> None:
    """Raise InvalidArgument for a projection row whose ids or times cannot be keys. Ids and
    type names found valid are remembered (a run's row is written on every commit)."""
    try:
        known = (record.tenant, record.workflow_id) in _wf_keys and (
            record.workflow_type in _checked_types
        )
    except TypeError:  # an unhashable id: the checks below name it
        known = False
    if not known:
        _workflow_keys(record.tenant, record.workflow_id)
        k.ident(record.workflow_type, "workflow type")
        if len(_checked_types) < _WF_KEYS_MAX:
            _checked_types.add(record.workflow_type)
    k.micros(record.created_at)


def _prepare_append(
    tenant: str, workflow_id: str, events: Sequence[Any], expected_seq: int
) -> _PreparedAppend:
    try:
        wf_key, seq_prefix = _wf_keys[tenant, workflow_id]
    except (KeyError, TypeError):  # TypeError: an unhashable id, which k.workflow_key refuses
        wf_key, seq_prefix = _workflow_keys(tenant, workflow_id)
    if not isinstance(expected_seq, int) or expected_seq < 0:
        raise InvalidArgument(f"expected_seq must be an int >= 0, not {expected_seq!r}")
    if not events:
        raise InvalidArgument(f"append to workflow {workflow_id!r} has no events")
    rows: list[tuple[bytes, bytes]] = []
    runs: list[tuple[bytes, bytes]] = []
    encode = ENCODER.encode
    want = expected_seq
    for event in events:
        want += 1
        if event.seq != want:
            raise InvalidArgument(
                f"events appended to workflow {workflow_id!r} must be contiguous: event "
                f"{want - expected_seq - 1} ({type(event).__name__}) has seq {event.seq}, "
                f"expected {want}"
            )
        if event.at.tzinfo is None:
            raise InvalidArgument(f"event {event.seq} has a naive recorded time; use UTC")
        key = seq_prefix + _HEAD(event.seq)
        try:
            row = encode(event)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise InvalidArgument(f"event {event!r:.300} cannot be encoded: {exc}") from exc
        if type(event) in _ROUND_TRIP:  # nothing is written that cannot be read back
            try:
                decode_event(row)  # ~0.2 us
            except DECODE_ERRORS as exc:
                raise InvalidArgument(_unreadable(event, exc)) from exc
        rows.append((key, row))
        if isinstance(event, WorkflowStarted):
            if event.workflow_id != workflow_id or event.tenant != tenant:
                raise InvalidArgument(
                    f"WorkflowStarted names workflow {event.workflow_id!r} of tenant "
                    f"{event.tenant!r}, but is appended to {workflow_id!r} of {tenant!r}"
                )
            info = RunInfo(event.run_id, event.seq, event.workflow_type, event.at)
            runs.append((key, encode(info)))
    # Tuples, not lists: the garbage collector stops tracking a tuple of bytes after one pass.
    return _PreparedAppend(
        wf_key, tenant, workflow_id, expected_seq, want, tuple(rows), tuple(runs)
    )


_FIELD_AT = re.compile(r"\$\[(\d+)\]")


def _outside_values(event_type: type[Any]) -> bool:
    """Whether events of this type have fields that values from outside the engine reach:
    text, optional or composite fields (names, reasons, users, ids, attributes). The others
    hold only numbers, bytes (encoded payloads) and times that the engine computes."""
    hints = typing.get_type_hints(event_type)
    plain = (int, bool, bytes, datetime)
    return any(hints[f] not in plain for f in event_type.__struct_fields__)


#: Event types whose encoding is decoded back before it is written (ARCHITECTURE.md,
#: invariant 18): a wrong-typed field is refused with InvalidArgument, not written to make
#: every later read of the history fail. Precomputed per type, so that the others (most events
#: of a busy engine: step starts and completions, timer firings, workflow completions) cost
#: nothing.
_ROUND_TRIP = frozenset(t for t in ALL_EVENT_TYPES if _outside_values(t))


def _readable_row(table: str, row: Any) -> bytes:
    """Encode a row that is written rarely (an inbox command), checking that it decodes back:
    one that did not would stop whoever reads the table."""
    try:
        data = ENCODER.encode(row)
        decode_row(table, b"", data, type(row))
    except CorruptRecord as exc:
        raise InvalidArgument(
            f"{type(row).__name__} cannot be recorded in {table!r}: {exc.__cause__}. Nothing "
            "was written: pass values of the documented types"
        ) from exc
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidArgument(
            f"{type(row).__name__} cannot be recorded in {table!r}: {exc}. Nothing was "
            "written: pass values of the documented types"
        ) from exc
    return data


def _unreadable(event: Any, exc: Exception) -> str:
    """Why ``event`` cannot be recorded: the field its schema refuses, and its value."""
    where = ""
    fields = type(event).__struct_fields__
    found = _FIELD_AT.search(str(exc))
    if found and 0 < int(found[1]) <= len(fields):  # item 0 of the encoding is the tag
        field = fields[int(found[1]) - 1]
        value = getattr(event, field)
        where = f": its field {field!r} holds {type(value).__name__} {value!r:.60}"
    return (
        f"{type(event).__name__} (event {event.seq}) cannot be recorded{where}, which the "
        f"history's schema refuses ({exc}). Nothing was written: pass values of the documented "
        "types (names, reasons, users and comments are str)"
    )


def _timer_key(row: TimerRow) -> bytes:
    return k.timer_key(row.due, row.tenant, row.workflow_id, row.timer_id)


def _index_key(row: IndexRow) -> bytes:
    return (
        k.ident(row.index, "index name")
        + k.SEP
        + k.ident(row.tenant, "tenant")
        + k.SEP
        + (row.key.encode())
    )


def _check_approval(row: ApprovalRow) -> ApprovalRow:
    k.child_key(row.tenant, row.workflow_id, row.approval_id, "approval id")
    k.micros(row.requested_at)
    return row


# --- applying a write (inside the transaction) ---------------------------------------------------


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


def _list_key(table: str, record: WorkflowRecord) -> bytes:
    """The record's row in one list index: ``by_created``, ``by_status`` or ``by_type``.

    Its ids were checked by :func:`prepare` (or when the stored row was written), so they are
    only encoded here.
    """
    prefix = record.tenant.encode() + k.SEP
    if table == "by_status":
        prefix += _STATUS_CODE[record.status._value_]  # not the member: it hashes in Python
    elif table == "by_type":
        prefix += record.workflow_type.encode() + k.SEP
    return k.created_key(prefix, record.created_at, record.workflow_id.encode())


def _put_workflow(kv: KV, record: WorkflowRecord) -> None:
    wf_key = k.workflow_key(record.tenant, record.workflow_id)
    old_data = kv.get("workflows", wf_key)
    terminal = record.status.is_terminal
    if old_data is None:
        for table in _LIST_TABLES:
            kv.put(table, _list_key(table, record), b"")
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
            kv.delete(table, _list_key(table, old))
            kv.put(table, _list_key(table, record), b"")
        if terminal != old.status.is_terminal:
            if terminal:
                kv.delete("active", wf_key)
            else:
                kv.put("active", wf_key, b"")
    kv.put("workflows", wf_key, ENCODER.encode(record))


_LIST_TABLES = ("by_created", "by_status", "by_type")


def _pending_key(row: ApprovalRow) -> bytes:
    return (
        k.ident(row.tenant, "tenant")
        + k.SEP
        + k.be64(k.micros(row.requested_at))
        + k.ident(row.workflow_id, "workflow id")
        + k.SEP
        + k.ident(row.approval_id, "approval id")
    )


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
            kv.delete("approvals_pending", _pending_key(old))
    if row.status is ApprovalStatus.PENDING:
        kv.put("approvals_pending", _pending_key(row), key)
    kv.put("approvals", key, ENCODER.encode(row))


# --- reads ------------------------------------------------------------------------------------


def head_of(kv: KV, wf_key: bytes) -> int:
    data = kv.get("heads", wf_key)
    if data is None:
        return 0
    if len(data) != 8:
        raise CorruptRecord("heads", wf_key, f"a head is 8 bytes, this one is {len(data)}")
    return k.read_be64(data)


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


def get_workflow(kv: KV, tenant: str, workflow_id: str) -> WorkflowRecord | None:
    key = k.workflow_key(tenant, workflow_id)
    data = kv.get("workflows", key)
    return None if data is None else decode_row("workflows", key, data, WorkflowRecord)


def get_row(kv: KV, table: str, key: bytes, typ: type[R]) -> R | None:
    data = kv.get(table, key)
    return None if data is None else decode_row(table, key, data, typ)


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
    limit: int = 100,
    cursor: str | None = None,
) -> Page[WorkflowRecord]:
    """Workflows of ``tenant``, newest first, filtered inside the tenant's key range."""
    _check_limit(limit)
    tenant_prefix = k.ident(tenant, "tenant") + k.SEP
    if status is not None:
        table, prefix = "by_status", tenant_prefix + _STATUS_CODE[Status(status).value]
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
    query = [
        "workflows",
        tenant,
        None if status is None else Status(status).value,
        workflow_type,
        None if started_after is None else k.micros(started_after),
        None if started_before is None else k.micros(started_before),
    ]
    if cursor is not None:
        # Newest first: the page ends just before the previous page's last key.
        hi = decode_cursor(cursors, cursor, query, lo, hi)
    items: list[WorkflowRecord] = []
    last_key = b""
    for key, _ in kv.scan(table, lo, hi, reverse=True):
        workflow_id = key[len(prefix) + 8 :].decode()
        wf_key = k.workflow_key(tenant, workflow_id)
        data = kv.get("workflows", wf_key)
        record = None if data is None else decode_or_skip("workflows", wf_key, data, WorkflowRecord)
        if record is None:
            continue  # damaged (reported by `aion recover`) or quarantined
        if workflow_type is not None and record.workflow_type != workflow_type:
            continue
        if len(items) == limit:
            return Page(items, encode_cursor(cursors, query, last_key))
        items.append(record)
        last_key = key
    return Page(items, None)


def scan_active(kv: KV, after: tuple[str, str] | None, limit: int) -> list[WorkflowRecord]:
    """Non-terminal workflows of every tenant, by (tenant, workflow id), after ``after``."""
    _check_limit(limit)
    lo = b"" if after is None else k.workflow_key(*after) + b"\x00"
    rows: list[WorkflowRecord] = []
    for key, _ in kv.scan("active", lo, b"\xff"):
        data = kv.get("workflows", key)
        if data is None:
            raise CorruptRecord("active", key, "index row has no workflow record")
        record = decode_or_skip("workflows", key, data, WorkflowRecord)
        if record is not None:
            rows.append(record)
        if len(rows) == limit:
            break
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
    _check_limit(limit)
    hi = k.be64(k.micros(until) + 1)
    lo = b"" if after is None else _timer_key(after) + b"\x00"
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
    _check_limit(limit)
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
    _check_limit(limit)
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
    _check_limit(limit)
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
    _check_limit(limit)
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
    _check_limit(limit)
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


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise InvalidArgument(f"limit must be a positive int, not {limit!r}")


def waitpoint_key(tenant: str, workflow_id: str, waitpoint_id: str) -> bytes:
    return k.child_key(tenant, workflow_id, waitpoint_id, "waitpoint id")


def approval_key(tenant: str, workflow_id: str, approval_id: str) -> bytes:
    return k.child_key(tenant, workflow_id, approval_id, "approval id")
