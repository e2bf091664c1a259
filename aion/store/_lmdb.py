"""LmdbStore: the durable store on disk, with a group-commit writer thread.

This module opens the data directory (lock, data file checks, LMDB environment, tables, format
version), serves reads from read transactions, and hands writes to the group-commit writer
(``_lmdb_writer``: one thread owns LMDB's single write transaction; see there). Around it:
``_lmdb_kv`` (the KV over LMDB transactions) and ``_lmdb_files`` (the data directory and data
file checks, failed-write errors).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import lmdb
import msgspec

from aion._codec import DECODE_ERRORS
from aion._loop import Notifier, running_loop
from aion.errors import (
    DataDirectoryError,
    InvalidArgument,
    StoreClosed,
    StoreFormatError,
    StoreLocked,
)

from . import _keys, _rows
from ._cursors import CursorKey, load_or_create_key
from ._hooks import WriteHook, WriteProbe, write_info
from ._lmdb_files import _check_data_file, _make_directory, _store_error
from ._lmdb_kv import _LmdbKV
from ._lmdb_writer import (
    _STOP,
    PAUSE_MAX_SECONDS,
    PAUSE_MIN_BATCH,
    _Gate,
    _GroupCommit,
    _LoopPause,
    _no_loop,
    _outcome,
    _ProbedRequest,
    _Request,
)
from ._lock import DirectoryLock
from ._observer import CommitObserver
from ._prepare import Prepared
from ._protocol import KVStore
from ._records import CommitResult
from ._rows import KV

__all__ = [
    "LmdbStore",
    # Where tests and tools found them before the writer moved to _lmdb_writer (patch a
    # constant there, where it is read):
    "PAUSE_MAX_SECONDS",
    "PAUSE_MIN_BATCH",
    "_LoopPause",
    "_Request",
    "_store_error",
]

R = TypeVar("R")

DEFAULT_MAP_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_MAP_SIZE = 1 << 40  # 1 TiB of address space; the file only holds what is written

Role = Literal["engine", "client"]


class LmdbStore(_GroupCommit, KVStore):
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
        write_hook: called at every boundary of every write (see
            :class:`~aion.store.WriteHook`); for fault-injection tests. Also
            :meth:`set_write_hook`.

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
        write_hook: WriteHook | None = None,
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
        self._hook = write_hook
        self._observer: CommitObserver | None = None
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
                max_dbs=len(_rows.TABLES) + 2,
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
                for name in _rows.TABLES
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
            raw = txn.get(_rows.FORMAT_KEY, db=meta)
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
                txn.put(_rows.FORMAT_KEY, msgspec.msgpack.encode(_rows.FORMAT_VERSION), db=meta)
                return
        try:
            version = msgspec.msgpack.decode(raw, type=int)
        except DECODE_ERRORS as exc:
            raise StoreFormatError(f"{self.path}: unreadable format version {raw!r}") from exc
        if version > _rows.FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.path} was written by a newer aion (store format {version}); this "
                f"version reads formats up to {_rows.FORMAT_VERSION}. Upgrade aion."
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

    def count_timers(self, *, due_before: datetime | None = None, limit: int = 1_000_000) -> int:
        """How many timer rows there are (``due_before``: due before that time), or ``limit``
        if at least that many. All of them: one lookup; before a time: a walk of the keys
        (no values read). Synchronous and thread-safe: the engine's metrics call it from a
        worker thread."""
        hi = None if due_before is None else _keys.be64(_keys.micros(due_before))

        def count(kv: KV) -> int:
            assert isinstance(kv, _LmdbKV)
            return kv.count("timers", hi, limit)

        return self._read(count)

    # --- writes -----------------------------------------------------------------------------

    def set_write_hook(self, hook: WriteHook | None) -> WriteHook | None:
        """Install ``hook`` (None: remove it) for the writes that begin from now on; returns
        the hook it replaces. See :class:`~aion.store.WriteHook`."""
        previous, self._hook = self._hook, hook
        return previous

    def set_commit_observer(self, observer: CommitObserver | None) -> CommitObserver | None:
        """Call ``observer(writes, seconds, commit_seconds)`` on the writer thread after each
        committed transaction (None: stop); returns the observer it replaces. ``commit_seconds``
        is ``txn.commit()`` alone, with its fsync when durable. For the engine's metrics."""
        previous, self._observer = self._observer, observer
        return previous

    async def _commit(self, prepared: Prepared) -> CommitResult:
        self._check_open()
        if self.role == "client":
            if prepared.appends or prepared.workflows or prepared.timers_add:
                raise InvalidArgument(
                    "a client-role store may only leave inbox commands; open the store as the "
                    "engine to write histories"
                )
            probe = self._begin_write(prepared)
            return await anyio.to_thread.run_sync(self._commit_sync, prepared, probe)
        hook = self._hook
        probe = None if hook is None else hook.begin_write(write_info(prepared))
        loop = running_loop()
        last_loop, notify = self._notifier  # one read: other threads may replace it
        if last_loop is not loop:  # one bound method per loop, not one per request
            notify = loop.call_soon_threadsafe
            self._notifier = (loop, notify)
        future: asyncio.Future[None] = loop.create_future()
        if probe is None:
            request = _Request(prepared, notify, future)
        else:
            request = _ProbedRequest(prepared, notify, future, probe)
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
        return self._commit_sync(prepared, self._begin_write(prepared))

    def _begin_write(self, prepared: Prepared) -> WriteProbe | None:
        hook = self._hook
        return None if hook is None else hook.begin_write(write_info(prepared))

    def _commit_sync(self, prepared: Prepared, probe: WriteProbe | None) -> CommitResult:
        if self.role == "client":
            with self._client_write_lock:
                request = _request(prepared, None, None, probe)
                self._run_batch([request])
                return _outcome(request)
        done = threading.Event()
        request = _request(prepared, None, done, probe)
        self._submit(request)
        done.wait()
        return _outcome(request)

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


def _request(
    prepared: Prepared,
    notify: Notifier | None,
    event: asyncio.Future[None] | threading.Event | None,
    probe: WriteProbe | None,
) -> _Request:
    if probe is None:
        return _Request(prepared, notify, event)
    return _ProbedRequest(prepared, notify, event, probe)
