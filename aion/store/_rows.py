"""The tables, the KV protocol, and how rows are keyed, encoded and decoded.

Shared by the write side (``_prepare``, ``_apply``) and the read side (``_queries``) of the store
logic that every backend runs (see ``_core``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeVar

import msgspec

from aion._codec import DECODE_ERRORS, decode_events
from aion.errors import CorruptRecord, InvalidArgument
from aion.events import AnyEvent

from . import _keys as k
from ._records import ApprovalRow, IndexRow, Status, TimerRow, WorkflowRecord

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "KV",
    "STATUS_CODE",
    "TABLES",
    "approval_key",
    "check_limit",
    "decode_event_rows",
    "decode_head",
    "decode_or_skip",
    "decode_row",
    "get_row",
    "head_of",
    "index_key",
    "list_key",
    "pending_key",
    "timer_key",
    "waitpoint_key",
]

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

STATUS_CODE = {status.value: bytes([i + 1]) for i, status in enumerate(Status)}


class KV(Protocol):
    """An ordered key-value transaction over the named tables in :data:`TABLES`."""

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def get_many(self, table: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """The rows of ``keys``, in order (None where there is none): one round trip where a
        backend's reads cost one."""
        ...

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


def head_of(kv: KV, wf_key: bytes) -> int:
    return decode_head(wf_key, kv.get("heads", wf_key))


def decode_head(wf_key: bytes, data: bytes | None) -> int:
    """The head stored as ``data`` (0: none)."""
    if data is None:
        return 0
    if len(data) != 8:
        raise CorruptRecord("heads", wf_key, f"a head is 8 bytes, this one is {len(data)}")
    return k.read_be64(data)


def get_row(kv: KV, table: str, key: bytes, typ: type[R]) -> R | None:
    data = kv.get(table, key)
    return None if data is None else decode_row(table, key, data, typ)


# --- keys -------------------------------------------------------------------------------------


def timer_key(row: TimerRow) -> bytes:
    return k.timer_key(row.due, row.tenant, row.workflow_id, row.timer_id)


def index_key(row: IndexRow) -> bytes:
    return (
        k.ident(row.index, "index name")
        + k.SEP
        + k.ident(row.tenant, "tenant")
        + k.SEP
        + (row.key.encode())
    )


def list_key(table: str, record: WorkflowRecord) -> bytes:
    """The record's row in one list index: ``by_created``, ``by_status`` or ``by_type``.

    Its ids were checked by :func:`prepare` (or when the stored row was written), so they are
    only encoded here.
    """
    prefix = record.tenant.encode() + k.SEP
    if table == "by_status":
        prefix += STATUS_CODE[record.status._value_]  # not the member: it hashes in Python
    elif table == "by_type":
        prefix += record.workflow_type.encode() + k.SEP
    return k.created_key(prefix, record.created_at, record.workflow_id.encode())


def pending_key(row: ApprovalRow) -> bytes:
    return (
        k.ident(row.tenant, "tenant")
        + k.SEP
        + k.be64(k.micros(row.requested_at))
        + k.ident(row.workflow_id, "workflow id")
        + k.SEP
        + k.ident(row.approval_id, "approval id")
    )


def check_limit(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise InvalidArgument(f"limit must be a positive int, not {limit!r}")


def waitpoint_key(tenant: str, workflow_id: str, waitpoint_id: str) -> bytes:
    return k.child_key(tenant, workflow_id, waitpoint_id, "waitpoint id")


def approval_key(tenant: str, workflow_id: str, approval_id: str) -> bytes:
    return k.child_key(tenant, workflow_id, approval_id, "approval id")
