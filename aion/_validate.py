"""One validation for every entry point (ARCHITECTURE.md, invariant 17).

The engine's public methods, the command line, the inbox that carries the command line's
requests to an engine, and workflow code's calls on its context check what they are given with
these functions, before anything is recorded or queued. Each raises
:class:`~aion.errors.InvalidArgument` (payloads: :class:`~aion.errors.PayloadError`) with a
message that says what is wrong and what to do, never a bare ``TypeError``, ``ValueError``,
``UnicodeEncodeError``, ``RecursionError`` or ``OverflowError``.

The store checks again, once, in its write path: whatever it is asked to record must decode
back (invariant 18). These checks are the friendly, early half; that one is the backstop.

The limits (docs/operations.md, "Limits"):

* ids and tenants: non-empty text without NUL, at most :data:`MAX_ID_BYTES` UTF-8 bytes;
* signal names and the names of people deciding approvals: at most :data:`MAX_NAME_BYTES`;
* comments and cancellation reasons: at most :data:`MAX_TEXT_BYTES`;
* durations (timeouts, sleeps, retry intervals): finite, at most :data:`MAX_SECONDS`;
* pages: ``limit`` from 1 to :data:`MAX_PAGE_LIMIT`; history positions up to :data:`MAX_SEQ`;
* payloads: encodable, at most ``max_payload_bytes`` encoded and nested at most
  :data:`~aion._codec.MAX_PAYLOAD_DEPTH` levels (see :func:`aion._codec.encode_payload`).

All text must be valid Unicode: a lone surrogate (as ``os.fsdecode`` makes of undecodable
bytes) cannot be stored as UTF-8.
"""

from __future__ import annotations

import math
import reprlib
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

from aion._codec import (
    MAX_PAYLOAD_DEPTH,
    What,
    decode_payload,
    encode_payload,
    too_deep,
)
from aion.errors import InvalidArgument, PayloadError

E = TypeVar("E", bound=Enum)

__all__ = [
    "MAX_CURSOR_CHARS",
    "MAX_ID_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PAGE_LIMIT",
    "MAX_SECONDS",
    "MAX_SEQ",
    "MAX_TEXT_BYTES",
    "after_seq",
    "aware_datetime",
    "cursor",
    "error_text",
    "identifier",
    "name",
    "optional_identifier",
    "optional_text",
    "page_limit",
    "payload",
    "payload_bytes",
    "search_value",
    "seconds",
    "shown",
    "storable",
    "text",
    "user",
]

#: Ids (workflow ids, tenants, workflow type names): UTF-8 bytes. They are store keys.
MAX_ID_BYTES = 200
#: Signal names, and who decided an approval: UTF-8 bytes.
MAX_NAME_BYTES = 256
#: Comments on decisions, cancellation reasons: UTF-8 bytes.
MAX_TEXT_BYTES = 64 * 1024
#: The longest duration (timeouts, sleeps, retry intervals): 100 years, in seconds. Any
#: workflow time plus this stays far inside ``datetime``'s range (year 9999).
MAX_SECONDS = 100 * 366 * 86400.0
#: The most items one page may ask for.
MAX_PAGE_LIMIT = 10_000
#: The highest history position (``after_seq``): far above any history, inside the store's
#: 64-bit keys.
MAX_SEQ = 2**62
#: The longest cursor (the engine's are far shorter).
MAX_CURSOR_CHARS = 4096


def _shown(value: str, width: int = 40) -> str:
    return repr(value[:width]) + ("..." if len(value) > width else "")


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def shown(value: object) -> str:
    """A short repr of any value for a message: never long, and never an error itself (a
    deeply nested or self-referencing value, a ``__repr__`` that raises)."""
    try:
        return _REPR.repr(value)
    except Exception:
        return f"<{_type(value)} object>"


def storable(text: str) -> str:
    """``text`` as the store can hold it: lone surrogates (from an exception message that
    carries undecodable bytes, say) written as ``\\udc80`` escapes. For text the engine
    records on its own account (error messages), which must not be refused."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def error_text(error: BaseException) -> str:
    """``str(error)`` as the store can hold it, even when the exception's ``__str__`` fails."""
    try:
        return storable(str(error))
    except Exception:
        return f"<{type(error).__name__}: its message could not be formatted>"


def _type(value: object) -> str:
    return type(value).__name__


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{what} {_shown(value)} contains a lone surrogate ({value[exc.start]!r} at "
            f"position {exc.start}), which cannot be stored as UTF-8: pass valid Unicode text "
            "(decode bytes with errors='replace', not 'surrogateescape')"
        ) from None


def _as_str(value: str) -> str:
    # A str subclass (a StrEnum member, say) is taken as its plain text.
    return value if type(value) is str else str.__str__(value)


def identifier(value: object, what: str = "workflow id") -> str:
    """An id: non-empty text without NUL, at most :data:`MAX_ID_BYTES` UTF-8 bytes.

    Raises:
        InvalidArgument: it is not such text.
    """
    if (  # the common case, on every start and signal: plain ASCII of a fitting length
        type(value) is str
        and 0 < len(value) <= MAX_ID_BYTES
        and value.isascii()
        and "\x00" not in value
    ):
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, not {_type(value)}")
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if "\x00" in value:
        raise InvalidArgument(f"{what} {_shown(value)} contains a NUL character, which ids may not")
    size = len(value)
    if size > MAX_ID_BYTES or not value.isascii():  # ASCII: one byte a character
        size = len(_utf8(value, what))
    if size > MAX_ID_BYTES:
        raise InvalidArgument(
            f"{what} {_shown(value)} is {size} bytes (UTF-8); ids are limited to "
            f"{MAX_ID_BYTES}: use a shorter id (a hash of a long natural key, say)"
        )
    return _as_str(value)


def optional_identifier(value: object, what: str) -> str | None:
    """None, or an :func:`identifier`."""
    return None if value is None else identifier(value, what)


def _bounded(value: object, what: str, limit: int | None, *, empty: bool) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, not {_type(value)}")
    if not empty and not value:
        raise InvalidArgument(f"{what} must not be empty")
    size = len(value)
    if (limit is not None and size > limit) or not value.isascii():
        size = len(_utf8(value, what))
    if limit is not None and size > limit:
        raise InvalidArgument(
            f"{what} {_shown(value)} is {size} bytes (UTF-8), over the limit of {limit}; shorten it"
        )
    return _as_str(value)


def name(value: object, what: str = "signal name") -> str:
    """A name (of a signal, say): non-empty text of at most :data:`MAX_NAME_BYTES`.

    Raises:
        InvalidArgument: it is not such text.
    """
    return _bounded(value, what, MAX_NAME_BYTES, empty=False)


def user(value: object) -> str:
    """Who decided an approval: non-blank text of at most :data:`MAX_NAME_BYTES`.

    Raises:
        InvalidArgument: it is missing, blank, not text or too long.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidArgument(
            "a decision names the person who made it: user='...' (not empty or blank)"
        )
    return _bounded(value, "user", MAX_NAME_BYTES, empty=False)


def identity(value: object) -> str:
    """Who makes a request (``identity=``): text of at most :data:`MAX_NAME_BYTES`, or None
    for unknown (recorded as ``""``).

    Raises:
        InvalidArgument: it is not text, or too long.
    """
    return "" if value is None else _bounded(value, "identity", MAX_NAME_BYTES, empty=True)


def text(value: object, what: str, *, limit: int | None = MAX_TEXT_BYTES) -> str:
    """Free text (may be empty) of at most ``limit`` UTF-8 bytes (None: any length).

    Raises:
        InvalidArgument: it is not valid Unicode text, or too long.
    """
    return _bounded(value, what, limit, empty=True)


def optional_text(value: object, what: str, *, limit: int = MAX_TEXT_BYTES) -> str | None:
    """None, or :func:`text` (a comment, a cancellation reason)."""
    return None if value is None else _bounded(value, what, limit, empty=True)


#: The integers msgpack holds: int64 and uint64.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def search_value(key: object, value: object) -> None:
    """A search attribute: a str key, and a str, int (64-bit), float or bool value.

    Raises:
        InvalidArgument: the key or the value is not of those types.
    """
    key = text(key, "a search attribute's name", limit=None)
    if isinstance(value, str):
        text(value, f"search attribute {_shown(key)}", limit=None)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidArgument(
                f"search attribute {_shown(key)} is {shown(value)}, outside the 64-bit integers a "
                "history can hold"
            )
    elif not isinstance(value, float | bool):
        raise InvalidArgument(
            f"search attribute {_shown(key)} is {_type(value)}; search attributes are str, int, "
            "float or bool"
        )


def seconds(
    value: object,
    what: str,
    *,
    negative: bool = False,
    none: bool = False,
    limit: float = MAX_SECONDS,
) -> float:
    """A duration: seconds (an int or a float) or a ``timedelta``; not NaN, at most ``limit``
    (infinite: any finite duration), not negative unless ``negative`` (a delay that has passed
    already: any negative value, even -inf, means none). ``none``: the message adds that None
    means no limit.

    Raises:
        InvalidArgument: not a number, NaN, infinite or over ``limit``, or negative.
    """
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(
            f"{what} is seconds (an int or a float) or a timedelta, not {_type(value)}"
        )
    else:
        try:
            result = float(value)
        except OverflowError:  # an int beyond any float
            result = math.inf if value > 0 else -math.inf
    unlimited = "; pass None for no limit" if none else ""
    if math.isnan(result):
        raise InvalidArgument(f"{what} is NaN; pass a finite number of seconds{unlimited}")
    if result < 0:
        if not negative:
            raise InvalidArgument(f"{what} must not be negative, not {shown(value)}")
        return result
    if result == math.inf:
        raise InvalidArgument(f"{what} is infinite; pass a finite number of seconds{unlimited}")
    if result > limit:
        years = " (100 years)" if limit == MAX_SECONDS else ""
        raise InvalidArgument(
            f"{what} is {shown(value)}; durations are limited to {limit:.0f} seconds"
            f"{years}{unlimited}"
        )
    return result


def optional_seconds(value: object, what: str) -> float | None:
    """None (no limit), or :func:`seconds`."""
    return None if value is None else seconds(value, what, none=True)


def aware_datetime(value: object, what: str) -> datetime:
    """A timezone-aware datetime.

    Raises:
        InvalidArgument: not a datetime, or a naive one.
    """
    if not isinstance(value, datetime):
        raise InvalidArgument(f"{what} must be a datetime, not {_type(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(
            f"{what} {shown(value)} is naive; pass an aware datetime, e.g. datetime.now(UTC)"
        )
    return value


def _integer(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an int, not {_type(value)} ({shown(value)})")
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be from {low} to {high}, not {shown(value)}")
    return int(value)


def member(value: object, enum: type[E], what: str) -> E:
    """A member of ``enum``, given as itself or as its value (e.g. ``"running"``)."""
    if isinstance(value, enum):
        return value
    values = {m.value: m for m in enum}
    if isinstance(value, str) and value in values:
        return values[value]
    choices = ", ".join(repr(m.value) for m in enum)
    raise InvalidArgument(
        f"{what} {shown(value)} is not a {what}: pass an aion.{enum.__name__} ({choices})"
    )


def after_seq(value: object) -> int:
    """A history position to read after: an int from 0 to :data:`MAX_SEQ`."""
    return _integer(value, "after_seq", 0, MAX_SEQ)


def page_limit(value: object) -> int:
    """How many items a page holds: an int from 1 to :data:`MAX_PAGE_LIMIT`."""
    return _integer(value, "limit", 1, MAX_PAGE_LIMIT)


def cursor(value: object) -> str | None:
    """None (the first page), or a cursor text as a previous page's ``next_cursor`` gave it.

    Whether it is one the store issued for this query is the store's to check.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value or not value.isascii():
        raise InvalidArgument(
            f"cursor {shown(value)} is not a cursor: pass a page's next_cursor back unchanged "
            "(or None for the first page)"
        )
    if len(value) > MAX_CURSOR_CHARS:
        raise InvalidArgument(
            f"cursor {value[:24]!r}... is {len(value)} characters, longer than any cursor: pass "
            "a page's next_cursor back unchanged (or None for the first page)"
        )
    return _as_str(value)


def payload(value: object, *, limit: int, what: What = "payload") -> bytes:
    """Encode a user value: see :func:`aion._codec.encode_payload`.

    Raises:
        PayloadError: it cannot be encoded, is too large, or nested too deeply.
    """
    return encode_payload(value, limit=limit, what=what)


def payload_bytes(data: object, *, limit: int, what: str = "payload") -> bytes:
    """Check an encoded payload from outside this process (the inbox): bytes, at most
    ``limit`` long, readable, and not nested too deeply.

    Raises:
        PayloadError: it is not such a payload.
    """
    if not isinstance(data, bytes):
        raise PayloadError(f"{what} is {_type(data)}, not encoded bytes")
    if len(data) > limit:
        raise PayloadError(
            f"{what} is {len(data)} bytes encoded, over the limit of {limit} bytes. Store large "
            "data outside the workflow and pass a reference, or raise max_payload_bytes."
        )
    if not data:
        return data  # no payload (None)
    decoded: Any = decode_payload(data, what=what)  # PayloadError if it is not readable
    if too_deep(data, decoded):
        raise PayloadError(
            f"{what} is nested more than {MAX_PAYLOAD_DEPTH} levels deep; flatten it"
        )
    return data
