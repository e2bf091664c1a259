"""MemoryStore: the store semantics in process memory, for tests and ephemeral engines."""

from __future__ import annotations

import bisect
import copy
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Self, TypeVar

import anyio

from aion.errors import StoreClosed

from . import _apply, _keys, _rows
from ._cursors import CursorKey
from ._hooks import ProbedKV, WriteHook, WriteProbe, write_info
from ._observer import CommitObserver, notify
from ._prepare import Prepared
from ._protocol import KVStore
from ._records import CommitResult
from ._rows import KV

__all__ = ["MemoryStore"]

R = TypeVar("R")


class _Table:
    """A sorted map: a dict for lookups beside a sorted key list for range scans."""

    __slots__ = ("keys", "rows")

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> bytes | None:
        old = self.rows.get(key)
        if old is None:
            if not self.keys or key > self.keys[-1]:
                self.keys.append(key)
            else:
                bisect.insort(self.keys, key)
        self.rows[key] = bytes(value)
        return old

    def delete(self, key: bytes) -> bytes | None:
        old = self.rows.pop(key, None)
        if old is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]
        return old


class _Data:
    def __init__(self) -> None:
        self.tables = {name: _Table() for name in _rows.TABLES}
        self.lock = threading.RLock()
        self.inbox_counter = itertools.count(1)
        self.cursor_key = CursorKey.generate()  # per store, kept across reopen()


class _MemoryKV:
    """KV over the tables; with an undo log, so a failed write can be rolled back."""

    def __init__(self, data: _Data, undo: list[tuple[str, bytes, bytes | None]] | None) -> None:
        self._tables = data.tables
        self._undo = undo

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._tables[table].rows.get(key)

    def get_many(self, table: str, keys: Sequence[bytes]) -> list[bytes | None]:
        rows = self._tables[table].rows
        return [rows.get(key) for key in keys]

    def put(self, table: str, key: bytes, value: bytes) -> None:
        old = self._tables[table].put(key, value)
        if self._undo is not None:
            self._undo.append((table, key, old))

    def delete(self, table: str, key: bytes) -> None:
        old = self._tables[table].delete(key)
        if self._undo is not None and old is not None:
            self._undo.append((table, key, old))

    def scan(
        self, table: str, lo: bytes, hi: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        t = self._tables[table]
        start = bisect.bisect_left(t.keys, lo)
        stop = bisect.bisect_left(t.keys, hi)
        # Snapshot the key range so the caller may write while iterating.
        keys = t.keys[start:stop]
        for key in reversed(keys) if reverse else keys:
            value = t.rows.get(key)
            if value is not None:
                yield key, value

    def values(self, table: str, start: bytes, count: int) -> list[bytes]:
        t = self._tables[table]
        i = bisect.bisect_left(t.keys, start)
        return [t.rows[key] for key in t.keys[i : i + count]]


class MemoryStore(KVStore):
    """An :class:`~aion.store.EventStore` in process memory.

    Same semantics as :class:`~aion.store.LmdbStore` (both run the same store logic), nothing
    survives the process. :meth:`reopen` returns a new store over the same data, which tests use
    to model a close and reopen.

    Args:
        write_hook: called at every boundary of every write (see
            :class:`~aion.store.WriteHook`); for fault-injection tests. Also
            :meth:`set_write_hook`.
    """

    def __init__(self, *, write_hook: WriteHook | None = None) -> None:
        self._data = _Data()
        self._closed = False
        self._hook = write_hook
        self._observer: CommitObserver | None = None

    def reopen(self) -> Self:
        """A fresh store object over this store's data (as if closed and opened again): of the
        same class, with no write hook."""
        self._closed = True
        store = copy.copy(self)
        store._closed = False
        store._hook = None
        store._observer = None
        return store

    def set_write_hook(self, hook: WriteHook | None) -> WriteHook | None:
        """Install ``hook`` (None: remove it) for the writes that begin from now on; returns
        the hook it replaces. See :class:`~aion.store.WriteHook`."""
        previous, self._hook = self._hook, hook
        return previous

    def set_commit_observer(self, observer: CommitObserver | None) -> CommitObserver | None:
        """Call ``observer(1, seconds, None)`` after each committed write, in the thread that
        committed (None: stop); returns the observer it replaces. For the engine's metrics."""
        previous, self._observer = self._observer, observer
        return previous

    def count_timers(self, *, due_before: datetime | None = None, limit: int = 1_000_000) -> int:
        """How many timer rows there are (``due_before``: due before that time), or ``limit``
        if at least that many (see :meth:`LmdbStore.count_timers`)."""
        self._check_open()
        with self._data.lock:
            keys = self._data.tables["timers"].keys
            if due_before is None:
                found = len(keys)
            else:
                found = bisect.bisect_left(keys, _keys.be64(_keys.micros(due_before)))
        return min(found, limit)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the memory store was closed")

    def _read(self, fn: Callable[[KV], R]) -> R:
        self._check_open()
        with self._data.lock:
            return fn(_MemoryKV(self._data, None))

    def commit_prepared(self, prepared: Prepared) -> CommitResult:
        """Apply an already prepared write atomically (synchronously)."""
        self._check_open()
        started = time.perf_counter()
        if self._hook is not None:
            result = self._commit_hooked(self._hook, prepared)
        else:
            with self._data.lock:
                undo: list[tuple[str, bytes, bytes | None]] = []
                try:
                    result = _apply.apply(_MemoryKV(self._data, undo), prepared)
                except BaseException:
                    self._roll_back(undo)
                    raise
        notify(self._observer, 1, time.perf_counter() - started, None)
        return result

    def _commit_hooked(self, hook: WriteHook, prepared: Prepared) -> CommitResult:
        """``commit_prepared`` with ``hook`` called at each boundary (see ``_hooks``)."""
        probe: WriteProbe | None = hook.begin_write(write_info(prepared))
        hook.before_transaction(1)
        with self._data.lock:
            undo: list[tuple[str, bytes, bytes | None]] = []
            try:
                kv: KV = _MemoryKV(self._data, undo)
                _apply.check(kv, prepared)
                if probe is not None:
                    probe.before_apply(1)
                    kv = ProbedKV(kv, probe)
                result = _apply.apply(kv, prepared, checked=True)
                if probe is not None:
                    probe.before_commit()
                hook.before_commit(1)
            except BaseException:
                self._roll_back(undo)
                raise
        if probe is not None:
            probe.after_commit()
        return result

    def _roll_back(self, undo: list[tuple[str, bytes, bytes | None]]) -> None:
        for table, key, old in reversed(undo):
            if old is None:
                self._data.tables[table].delete(key)
            else:
                self._data.tables[table].put(key, old)

    async def _commit(self, prepared: Prepared) -> CommitResult:
        result = self.commit_prepared(prepared)
        # Shielded: the write is recorded, so the caller must get the result, not Cancelled
        # (as with LmdbStore, whose wait for the writer is shielded).
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return result

    def _new_inbox_id(self) -> str:
        return f"{next(self._data.inbox_counter):020d}"

    def _cursor_key(self) -> CursorKey:
        return self._data.cursor_key

    async def aclose(self) -> None:
        self._closed = True
