"""The key layout: how rows are ordered inside the store.

Strings are UTF-8 joined by NUL (ids may not contain NUL), integers are 8-byte big-endian, times
are microseconds since the epoch shifted by 2**63 so that earlier sorts first. Every per-workflow
key starts with the tenant, so a tenant's rows are one contiguous range and another tenant's are
never scanned, even when workflow ids collide.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

from aion._validate import MAX_ID_BYTES
from aion.errors import InvalidArgument

__all__ = [
    "MAX_ID_BYTES",
    "be64",
    "from_micros",
    "ident",
    "micros",
    "prefix_end",
    "read_be64",
]

SEP = b"\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_BIAS = 1 << 63
_BE64 = struct.Struct(">Q")

be64 = _BE64.pack


def read_be64(data: bytes, offset: int = 0) -> int:
    """The 8-byte big-endian integer at ``offset``."""
    return int(_BE64.unpack_from(data, offset)[0])


def ident(value: str, what: str = "id") -> bytes:
    """Encode an id (tenant, workflow id, timer id ...) for use in a key.

    Raises:
        InvalidArgument: the id is not a non-empty string of at most MAX_ID_BYTES UTF-8 bytes
            without NUL characters.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, not {type(value).__name__}")
    try:
        data = value.encode()
    except UnicodeEncodeError:  # a lone surrogate: the entry checks' message says more
        raise InvalidArgument(
            f"{what} {value[:40]!r} is not valid Unicode (a lone surrogate), which ids may not be"
        ) from None
    if not data:
        raise InvalidArgument(f"{what} must not be empty")
    if "\x00" in value:  # on the str: ``bytes in bytes`` first tries (and fails) int(SEP)
        raise InvalidArgument(f"{what} {value!r} contains a NUL character, which ids may not")
    if len(data) > MAX_ID_BYTES:
        raise InvalidArgument(
            f"{what} {value[:40]!r}... is {len(data)} bytes; ids are limited to {MAX_ID_BYTES}"
        )
    return data


def micros(when: datetime) -> int:
    """Biased microseconds since the epoch: order-preserving, exact, non-negative."""
    if when.tzinfo is None:
        raise InvalidArgument(f"naive datetime {when!r}: times must be timezone-aware (UTC)")
    return (when - _EPOCH) // _ONE_US + _BIAS


def from_micros(value: int) -> datetime:
    """Inverse of :func:`micros`."""
    return _EPOCH + timedelta(microseconds=value - _BIAS)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\xff" * (len(prefix) + 9)
    return stripped[:-1] + bytes([stripped[-1] + 1])


# --- per-table keys --------------------------------------------------------------------------


def workflow_key(tenant: str, workflow_id: str) -> bytes:
    """``heads`` and ``workflows`` tables: tenant NUL workflow_id."""
    return ident(tenant, "tenant") + SEP + ident(workflow_id, "workflow id")


def seq_key(wf_key: bytes, seq: int) -> bytes:
    """``events`` and ``runs`` tables: workflow key NUL seq."""
    return wf_key + SEP + _BE64.pack(seq)


def created_key(tenant_prefix: bytes, created: datetime, workflow_id: bytes) -> bytes:
    """List indexes: prefix, creation time, workflow id."""
    return tenant_prefix + _BE64.pack(micros(created)) + workflow_id


def timer_key(due: datetime, tenant: str, workflow_id: str, timer_id: str) -> bytes:
    """``timers`` table: due time first so due timers are one range scan."""
    return (
        _BE64.pack(micros(due))
        + ident(tenant, "tenant")
        + SEP
        + ident(workflow_id, "workflow id")
        + SEP
        + ident(timer_id, "timer id")
    )


def child_key(tenant: str, workflow_id: str, child_id: str, what: str) -> bytes:
    """``waitpoints`` and ``approvals`` tables: tenant NUL workflow NUL id."""
    return workflow_key(tenant, workflow_id) + SEP + ident(child_id, what)
