"""Several engines sharing one PostgreSQL schema (``?ownership=partitions``): each drives the
runs of its partitions, requests for the others' runs go through the inbox to their owner, a
parent and its children stay together, and partitions move when an engine joins or leaves.

In one process, two engines on the same schema; the real-process chaos test is
``test_postgres_chaos.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio
import pytest

import aion
from aion.errors import AionError
from tests import _postgres

pytest.importorskip("psycopg", reason="the PostgreSQL backend needs aion[postgres]")

LEASE = 1.5  # seconds: engines balance every half second


@pytest.fixture
def url() -> Iterator[str]:
    _postgres.require()
    with _postgres.fresh_schema() as schema:
        yield f"{_postgres.URL}?schema={schema}&ownership=partitions&partitions=8&lease_ttl={LEASE}"


async def double(n: int) -> int:
    return 2 * n


@aion.workflow
async def leaf(ctx: aion.Context, n: int) -> int:
    return int(await ctx.step(double, n))


@aion.workflow
async def family(ctx: aion.Context, n: int) -> dict[str, int]:
    doubled = await ctx.step(double, n)
    await ctx.sleep(timedelta(milliseconds=100))
    extra = await ctx.wait_signal("go")
    child = await ctx.child(leaf, n + 1)
    return {"doubled": doubled, "extra": extra, "child": child}


def engine(url: str) -> aion.Engine:
    return aion.Engine(url, workflows=[family, leaf], inbox_interval=5)


async def balanced(*engines: aion.Engine, timeout: float = 15) -> None:
    """Until every engine owns a share and together they own every partition once."""
    with anyio.fail_after(timeout):
        while True:
            owned = [set(e.store.owned_partitions()) for e in engines]  # type: ignore[attr-defined]
            together = set().union(*owned)
            if all(owned) and len(together) == 8 and sum(map(len, owned)) == 8:
                return
            await anyio.sleep(0.05)


def drivers(engines: list[aion.Engine], ids: list[str]) -> list[int]:
    """How many of ``ids`` each engine drives."""
    return [
        sum(e.store.partition_of(i) in e.store.owned_partitions() for i in ids)  # type: ignore[attr-defined]
        for e in engines
    ]


async def test_two_engines_share_the_runs_and_requests_reach_their_owner(url: str) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(engine(url))
        b = await stack.enter_async_context(engine(url))
        await balanced(a, b)
        ids = [f"order-{n}" for n in range(24)]
        assert all(drivers([a, b], ids)), "both engines drive some of the runs"
        # Every request goes through engine A: those for B's runs are queued for B.
        handles = [await a.start(family, n, workflow_id=i) for n, i in enumerate(ids)]
        for n, i in enumerate(ids):
            with anyio.fail_after(20):
                while "go" not in (await a.describe(i)).pending.get("signals", []):
                    await anyio.sleep(0.02)
            await a.signal(i, "go", 100 + n)
        with anyio.fail_after(30):
            results = [await h.result() for h in handles]
        assert results == [
            {"doubled": 2 * n, "extra": 100 + n, "child": 2 * (n + 1)} for n in range(24)
        ]
        # The children were driven with their parents (same partition, same engine).
        for i in ids:
            child = (await a.list(limit=100)).items
            assert any(d.workflow_id == f"{i}/child-1" for d in child)
            assert a.store.partition_of(f"{i}/child-1") == a.store.partition_of(i)  # type: ignore[attr-defined]


async def test_an_engine_that_leaves_hands_its_runs_over(url: str) -> None:
    async with engine(url) as a:
        b = engine(url)
        await b.__aenter__()
        try:
            await balanced(a, b)
            ids = [f"parked-{n}" for n in range(16)]
            handles = [await b.start(family, n, workflow_id=i) for n, i in enumerate(ids)]
            for i in ids:
                with anyio.fail_after(20):
                    while "go" not in (await a.describe(i)).pending.get("signals", []):
                        await anyio.sleep(0.02)
        finally:
            await b.__aexit__(None, None, None)  # a clean stop releases its partitions
        with anyio.fail_after(10):
            while len(a.store.owned_partitions()) < 8:  # type: ignore[attr-defined]
                await anyio.sleep(0.05)
        for n, i in enumerate(ids):
            await a.signal(i, "go", n)
        with anyio.fail_after(30):
            for n, i in enumerate(ids):
                assert (await a.handle(i).result())["extra"] == n
        assert len(handles) == 16


@aion.workflow
async def stray_parent(ctx: aion.Context, child_id: str) -> str:
    try:
        await ctx.child(leaf, 1, workflow_id=child_id)
    except AionError as exc:
        return str(exc)
    return "started"


async def test_a_child_with_an_id_in_another_partition_is_refused_clearly(url: str) -> None:
    async with aion.Engine(url, workflows=[stray_parent, leaf]) as a:
        store = a.store
        parent = "stray-1"
        other = next(
            f"elsewhere-{n}"
            for n in range(100)
            if store.partition_of(f"elsewhere-{n}") != store.partition_of(parent)  # type: ignore[attr-defined]
        )
        result = await (await a.start(stray_parent, other, workflow_id=parent)).result(timeout=10)
        assert "another partition" in result and repr(other) in result
        # An id that starts with the parent's and a default child's suffix is its partition.
        handle = await a.start(stray_parent, "stray-2/child-7", workflow_id="stray-2")
        assert await handle.result(timeout=10) == "started"
