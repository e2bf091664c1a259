"""API keys of the HTTP API: the key file, verification, and ``aion api-key``, on real files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aion._apikeys import API_KEY_FILE_NAME, ROLES, ApiKey, ApiKeys, allows
from aion.cli import main
from aion.errors import DataDirectoryError, InvalidArgument

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
KEY_PATTERN = re.compile(r"aion_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
TOP = Path(__file__).resolve().parent.parent  # the repository, importable by subprocesses


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def aion_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """``aion ARGV`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "aion.cli", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TOP,
    )


# --- create, list, revoke, verify -------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    keys = ApiKeys.for_target(tmp_path / "data")
    assert keys.path == tmp_path / "data" / API_KEY_FILE_NAME
    assert keys.list() == [] and keys.verify("anything") is None
    assert not (tmp_path / "data").exists()  # reading makes nothing

    a, desc_a = keys.create(role="operator", tenant="acme", label="deploy bot", now=T0)
    b, desc_b = keys.create(role="viewer", all_tenants=True, now=T0 + timedelta(seconds=1))
    match = KEY_PATTERN.fullmatch(a)
    assert match and match.group(1) == desc_a.key_id
    assert desc_a == ApiKey(desc_a.key_id, "operator", "acme", "deploy bot", T0)
    assert desc_b.tenant is None and desc_b.label == desc_b.key_id  # the default label
    assert desc_a.key_id != desc_b.key_id and a != b
    assert keys.list() == [desc_a, desc_b]  # creation order
    assert keys.verify(a) == desc_a and keys.verify(b) == desc_b

    revoked = keys.revoke(desc_a.key_id, now=T0 + timedelta(hours=1))
    assert revoked == ApiKey(
        desc_a.key_id, "operator", "acme", "deploy bot", T0, T0 + timedelta(hours=1)
    )
    assert keys.verify(a) is None and keys.verify(b) == desc_b
    # Revoking again keeps the first time.
    assert keys.revoke(desc_a.key_id, now=T0 + timedelta(days=1)) == revoked
    assert keys.list() == [revoked, desc_b]
    # Another object on the same file sees the same.
    again = ApiKeys(keys.path)
    assert again.list() == [revoked, desc_b]
    assert again.verify(a) is None and again.verify(b) == desc_b


def test_times_are_utc(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "keys.json")
    paris = timezone(timedelta(hours=1))
    _, desc = keys.create(
        role="admin", all_tenants=True, now=datetime(2025, 3, 1, 13, tzinfo=paris)
    )
    assert desc.created_at == T0 and desc.created_at.tzinfo is UTC
    assert keys.list()[0].created_at.tzinfo is UTC
    _, now_desc = keys.create(role="admin", all_tenants=True)
    assert now_desc.created_at.tzinfo is UTC
    assert abs(now_desc.created_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_the_file_is_private_and_holds_no_key(tmp_path: Path) -> None:
    old = os.umask(0)  # the modes must not depend on the umask
    try:
        keys = ApiKeys.for_target(tmp_path / "data")
        made = [keys.create(role=role, all_tenants=True, now=T0) for role in ROLES]
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "data") == 0o700
    assert mode_of(keys.path) == 0o600
    assert mode_of(keys.path.with_name(API_KEY_FILE_NAME + ".lock")) == 0o600
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        API_KEY_FILE_NAME,
        API_KEY_FILE_NAME + ".lock",
    ]  # no temporary file left
    text = keys.path.read_text()
    stored = json.loads(text)
    assert stored["version"] == 1
    for (key, desc), entry in zip(made, stored["keys"], strict=True):
        secret = key[len("aion_") + 12 + 1 :]  # (base64url: the secret may hold "_" too)
        assert key not in text and secret not in text
        assert entry == {
            "key_id": desc.key_id,
            "sha256": hashlib.sha256(key.encode()).hexdigest(),
            "role": desc.role,
            "tenant": None,
            "label": desc.key_id,
            "created_at": "2025-03-01T12:00:00Z",
            "revoked_at": None,
        }


def test_verify_refuses_what_is_not_a_valid_key(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "keys.json")
    key, desc = keys.create(role="admin", tenant="acme")
    other_key, _ = ApiKeys(tmp_path / "other.json").create(role="admin", tenant="acme")
    last = key[-1]
    altered = key[:-1] + ("A" if last != "A" else "B")
    same_id_other_secret = key[:18] + other_key[18:]
    for presented in (
        same_id_other_secret,  # a known key id, the wrong secret
        other_key,  # a key of another file
        key[:-1],  # truncated
        key[:20],
        altered,  # the last character changed
        key[:-1] + chr(ord(last) ^ 1),
        key + "A",
        key + "\n",
        " " + key,
        key.upper(),
        key.replace("aion_", "AION_"),
        "",
        "aion_",
        f"aion_{desc.key_id}_",
        key.encode(),  # not a str
        bytearray(key.encode()),
        None,
        42,
        [key],
        {key: key},
    ):
        assert keys.verify(presented) is None, presented
    keys.revoke(desc.key_id)
    assert keys.verify(key) is None


def test_the_roles_are_ordered() -> None:
    assert ROLES == ("viewer", "approver", "operator", "admin")
    for i, role in enumerate(ROLES):
        for j, needed in enumerate(ROLES):
            assert allows(role, needed) is (i >= j)
    for bad in ("root", "", "Admin"):
        with pytest.raises(InvalidArgument, match="is not a role"):
            allows(bad, "viewer")
        with pytest.raises(InvalidArgument, match="is not a role"):
            allows("admin", bad)


# --- where the file is ------------------------------------------------------------------------


def test_for_target(tmp_path: Path) -> None:
    assert ApiKeys.for_target(str(tmp_path)).path == tmp_path / API_KEY_FILE_NAME
    assert ApiKeys.for_target(tmp_path / "new").path == tmp_path / "new" / API_KEY_FILE_NAME
    own = tmp_path / "elsewhere" / "keys.json"
    for target in ("postgresql://u:secret@host/db", "postgres://host/db", object(), tmp_path):
        assert ApiKeys.for_target(target, own).path == own
        assert ApiKeys.for_target(target, str(own)).path == own
    for target in ("postgresql://u:secret@host/db", "postgres://host/db"):
        with pytest.raises(InvalidArgument, match="--api-keys FILE") as info:
            ApiKeys.for_target(target)
        assert "secret" not in str(info.value)  # the URL's password is not repeated
    with pytest.raises(InvalidArgument, match="--api-keys FILE"):
        ApiKeys.for_target(object())
    (tmp_path / "a-file").write_text("")
    with pytest.raises(InvalidArgument, match="is not a data directory"):
        ApiKeys.for_target(tmp_path / "a-file")
    with pytest.raises(InvalidArgument, match="is a directory"):
        ApiKeys.for_target(tmp_path, tmp_path)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "root", "all_tenants": True}, "'root' is not a role: pass one of viewer"),
        ({"role": "", "all_tenants": True}, "is not a role"),
        ({"role": None, "all_tenants": True}, "is not a role"),
        ({"role": "admin", "tenant": "acme", "all_tenants": True}, "not both"),
        ({"role": "admin"}, "say which tenants"),
        ({"role": "admin", "all_tenants": "yes"}, "all_tenants is a bool"),
        ({"role": "admin", "tenant": ""}, "tenant must not be empty"),
        ({"role": "admin", "tenant": "a\x00b"}, "NUL"),
        ({"role": "admin", "tenant": "t" * 201}, "ids are limited to 200"),
        ({"role": "admin", "tenant": 7}, "tenant must be a str"),
        ({"role": "admin", "all_tenants": True, "label": "x" * 257}, "over the limit of 256"),
        ({"role": "admin", "all_tenants": True, "label": "é" * 129}, "over the limit of 256"),
        ({"role": "admin", "all_tenants": True, "label": "a\nb"}, r"control character \(U\+000A"),
        ({"role": "admin", "all_tenants": True, "label": "\x1b[31m"}, "control character"),
        ({"role": "admin", "all_tenants": True, "label": "a\x7f"}, "control character"),
        ({"role": "admin", "all_tenants": True, "label": "a\x85"}, "control character"),
        ({"role": "admin", "all_tenants": True, "label": ""}, "label must not be empty"),
        ({"role": "admin", "all_tenants": True, "label": "\udc80"}, "lone surrogate"),
        ({"role": "admin", "all_tenants": True, "now": datetime(2025, 1, 1)}, "naive"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    keys = ApiKeys(tmp_path / "keys.json")
    with pytest.raises(InvalidArgument, match=message):
        keys.create(**kwargs)  # type: ignore[arg-type]
    assert not keys.path.exists()  # nothing was written


def test_a_label_of_256_bytes_is_fine(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "keys.json")
    _, desc = keys.create(role="admin", all_tenants=True, label="é" * 128)
    assert keys.list()[0].label == desc.label == "é" * 128


def test_revoking_an_unknown_key_is_refused(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "keys.json")
    with pytest.raises(InvalidArgument, match=r"no API key with id 'abc'.*`aion api-key list`"):
        keys.revoke("abc")
    _, desc = keys.create(role="admin", all_tenants=True)
    before = keys.path.read_bytes()
    for bad in ("0" * 12, desc.key_id.upper(), desc.key_id + " "):
        with pytest.raises(InvalidArgument, match="no API key with id"):
            keys.revoke(bad)
    assert keys.path.read_bytes() == before


# --- refused files ----------------------------------------------------------------------------


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "keys.json")
    key, _ = keys.create(role="admin", all_tenants=True)
    assert keys.verify(key) is not None  # loaded
    os.chmod(keys.path, 0o644)
    fresh = ApiKeys(keys.path)
    for call in (
        lambda: keys.verify(key),  # the loaded object notices the new mode
        lambda: keys.verify("junk"),
        fresh.list,
        lambda: fresh.verify(key),
        lambda: fresh.create(role="admin", all_tenants=True),
        lambda: fresh.revoke("0" * 12),
    ):
        with pytest.raises(DataDirectoryError, match=f"chmod 600 {re.escape(str(keys.path))}"):
            call()
    os.chmod(keys.path, 0o600)
    assert keys.verify(key) is not None and fresh.verify(key) is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is corrupt"),
        (b"{", "is corrupt"),
        (b"[]", "is corrupt"),
        (b'{"version": 1}', "is corrupt"),
        (b'{"version": 1, "keys": [{"key_id": "abc"}]}', "is corrupt"),
        (b'{"version": 2, "keys": []}', "format version 2; this aion reads version 1"),
        (b'{"version": "1", "keys": []}', "is corrupt"),
    ],
)
def test_a_corrupt_file_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    keys = ApiKeys(path)
    with pytest.raises(DataDirectoryError, match=message):
        keys.verify("aion_000000000000_" + "A" * 43)
    with pytest.raises(DataDirectoryError, match=message):
        keys.list()
    with pytest.raises(DataDirectoryError, match=message):
        keys.create(role="admin", all_tenants=True)
    assert path.read_bytes() == content  # nothing was changed


def _entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "key_id": "0123456789ab",
        "sha256": "0" * 64,
        "role": "viewer",
        "tenant": None,
        "label": "x",
        "created_at": "2025-03-01T12:00:00Z",
        "revoked_at": None,
    }
    return {**entry, **changes}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_entry(key_id="0123456789AB")], "not 12 lowercase hex digits"),
        ([_entry(key_id="0123")], "not 12 lowercase hex digits"),
        ([_entry(), _entry()], "appears twice"),
        ([_entry(sha256="x" * 64)], "sha256 is not 64 lowercase hex digits"),
        ([_entry(role="root")], "is not a role"),
        ([_entry(tenant="")], "tenant must not be empty"),
        ([_entry(label="a\nb")], "control character"),
        ([_entry(created_at="2025-03-01T12:00:00")], "is corrupt"),  # naive
        ([_entry(revoked_at="yesterday")], "is corrupt"),
    ],
)
def test_a_file_with_a_bad_entry_is_refused(
    tmp_path: Path, entries: list[dict[str, object]], message: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"version": 1, "keys": entries}))
    os.chmod(path, 0o600)
    with pytest.raises(DataDirectoryError, match=message):
        ApiKeys(path).list()


def test_a_good_hand_written_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = "aion_0123456789ab_" + "A" * 43
    entry = _entry(sha256=hashlib.sha256(key.encode()).hexdigest(), tenant="acme")
    path.write_text(json.dumps({"version": 1, "keys": [entry]}))
    os.chmod(path, 0o600)
    assert ApiKeys(path).verify(key) == ApiKey("0123456789ab", "viewer", "acme", "x", T0)


# --- other processes --------------------------------------------------------------------------


def test_keys_made_and_revoked_by_the_cli_count_without_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    server = ApiKeys.for_target(data)  # as an HTTP server holds it, from before any key
    assert server.verify("aion_000000000000_" + "A" * 43) is None

    code, out, err = run(
        capsys,
        "api-key",
        "create",
        "--data",
        str(data),
        "--role",
        "approver",
        "--tenant",
        "acme",
        "--label",
        "ops team",
    )
    assert code == 0 and err == ""
    lines = out.splitlines()
    key = next(line for line in lines if KEY_PATTERN.fullmatch(line))
    assert out.count(key) == 1
    assert "will not be shown again" in out
    desc = server.verify(key)
    assert desc is not None and (desc.role, desc.tenant, desc.label) == (
        "approver",
        "acme",
        "ops team",
    )
    assert desc.key_id in lines[0]

    code, out, _ = run(
        capsys,
        "api-key",
        "create",
        "--data",
        str(data),
        "--role",
        "admin",
        "--all-tenants",
        "--json",
    )
    assert code == 0
    printed = json.loads(out)
    assert list(printed) == ["key", "key_id", "role", "tenant", "label"]
    assert printed["role"] == "admin" and printed["tenant"] is None
    assert printed["label"] == printed["key_id"]
    admin = server.verify(printed["key"])
    assert admin is not None and admin.key_id == printed["key_id"]

    # A key made in another process.
    proc = aion_process(
        "api-key", "create", "--data", str(data), "--role", "viewer", "--all-tenants", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    third = json.loads(proc.stdout)
    assert server.verify(third["key"]) is not None

    code, out, _ = run(capsys, "api-key", "list", "--data", str(data))
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["ID", "ROLE", "TENANT", "LABEL", "CREATED", "REVOKED"]
    assert [r[:3] for r in rows[1:]] == [
        [desc.key_id, "approver", "acme"],
        [printed["key_id"], "admin", "*"],
        [third["key_id"], "viewer", "*"],
    ]
    assert all(r[-1] == "-" for r in rows[1:])  # none revoked
    assert key not in out and printed["key"] not in out

    # Revoked by another process: the server's object notices on the next call.
    proc = aion_process("api-key", "revoke", desc.key_id, "--data", str(data))
    assert proc.returncode == 0, proc.stderr
    assert f"revoked API key {desc.key_id}" in proc.stdout
    assert server.verify(key) is None
    assert server.verify(printed["key"]) is not None
    proc = aion_process("api-key", "revoke", printed["key_id"], "--data", str(data))
    assert proc.returncode == 0, proc.stderr
    assert server.verify(printed["key"]) is None
    assert server.verify(third["key"]) is not None

    code, out, _ = run(capsys, "api-key", "revoke", desc.key_id, "--data", str(data))
    assert code == 0 and "revoked already" in out
    code, out, _ = run(capsys, "api-key", "list", "--data", str(data), "--json")
    listed = json.loads(out)
    assert [k["key_id"] for k in listed] == [desc.key_id, printed["key_id"], third["key_id"]]
    assert listed[0]["revoked_at"] is not None and listed[2]["revoked_at"] is None
    assert set(listed[0]) == {"key_id", "role", "tenant", "label", "created_at", "revoked_at"}


def test_the_cli_takes_a_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys" / "api.json"
    for data in ("postgresql://aion:pw@db.example/aion", str(tmp_path / "data")):
        code, out, err = run(
            capsys,
            "api-key",
            "create",
            "--data",
            data,
            "--api-keys",
            str(path),
            "--role",
            "viewer",
            "--all-tenants",
            "--json",
        )
        assert code == 0, err
        assert ApiKeys(path).verify(json.loads(out)["key"]) is not None
    code, out, _ = run(capsys, "api-key", "list", "--api-keys", str(path), "--json")
    assert code == 0 and len(json.loads(out)) == 2
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--role", "root", "--all-tenants"], "'root' is not a role"),
        (["create", "--role", "admin", "--tenant", "a", "--all-tenants"], "not both"),
        (["create", "--role", "admin"], "say which tenants"),
        (["create", "--role", "admin", "--tenant", ""], "tenant must not be empty"),
        (["create", "--role", "admin", "--tenant", "t" * 201], "ids are limited"),
        (["create", "--role", "admin", "--all-tenants", "--label", "x" * 257], "over the limit"),
        (["create", "--role", "admin", "--all-tenants", "--label", "a\tb"], "control character"),
        (["revoke", "0123456789ab"], "no API key with id '0123456789ab'"),
    ],
)
def test_the_cli_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    data = tmp_path / "data"
    code, out, err = run(capsys, "api-key", *argv, "--data", str(data))
    assert code == 1 and out == ""
    assert err.startswith("aion: ") and message in err and "Traceback" not in err
    assert not (data / API_KEY_FILE_NAME).exists()


def test_the_cli_refuses_a_postgres_url_without_a_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["create", "--role", "admin", "--all-tenants"], ["list"], ["revoke", "x"]):
        code, out, err = run(capsys, "api-key", *command, "--data", "postgresql://u:pw@h/db")
        assert code == 1 and out == ""
        assert "--api-keys FILE" in err and "pw" not in err and "Traceback" not in err
    proc = aion_process("api-key", "list", "--data", "postgres://h/db")
    assert proc.returncode == 1 and "--api-keys FILE" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_cli_refuses_a_file_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ApiKeys.for_target(tmp_path)
    keys.create(role="admin", all_tenants=True)
    os.chmod(keys.path, 0o644)
    for command in (["list"], ["create", "--role", "admin", "--all-tenants"]):
        code, out, err = run(capsys, "api-key", *command, "--data", str(tmp_path))
        assert code == 1 and out == ""
        assert f"chmod 600 {keys.path}" in err and "Traceback" not in err


CREATE_20 = textwrap.dedent(
    """
    import sys
    from aion._apikeys import ApiKeys

    keys = ApiKeys(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for i in range(20):
        key, _ = keys.create(role="viewer", tenant="t", label=f"{sys.argv[2]}-{i}")
        print(key, flush=True)
    """
)


def test_two_processes_creating_keys_at_once_lose_none(tmp_path: Path) -> None:
    path = tmp_path / "data" / API_KEY_FILE_NAME
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE_20, str(path), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=TOP,
        )
        for name in ("a", "b")
    ]
    for proc in procs:  # both imported aion: now they start at once
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    made: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        made += out.split()
    assert len(made) == 40
    keys = ApiKeys(path)
    listed = keys.list()
    assert len(listed) == 40 and len({k.key_id for k in listed}) == 40
    assert sorted(k.label for k in listed) == sorted(
        f"{name}-{i}" for name in "ab" for i in range(20)
    )
    assert all(keys.verify(key) is not None for key in made)


# --- never raises, never accepts --------------------------------------------------------------


@pytest.fixture(scope="module")
def one_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiKeys, str]]:
    keys = ApiKeys(tmp_path_factory.mktemp("keys") / API_KEY_FILE_NAME)
    key, _ = keys.create(role="admin", all_tenants=True)
    yield keys, key


@given(text=st.text(max_size=100))
def test_verify_never_raises_nor_accepts_arbitrary_text(
    one_key: tuple[ApiKeys, str], text: str
) -> None:
    keys, key = one_key
    assert keys.verify(text) is None
    assert keys.verify(key[:18] + text) is None or key[:18] + text == key
    assert keys.verify(key[: len(text)] + text) is None or key[: len(text)] + text == key


@given(secret=st.from_regex(r"[A-Za-z0-9_-]{43}", fullmatch=True))
def test_verify_refuses_well_formed_keys_that_were_not_made(
    one_key: tuple[ApiKeys, str], secret: str
) -> None:
    keys, key = one_key
    forged = key[:18] + secret  # the real key id, another secret
    assert (keys.verify(forged) is None) is (forged != key)


@given(value=st.one_of(st.none(), st.integers(), st.binary(), st.floats(), st.lists(st.text())))
def test_verify_never_raises_for_other_values(one_key: tuple[ApiKeys, str], value: object) -> None:
    keys, _ = one_key
    assert keys.verify(value) is None
