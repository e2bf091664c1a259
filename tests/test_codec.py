"""Codec: every event type round-trips, payload encoding enforces its limit."""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aion import events as ev
from aion._codec import (
    DECODE_ERRORS,
    decode_event,
    decode_events,
    decode_payload,
    encode_event,
    encode_payload,
)
from aion.errors import PayloadError

T = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def sample_events() -> list[ev.Event]:
    """One instance of every event type, with every field set (seq 1..N)."""
    samples: list[ev.Event] = [
        ev.WorkflowStarted(
            seq=1,
            at=T,
            workflow_id="order-7",
            run_id="run-a",
            workflow_type="checkout",
            input=b"\x92\xa2o1d",
            tenant="acme",
            parent_workflow_id="p",
            parent_run_id="pr",
            code_version="v3",
            continued_from_run_id="run-0",
            identity="ops-key",
            trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ev.WorkflowCompleted(seq=2, at=T, result=b"\xc3"),
        ev.WorkflowFailed(seq=3, at=T, error_type="ValueError", message="bad", traceback="tb"),
        ev.WorkflowCancelRequested(seq=4, at=T, reason="user asked", identity="ops-key"),
        ev.WorkflowCancelled(seq=5, at=T, reason="user asked"),
        ev.WorkflowContinuedAsNew(
            seq=6, at=T, new_run_id="run-b", workflow_type="checkout", input=b"\x90"
        ),
        ev.WorkflowBlocked(seq=7, at=T, reason="nondeterminism", detail="at event 12"),
        ev.WorkflowUnblocked(seq=8, at=T, reason="operator", identity="ops-key"),
        ev.StepScheduled(seq=9, at=T, step_seq=1, name="charge_card", args=b"\x91\x01"),
        ev.StepStarted(seq=10, at=T, step_seq=1, attempt=1),
        ev.StepCompleted(seq=11, at=T, step_seq=1, attempt=1, result=b"\xa3ch1"),
        ev.StepFailed(
            seq=12,
            at=T,
            step_seq=1,
            attempt=2,
            error_type="IOError",
            message="down",
            retryable=True,
            will_retry=True,
            traceback="tb",
        ),
        ev.StepRetryScheduled(seq=13, at=T, step_seq=1, next_attempt=3, due=T + timedelta(1)),
        ev.TimerScheduled(seq=14, at=T, timer_seq=1, due=T + timedelta(days=30), name="wait"),
        ev.TimerFired(seq=15, at=T, timer_seq=1),
        ev.TimerCancelled(seq=16, at=T, timer_seq=2),
        ev.SignalReceived(
            seq=17, at=T, name="ship", payload=b"\x81\xa1k\x01", signal_id="s1", identity="ops-key"
        ),
        ev.ApprovalRequested(
            seq=18,
            at=T,
            approval_seq=1,
            approval_id="ap-1",
            action="payments.transfer",
            details=b"\x80",
            digest="sha256:ab",
            timeout_at=T + timedelta(hours=1),
            step_seq=3,
        ),
        ev.ApprovalDecided(
            seq=19,
            at=T,
            approval_id="ap-1",
            approved=False,
            user="ann",
            comment="no",
            digest="sha256:ab",
        ),
        ev.WaitpointCreated(
            seq=20,
            at=T,
            waitpoint_seq=1,
            waitpoint_id="wp-1",
            name="callback",
            expires_at=T + timedelta(days=1),
            kid="k1",
            created_at=T,
        ),
        ev.WaitpointCompleted(seq=21, at=T, waitpoint_id="wp-1", payload=b"\xc0"),
        ev.ChildStarted(
            seq=22,
            at=T,
            child_seq=1,
            child_workflow_id="c",
            child_run_id="cr",
            workflow_type="ship",
        ),
        ev.ChildCompleted(seq=23, at=T, child_seq=1, result=b"\x01"),
        ev.ChildFailed(seq=24, at=T, child_seq=2, error_type="WorkflowCancelled", message="x"),
        ev.TimeRecorded(seq=25, at=T, marker_seq=1, value=T),
        ev.RandomSeedRecorded(seq=26, at=T, seed=2**63 + 5),
        ev.PatchRecorded(seq=27, at=T, patch_id="use-new-tax"),
        ev.SearchAttributesUpserted(
            seq=28, at=T, attributes={"customer": "c-1", "amount": 100, "vip": True, "w": 1.5}
        ),
    ]
    return samples


def test_samples_cover_every_event_type() -> None:
    assert [type(e) for e in sample_events()] == list(ev.ALL_EVENT_TYPES)
    tags = [t.__struct_config__.tag for t in ev.ALL_EVENT_TYPES]
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e).__name__)
def test_every_sample_round_trips(event: ev.Event) -> None:
    assert decode_event(encode_event(event)) == event


def test_decode_many() -> None:
    events = sample_events()
    assert decode_events([encode_event(e) for e in events]) == events


# --- Hypothesis round trip over every event type ---------------------------------------------

aware = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
)
_ids = st.text(min_size=1, max_size=30)
_BASE: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(max_size=40),
    bytes: st.binary(max_size=64),
    int: st.integers(min_value=0, max_value=2**64 - 1),
    bool: st.booleans(),
    float: st.floats(allow_nan=False),
    datetime: aware,
}


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    if tp in _BASE:
        return _BASE[tp]
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return st.one_of(*[_strategy(a) for a in typing.get_args(tp)])
    if tp is type(None):
        return st.none()
    if origin is dict:
        key, value = typing.get_args(tp)
        return st.dictionaries(_strategy(key), _strategy(value), max_size=4)
    raise AssertionError(f"no strategy for {tp!r}")


def event_strategy(cls: type[ev.Event]) -> st.SearchStrategy[ev.Event]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _strategy(hints[f.name]) for f in msgspec.structs.fields(cls)}
    return st.builds(cls, **fields)


any_event = st.one_of(*[event_strategy(cls) for cls in ev.ALL_EVENT_TYPES])


@given(any_event)
def test_any_event_round_trips(event: ev.Event) -> None:
    assert decode_event(encode_event(event)) == event


# --- payloads ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Order:
    order_id: str
    amount: int


def test_payloads_round_trip_and_type() -> None:
    data = encode_payload({"a": [1, 2.5, "x", None]})
    assert decode_payload(data) == {"a": [1, 2.5, "x", None]}
    order = decode_payload(encode_payload(Order("o1", 5)), Order)
    assert order == Order("o1", 5)
    assert decode_payload(encode_payload(T), datetime) == T


def test_payload_limit_and_unencodable_values() -> None:
    with pytest.raises(PayloadError, match="over the limit of 100 bytes"):
        encode_payload("x" * 200, limit=100, what="step result")
    with pytest.raises(PayloadError, match="cannot be encoded"):
        encode_payload(object())
    with pytest.raises(PayloadError, match="cannot be decoded"):
        decode_payload(b"\xc1")
    with pytest.raises(PayloadError, match="cannot be decoded"):
        decode_payload(b"\xa2\xc3\x28")  # a msgpack string that is not UTF-8
    with pytest.raises(PayloadError, match="cannot be decoded"):
        decode_payload(encode_payload("text"), int)


# Short msgpack strings of arbitrary bytes: most are not UTF-8, which msgspec reports with a
# plain UnicodeDecodeError rather than a DecodeError.
_MSGPACK_STRINGS = st.binary(max_size=8).map(lambda b: bytes([0xA0 | len(b)]) + b)


@given(data=st.one_of(st.binary(max_size=48), _MSGPACK_STRINGS), typed=st.booleans())
def test_any_bytes_decode_as_a_payload_or_raise_payload_error(data: bytes, typed: bool) -> None:
    with contextlib.suppress(PayloadError):
        decode_payload(data, Order if typed else Any)


@given(data=st.data())
def test_a_damaged_event_decodes_or_raises_a_decode_error(data: st.DataObject) -> None:
    raw = bytearray(encode_event(data.draw(st.sampled_from(sample_events()))))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    with contextlib.suppress(*DECODE_ERRORS):
        decode_event(bytes(raw))
