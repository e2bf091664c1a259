"""``pending_waitpoints`` (issue 11, item 12): a cursor only when more pending waitpoints
follow, creation order (``-w2`` before ``-w10``), and the id of the key that signed each token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import aion
from aion._codec import ENCODER
from aion.cli import main as cli
from aion.store import EventStore, LmdbStore, MemoryStore, WaitpointRow, WaitpointStatus, Write
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Tokens the workflows hand out through a step, by workflow id (the "outside system").
outbox: dict[str, list[str]] = {}


def send_token(token: str) -> None:
    outbox.setdefault(aion.current_step().workflow_id, []).append(token)


@aion.workflow
async def many(ctx: aion.Context, n: int) -> list[Any]:
    wps = [await ctx.waitpoint(f"wp-{i}") for i in range(n)]
    for wp in wps:
        await ctx.step(send_token, wp.token)
    return list(await ctx.gather(*(wp.wait() for wp in wps)))


@aion.workflow
async def one_then_another(ctx: aion.Context) -> list[Any]:
    first = await ctx.waitpoint("first")
    await ctx.step(send_token, first.token)
    await ctx.wait_signal("more")
    second = await ctx.waitpoint("second")
    await ctx.step(send_token, second.token)
    return [await first.wait(), await second.wait()]


ALL = [many, one_then_another]


@pytest.fixture(autouse=True)
def _clear_outbox() -> None:
    outbox.clear()


@pytest.fixture(params=["lmdb", "memory", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[aion.Engine]:
    with _postgres.target(request.param, tmp_path) as target:
        async with aion.Engine(target, workflows=ALL, clock=ManualClock(T0)) as e:
            yield e


async def started(engine: aion.Engine, n: int, workflow_id: str = "m") -> aion.WorkflowHandle:
    handle = await engine.start(many, n, workflow_id=workflow_id)
    await engine.wait_idle()
    return handle


async def pages(engine: aion.Engine, workflow_id: str, limit: int) -> list[list[str]]:
    """Every page of the run's pending waitpoints (names), following the cursors."""
    out: list[list[str]] = []
    cursor = None
    while True:
        page = await engine.pending_waitpoints(workflow_id, limit=limit, cursor=cursor)
        out.append([w.name for w in page.items])
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor
        assert len(out) < 100


# --- (a) a cursor only when more pending waitpoints follow ----------------------------------------


async def test_no_cursor_when_only_closed_waitpoints_follow(engine: aion.Engine) -> None:
    await started(engine, 3)
    await engine.complete_waitpoint(outbox["m"][2], "done")
    page = await engine.pending_waitpoints("m", limit=2)
    assert [w.name for w in page.items] == ["wp-0", "wp-1"]
    assert page.next_cursor is None


async def test_the_last_page_is_never_empty(engine: aion.Engine) -> None:
    await started(engine, 12)
    for token in outbox["m"][8:]:
        await engine.complete_waitpoint(token, None)
    assert await pages(engine, "m", 4) == [
        ["wp-0", "wp-1", "wp-2", "wp-3"], ["wp-4", "wp-5", "wp-6", "wp-7"],
    ]  # fmt: skip
    assert await pages(engine, "m", 8) == [[f"wp-{i}" for i in range(8)]]
    # Closed rows in the middle are skipped, not counted against the page.
    for i in (1, 2, 3, 5):
        await engine.complete_waitpoint(outbox["m"][i], None)
    assert await pages(engine, "m", 2) == [["wp-0", "wp-4"], ["wp-6", "wp-7"]]


async def test_no_cursor_when_nothing_is_pending(engine: aion.Engine) -> None:
    handle = await started(engine, 2)
    for token in outbox["m"]:
        await engine.complete_waitpoint(token, 1)
    assert await handle.result(timeout=5) == [1, 1]
    assert await engine.pending_waitpoints("m", limit=1) == aion.Page([], None)


# --- (b) creation order ---------------------------------------------------------------------------


async def test_waitpoints_list_in_creation_order(engine: aion.Engine) -> None:
    await started(engine, 12)
    names = [f"wp-{i}" for i in range(12)]
    page = await engine.pending_waitpoints("m")
    assert [w.name for w in page.items] == names
    ids = [w.waitpoint_id for w in page.items]
    assert [i.rsplit("-w", 1)[1] for i in ids] == [str(n) for n in range(1, 13)]
    assert [n for p in await pages(engine, "m", 5) for n in p] == names
    # Completions between page reads: no repeat, no skip of what stays pending.
    first = await engine.pending_waitpoints("m", limit=5)
    for i in (4, 9):  # the cursor's own row, and one not listed yet
        await engine.complete_waitpoint(outbox["m"][i], None)
    assert first.next_cursor is not None
    rest = await engine.pending_waitpoints("m", limit=100, cursor=first.next_cursor)
    assert [w.name for w in rest.items] == [f"wp-{i}" for i in (5, 6, 7, 8, 10, 11)]


async def test_waitpoint_ids_are_unchanged(engine: aion.Engine) -> None:
    # Ids are recorded in histories: replay must read the same ids (order is a view matter).
    await started(engine, 11)
    history = await engine.history("m")
    recorded = [e.data["waitpoint_id"] for e in history if e.type == "waitpoint.created"]
    run = (await engine.describe("m")).run_id
    assert recorded == [f"{run[:8]}-w{n}" for n in range(1, 12)]


@pytest.mark.parametrize("backend", ["lmdb", "memory"])
async def test_the_store_lists_pending_waitpoints_in_creation_order(
    backend: str, tmp_path: Path
) -> None:
    store: EventStore = LmdbStore(tmp_path / "s") if backend == "lmdb" else MemoryStore()
    try:
        ids = ["r-w1", "r-w2", "r-w3", "r-w9", "r-w10", "r-w11", "r-w20", "r-w100"]
        rows = [WaitpointRow("acme", "wf", i, "r", i, T0) for i in reversed(ids)]
        closed = WaitpointRow("acme", "wf", "r-w12", "r", "c", T0, WaitpointStatus.COMPLETED)
        other = WaitpointRow("other", "wf", "r-w4", "r", "x", T0)
        await store.commit(Write(waitpoints=[*rows, closed, other]))
        page = await store.pending_waitpoints("wf", tenant="acme", limit=100)
        assert [w.waitpoint_id for w in page.items] == ids and page.next_cursor is None
        seen: list[str] = []
        cursor = None
        while True:
            page = await store.pending_waitpoints("wf", tenant="acme", limit=3, cursor=cursor)
            assert page.items
            seen += [w.waitpoint_id for w in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == ids
        # A cursor is bound to its query.
        with pytest.raises(aion.errors.InvalidArgument):
            await store.pending_waitpoints("wf", tenant="other", limit=3, cursor=cursor or "x")
        with pytest.raises(aion.errors.InvalidArgument):
            await store.pending_waitpoints("wf", tenant="acme", limit=0)
        first = await store.pending_waitpoints("wf", tenant="acme", limit=3)
        assert first.next_cursor is not None
        with pytest.raises(aion.errors.InvalidArgument):
            await store.list_waitpoints("wf", tenant="acme", cursor=first.next_cursor)
    finally:
        await store.aclose()


# --- (c) the signing key's id ---------------------------------------------------------------------


async def test_entries_carry_the_signing_key_id(engine: aion.Engine) -> None:
    await started(engine, 2)
    page = await engine.pending_waitpoints("m")
    kids = [token.split(".")[1] for token in outbox["m"]]
    assert [w.token_kid for w in page.items] == kids
    assert kids[0]


async def test_the_waitpoint_row_keeps_the_key_id(engine: aion.Engine) -> None:
    # The list reads the kid from the row, not from the history.
    await started(engine, 2)
    tokens = outbox["m"]
    await engine.complete_waitpoint(tokens[1], None)
    rows = (await engine.store.list_waitpoints("m")).items
    assert [r.kid for r in rows] == [t.split(".")[1] for t in tokens]


async def test_key_ids_across_a_key_rotation(tmp_path: Path) -> None:
    path = tmp_path / "data"
    now = datetime.now(UTC)
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(now)) as e:
        await e.start(one_then_another, workflow_id="r")
        await e.wait_idle()
    assert cli(["keys", "rotate", "--data", str(path), "--grace", "3600"]) == 0
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(now)) as e:
        await e.signal("r", "more")
        await e.wait_idle()
        old, new = (token.split(".")[1] for token in outbox["r"])
        assert old != new
        page = await e.pending_waitpoints("r")
        assert [(w.name, w.token_kid) for w in page.items] == [("first", old), ("second", new)]


async def test_rows_written_before_the_key_id_was_kept_show_it(tmp_path: Path) -> None:
    # A waitpoint row of an older aion has no key id: the list takes it from the history.
    store = MemoryStore()
    async with aion.Engine(store, workflows=ALL, clock=ManualClock(T0)) as e:
        await started(e, 2)
        rows = (await store.list_waitpoints("m")).items
        legacy = [msgspec.structs.replace(r, kid="") for r in rows]
        await store.commit(Write(waitpoints=legacy))
        assert [r.kid for r in (await store.list_waitpoints("m")).items] == ["", ""]
        page = await e.pending_waitpoints("m")
        assert [w.token_kid for w in page.items] == [t.split(".")[1] for t in outbox["m"]]


def test_a_row_without_the_key_id_still_decodes() -> None:
    row = WaitpointRow("acme", "wf", "r-w1", "r", "cb", T0, kid="k1")
    short = ENCODER.encode(msgspec.msgpack.decode(ENCODER.encode(row))[:-1])
    assert msgspec.msgpack.decode(short, type=WaitpointRow) == msgspec.structs.replace(row, kid="")
