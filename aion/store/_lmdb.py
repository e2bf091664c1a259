"""LmdbStore: the durable store on disk, with a group-commit writer thread.

One writer thread owns LMDB's single write transaction. Requests from every task queue up; the
writer takes all that are waiting, applies them in one transaction, commits with one fsync and
then wakes every requester. Each request succeeds or fails on its own: a stale ``expected_seq``
is detected before the request writes anything, and a request that fails halfway (a bug, a
corrupt row) is dropped by aborting and replaying the batch without it.

The writer shares the GIL with the event loop, so every microsecond of Python it spends per
request is one the loop cannot spend: requests arrive validated and encoded (``_core.prepare``
runs in the caller), the writer remembers the heads it committed instead of reading them back,
and it writes a batch's event rows and heads with one ``putmulti`` per table.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import lmdb
import msgspec

from aion._codec import DECODE_ERRORS
from aion._loop import Notifier, running_loop
from aion.errors import (
    AionError,
    DataDirectoryError,
    InvalidArgument,
    StoreClosed,
    StoreError,
    StoreFormatError,
    StoreFull,
    StoreLocked,
)

from . import _core
from ._core import KV, Prepared
from ._cursors import CURSOR_KEY_FILE, CursorKey, load_or_create_key
from ._lock import DirectoryLock
from ._protocol import KVStore
from ._records import CommitResult

__all__ = ["LmdbStore"]

log = logging.getLogger("aion.store")

R = TypeVar("R")

DEFAULT_MAP_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_MAP_SIZE = 1 << 40  # 1 TiB of address space; the file only holds what is written
MAX_BATCH = 4096
#: A batch of at least this many requests pauses its event loop while it is written, for at
#: most ``PAUSE_MAX_SECONDS`` (see ``_LoopPause``).
PAUSE_MIN_BATCH = 16
PAUSE_MAX_SECONDS = 0.02
#: How many workflows' heads the writer remembers (about 150 bytes each); beyond, it forgets all.
MAX_REMEMBERED_HEADS = 4096

Role = Literal["engine", "client"]


class _LmdbKV:
    """KV over one LMDB transaction and the store's named databases."""

    __slots__ = ("_dbs", "_txn")

    def __init__(self, txn: lmdb.Transaction[bytes], dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[table])

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[table])

    def delete(self, table: str, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[table])

    def scan(
        self, table: str, lo: bytes, hi: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor(self._dbs[table])
        if reverse:
            # Position on the last key < hi.
            if cursor.set_range(hi):
                if not cursor.prev():
                    return
            elif not cursor.last():
                return
            for key, value in cursor.iterprev():
                if key < lo:
                    return
                yield key, value
        else:
            if not cursor.set_range(lo):
                return
            for key, value in cursor:
                if key >= hi:
                    return
                yield key, value

    def values(self, table: str, start: bytes, count: int) -> list[bytes]:
        cursor = self._txn.cursor(self._dbs[table])
        if not cursor.set_range(start):
            return []
        return list(itertools.islice(cursor.iternext(keys=False, values=True), count))


class _WriterKV(_LmdbKV):
    """The writer's KV: it remembers heads, and (``bulk``) writes events and heads in bulk.

    ``heads`` holds heads as of the last commit, so checking an append does not read its head
    back; what this transaction writes is kept in ``written`` and joins ``heads`` only once
    the commit succeeded. Only the engine's writer thread appends, so a remembered head is the
    stored one.

    With ``bulk``, event rows and heads are collected and written by :meth:`flush` with one
    ``putmulti`` per table (before the commit, or before anything reads those tables). Without
    it every row is one ``put``, in request order: the writer replays a batch so when LMDB
    refuses a bulk write, to find the request it cannot take.
    """

    __slots__ = ("_bulk", "_events", "_heads", "written")

    def __init__(
        self,
        txn: lmdb.Transaction[bytes],
        dbs: dict[str, Any],
        heads: dict[bytes, bytes],
        *,
        bulk: bool,
    ) -> None:
        super().__init__(txn, dbs)
        self._heads = heads
        self._bulk = bulk
        self.written: dict[bytes, bytes] = {}
        self._events: list[tuple[bytes, bytes]] = []

    def get(self, table: str, key: bytes) -> bytes | None:
        if table == "heads":
            value = self.written.get(key)
            if value is None:
                value = self._heads.get(key)
            if value is not None:
                return value
        elif table == "events":
            self.flush()
        return self._txn.get(key, db=self._dbs[table])

    def put(self, table: str, key: bytes, value: bytes) -> None:
        if self._bulk:
            if table == "events":
                self._events.append((key, value))
                return
            if table == "heads":
                self.written[key] = value
                return
        self._txn.put(key, value, db=self._dbs[table])
        if table == "heads":
            self.written[key] = value

    def delete(self, table: str, key: bytes) -> None:
        if table in _DEFERRED:
            self.flush()
        self._txn.delete(key, db=self._dbs[table])
        if table == "heads":
            self.written.pop(key, None)
            self._heads.pop(key, None)  # forgetting is safe even if this transaction aborts

    def scan(
        self, table: str, lo: bytes, hi: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        if table in _DEFERRED:
            self.flush()
        return super().scan(table, lo, hi, reverse=reverse)

    def values(self, table: str, start: bytes, count: int) -> list[bytes]:
        if table in _DEFERRED:
            self.flush()
        return super().values(table, start, count)

    def flush(self) -> None:
        """Write the collected event rows and heads (nothing to do without ``bulk``).

        Raises:
            _FlushFailed: LMDB refused a row (other than for a full map): the rows cannot be
                told apart by request, so the batch is replayed with plain puts.
        """
        if not self._bulk:
            return
        try:
            if self._events:
                self._txn.cursor(self._dbs["events"]).putmulti(self._events)
                self._events = []
            if self.written:
                # Rewritten whole on each flush: a later flush may change a head again.
                self._txn.cursor(self._dbs["heads"]).putmulti(self.written.items())
        except lmdb.MapFullError:
            raise
        except lmdb.Error as exc:
            raise _FlushFailed from exc


_DEFERRED = frozenset({"events", "heads"})


class _FlushFailed(Exception):
    pass


class _LoopPause:
    """Keeps the requesters' event loop standing still while the writer fills a transaction.

    py-lmdb releases the GIL around every LMDB call. A writer making thousands of small puts
    while the loop thread runs Python gives the GIL away on each call and waits to get it
    back: it crawls while the loop is busy, the loop runs out of work waiting for it, and the
    two take turns instead of overlapping (measured: the loop idle a third of the time at
    1,000 workflows in flight). While the loop sleeps in this callback the writer's GIL is
    uncontended and the fill takes only its CPU time; the loop catches up while the writer
    waits on the disk.

    Nobody waits for anybody: the writer asks for the pause and starts filling at once (the
    loop may reach the callback late, or never if it is closing), and the callback returns as
    soon as the writer is done, or after ``PAUSE_MAX_SECONDS`` whatever happens, so the loop
    is never held for long. Only the writer thread touches the transaction, as LMDB requires.
    """

    __slots__ = ("_done",)

    def __init__(self, notify: Notifier) -> None:
        self._done = threading.Event()
        try:
            notify(self._hold)
        except RuntimeError:  # the loop is closed: there is nothing to pause
            self._done.set()

    @classmethod
    def for_batch(cls, batch: list[_Request]) -> _LoopPause | None:
        """A pause of the first async requester's loop, for batches big enough to be worth one."""
        if len(batch) < PAUSE_MIN_BATCH:
            return None  # the loop has little to do, and the hand-over would cost more
        notify = next((r.notify for r in batch if r.notify is not None), None)
        return None if notify is None else cls(notify)

    def _hold(self) -> None:
        self._done.wait(PAUSE_MAX_SECONDS)

    def end(self) -> None:
        self._done.set()


class _Gate:
    """Readers share it; a map resize takes it alone (LMDB resizes with no transaction open)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class _Request:
    __slots__ = ("error", "event", "notify", "prepared", "result")

    def __init__(
        self,
        prepared: Prepared,
        notify: Notifier | None,
        event: asyncio.Future[None] | threading.Event | None = None,
    ) -> None:
        self.prepared = prepared
        self.notify = notify
        self.event = event
        self.result: CommitResult | None = None
        self.error: BaseException | None = None


class _Poisoned(Exception):
    def __init__(self, request: _Request, error: BaseException) -> None:
        self.request = request
        self.error = error


_STOP = object()


class LmdbStore(KVStore):
    """The durable :class:`~aion.store.EventStore`: LMDB on disk, group commit, one engine.

    Args:
        path: the data directory (created if missing).
        role: ``"engine"`` (the default) takes the directory's engine lock and may write
            anything; ``"client"`` takes no lock, reads, and may only leave inbox commands
            (other processes: the CLI, another service).
        durable: ``True`` (default) fsyncs every commit before reporting it recorded. ``False``
            skips the fsync: a crash of the process loses nothing, but a crash of the machine or
            a power cut may lose the last commits (never tearing one). See docs/operations.md.
        map_size: initial size of the memory map; it doubles automatically when full.
        max_map_size: the map never grows past this; a write that needs more fails with
            :class:`~aion.errors.StoreFull` and writes nothing.

    Raises:
        StoreLocked: another engine holds the data directory.
        StoreFormatError: the directory holds a store of a newer format, or not an aion store.
        DataDirectoryError: the directory cannot be created, read or written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        role: Role = "engine",
        durable: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
    ) -> None:
        if role not in ("engine", "client"):
            raise InvalidArgument(f"role must be 'engine' or 'client', not {role!r}")
        self.path = Path(path)
        self.role: Role = role
        self.durable = durable
        self._max_map_size = max(max_map_size, map_size)
        self._gate = _Gate()
        self._closed = False
        self._failure: BaseException | None = None
        self._inbox_counter = itertools.count(1)
        self._client_write_lock = threading.Lock()
        self._cursors: CursorKey | None = None
        _make_directory(self.path, create=role == "engine")
        self._lock: DirectoryLock | None = None
        if role == "engine":
            self._lock = DirectoryLock(self.path)
            self._lock.acquire()
        try:
            _check_data_file(self.path)  # before mapping it: a short file would be a SIGBUS
            self._env = self._open_env(map_size)
            self._dbs = self._open_tables()
            if role == "engine":
                self._env.reader_check()  # free reader slots of dead processes
            self._check_format()
            if role == "engine":
                self._cursors = load_or_create_key(self.path)
        except BaseException:
            if hasattr(self, "_env"):
                self._env.close()
            if self._lock is not None:
                self._lock.release()
            raise
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Heads as of the last commit, so that the writer checks an append without reading its
        # head back (engine role only: the engine is the only process that appends).
        self._heads: dict[bytes, bytes] | None = {} if role == "engine" else None
        self._bulk_writes = self._heads is not None
        self._notifier: tuple[asyncio.AbstractEventLoop | None, Notifier] = (None, _no_loop)
        self._writer: threading.Thread | None = None
        if role == "engine":
            self._writer = threading.Thread(
                target=self._writer_loop, name=f"aion-store-writer:{self.path}", daemon=True
            )
            self._writer.start()

    # --- opening ----------------------------------------------------------------------------

    def _open_env(self, map_size: int) -> lmdb.Environment:
        try:
            return lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(_core.TABLES) + 2,
                sync=self.durable,
                metasync=self.durable,
                readahead=False,
                max_readers=256,
                create=self.role == "engine",
            )
        except lmdb.InvalidError as exc:
            raise StoreFormatError(
                f"{self.path} does not hold an LMDB store ({exc}); point aion at an empty "
                "directory or at an aion data directory"
            ) from exc
        except lmdb.VersionMismatchError as exc:
            raise StoreFormatError(f"{self.path}: LMDB version mismatch: {exc}") from exc
        except lmdb.Error as exc:
            if "already open in this process" in str(exc):
                raise StoreLocked(
                    f"the store in {self.path} is already open in this process (LMDB allows one "
                    "handle per process); use the open store, e.g. engine.store, or open the "
                    "client from another process"
                ) from exc
            raise DataDirectoryError(f"cannot open the store in {self.path}: {exc}") from exc

    def _open_tables(self) -> dict[str, Any]:
        try:
            return {
                name: self._env.open_db(name.encode(), create=self.role == "engine")
                for name in _core.TABLES
            }
        except lmdb.NotFoundError as exc:
            raise StoreFormatError(
                f"{self.path} holds no aion store yet; start an engine on it first"
            ) from exc
        except lmdb.Error as exc:
            raise StoreFormatError(f"{self.path} is not a readable aion store: {exc}") from exc

    def _check_format(self) -> None:
        meta = self._dbs["meta"]
        with self._env.begin(write=self.role == "engine") as txn:
            raw = txn.get(_core.FORMAT_KEY, db=meta)
            if raw is None:
                if self.role == "client":
                    raise StoreFormatError(
                        f"{self.path} holds no aion store yet; start an engine on it first"
                    )
                has_data = txn.stat(self._dbs["heads"])["entries"] > 0
                if has_data:
                    raise StoreFormatError(
                        f"{self.path} holds data but no format version: not an aion store, or "
                        "a damaged one. Restore it from a backup."
                    )
                txn.put(_core.FORMAT_KEY, msgspec.msgpack.encode(_core.FORMAT_VERSION), db=meta)
                return
        try:
            version = msgspec.msgpack.decode(raw, type=int)
        except DECODE_ERRORS as exc:
            raise StoreFormatError(f"{self.path}: unreadable format version {raw!r}") from exc
        if version > _core.FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.path} was written by a newer aion (store format {version}); this "
                f"version reads formats up to {_core.FORMAT_VERSION}. Upgrade aion."
            )

    # --- reads ------------------------------------------------------------------------------

    def _read(self, fn: Callable[[KV], R]) -> R:
        self._check_open()
        while True:
            with self._gate.shared():
                try:
                    txn = self._env.begin()
                except lmdb.MapResizedError:
                    pass  # another process grew the map: adopt its size, outside the gate
                else:
                    try:
                        return fn(_LmdbKV(txn, self._dbs))
                    finally:
                        txn.abort()
            self._adopt_map_size()

    def _adopt_map_size(self) -> None:
        with self._gate.exclusive():
            self._env.set_mapsize(0)

    # --- writes -----------------------------------------------------------------------------

    async def _commit(self, prepared: Prepared) -> CommitResult:
        self._check_open()
        if self.role == "client":
            if prepared.appends or prepared.workflows or prepared.timers_add:
                raise InvalidArgument(
                    "a client-role store may only leave inbox commands; open the store as the "
                    "engine to write histories"
                )
            return await anyio.to_thread.run_sync(self.commit_prepared_sync, prepared)
        loop = running_loop()
        last_loop, notify = self._notifier  # one read: other threads may replace it
        if last_loop is not loop:  # one bound method per loop, not one per request
            notify = loop.call_soon_threadsafe
            self._notifier = (loop, notify)
        future: asyncio.Future[None] = loop.create_future()
        request = _Request(prepared, notify, future)
        self._submit(request)
        try:
            await future  # a bare future: the cheapest wait (this is the hot path)
        except BaseException:
            # Cancelled while the write is in flight. It will land or fail within one batch,
            # and the caller must learn which, or its idea of the history head goes stale:
            # wait for the outcome, shielded (cancellation is re-delivered at the next
            # checkpoint by anyio's level-triggered cancel scopes).
            with anyio.CancelScope(shield=True):
                while request.result is None and request.error is None:
                    await anyio.sleep(0.001)
        return _outcome(request)

    def commit_prepared_sync(self, prepared: Prepared) -> CommitResult:
        """Commit from a plain thread (no event loop), waiting for the result."""
        self._check_open()
        if self.role == "client":
            with self._client_write_lock:
                request = _Request(prepared, None)
                self._run_batch([request])
                return _outcome(request)
        done = threading.Event()
        request = _Request(prepared, None, done)
        self._submit(request)
        done.wait()
        return _outcome(request)

    def _submit(self, request: _Request) -> None:
        if self._failure is not None:
            raise StoreError(f"the store writer for {self.path} has failed") from self._failure
        self._queue.put(request)
        failure = self.writer_failure()
        if failure is not None:  # the writer died while we queued: do not wait forever
            self._fail_queued(failure)

    def writer_failure(self) -> BaseException | None:
        """Why the writer thread died, or None while it works (the engine watches this)."""
        return self._failure

    def _writer_loop(self) -> None:
        batch: list[_Request] = []
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                batch = [item]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                self._run_batch(batch)
                _wake(batch)
                batch = []
                if stop:
                    return
        except BaseException as exc:  # the writer must never die silently
            log.critical("store writer for %s failed", self.path, exc_info=True)
            self._failure = exc
            for request in batch:
                if request.result is None and request.error is None:
                    request.error = StoreError(
                        f"the store writer for {self.path} failed: {exc!r}; this write may not "
                        "have been recorded. Reopen the store."
                    )
            _wake(batch)
            self._fail_queued(exc)

    def _fail_queued(self, exc: BaseException) -> None:
        pending: list[_Request] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                pending.append(item)
        for request in pending:
            request.error = StoreError(f"the store writer for {self.path} has failed: {exc}")
        _wake(pending)

    def _run_batch(self, batch: list[_Request]) -> None:
        """Apply ``batch`` in one transaction; set each request's result or error."""
        pending = batch
        self._bulk_writes = self._heads is not None
        while pending:
            try:
                self._apply_in_txn(pending)
                return
            except _FlushFailed:
                self._bulk_writes = False  # replay with a put per row, to find the culprit
            except _Poisoned as poisoned:
                poisoned.request.error = poisoned.error
                pending = [r for r in pending if r is not poisoned.request]
            except lmdb.MapFullError:
                if not self._grow():
                    if len(pending) > 1:
                        # Each request succeeds or fails on its own: those that fit go in.
                        for request in pending:
                            self._run_batch([request])
                        return
                    for request in pending:
                        request.error = StoreFull(
                            f"the store in {self.path} is full: its map reached max_map_size "
                            f"({self._max_map_size} bytes). Nothing from this write was "
                            "recorded; raise max_map_size or free space, then retry."
                        )
                    return
            except lmdb.Error as exc:
                error = _store_error(self.path, exc)
                for request in pending:
                    request.error = error
                return

    def _apply_in_txn(self, pending: list[_Request]) -> None:
        # Outcomes are published only after the commit: a batch that aborts (and is replayed
        # without a poisoned request) must not have told anyone "recorded".
        results: list[CommitResult | None] = []
        errors: list[tuple[int, BaseException]] = []
        heads = self._heads
        txn = self._env.begin(write=True)
        try:
            if heads is None:
                kv: _LmdbKV = _LmdbKV(txn, self._dbs)
            else:
                kv = _WriterKV(txn, self._dbs, heads, bulk=self._bulk_writes)
            pause = _LoopPause.for_batch(pending)
            try:
                self._fill(kv, pending, results, errors)
            finally:
                if pause is not None:
                    pause.end()  # before anything that may wait on the loop (a map resize)
        except BaseException:
            txn.abort()
            raise
        txn.commit()  # one fsync for the whole batch (when durable)
        if isinstance(kv, _WriterKV) and heads is not None:
            if len(heads) + len(kv.written) > MAX_REMEMBERED_HEADS:
                heads.clear()
            heads.update(kv.written)
        for request, result in zip(pending, results, strict=True):
            request.result = result
        for index, error in errors:
            pending[index].error = error

    @staticmethod
    def _fill(
        kv: _LmdbKV,
        pending: list[_Request],
        results: list[CommitResult | None],
        errors: list[tuple[int, BaseException]],
    ) -> None:
        check, apply = _core.check, _core.apply
        for request in pending:
            prepared = request.prepared
            try:
                check(kv, prepared)
            except AionError as exc:  # SequenceConflict, CorruptRecord: nothing written
                errors.append((len(results), exc))
                results.append(None)
                continue
            try:
                results.append(apply(kv, prepared, checked=True))
            except (lmdb.MapFullError, _FlushFailed):
                raise
            except Exception as exc:
                raise _Poisoned(request, exc) from exc
        if isinstance(kv, _WriterKV):
            kv.flush()

    def _grow(self) -> bool:
        size = self._env.info()["map_size"]
        if size >= self._max_map_size:
            return False
        new_size = min(size * 2, self._max_map_size)
        with self._gate.exclusive():
            self._env.set_mapsize(new_size)
        log.info("grew the store map of %s from %d to %d bytes", self.path, size, new_size)
        return True

    def _new_inbox_id(self) -> str:
        return f"{time.time_ns():020d}-{os.getpid():08x}-{next(self._inbox_counter):08x}"

    def _cursor_key(self) -> CursorKey:
        # The engine made or read it on open; a client reads it when it first needs it, and
        # makes it if it is missing (a store created by an aion before cursor keys): atomically
        # and without clobbering, so both end up with the one written first.
        key = self._cursors
        if key is None:
            key = self._cursors = load_or_create_key(self.path)
        return key

    # --- lifecycle --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"the store in {self.path} is closed")

    def close(self) -> None:
        """Finish queued writes, stop the writer, close LMDB, release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
        with self._gate.exclusive():
            self._env.close()
        if self._lock is not None:
            self._lock.release()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> LmdbStore:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def map_size(self) -> int:
        """The current size of the memory map in bytes."""
        return int(self._env.info()["map_size"])

    def _debug_put_raw(self, table: str, key: bytes, value: bytes) -> None:
        """Write raw bytes into a table, bypassing every check (tests of corrupt records)."""
        with self._env.begin(write=True) as txn:
            txn.put(key, value, db=self._dbs[table])
        if self._heads is not None:
            self._heads.clear()


def _no_loop(callback: Callable[[], None]) -> None:
    raise AssertionError("no event loop has committed yet")


def _outcome(request: _Request) -> CommitResult:
    if request.error is not None:
        raise request.error
    assert request.result is not None
    return request.result


def _wake(batch: list[_Request]) -> None:
    """Wake every requester: one callback per event loop, not one per request."""
    by_loop: dict[Notifier, list[asyncio.Future[None]]] = {}
    for request in batch:
        event = request.event
        notify = request.notify
        if notify is None:
            if isinstance(event, threading.Event):
                event.set()
        elif isinstance(event, asyncio.Future):
            futures = by_loop.get(notify)
            if futures is None:
                futures = by_loop[notify] = []
            futures.append(event)
    for notify, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            notify(partial(_set_all, futures))


def _set_all(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # a cancelled waiter's future is done already
            future.set_result(None)


#: An I/O error on a disk with less space left than this is taken for a full disk: LMDB reports
#: a write the full disk cut short as EIO ("mdb_txn_commit: Input/output error"), not ENOSPC.
_NEARLY_FULL_BYTES = 4 * 1024 * 1024


def _store_error(path: Path, exc: lmdb.Error) -> StoreError:
    text = str(exc)
    code = getattr(exc, "errno", None)
    full = "No space left" in text or code == errno.ENOSPC
    if not full and (code == errno.EIO or "Input/output error" in text):
        try:
            stat = os.statvfs(path)
            full = stat.f_bavail * stat.f_frsize < _NEARLY_FULL_BYTES
        except OSError:
            pass
    if full:
        return StoreFull(
            f"the disk holding {path} is full; nothing from this write was recorded. Free "
            "space, then retry: everything recorded before is intact."
        )
    return StoreError(f"write to the store in {path} failed: {text}")


def _make_directory(path: Path, *, create: bool) -> None:
    if path.exists() and not path.is_dir():
        raise DataDirectoryError(f"{path} exists and is not a directory; choose another path")
    if not path.exists():
        if not create:
            raise DataDirectoryError(f"{path} does not exist; start an engine on it first")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirectoryError(
                f"cannot create the data directory {path}: {exc.strerror}. Choose a path this "
                "user can write, or create it with the right permissions."
            ) from exc
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise DataDirectoryError(
            f"the data directory {path} is not readable and writable by this user; fix its "
            "permissions or choose another path"
        )


#: LMDB's data file inside the data directory.
DATA_FILE = "data.mdb"
#: Files that exist only beside a store that was opened: with one of them present, a missing or
#: empty data file is a lost store, not a new one. LMDB makes ``lock.mdb`` whenever it opens a
#: store (any aion version); this store makes the cursor key on open. Not among them:
#: ``engine.lock``, taken before LMDB creates anything, and ``waitpoint-keys.json``, which an
#: operator may put into a new directory before its first start (``require_waitpoint_key``).
_STORE_EVIDENCE = ("lock.mdb", CURSOR_KEY_FILE)

# LMDB 0.9's meta page (MDB_meta after the 16-byte page header, on 64-bit builds): mm_magic,
# mm_version, mm_address, mm_mapsize, two MDB_db records (md_pad, md_flags, md_depth,
# md_branch_pages, md_leaf_pages, md_overflow_pages, md_entries, md_root; the first one's md_pad
# holds the page size), mm_last_pg, mm_txnid. LMDB writes it in the machine's byte order.
_META = struct.Struct("=IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_PAGE_HEADER = 16
_MDB_MAGIC = 0xBEEFC0DE
_MDB_DATA_VERSION = 1


def _check_data_file(directory: Path) -> None:
    """Refuse a store whose data file is missing, empty or shorter than its pages, before LMDB
    maps it: LMDB would create a new, empty store in place of a lost one, and touching a page
    beyond the end of a truncated file kills the process with SIGBUS.

    Raises:
        StoreFormatError: the data file is missing or empty beside the files of an existing
            store, or holds fewer bytes than its last committed page needs.
    """
    path = directory / DATA_FILE
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        size = None
    except OSError as exc:
        raise DataDirectoryError(f"cannot read {path}: {exc.strerror}") from exc
    if not size:
        evidence = [name for name in _STORE_EVIDENCE if (directory / name).exists()]
        if evidence:
            names = ", ".join(evidence)
            raise StoreFormatError(
                f"damaged or missing store: restore from backup. {path} is "
                f"{'missing' if size is None else 'empty'}, but the data directory holds the "
                f"files of a store ({names}): its data is lost. Restore the directory from a "
                "backup. If it never held data (the very first start was interrupted), remove "
                f"{names} from {directory} to start an empty store."
            )
        return  # a new store
    if struct.calcsize("P") != 8:
        return  # a 32-bit build: not the layout read below (LMDB checks what it can)
    damage = _damage(path, size)
    if damage is not None:
        raise StoreFormatError(
            f"damaged or missing store: restore from backup. {path} {damage}. Restore the "
            "data directory from a backup; aion does not open the file, as reading the pages "
            "it lacks would crash the process."
        )


def _damage(path: Path, size: int) -> str | None:
    """What is wrong with the data file of ``size`` bytes according to LMDB's meta pages, or
    None: intact as far as they tell, or not an LMDB 0.9 file at all (LMDB refuses it on
    open)."""
    need = _PAGE_HEADER + _META.size
    try:
        with open(path, "rb") as file:
            head = file.read(need)
            if len(head) < need:
                return f"holds only {size} bytes, less than one LMDB meta page: it was cut short"
            first = _META.unpack_from(head, _PAGE_HEADER)
            magic, version, psize = first[0], first[1], first[4]
            if magic != _MDB_MAGIC or version != _MDB_DATA_VERSION or psize < need:
                return None
            file.seek(psize)
            page = file.read(need)
    except OSError as exc:
        raise DataDirectoryError(f"cannot read {path}: {exc.strerror}") from exc
    if len(page) < need:
        return f"holds only {size} bytes, less than LMDB's two meta pages: it was cut short"
    second = _META.unpack_from(page, _PAGE_HEADER)
    if second[0] != _MDB_MAGIC:
        return "has an unreadable second meta page (LMDB's record of the last commits)"
    newest = max(first, second, key=lambda meta: meta[-1])  # LMDB uses the newest commit's
    end = (newest[-2] + 1) * psize
    if size < end:
        return (
            f"holds {size} bytes, but its last committed page ends at byte {end}: the file "
            "was cut short (a failed copy, a full disk, a truncation)"
        )
    return None
