"""What only the LMDB store has: group commit, map growth, the lock, format, faults on disk."""

from __future__ import annotations

import os
import signal as signals_mod
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from aion._codec import encode
from aion.errors import (
    CorruptRecord,
    DataDirectoryError,
    InvalidArgument,
    SequenceConflict,
    StoreClosed,
    StoreError,
    StoreFormatError,
    StoreFull,
    StoreLocked,
)
from aion.store import (
    Append,
    InboxCommand,
    LmdbStore,
    Write,
    WriteHook,
    WriteInfo,
    WriteProbe,
    _core,
    _lmdb_writer,
)

from ._util import T0, record, signal, signals, started

# --- group commit --------------------------------------------------------------------------------


class BatchSpy(WriteHook):
    """The store's write hook: counts the writer's transactions and holds the first one until
    released, to form a batch. Writes that append to a workflow in ``poison`` fail halfway
    through their own rows (a bug in the store logic, say)."""

    def __init__(self, store: LmdbStore, poison: frozenset[str] = frozenset()) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.poison = poison
        store.set_write_hook(self)

    def before_transaction(self, writes: int) -> None:
        if not self.sizes:
            self.entered.set()
            self.release.wait(10)
        self.sizes.append(writes)

    def begin_write(self, write: WriteInfo) -> WriteProbe | None:
        if any(workflow_id in self.poison for _, workflow_id in write.appends):
            return FailsAtItsProjectionRow()
        return None


class FailsAtItsProjectionRow(WriteProbe):
    def before_kv_write(self, op: str, table: str, key: bytes) -> None:
        if table == "workflows":
            raise RuntimeError("bug while writing poison")


async def _queue_behind_first(store: LmdbStore, spy: BatchSpy, n: int, fn: Any) -> list[Any]:
    """Start one request that occupies the writer, queue ``n`` more, then release them all."""
    results: list[Any] = [None] * n

    async def run(i: int) -> None:
        try:
            results[i] = await fn(i)
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.append, "blocker", [started(workflow_id="blocker")], 0)
        await anyio.to_thread.run_sync(spy.entered.wait)
        for i in range(n):
            tg.start_soon(run, i)
        await anyio.wait_all_tasks_blocked()
        spy.release.set()
    return results


async def test_group_commit_one_transaction_many_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LmdbStore(tmp_path / "d") as store:
        spy = BatchSpy(store)
        results = await _queue_behind_first(
            store, spy, 200, lambda i: store.append(f"w{i}", [started(workflow_id=f"w{i}")], 0)
        )
        assert results == [1] * 200
        assert spy.sizes == [1, 200]  # the blocker alone, then everyone else in one commit
        for i in (0, 99, 199):
            assert await store.head(f"w{i}") == 1


class PauseProbe:
    """Watches the writer fill a big batch: does the event loop stand still meanwhile?

    A ticker task counts loop turns. The writer's fill waits until the loop sits in the pause
    callback, then runs (or, with ``hold_fill``, waits for the loop to move on first).
    """

    def __init__(self, store: LmdbStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ticks = 0
        self.order: list[str] = []
        self.holding = threading.Event()
        self.ticked_while_filling = threading.Event()
        self.filling = False
        self.hold_fill = False
        real_hold = _lmdb_writer._LoopPause._hold
        real_fill = store._fill

        def hold(pause: Any) -> None:
            self.order.append("hold")
            self.holding.set()
            real_hold(pause)
            self.order.append("resume")

        def fill(
            kv: Any, pending: list[Any], results: Any, errors: Any, probes: Any = None
        ) -> None:
            if len(pending) < _lmdb_writer.PAUSE_MIN_BATCH:
                return real_fill(kv, pending, results, errors, probes)
            assert self.holding.wait(10), "the loop never paused"
            self.filling = True
            before = self.ticks
            if self.hold_fill:
                assert self.ticked_while_filling.wait(10), "the loop stayed paused"
            real_fill(kv, pending, results, errors, probes)
            self.order.append(f"filled after {self.ticks - before} loop turns")
            self.filling = False

        monkeypatch.setattr(_lmdb_writer._LoopPause, "_hold", hold)
        monkeypatch.setattr(store, "_fill", fill)

    async def tick(self, done: anyio.Event) -> None:
        while not done.is_set():
            self.ticks += 1
            if self.filling:
                self.ticked_while_filling.set()
            await anyio.sleep(0)


async def _big_batch_with_ticker(store: LmdbStore, probe: PauseProbe, spy: BatchSpy) -> None:
    """Queue 50 appends behind a held one, start the ticker, then let the writer go."""
    done = anyio.Event()
    heads: list[int] = []

    async def run(i: int) -> None:
        heads.append(await store.append(f"p{i}", [started(workflow_id=f"p{i}")], 0))
        if len(heads) == 50:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.append, "blocker", [started(workflow_id="blocker")], 0)
        await anyio.to_thread.run_sync(spy.entered.wait)
        for i in range(50):
            tg.start_soon(run, i)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(probe.tick, done)
        spy.release.set()
    assert heads == [1] * 50
    assert spy.sizes == [1, 50]


async def test_a_big_batch_is_written_while_its_loop_stands_still(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lmdb_writer, "PAUSE_MAX_SECONDS", 30.0)  # only the writer ends this pause
    async with LmdbStore(tmp_path / "d") as store:
        spy = BatchSpy(store)
        probe = PauseProbe(store, monkeypatch)
        await _big_batch_with_ticker(store, probe, spy)
        # The loop paused before the fill, made no turn during it, and resumed after it.
        assert probe.order == ["hold", "filled after 0 loop turns", "resume"]
        assert await store.head("p49") == 1


async def test_a_slow_fill_holds_the_loop_no_longer_than_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lmdb_writer, "PAUSE_MAX_SECONDS", 0.001)
    async with LmdbStore(tmp_path / "d") as store:
        spy = BatchSpy(store)
        probe = PauseProbe(store, monkeypatch)
        probe.hold_fill = True  # the fill waits until the loop has moved on without it
        await _big_batch_with_ticker(store, probe, spy)
        assert probe.order[:2] == ["hold", "resume"]
        assert probe.order[2].startswith("filled after") and probe.order[2] != "filled after 0"
        assert await store.head("p49") == 1


def test_small_batches_and_threads_do_not_pause_a_loop() -> None:
    calls: list[Any] = []
    writer = _lmdb_writer
    request = writer._Request(_core.prepare(Write()), calls.append)
    assert writer._LoopPause.for_batch([request] * (writer.PAUSE_MIN_BATCH - 1)) is None
    assert writer._LoopPause.for_batch([writer._Request(_core.prepare(Write()), None)] * 99) is None
    from_thread = writer._Request(_core.prepare(Write()), None)
    pause = writer._LoopPause.for_batch([from_thread] + [request] * (writer.PAUSE_MIN_BATCH - 1))
    assert pause is not None and len(calls) == 1
    pause.end()
    calls[0]()  # the loop reaches the callback after the fill: it returns at once


def test_a_closed_loop_is_not_waited_for() -> None:
    def closed(callback: Any) -> None:
        raise RuntimeError("Event loop is closed")

    pause = _lmdb_writer._LoopPause(closed)
    pause._hold()  # returns at once: the pause counts as over


async def test_requests_in_one_batch_fail_on_their_own(tmp_path: Path) -> None:
    async with LmdbStore(tmp_path / "d") as store:
        await store.append("shared", [started(workflow_id="shared")], 0)
        spy = BatchSpy(store, poison=frozenset({"poison"}))

        async def request(i: int) -> Any:
            if i == 3:  # conflicts: another request in the batch appends first
                return await store.append("shared", [signal(2, name="second")], 1)
            if i == 2:
                return await store.append("shared", [signal(2, name="first")], 1)
            if i == 5:  # fails halfway through its own writes
                return await store.commit(
                    Write(
                        appends=[Append("poison", [started(workflow_id="poison")], 0)],
                        workflows=[record("poison")],
                    )
                )
            return await store.append(f"w{i}", [started(workflow_id=f"w{i}")], 0)

        results = await _queue_behind_first(store, spy, 8, request)
        assert isinstance(results[3], SequenceConflict)
        assert isinstance(results[5], RuntimeError)
        assert [results[i] for i in (0, 1, 4, 6, 7)] == [1] * 5
        assert results[2] == 2
        assert await store.head("poison") == 0  # nothing of the poisoned request is visible
        assert await store.get_workflow("poison") is None
        names = [getattr(e, "name", None) for e in await store.read_history("shared")]
        assert names == [None, "first"]
        assert spy.sizes[:3] == [1, 8, 7]  # the batch, then again without the poisoned one


async def test_sync_commit_from_a_plain_thread(tmp_path: Path) -> None:
    async with LmdbStore(tmp_path / "d") as store:
        prepared = _core.prepare(Write(appends=[Append("t", [started(workflow_id="t")], 0)]))
        result = await anyio.to_thread.run_sync(store.commit_prepared_sync, prepared)
        assert result.heads == (1,)
        assert await store.head("t") == 1


# --- durability modes, reopen, map growth ---------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
async def test_data_survives_reopen(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "d"
    async with LmdbStore(path, durable=durable) as store:
        await store.append("wf", [started(), *signals(2, 4)], 0)
        await store.commit(Write(workflows=[record("wf")]))
    async with LmdbStore(path) as store:
        assert [e.seq for e in await store.read_history("wf")] == [1, 2, 3, 4, 5]
        assert await store.get_workflow("wf") == record("wf")


async def test_map_grows_instead_of_failing(tmp_path: Path) -> None:
    async with LmdbStore(tmp_path / "d", map_size=1 << 20) as store:
        before = store.map_size()
        payload = b"x" * 4000
        head = await store.append("big", [started(workflow_id="big")], 0)
        for _ in range(100):
            batch = [signal(head + 1 + i, payload=payload) for i in range(20)]
            head = await store.append("big", batch, head)
        assert store.map_size() > before
        assert len(await store.read_history("big")) == head == 2001


async def test_store_full_writes_nothing_and_keeps_history(tmp_path: Path) -> None:
    async with LmdbStore(tmp_path / "d", map_size=1 << 20, max_map_size=1 << 20) as store:
        await store.append("wf", [started()], 0)
        head = 1
        with pytest.raises(StoreFull, match="max_map_size"):
            while True:
                batch = [signal(head + 1 + i, payload=b"y" * 8000) for i in range(10)]
                head = await store.append("wf", batch, head)
        history = await store.read_history("wf")
        assert len(history) == head  # everything acknowledged is there, nothing more
        assert await store.head("wf") == head


# --- one engine per directory, clients, stale locks -------------------------------------------


async def test_second_engine_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "d"
    async with LmdbStore(path):
        with pytest.raises(StoreLocked, match=rf"in use by another engine \(pid {os.getpid()}"):
            LmdbStore(path)
    async with LmdbStore(path):  # released on close
        pass


CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys, anyio
    from datetime import UTC, datetime
    from aion.store import LmdbStore, InboxCommand
    async def main():
        store = LmdbStore(sys.argv[1], role="client")
        history = await store.read_history("wf")
        cid = await store.put_inbox(
            InboxCommand("signal", "default", "wf", datetime.now(UTC), name="from-client"))
        print(len(history), cid, flush=True)
        await store.aclose()
    anyio.run(main)
    """
)


async def test_client_process_reads_and_leaves_commands_while_engine_runs(tmp_path: Path) -> None:
    path = tmp_path / "d"
    async with LmdbStore(path) as store:
        await store.append("wf", [started(), signal(2)], 0)
        out = subprocess.run(
            [sys.executable, "-c", CLIENT_SCRIPT, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        assert out[0] == "2"
        inbox = await store.read_inbox()
        assert [(c.name, c.command_id) for c in inbox] == [("from-client", out[1])]


async def test_client_role_may_only_leave_commands(tmp_path: Path) -> None:
    path = tmp_path / "d"
    LmdbStore(path).close()
    async with LmdbStore(path, role="client") as client:
        with pytest.raises(InvalidArgument, match="client-role"):
            await client.append("wf", [started()], 0)
        await client.put_inbox(InboxCommand("cancel", "default", "wf", T0))
        assert len(await client.read_inbox()) == 1


HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from aion.store import LmdbStore
    store = LmdbStore(sys.argv[1])
    print("locked", flush=True)
    time.sleep(600)
    """
)


async def test_stale_lock_of_a_killed_engine_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "d"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLocked, match=f"pid {holder.pid}"):
            LmdbStore(path)
    finally:
        holder.send_signal(signals_mod.SIGKILL)
        holder.wait()
    async with LmdbStore(path) as store:  # the kernel dropped the dead engine's lock
        await store.append("wf", [started()], 0)


# --- format, corruption, directories ----------------------------------------------------------


async def test_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with LmdbStore(path) as store:
        store._debug_put_raw("meta", _core.FORMAT_KEY, msgspec.msgpack.encode(99))
    with pytest.raises(StoreFormatError, match="newer aion"):
        LmdbStore(path)
    with pytest.raises(StoreFormatError, match="newer aion"):
        LmdbStore(path, role="client")
    # The refused open released its lock: a second try is refused for the format again.
    with pytest.raises(StoreFormatError, match="newer aion"):
        LmdbStore(path)


async def test_not_an_lmdb_file(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"this is not lmdb" * 1000)
    with pytest.raises(StoreFormatError, match="does not hold an LMDB store"):
        LmdbStore(path)


async def test_corrupt_record_names_its_key_and_spares_the_rest(tmp_path: Path) -> None:
    async with LmdbStore(tmp_path / "d") as store:
        await store.append("bad", [started(workflow_id="bad"), *signals(2, 3)], 0)
        await store.append("good", [started(workflow_id="good")], 0)
        await store.commit(Write(workflows=[record("bad"), record("good")]))
        key = b"default\x00bad\x00" + (3).to_bytes(8, "big")
        store._debug_put_raw("events", key, b"\xc1garbage")
        with pytest.raises(CorruptRecord) as info:
            await store.read_history("bad")
        assert info.value.table == "events" and info.value.key == key
        assert "bad" in str(info.value)
        assert len(await store.read_history("bad", to_seq=2)) == 2
        assert len(await store.read_history("good")) == 1
        not_utf8 = encode(signal(3, name="go")).replace(b"\xa2go", b"\xa2\xc3\x28")
        store._debug_put_raw("events", key, not_utf8)  # a string that is not UTF-8
        with pytest.raises(CorruptRecord) as info:
            await store.read_history("bad")
        assert info.value.table == "events" and info.value.key == key
        store._debug_put_raw("workflows", b"default\x00bad", b"\x93\x01")
        with pytest.raises(CorruptRecord, match="workflows"):
            await store.get_workflow("bad")
        bad = encode(record("bad")).replace(b"order", b"\xc3\x28der")
        store._debug_put_raw("workflows", b"default\x00bad", bad)
        with pytest.raises(CorruptRecord, match="workflows"):
            await store.get_workflow("bad")
        assert await store.get_workflow("good") == record("good")


async def test_data_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    with pytest.raises(DataDirectoryError, match="not a directory"):
        LmdbStore(blocker)
    with pytest.raises(DataDirectoryError, match="cannot create the data directory"):
        LmdbStore(blocker / "sub")
    with pytest.raises(DataDirectoryError, match="does not exist"):
        LmdbStore(tmp_path / "missing", role="client")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreFormatError, match="no aion store"):
        LmdbStore(tmp_path / "empty", role="client")


async def test_closed_store_says_so(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "d")
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreClosed):
        await store.read_history("wf")
    with pytest.raises(StoreClosed):
        await store.append("wf", [started()], 0)


class BlowsUp(WriteHook):
    def before_transaction(self, writes: int) -> None:
        raise MemoryError("writer thread blew up")


async def test_writer_failure_is_reported_not_hung(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "d", write_hook=BlowsUp())
    try:
        with pytest.raises(StoreError, match=r"writer .* failed"):
            await store.append("wf", [started()], 0)
        assert isinstance(store.writer_failure(), MemoryError)
        with pytest.raises(StoreError, match="has failed"):
            await store.append("wf2", [started(workflow_id="wf2")], 0)
    finally:
        await store.aclose()  # the dead writer does not hold up the close
    async with LmdbStore(tmp_path / "d") as reopened:
        assert await reopened.head("wf") == 0


async def test_a_corrupt_head_row_fails_its_workflow_only(tmp_path: Path) -> None:
    from aion.store import _keys

    store = LmdbStore(tmp_path / "data")
    try:
        store._debug_put_raw("heads", _keys.workflow_key("default", "bad"), b"\x01\x02\x03")
        with pytest.raises(CorruptRecord, match="heads"):
            await store.append("bad", [signal(1)], 0)
        with pytest.raises(CorruptRecord):
            await store.head("bad")
        assert await store.append("good", [started(workflow_id="good")], 0) == 1  # writer alive
    finally:
        await store.aclose()
