"""Signing keys and the key ring: the current key signs, retired keys verify for a grace period."""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from aion._codec import DECODE_ERRORS
from aion.errors import InvalidArgument, InvalidToken

from ._format import (
    EPOCH,
    KID_PATTERN,
    MAX_TOKEN_LENGTH,
    PAYLOAD_ENCODER,
    SIGNATURE_BYTES,
    VERSION,
    Payload,
    TokenClaims,
    b64decode,
    b64encode,
    check_kid,
    decode_claims,
    mac,
    reject,
    to_us,
    utc,
)

__all__ = ["DEFAULT_GRACE", "MIN_SECRET_BYTES", "KeyRing", "SigningKey"]

#: How long a retired key keeps verifying tokens, unless the ring says otherwise.
DEFAULT_GRACE = timedelta(days=7)
#: Secrets shorter than this are refused: HMAC-SHA256 wants at least its output size.
MIN_SECRET_BYTES = 32


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
        check_kid(self.kid)
        if not isinstance(self.secret, bytes):
            raise InvalidArgument(
                f"the secret of key {self.kid!r} must be bytes, not {type(self.secret).__name__}"
            )
        if len(self.secret) < MIN_SECRET_BYTES:
            raise InvalidArgument(
                f"the secret of key {self.kid!r} is {len(self.secret)} bytes; at least "
                f"{MIN_SECRET_BYTES} are required. Generate one with secrets.token_bytes(32)."
            )
        object.__setattr__(self, "created_at", utc(self.created_at, "created_at"))
        if self.retired_at is not None:
            object.__setattr__(self, "retired_at", utc(self.retired_at, "retired_at"))

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
        self._grace = check_grace(grace)
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
        created_at: datetime = EPOCH,
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
        created_us = to_us(utc(created_at, "created_at"))
        expires_us = None
        if expires_at is not None:
            expires_us = to_us(utc(expires_at, "expires_at"))
            if expires_us < created_us:
                raise InvalidArgument(
                    f"expires_at {expires_at.isoformat()} is before created_at "
                    f"{created_at.isoformat()}"
                )
        try:
            payload = PAYLOAD_ENCODER.encode(
                Payload(tenant, workflow_id, waitpoint_id, created_us, expires_us)
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
        token = ".".join((VERSION, key.kid, b64encode(payload), b64encode(_mac(key, payload))))
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
        now = utc(now, "now")
        if not isinstance(token, str):
            raise InvalidToken(f"a waitpoint token is text, not {type(token).__name__}")
        if len(token) > MAX_TOKEN_LENGTH:
            reject(token, f"malformed: longer than {MAX_TOKEN_LENGTH} characters")
        parts = token.split(".")
        if len(parts) != 4:
            reject(token, "malformed: expected four parts, v1.<kid>.<payload>.<signature>")
        version, kid, payload_text, signature_text = parts
        if version != VERSION:
            reject(token, "malformed: it does not start with 'v1.', the only known version")
        if not KID_PATTERN.fullmatch(kid):
            reject(token, "malformed: the key id is not 1-32 characters of [A-Za-z0-9_-]")
        key = self._keys.get(kid)
        if key is None:
            reject(
                token,
                f"signed with unknown key id {kid!r}: this key ring never had it, or dropped it "
                "after its grace period. Was the token issued by another deployment?",
            )
        payload = b64decode(payload_text)
        signature = b64decode(signature_text)
        if payload is None or signature is None or len(signature) != SIGNATURE_BYTES:
            reject(token, "malformed: the payload or signature is not canonical base64url")
        if not hmac.compare_digest(_mac(key, payload), signature):
            reject(token, f"bad signature for key {kid!r}: the token was altered or forged")
        try:
            claims = decode_claims(payload, kid)
        except (*DECODE_ERRORS, OverflowError) as exc:  # only if our own key signed junk
            reject(token, f"malformed: the signed payload cannot be decoded ({exc})")
        # Compare the difference: retired_at + grace overflows for a grace of timedelta.max.
        if key.retired_at is not None and now - key.retired_at >= self._grace:
            reject(
                token,
                f"signed with key {kid!r} retired at {key.retired_at.isoformat()} whose grace "
                f"period ended at {(key.retired_at + self._grace).isoformat()}. Create a new "
                "waitpoint to get a token signed with the current key.",
            )
        if claims.expires_at is not None and now >= claims.expires_at:
            reject(token, f"expired token: it expired at {claims.expires_at.isoformat()}")
        return claims

    # rotation

    def rotate(self, *, now: datetime, grace: timedelta | None = None) -> SigningKey:
        """Make a new random current key; the old current key becomes retired at ``now``.

        Tokens signed with the old key keep verifying until ``now + grace``. ``grace``, when
        given, becomes the ring's grace for every retired key; ``None`` keeps the ring's.
        Returns the new current key.

        Raises:
            InvalidArgument: ``now`` is naive or ``grace`` negative.
        """
        now = utc(now, "now")
        new_grace = self._grace if grace is None else check_grace(grace)
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
        now = utc(now, "now")
        dropped = tuple(
            k
            for k in self.retired
            if k.retired_at is not None and now - k.retired_at >= self._grace
        )
        if dropped:
            gone = {k.kid for k in dropped}
            self._keys = {kid: k for kid, k in self._keys.items() if kid not in gone}
        return dropped


def check_grace(grace: timedelta) -> timedelta:
    if not isinstance(grace, timedelta):
        raise InvalidArgument(f"grace must be a timedelta, not {type(grace).__name__}")
    if grace < timedelta(0):
        raise InvalidArgument(f"grace must not be negative, got {grace}")
    return grace


def _mac(key: SigningKey, payload: bytes) -> bytes:
    return mac(key.kid, key.secret, payload)
