"""Partitions, leases and fencing on a shared PostgreSQL store (``ownership="partitions"``):
deterministic tests of the takeover races, with two stores standing for two engines.

Engine A pauses inside a batch (a write hook holds its writer after the fence check, with the
partition's row locked) while engine B takes the partition over: A's batch either commits
before the takeover or fails with nothing written, A's next write fails with PartitionLost,
and the history stays contiguous.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from aion.errors import (
    InvalidArgument,
    PartitionLost,
    SequenceConflict,
    StoreError,
    StoreLocked,
)
from aion.store import Append, Write, WriteHook
from tests import _postgres

from ._util import signal, started

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL backend needs aion[postgres]")


@pytest.fixture
def url() -> Iterator[str]:
    with _postgres.fresh_schema() as schema:
        yield f"{_postgres.URL}?schema={schema}"


def engine(url: str, name: str, **options: Any) -> Any:
    from aion.store import PostgresStore

    options.setdefault("partitions", 8)
    return PostgresStore(url, ownership="partitions", engine_id=name, lease_ttl=30, **options)


def expire(url: str, name: str) -> None:
    """End engine ``name``'s lease now (as if it had stopped renewing it)."""
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(_postgres.URL, autocommit=True) as conn:
        conn.execute(
            f"UPDATE \"{schema}\".engines SET lease_until = now() - interval '1 second' "
            "WHERE id = %s",
            (name,),
        )


def waiting_locks() -> int:
    with psycopg.connect(_postgres.URL, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
    return int(row[0]) if row else 0


class Pause(WriteHook):
    """Holds the writer inside its next transaction, after the fence check and every row,
    just before the commit, until ``go`` is set."""

    def __init__(self) -> None:
        self.armed = True
        self.paused = threading.Event()
        self.go = threading.Event()

    def before_commit(self, writes: int) -> None:
        if self.armed:
            self.armed = False
            self.paused.set()
            self.go.wait(30)


async def test_engines_share_the_partitions_fairly(url: str) -> None:
    a, b = engine(url, "A"), engine(url, "B")
    try:
        a.balance()  # both have leases: A's share is half, but nobody else owns any yet
        b.balance()
        a.balance()
        b.balance()
        owned_a, owned_b = a.owned_partitions(), b.owned_partitions()
        assert len(owned_a) == len(owned_b) == 4
        assert set(owned_a) | set(owned_b) == set(range(8))
        assert not set(owned_a) & set(owned_b)
    finally:
        a.close()
        b.close()


async def test_a_write_to_a_lost_partition_fails_and_writes_nothing(url: str) -> None:
    a, b = engine(url, "A"), engine(url, "B")
    try:
        a.claim(range(8))
        p = a.partition_of("w")
        fence = a.owned_partitions()[p]
        await a.commit(Write(appends=[Append("w", [started(1, "w")], 0)]))
        assert b.claim([p]) == (set(), set())  # A's lease runs: B takes nothing
        expire(url, "A")
        gained, _ = b.claim([p])
        assert gained == {p} and b.owned_partitions()[p] == fence + 1
        with pytest.raises(PartitionLost, match="another engine took it over"):
            await a.commit(Write(appends=[Append("w", [signal(2)], 1)]))
        assert p not in a.owned_partitions()  # A learns it lost the partition
        # Another partition's write of A in the same batch would still go in; B goes on
        # from the head A left, so the history stays contiguous.
        assert await b.head("w") == 1
        await b.commit(Write(appends=[Append("w", [signal(2)], 1)]))
        assert [e.seq for e in await b.read_history("w")] == [1, 2]
    finally:
        a.close()
        b.close()


async def test_without_fencing_a_stale_owner_writes_after_the_takeover(url: str) -> None:
    """The negative control: the same takeover with the fence check switched off lets the old
    owner's write in after the new owner's, and the history forks from what B drives."""
    a, b = engine(url, "A"), engine(url, "B")
    try:
        a.claim(range(8))
        p = a.partition_of("w")
        await a.commit(Write(appends=[Append("w", [started(1, "w")], 0)]))
        expire(url, "A")
        assert b.claim([p])[0] == {p}
        a._fencing = False
        await a.commit(Write(appends=[Append("w", [signal(2, "stale")], 1)]))  # lands
        with pytest.raises(StoreError):  # B's own next write now conflicts
            await b.commit(Write(appends=[Append("w", [signal(2, "b")], 1)]))
    finally:
        a.close()
        b.close()


async def test_a_batch_in_flight_commits_before_the_takeover(url: str) -> None:
    a, b = engine(url, "A"), engine(url, "B")
    pause = Pause()
    try:
        a.claim(range(8))
        p = a.partition_of("w")
        await a.commit(Write(appends=[Append("w", [started(1, "w")], 0)]))
        a.set_write_hook(pause)
        outcome: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def a_writes() -> None:
                outcome.append(await a.commit(Write(appends=[Append("w", [signal(2)], 1)])))

            tg.start_soon(a_writes)
            await anyio.to_thread.run_sync(pause.paused.wait)
            expire(url, "A")
            before = waiting_locks()
            claimed: list[Any] = []
            takeover = threading.Thread(target=lambda: claimed.append(b.claim([p])))
            takeover.start()
            with anyio.fail_after(10):  # B's claim waits on the row A's batch locked
                while waiting_locks() == before:
                    await anyio.sleep(0.005)
            pause.go.set()  # A's batch commits first, within B's wait
            await anyio.to_thread.run_sync(takeover.join)
        assert outcome[0].heads == (2,)
        assert claimed == [({p}, set())]
        assert await b.head("w") == 2  # the new owner sees the batch that committed before
        with pytest.raises(PartitionLost):
            await a.commit(Write(appends=[Append("w", [signal(3)], 2)]))
        await b.commit(Write(appends=[Append("w", [signal(3)], 2)]))
        assert [e.seq for e in await b.read_history("w")] == [1, 2, 3]
    finally:
        pause.go.set()
        a.close()
        b.close()


async def test_a_batch_paused_past_its_lease_is_rolled_back_by_the_takeover(url: str) -> None:
    a, b = engine(url, "A"), engine(url, "B")
    pause = Pause()
    try:
        a.claim(range(8))
        p = a.partition_of("w")
        await a.commit(Write(appends=[Append("w", [started(1, "w")], 0)]))
        a.set_write_hook(pause)
        outcome: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def a_writes() -> None:
                try:
                    outcome.append(await a.commit(Write(appends=[Append("w", [signal(2)], 1)])))
                except StoreError as exc:
                    outcome.append(exc)

            tg.start_soon(a_writes)
            await anyio.to_thread.run_sync(pause.paused.wait)
            expire(url, "A")
            # A stays paused (a SIGSTOPped process): B's claim gives up waiting, terminates
            # A's writer session (its transaction rolls back) and takes the partition.
            gained, _ = await anyio.to_thread.run_sync(lambda: b.claim([p]))
            assert gained == {p}
            assert await b.head("w") == 1  # nothing of A's batch
            pause.go.set()  # A wakes up, on a dead connection
        assert isinstance(outcome[0], StoreError)  # not recorded, and A cannot know that
        assert "may or may not have been recorded" in str(outcome[0])
        assert await b.head("w") == 1
        with pytest.raises(PartitionLost):  # A's next write, on a new connection
            await a.commit(Write(appends=[Append("w", [signal(2)], 1)]))
        await b.commit(Write(appends=[Append("w", [signal(2)], 1)]))
        assert [e.seq for e in await b.read_history("w")] == [1, 2]
    finally:
        pause.go.set()
        a.close()
        b.close()


async def test_renewing_the_lease_does_not_wait_behind_a_batch(url: str) -> None:
    a = engine(url, "A")
    pause = Pause()
    try:
        a.claim(range(8))
        a.set_write_hook(pause)
        async with anyio.create_task_group() as tg:

            async def a_writes() -> None:
                await a.commit(Write(appends=[Append("w", [started(1, "w")], 0)]))

            tg.start_soon(a_writes)
            await anyio.to_thread.run_sync(pause.paused.wait)
            # The batch holds its partitions' rows; the lease is a row of its own.
            with anyio.fail_after(10):
                await anyio.to_thread.run_sync(a.renew_lease)
                gained, lost = await anyio.to_thread.run_sync(a.balance)
            assert (gained, lost) == (set(), set())
            pause.go.set()
        assert await a.head("w") == 1
    finally:
        pause.go.set()
        a.close()


async def test_a_clean_close_hands_the_partitions_over_at_once(url: str) -> None:
    a = engine(url, "A")
    a.claim(range(8))
    a.close()
    b = engine(url, "B")
    try:
        gained, _ = b.balance()  # no lease to wait for: A released them
        assert gained == set(range(8))
    finally:
        b.close()


def test_ownership_arguments_are_checked(url: str) -> None:
    from aion.store import PostgresStore

    for options, match in [
        ({"ownership": "shared"}, "ownership must be"),
        ({"ownership": "partitions", "partitions": 0}, "partitions must be"),
        ({"ownership": "partitions", "partitions": True}, "partitions must be"),
        ({"ownership": "partitions", "lease_ttl": 0}, "lease_ttl"),
        ({"ownership": "partitions", "engine_id": ""}, "engine_id"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            PostgresStore(url, **options)
    engine(url, "A").close()
    with pytest.raises(InvalidArgument, match="made with 8 partitions"):
        engine(url, "B", partitions=16)
    with PostgresStore(url) as locked, pytest.raises(InvalidArgument, match="ownership="):
        locked.balance()


async def test_a_partition_lost_and_regained_trusts_no_head_it_knew(url: str) -> None:
    # Review finding: heads remembered before the loss would let a stale append in after the
    # partition came back. With partitions nothing is remembered across batches.
    a, b = engine(url, "A"), engine(url, "B")
    try:
        a.claim(range(8))
        p = a.partition_of("w")
        await a.commit(Write(appends=[Append("w", [started(1, "w")], 0)]))
        expire(url, "A")
        assert b.claim([p])[0] == {p}
        with pytest.raises(PartitionLost):
            await a.commit(Write(appends=[Append("w", [signal(2, "a")], 1)]))
        await b.commit(Write(appends=[Append("w", [signal(2, "b")], 1)]))
        await b.commit(Write(appends=[Append("w", [signal(3, "b")], 2)]))
        expire(url, "B")
        assert a.claim([p])[0] == {p}
        with pytest.raises(SequenceConflict):  # A's idea of the head (1) is stale
            await a.commit(Write(appends=[Append("w", [signal(2, "stale")], 1)]))
        assert [getattr(e, "name", None) for e in await a.read_history("w")] == [None, "b", "b"]
    finally:
        a.close()
        b.close()


async def test_releasing_partitions_does_not_deadlock_with_a_batch_holding_them(
    url: str,
) -> None:
    # Review finding: balance() held the ownership lock while its release waited for a
    # batch's row lock, and the batch waited for that lock to check its fences.
    a = engine(url, "A")
    pause = Pause()
    try:
        a.claim(range(8))
        b = engine(url, "B")  # a second live engine: A's fair share drops to 4
        try:
            wf = next(f"w{i}" for i in range(100) if a.partition_of(f"w{i}") >= 4)
            a.set_write_hook(pause)
            async with anyio.create_task_group() as tg:

                async def a_writes() -> None:
                    await a.commit(Write(appends=[Append(wf, [started(1, wf)], 0)]))

                tg.start_soon(a_writes)
                await anyio.to_thread.run_sync(pause.paused.wait)  # the batch holds its row
                with anyio.fail_after(20):
                    _, lost = await anyio.to_thread.run_sync(a.balance)
                    # The partition held by the batch stays A's for now; the others go.
                    assert a.partition_of(wf) not in lost
                    pause.go.set()
            assert await a.head(wf) == 1
            with anyio.fail_after(20):
                await anyio.to_thread.run_sync(a.balance)
            assert len(a.owned_partitions()) == 4
        finally:
            b.close()
    finally:
        pause.go.set()
        a.close()


async def test_a_refused_commit_on_a_live_connection_records_nothing_and_the_next_goes_in(
    url: str,
) -> None:
    # Review finding: an error the server reports in the commit's round trip (here: a lock
    # timeout on a row another transaction holds) was taken for a lost connection, "outcome
    # unknown", and left the transaction open, failing the next write too.
    from aion.store import PostgresStore
    from aion.store import _keys as k

    store = PostgresStore(url)
    schema = url.rsplit("schema=", 1)[1]

    class ShortLockWait(WriteHook):
        def before_commit(self, writes: int) -> None:
            conn = store._wconn
            assert conn is not None
            conn.execute("SET LOCAL lock_timeout = '50ms'")

    try:
        with psycopg.connect(_postgres.URL) as other:  # holds the row the batch will write
            other.execute(
                f'INSERT INTO "{schema}".events (k, v) VALUES (%s, %s)',
                (k.seq_key(k.workflow_key("default", "u"), 1), b"x"),
            )
            store.set_write_hook(ShortLockWait())
            with pytest.raises(StoreError, match="Nothing of this write was recorded"):
                await store.commit(Write(appends=[Append("u", [started(1, "u")], 0)]))
            store.set_write_hook(None)
            other.rollback()
        assert await store.head("u") == 0
        result = await store.commit(Write(appends=[Append("u", [started(1, "u")], 0)]))
        assert result.heads == (1,)
    finally:
        store.close()


def test_a_store_that_fails_to_open_leaves_no_lease_or_connection(url: str) -> None:
    # Review finding: a failed open after the lease was taken left a live phantom engine.
    from aion.store import PostgresStore

    engine(url, "A").close()
    schema = url.rsplit("schema=", 1)[1]
    with pytest.raises(InvalidArgument, match="made with 8 partitions"):
        engine(url, "B", partitions=16)
    # An engine alone on the schema: B cannot join, and leaves nothing behind.
    with PostgresStore(url, lock_wait=0.05), pytest.raises(StoreLocked):
        PostgresStore(url, ownership="partitions", engine_id="B", lock_wait=0.05)
    with PostgresStore(url, ownership="partitions", engine_id="C", lease_ttl=30):
        with psycopg.connect(_postgres.URL, autocommit=True) as conn:
            rows = conn.execute(f'SELECT id FROM "{schema}".engines ORDER BY id').fetchall()
        assert rows == [("C",)]  # no phantom lease of B
