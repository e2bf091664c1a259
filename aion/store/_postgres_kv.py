"""The KV over PostgreSQL: one table per KV table, rows of (key bytea, value bytea).

``bytea`` compares byte by byte, as LMDB compares keys, so ranges and orders are the same on
both backends and the store logic (``_apply``, ``_queries``) runs unchanged over either.

Reads go to the server one statement at a time; scans fetch in pages (keyset, ``SCAN_PAGE``
rows), so a caller that stops early reads little. The writer's KV (:class:`_PgWriterKV`)
collects a transaction's puts and deletes and sends them per table at the end (one
``executemany`` each, pipelined), answering its own reads from what it collected; before a
scan of a table it sends that table's rows, so the scan sees them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from . import _rows

__all__ = ["SCAN_PAGE", "Statements", "_PgKV", "_PgWriterKV"]

#: Rows per statement of a scan.
SCAN_PAGE = 256

_MISSING = object()


class Statements:
    """The SQL of every KV operation, per table, made once per store (schema-qualified)."""

    def __init__(self, schema: str) -> None:
        self.get: dict[str, sql.Composed] = {}
        self.put: dict[str, sql.Composed] = {}
        self.put_once: dict[str, sql.Composed] = {}
        self.delete: dict[str, sql.Composed] = {}
        self.many: dict[str, sql.Composed] = {}
        self.scan_up: dict[str, sql.Composed] = {}
        self.scan_down: dict[str, sql.Composed] = {}
        self.values: dict[str, sql.Composed] = {}
        self.count_all: dict[str, sql.Composed] = {}
        self.count_below: dict[str, sql.Composed] = {}
        for table in _rows.TABLES:
            t = sql.Identifier(schema, table)
            self.get[table] = sql.SQL("SELECT v FROM {} WHERE k = %s").format(t)
            self.put[table] = sql.SQL(
                "INSERT INTO {} (k, v) VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
            ).format(t)
            self.put_once[table] = sql.SQL(
                "INSERT INTO {} (k, v) VALUES (%s, %s) ON CONFLICT (k) DO NOTHING"
            ).format(t)
            self.delete[table] = sql.SQL("DELETE FROM {} WHERE k = %s").format(t)
            self.many[table] = sql.SQL("SELECT k, v FROM {} WHERE k = ANY(%s)").format(t)
            self.scan_up[table] = sql.SQL(
                "SELECT k, v FROM {} WHERE k >= %s AND k < %s ORDER BY k LIMIT %s"
            ).format(t)
            self.scan_down[table] = sql.SQL(
                "SELECT k, v FROM {} WHERE k >= %s AND k < %s ORDER BY k DESC LIMIT %s"
            ).format(t)
            self.values[table] = sql.SQL(
                "SELECT v FROM {} WHERE k >= %s ORDER BY k LIMIT %s"
            ).format(t)
            self.count_all[table] = sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) AS rows"
            ).format(t)
            self.count_below[table] = sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {} WHERE k < %s LIMIT %s) AS rows"
            ).format(t)


class _PgKV:
    """KV over one open transaction of a psycopg connection."""

    __slots__ = ("_cur", "_sql")

    def __init__(self, cur: psycopg.Cursor[Any], statements: Statements) -> None:
        self._cur = cur
        self._sql = statements

    def get(self, table: str, key: bytes) -> bytes | None:
        row = self._cur.execute(self._sql.get[table], (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, table: str, keys: Sequence[bytes]) -> list[bytes | None]:
        found = self.prefetch(table, keys)
        return [found.get(key) for key in keys]

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._cur.execute(self._sql.put[table], (key, value))

    def delete(self, table: str, key: bytes) -> None:
        self._cur.execute(self._sql.delete[table], (key,))

    def scan(
        self, table: str, lo: bytes, hi: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        statement = (self._sql.scan_down if reverse else self._sql.scan_up)[table]
        while lo < hi:
            rows = self._cur.execute(statement, (lo, hi, SCAN_PAGE)).fetchall()
            for key, value in rows:
                yield bytes(key), bytes(value)
            if len(rows) < SCAN_PAGE:
                return
            last = bytes(rows[-1][0])
            if reverse:
                hi = last
            else:
                lo = last + b"\x00"  # the smallest key after ``last``

    def values(self, table: str, start: bytes, count: int) -> list[bytes]:
        rows = self._cur.execute(self._sql.values[table], (start, count)).fetchall()
        return [bytes(row[0]) for row in rows]

    def count(self, table: str, hi: bytes | None, limit: int) -> int:
        """Rows of ``table`` with keys below ``hi`` (None: all), up to ``limit``."""
        if hi is None:
            row = self._cur.execute(self._sql.count_all[table], (limit,)).fetchone()
        else:
            row = self._cur.execute(self._sql.count_below[table], (hi, limit)).fetchone()
        return 0 if row is None else int(row[0])

    def prefetch(self, table: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The stored rows of ``keys`` (those that exist), in one statement."""
        wanted = list(keys)
        if not wanted:
            return {}
        rows = self._cur.execute(self._sql.many[table], (wanted,)).fetchall()
        return {bytes(key): bytes(value) for key, value in rows}


class _PgWriterKV(_PgKV):
    """The writer's KV: puts and deletes are collected and sent per table by :meth:`flush`.

    ``known`` holds rows read ahead for the batch (``prefetch``) and ``None`` for keys known to
    be absent; collected writes answer reads first. Each table's rows are sent before anything
    scans it, and all of them before the commit.
    """

    __slots__ = ("_known", "_pending", "_remembered")

    def __init__(
        self,
        cur: psycopg.Cursor[Any],
        statements: Statements,
        remembered: dict[str, dict[bytes, bytes | None]] | None = None,
    ) -> None:
        super().__init__(cur, statements)
        self._pending: dict[str, dict[bytes, bytes | None]] = {}
        #: Rows this transaction read or wrote: what :meth:`known` hands on after the commit.
        self._known: dict[str, dict[bytes, bytes | None]] = {}
        #: Rows as of the last commit, that only this writer changes (read, never written here).
        self._remembered = remembered or {}

    def known(self) -> dict[str, dict[bytes, bytes | None]]:
        """What this transaction read and wrote, by table (valid once it committed)."""
        return self._known

    def read_ahead(
        self,
        keys: dict[str, Iterable[bytes]],
        first: tuple[Any, tuple[Any, ...]] | None = None,
    ) -> list[Any]:
        """Fetch the rows of ``keys`` (by table) that are not known yet, all in one round trip;
        later gets of them need none. ``first``: a statement sent before them in the same
        round trip (the fence check of a batch); its rows are returned."""
        todo: list[tuple[str, set[bytes]]] = []
        for table, table_keys in keys.items():
            wanted = set(table_keys)
            wanted.difference_update(self._known.get(table, ()))
            wanted.difference_update(self._remembered.get(table, ()))
            if wanted:
                todo.append((table, wanted))
        if not todo and first is None:
            return []
        conn = self._cur.connection
        sent: list[tuple[str, set[bytes], psycopg.Cursor[Any]]] = []
        head: psycopg.Cursor[Any] | None = None
        with conn.pipeline():
            if first is not None:
                head = conn.cursor()
                head.execute(*first)
            for table, wanted in todo:
                cur = conn.cursor()
                cur.execute(self._sql.many[table], (list(wanted),))
                sent.append((table, wanted, cur))
        for table, wanted, cur in sent:
            found = {bytes(key): bytes(value) for key, value in cur.fetchall()}
            cur.close()
            known = self._known.setdefault(table, {})
            for key in wanted:
                known[key] = found.get(key)
        if head is None:
            return []
        rows = head.fetchall()
        head.close()
        return rows

    def get(self, table: str, key: bytes) -> bytes | None:
        for layer in (self._pending, self._known, self._remembered):
            rows = layer.get(table)
            if rows is not None:
                value = rows.get(key, _MISSING)
                if value is not _MISSING:
                    return value  # type: ignore[return-value]
        value = super().get(table, key)
        self._known.setdefault(table, {})[key] = value
        return value

    def get_many(self, table: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self.read_ahead({table: keys})
        return [self.get(table, key) for key in keys]

    def put(self, table: str, key: bytes, value: bytes) -> None:
        pending = self._pending.get(table)
        if pending is None:
            pending = self._pending[table] = {}
        pending[key] = bytes(value)

    def delete(self, table: str, key: bytes) -> None:
        pending = self._pending.get(table)
        if pending is None:
            pending = self._pending[table] = {}
        pending[key] = None

    def scan(
        self, table: str, lo: bytes, hi: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        self._flush_table(table)
        return super().scan(table, lo, hi, reverse=reverse)

    def values(self, table: str, start: bytes, count: int) -> list[bytes]:
        self._flush_table(table)
        return super().values(table, start, count)

    def flush(self) -> None:
        """Send every collected row."""
        for table in list(self._pending):
            self._flush_table(table)

    def _flush_table(self, table: str) -> None:
        pending = self._pending.pop(table, None)
        if not pending:
            return
        known = self._known.setdefault(table, {})
        puts = [(key, value) for key, value in pending.items() if value is not None]
        deletes = [(key,) for key, value in pending.items() if value is None]
        if deletes:
            self._cur.executemany(self._sql.delete[table], deletes)
        if puts:
            self._cur.executemany(self._sql.put[table], puts)
        known.update(pending)
