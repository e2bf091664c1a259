"""One shared msgpack Encoder/Decoder for events, payloads and store records.

Encoders and decoders are built once at import: building them costs far more than using them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from .errors import PayloadError
from .events import AnyEvent, Event

__all__ = [
    "DECODE_ERRORS",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ENCODER",
    "decode_event",
    "decode_events",
    "decode_payload",
    "encode",
    "encode_event",
    "encode_payload",
]

#: Default limit for one encoded payload (workflow input, step result, signal payload).
DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024

ENCODER = msgspec.msgpack.Encoder()
_EVENT_DECODER: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)
_UNTYPED_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()

encode = ENCODER.encode

#: What msgspec raises on bytes it cannot decode: ``DecodeError`` (``ValidationError`` is one)
#: and, for a string that is not valid UTF-8, a plain ``UnicodeDecodeError``.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)


def encode_event(event: Event) -> bytes:
    """Encode one event to its on-disk bytes."""
    return ENCODER.encode(event)


def decode_event(data: bytes | memoryview) -> AnyEvent:
    """Decode one event. Raises one of :data:`DECODE_ERRORS` on bad bytes."""
    return _EVENT_DECODER.decode(data)


def decode_events(blobs: Sequence[bytes | memoryview]) -> list[AnyEvent]:
    """Decode many events (the hot path of history reads)."""
    decode = _EVENT_DECODER.decode
    return [decode(b) for b in blobs]


#: What a payload is, for error messages: a string, or a function that makes it (hot paths
#: pass one, so that the message is only formatted when there is an error to report).
What = str | Callable[[], str]


def _what(what: What) -> str:
    return what if isinstance(what, str) else what()


def encode_payload(
    value: object, *, limit: int = DEFAULT_MAX_PAYLOAD_BYTES, what: What = "payload"
) -> bytes:
    """Encode a user value, enforcing the payload size limit.

    Raises:
        PayloadError: the value cannot be encoded, or its encoding is larger than ``limit``.
    """
    try:
        data = ENCODER.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(
            f"{_what(what)} cannot be encoded ({type(value).__name__}): {exc}. Use values msgspec "
            "can encode: builtins, datetimes, UUIDs, msgspec Structs or dataclasses."
        ) from exc
    if len(data) > limit:
        raise PayloadError(
            f"{_what(what)} is {len(data)} bytes encoded, over the limit of {limit} bytes. Store "
            "large data outside the workflow and pass a reference, or raise max_payload_bytes."
        )
    return data


def decode_payload(data: bytes, type: Any = Any, *, what: What = "payload") -> Any:
    """Decode a payload written by :func:`encode_payload`, optionally into ``type``.

    Raises:
        PayloadError: the bytes are not valid msgpack, or do not match ``type``.
    """
    try:
        if type is Any:
            return _UNTYPED_DECODER.decode(data)
        return msgspec.msgpack.decode(data, type=type)
    except DECODE_ERRORS as exc:
        raise PayloadError(f"{_what(what)} cannot be decoded: {exc}") from exc
