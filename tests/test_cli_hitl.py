"""The ``aion`` command line for people and outside systems in the loop: ``approvals``,
``approve``, ``reject``, ``waitpoints``, ``complete``, ``unblock``, on a real data directory.

The command line leaves commands in the store's inbox: a running engine applies them, or the
next engine to start does. An engine holds the data directory in this process, so commands for a
running engine are run in a child process, as a user would run them from a shell.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
import aion.errors
from aion.cli import main
from aion.store import InboxCommand, LmdbStore
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)

outbox: dict[str, list[str]] = {}
BLOCK = {"on": False}


def send_token(token: str) -> None:
    outbox.setdefault(aion.current_step().workflow_id, []).append(token)


@aion.workflow
async def expense(ctx: aion.Context, amount: int) -> aion.Approval:
    approval: aion.Approval = await ctx.approval("pay", details={"amount": amount})
    return approval


@aion.workflow
async def two_approvals(ctx: aion.Context) -> list[str]:
    first, second = await ctx.gather(ctx.approval("first"), ctx.approval("second"))
    return [first.user, second.user]


@aion.workflow
async def callback(ctx: aion.Context) -> Any:
    wp = await ctx.waitpoint("provider")
    await ctx.step(send_token, wp.token)
    payload = await wp.wait()
    return [payload, await ctx.wait_signal("finish")]


@aion.workflow
async def idle(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


@aion.workflow
async def sometimes_blocks(ctx: aion.Context) -> str:
    await ctx.wait_signal("go")
    if BLOCK["on"]:
        await asyncio.sleep(0)  # not an aion operation: the run is parked BLOCKED
    return "unblocked"


ALL = [expense, two_approvals, callback, idle, sometimes_blocks]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def approval_rows(
    capsys: pytest.CaptureFixture[str], data: Path, *extra: str
) -> tuple[list[dict[str, str]], str | None]:
    """``aion approvals`` as a table: its rows (workflow, approval id, action) and the cursor
    it offers for the next page."""
    code, out, err = run(capsys, "approvals", "--data", str(data), *extra)
    assert code == 0, err
    lines = out.splitlines()
    if lines == ["(none)"]:
        return [], None
    assert lines[0].split() == [
        "WORKFLOW", "APPROVAL", "ACTION", "REQUESTED", "TIMES", "OUT", "DIGEST", "DETAILS",
    ]  # fmt: skip
    rows = []
    cursor = None
    for line in lines[1:]:
        if line.startswith("more: aion approvals "):
            cursor = line.split()[-1]
        elif line.strip():
            wf, approval_id, action, *_ = line.split()
            rows.append({"workflow": wf, "approval": approval_id, "action": action})
    return rows, cursor


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def engine(data: Path, **options: Any) -> aion.Engine:
    return aion.Engine(data, workflows=ALL, clock=ManualClock(T0), **options)


async def _prepare(data: Path) -> None:
    outbox.clear()
    async with engine(data) as e:
        await e.start(expense, 10, workflow_id="e1")
        await e.start(expense, 20, workflow_id="e2")
        await e.start(two_approvals, workflow_id="two")
        await e.start(callback, workflow_id="cb")
        await e.start(idle, workflow_id="idle")
        await e.start(expense, 30, workflow_id="e1", tenant="acme")
        await e.start(expense, 40, workflow_id="done")
        await e.wait_idle()
        await e.approve("done", user="someone")
        await e.handle("done").result(timeout=5)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    anyio.run(_prepare, path)
    return path


async def inbox(data: Path) -> list[Any]:
    store = LmdbStore(data, role="client")
    try:
        return await store.read_inbox()
    finally:
        await store.aclose()


# --- listing ------------------------------------------------------------------------------------


def test_approvals_lists_what_waits(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows, cursor = approval_rows(capsys, data)
    assert cursor is None
    assert sorted((r["workflow"], r["action"]) for r in rows) == [
        ("e1", "pay"), ("e2", "pay"), ("two", "first"), ("two", "second"),
    ]  # fmt: skip
    assert len({r["approval"] for r in rows}) == 4
    _, out, _ = run(capsys, "approvals", "--data", str(data))
    assert "sha256:" in out and "done" not in out and "idle" not in out
    rows, _ = approval_rows(capsys, data, "--tenant", "acme")
    assert [(r["workflow"], r["action"]) for r in rows] == [("e1", "pay")]
    rows, _ = approval_rows(capsys, data, "--tenant", "nobody")
    assert rows == []


def test_approvals_json_has_named_fields(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "approvals", "--data", str(data), "--json")
    assert code == 0
    items = json.loads(out)["items"]
    by_wf = {(i["workflow_id"], i["action"]): i for i in items}
    assert by_wf[("e1", "pay")]["details"] == {"amount": 10}
    assert all(i["tenant"] == "default" and i["digest"].startswith("sha256:") for i in items)


def test_approvals_pages(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    extra: list[str] = []
    for _ in range(10):
        rows, cursor = approval_rows(capsys, data, "--limit", "1", *extra)
        assert len(rows) == 1
        seen += [r["approval"] for r in rows]
        if cursor is None:
            break
        extra = ["--cursor", cursor]
    assert len(seen) == len(set(seen)) == 4
    code, _, err = run(capsys, "approvals", "--data", str(data), "--cursor", "bogus")
    assert code == 1 and err.startswith("aion: ")


def test_waitpoints_show_fingerprints(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [token] = outbox["cb"]
    code, out, _ = run(capsys, "waitpoints", "cb", "--data", str(data))
    assert code == 0
    assert "TOKEN FINGERPRINT" in out and "provider" in out
    assert fingerprint(token) in out and token not in out
    code, out, _ = run(capsys, "waitpoints", "cb", "--data", str(data), "--json")
    assert code == 0 and fingerprint(token) in out
    assert token not in out and token.split(".")[3] not in out
    code, out, _ = run(capsys, "waitpoints", "idle", "--data", str(data))
    assert code == 0 and "provider" not in out
    code, out, err = run(capsys, "waitpoints", "nope", "--data", str(data))
    assert code == 1 and "not found" in err
    code, out, err = run(capsys, "waitpoints", "cb", "--data", str(data), "--tenant", "acme")
    assert code == 1 and "not found" in err


def test_waitpoints_json_has_named_fields(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [token] = outbox["cb"]
    _, out, _ = run(capsys, "waitpoints", "cb", "--data", str(data), "--json")
    [item] = json.loads(out)
    assert item["fingerprint"] == fingerprint(token) and item["name"] == "provider"


# --- deciding and completing, applied by the next engine -----------------------------------------


async def applied(e: aion.Engine) -> None:
    """Wait until the engine has taken every command out of the inbox and settled."""
    with anyio.fail_after(5):
        while await e.store.read_inbox():
            await anyio.sleep(0.01)  # the inbox is polled on its own (real-time) interval
    await e.wait_idle()


def test_decisions_reach_the_next_engine(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "approve", "e1", "--user", "alice", "--data", str(data))
    assert code == 0 and "queued approve for e1" in out
    code, out, _ = run(
        capsys, "reject", "e2", "--user", "bob", "--comment", "over budget", "--data", str(data)
    )
    assert code == 0 and "queued reject for e2" in out
    code, out, _ = run(
        capsys, "approve", "e1", "--user", "carol", "--tenant", "acme", "--comment", "fine",
        "--data", str(data),
    )  # fmt: skip
    assert code == 0
    rows, _ = approval_rows(capsys, data)
    ids = {r["action"]: r["approval"] for r in rows if r["workflow"] == "two"}
    for action, user in (("first", "dave"), ("second", "erin")):
        code, out, _ = run(
            capsys, "approve", "two", "--user", user, "--approval-id", ids[action],
            "--data", str(data),
        )  # fmt: skip
        assert code == 0, out
    assert len(anyio.run(inbox, data)) == 5

    async def next_engine() -> None:
        async with engine(data, inbox_interval=0.01) as e:
            assert await e.handle("e1").result(timeout=5) == aion.Approval("alice", None, T0)
            with pytest.raises(aion.WorkflowFailed) as info:
                await e.handle("e2").result(timeout=5)
            assert "bob" in str(info.value) and "over budget" in str(info.value)
            acme = await e.handle("e1", tenant="acme").result(timeout=5)
            assert acme == aion.Approval("carol", "fine", T0)
            assert await e.handle("two").result(timeout=5) == ["dave", "erin"]
            for wf in ("e1", "e2", "two"):
                history = await e.history(wf)
                assert [h.type for h in history].count("approval.decided") == (
                    2 if wf == "two" else 1
                )
            assert await e.pending_approvals() == aion.Page([], None)
            await applied(e)

    anyio.run(next_engine)
    assert anyio.run(inbox, data) == []


def test_of_two_queued_decisions_the_first_wins(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both pass the command line's check: the approval is pending while no engine runs.
    code, _, _ = run(capsys, "approve", "e1", "--user", "alice", "--data", str(data))
    assert code == 0
    code, _, _ = run(capsys, "reject", "e1", "--user", "bob", "--comment", "c", "--data", str(data))
    assert code == 0

    async def next_engine() -> None:
        async with engine(data, inbox_interval=0.01) as e:
            assert await e.handle("e1").result(timeout=5) == aion.Approval("alice", None, T0)
            await applied(e)
            history = await e.history("e1")
            assert [h.data["user"] for h in history if h.type == "approval.decided"] == ["alice"]

    anyio.run(next_engine)
    assert anyio.run(inbox, data) == []


def test_decision_errors_are_one_clear_line(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "approve", "idle", "--user", "u", "--data", str(data))
    # The engine's own message (aion/_control.py): the Client and the command say the same.
    assert code == 1 and err.strip() == "aion: workflow 'idle' has no pending approval to decide"
    code, _, err = run(capsys, "approve", "two", "--user", "u", "--data", str(data))
    assert code == 1 and "2 pending approvals" in err and "--approval-id" in err
    assert err.count("\n") == 1
    code, _, err = run(
        capsys, "approve", "e1", "--user", "u", "--approval-id", "nope", "--data", str(data)
    )
    assert code == 1 and "'nope'" in err and "not pending" in err
    code, _, err = run(capsys, "approve", "e1", "--user", "u", "--data", str(data / "missing"))
    assert code == 1 and "does not exist" in err
    assert anyio.run(inbox, data) == []  # nothing was queued


def test_deciding_unknown_or_finished_workflows(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "reject", "nope", "--user", "u", "--comment", "c", "--data", str(data)
    )
    assert code == 1 and "not found" in err
    code, _, err = run(
        capsys, "approve", "e1", "--user", "u", "--tenant", "nobody", "--data", str(data)
    )
    assert code == 1 and "not found" in err
    code, _, err = run(capsys, "approve", "done", "--user", "u", "--data", str(data))
    assert code == 1 and "has finished" in err


def test_reject_needs_a_comment_and_decisions_a_user(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["reject", "e1", "--user", "u", "--data", str(data)])
    assert info.value.code == 2
    assert "--comment" in capsys.readouterr().err
    for command in ("approve", "reject"):
        with pytest.raises(SystemExit) as info:
            main([command, "e1", "--comment", "c", "--data", str(data)])
        assert info.value.code == 2
        assert "--user" in capsys.readouterr().err
    assert anyio.run(inbox, data) == []


def test_complete_errors(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [token] = outbox["cb"]
    code, _, err = run(capsys, "complete", "not-a-token", "--data", str(data))
    assert code == 1 and "malformed" in err
    code, _, err = run(capsys, "complete", token, "{bad json", "--data", str(data))
    assert code == 1 and "not valid JSON" in err
    assert token not in err
    assert anyio.run(inbox, data) == []


def test_complete_reaches_the_next_engine(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [token] = outbox["cb"]
    code, out, _ = run(capsys, "complete", token, '{"a": 1}', "--data", str(data))
    assert code == 0 and "queued complete_waitpoint for cb" in out
    assert token not in out

    async def next_engine() -> None:
        async with engine(data, inbox_interval=0.01) as e:
            await applied(e)
            types = [h.type for h in await e.history("cb")]
            assert types.count("waitpoint.completed") == 1
            await e.signal("cb", "finish", "f")
            assert await e.handle("cb").result(timeout=5) == [{"a": 1}, "f"]

    anyio.run(next_engine)


def test_a_forged_token_left_in_the_inbox_records_nothing(data: Path) -> None:
    [token] = outbox["cb"]
    version, kid, payload, signature = token.split(".")
    forged = f"{version}.{kid}.{payload}.{'A' * len(signature)}"

    async def leave_it() -> None:
        # As a client that does not check tokens would (the engine must not trust the inbox).
        store = LmdbStore(data, role="client")
        try:
            await store.put_inbox(
                InboxCommand(
                    "complete_waitpoint", "default", "cb", T0, payload=b"\xa4evil", token=forged
                )
            )
        finally:
            await store.aclose()

    anyio.run(leave_it)

    async def next_engine() -> None:
        async with engine(data, inbox_interval=0.01) as e:
            await applied(e)
            assert "waitpoint.completed" not in [h.type for h in await e.history("cb")]
            # The failed attempt is noted on the waitpoint in the background, and wait_idle()
            # does not cover that write when the run is not resident: wait for it.
            with anyio.fail_after(5):
                while True:
                    [wp] = (await e.pending_waitpoints("cb")).items
                    if wp.last_failed_validation_at is not None:
                        break
                    await anyio.sleep(0.01)
            assert wp.last_failed_validation_at == T0
            await e.complete_waitpoint(token, "genuine")
            await e.signal("cb", "finish", None)
            assert await e.handle("cb").result(timeout=5) == ["genuine", None]

    anyio.run(next_engine)


def test_complete_refuses_a_forged_token(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [token] = outbox["cb"]
    version, kid, payload, signature = token.split(".")
    forged = f"{version}.{kid}.{payload}.{'A' * len(signature)}"
    code, _, err = run(capsys, "complete", forged, '"evil"', "--data", str(data))
    assert code == 1 and "invalid" in err
    assert anyio.run(inbox, data) == []


def test_complete_refuses_a_completed_waitpoint(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [token] = outbox["cb"]

    async def complete_once() -> None:
        async with engine(data) as e:
            await e.complete_waitpoint(token, 1)

    anyio.run(complete_once)
    code, _, err = run(capsys, "complete", token, "2", "--data", str(data))
    assert code == 1 and "completed already" in err
    assert anyio.run(inbox, data) == []


def test_unblock_only_unblocks_blocked_runs(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "unblock", "idle", "--data", str(data))
    assert code == 1
    assert err.strip() == "aion: workflow 'idle' is running, not blocked; nothing to do"
    code, _, err = run(capsys, "unblock", "nope", "--data", str(data))
    assert code == 1 and "not found" in err
    code, _, err = run(capsys, "unblock", "done", "--data", str(data))
    assert code == 1 and "not blocked" in err
    assert anyio.run(inbox, data) == []


# --- applied by a running engine -----------------------------------------------------------------


async def cli_process(*commands: Sequence[str]) -> list[tuple[int, str, str]]:
    """Run several ``aion`` commands in one child process: (exit code, stdout, stderr) each."""
    script = (
        "import contextlib, io, json, sys\n"
        "from aion.cli import main\n"
        "results = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        "    results.append([code, out.getvalue(), err.getvalue()])\n"
        "print(json.dumps(results))\n"
    )
    proc = await anyio.run_process(
        [sys.executable, "-c", script, json.dumps([list(c) for c in commands])], check=True
    )
    return [tuple(r) for r in json.loads(proc.stdout)]


async def test_commands_reach_a_running_engine(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outbox.clear()
    async with engine(data, inbox_interval=0.01) as e:
        await e.start(expense, 1, workflow_id="a")
        await e.start(expense, 2, workflow_id="r")
        await e.start(callback, workflow_id="cb")
        await e.start(expense, 3, workflow_id="a", tenant="acme")
        await e.wait_idle()
        d = ["--data", str(data)]
        results = await cli_process(
            ["approvals", *d],
            ["approve", "a", "--user", "ann", "--comment", "ok", *d],
            ["reject", "r", "--user", "rob", "--comment", "no way", *d],
            ["approve", "cb", "--user", "x", *d],  # nothing pending: refused at once
        )
        assert [r[0] for r in results] == [0, 0, 0, 1], results
        listed = [line.split()[0] for line in results[0][1].splitlines()[1:]]
        assert sorted(listed) == ["a", "r"]
        assert "no pending approval" in results[-1][2]
        assert await e.handle("a").result(timeout=5) == aion.Approval("ann", "ok", T0)
        with pytest.raises(aion.WorkflowFailed, match=r"rob.*no way"):
            await e.handle("r").result(timeout=5)
        # Only the default tenant's "a" was decided.
        assert [p.workflow_id for p in (await e.pending_approvals(tenant="acme")).items] == ["a"]
        await e.wait_idle()
        assert await e.store.read_inbox() == []


async def test_complete_reaches_a_running_engine(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outbox.clear()
    async with engine(data, inbox_interval=0.01) as e:
        await e.start(callback, workflow_id="cb")
        await e.wait_idle()
        [token] = outbox["cb"]
        [(code, out, _)] = await cli_process(
            ["complete", token, '{"paid": true}', "--data", str(data)]
        )
        assert code == 0 and token not in out
        await applied(e)
        assert [h.type for h in await e.history("cb")].count("waitpoint.completed") == 1
        assert await e.pending_waitpoints("cb") == aion.Page([], None)


class FlakyTimerCommits:
    """Wraps a store; fails every commit that records a timer firing while ``failing``."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, write: Any) -> Any:
        fires = any(
            e.__struct_config__.tag == "timer.fired" for a in write.appends for e in a.events
        )
        if fires and self.failing:
            raise aion.errors.StoreError("injected: the disk hiccuped")
        return await self._store.commit(write)


@aion.workflow
async def naps(ctx: aion.Context) -> str:
    await ctx.sleep(10)
    return "woke up"


async def test_unblock_reaches_a_running_engine(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = FlakyTimerCommits(LmdbStore(data))
    try:
        async with aion.Engine(
            store,
            workflows=[naps],
            clock=ManualClock(T0, auto_advance=True),
            max_restarts=1,
            inbox_interval=0.01,
        ) as e:
            await e.start(naps, workflow_id="n")
            with anyio.fail_after(5):
                while (await e.describe("n")).status is not aion.Status.BLOCKED:
                    await anyio.sleep(0.01)  # the crash loop runs on its own backoff
            assert "crash loop" in (await e.describe("n")).reason
            store.failing = False  # "the disk is fixed"
            [(code, out, _)] = await cli_process(["unblock", "n", "--data", str(data)])
            assert code == 0 and "queued unblock for n" in out
            assert await e.handle("n").result(timeout=5) == "woke up"
    finally:
        await store.aclose()


async def test_unblock_after_a_code_fix(tmp_path: Path) -> None:
    data = tmp_path / "data"
    BLOCK["on"] = True
    try:
        async with engine(data, inbox_interval=0.01) as e:
            await e.start(sometimes_blocks, workflow_id="b")
            await e.signal("b", "go")
            await e.wait_idle()
            assert (await e.describe("b")).status is aion.Status.BLOCKED
            BLOCK["on"] = False  # "the fix is deployed"
            [(code, _, _)] = await cli_process(["unblock", "b", "--data", str(data)])
            assert code == 0
            await applied(e)
            desc = await e.describe("b")
            assert (desc.status, desc.result) == (aion.Status.COMPLETED, "unblocked"), desc.reason
    finally:
        BLOCK["on"] = False


def test_json_output_when_run_as_a_module(data: Path) -> None:
    """``python -m aion.cli`` runs the module as ``__main__``: everything it uses must be defined
    before the entry point runs."""
    proc = subprocess.run(
        [sys.executable, "-m", "aion.cli", "approvals", "--data", str(data), "--json"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["items"]) == 4
