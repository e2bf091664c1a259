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
    "MAX_PAYLOAD_DEPTH",
    "decode_event",
    "decode_events",
    "decode_payload",
    "encode",
    "encode_event",
    "encode_payload",
    "too_deep",
]

#: Default limit for one encoded payload (workflow input, step result, signal payload).
DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024

#: The deepest nesting of containers (lists, dicts, Structs ...) a payload may have, counted on
#: the encoded value. msgspec needs a level of the interpreter's recursion budget per level when
#: it decodes, and a payload is decoded deeper in the stack than where it was encoded (inside
#: the engine, in a step's thread, in ``aion history``): one that encodes at the limit could not
#: be read back. 128 levels leave most of the budget to the code around the decoder.
MAX_PAYLOAD_DEPTH = 128

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
    except RecursionError:
        raise PayloadError(_too_deep_message(what, value)) from None
    if len(data) > limit:
        raise PayloadError(
            f"{_what(what)} is {len(data)} bytes encoded, over the limit of {limit} bytes. Store "
            "large data outside the workflow and pass a reference, or raise max_payload_bytes."
        )
    if len(data) > MAX_PAYLOAD_DEPTH and too_deep(data):
        raise PayloadError(_too_deep_message(what, value))
    return data


def _too_deep_message(what: What, value: object) -> str:
    return (
        f"{_what(what)} ({type(value).__name__}) is nested more than {MAX_PAYLOAD_DEPTH} levels "
        "deep, or contains itself; pass a flatter value without reference cycles"
    )


#: The first bytes of msgpack containers (fixmap, fixarray, array 16/32, map 16/32). Each
#: level of nesting starts with one; other bytes (in strings, say) may look the same.
_CONTAINER_BYTES = frozenset([*range(0x80, 0xA0), *range(0xDC, 0xE0)])
_OTHER_BYTES = bytes(b for b in range(256) if b not in _CONTAINER_BYTES)
_NESTED = (list, dict, tuple)


def too_deep(data: bytes, decoded: Any = None) -> bool:
    """Whether the encoded payload ``data`` nests containers deeper than
    :data:`MAX_PAYLOAD_DEPTH` (``decoded``: its decoded value, if at hand).

    Cheap for nearly every payload: a payload cannot nest deeper than it has bytes that may
    start a container, counted in C. Only one with more such bytes is decoded and walked.
    """
    if len(data.translate(None, _OTHER_BYTES)) <= MAX_PAYLOAD_DEPTH:
        return False
    if decoded is None:
        try:
            decoded = _UNTYPED_DECODER.decode(data)
        except RecursionError:
            return True
        except DECODE_ERRORS:
            return False  # not this check's to report
    level: list[Any] = [decoded]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_PAYLOAD_DEPTH:
            return True
        below: list[Any] = []
        for value in level:
            if type(value) is dict:
                below += [x for x in value if type(x) is tuple]  # array keys decode to tuples
                below += [x for x in value.values() if type(x) in _NESTED]
            elif type(value) is list or type(value) is tuple:
                below += [x for x in value if type(x) in _NESTED]
        level = below
    return False


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
    except RecursionError:
        raise PayloadError(
            f"{_what(what)} cannot be decoded: it is nested too deeply for the interpreter's "
            "recursion limit"
        ) from None
