"""A child that starts a child of its own in its first round (a -> b -> c): the grandchild is
recorded in the same write as its parent and grandparent, runs, and reports up the chain; a
grandchild whose id is taken is refused to its own parent, not started."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import aion
from aion.store import LmdbStore, MemoryStore
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@aion.workflow
async def chain(ctx: aion.Context, depth: int, prefix: str) -> str:
    if depth == 0:
        await ctx.sleep(1)  # the leaf waits on a timer: its row is written with the chain
        return "leaf"
    below = await ctx.child(chain, depth - 1, prefix, workflow_id=f"{prefix}{depth - 1}")
    return f"{depth}<{below}"


@aion.workflow
async def taken_below(ctx: aion.Context) -> str:
    try:
        return await ctx.child(chain, 0, "x", workflow_id="occupied")
    except aion.WorkflowFailed as exc:
        return f"refused: {exc}"


@pytest.fixture(params=["memory", "lmdb", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    if request.param == "postgres":
        with _postgres.store() as store:
            yield store
        return
    yield MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "d")


async def test_a_chain_of_first_round_children_is_recorded_and_runs(target: object) -> None:
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(target, workflows=[chain], clock=clock) as engine:  # type: ignore[arg-type]
        handle = await engine.start(chain, 3, "n", workflow_id="n3")
        assert await handle.result(timeout=10) == "3<2<1<leaf"
        for child, parent in (("n2", "n3"), ("n1", "n2"), ("n0", "n1")):
            desc = await engine.describe(child)
            assert desc.status is aion.Status.COMPLETED
            assert desc.parent_workflow_id == parent


async def test_a_grandchild_with_a_taken_id_is_refused_to_its_parent() -> None:
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(MemoryStore(), workflows=[chain, taken_below], clock=clock) as engine:
        await (await engine.start(chain, 0, "o", workflow_id="occupied")).result(timeout=10)

        @aion.workflow(name="outer")
        async def outer(ctx: aion.Context) -> str:
            return await ctx.child(taken_below, workflow_id="middle")

        handle = await engine.start(outer, workflow_id="top")
        result = await handle.result(timeout=10)
        assert result.startswith("refused: ") and "'occupied' is already in use" in result
