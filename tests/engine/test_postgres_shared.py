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


async def test_runs_that_move_to_a_joining_engine_finish_there_and_results_reach_a(
    url: str,
) -> None:
    async with engine(url) as a:
        ids = [f"moving-{n}" for n in range(16)]
        handles = [await a.start(family, n, workflow_id=i) for n, i in enumerate(ids)]
        for i in ids:  # all parked in A's memory, waiting for the signal
            with anyio.fail_after(20):
                while "go" not in (await a.describe(i)).pending.get("signals", []):
                    await anyio.sleep(0.02)
        async with engine(url) as b:
            await balanced(a, b)
            moved = [i for i in ids if b.store.partition_of(i) in b.store.owned_partitions()]  # type: ignore[attr-defined]
            assert moved, "some of the runs moved to B"
            for n, i in enumerate(ids):
                await a.signal(i, "go", n)
            with anyio.fail_after(30):
                results = [await h.result() for h in handles]  # A's handles, B's runs too
            assert [r["extra"] for r in results] == list(range(16))
            assert a.failure is None and b.failure is None


async def test_starts_from_the_inbox_survive_partitions_moving_under_them(url: str) -> None:
    """Starts queued by a Client while another engine joins and leaves again and again: the
    inbox service never fails (a start whose partition moved stays in the inbox for the new
    owner), and every run is started once."""
    async with engine(url) as a, aion.Client(url) as client:
        ids = [f"queued-{n}" for n in range(300)]

        async def queue() -> None:
            for n, i in enumerate(ids):
                await client.start("leaf", n, workflow_id=i)

        async with anyio.create_task_group() as tg:
            tg.start_soon(queue)
            for _ in range(3):
                async with engine(url) as b:
                    await balanced(a, b)
                    assert b.failure is None
        with anyio.fail_after(60):
            results = [await client.handle(i).result() for i in ids]
        assert results == [2 * n for n in range(300)]
        assert a.failure is None


async def test_a_start_whose_partition_was_just_taken_stays_queued_for_the_new_owner(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Engine A still believes it owns a partition that another engine has just claimed (A's
    lease ran out): A's inbox service tries a start there, the write is fenced out, and the
    command stays in the inbox (the service does not crash); the new owner starts it."""
    import psycopg

    from aion.store import PostgresStore

    schema = url.split("schema=", 1)[1].split("&", 1)[0]
    async with engine(url) as a:
        store = a.store
        partition = store.partition_of("taken-1")  # type: ignore[attr-defined]
        with psycopg.connect(_postgres.URL, autocommit=True) as conn:
            conn.execute(
                f"UPDATE \"{schema}\".engines SET lease_until = now() - interval '1 second'"
            )
        thief = PostgresStore(url, engine_id="thief")
        try:
            assert thief.claim([partition])[0] == {partition}
            async with aion.Client(url) as client:
                await client.start("leaf", 5, workflow_id="taken-1")
                with anyio.fail_after(10):
                    while a.store.partition_of("taken-1") in a.store.owned_partitions():  # type: ignore[attr-defined]
                        await anyio.sleep(0.01)
                assert await client.store.inbox_pending(
                    [c.command_id for c in await client.store.read_inbox(limit=10)]
                ), "the start waits in the inbox for the partition's owner"
                assert not [r for r in caplog.records if "crashed" in r.getMessage()]
                assert a.failure is None
        finally:
            thief.close()  # releases the partition: A takes it back and starts the run
        async with aion.Client(url) as client:
            assert await client.handle("taken-1").result(timeout=20) == 10


async def test_an_engine_makes_up_ids_in_partitions_it_drives(url: str) -> None:
    async with engine(url) as a, engine(url) as b:
        await balanced(a, b)
        for e in (a, b):
            handles = [await e.start(leaf, n) for n in range(20)]
            owned = e.store.owned_partitions()  # type: ignore[attr-defined]
            assert all(e.store.partition_of(h.workflow_id) in owned for h in handles)  # type: ignore[attr-defined]
            assert [await h.result(timeout=20) for h in handles] == [2 * n for n in range(20)]
