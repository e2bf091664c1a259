"""Signed waitpoint tokens and the key ring that signs and verifies them.

A token is opaque, URL-safe text, ``v1.<kid>.<payload>.<signature>``:

- ``kid`` names the signing key (1-32 characters of ``[A-Za-z0-9_-]``);
- ``payload`` is unpadded base64url of the msgpack array
  ``[tenant, workflow_id, waitpoint_id, created_at_us, expires_at_us | nil]`` (times are
  integer microseconds since the Unix epoch, UTC);
- ``signature`` is unpadded base64url of
  ``HMAC-SHA256(secret, b"aion-waitpoint-v1\\x00" + kid + b"." + payload_msgpack_bytes)``.

The MAC therefore covers the key id, tenant, workflow id, waitpoint id, creation and expiry
times. Verification compares in constant time and accepts only the canonical base64 spelling, so
a token has exactly one valid text. Errors never repeat the token: they name its
:func:`fingerprint`, which cannot be turned back into the token.

A :class:`KeyRing` holds the current key, which signs, and retired keys, which still verify for
the ring's grace period after their retirement. The embedded default keeps the ring in
``<data dir>/waitpoint-keys.json``, created on first use with mode 0600 (:func:`load_or_create`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import msgspec

from aion._codec import DECODE_ERRORS
from aion.errors import DataDirectoryError, InvalidArgument, InvalidToken

__all__ = [
    "DEFAULT_GRACE",
    "KEY_FILE_NAME",
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_BYTES",
    "KeyRing",
    "SigningKey",
    "TokenClaims",
    "fingerprint",
    "load_or_create",
    "peek_claims",
    "rotate_file",
    "save",
]

#: Name of the key ring file inside the data directory.
KEY_FILE_NAME = "waitpoint-keys.json"
#: How long a retired key keeps verifying tokens, unless the ring says otherwise.
DEFAULT_GRACE = timedelta(days=7)
#: Secrets shorter than this are refused: HMAC-SHA256 wants at least its output size.
MIN_SECRET_BYTES = 32
#: Longer texts are rejected before any parsing; ``sign`` refuses to make longer tokens.
MAX_TOKEN_LENGTH = 4096

_VERSION = "v1"
_MAC_DOMAIN = b"aion-waitpoint-v1\x00"
_SIGNATURE_BYTES = hashlib.sha256().digest_size
_KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64URL_PATTERN = re.compile(r"[A-Za-z0-9_-]*")
_FILE_FORMAT_VERSION = 1
_MAX_KEY_FILE_BYTES = 1 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


# --- claims and keys -----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class SigningKey:
    """One HMAC key of a :class:`KeyRing`. The secret is left out of ``repr``.

    Attributes:
        kid: the key id written into every token it signs: 1-32 characters of ``[A-Za-z0-9_-]``.
        secret: at least :data:`MIN_SECRET_BYTES` bytes, ideally random.
        created_at: when the key was made (aware); informational.
        retired_at: when it stopped signing (aware), or ``None`` while it is the current key.

    Raises:
        InvalidArgument: a malformed kid, a short or non-bytes secret, or a naive datetime.
    """

    kid: str
    secret: bytes = dataclasses.field(repr=False)
    created_at: datetime
    retired_at: datetime | None = None

    def __post_init__(self) -> None:
        _check_kid(self.kid)
        if not isinstance(self.secret, bytes):
            raise InvalidArgument(
                f"the secret of key {self.kid!r} must be bytes, not {type(self.secret).__name__}"
            )
        if len(self.secret) < MIN_SECRET_BYTES:
            raise InvalidArgument(
                f"the secret of key {self.kid!r} is {len(self.secret)} bytes; at least "
                f"{MIN_SECRET_BYTES} are required. Generate one with secrets.token_bytes(32)."
            )
        object.__setattr__(self, "created_at", _utc(self.created_at, "created_at"))
        if self.retired_at is not None:
            object.__setattr__(self, "retired_at", _utc(self.retired_at, "retired_at"))

    @classmethod
    def generate(cls, now: datetime) -> SigningKey:
        """A new key with a random 32-byte secret and a random 8-hex-digit kid.

        Raises:
            InvalidArgument: ``now`` is naive.
        """
        return cls(secrets.token_hex(4), secrets.token_bytes(32), now)


# --- the key ring --------------------------------------------------------------------------------


class KeyRing:
    """The current signing key plus retired keys that still verify during a grace period.

    ``rotate`` and ``prune`` change the ring in place; ``sign`` and ``verify`` may run
    concurrently with them from other threads.

    Args:
        current: the key that signs new tokens (its ``retired_at`` must be ``None``).
        retired: keys that only verify (each with a ``retired_at``).
        grace: how long after its retirement a key keeps verifying tokens.

    Raises:
        InvalidArgument: the current key is retired, a retired key is not, two keys share a kid,
            or ``grace`` is negative.
    """

    def __init__(
        self,
        current: SigningKey,
        retired: Iterable[SigningKey] = (),
        *,
        grace: timedelta = DEFAULT_GRACE,
    ) -> None:
        retired = tuple(retired)
        if current.retired_at is not None:
            raise InvalidArgument(f"the current key {current.kid!r} has a retired_at; it must not")
        keys: dict[str, SigningKey] = {current.kid: current}
        for key in retired:
            if key.retired_at is None:
                raise InvalidArgument(f"retired key {key.kid!r} has no retired_at")
            if key.kid in keys:
                raise InvalidArgument(f"two keys share the kid {key.kid!r}; kids must be unique")
            keys[key.kid] = key
        self._grace = _check_grace(grace)
        # Replaced whole, never mutated: a concurrent verify sees the old or the new ring.
        self._keys = keys
        self._current = current

    def __repr__(self) -> str:
        retired = ", ".join(repr(k.kid) for k in self.retired)
        return f"KeyRing(current={self._current.kid!r}, retired=[{retired}], grace={self._grace})"

    # construction

    @classmethod
    def generate(cls, now: datetime, *, grace: timedelta = DEFAULT_GRACE) -> KeyRing:
        """A fresh ring holding one random key (32 random bytes, random kid) made at ``now``.

        Raises:
            InvalidArgument: ``now`` is naive or ``grace`` is negative.
        """
        return cls(SigningKey.generate(now), grace=grace)

    @classmethod
    def from_secret(
        cls,
        secret: bytes,
        kid: str = "k1",
        *,
        created_at: datetime = _EPOCH,
        grace: timedelta = DEFAULT_GRACE,
    ) -> KeyRing:
        """A ring of one key you provide (for example decoded from an environment variable).

        ``created_at`` is informational only; it defaults to the Unix epoch ("unknown").

        Raises:
            InvalidArgument: the secret is shorter than :data:`MIN_SECRET_BYTES` or not bytes,
                the kid is malformed, ``created_at`` is naive or ``grace`` negative.
        """
        return cls(SigningKey(kid, secret, created_at), grace=grace)

    # inspection

    @property
    def current(self) -> SigningKey:
        """The key that signs new tokens."""
        return self._current

    @property
    def retired(self) -> tuple[SigningKey, ...]:
        """The retired keys, oldest retirement first."""
        found = [k for k in self._keys.values() if k.retired_at is not None]
        return tuple(sorted(found, key=lambda k: (k.retired_at, k.kid)))

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every key: the current one first, then the retired ones."""
        return (self._current, *self.retired)

    @property
    def grace(self) -> timedelta:
        """How long after its retirement a key keeps verifying tokens."""
        return self._grace

    # signing and verifying

    def sign(
        self,
        tenant: str,
        workflow_id: str,
        waitpoint_id: str,
        created_at: datetime,
        expires_at: datetime | None = None,
        *,
        kid: str | None = None,
    ) -> str:
        """A token for this waitpoint, signed with the current key or the key ``kid``.

        Signing is deterministic: the same arguments and key give the same token, so replay can
        hand out again the token it handed out first, by passing the ``kid`` that signed it (a
        retired key signs too; its tokens stop verifying when its grace period ends). Times are
        kept to the microsecond. The ids are not checked beyond being text: the engine validates
        them where it stores them.

        Raises:
            InvalidArgument: an id is not a ``str`` (or cannot be encoded as UTF-8), a datetime is
                naive, ``expires_at`` is before ``created_at``, ``kid`` is not in the ring, or the
                token would be longer than :data:`MAX_TOKEN_LENGTH`.
        """
        for what, value in (
            ("tenant", tenant),
            ("workflow_id", workflow_id),
            ("waitpoint_id", waitpoint_id),
        ):
            if not isinstance(value, str):
                raise InvalidArgument(f"{what} must be a str, not {type(value).__name__}")
        created_us = _to_us(_utc(created_at, "created_at"))
        expires_us = None
        if expires_at is not None:
            expires_us = _to_us(_utc(expires_at, "expires_at"))
            if expires_us < created_us:
                raise InvalidArgument(
                    f"expires_at {expires_at.isoformat()} is before created_at "
                    f"{created_at.isoformat()}"
                )
        try:
            payload = _PAYLOAD_ENCODER.encode(
                _Payload(tenant, workflow_id, waitpoint_id, created_us, expires_us)
            )
        except (msgspec.EncodeError, UnicodeEncodeError) as exc:
            raise InvalidArgument(f"the waitpoint ids cannot be encoded: {exc}") from exc
        if kid is None:
            key = self._current
        else:
            found = self._keys.get(kid)
            if found is None:
                raise InvalidArgument(f"there is no key {kid!r} in this key ring to sign with")
            key = found
        token = ".".join((_VERSION, key.kid, _b64encode(payload), _b64encode(_mac(key, payload))))
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidArgument(
                f"the token would be {len(token)} characters, over the limit of "
                f"{MAX_TOKEN_LENGTH}; use shorter tenant, workflow and waitpoint ids"
            )
        return token

    def verify(self, token: str, *, now: datetime) -> TokenClaims:
        """Check a token's form, key, signature, key retirement and expiry; return its claims.

        The token is valid while ``now`` is before its ``expires_at`` and, if its key was
        retired, before the key's ``retired_at`` plus the ring's grace.

        Raises:
            InvalidToken: the token is malformed, names an unknown key id, has a bad signature,
                has expired, or was signed with a key retired past its grace period. The message
                says which, and names the token by :func:`fingerprint` only.
            InvalidArgument: ``now`` is naive.
        """
        now = _utc(now, "now")
        if not isinstance(token, str):
            raise InvalidToken(f"a waitpoint token is text, not {type(token).__name__}")
        if len(token) > MAX_TOKEN_LENGTH:
            _reject(token, f"malformed: longer than {MAX_TOKEN_LENGTH} characters")
        parts = token.split(".")
        if len(parts) != 4:
            _reject(token, "malformed: expected four parts, v1.<kid>.<payload>.<signature>")
        version, kid, payload_text, signature_text = parts
        if version != _VERSION:
            _reject(token, "malformed: it does not start with 'v1.', the only known version")
        if not _KID_PATTERN.fullmatch(kid):
            _reject(token, "malformed: the key id is not 1-32 characters of [A-Za-z0-9_-]")
        key = self._keys.get(kid)
        if key is None:
            _reject(
                token,
                f"signed with unknown key id {kid!r}: this key ring never had it, or dropped it "
                "after its grace period. Was the token issued by another deployment?",
            )
        payload = _b64decode(payload_text)
        signature = _b64decode(signature_text)
        if payload is None or signature is None or len(signature) != _SIGNATURE_BYTES:
            _reject(token, "malformed: the payload or signature is not canonical base64url")
        if not hmac.compare_digest(_mac(key, payload), signature):
            _reject(token, f"bad signature for key {kid!r}: the token was altered or forged")
        try:
            claims = _PAYLOAD_DECODER.decode(payload)
            created_at = _from_us(claims.created_at)
            expires_at = None if claims.expires_at is None else _from_us(claims.expires_at)
        except (*DECODE_ERRORS, OverflowError) as exc:  # only if our own key signed junk
            _reject(token, f"malformed: the signed payload cannot be decoded ({exc})")
        # Compare the difference: retired_at + grace overflows for a grace of timedelta.max.
        if key.retired_at is not None and now - key.retired_at >= self._grace:
            _reject(
                token,
                f"signed with key {kid!r} retired at {key.retired_at.isoformat()} whose grace "
                f"period ended at {(key.retired_at + self._grace).isoformat()}. Create a new "
                "waitpoint to get a token signed with the current key.",
            )
        if expires_at is not None and now >= expires_at:
            _reject(token, f"expired token: it expired at {expires_at.isoformat()}")
        return TokenClaims(
            claims.tenant, claims.workflow_id, claims.waitpoint_id, created_at, expires_at, kid
        )

    # rotation

    def rotate(self, *, now: datetime, grace: timedelta | None = None) -> SigningKey:
        """Make a new random current key; the old current key becomes retired at ``now``.

        Tokens signed with the old key keep verifying until ``now + grace``. ``grace``, when
        given, becomes the ring's grace for every retired key; ``None`` keeps the ring's.
        Returns the new current key.

        Raises:
            InvalidArgument: ``now`` is naive or ``grace`` negative.
        """
        now = _utc(now, "now")
        new_grace = self._grace if grace is None else _check_grace(grace)
        new = SigningKey.generate(now)
        while new.kid in self._keys:  # 2**32 kids: a collision is rare, never fatal
            new = SigningKey.generate(now)
        old = dataclasses.replace(self._current, retired_at=now)
        keys = {**self._keys, old.kid: old, new.kid: new}
        self._grace = new_grace
        self._keys = keys
        self._current = new
        return new

    def prune(self, now: datetime) -> tuple[SigningKey, ...]:
        """Drop retired keys whose grace period has ended at ``now``; return the dropped keys.

        Tokens they signed are then reported as signed with an unknown key id.

        Raises:
            InvalidArgument: ``now`` is naive.
        """
        now = _utc(now, "now")
        dropped = tuple(
            k
            for k in self.retired
            if k.retired_at is not None and now - k.retired_at >= self._grace
        )
        if dropped:
            gone = {k.kid for k in dropped}
            self._keys = {kid: k for kid, k in self._keys.items() if kid not in gone}
        return dropped


def peek_claims(token: str) -> TokenClaims | None:
    """The claims a token *says* it has, WITHOUT checking its signature, key or expiry.

    Untrusted: use it only to attribute a failed verification to the waitpoint a token names
    (for example to record the attempt), never to decide anything. ``None`` if the token is not
    well-formed enough to read. Never raises.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION or not _KID_PATTERN.fullmatch(parts[1]):
        return None
    payload = _b64decode(parts[2])
    if payload is None:
        return None
    try:
        claims = _PAYLOAD_DECODER.decode(payload)
        created_at = _from_us(claims.created_at)
        expires_at = None if claims.expires_at is None else _from_us(claims.expires_at)
    except (*DECODE_ERRORS, OverflowError):
        return None
    return TokenClaims(
        claims.tenant, claims.workflow_id, claims.waitpoint_id, created_at, expires_at, parts[1]
    )


def fingerprint(token: str) -> str:
    """A short, stable, one-way name for a token (16 hex digits of its SHA-256).

    Safe to log and to show in lists: it identifies a token without revealing it. Never raises.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# --- persistence ---------------------------------------------------------------------------------


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
    now = _utc(now, "now")
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
    if _write(path, ring, replace=False):
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
    _write(directory / KEY_FILE_NAME, ring, replace=True)


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
    now = _utc(now, "now")
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
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise DataDirectoryError(
            f"{path.parent} exists and is not a directory; choose another path"
        ) from None
    except OSError as exc:
        raise DataDirectoryError(
            f"cannot open the waitpoint key file {path}: {exc.strerror}. Check that this user "
            "owns it and can read it."
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataDirectoryError(
                f"{path} is not a regular file; move it away so a key file can be created there"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~0o600:
            raise DataDirectoryError(
                f"the waitpoint key file {path} has permissions {mode:04o}, but it holds secret "
                f"keys and must be accessible by its owner only. Fix it with: chmod 600 {path}"
            )
        data = _read_all(fd, path)
    finally:
        os.close(fd)
    return _parse(data, path)


def _read_all(fd: int, path: Path) -> bytes:
    try:
        data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        while len(data) <= _MAX_KEY_FILE_BYTES and (chunk := os.read(fd, 65536)):
            data += chunk
    except OSError as exc:
        raise DataDirectoryError(
            f"cannot read the waitpoint key file {path}: {exc.strerror}"
        ) from exc
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise DataDirectoryError(
            f"the waitpoint key file {path} is over {_MAX_KEY_FILE_BYTES} bytes, so it is not a "
            "key file aion wrote; restore it from a backup"
        )
    return data


def _parse(data: bytes, path: Path) -> KeyRing:
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


def _encode_file(ring: KeyRing) -> bytes:
    seconds = ring.grace.total_seconds()
    stored = _KeyFile(
        version=_FILE_FORMAT_VERSION,
        grace_seconds=int(seconds) if seconds.is_integer() else seconds,
        keys=[_KeyEntry(k.kid, k.secret, k.created_at, k.retired_at) for k in ring.keys],
    )
    return msgspec.json.format(msgspec.json.encode(stored), indent=2) + b"\n"


def _write(path: Path, ring: KeyRing, *, replace: bool) -> bool:
    """Write ``ring`` to a 0600 temp file, fsync it, then move it to ``path``.

    With ``replace=False`` an existing file is left alone (hard link, which cannot clobber) and
    the result is ``False``. The file never exists with wider permissions, even for a moment.
    """
    data = _encode_file(ring)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask may have taken the owner's bits, too
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        written = True
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                written = False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # No hard links on this filesystem: fall back to a rename, which cannot refuse
                # to clobber, after a last look.
                if path.exists():
                    written = False
                else:
                    os.replace(temp, path)
        _fsync_directory(path.parent)
        return written
    except OSError as exc:
        raise DataDirectoryError(
            f"cannot write the waitpoint key file {path}: {exc.strerror}. Check that the data "
            "directory is writable by this user and the disk is not full."
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# --- encoding helpers ----------------------------------------------------------------------------


class _Payload(msgspec.Struct, array_like=True, frozen=True):
    # Version 1 of the signed payload: never reorder or retype; a change is a new version.
    tenant: str
    workflow_id: str
    waitpoint_id: str
    created_at: int  # microseconds since the epoch, UTC
    expires_at: int | None


_PAYLOAD_ENCODER = msgspec.msgpack.Encoder()
_PAYLOAD_DECODER = msgspec.msgpack.Decoder(_Payload)


def _mac(key: SigningKey, payload: bytes) -> bytes:
    message = b"".join((_MAC_DOMAIN, key.kid.encode("ascii"), b".", payload))
    return hmac.digest(key.secret, message, "sha256")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Unpadded base64url, canonical spelling only (no padding, no stray bits), else ``None``."""
    if not _B64URL_PATTERN.fullmatch(text) or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Unused low bits of the last character are ignored by the decoder; demand they are zero so
    # that a token has exactly one spelling.
    return data if _b64encode(data) == text else None


def _reject(token: str, reason: str) -> NoReturn:
    raise InvalidToken(f"waitpoint token {fingerprint(token)} is invalid: {reason}")


def _check_kid(kid: str) -> None:
    if not isinstance(kid, str) or not _KID_PATTERN.fullmatch(kid):
        raise InvalidArgument(f"key id {kid!r} must be 1-32 characters of [A-Za-z0-9_-]")


def _check_grace(grace: timedelta) -> timedelta:
    if not isinstance(grace, timedelta):
        raise InvalidArgument(f"grace must be a timedelta, not {type(grace).__name__}")
    if grace < timedelta(0):
        raise InvalidArgument(f"grace must not be negative, got {grace}")
    return grace


def _utc(when: datetime, what: str) -> datetime:
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


def _to_us(when: datetime) -> int:
    return (when - _EPOCH) // _ONE_US


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)
