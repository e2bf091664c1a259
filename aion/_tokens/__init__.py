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

The modules: ``_format`` (the token text, claims, fingerprints), ``_ring`` (keys, the ring,
signing and verifying), ``_keyfile`` (the ring's file).
"""

from __future__ import annotations

from ._format import MAX_TOKEN_LENGTH as MAX_TOKEN_LENGTH
from ._format import TokenClaims as TokenClaims
from ._format import fingerprint as fingerprint
from ._format import peek_claims as peek_claims
from ._keyfile import KEY_FILE_NAME as KEY_FILE_NAME
from ._keyfile import load_or_create as load_or_create
from ._keyfile import rotate_file as rotate_file
from ._keyfile import save as save
from ._ring import DEFAULT_GRACE as DEFAULT_GRACE
from ._ring import MIN_SECRET_BYTES as MIN_SECRET_BYTES
from ._ring import KeyRing as KeyRing
from ._ring import SigningKey as SigningKey

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
