"""The KV over LMDB transactions: plain (reads, client writes) and the group-commit writer's.

The writer's KV remembers the heads it committed, so checking an append does not read its head
back, and collects a batch's event rows and heads for one ``putmulti`` per table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import lmdb

__all__ = ["_DEFERRED", "_FlushFailed", "_LmdbKV", "_WriterKV"]


class _LmdbKV:
    """KV over one LMDB transaction and the store's named databases."""

    __slots__ = ("_dbs", "_txn")

    def __init__(self, txn: lmdb.Transaction[bytes], dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[table])

    def get_many(self, table: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self.get(table, key) for key in keys]

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

    def count(self, table: str, hi: bytes | None, limit: int) -> int:
        """Rows of ``table`` with keys below ``hi`` (None: all of them: LMDB keeps that
        count), up to ``limit``."""
        db = self._dbs[table]
        if hi is None:
            return min(int(self._txn.stat(db)["entries"]), limit)
        cursor = self._txn.cursor(db)
        if not cursor.first():
            return 0
        n = 0
        for key in cursor.iternext(keys=True, values=False):
            if key >= hi or n >= limit:
                break
            n += 1
        return n


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
