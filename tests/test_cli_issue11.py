"""The ``aion`` command line (issue 11, item 13): the "more:" hint of ``aion list`` and
``aion approvals`` is a command that works when pasted, ``aion approve/reject --digest``, and
``aion approvals`` shows each approval's details and digest."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import aion
from aion._codec import ENCODER
from aion.cli import main
from aion.store import InboxCommand, LmdbStore
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@aion.workflow
async def idle(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


@aion.workflow
async def quick(ctx: aion.Context) -> str:
    return "done"


@aion.workflow
async def expense(ctx: aion.Context, amount: int, note: str) -> aion.Approval:
    approval: aion.Approval = await ctx.approval("pay", details={"amount": amount, "note": note})
    return approval


tokens: list[str] = []


def send_token(token: str) -> None:
    tokens.append(token)


@aion.workflow
async def callbacks(ctx: aion.Context, n: int) -> list[Any]:
    wps = [await ctx.waitpoint(f"cb-{i}") for i in range(n)]
    for wp in wps:
        await ctx.step(send_token, wp.token)
    return list(await ctx.gather(*(wp.wait() for wp in wps)))


ALL = [idle, quick, expense, callbacks]


def engine(data: Path, **options: Any) -> aion.Engine:
    return aion.Engine(data, workflows=ALL, clock=ManualClock(T0), **options)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def inbox(data: Path) -> list[InboxCommand]:
    store = LmdbStore(data, role="client")
    try:
        return await store.read_inbox()
    finally:
        await store.aclose()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    # A space and a quote in the path: the hint must quote it for the shell.
    path = tmp_path / "my data's dir"

    async def prepare() -> None:
        async with engine(path) as e:
            for i in range(7):
                await e.start(idle, workflow_id=f"idle-{i}", tenant="acme")
                await e.start(quick, workflow_id=f"quick-{i}", tenant="acme")
            await e.start(idle, workflow_id="other", tenant="default")
            await e.start(expense, 10, "taxi", workflow_id="e1")
            await e.start(expense, 20, "hotel", workflow_id="e2")
            await e.start(expense, 30, "train", workflow_id="e3")
            await e.wait_idle()

    anyio.run(prepare)
    return path


def hint(out: str, command: str) -> list[str] | None:
    """The argv of the "more:" line of ``out``, as a shell would split it (no ``aion``)."""
    lines = [line for line in out.splitlines() if line.startswith("more: ")]
    if not lines:
        return None
    (line,) = lines
    argv = shlex.split(line.removeprefix("more: "))
    assert argv[:2] == ["aion", command]
    return argv[1:]


# --- the "more:" hint ----------------------------------------------------------------------------


def test_the_list_hint_keeps_every_option(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "list", "--data", str(data), "--tenant", "acme", "--status", "running",
        "--type", "idle", "--limit", "3",
    ]  # fmt: skip
    seen: list[str] = []
    for _ in range(10):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        rows = [line.split()[0] for line in out.splitlines()[1:] if line.startswith("idle-")]
        assert 1 <= len(rows) <= 3
        seen += rows
        following = hint(out, "list")
        if following is None:
            break
        assert following[-2] == "--cursor"
        argv = following
    assert sorted(seen) == [f"idle-{i}" for i in range(7)] and len(seen) == 7


def test_the_list_hint_with_the_defaults(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(data.parent)
    Path(data).rename(data.parent / "aion-data")  # the default data directory
    code, out, _ = run(capsys, "list", "--limit", "2")
    assert code == 0
    following = hint(out, "list")
    assert following is not None and following[:3] == ["list", "--limit", "2"]
    code, out, _ = run(capsys, *following)
    assert code == 0 and len(out.splitlines()) >= 2


def test_the_approvals_hint_keeps_every_option(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["approvals", "--data", str(data), "--limit", "1"]
    seen: list[str] = []
    for _ in range(10):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        seen += [line.split()[0] for line in out.splitlines()[1:] if line.startswith("e")]
        following = hint(out, "approvals")
        if following is None:
            break
        argv = following
    assert seen == ["e1", "e2", "e3"]


# --- aion approvals shows what is approved --------------------------------------------------------


async def pending(data: Path) -> dict[str, aion.PendingApproval]:
    async with engine(data) as e:
        page = await e.pending_approvals()
    return {a.workflow_id: a for a in page.items}


def test_approvals_show_details_and_digest(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    approvals = anyio.run(pending, data)
    code, out, _ = run(capsys, "approvals", "--data", str(data))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "WORKFLOW", "APPROVAL", "ACTION", "REQUESTED", "TIMES", "OUT", "DIGEST", "DETAILS",
    ]  # fmt: skip
    by_wf = {row.split()[0]: row for row in rows}
    for wf, amount, note in (("e1", 10, "taxi"), ("e2", 20, "hotel"), ("e3", 30, "train")):
        row = by_wf[wf]
        assert approvals[wf].digest in row.split()  # whole: it can be pasted into --digest
        assert row.endswith(json.dumps({"amount": amount, "note": note}))


def test_long_details_are_cut_in_the_table_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "data"

    async def prepare() -> None:
        async with engine(path) as e:
            await e.start(expense, 1, "x" * 500, workflow_id="long")
            await e.wait_idle()

    anyio.run(prepare)
    code, out, _ = run(capsys, "approvals", "--data", str(path))
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("long"))
    assert "x" * 500 not in row and row.endswith("...")
    assert "--json" in out  # says where the whole details are
    code, out, _ = run(capsys, "approvals", "--data", str(path), "--json")
    assert json.loads(out)["items"][0]["details"] == {"amount": 1, "note": "x" * 500}


# --- aion approve / reject --digest ---------------------------------------------------------------


def test_approve_with_the_digest_shown(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    approvals = anyio.run(pending, data)
    digest = approvals["e1"].digest
    code, out, err = run(capsys, "approve", "e1", "--user", "ann", "--digest", digest,
                         "--data", str(data))  # fmt: skip
    assert code == 0, err
    assert "queued approve for e1" in out
    [command] = anyio.run(inbox, data)
    assert command.digest == digest and command.target_id == approvals["e1"].approval_id
    code, out, err = run(capsys, "reject", "e2", "--user", "bob", "--comment", "no",
                         "--digest", approvals["e2"].digest, "--data", str(data))  # fmt: skip
    assert code == 0, err

    async def next_engine() -> None:
        async with engine(data, inbox_interval=0.01) as e:
            assert await e.handle("e1").result(timeout=5) == aion.Approval("ann", None, T0)
            with pytest.raises(aion.WorkflowFailed, match="bob"):
                await e.handle("e2").result(timeout=5)
            decided = [h for h in await e.history("e1") if h.type == "approval.decided"]
            assert [h.data["digest"] for h in decided] == [digest]

    anyio.run(next_engine)


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_wrong_digest_is_refused_and_nothing_is_queued(
    verb: str, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    approvals = anyio.run(pending, data)
    wrong = approvals["e2"].digest  # another approval's
    code, _, err = run(capsys, verb, "e1", "--user", "ann", "--comment", "c", "--digest", wrong,
                       "--data", str(data))  # fmt: skip
    assert code == 1
    assert err.startswith("aion: ") and err.count("\n") == 1
    assert "digest" in err and approvals["e1"].approval_id in err and "nothing" in err
    assert anyio.run(inbox, data) == []


def test_a_queued_decision_with_a_stale_digest_is_not_applied(data: Path) -> None:
    # What the reviewer saw was not what is pending when the engine applies the decision
    # (the command line's own check passed earlier, or another process queued it): the
    # engine refuses it, as engine.approve(digest=...) does.
    approvals = anyio.run(pending, data)

    async def leave() -> None:
        store = LmdbStore(data, role="client")
        try:
            await store.put_inbox(
                InboxCommand(
                    "approve", "default", "e1", T0, user="ann",
                    target_id=approvals["e1"].approval_id, digest="sha256:" + "0" * 64,
                )
            )  # fmt: skip
        finally:
            await store.aclose()

    anyio.run(leave)

    async def next_engine() -> None:
        async with engine(data, inbox_interval=0.01) as e:
            with anyio.fail_after(5):
                while await e.store.read_inbox():
                    await anyio.sleep(0.01)
            await e.wait_idle()
            assert "approval.decided" not in [h.type for h in await e.history("e1")]
            assert "e1" in {a.workflow_id for a in (await e.pending_approvals()).items}

    anyio.run(next_engine)


def test_an_inbox_command_without_a_digest_still_decodes() -> None:
    command = InboxCommand("approve", "t", "wf", T0, user="u", digest="sha256:ab")
    short = ENCODER.encode(msgspec.msgpack.decode(ENCODER.encode(command))[:-1])
    assert msgspec.msgpack.decode(short, type=InboxCommand) == msgspec.structs.replace(
        command, digest=""
    )


# --- aion waitpoints ------------------------------------------------------------------------------


def test_waitpoints_show_the_signing_key_in_creation_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "data"
    tokens.clear()

    async def prepare() -> None:
        async with engine(path) as e:
            await e.start(callbacks, 11, workflow_id="cb")
            await e.wait_idle()

    anyio.run(prepare)
    code, out, _ = run(capsys, "waitpoints", "cb", "--data", str(path))
    assert code == 0
    header, *rows = out.splitlines()
    assert "KEY" in header.split()
    assert [row.split()[1] for row in rows] == [f"cb-{i}" for i in range(11)]
    kid = tokens[0].split(".")[1]
    assert all(kid in row.split() for row in rows)
    code, out, _ = run(capsys, "waitpoints", "cb", "--data", str(path), "--json")
    assert {item["token_kid"] for item in json.loads(out)} == {kid}
