"""One undecodable row does not stop the engine or the CLI (issue 12, item 8).

Rows are damaged in a real LMDB file, byte for byte, as a disk or a foreign writer would. The
engine still starts and serves every other run; the damaged projection row is moved aside and
rebuilt from the run's history (the run parked BLOCKED, then retried like every blocked run); a
damaged timer row is rebuilt from its key; ``aion list`` skips what it cannot read; ``aion
recover`` reports every damaged row and ``--apply`` quarantines them.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import anyio
import lmdb
import pytest

import aion
from aion.cli import main
from aion.store import InboxCommand, LmdbStore
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GARBAGE = b"\xc1\xc1 not msgpack"


@aion.workflow
async def waits(ctx: aion.Context) -> str:
    return await ctx.wait_signal("go")


@aion.workflow
async def naps(ctx: aion.Context) -> str:
    await ctx.sleep(3600)
    return "rested"


@aion.workflow
async def quick(ctx: aion.Context) -> str:
    return "done"


ALL = [waits, naps, quick]


def engine(data: Path, clock: ManualClock | None = None) -> aion.Engine:
    return aion.Engine(data, workflows=ALL, clock=clock or ManualClock(T0))


async def prepare(data: Path) -> None:
    async with engine(data) as e:
        await e.start(waits, workflow_id="a")
        await e.signal("a", "go", "early")  # buffered? no: a waits, so this completes it
        await e.start(waits, workflow_id="b")
        await e.start(naps, workflow_id="n")
        await e.start(quick, workflow_id="q")
        await e.wait_idle()
        await e.store.put_inbox(InboxCommand("signal", "default", "b", T0, name="other"))


def damage(data: Path, table: str, contains: bytes) -> bytes:
    """Overwrite the first row of ``table`` whose key contains ``contains`` with garbage."""
    env = lmdb.open(str(data), subdir=True, max_dbs=32, lock=False)
    try:
        db = env.open_db(table.encode(), create=False)
        with env.begin(write=True, db=db) as txn:
            for key, _ in txn.cursor():
                if contains in key:
                    txn.put(key, GARBAGE)
                    return bytes(key)
    finally:
        env.close()
    raise AssertionError(f"no {table} row with {contains!r}")


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    anyio.run(prepare, data)
    damage(data, "workflows", b"\x00b")  # b's projection row
    damage(data, "timers", b"\x00n\x00")  # n's timer row
    damage(data, "inbox", b"")  # the one inbox command
    return data


def test_the_cli_lists_what_it_can_read(damaged: Path) -> None:
    code, out = cli("list", "--data", str(damaged), "--json")
    assert code == 0
    ids = {item["workflow_id"] for item in json.loads(out)["items"]}
    assert ids == {"a", "n", "q"}


def test_recover_reports_every_damaged_row_and_apply_quarantines_them(damaged: Path) -> None:
    code, out = cli("recover", "--data", str(damaged))
    assert code == 0
    assert out.count("quarantine:") == 3, out
    assert "workflows" in out and "timers" in out and "inbox" in out
    code, out = cli("recover", "--data", str(damaged), "--apply")
    assert code == 0 and out.count("quarantine:") == 3
    code, out = cli("recover", "--data", str(damaged))
    assert "quarantine" not in out  # nothing left to quarantine

    async def check() -> None:
        store = LmdbStore(damaged, role="client")
        try:
            rows = await store.scan_index("quarantine", tenant="*")
            assert len(rows.items) == 3
            assert all(r.value == GARBAGE for r in rows.items)
        finally:
            await store.aclose()

    anyio.run(check)


async def test_the_engine_starts_and_serves_every_run(damaged: Path) -> None:
    clock = ManualClock(T0)
    async with engine(damaged, clock) as e:
        assert [r.kind for r in e.recovery.repairs].count("quarantine") == 3
        await e.wait_idle()
        # b's row was rebuilt from its history, parked BLOCKED, retried and runs again.
        desc = await e.describe("b")
        assert desc.status is aion.Status.RUNNING, desc
        await e.signal("b", "go", "after")
        assert await e.handle("b").result(timeout=5) == "after"
        # n's timer row was rebuilt from its key: the timer still fires.
        clock.advance(3600)
        assert await e.handle("n").result(timeout=5) == "rested"
        assert await e.handle("a").result(timeout=5) == "early"
        await e.start(quick, workflow_id="fresh")
        assert await e.handle("fresh").result(timeout=5) == "done"
        listed = {d.workflow_id for d in (await e.list()).items}
        assert listed == {"a", "b", "n", "q", "fresh"}
        assert len((await e.list(status=aion.Status.COMPLETED)).items) == 5
