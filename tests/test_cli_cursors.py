"""``--cursor`` of ``aion list`` and ``aion approvals`` cannot be forged (issue 12, item 1).

Two tenants with the same workflow ids in a real data directory. A forged (the unsigned format
of earlier versions, pointing into the other tenant's keys), truncated, bit-flipped, or
swapped-between-queries or -tenants cursor exits 1 with the refusal on stderr and prints no row.
The engine and the command line share the directory's cursor key: a cursor of one pages on in
the other. (``aion waitpoints`` takes no cursor: it reads every page itself.)
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import aion
from aion.cli import main
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TENANTS = ("A", "B")
REFUSED = "this cursor was not issued for this query"


@aion.workflow
async def expense(ctx: aion.Context, amount: int) -> aion.Approval:
    approval: aion.Approval = await ctx.approval("pay", details={"amount": amount})
    return approval


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"

    async def fill() -> None:
        clock = ManualClock(T0, auto_advance=True)
        async with aion.Engine(path, workflows=[expense], clock=clock) as engine:
            for tenant in TENANTS:
                for i in range(5):
                    amount = 100 * (TENANTS.index(tenant) + 1) + i
                    await engine.start(expense, amount, workflow_id=f"e{i}", tenant=tenant)
                    await engine.wait_idle()
                    clock.advance(1)

    anyio.run(fill)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def page(capsys: pytest.CaptureFixture[str], data: Path, *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv, "--json", "--data", str(data))
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def refused(capsys: pytest.CaptureFixture[str], data: Path, *argv: str) -> None:
    for json_flag in ((), ("--json",)):
        code, out, err = run(capsys, *argv, *json_flag, "--data", str(data))
        assert (code, out) == (1, ""), out
        assert err.startswith(f"aion: {REFUSED}"), err


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


#: The paged commands, as argv without the cursor, two rows a page.
COMMANDS = {
    "approvals": ["approvals", "--limit", "2"],
    "list": ["list", "--limit", "2"],
    "list status": ["list", "--limit", "2", "--status", "running"],
    "list type": ["list", "--limit", "2", "--type", "expense"],
}


def test_the_forged_cursor_of_the_issue_is_refused(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    forged = b64(msgspec.msgpack.encode([1, ["approvals_pending", "B"], b"A\x00"]))
    refused(capsys, data, "approvals", "--tenant", "B", "--cursor", forged)
    listing = b64(msgspec.msgpack.encode([1, ["workflows", "B", None, None, None, None], b"C"]))
    refused(capsys, data, "list", "--tenant", "B", "--cursor", listing)


def test_pages_follow_inside_their_tenant(capsys: pytest.CaptureFixture[str], data: Path) -> None:
    for tenant in TENANTS:
        for argv in COMMANDS.values():
            result = page(capsys, data, *argv, "--tenant", tenant)
            items: list[Any] = result["items"]
            while result["next_cursor"] is not None:
                cursor: str = result["next_cursor"]
                result = page(capsys, data, *argv, "--tenant", tenant, "--cursor", cursor)
                items += result["items"]
            assert len(items) == 5 and {item["tenant"] for item in items} == {tenant}


def test_the_more_hint_pages_on_and_only_in_its_tenant(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    code, out, _ = run(capsys, "approvals", "--tenant", "A", "--limit", "2", "--data", str(data))
    assert code == 0
    [hint] = [line for line in out.splitlines() if line.startswith("more: ")]
    argv = shlex.split(hint.removeprefix("more: "))[1:]
    code, out, _ = run(capsys, *argv)
    # Whole words: the approval ids beside them are hex digits, which may hold "e0".
    assert code == 0 and re.search(r"\be2\b", out) and not re.search(r"\be0\b", out)
    cursor = argv[argv.index("--cursor") + 1]
    refused(capsys, data, "approvals", "--tenant", "B", "--limit", "2", "--cursor", cursor)


def test_swapped_truncated_and_flipped_cursors_are_refused(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    issued = {
        (name, tenant): page(capsys, data, *argv, "--tenant", tenant)["next_cursor"]
        for name, argv in COMMANDS.items()
        for tenant in TENANTS
    }
    for (name, tenant), argv in ((k, COMMANDS[k[0]]) for k in issued):
        for source, cursor in issued.items():
            if source != (name, tenant):
                refused(capsys, data, *argv, "--tenant", tenant, "--cursor", cursor)
        cursor = issued[name, tenant]
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0x10
        for bad in (cursor[:-1], cursor[: len(cursor) // 2], b64(bytes(flipped)), cursor + "x"):
            refused(capsys, data, *argv, "--tenant", tenant, "--cursor", bad)


def test_engine_and_command_line_share_the_cursor_key(
    capsys: pytest.CaptureFixture[str], data: Path
) -> None:
    async def from_engine() -> str | None:
        async with aion.Engine(data, workflows=[expense]) as engine:
            return (await engine.pending_approvals(tenant="B", limit=2)).next_cursor

    cursor = anyio.run(from_engine)
    assert cursor is not None
    result = page(capsys, data, "approvals", "--tenant", "B", "--limit", "2", "--cursor", cursor)
    assert [item["details"]["amount"] for item in result["items"]] == [202, 203]
    following = result["next_cursor"]

    async def in_engine() -> list[Any]:
        async with aion.Engine(data, workflows=[expense]) as engine:
            found = await engine.pending_approvals(tenant="B", limit=2, cursor=following)
            return [p.details["amount"] for p in found.items]

    assert anyio.run(in_engine) == [204]
