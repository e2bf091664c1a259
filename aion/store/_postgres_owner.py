"""Ownership of partitions on a shared PostgreSQL store: leases, claims and fencing numbers.

Every workflow belongs to one of the schema's partitions (a hash of its tenant and id; the
count is fixed when the schema is made). An engine holds a lease — a row in ``engines`` whose
``lease_until`` it renews by the database's clock — and owns the partitions whose ``owner`` it
is. Claiming a partition increments its ``fence``: the fencing number of that ownership.

- **Claims** take free partitions and those of engines whose lease ran out, up to a fair share
  (the partitions divided by the live engines); an engine above its share releases the
  excess. A claim waits at most ``CLAIM_LOCK_WAIT`` for a stale owner's batch in flight (it
  holds the partition's row); an owner that stays in its transaction that long (paused,
  SIGSTOPped) has its writer's server process terminated, so its batch rolls back whole.
- **Fencing**: each write batch of an owner reads its partitions' rows ``FOR SHARE`` in its
  transaction (see ``PostgresStore``): a write to a partition whose owner or fence is no
  longer this engine's fails whole with :class:`~aion.errors.PartitionLost` and writes
  nothing, and a takeover waits for a batch that checked before it. So writes of every
  partition carry non-decreasing fences in commit order.
- **Renewal** touches only the engine's own ``engines`` row, which no batch locks: it never
  waits behind writes.

The operations run on a connection of their own, one at a time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from aion.errors import InvalidArgument, StoreError

__all__ = ["CLAIM_LOCK_WAIT", "Ownership", "partition_of_key"]

log = logging.getLogger("aion.store")

#: How long a claim waits for a stale owner's batch before terminating that owner's writer.
CLAIM_LOCK_WAIT = 0.5


#: Where a default child id begins: ``/child-N``, or ``/RUN/child-N`` for the children of a
#: run that continued as new (``ctx.child`` without ``workflow_id=``).
_CHILD_SUFFIX = re.compile(rb"(?:/[0-9a-f]{32})?/child-[0-9]+(?=/|\Z)")


def partition_of_key(wf_key: bytes, partitions: int) -> int:
    """The partition of the workflow whose key (``tenant NUL workflow id``) is ``wf_key``.

    A child with a default id (``PARENT/child-N``) is in its parent's partition, and so on
    down: a whole family of runs has one owner, so a parent and its children are written
    together and tell each other their outcomes in memory. The hash is of the key up to the
    first default-child suffix.
    """
    suffix = _CHILD_SUFFIX.search(wf_key)
    root = wf_key if suffix is None else wf_key[: suffix.start()]
    return zlib.crc32(root) % partitions


class Ownership:
    """One engine's leases and partitions on one schema (see the module docstring)."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        schema: str,
        engine_id: str,
        lease_ttl: float,
    ) -> None:
        self._connect = connect
        self.engine_id = engine_id
        self.lease_ttl = lease_ttl
        #: One database operation at a time (held across its round trips).
        self._op = threading.Lock()
        #: Guards ``_owned`` only, never across I/O: the writer checks fences under it while
        #: its transaction holds partitions' rows, which an operation may be waiting for.
        self._state = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._partitions = sql.Identifier(schema, "partitions")
        self._engines = sql.Identifier(schema, "engines")
        #: Partition -> fence, as this engine last claimed or saw them.
        self._owned: dict[int, int] = {}
        self.count = 0
        self.on_change: Callable[[set[int], set[int]], None] | None = None

    # --- reading ----------------------------------------------------------------------------

    def owned(self) -> dict[int, int]:
        """The partitions this engine owns (as it knows them) and their fences."""
        with self._state:
            return dict(self._owned)

    def partition_of(self, wf_key: bytes) -> int:
        return partition_of_key(wf_key, self.count)

    # --- the connection ---------------------------------------------------------------------

    def _db(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._conn = self._connect()
            conn.autocommit = True
        return conn

    def close(self) -> None:
        with self._op:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def open(self, partitions: int | None) -> None:
        """Read the schema's partition count (checking ``partitions`` against it) and take a
        lease."""
        with self._op, _errors("open the partitions of"):
            row = (
                self._db()
                .execute(sql.SQL("SELECT count(*) FROM {}").format(self._partitions))
                .fetchone()
            )
            self.count = int(row[0]) if row else 0
            if partitions is not None and partitions != self.count:
                raise InvalidArgument(
                    f"this schema was made with {self.count} partitions, not {partitions}; "
                    "the count is fixed when the schema is made"
                )
            self._renew()

    # --- leases -----------------------------------------------------------------------------

    def renew(self) -> None:
        """Extend this engine's lease to ``lease_ttl`` seconds from now (database clock)."""
        with self._op, _errors("renew the lease on"):
            self._renew()

    def _renew(self) -> None:
        self._db().execute(
            sql.SQL(
                "INSERT INTO {} (id, lease_until) VALUES (%s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until"
            ).format(self._engines),
            (self.engine_id, self.lease_ttl),
        )

    def register_writer(self, conn: psycopg.Connection[Any]) -> None:
        """Record the server process of this engine's writer connection (``conn``), with its
        start time: a claim terminates exactly that session if this engine's lease runs out
        while it holds a partition's row (never a later process that reused the pid)."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET writer_pid = pg_backend_pid(), writer_started = "
                "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) "
                "WHERE id = %s"
            ).format(self._engines),
            (self.engine_id,),
        )
        conn.commit()

    # --- claims -----------------------------------------------------------------------------

    def balance(self) -> tuple[set[int], set[int]]:
        """Renew the lease, then claim or release partitions toward a fair share. Returns the
        partitions gained and those lost (taken over by others, or released)."""
        with self._op, _errors("balance the partitions of"):
            self._renew()
            db = self._db()
            db.execute(  # engines long gone that own nothing: forgotten
                sql.SQL(
                    "DELETE FROM {} e WHERE e.lease_until < now() - interval '1 hour' "
                    "AND NOT EXISTS (SELECT 1 FROM {} p WHERE p.owner = e.id)"
                ).format(self._engines, self._partitions)
            )
            row = db.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE lease_until > now()").format(self._engines)
            ).fetchone()
            live = max(1, int(row[0]) if row else 1)
            share = math.ceil(self.count / live)
            mine = self._mine(db)
            if len(mine) > share:
                extra = sorted(mine)[share:]
                try:
                    with db.transaction():
                        self._lock_wait(db)
                        db.execute(
                            sql.SQL(
                                "UPDATE {} SET owner = NULL WHERE id = ANY(%s) AND owner = %s"
                            ).format(self._partitions),
                            (extra, self.engine_id),
                        )
                    for partition in extra:
                        del mine[partition]
                except psycopg.errors.LockNotAvailable:
                    pass  # a batch of ours holds them: released at the next round
            elif len(mine) < share:
                mine.update(self._claim(db, share - len(mine)))
            return self._adopt(mine)

    def claim(self, partitions: Iterable[int]) -> tuple[set[int], set[int]]:
        """Claim the given partitions if they are free or their owner's lease ran out (tests,
        and draining a stopping engine's partitions). Returns (gained, lost)."""
        with self._op, _errors("claim partitions of"):
            self._renew()
            db = self._db()
            mine = self._mine(db)
            mine.update(self._claim(db, None, list(partitions)))
            return self._adopt(mine)

    def release_all(self) -> None:
        """Give up every partition and the lease (a clean stop: others take over at once)."""
        with self._op, _errors("release the partitions of"):
            db = self._db()
            db.execute(
                sql.SQL("UPDATE {} SET owner = NULL WHERE owner = %s").format(self._partitions),
                (self.engine_id,),
            )
            db.execute(
                sql.SQL("DELETE FROM {} WHERE id = %s").format(self._engines), (self.engine_id,)
            )
            self._adopt({})

    def _mine(self, db: psycopg.Connection[Any]) -> dict[int, int]:
        rows = db.execute(
            sql.SQL("SELECT id, fence FROM {} WHERE owner = %s").format(self._partitions),
            (self.engine_id,),
        ).fetchall()
        return {int(i): int(f) for i, f in rows}

    def _claim(
        self, db: psycopg.Connection[Any], limit: int | None, only: list[int] | None = None
    ) -> dict[int, int]:
        free = sql.SQL(
            "(p.owner IS NULL OR NOT EXISTS "
            "(SELECT 1 FROM {} e WHERE e.id = p.owner AND e.lease_until > now()))"
        ).format(self._engines)
        rows = db.execute(
            sql.SQL(
                "SELECT p.id, p.fence FROM {} p "
                "WHERE {} AND p.owner IS DISTINCT FROM %s {} ORDER BY p.id"
            ).format(
                self._partitions,
                free,
                sql.SQL("AND p.id = ANY(%s)") if only is not None else sql.SQL(""),
            ),
            (self.engine_id, only) if only is not None else (self.engine_id,),
        ).fetchall()
        if limit is not None:
            rows = rows[:limit]
        if not rows:
            return {}
        # Compare and swap on the fence read: a concurrent claim (which adds one to it) makes
        # the row no longer match, so two engines never both take a partition.
        update = sql.SQL(
            "UPDATE {} p SET owner = %s, fence = p.fence + 1 "
            "FROM unnest(%s::integer[], %s::bigint[]) AS c(id, fence) "
            "WHERE p.id = c.id AND p.fence = c.fence RETURNING p.id, p.fence"
        ).format(self._partitions)
        params = (self.engine_id, [int(r[0]) for r in rows], [int(r[1]) for r in rows])
        for attempt in (1, 2):
            try:
                with db.transaction():
                    self._lock_wait(db)
                    claimed = db.execute(update, params).fetchall()
                return {int(i): int(f) for i, f in claimed}
            except psycopg.errors.LockNotAvailable:
                if attempt == 2:
                    return {}
                self._terminate_stale_writers(db)
        return {}

    @staticmethod
    def _lock_wait(db: psycopg.Connection[Any]) -> None:
        db.execute(
            sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{round(CLAIM_LOCK_WAIT * 1000)}ms")
            )
        )

    def _terminate_stale_writers(self, db: psycopg.Connection[Any]) -> None:
        """End the writer sessions of engines whose lease ran out: a batch of theirs that
        holds a partition's row (a paused process) rolls back and writes nothing. Only the
        exact session registered (pid and start time), never a process that reused the pid."""
        rows = db.execute(
            sql.SQL(
                "SELECT e.id, pg_terminate_backend(a.pid) FROM {} e "
                "JOIN pg_stat_activity a ON a.pid = e.writer_pid "
                "AND a.backend_start = e.writer_started "
                "WHERE e.lease_until < now() AND e.id <> %s"
            ).format(self._engines),
            (self.engine_id,),
        ).fetchall()
        for engine, done in rows:
            log.warning("ended the writer of engine %s, whose lease ran out (%s)", engine, done)

    def _adopt(self, mine: dict[int, int]) -> tuple[set[int], set[int]]:
        with self._state:
            before = self._owned
            gained = {p for p, f in mine.items() if before.get(p) != f}
            lost = {p for p, f in before.items() if mine.get(p) != f}
            self._owned = dict(mine)
        if (gained or lost) and self.on_change is not None:
            self.on_change(gained, lost)
        return gained, lost

    # --- fencing ----------------------------------------------------------------------------

    def fence_query(self, partitions: set[int]) -> tuple[sql.Composed, tuple[Any, ...]]:
        """The statement that, in a write transaction, locks ``partitions``' rows (``FOR
        SHARE``: a takeover waits for this transaction) and reads their owners and fences
        (for :meth:`fence_result`; sent in the batch's first round trip)."""
        return (
            sql.SQL("SELECT id, owner, fence FROM {} WHERE id = ANY(%s) FOR SHARE").format(
                self._partitions
            ),
            (sorted(partitions),),
        )

    def fence_check(self, cur: psycopg.Cursor[Any], partitions: set[int]) -> set[int]:
        """In a write transaction: lock ``partitions``' rows and return those this engine
        does not own at its fence."""
        if not partitions:
            return set()
        return self.fence_result(cur.execute(*self.fence_query(partitions)).fetchall(), partitions)

    def fence_result(self, rows: list[Any], partitions: set[int]) -> set[int]:
        """The partitions of ``partitions`` this engine does not own at its fence, given the
        rows :meth:`fence_query` read."""
        with self._state:
            owned = self._owned
            valid = {
                int(i)
                for i, owner, fence in rows
                if owner == self.engine_id and owned.get(int(i)) == fence
            }
            lost = {p for p in partitions - valid if p in owned}
            for partition in lost:
                del owned[partition]
        if lost and self.on_change is not None:
            self.on_change(set(), lost)
        return partitions - valid


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Database errors of an ownership operation as :class:`~aion.errors.StoreError`."""
    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(f"could not {what} the store: {exc}") from exc
