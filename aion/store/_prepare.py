"""Preparing a write, outside the transaction: validate a :class:`Write` and encode its rows.

Nothing here reads stored state, so a malformed write fails at its caller before it can reach
a batch; what is left for the transaction (``_apply``) is checking heads and putting rows.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from aion._codec import DECODE_ERRORS, ENCODER, decode_event
from aion.errors import CorruptRecord, InvalidArgument
from aion.events import ALL_EVENT_TYPES, WorkflowStarted

from . import _keys as k
from ._records import ApprovalRow, CommitResult, DamagedRow, RunInfo, WorkflowRecord, Write
from ._rows import decode_row, index_key, timer_key

__all__ = ["Prepared", "prepare", "prepare_append"]

_HEAD = k.be64


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
        timers_add=[(timer_key(t), ENCODER.encode(t)) for t in write.timers_add]
        if write.timers_add
        else (),
        timers_delete=[timer_key(t) for t in write.timers_delete] if write.timers_delete else (),
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
        index_put=[(index_key(r), r.value) for r in write.index_put] if write.index_put else (),
        index_delete=[index_key(r) for r in write.index_delete] if write.index_delete else (),
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


def _check_approval(row: ApprovalRow) -> ApprovalRow:
    k.child_key(row.tenant, row.workflow_id, row.approval_id, "approval id")
    k.micros(row.requested_at)
    return row
