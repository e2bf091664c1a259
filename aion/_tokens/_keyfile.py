"""The key ring file: ``<data dir>/waitpoint-keys.json``, owner-only, created on first use.

JSON (so an operator can read it and back it up), format version 1::

    {"version": 1, "grace_seconds": 604800,
     "keys": [{"kid": "...", "secret": "<base64>", "created_at": "...", "retired_at": null}]}

Exactly one key has no ``retired_at``: the current one. A file that is readable by others, of an
unknown version or corrupt is refused and left alone: nothing overwrites a key file but
:func:`save`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import msgspec

from aion._codec import DECODE_ERRORS
from aion._secretfile import read_private, write_private
from aion.errors import DataDirectoryError, InvalidArgument

from ._format import utc
from ._ring import KeyRing, SigningKey

__all__ = [
    "KEY_FILE_NAME",
    "encode_ring",
    "load_or_create",
    "parse_ring",
    "rotate_file",
    "save",
]

#: Name of the key ring file inside the data directory.
KEY_FILE_NAME = "waitpoint-keys.json"

_WHAT = "waitpoint key file"
_FILE_FORMAT_VERSION = 1
_MAX_KEY_FILE_BYTES = 1 << 20


def load_or_create(
    data_dir: str | os.PathLike[str], *, now: datetime, require_existing: bool = False
) -> KeyRing:
    """The ring in ``<data_dir>/waitpoint-keys.json``, created (mode 0600) if there is none.

    A new ring holds one random key made at ``now``. If two processes create the ring at the same
    time, both end up with the one that was written first. The directory is created (mode 0700)
    if it does not exist.

    Raises:
        DataDirectoryError: ``require_existing`` is true and there is no key file; the file is
            readable by others than its owner (fix with ``chmod 600``), is not a regular file, is
            corrupt or unreadable (nothing is overwritten); or the directory cannot be created or
            written.
        InvalidArgument: ``now`` is naive.
    """
    now = utc(now, "now")
    directory = Path(data_dir)
    path = directory / KEY_FILE_NAME
    ring = _read(path)
    if ring is not None:
        return ring
    if require_existing:
        raise DataDirectoryError(
            f"the engine was configured to require an existing waitpoint key, but {path} does "
            "not exist. Provide one: copy the waitpoint-keys.json of the deployment that issues "
            f"your tokens to {path} (then chmod 600 it), or pass your own key with "
            "KeyRing.from_secret(...)."
        )
    _make_directory(directory)
    ring = KeyRing.generate(now)
    if write_private(path, encode_ring(ring), what=_WHAT, replace=False):
        return ring
    existing = _read(path)  # another process created it first: use theirs
    if existing is None:
        raise DataDirectoryError(f"{path} appeared and vanished while it was being created; retry")
    return existing


def save(ring: KeyRing, data_dir: str | os.PathLike[str]) -> None:
    """Atomically replace ``<data_dir>/waitpoint-keys.json`` with ``ring`` (mode 0600).

    Readers see the old file or the new one, never a mix; the new file is durable on return.

    Raises:
        DataDirectoryError: the directory does not exist or the file cannot be written.
    """
    directory = Path(data_dir)
    if not directory.is_dir():
        raise DataDirectoryError(f"{directory} is not a directory; cannot save the key ring there")
    write_private(directory / KEY_FILE_NAME, encode_ring(ring), what=_WHAT, replace=True)


def rotate_file(
    data_dir: str | os.PathLike[str], *, now: datetime, grace: timedelta | None = None
) -> SigningKey:
    """Rotate the ring stored in ``data_dir``: load, :meth:`~KeyRing.rotate`, prune, save.

    Backs ``aion keys rotate``. A running engine keeps the ring it loaded until it reloads it.
    Not safe to run concurrently with itself on one directory (the last save wins).

    Raises:
        DataDirectoryError: there is no key file to rotate, or it cannot be read (see
            :func:`load_or_create`) or written.
        InvalidArgument: ``now`` is naive or ``grace`` negative.
    """
    now = utc(now, "now")
    path = Path(data_dir) / KEY_FILE_NAME
    ring = _read(path)
    if ring is None:
        raise DataDirectoryError(
            f"there is no key ring to rotate at {path}. The engine creates it on first start; "
            "check the data directory path."
        )
    key = ring.rotate(now=now, grace=grace)
    ring.prune(now)
    save(ring, data_dir)
    return key


class _KeyEntry(msgspec.Struct, frozen=True):
    kid: str
    secret: bytes  # JSON: standard base64
    created_at: datetime
    retired_at: datetime | None = None


class _KeyFile(msgspec.Struct, frozen=True):
    version: int
    grace_seconds: float
    keys: list[_KeyEntry]


class _FileVersion(msgspec.Struct):
    version: int


def _read(path: Path) -> KeyRing | None:
    """The ring stored at ``path``, or ``None`` if there is no file."""
    data = read_private(path, what=_WHAT, limit=_MAX_KEY_FILE_BYTES + 1)
    if data is None:
        return None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise DataDirectoryError(
            f"the waitpoint key file {path} is over {_MAX_KEY_FILE_BYTES} bytes, so it is not a "
            "key file aion wrote; restore it from a backup"
        )
    return parse_ring(data, path)


def parse_ring(data: bytes, path: Path | str) -> KeyRing:
    """The ring stored as ``data`` (``path``: where it was read, for messages)."""

    def corrupt(reason: str) -> DataDirectoryError:
        return DataDirectoryError(
            f"the waitpoint key file {path} is corrupt ({reason}); nothing was changed. Restore "
            "it from a backup. Deleting it makes a new key on the next start, and every "
            "outstanding waitpoint token stops verifying."
        )

    try:
        version = msgspec.json.decode(data, type=_FileVersion).version
    except DECODE_ERRORS as exc:
        raise corrupt(str(exc)) from None
    if version != _FILE_FORMAT_VERSION:
        raise DataDirectoryError(
            f"the waitpoint key file {path} has format version {version}; this aion reads "
            f"version {_FILE_FORMAT_VERSION}. Was it written by a newer aion? Upgrade aion."
        )
    try:
        stored = msgspec.json.decode(data, type=_KeyFile)
    except DECODE_ERRORS as exc:
        raise corrupt(str(exc)) from None
    current = [k for k in stored.keys if k.retired_at is None]
    if len(current) != 1:
        raise corrupt(f"{len(current)} keys without retired_at; exactly one must be current")
    try:
        grace = timedelta(seconds=stored.grace_seconds)
        keys = [SigningKey(k.kid, k.secret, k.created_at, k.retired_at) for k in stored.keys]
        return KeyRing(
            keys[stored.keys.index(current[0])],
            [k for k in keys if k.retired_at is not None],
            grace=grace,
        )
    except (InvalidArgument, OverflowError, ValueError) as exc:
        raise corrupt(str(exc)) from None


def encode_ring(ring: KeyRing) -> bytes:
    """``ring`` as the bytes of a key file."""

    seconds = ring.grace.total_seconds()
    stored = _KeyFile(
        version=_FILE_FORMAT_VERSION,
        grace_seconds=int(seconds) if seconds.is_integer() else seconds,
        keys=[_KeyEntry(k.kid, k.secret, k.created_at, k.retired_at) for k in ring.keys],
    )
    return msgspec.json.format(msgspec.json.encode(stored), indent=2) + b"\n"


def _make_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise DataDirectoryError(f"{directory} exists and is not a directory; choose another path")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirectoryError(
            f"cannot create the data directory {directory}: {exc.strerror}. Choose a path this "
            "user can write, or create it with the right permissions."
        ) from exc
