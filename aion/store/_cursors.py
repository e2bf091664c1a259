"""Pagination cursors: opaque text that only the store that issued it accepts back.

A cursor is the last key of a page, authenticated with HMAC-SHA256 under a key the store owns,
over the cursor format, the query it was issued for (list, tenant, filters) and that key::

    base64url(b"\\x02" + last_key + HMAC-SHA256(key, domain + msgpack([2, query, last_key])))

The query is not carried: the tag binds it, so a cursor presented with any other query (another
tenant, other filters) fails the check. ``_core.decode_cursor`` also checks that the key lies
inside the range the query may read; a cursor failing either check, or the canonical encoding
(one text per cursor: a changed character never passes), is refused with ``InvalidArgument``.

The key: :class:`~aion.store.MemoryStore` makes a random one per store; ``LmdbStore`` keeps it
in ``<data dir>/cursor-key`` (64 hex digits, mode 0600), made on first use. The file is created
atomically and never overwritten, so every process that opens the directory (the engine, CLI
clients) ends up with the one written first. Losing it only makes outstanding cursors fail:
lists start again from their first page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from aion._secretfile import read_private, write_private
from aion.errors import DataDirectoryError, InvalidArgument

__all__ = ["CURSOR_KEY_FILE", "CursorKey", "load_or_create_key", "refused"]

#: Name of the cursor key file inside an LMDB data directory.
CURSOR_KEY_FILE = "cursor-key"
VERSION = 2
KEY_BYTES = 32
#: Longer texts are refused before any decoding (a real cursor is under 1,000 characters).
MAX_CURSOR_LENGTH = 4096

_DOMAIN = b"aion-cursor-v2\x00"
_TAG_BYTES = hashlib.sha256().digest_size
_ENCODER = msgspec.msgpack.Encoder()
_WHAT = "cursor key file"  # in errors about the file


def refused() -> InvalidArgument:
    """The one error for every cursor that is not exactly one issued for this query."""
    return InvalidArgument(
        "this cursor was not issued for this query: pass next_cursor exactly as returned (by "
        "the same list, with the same tenant and filters), or start again without a cursor"
    )


class CursorKey:
    """Signs and verifies cursors with one secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise InvalidArgument(f"a cursor key is {KEY_BYTES} bytes, not {len(secret)}")
        self._secret = secret

    def __repr__(self) -> str:
        return "CursorKey(<secret>)"

    @classmethod
    def generate(cls) -> CursorKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def _tag(self, query: Sequence[Any], last_key: bytes) -> bytes:
        message = _DOMAIN + _ENCODER.encode([VERSION, list(query), last_key])
        return hmac.digest(self._secret, message, "sha256")

    def sign(self, query: Sequence[Any], last_key: bytes) -> str:
        """The cursor for the page after ``last_key`` of ``query``."""
        raw = bytes([VERSION]) + last_key + self._tag(query, last_key)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def verify(self, cursor: object, query: Sequence[Any]) -> bytes:
        """The last key ``cursor`` carries, if this key issued it for ``query``.

        Raises:
            InvalidArgument: ``cursor`` is not a str, or not a cursor issued for ``query``
                (forged, altered, truncated, of another query or tenant, or of the unsigned
                format of earlier versions).
        """
        if not isinstance(cursor, str):
            raise InvalidArgument(
                f"cursor must be a str (a next_cursor as returned), not {type(cursor).__name__}"
            )
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise refused()
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:  # binascii.Error, or characters that are not ASCII
            raise refused() from None
        # One text per cursor: base64 decoding skips stray characters and ignores the spare
        # bits of the last one, so a cursor that does not re-encode to itself was altered.
        canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        if canonical != cursor or len(raw) < 1 + _TAG_BYTES or raw[0] != VERSION:
            raise refused()
        last_key, tag = raw[1:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(query, last_key)):
            raise refused()
        return last_key


def load_or_create_key(directory: Path) -> CursorKey:
    """The key in ``<directory>/cursor-key``, created (mode 0600) if there is none.

    Two processes creating it at once both end up with the one written first.

    Raises:
        DataDirectoryError: the file is readable by others than its owner, is not a regular
            file, does not hold a key, or cannot be read or written.
    """
    path = directory / CURSOR_KEY_FILE
    key = _read(path)
    if key is not None:
        return key
    # Never overwrites: a file another process linked first wins, and is read back below.
    data = (CursorKey.generate()._secret.hex() + "\n").encode("ascii")
    write_private(path, data, what=_WHAT, replace=False)
    key = _read(path)
    if key is None:
        raise DataDirectoryError(f"{path} appeared and vanished while it was being created; retry")
    return key


def _read(path: Path) -> CursorKey | None:
    data = read_private(path, what=_WHAT, limit=2 * KEY_BYTES + 2)
    if data is None:
        return None
    try:
        return CursorKey(bytes.fromhex(data.decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError):
        raise DataDirectoryError(
            f"the cursor key file {path} does not hold a key ({2 * KEY_BYTES} hex digits). "
            "Delete it: a new key is made on the next open, and only the list cursors issued "
            "so far stop working (their lists start again from the first page)."
        ) from None
