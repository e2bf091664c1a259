"""Waitpoint tokens and their key ring: format, forgery resistance, rotation, the key file."""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aion._tokens import (
    DEFAULT_GRACE,
    KEY_FILE_NAME,
    MAX_TOKEN_LENGTH,
    KeyRing,
    SigningKey,
    TokenClaims,
    fingerprint,
    load_or_create,
    peek_claims,
    rotate_file,
    save,
)
from aion.errors import DataDirectoryError, InvalidArgument, InvalidToken

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
TOKEN_PATTERN = re.compile(r"v1\.[A-Za-z0-9_-]{1,32}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}")

ids = st.text(max_size=40)
times = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def ring() -> KeyRing:
    return KeyRing.from_secret(SECRET, "k1", created_at=T0)


def token(r: KeyRing | None = None, *, expires_at: datetime | None = None) -> str:
    return (r or ring()).sign("acme", "order-7", "payment", T0, expires_at)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rejection(r: KeyRing, tok: str, now: datetime = T0) -> str:
    with pytest.raises(InvalidToken) as info:
        r.verify(tok, now=now)
    message = str(info.value)
    if len(tok) > 20:  # a short text may well coincide with a part of the message
        assert tok not in message
    signature = tok.rsplit(".", 1)[-1]
    if len(signature) >= 8:  # a short tail is too generic to be absent by chance
        assert signature not in message
    return message


# --- format ----------------------------------------------------------------------------------


def test_token_layout_matches_the_documented_format() -> None:
    expires = T0 + timedelta(hours=1)
    tok = ring().sign("acme", "order-7", "payment", T0, expires)
    assert TOKEN_PATTERN.fullmatch(tok)
    version, kid, payload_text, signature_text = tok.split(".")
    assert (version, kid) == ("v1", "k1")
    payload = unb64(payload_text)
    t0_us = int(T0.timestamp()) * 1_000_000
    assert msgspec.msgpack.decode(payload) == [
        "acme",
        "order-7",
        "payment",
        t0_us,
        t0_us + 3_600_000_000,
    ]
    message = b"aion-waitpoint-v1\x00" + b"k1" + b"." + payload
    assert unb64(signature_text) == hmac.new(SECRET, message, hashlib.sha256).digest()
    assert "=" not in tok


def test_golden_token() -> None:
    # Pins the v1 wire format: a change here breaks every token already handed out.
    assert token() == (
        "v1.k1.laRhY21lp29yZGVyLTencGF5bWVudM8ABi9GqZswAMA."
        "HHqDRTtuiml6oF4ih4i-BX4q519X5O40MLxeUKQLFAQ"
    )


@given(tenant=ids, workflow_id=ids, waitpoint_id=ids, a=times, b=st.none() | times)
def test_round_trip(
    tenant: str, workflow_id: str, waitpoint_id: str, a: datetime, b: datetime | None
) -> None:
    created, expires = (a, b) if b is None else (min(a, b), max(a, b))
    tok = ring().sign(tenant, workflow_id, waitpoint_id, created, expires)
    assert TOKEN_PATTERN.fullmatch(tok)
    if expires == created:  # valid for no time at all
        rejection(ring(), tok, now=created)
        return
    claims = ring().verify(tok, now=created)
    assert claims == TokenClaims(tenant, workflow_id, waitpoint_id, created, expires, "k1")


def test_round_trip_of_ids_with_dots_slashes_and_unicode() -> None:
    tok = ring().sign("t.e/n", "wf.1/ü", "wp..€/", T0)
    claims = ring().verify(tok, now=T0 + timedelta(days=3650))
    assert (claims.tenant, claims.workflow_id, claims.waitpoint_id) == ("t.e/n", "wf.1/ü", "wp..€/")
    assert claims.expires_at is None


def test_times_are_normalised_to_utc_microseconds() -> None:
    local = datetime(2025, 3, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    claims = ring().verify(ring().sign("t", "w", "p", local), now=T0)
    assert claims.created_at == local
    assert claims.created_at.tzinfo is UTC
    assert claims.created_at.microsecond == 123456


def test_signing_is_deterministic_and_any_key_of_the_ring_can_sign_again() -> None:
    r = ring()
    first = r.sign("acme", "order-7", "payment", T0)
    assert r.sign("acme", "order-7", "payment", T0) == first
    new = r.rotate(now=T0)
    assert r.sign("acme", "order-7", "payment", T0, kid="k1") == first  # as on replay
    assert r.sign("acme", "order-7", "payment", T0).split(".")[1] == new.kid
    assert r.sign("acme", "order-7", "payment", T0, kid=new.kid).split(".")[1] == new.kid
    with pytest.raises(InvalidArgument, match="no key 'nope'"):
        r.sign("acme", "order-7", "payment", T0, kid="nope")


def test_peek_claims_reads_without_verifying() -> None:
    expires = T0 + timedelta(hours=1)
    forged = KeyRing.from_secret(OTHER_SECRET, "zz").sign("acme", "order-7", "payment", T0, expires)
    assert peek_claims(forged) == TokenClaims("acme", "order-7", "payment", T0, expires, "zz")
    version, kid, payload, _ = forged.split(".")
    assert peek_claims(f"{version}.{kid}.{payload}.") is not None
    for junk in ("", "v1.k1", "v2.k1.AA.AA", "v1.k1.AB.AA", "v1.k1.AAAA.AA", "v1.k1.ü.AA"):
        assert peek_claims(junk) is None
    assert peek_claims(b"v1.k1.AA.AA") is None  # type: ignore[arg-type]
    # A payload holding a string that is not UTF-8 (msgspec raises UnicodeDecodeError for it).
    not_utf8 = base64.urlsafe_b64encode(b"\x95\xa2\xc3\x28").decode().rstrip("=")
    assert peek_claims(f"v1.k1.{not_utf8}.AA") is None


@given(text=st.text(max_size=120))
def test_peek_claims_never_raises(text: str) -> None:
    peek_claims(text)
    peek_claims(token()[: len(text)] + text)


# --- forgery and tampering -------------------------------------------------------------------


@given(data=st.data())
def test_any_single_character_change_is_rejected(data: st.DataObject) -> None:
    tok = token()
    index = data.draw(st.integers(0, len(tok) - 1))
    char = data.draw(st.characters(codec="utf-8"))
    assume(char != tok[index])
    rejection(ring(), tok[:index] + char + tok[index + 1 :])


@given(data=st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    raw = bytearray(token().encode())
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    text = raw.decode("utf-8", "replace")
    rejection(ring(), text)


@given(length=st.integers(0, 200))
def test_truncation_is_rejected(length: int) -> None:
    tok = token()
    assume(length < len(tok))
    rejection(ring(), tok[:length])


@given(tail=st.text(min_size=1, max_size=20))
def test_extension_is_rejected(tail: str) -> None:
    rejection(ring(), token() + tail)


@given(first=st.tuples(ids, ids, ids), second=st.tuples(ids, ids, ids))
def test_swapping_payloads_between_tokens_is_rejected(
    first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    assume(first != second)
    a = ring().sign(*first, T0).split(".")
    b = ring().sign(*second, T0).split(".")
    rejection(ring(), ".".join([a[0], a[1], b[2], a[3]]))
    rejection(ring(), ".".join([b[0], b[1], a[2], b[3]]))


def test_a_token_signed_with_another_rings_key_of_the_same_kid_is_rejected() -> None:
    forged = KeyRing.from_secret(OTHER_SECRET, "k1").sign("acme", "order-7", "payment", T0)
    assert "bad signature" in rejection(ring(), forged)


def test_a_token_signed_by_another_deployment_names_an_unknown_key() -> None:
    other = KeyRing.generate(T0).sign("acme", "order-7", "payment", T0)
    message = rejection(ring(), other)
    assert "unknown key id" in message


def test_relabelling_the_kid_to_another_known_key_is_rejected() -> None:
    r = ring()
    old = r.sign("acme", "order-7", "payment", T0)
    new_kid = r.rotate(now=T0).kid
    relabelled = old.replace("v1.k1.", f"v1.{new_kid}.", 1)
    assert "bad signature" in rejection(r, relabelled)
    fresh = r.sign("acme", "order-7", "payment", T0)
    assert "bad signature" in rejection(r, fresh.replace(f"v1.{new_kid}.", "v1.k1.", 1))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "four parts"),
        ("garbage", "four parts"),
        ("v1.k1.payload", "four parts"),
        ("v1.k1.a.b.c", "four parts"),
        ("v2.k1.AA.AA", "'v1.'"),
        ("v1..AA.AA", "key id"),
        ("v1.k 1.AA.AA", "key id"),
        ("v1." + "k" * 33 + ".AA.AA", "key id"),
        ("v1.k1.A.AA", "base64url"),
        ("v1.k1.AA==.AA", "base64url"),
        ("v1.k1.AB.AA", "base64url"),  # non-zero unused bits: not the canonical spelling
        ("v1.k1.AA.AA", "base64url"),  # a signature of the wrong length
        ("v1.k1.AA." + "A" * 5000, "longer than"),
    ],
)
def test_malformed_tokens_say_what_is_wrong(text: str, reason: str) -> None:
    message = rejection(ring(), text)
    assert "malformed" in message
    assert reason in message


def test_a_non_text_token_is_rejected() -> None:
    with pytest.raises(InvalidToken, match="text"):
        ring().verify(token().encode(), now=T0)  # type: ignore[arg-type]


def test_rejections_name_the_fingerprint_and_never_the_token() -> None:
    tok = token(expires_at=T0 + timedelta(minutes=5))
    message = rejection(ring(), tok, now=T0 + timedelta(hours=1))
    assert fingerprint(tok) in message
    assert tok.split(".")[2] not in message  # nor the claims


# --- expiry and key rotation -----------------------------------------------------------------


def test_a_token_expires_at_its_expiry_time() -> None:
    expires = T0 + timedelta(minutes=5)
    tok = token(expires_at=expires)
    assert ring().verify(tok, now=expires - timedelta(microseconds=1)).expires_at == expires
    message = rejection(ring(), tok, now=expires)
    assert "expired token" in message
    assert expires.isoformat() in message


def test_a_retired_key_verifies_during_its_grace_period_only() -> None:
    r = ring()
    old = r.sign("acme", "order-7", "payment", T0)
    retired_at = T0 + timedelta(days=1)
    new = r.rotate(now=retired_at, grace=timedelta(hours=2))
    assert r.current == new
    assert r.grace == timedelta(hours=2)
    assert (
        r.verify(old, now=retired_at + timedelta(hours=2) - timedelta(microseconds=1)).kid == "k1"
    )
    message = rejection(r, old, now=retired_at + timedelta(hours=2))
    assert "signed with key 'k1' retired at 2025-03-02T12:00:00+00:00" in message
    assert "grace period ended at 2025-03-02T14:00:00+00:00" in message
    assert r.verify(r.sign("acme", "order-7", "payment", T0), now=T0 + timedelta(days=99))


def test_prune_drops_keys_past_their_grace_and_their_tokens_become_unknown() -> None:
    r = ring()
    old = r.sign("acme", "order-7", "payment", T0)
    r.rotate(now=T0, grace=timedelta(hours=1))
    assert r.prune(T0 + timedelta(minutes=59)) == ()
    assert [k.kid for k in r.retired] == ["k1"]
    (dropped,) = r.prune(T0 + timedelta(hours=1))
    assert dropped.kid == "k1"
    assert r.retired == ()
    assert "unknown key id 'k1'" in rejection(r, old)


def test_an_endless_grace_does_not_overflow() -> None:
    r = ring()
    old = r.sign("acme", "order-7", "payment", T0)
    r.rotate(now=T0, grace=timedelta.max)
    assert r.verify(old, now=datetime(9999, 1, 1, tzinfo=UTC)).kid == "k1"
    assert r.prune(datetime(9999, 1, 1, tzinfo=UTC)) == ()


def test_rotate_keeps_the_grace_unless_told_and_makes_distinct_random_keys() -> None:
    r = KeyRing.generate(T0, grace=timedelta(hours=3))
    first = r.current
    second = r.rotate(now=T0 + timedelta(seconds=1))
    third = r.rotate(now=T0 + timedelta(seconds=2))
    assert r.grace == timedelta(hours=3)
    assert len({first.kid, second.kid, third.kid}) == 3
    assert len({first.secret, second.secret, third.secret}) == 3
    assert [k.kid for k in r.retired] == [first.kid, second.kid]
    assert [k.retired_at for k in r.retired] == [
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=2),
    ]
    assert r.keys == (third, *r.retired)


def test_generate_makes_a_random_32_byte_key() -> None:
    a, b = KeyRing.generate(T0), KeyRing.generate(T0)
    assert re.fullmatch(r"[0-9a-f]{8}", a.current.kid)
    assert len(a.current.secret) == 32
    assert a.current.secret != b.current.secret
    assert a.current.created_at == T0
    assert a.grace == DEFAULT_GRACE


def test_fingerprint_is_short_stable_and_one_way() -> None:
    tok = token()
    assert fingerprint(tok) == fingerprint(tok) == hashlib.sha256(tok.encode()).hexdigest()[:16]
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(tok))
    assert fingerprint(tok) != fingerprint(token(expires_at=T0))


# --- argument checking -----------------------------------------------------------------------


def test_short_secrets_and_bad_kids_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="at least 32"):
        KeyRing.from_secret(b"x" * 31)
    with pytest.raises(InvalidArgument, match="must be bytes"):
        KeyRing.from_secret("x" * 40)  # type: ignore[arg-type]
    for kid in ("", "a.b", "k/1", "k" * 33, "ü"):
        with pytest.raises(InvalidArgument, match="key id"):
            KeyRing.from_secret(SECRET, kid)


def test_the_secret_stays_out_of_repr() -> None:
    r = ring()
    assert SECRET.hex() not in repr(r.current)
    assert repr(SECRET) not in repr(r.current)
    assert repr(SECRET) not in repr(r)
    assert "k1" in repr(r)


def test_naive_times_are_refused() -> None:
    naive = datetime(2025, 1, 1)
    with pytest.raises(InvalidArgument, match="naive"):
        ring().sign("t", "w", "p", naive)
    with pytest.raises(InvalidArgument, match="naive"):
        ring().sign("t", "w", "p", T0, naive)
    with pytest.raises(InvalidArgument, match="naive"):
        ring().verify(token(), now=naive)
    with pytest.raises(InvalidArgument, match="naive"):
        ring().rotate(now=naive)
    with pytest.raises(InvalidArgument, match="naive"):
        KeyRing.generate(naive)


def test_bad_sign_arguments_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="before created_at"):
        ring().sign("t", "w", "p", T0, T0 - timedelta(microseconds=1))
    with pytest.raises(InvalidArgument, match="must be a str"):
        ring().sign("t", 7, "p", T0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="cannot be encoded"):
        ring().sign("t", "\ud800", "p", T0)
    with pytest.raises(InvalidArgument, match=str(MAX_TOKEN_LENGTH)):
        ring().sign("t", "w" * MAX_TOKEN_LENGTH, "p", T0)
    with pytest.raises(InvalidArgument, match="negative"):
        ring().rotate(now=T0, grace=timedelta(seconds=-1))


def test_inconsistent_rings_are_refused() -> None:
    current = SigningKey("a", SECRET, T0)
    retired = SigningKey("b", SECRET, T0, retired_at=T0)
    with pytest.raises(InvalidArgument, match="retired_at"):
        KeyRing(retired)
    with pytest.raises(InvalidArgument, match="no retired_at"):
        KeyRing(current, [SigningKey("b", SECRET, T0)])
    with pytest.raises(InvalidArgument, match="unique"):
        KeyRing(current, [SigningKey("a", SECRET, T0, retired_at=T0)])
    assert KeyRing(current, [retired]).keys == (current, retired)


# --- the key file ----------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_key_file_is_created_0600_and_reused(tmp_path: Path, umask_022: None) -> None:
    first = load_or_create(tmp_path, now=T0)
    path = tmp_path / KEY_FILE_NAME
    assert mode_of(path) == 0o600
    stored = json.loads(path.read_text())
    assert stored["version"] == 1
    assert stored["grace_seconds"] == DEFAULT_GRACE.total_seconds()
    (entry,) = stored["keys"]
    assert entry["kid"] == first.current.kid
    assert base64.b64decode(entry["secret"]) == first.current.secret
    assert datetime.fromisoformat(entry["created_at"]) == T0
    assert entry["retired_at"] is None
    again = load_or_create(tmp_path, now=T0 + timedelta(days=1), require_existing=True)
    assert again.keys == first.keys
    assert again.verify(first.sign("t", "w", "p", T0), now=T0).kid == first.current.kid
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]  # no temp files left


def test_the_key_file_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create(tmp_path / "new" / "dir", now=T0)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "new" / "dir" / KEY_FILE_NAME) == 0o600
    assert mode_of(tmp_path / "new" / "dir") == 0o700


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700])
def test_a_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create(tmp_path, now=T0)
    path = tmp_path / KEY_FILE_NAME
    before = path.read_bytes()
    path.chmod(mode)
    with pytest.raises(DataDirectoryError, match=f"{mode:04o}") as info:
        load_or_create(tmp_path, now=T0)
    assert f"chmod 600 {path}" in str(info.value)
    assert path.read_bytes() == before
    path.chmod(0o600)
    assert load_or_create(tmp_path, now=T0)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "corrupt"),
        (b"\x00\xffnot json", "corrupt"),
        (b'{"version": 1, "grace_seconds": 60, "keys": [{"kid": "\xc3\x28"}]}', "corrupt"),
        (b"{}", "corrupt"),
        (b'{"version": 1, "grace_seconds": 60, "keys": []}', "exactly one must be current"),
        (b'{"version": 1, "grace_seconds": -1, "keys": [KEY]}', "negative"),
        (b'{"version": 1, "grace_seconds": 60, "keys": [KEY, RETIRED]}', "unique"),
        (b'{"version": 1, "grace_seconds": 60, "keys": [SHORT]}', "at least 32"),
        (b'{"version": 1, "grace_seconds": 60, "keys": [NAIVE]}', "naive"),
        (b'{"version": 2, "grace_seconds": 60, "keys": []}', "newer aion"),
    ],
)
def test_a_corrupt_key_file_names_its_path_and_is_left_alone(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    secret = base64.b64encode(SECRET)
    key = b'{"kid": "k1", "secret": "%s", "created_at": "2025-01-01T00:00:00Z"}' % secret
    short = key.replace(secret, base64.b64encode(b"short"))
    naive = key.replace(b"00:00Z", b"00:00")
    retired = key.replace(b"}", b', "retired_at": "2025-01-02T00:00:00Z"}')
    content = (
        content.replace(b"RETIRED", retired)
        .replace(b"SHORT", short)
        .replace(b"NAIVE", naive)
        .replace(b"KEY", key)
    )
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(DataDirectoryError, match=reason) as info:
        load_or_create(tmp_path, now=T0)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_a_directory_in_place_of_the_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).mkdir(mode=0o700)
    with pytest.raises(DataDirectoryError, match="not a regular file"):
        load_or_create(tmp_path, now=T0)


def test_a_file_in_place_of_the_data_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(DataDirectoryError, match="not a directory"):
        load_or_create(tmp_path / "data", now=T0)


def test_require_existing_without_a_key_file_says_how_to_provide_one(tmp_path: Path) -> None:
    with pytest.raises(DataDirectoryError) as info:
        load_or_create(tmp_path, now=T0, require_existing=True)
    message = str(info.value)
    assert "require an existing waitpoint key" in message
    assert str(tmp_path / KEY_FILE_NAME) in message
    assert "KeyRing.from_secret" in message
    assert list(tmp_path.iterdir()) == []


def test_a_ring_created_concurrently_by_another_process_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = ring()
    generate = KeyRing.generate

    def generate_while_another_process_saves(now: datetime) -> KeyRing:
        save(theirs, tmp_path)
        return generate(now)

    monkeypatch.setattr(KeyRing, "generate", generate_while_another_process_saves)
    assert load_or_create(tmp_path, now=T0).keys == theirs.keys
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]


def test_save_replaces_the_file_atomically_with_0600(tmp_path: Path) -> None:
    r = load_or_create(tmp_path, now=T0)
    r.rotate(now=T0, grace=timedelta(minutes=90))
    save(r, tmp_path)
    assert mode_of(tmp_path / KEY_FILE_NAME) == 0o600
    again = load_or_create(tmp_path, now=T0)
    assert again.keys == r.keys
    assert again.grace == timedelta(minutes=90)
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]
    with pytest.raises(DataDirectoryError, match="not a directory"):
        save(r, tmp_path / "missing")


def test_fractional_grace_survives_the_file(tmp_path: Path) -> None:
    save(KeyRing.from_secret(SECRET, grace=timedelta(seconds=1.5)), tmp_path)
    assert load_or_create(tmp_path, now=T0).grace == timedelta(seconds=1.5)


def test_rotate_file_persists_the_new_current_key(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, now=T0)
    old = first.sign("t", "w", "p", T0)
    later = T0 + timedelta(days=30)
    new = rotate_file(tmp_path, now=later, grace=timedelta(days=1))
    reloaded = load_or_create(tmp_path, now=later)
    assert reloaded.current == new
    assert [k.kid for k in reloaded.keys] == [new.kid, first.current.kid]
    assert reloaded.retired[0].retired_at == later
    assert reloaded.grace == timedelta(days=1)
    assert reloaded.verify(old, now=later).kid == first.current.kid
    assert mode_of(tmp_path / KEY_FILE_NAME) == 0o600
    # The next rotation past the grace prunes the first key for good.
    newest = rotate_file(tmp_path, now=later + timedelta(days=2))
    assert [k.kid for k in load_or_create(tmp_path, now=later).keys] == [newest.kid, new.kid]


def test_rotate_file_needs_an_existing_ring(tmp_path: Path) -> None:
    with pytest.raises(DataDirectoryError, match="no key ring to rotate"):
        rotate_file(tmp_path, now=T0, grace=timedelta(days=1))
    assert list(tmp_path.iterdir()) == []


def test_creation_without_hard_links_falls_back_to_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    created = load_or_create(tmp_path, now=T0)
    assert mode_of(tmp_path / KEY_FILE_NAME) == 0o600
    assert load_or_create(tmp_path, now=T0).keys == created.keys
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = load_or_create(tmp_path, now=T0)
    content = (tmp_path / KEY_FILE_NAME).read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    before.rotate(now=T0)
    with pytest.raises(DataDirectoryError, match="No space left") as info:
        save(before, tmp_path)
    assert str(tmp_path / KEY_FILE_NAME) in str(info.value)
    assert (tmp_path / KEY_FILE_NAME).read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]
