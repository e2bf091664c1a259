"""The token text: its payload, MAC, canonical base64url, and reading claims back out.

``v1.<kid>.<payload>.<signature>`` (see the package docstring). Pure functions over bytes and
text: the key ring (``_ring``) signs and verifies with them; :func:`peek_claims` and
:func:`fingerprint` need no key at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import msgspec

from aion._codec import DECODE_ERRORS
from aion.errors import InvalidArgument, InvalidToken

__all__ = [
    "MAX_TOKEN_LENGTH",
    "TokenClaims",
    "fingerprint",
    "peek_claims",
]

#: Longer texts are rejected before any parsing; ``sign`` refuses to make longer tokens.
MAX_TOKEN_LENGTH = 4096

VERSION = "v1"
SIGNATURE_BYTES = hashlib.sha256().digest_size
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_MAC_DOMAIN = b"aion-waitpoint-v1\x00"
_B64URL_PATTERN = re.compile(r"[A-Za-z0-9_-]*")
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: whose waitpoint it opens, when it was made, until when.

    Attributes:
        tenant: the tenant of the workflow.
        workflow_id: the workflow that waits.
        waitpoint_id: the waitpoint the token completes.
        created_at: when the token was signed (aware, UTC, microsecond precision).
        expires_at: when it stops verifying (aware, UTC), or ``None`` for never.
        kid: the id of the key that signed it.
    """

    tenant: str
    workflow_id: str
    waitpoint_id: str
    created_at: datetime
    expires_at: datetime | None
    kid: str


class Payload(msgspec.Struct, array_like=True, frozen=True):
    # Version 1 of the signed payload: never reorder or retype; a change is a new version.
    tenant: str
    workflow_id: str
    waitpoint_id: str
    created_at: int  # microseconds since the epoch, UTC
    expires_at: int | None


PAYLOAD_ENCODER = msgspec.msgpack.Encoder()
PAYLOAD_DECODER = msgspec.msgpack.Decoder(Payload)


def decode_claims(payload: bytes, kid: str) -> TokenClaims:
    """The claims of a signed payload.

    Raises:
        msgspec.DecodeError, msgspec.ValidationError, OverflowError: not a version 1 payload.
    """
    claims = PAYLOAD_DECODER.decode(payload)
    created_at = from_us(claims.created_at)
    expires_at = None if claims.expires_at is None else from_us(claims.expires_at)
    return TokenClaims(
        claims.tenant, claims.workflow_id, claims.waitpoint_id, created_at, expires_at, kid
    )


def mac(kid: str, secret: bytes, payload: bytes) -> bytes:
    """The signature of ``payload`` under the key ``kid`` (its id is covered too)."""
    message = b"".join((_MAC_DOMAIN, kid.encode("ascii"), b".", payload))
    return hmac.digest(secret, message, "sha256")


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes | None:
    """Unpadded base64url, canonical spelling only (no padding, no stray bits), else ``None``."""
    if not _B64URL_PATTERN.fullmatch(text) or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Unused low bits of the last character are ignored by the decoder; demand they are zero so
    # that a token has exactly one spelling.
    return data if b64encode(data) == text else None


def peek_claims(token: str) -> TokenClaims | None:
    """The claims a token *says* it has, WITHOUT checking its signature, key or expiry.

    Untrusted: use it only to attribute a failed verification to the waitpoint a token names
    (for example to record the attempt), never to decide anything. ``None`` if the token is not
    well-formed enough to read. Never raises.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION or not KID_PATTERN.fullmatch(parts[1]):
        return None
    payload = b64decode(parts[2])
    if payload is None:
        return None
    try:
        return decode_claims(payload, parts[1])
    except (*DECODE_ERRORS, OverflowError):
        return None


def fingerprint(token: str) -> str:
    """A short, stable, one-way name for a token (16 hex digits of its SHA-256).

    Safe to log and to show in lists: it identifies a token without revealing it. Never raises.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def reject(token: str, reason: str) -> NoReturn:
    """Raise the one error for an invalid token, naming it by fingerprint only."""
    raise InvalidToken(f"waitpoint token {fingerprint(token)} is invalid: {reason}")


def check_kid(kid: str) -> None:
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise InvalidArgument(f"key id {kid!r} must be 1-32 characters of [A-Za-z0-9_-]")


def utc(when: datetime, what: str) -> datetime:
    """``when`` in UTC; ``what`` names it in the error if it is naive or not a datetime."""
    if not isinstance(when, datetime):
        raise InvalidArgument(f"{what} must be a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgument(
            f"{what} {when.isoformat()} is naive; pass an aware datetime (e.g. tzinfo=UTC)"
        )
    try:
        return when.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidArgument(f"{what} {when.isoformat()} is out of range in UTC") from exc


def to_us(when: datetime) -> int:
    return (when - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)
