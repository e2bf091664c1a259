"""API keys for the HTTP control plane: ``Authorization: Bearer <key>``.

A key is the text ``aion_<key_id>_<secret>``: ``key_id`` is 12 lowercase hex digits (it names
the key in lists and logs and is no secret), ``secret`` is 32 random bytes in unpadded base64url.
Each key has a role (:data:`ROLES`, each including the rights of the ones before it) and is for
one tenant or for all of them.

The keys live in an owner-only JSON file, ``<data dir>/api-keys.json`` (or the file given with
``--api-keys``), format version 1::

    {"version": 1,
     "keys": [{"key_id": "3f9c0a1b2c4d", "sha256": "<64 hex digits>", "role": "operator",
               "tenant": "acme", "label": "deploy bot", "created_at": "2025-03-01T12:00:00Z",
               "revoked_at": null}]}

``tenant`` null means all tenants; keys are listed in creation order, revoked ones kept (with
``revoked_at``) so that lists say what happened. The file never holds a key, only the SHA-256 of
its whole text. A plain hash, not a slow password KDF (bcrypt, scrypt, argon2), is right here: a
KDF slows down guessing a low-entropy password from a stolen hash, but these keys are 256-bit
random values, out of reach of any guessing however fast the hash is; and a KDF would cost tens
of milliseconds on every HTTP request.

A file that others could read, that is corrupt or of an unknown version is refused with
:class:`~aion.errors.DataDirectoryError`, never taken as "no keys". Changes (``create``,
``revoke``) hold an exclusive lock on ``api-keys.json.lock`` around their read and write, so that
two processes creating keys at once lose neither, and replace the file atomically, so that a
reader sees the old file or the new one. :meth:`ApiKeys.verify` notices a changed file (one
``stat`` per call) and reloads it: a key created or revoked by ``aion api-key`` in another
process counts from the next request on, without a restart.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import msgspec

from aion import _validate
from aion._codec import DECODE_ERRORS
from aion._secretfile import read_private, write_private
from aion.errors import DataDirectoryError, InvalidArgument

__all__ = [
    "API_KEY_FILE_NAME",
    "ROLES",
    "ApiKey",
    "ApiKeys",
    "allows",
]

#: The roles, from least to most rights; each includes the rights of the ones before it.
ROLES: Final = ("viewer", "approver", "operator", "admin")
#: Name of the key file inside a data directory.
API_KEY_FILE_NAME: Final = "api-keys.json"

_RANK: Final = {role: rank for rank, role in enumerate(ROLES)}
_WHAT = "API key file"
_FILE_FORMAT_VERSION = 1
#: Far more than any deployment's keys (about 300 bytes each), far less than hurts to read.
_MAX_FILE_BYTES = 16 << 20
_MAX_LABEL_BYTES = 256
_PREFIX = "aion_"
_KEY_ID_HEX = 12
_SECRET_BYTES = 32
_SECRET_CHARS = (_SECRET_BYTES * 8 + 5) // 6  # unpadded base64url: 43
_KEY_ID = re.compile(rf"[0-9a-f]{{{_KEY_ID_HEX}}}")
_KEY_TEXT = re.compile(rf"{_PREFIX}[0-9a-f]{{{_KEY_ID_HEX}}}_[A-Za-z0-9_-]{{{_SECRET_CHARS}}}")
_KEY_LENGTH = len(_PREFIX) + _KEY_ID_HEX + 1 + _SECRET_CHARS
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ROLES_TEXT = ", ".join(ROLES)
_EITHER = "Pass tenant='...' or all_tenants=True (CLI: --tenant T or --all-tenants)"


def allows(role: str, needed: str) -> bool:
    """Whether a key of ``role`` may do what needs ``needed`` (it has that role or a higher one).

    Args:
        role: the key's role.
        needed: the least role the action needs.

    Raises:
        InvalidArgument: either is not one of :data:`ROLES` (a bug in the caller: a key's role
            is always one).
    """
    have, need = _rank(role, "role"), _rank(needed, "needed role")
    return have >= need


def _rank(role: object, what: str) -> int:
    rank = _RANK.get(role) if isinstance(role, str) else None
    if rank is None:
        raise InvalidArgument(
            f"{what} {_validate.shown(role)} is not a role: pass one of {_ROLES_TEXT}"
        )
    return rank


class ApiKey(msgspec.Struct, frozen=True):
    """What an API key is for: its public description, never its secret.

    Attributes:
        key_id: 12 lowercase hex digits; names the key (``aion api-key revoke KEY_ID``). Not a
            secret: it is part of the key text, and shown in lists.
        role: one of :data:`ROLES`.
        tenant: the one tenant the key is for, or ``None`` for all tenants.
        label: what the operator said the key is for (default: its key id).
        created_at: when it was made (aware, UTC).
        revoked_at: when it was revoked (aware, UTC), or ``None`` while it works.
    """

    key_id: str
    role: str
    tenant: str | None
    label: str
    created_at: datetime
    revoked_at: datetime | None = None


class _Entry(msgspec.Struct, frozen=True):
    # Version 1 of a key in the file: never reorder or retype; new fields get defaults.
    key_id: str
    sha256: str
    role: str
    tenant: str | None
    label: str
    created_at: Annotated[datetime, msgspec.Meta(tz=True)]
    revoked_at: Annotated[datetime, msgspec.Meta(tz=True)] | None


class _File(msgspec.Struct, frozen=True):
    version: int
    keys: list[_Entry]


class _FileVersion(msgspec.Struct):
    version: int


_VERSION_DECODER = msgspec.json.Decoder(_FileVersion)
_FILE_DECODER = msgspec.json.Decoder(_File)
_ENCODER = msgspec.json.Encoder()

#: What identifies one version of the file: (st_mtime_ns, st_size, st_ino, st_mode), or None
#: for no file. The mode is there so that a ``chmod 644`` is noticed too.
_Signature = tuple[int, int, int, int] | None


@dataclass(frozen=True)
class _Loaded:
    signature: _Signature
    entries: tuple[_Entry, ...]
    #: key id -> (SHA-256 of the key text, in hex; its description), revoked keys left out.
    active: dict[str, tuple[str, ApiKey]]


class ApiKeys:
    """The API keys in one key file: create, list, revoke, and verify presented keys.

    Safe to share between threads and to use from several processes at once (changes lock the
    file; :meth:`verify` reloads it when another process changed it).

    Args:
        path: the key file (it need not exist yet: no file means no keys).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._loaded: _Loaded | None = None

    @classmethod
    def for_target(cls, target: object, keys_file: str | os.PathLike[str] | None = None) -> ApiKeys:
        """The key file of an engine's target: ``keys_file`` if given, else the data
        directory's ``api-keys.json``.

        Args:
            target: what the engine opens: a data directory (it need not exist yet: keys may be
                made before the first start), a PostgreSQL URL or a store.
            keys_file: the key file to use instead (CLI: ``--api-keys FILE``).

        Raises:
            InvalidArgument: ``target`` is not a data directory (a PostgreSQL URL, a store, an
                existing file) and no ``keys_file`` was given; ``keys_file`` is a directory.
        """
        if keys_file is not None:
            if not isinstance(keys_file, str | os.PathLike):
                raise InvalidArgument(
                    f"keys_file is a path (str or os.PathLike), not {type(keys_file).__name__}"
                )
            path = Path(keys_file)
            if path.is_dir():
                raise InvalidArgument(
                    f"the API key file {path} is a directory; pass the path of a file, e.g. "
                    f"{path / API_KEY_FILE_NAME}"
                )
            return cls(path)
        # The rule of aion.store's is_postgres_url, repeated so that this module stays
        # independent of the store. The URL itself is not shown: it may hold a password.
        if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
            raise InvalidArgument(
                "API keys are kept in a file, and a PostgreSQL database has no data directory "
                "to hold it: pass the key file (CLI: --api-keys FILE; Python: keys_file=...)"
            )
        if not isinstance(target, str | os.PathLike):
            raise InvalidArgument(
                f"API keys are kept in a file, and a {type(target).__name__} has no data "
                "directory to hold it: pass the key file (CLI: --api-keys FILE; Python: "
                "keys_file=...)"
            )
        directory = Path(target)
        if directory.exists() and not directory.is_dir():
            raise InvalidArgument(
                f"{directory} is not a data directory; pass the key file instead (CLI: "
                "--api-keys FILE; Python: keys_file=...)"
            )
        return cls(directory / API_KEY_FILE_NAME)

    @property
    def path(self) -> Path:
        """The key file."""
        return self._path

    def create(
        self,
        *,
        role: str,
        tenant: str | None = None,
        all_tenants: bool = False,
        label: str | None = None,
        now: datetime | None = None,
    ) -> tuple[str, ApiKey]:
        """Make a new key and record its hash (the file is created, mode 0600, if need be).

        Args:
            role: one of :data:`ROLES`.
            tenant: the one tenant the key is for; or
            all_tenants: true for a key for every tenant. Exactly one of the two.
            label: what the key is for, at most 256 UTF-8 bytes of printable text (default:
                the key id).
            now: when it is made (aware; default: now).

        Returns:
            The key text, to hand to its user (it cannot be had again: the file holds only
            its hash), and its description.

        Raises:
            InvalidArgument: an argument is not as described above.
            DataDirectoryError: the key file is refused (see :meth:`verify`) or cannot be
                written; nothing was changed.
        """
        _rank(role, "role")
        if not isinstance(all_tenants, bool):
            raise InvalidArgument(f"all_tenants is a bool, not {type(all_tenants).__name__}")
        if tenant is not None and all_tenants:
            raise InvalidArgument(f"an API key is for one tenant or for all, not both. {_EITHER}")
        if tenant is None and not all_tenants:
            raise InvalidArgument(f"say which tenants the API key is for. {_EITHER}")
        if tenant is not None:
            tenant = _validate.identifier(tenant, "tenant")
        if label is not None:
            label = _label(label)
        at = _now(now)
        with self._locked():
            entries = self._read().entries
            taken = {e.key_id for e in entries}
            key_id = secrets.token_hex(_KEY_ID_HEX // 2)
            while key_id in taken:  # one in 2**48 per key, but cheap to rule out
                key_id = secrets.token_hex(_KEY_ID_HEX // 2)
            secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES))
            key = f"{_PREFIX}{key_id}_{secret.rstrip(b'=').decode('ascii')}"
            entry = _Entry(
                key_id=key_id,
                sha256=_digest(key),
                role=role,
                tenant=tenant,
                label=key_id if label is None else label,
                created_at=at,
                revoked_at=None,
            )
            self._write((*entries, entry))
        return key, _described(entry)

    def list(self) -> builtins.list[ApiKey]:
        """Every key in the file, in creation order, revoked ones included.

        Raises:
            DataDirectoryError: the key file is refused (see :meth:`verify`).
        """
        return [_described(e) for e in self._current().entries]

    def revoke(self, key_id: str, *, now: datetime | None = None) -> ApiKey:
        """Revoke a key: it stops verifying (in every process, from its next request on).

        Revoking a revoked key changes nothing: it keeps the time of its first revocation.

        Args:
            key_id: the key's id (``aion api-key list`` shows them).
            now: when (aware; default: now).

        Returns:
            The key's description, with ``revoked_at``.

        Raises:
            InvalidArgument: there is no key with this id.
            DataDirectoryError: the key file is refused (see :meth:`verify`) or cannot be
                written; nothing was changed.
        """
        at = _now(now)
        with self._locked():
            entries = self._read().entries
            i = next((i for i, e in enumerate(entries) if e.key_id == key_id), None)
            if i is None:
                raise InvalidArgument(
                    f"no API key with id {_validate.shown(key_id)} in {self._path}; "
                    "`aion api-key list` shows them"
                )
            entry = entries[i]
            if entry.revoked_at is not None:
                return _described(entry)
            entry = msgspec.structs.replace(entry, revoked_at=at)
            self._write((*entries[:i], entry, *entries[i + 1 :]))
        return _described(entry)

    def active(self, key_id: str) -> ApiKey | None:
        """The key with this id if it exists and is not revoked (a session that names a key
        checks it is still good this way, without the key itself).

        Raises:
            DataDirectoryError: as :meth:`verify`.
        """
        found = self._current().active.get(key_id)
        return None if found is None else found[1]

    def verify(self, presented: object) -> ApiKey | None:
        """The description of the key ``presented`` is, if it is a key in the file that is not
        revoked; ``None`` for anything else (never raises for any ``presented``).

        Cheap enough for every request: one ``stat`` of the file, a dict lookup and one
        SHA-256. The file is read again only when it changed.

        Raises:
            DataDirectoryError: the key file is readable by others than its owner (fix with
                ``chmod 600``), not a regular file, corrupt or of an unknown version: it is
                refused until fixed, not taken as "no keys".
        """
        loaded = self._current()
        if (
            not isinstance(presented, str)
            or len(presented) != _KEY_LENGTH
            or not _KEY_TEXT.fullmatch(presented)
        ):
            return None
        found = loaded.active.get(presented[len(_PREFIX) : len(_PREFIX) + _KEY_ID_HEX])
        if found is None:
            return None
        digest, described = found
        return described if hmac.compare_digest(_digest(presented), digest) else None

    # --- the file ---

    def _current(self) -> _Loaded:
        """The file as it is now: the one loaded last, unless the file changed since."""
        loaded = self._loaded
        signature = self._signature()
        if loaded is not None and loaded.signature == signature:
            return loaded
        # A change between the stat and the read only costs one more reload: the signature
        # is older than the content, so the next call reads again.
        loaded = self._read(signature)
        self._loaded = loaded
        return loaded

    def _signature(self) -> _Signature:
        try:
            info = os.stat(self._path)
        except (FileNotFoundError, NotADirectoryError):
            return None  # read_private says why a parent that is not a directory is wrong
        except OSError as exc:
            raise DataDirectoryError(
                f"cannot look at the {_WHAT} {self._path}: {exc.strerror}. Check that this user "
                "can read it."
            ) from exc
        return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_mode)

    def _read(self, signature: _Signature = None) -> _Loaded:
        data = read_private(self._path, what=_WHAT, limit=_MAX_FILE_BYTES + 1)
        if data is None:
            return _Loaded(signature, (), {})
        if len(data) > _MAX_FILE_BYTES:
            raise DataDirectoryError(
                f"the {_WHAT} {self._path} is over {_MAX_FILE_BYTES} bytes, so it is not a key "
                "file aion wrote; restore it from a backup"
            )
        entries = _parse(data, self._path)
        active = {e.key_id: (e.sha256, _described(e)) for e in entries if e.revoked_at is None}
        return _Loaded(signature, entries, active)

    def _write(self, entries: tuple[_Entry, ...]) -> None:
        data = msgspec.json.format(_ENCODER.encode(_File(_FILE_FORMAT_VERSION, list(entries))))
        if len(data) >= _MAX_FILE_BYTES:
            raise InvalidArgument(
                f"the {_WHAT} {self._path} is full ({len(entries)} keys would be over "
                f"{_MAX_FILE_BYTES} bytes); start a new key file for new keys"
            )
        write_private(self._path, data + b"\n", what=_WHAT, replace=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive lock on the key file's lock file (made, with its directory, if
        need be) for a read-modify-write."""
        directory = self._path.parent
        if directory.exists() and not directory.is_dir():
            raise DataDirectoryError(
                f"{directory} exists and is not a directory; choose another path"
            )
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DataDirectoryError(
                f"cannot create the lock file {self._lock_path} of the {_WHAT}: {exc.strerror}. "
                "Check that its directory is writable by this user."
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close, even if the process dies
            yield
        finally:
            os.close(fd)


def _parse(data: bytes, path: Path) -> tuple[_Entry, ...]:
    """The keys stored as ``data`` (read from ``path``), checked."""

    def corrupt(reason: str) -> DataDirectoryError:
        return DataDirectoryError(
            f"the {_WHAT} {path} is corrupt ({reason}); it is refused and nothing was changed. "
            "Restore it from a backup, or move it away and create new keys (the keys it held "
            "stop working)."
        )

    try:
        version = _VERSION_DECODER.decode(data).version
    except DECODE_ERRORS as exc:
        raise corrupt(str(exc)) from None
    if version != _FILE_FORMAT_VERSION:
        raise DataDirectoryError(
            f"the {_WHAT} {path} has format version {version}; this aion reads version "
            f"{_FILE_FORMAT_VERSION}. Was it written by a newer aion? Upgrade aion."
        )
    try:
        stored = _FILE_DECODER.decode(data)
    except DECODE_ERRORS as exc:
        raise corrupt(str(exc)) from None
    seen: set[str] = set()
    for e in stored.keys:
        shown = _validate.shown(e.key_id)
        if not _KEY_ID.fullmatch(e.key_id):
            raise corrupt(f"key id {shown} is not {_KEY_ID_HEX} lowercase hex digits")
        if e.key_id in seen:
            raise corrupt(f"key id {shown} appears twice")
        seen.add(e.key_id)
        if not _SHA256_HEX.fullmatch(e.sha256):
            raise corrupt(f"key {shown}: sha256 is not 64 lowercase hex digits")
        try:
            _rank(e.role, "role")
            if e.tenant is not None:
                _validate.identifier(e.tenant, "tenant")
            _label(e.label)
        except InvalidArgument as exc:
            raise corrupt(f"key {shown}: {exc}") from None
    return tuple(stored.keys)


def _label(label: object) -> str:
    label = _validate.text(label, "label", limit=_MAX_LABEL_BYTES)
    if not label:
        raise InvalidArgument("label must not be empty: leave it out to use the key id")
    for c in label:
        if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0:
            raise InvalidArgument(
                f"label {_validate.shown(label)} contains a control character "
                f"(U+{ord(c):04X}); use printable text"
            )
    return label


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    try:
        return _validate.aware_datetime(now, "now").astimezone(UTC)
    except OverflowError:
        raise InvalidArgument(f"now {now.isoformat()} is out of range in UTC") from None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def _described(entry: _Entry) -> ApiKey:
    return ApiKey(
        key_id=entry.key_id,
        role=entry.role,
        tenant=entry.tenant,
        label=entry.label,
        created_at=entry.created_at.astimezone(UTC),
        revoked_at=None if entry.revoked_at is None else entry.revoked_at.astimezone(UTC),
    )
