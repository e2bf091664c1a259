# ruff: noqa: E501  (golden hex literals are long by nature)
"""Golden bytes: the on-disk encoding of every event and store row, pinned.

If one of these tests fails, a change altered what aion writes to disk. That breaks every store
written before it. Follow the schema evolution rules in docs/design.md instead: append new fields
with defaults, never reorder, rename or retype, and give a changed event a new tag. Never "fix"
these literals to make a test pass, except for a deliberate format change that also raises the
store format version.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from aion import events as ev
from aion._codec import ENCODER, decode_event, encode_event
from aion.store import (
    ApprovalRow,
    ApprovalStatus,
    InboxCommand,
    RunInfo,
    Status,
    TimerRow,
    WaitpointRow,
    WaitpointStatus,
    WorkflowRecord,
    _keys,
)

from .test_codec import sample_events

T = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)

GOLDEN_EVENTS = {
    "WorkflowStarted": "9eb0776f726b666c6f772e7374617274656401d7ffd438cbe069a7bdbfa76f726465722d37a572756e2d61a8636865636b6f7574c40592a26f3164a461636d65a170a27072a27633a572756e2d30a76f70732d6b6579d93730302d30616637363531393136636434336464383434386562323131633830333139632d623761643662373136393230333333312d3031",
    "WorkflowCompleted": "94b2776f726b666c6f772e636f6d706c6574656402d7ffd438cbe069a7bdbfc401c3",
    "WorkflowFailed": "96af776f726b666c6f772e6661696c656403d7ffd438cbe069a7bdbfaa56616c75654572726f72a3626164a27462",
    "WorkflowCancelRequested": "95b9776f726b666c6f772e63616e63656c5f72657175657374656404d7ffd438cbe069a7bdbfaa757365722061736b6564a76f70732d6b6579",
    "WorkflowCancelled": "94b2776f726b666c6f772e63616e63656c6c656405d7ffd438cbe069a7bdbfaa757365722061736b6564",
    "WorkflowContinuedAsNew": "96b9776f726b666c6f772e636f6e74696e7565645f61735f6e657706d7ffd438cbe069a7bdbfa572756e2d62a8636865636b6f7574c40190",
    "WorkflowBlocked": "95b0776f726b666c6f772e626c6f636b656407d7ffd438cbe069a7bdbfae6e6f6e64657465726d696e69736dab6174206576656e74203132",
    "WorkflowUnblocked": "95b2776f726b666c6f772e756e626c6f636b656408d7ffd438cbe069a7bdbfa86f70657261746f72a76f70732d6b6579",
    "StepScheduled": "96ae737465702e7363686564756c656409d7ffd438cbe069a7bdbf01ab6368617267655f63617264c4029101",
    "StepStarted": "95ac737465702e737461727465640ad7ffd438cbe069a7bdbf0101",
    "StepCompleted": "96ae737465702e636f6d706c657465640bd7ffd438cbe069a7bdbf0101c404a3636831",
    "StepFailed": "9aab737465702e6661696c65640cd7ffd438cbe069a7bdbf0102a7494f4572726f72a4646f776ec3c3a27462",
    "StepRetryScheduled": "96b4737465702e72657472795f7363686564756c65640dd7ffd438cbe069a7bdbf0103d7ffd438cbe069a90f3f",
    "TimerScheduled": "96af74696d65722e7363686564756c65640ed7ffd438cbe069a7bdbf01d7ffd438cbe069cf4abfa477616974",
    "TimerFired": "94ab74696d65722e66697265640fd7ffd438cbe069a7bdbf01",
    "TimerCancelled": "94af74696d65722e63616e63656c6c656410d7ffd438cbe069a7bdbf02",
    "SignalReceived": "97af7369676e616c2e726563656976656411d7ffd438cbe069a7bdbfa473686970c40481a16b01a27331a76f70732d6b6579",
    "ApprovalRequested": "9ab2617070726f76616c2e72657175657374656412d7ffd438cbe069a7bdbf01a461702d31b17061796d656e74732e7472616e73666572c40180a97368613235363a6162d7ffd438cbe069a7cbcf03",
    "ApprovalDecided": "98b0617070726f76616c2e6465636964656413d7ffd438cbe069a7bdbfa461702d31c2a3616e6ea26e6fa97368613235363a6162",
    "WaitpointCreated": "99b177616974706f696e742e6372656174656414d7ffd438cbe069a7bdbf01a477702d31a863616c6c6261636bd7ffd438cbe069a90f3fa26b31d7ffd438cbe069a7bdbf",
    "WaitpointCompleted": "95b377616974706f696e742e636f6d706c6574656415d7ffd438cbe069a7bdbfa477702d31c401c0",
    "ChildStarted": "98ad6368696c642e7374617274656416d7ffd438cbe069a7bdbf01a163a26372a473686970c400",
    "ChildCompleted": "95af6368696c642e636f6d706c6574656417d7ffd438cbe069a7bdbf01c40101",
    "ChildFailed": "96ac6368696c642e6661696c656418d7ffd438cbe069a7bdbf02b1576f726b666c6f7743616e63656c6c6564a178",
    "TimeRecorded": "95ab6d61726b65722e74696d6519d7ffd438cbe069a7bdbf01d7ffd438cbe069a7bdbf",
    "RandomSeedRecorded": "94b26d61726b65722e72616e646f6d5f736565641ad7ffd438cbe069a7bdbfcf8000000000000005",
    "PatchRecorded": "94ac6d61726b65722e70617463681bd7ffd438cbe069a7bdbfab7573652d6e65772d746178",
    "SearchAttributesUpserted": "94af7365617263682e75707365727465641cd7ffd438cbe069a7bdbf84a8637573746f6d6572a3632d31a6616d6f756e7464a3766970c3a177cb3ff8000000000000",
}

GOLDEN_ROWS = {
    "WorkflowRecord": "9da461636d65a76f726465722d37a572756e2d61a8636865636b6f7574a7626c6f636b6564d7ffd438cbe069a7bdbfd7ffd438cbe069a7bdbfd7ffd438cbe069a7bdbf91a774696d65723a31a170a27072ae6e6f6e64657465726d696e69736d81a16ba176",
    "RunInfo": "95a572756e2d6101a8636865636b6f7574d7ffd438cbe069a7bdbf09",
    "TimerRow": "95d7ffd438cbe069a7bdbfa461636d65a76f726465722d37a774696d65723a31a572756e2d61",
    "WaitpointRow": "9ca461636d65a76f726465722d37a477702d31a572756e2d61a863616c6c6261636bd7ffd438cbe069a7bdbfa9636f6d706c65746564d7ffd438cbe069a7bdbfa26670d7ffd438cbe069a7bdbfd7ffd438cbe069a7bdbfa26b31",
    "ApprovalRow": "9da461636d65a76f726465722d37a461702d31a572756e2d61a3706179a97368613235363a6162d7ffd438cbe069a7bdbfa872656a6563746564c40180d7ffd438cbe069a7bdbfa3616e6ea26e6fd7ffd438cbe069a7bdbf",
    "InboxCommand": "9ca67369676e616ca461636d65a76f726465722d37d7ffd438cbe069a7bdbfa473686970c401c0a3616e6ea163a174a3746f6ba83030303030303031a97368613235363a6162",
}


def golden_rows() -> dict[str, msgspec.Struct]:
    return {
        "WorkflowRecord": WorkflowRecord(
            "acme",
            "order-7",
            "run-a",
            "checkout",
            Status.BLOCKED,
            T,
            T,
            T,
            ("timer:1",),
            "p",
            "pr",
            "nondeterminism",
            {"k": "v"},
        ),
        "RunInfo": RunInfo("run-a", 1, "checkout", T, 9),
        "TimerRow": TimerRow(T, "acme", "order-7", "timer:1", "run-a"),
        "WaitpointRow": WaitpointRow(
            "acme",
            "order-7",
            "wp-1",
            "run-a",
            "callback",
            T,
            WaitpointStatus.COMPLETED,
            T,
            "fp",
            T,
            T,
            "k1",
        ),
        "ApprovalRow": ApprovalRow(
            "acme",
            "order-7",
            "ap-1",
            "run-a",
            "pay",
            "sha256:ab",
            T,
            ApprovalStatus.REJECTED,
            b"\x80",
            T,
            "ann",
            "no",
            T,
        ),
        "InboxCommand": InboxCommand(
            "signal",
            "acme",
            "order-7",
            T,
            "ship",
            b"\xc0",
            "ann",
            "c",
            "t",
            "tok",
            "00000001",
            "sha256:ab",
        ),
    }


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e).__name__)
def test_event_encoding_is_pinned(event: ev.Event) -> None:
    golden = bytes.fromhex(GOLDEN_EVENTS[type(event).__name__])
    assert encode_event(event) == golden
    assert decode_event(golden) == event


def test_every_event_type_is_pinned() -> None:
    assert set(GOLDEN_EVENTS) == {t.__name__ for t in ev.ALL_EVENT_TYPES}


@pytest.mark.parametrize("name", sorted(GOLDEN_ROWS))
def test_row_encoding_is_pinned(name: str) -> None:
    row = golden_rows()[name]
    golden = bytes.fromhex(GOLDEN_ROWS[name])
    assert ENCODER.encode(row) == golden
    assert msgspec.msgpack.decode(golden, type=type(row)) == row


def test_old_records_without_trailing_fields_decode_with_defaults() -> None:
    # Rule 2: a record written before optional fields existed still decodes.
    short_started = ENCODER.encode(
        ["workflow.started", 1, T, "wf", "run-a", "checkout", b"\x90", "default"]
    )
    decoded = decode_event(short_started)
    assert isinstance(decoded, ev.WorkflowStarted)
    assert decoded.parent_workflow_id is None and decoded.code_version is None
    short_record = ENCODER.encode(["t", "wf", "r", "order", "running", T, T])
    record = msgspec.msgpack.decode(short_record, type=WorkflowRecord)
    assert record.waiting_on == () and record.closed_at is None and record.reason == ""


#: Encodings written before fields were appended (rule 2): they decode with the defaults.
OLDER_EVENTS = {
    "WorkflowStarted": "9cb0776f726b666c6f772e7374617274656401d7ffd438cbe069a7bdbfa76f726465722d37a572756e2d61a8636865636b6f7574c40592a26f3164a461636d65a170a27072a27633a572756e2d30",
    "WorkflowCancelRequested": "94b9776f726b666c6f772e63616e63656c5f72657175657374656404d7ffd438cbe069a7bdbfaa757365722061736b6564",
    "WorkflowUnblocked": "94b2776f726b666c6f772e756e626c6f636b656408d7ffd438cbe069a7bdbfa86f70657261746f72",
    "SignalReceived": "96af7369676e616c2e726563656976656411d7ffd438cbe069a7bdbfa473686970c40481a16b01a27331",
    "ApprovalRequested": "99b2617070726f76616c2e72657175657374656412d7ffd438cbe069a7bdbf01a461702d31b17061796d656e74732e7472616e73666572c40180a97368613235363a6162d7ffd438cbe069a7cbcf",
    "ApprovalDecided": "97b0617070726f76616c2e6465636964656413d7ffd438cbe069a7bdbfa461702d31c2a3616e6ea26e6f",
    "WaitpointCreated": "97b177616974706f696e742e6372656174656414d7ffd438cbe069a7bdbf01a477702d31a863616c6c6261636bd7ffd438cbe069a90f3f",
    "StepFailed": "99ab737465702e6661696c65640cd7ffd438cbe069a7bdbf0102a7494f4572726f72a4646f776ec3c3",
}


#: The fields appended to them since (with their defaults).
APPENDED = {
    "WorkflowStarted": {"identity": "", "trace": ""},
    "WorkflowCancelRequested": {"identity": ""},
    "WorkflowUnblocked": {"identity": ""},
    "SignalReceived": {"identity": ""},
    "ApprovalRequested": {"step_seq": 0},
    "ApprovalDecided": {"digest": ""},
    "WaitpointCreated": {"kid": "", "created_at": None},
    "StepFailed": {"traceback": ""},
}


@pytest.mark.parametrize("name", sorted(OLDER_EVENTS))
def test_events_written_before_appended_fields_still_decode(name: str) -> None:
    decoded = decode_event(bytes.fromhex(OLDER_EVENTS[name]))
    current = next(e for e in sample_events() if type(e).__name__ == name)
    assert decoded == msgspec.structs.replace(current, **APPENDED[name])


#: Rows written before fields were appended (rule 2), and those fields with their defaults.
OLDER_ROWS: dict[str, tuple[str, dict[str, str]]] = {
    "WaitpointRow": (
        "9ba461636d65a76f726465722d37a477702d31a572756e2d61a863616c6c6261636bd7ffd438cbe069a7bdbfa9636f6d706c65746564d7ffd438cbe069a7bdbfa26670d7ffd438cbe069a7bdbfd7ffd438cbe069a7bdbf",
        {"kid": ""},
    ),
    "InboxCommand": (
        "9ba67369676e616ca461636d65a76f726465722d37d7ffd438cbe069a7bdbfa473686970c401c0a3616e6ea163a174a3746f6ba83030303030303031",
        {"digest": ""},
    ),
}


@pytest.mark.parametrize("name", sorted(OLDER_ROWS))
def test_rows_written_before_appended_fields_still_decode(name: str) -> None:
    hex_bytes, appended = OLDER_ROWS[name]
    current = golden_rows()[name]
    decoded = msgspec.msgpack.decode(bytes.fromhex(hex_bytes), type=type(current))
    assert decoded == msgspec.structs.replace(current, **appended)


def test_unknown_tag_is_rejected_not_misread() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(ENCODER.encode(["workflow.exploded", 1, T]))


def test_key_layout_is_pinned() -> None:
    assert _keys.workflow_key("acme", "order-7") == b"acme\x00order-7"
    assert _keys.seq_key(b"acme\x00order-7", 258) == b"acme\x00order-7\x00" + bytes(
        [0, 0, 0, 0, 0, 0, 1, 2]
    )
    assert _keys.timer_key(T, "acme", "wf", "t1").hex() == (
        ((1 << 63) + 1_772_600_767_890_123).to_bytes(8, "big").hex() + b"acme\x00wf\x00t1".hex()
    )
    assert _keys.micros(datetime(1970, 1, 1, tzinfo=UTC)) == 1 << 63
    assert _keys.from_micros(_keys.micros(T)) == T
