"""The write hook (``aion.store.WriteHook``) and ForwardingStore: the seams fault tests use.

- Every boundary of a write is called, in order, on both backends; a followed write's rows are
  the same on both (each one a ``before_kv_write``); writes the hook does not follow get no
  per-row calls.
- Raising at each boundary leaves what the hook's documentation says: nothing (before the
  commit), everything (after it: a lost acknowledgement); the store goes on working.
- On LMDB a failed commit (an fsync error, a full disk) and a full map can be simulated before
  the commit; a hook that raises before a transaction is the writer's own failure.
- ForwardingStore forwards every protocol method through ``forward()``, and the rest as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import lmdb
import pytest

from aion.errors import StoreError, StoreFull
from aion.store import (
    Append,
    EventStore,
    ForwardingStore,
    IndexRow,
    LmdbStore,
    MemoryStore,
    TimerRow,
    Write,
    WriteHook,
    WriteInfo,
    WriteProbe,
)
from aion.store._forwarding import _forwarder, protocol_methods
from tests import _postgres

from ._util import at, record, signal, started


@pytest.fixture(params=["memory", "lmdb", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "postgres":
        with _postgres.store() as pg:
            yield pg
        return
    s: MemoryStore | LmdbStore = (
        MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "data")
    )
    try:
        yield s
    finally:
        await s.aclose()


def big_write() -> Write:
    return Write(
        appends=[Append("a", [signal(2)], 1), Append("b", [started(workflow_id="b")], 0)],
        workflows=[record("b")],
        timers_add=[TimerRow(at(5), "default", "b", "t")],
        index_put=[IndexRow("orders", "default", "k", b"v")],
    )


class Recorder(WriteHook):
    """Records every call; follows the writes that append to a workflow in ``follow``."""

    def __init__(self, follow: frozenset[str] = frozenset({"b"})) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.follow = follow

    def begin_write(self, write: WriteInfo) -> WriteProbe | None:
        self.calls.append(("begin_write", write.appends))
        if not any(w in self.follow for _, w in write.appends):
            return None
        return RecordingProbe(self.calls)

    def before_transaction(self, writes: int) -> None:
        self.calls.append(("before_transaction", writes))

    def before_commit(self, writes: int) -> None:
        self.calls.append(("hook.before_commit", writes))


class RecordingProbe(WriteProbe):
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    def before_apply(self, batch: int) -> None:
        self.calls.append(("before_apply", batch))

    def before_kv_write(self, op: Literal["put", "delete"], table: str, key: bytes) -> None:
        self.calls.append((op, table, key))

    def before_commit(self) -> None:
        self.calls.append(("probe.before_commit",))

    def after_commit(self) -> None:
        self.calls.append(("after_commit",))


async def boundaries(store: MemoryStore | LmdbStore) -> list[tuple[Any, ...]]:
    await store.append("a", [started(workflow_id="a")], 0)
    hook = Recorder()
    assert store.set_write_hook(hook) is None
    await store.commit(big_write())
    await store.append("a", [signal(3)], 2)  # not followed: no per-row calls
    assert store.set_write_hook(None) is hook
    return hook.calls


async def test_every_boundary_is_called_in_order_and_the_rows_match(tmp_path: Path) -> None:
    memory = MemoryStore()
    on_memory = await boundaries(memory)
    async with LmdbStore(tmp_path / "d") as lmdb_store:
        on_lmdb = await boundaries(lmdb_store)
    assert on_memory == on_lmdb
    rows = on_memory[3:-6]
    assert on_memory[:3] == [
        ("begin_write", (("default", "a"), ("default", "b"))),
        ("before_transaction", 1),
        ("before_apply", 1),
    ]
    assert {(op, table) for op, table, _ in rows} >= {
        ("put", t) for t in ("events", "heads", "runs", "workflows", "timers", "index")
    }
    assert on_memory[-6:-3] == [
        ("probe.before_commit",),
        ("hook.before_commit", 1),
        ("after_commit",),
    ]
    assert on_memory[-3:] == [
        ("begin_write", (("default", "a"),)),
        ("before_transaction", 1),
        ("hook.before_commit", 1),
    ]


class Boom(Exception):
    pass


class RaiseAt(WriteHook):
    """Raises :class:`Boom` at one boundary of every write (``kv:N``: before the N+1th row)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def begin_write(self, write: WriteInfo) -> WriteProbe | None:
        if self.where == "begin_write":
            raise Boom(self.where)
        return RaisingProbe(self.where)

    def before_commit(self, writes: int) -> None:
        if self.where == "hook.before_commit":
            raise Boom(self.where)


class RaisingProbe(WriteProbe):
    def __init__(self, where: str) -> None:
        self.where = where
        self.rows = 0

    def before_apply(self, batch: int) -> None:
        self.rows = 0
        if self.where == "before_apply":
            raise Boom(self.where)

    def before_kv_write(self, op: Literal["put", "delete"], table: str, key: bytes) -> None:
        if self.where == f"kv:{self.rows}":
            raise Boom(self.where)
        self.rows += 1

    def before_commit(self) -> None:
        if self.where == "probe.before_commit":
            raise Boom(self.where)

    def after_commit(self) -> None:
        if self.where == "after_commit":
            raise Boom(self.where)


async def state(store: EventStore) -> tuple[Any, ...]:
    return (
        await store.head("a"),
        await store.head("b"),
        await store.get_workflow("b"),
        await store.due_timers(at(10)),
        (await store.scan_index("orders")).items,
    )


@pytest.mark.parametrize(
    "where",
    ["begin_write", "before_apply", "kv:0", "kv:5", "probe.before_commit", "after_commit"],
)
async def test_raising_at_a_boundary_leaves_all_or_nothing(store: Any, where: str) -> None:
    await store.append("a", [started(workflow_id="a")], 0)
    before = await state(store)
    store.set_write_hook(RaiseAt(where))
    with pytest.raises(Boom, match=where):
        await store.commit(big_write())
    store.set_write_hook(None)
    write = big_write()
    after = (2, 1, record("b"), list(write.timers_add), list(write.index_put))
    if where == "after_commit":  # a lost acknowledgement: recorded, the caller not told
        assert await state(store) == after
    else:
        assert await state(store) == before
        await store.commit(write)  # the store goes on: the write can be made again
        assert await state(store) == after
    assert await store.append("a", [signal(3)], 2) == 3


async def test_a_failed_commit_on_memory_writes_nothing() -> None:
    store = MemoryStore()
    await store.append("a", [started(workflow_id="a")], 0)
    store.set_write_hook(RaiseAt("hook.before_commit"))
    with pytest.raises(Boom):
        await store.commit(big_write())
    store.set_write_hook(None)
    assert await store.head("b") == 0
    assert await store.due_timers(at(10)) == []


class FailingCommit(WriteHook):
    """Raises ``error`` before the next ``times`` commits (a failing fsync, a full disk)."""

    def __init__(self, error: Exception, times: int = 1) -> None:
        self.error = error
        self.times = times
        self.commits = 0

    def before_commit(self, writes: int) -> None:
        self.commits += 1
        if self.times:
            self.times -= 1
            raise self.error


async def test_a_full_disk_at_commit_is_store_full_and_writes_nothing(tmp_path: Path) -> None:
    hook = FailingCommit(lmdb.Error("mdb_txn_commit: No space left on device"))
    async with LmdbStore(tmp_path / "d") as store:
        await store.append("a", [started(workflow_id="a")], 0)
        store.set_write_hook(hook)
        with pytest.raises(StoreFull, match=r"disk holding .* is full; nothing from this write"):
            await store.commit(big_write())
        assert await store.head("b") == 0 and await store.head("a") == 1
        hook.error = lmdb.Error("mdb_txn_commit: Input/output error")  # not a full disk
        hook.times = 1
        with pytest.raises(StoreError, match="Input/output error") as failed:
            await store.commit(big_write())
        assert not isinstance(failed.value, StoreFull)  # the disk has room
        await store.commit(big_write())  # the writer lives on
        assert await store.head("b") == 1
        assert store.writer_failure() is None


async def test_a_full_map_at_commit_grows_the_map_or_refuses_the_write(tmp_path: Path) -> None:
    async with LmdbStore(tmp_path / "d", map_size=1 << 20, max_map_size=1 << 22) as store:
        hook = FailingCommit(lmdb.MapFullError("mdb_txn_commit: MDB_MAP_FULL"))
        store.set_write_hook(hook)
        assert await store.append("a", [started(workflow_id="a")], 0) == 1
        assert store.map_size() == 1 << 21  # grown, and the transaction retried
        assert hook.commits == 2
        hook.times = 10
        with pytest.raises(StoreFull, match="max_map_size"):
            await store.commit(big_write())
        assert store.map_size() == 1 << 22 and await store.head("b") == 0


async def test_a_hook_raising_before_a_transaction_fails_the_writer(tmp_path: Path) -> None:
    class Crash(WriteHook):
        def before_transaction(self, writes: int) -> None:
            raise RuntimeError("the writer crashed")

    async with LmdbStore(tmp_path / "d", write_hook=Crash()) as store:
        with pytest.raises(StoreError, match=r"writer .* failed: RuntimeError"):
            await store.append("a", [started(workflow_id="a")], 0)
        assert isinstance(store.writer_failure(), RuntimeError)


# --- ForwardingStore ------------------------------------------------------------------------------


class Counting(ForwardingStore):
    def __init__(self, inner: EventStore) -> None:
        super().__init__(inner)
        self.calls: list[str] = []

    def forward(self, method: str) -> EventStore:
        self.calls.append(method)
        return self.inner


async def test_forwarding_store_forwards_through_one_place() -> None:
    assert set(protocol_methods()) <= set(vars(ForwardingStore))  # written out, or generated
    inner = MemoryStore()
    store = Counting(inner)
    assert isinstance(store, EventStore)
    await store.append("a", [started(workflow_id="a")], 0)
    await store.commit(Write(workflows=[record("a")]))
    assert await store.head("a") == 1
    assert (await store.list_workflows()).items == [record("a")]
    assert await store.tenants() == ["default"]
    assert store.calls == ["append", "commit", "head", "list_workflows", "tenants"]
    # Not a protocol method: read from the inner store as it is.
    assert store.set_write_hook(None) is None
    assert isinstance(store.reopen(), MemoryStore)
    with pytest.raises(AttributeError):
        store.no_such_thing  # noqa: B018
    await store.aclose()
    assert store.calls[-1] == "aclose"


async def test_a_protocol_method_without_a_typed_forward_is_forwarded_too() -> None:
    store = Counting(MemoryStore())
    await store.append("a", [started(workflow_id="a")], 0)
    head = _forwarder("head", is_async=True)  # what the module adds for a new method
    assert await head(store, "a") == 1
    assert store.calls[-1] == "head"
