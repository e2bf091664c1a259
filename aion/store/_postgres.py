"""PostgresStore: the store on a PostgreSQL database shared by several processes.

The same store logic as LMDB and memory runs over a KV whose tables are PostgreSQL tables of
``(k bytea PRIMARY KEY, v bytea)`` in one schema (``_postgres_kv``): the rows are the bytes
LMDB holds, ordered the same way, so every query, cursor and check behaves the same.

- **Schema**: created and migrated by the engine on open (``_postgres_schema``): a version
  table records each migration; a schema of a newer aion is refused.
- **Writes**: one writer thread owns one connection and applies every waiting request in one
  transaction, one commit (one WAL flush) per batch; each request succeeds or fails on its
  own, as on LMDB. The writer's session holds the engine lock (a session advisory lock): a
  second engine on the same schema is refused with :class:`~aion.errors.StoreLocked`, and a
  writer that lost its connection takes the lock again before it writes anything.
- **Reads** run in worker threads on pooled connections, each in one repeatable-read
  transaction (a consistent snapshot for queries made of several statements).
- **Client role**: no lock, reads, and leaves inbox commands, like LMDB's client role.

A connection lost while a batch commits leaves that batch's outcome unknown: its requests fail
with :class:`~aion.errors.StoreError` saying so (docs/limits.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import secrets
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import psycopg
import psycopg_pool
from psycopg import sql

from aion._loop import Notifier, running_loop
from aion._tokens import KeyRing
from aion._tokens._keyfile import encode_ring, parse_ring
from aion.errors import (
    AionError,
    DataDirectoryError,
    InvalidArgument,
    PartitionLost,
    StoreClosed,
    StoreError,
    StoreLocked,
)

from . import _apply
from . import _keys as k
from ._cursors import KEY_BYTES, CursorKey
from ._hooks import ProbedKV, WriteHook, WriteProbe, write_info
from ._lmdb_writer import (
    _STOP,
    _after_commit,
    _no_loop,
    _outcome,
    _Poisoned,
    _ProbedRequest,
    _probes_of,
    _QueueWriter,
    _Request,
)
from ._observer import CommitObserver, notify
from ._postgres_import import is_postgres_url
from ._postgres_kv import Statements, _PgKV, _PgWriterKV
from ._postgres_owner import Ownership, partition_of_key
from ._postgres_schema import DEFAULT_PARTITIONS, check_or_migrate, read_meta, write_meta_once
from ._prepare import Prepared
from ._protocol import KVStore
from ._records import CommitResult, WorkflowRecord
from ._rows import KV

__all__ = ["PostgresStore", "is_postgres_url"]

R = TypeVar("R")
Role = Literal["engine", "client"]
Ownership_ = Literal["lock", "partitions"]

log = logging.getLogger("aion.store")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
CURSOR_KEY = b"cursor_key"
#: Rows per table the writer remembers (see ``PostgresStore._remember``).
MAX_REMEMBERED = 8192
WAITPOINT_KEYS = b"waitpoint_keys"
PAYLOAD_LIMIT = b"payload_limit"


class PostgresStore(_QueueWriter, KVStore):
    """The shared :class:`~aion.store.EventStore`: PostgreSQL, group commit, one engine per
    schema (several processes may read and leave inbox commands).

    Args:
        url: a libpq connection URL, ``postgresql://user@host:5432/dbname``; it may name the
            schema too, ``...dbname?schema=orders`` (aion takes that parameter out before
            connecting).
        schema: the PostgreSQL schema that holds the store's tables (created by the engine);
            stores in different schemas of one database are independent. Default ``aion``.
        role: ``"engine"`` (the default) takes the schema's engine lock and may write
            anything; ``"client"`` takes no lock, reads, and may only leave inbox commands.
        durable: ``True`` (default) reports a commit recorded once the database flushed it to
            its write-ahead log. ``False`` commits with ``synchronous_commit = off``: a crash
            of the database server may lose the last commits (never tearing one); a crash of
            the engine loses nothing.
        write_hook: called at every boundary of every write (see
            :class:`~aion.store.WriteHook`); for fault-injection tests.
        read_connections: the most connections reads use at once.
        connect_timeout: seconds to wait for the database when opening.
        lock_wait: seconds an engine waits for the schema's engine lock before it gives up
            with :class:`~aion.errors.StoreLocked` (the lock of an engine that was killed is
            released once the server notices, within milliseconds).

    Raises:
        StoreLocked: another engine holds the schema.
        StoreFormatError: the schema was made by a newer aion, or holds no store (client role).
        StoreError: the database cannot be reached.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "aion",
        role: Role = "engine",
        durable: bool = True,
        write_hook: WriteHook | None = None,
        read_connections: int = 4,
        connect_timeout: float = 10.0,
        lock_wait: float = 2.0,
        ownership: Ownership_ = "lock",
        partitions: int | None = None,
        lease_ttl: float = 10.0,
        engine_id: str | None = None,
    ) -> None:
        if not is_postgres_url(url):
            raise InvalidArgument(
                f"a PostgreSQL store needs a postgresql:// URL, not {_redact(str(url))!r}"
            )
        url, found = _split_params(url)
        schema = _from_url(found, "schema", schema, "aion", str)
        ownership = _from_url(found, "ownership", ownership, "lock", str)
        partitions = _from_url(found, "partitions", partitions, None, int)
        lease_ttl = _from_url(found, "lease_ttl", lease_ttl, 10.0, float)
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise InvalidArgument(
                f"schema must be 1 to 63 lower-case letters, digits or underscores, not "
                f"starting with a digit: {schema!r}"
            )
        if role not in ("engine", "client"):
            raise InvalidArgument(f"role must be 'engine' or 'client', not {role!r}")
        if not isinstance(lock_wait, int | float) or not 0 < lock_wait <= 3600:
            raise InvalidArgument(
                f"lock_wait must be more than 0 and at most 3600 seconds, not {lock_wait!r}"
            )
        self._lock_wait_ms = max(1, round(lock_wait * 1000))
        if ownership not in ("lock", "partitions"):
            raise InvalidArgument(f"ownership must be 'lock' or 'partitions', not {ownership!r}")
        if partitions is not None and (
            not isinstance(partitions, int)
            or isinstance(partitions, bool)
            or not 1 <= partitions <= 4096
        ):
            raise InvalidArgument(f"partitions must be an int from 1 to 4096, not {partitions!r}")
        if not isinstance(lease_ttl, int | float) or not 0 < lease_ttl <= 3600:
            raise InvalidArgument(
                f"lease_ttl must be more than 0 and at most 3600 seconds, not {lease_ttl!r}"
            )
        if engine_id is not None and (
            not isinstance(engine_id, str) or not 1 <= len(engine_id.encode()) <= 200
        ):
            raise InvalidArgument(f"engine_id must be 1 to 200 bytes of text, not {engine_id!r}")
        self.ownership: Ownership_ = ownership
        if not isinstance(read_connections, int) or not 1 <= read_connections <= 100:
            raise InvalidArgument(f"read_connections must be 1 to 100, not {read_connections!r}")
        self.url = url
        self.schema = schema
        self.role: Role = role
        if not isinstance(durable, bool):
            raise InvalidArgument(f"durable must be True or False, not {durable!r}")
        self.durable = durable
        self._connect_timeout = connect_timeout
        self._sql = Statements(schema)
        self._lock_id = zlib.crc32(f"aion-engine:{schema}".encode())
        #: The LISTEN/NOTIFY channel of the inbox (a channel name holds 63 bytes).
        self._channel = f"aion_inbox_{schema}"[:63]
        self._listener: threading.Thread | None = None
        self._on_inbox: Callable[[], None] | None = None
        self._closed = False
        #: Heads and workflow rows as of the last commit (engine role; see ``_remember``).
        # Not with partitions: there rows change owner, and a partition lost and regained may
        # have been written meanwhile (the batch reads its rows each time).
        self._remembered: dict[str, dict[bytes, bytes | None]] | None = (
            {"heads": {}, "workflows": {}} if role == "engine" and ownership == "lock" else None
        )
        #: Reads waiting on the database now (``Engine.wait_idle`` waits for them).
        self.reads_in_flight = 0
        self._failure: BaseException | None = None
        self._hook = write_hook
        self._observer: CommitObserver | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._notifier: tuple[asyncio.AbstractEventLoop | None, Notifier] = (None, _no_loop)
        self._inbox_counter = _Counter()
        self._client_write_lock = threading.Lock()
        self._wconn: psycopg.Connection[Any] | None = None
        with self._connect() as conn:
            try:
                check_or_migrate(
                    conn,
                    schema,
                    create=role == "engine",
                    where=self._where(),
                    partitions=partitions or DEFAULT_PARTITIONS,
                )
                self._cursors = CursorKey(
                    write_meta_once(conn, self._sql, CURSOR_KEY, secrets.token_bytes(KEY_BYTES))
                )
            except psycopg.Error as exc:
                raise StoreError(f"cannot open {self._where()}: {exc}") from exc
        #: Leases and partitions (``ownership="partitions"``, engine role), else None.
        self._owner: Ownership | None = None
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        try:
            if role == "engine" and ownership == "partitions":
                self._owner = Ownership(
                    self._connect, schema, engine_id or secrets.token_hex(8), float(lease_ttl)
                )
                self._owner.on_change = self._ownership_changed
                self._owner.open(partitions)
            if role == "engine":
                self._wconn = self._writer_connection()
            self._pool = psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=read_connections,
                kwargs={"autocommit": False, "connect_timeout": max(1, int(connect_timeout))},
                configure=_configure_reader,
                open=False,
                name=f"aion-read:{schema}",
            )
            try:
                self._pool.open(wait=True, timeout=connect_timeout)
            except psycopg_pool.PoolTimeout as exc:
                raise StoreError(f"cannot open read connections to {self._where()}: {exc}") from exc
        except BaseException:
            # Nothing half open is left behind: no connection, no lease of a phantom engine.
            self._close_writer_connection()
            if self._owner is not None:
                with contextlib.suppress(AionError):
                    self._owner.release_all()
                self._owner.close()
            if self._pool is not None:
                self._pool.close()
            raise
        self._writer: threading.Thread | None = None
        if role == "engine":
            self._writer = threading.Thread(
                target=self._writer_loop, name=f"aion-store-writer:{schema}", daemon=True
            )
            self._writer.start()

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.url)!r}, schema={self.schema!r}, role={self.role!r})"

    # --- connections ------------------------------------------------------------------------

    def _where(self) -> str:
        return f"schema {self.schema!r} of {_redact(self.url)}"

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.url, autocommit=False, connect_timeout=max(1, int(self._connect_timeout))
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {_redact(self.url)}: {exc}") from exc

    def _writer_connection(self) -> psycopg.Connection[Any]:
        """A connection that holds the engine lock of the schema (a session advisory lock), or
        with partitions, one registered as this engine's writer."""
        if self._owner is not None:
            # Engines sharing partitions hold the engine lock shared: none runs beside an
            # engine that took the schema alone (ownership="lock"), which holds it exclusive.
            conn = self._connect()
            try:
                conn.execute(
                    sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{self._lock_wait_ms}ms"))
                )
                conn.execute("SELECT pg_advisory_lock_shared(%s)", (self._lock_id,))
                conn.execute("RESET lock_timeout")
                if not self.durable:
                    conn.execute("SET synchronous_commit TO off")
                conn.commit()
                self._owner.register_writer(conn)
            except psycopg.errors.LockNotAvailable:
                conn.close()
                raise StoreLocked(
                    f"an engine with ownership='lock' holds {self._where()} alone; stop it "
                    "before engines share the schema's partitions"
                ) from None
            except psycopg.Error as exc:
                conn.close()
                raise StoreError(f"cannot open the writer of {self._where()}: {exc}") from exc
            return conn
        conn = self._connect()
        try:
            # A killed engine's lock goes when the server notices its connection is gone (a
            # few milliseconds): wait that long rather than refuse its successor.
            conn.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{self._lock_wait_ms}ms"))
            )
            conn.execute("SELECT pg_advisory_lock(%s)", (self._lock_id,))
            conn.execute("RESET lock_timeout")
            if not self.durable:
                conn.execute("SET synchronous_commit TO off")
            conn.commit()
            locked = True
        except psycopg.errors.LockNotAvailable:
            locked = False
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"cannot take the engine lock of {self._where()}: {exc}") from exc
        if not locked:
            conn.close()
            raise StoreLocked(
                f"another engine holds {self._where()}: one engine drives a schema; stop it, "
                "use another schema, or open this store with role='client'"
            )
        return conn

    def _close_writer_connection(self) -> None:
        conn, self._wconn = self._wconn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # --- reads ------------------------------------------------------------------------------

    def _readers(self) -> psycopg_pool.ConnectionPool[Any]:
        pool = self._pool
        assert pool is not None  # set up by __init__
        return pool

    def _read(self, fn: Callable[[KV], R]) -> R:
        self._check_open()
        try:
            with (
                self._readers().connection(timeout=self._connect_timeout) as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                return fn(_PgKV(cur, self._sql))
        except psycopg_pool.PoolTimeout as exc:
            raise StoreError(f"no read connection to {self._where()}: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"reading {self._where()} failed: {exc}; retry") from exc

    async def _aread(self, fn: Callable[[KV], R]) -> R:
        self.reads_in_flight += 1
        try:
            return await anyio.to_thread.run_sync(self._read, fn)
        finally:
            self.reads_in_flight -= 1

    # --- writes -----------------------------------------------------------------------------

    def set_write_hook(self, hook: WriteHook | None) -> WriteHook | None:
        """Install ``hook`` (None: remove it) for the writes that begin from now on; returns
        the hook it replaces. See :class:`~aion.store.WriteHook`."""
        previous, self._hook = self._hook, hook
        return previous

    def set_commit_observer(self, observer: CommitObserver | None) -> CommitObserver | None:
        """Call ``observer(writes, seconds, commit_seconds)`` on the writer thread after each
        committed transaction (None: stop); returns the observer it replaces.
        ``commit_seconds`` is the last round trip: the batch's rows and COMMIT, pipelined
        together (the WAL flush is in it; it cannot be timed apart without one more round
        trip). For the engine's metrics."""
        previous, self._observer = self._observer, observer
        return previous

    def count_timers(self, *, due_before: datetime | None = None, limit: int = 1_000_000) -> int:
        """How many timer rows there are (``due_before``: due before that time), or ``limit``
        if at least that many: one bounded count on the server. Synchronous: the engine's
        metrics call it from a worker thread."""
        hi = None if due_before is None else k.be64(k.micros(due_before))

        def count(kv: KV) -> int:
            assert isinstance(kv, _PgKV)
            return kv.count("timers", hi, limit)

        return self._read(count)

    async def _commit(self, prepared: Prepared) -> CommitResult:
        self._check_open()
        hook = self._hook
        probe = None if hook is None else hook.begin_write(write_info(prepared))
        if self.role == "client":
            if prepared.appends or prepared.workflows or prepared.timers_add or prepared.quarantine:
                raise InvalidArgument(
                    "a client-role store may only leave inbox commands; open the store as the "
                    "engine to write histories"
                )
            return await anyio.to_thread.run_sync(self._client_commit, prepared, probe)
        loop = running_loop()
        last_loop, notify = self._notifier
        if last_loop is not loop:
            notify = loop.call_soon_threadsafe
            self._notifier = (loop, notify)
        future: asyncio.Future[None] = loop.create_future()
        if probe is None:
            request = _Request(prepared, notify, future)
        else:
            request = _ProbedRequest(prepared, notify, future, probe)
        self._submit(request)
        try:
            await future
        except BaseException:
            # Cancelled while the write is in flight: it lands or fails within one batch, and
            # the caller must learn which (as on LMDB).
            with anyio.CancelScope(shield=True):
                while request.result is None and request.error is None:
                    await anyio.sleep(0.001)
        return _outcome(request)

    def commit_prepared_sync(self, prepared: Prepared) -> CommitResult:
        """Commit from a plain thread (no event loop), waiting for the result."""
        self._check_open()
        hook = self._hook
        probe = None if hook is None else hook.begin_write(write_info(prepared))
        if self.role == "client":
            return self._client_commit(prepared, probe)
        done = threading.Event()
        request = _make_request(prepared, None, done, probe)
        self._submit(request)
        done.wait()
        return _outcome(request)

    def _client_commit(self, prepared: Prepared, probe: WriteProbe | None) -> CommitResult:
        request = _make_request(prepared, None, None, probe)
        with self._client_write_lock:  # one connection of its own (reads are read-only)
            for attempt in (1, 2):
                conn = self._wconn
                if conn is None or conn.closed or conn.broken:
                    self._close_writer_connection()
                    try:
                        conn = self._wconn = self._connect()
                    except StoreError as exc:
                        request.error = exc
                        break
                try:
                    self._run_batch(conn, [request], retry=attempt == 1)
                    break
                except _Lost:
                    continue
        return _outcome(request)

    def _writer_of(self) -> str:
        return self._where()

    def _write_batch(self, batch: list[_Request]) -> None:
        """One batch on the writer's connection, reconnecting (and taking the engine lock
        again) first if the connection was lost. A batch that failed on a lost connection
        before its commit wrote nothing: it is tried once more on a new connection."""
        for attempt in (1, 2):
            conn = self._wconn
            if conn is None or conn.closed or conn.broken:
                self._close_writer_connection()
                self._forget()  # another engine may have written while the lock was free
                try:
                    conn = self._wconn = self._writer_connection()
                except AionError as exc:
                    for request in batch:
                        request.error = StoreError(
                            f"{exc} (the writer lost its connection and could not take the "
                            "engine lock again); nothing of this write was recorded"
                        )
                        request.error.__cause__ = exc
                    return
            try:
                self._run_batch(conn, batch, retry=attempt == 1)
                return
            except _Lost:
                log.warning("lost the connection to %s; writing the batch again", self._where())
                # Only what has no outcome yet: a request committed alone before the loss (or
                # refused) keeps what it was told.
                batch = [r for r in batch if r.result is None and r.error is None]
                if not batch:
                    return

    def _run_batch(
        self, conn: psycopg.Connection[Any], batch: list[_Request], *, retry: bool = False
    ) -> None:
        """Apply ``batch`` in one transaction on ``conn``; set each request's result or error.

        Raises:
            _Lost: (``retry``) the connection was lost before the commit: nothing was written.
        """
        pending = batch
        while pending:
            try:
                self._apply_in_txn(conn, pending)
                return
            except _Poisoned as poisoned:
                poisoned.request.error = poisoned.error
                pending = [r for r in pending if r is not poisoned.request]
            except _CommitUnknown as unknown:
                for request in pending:
                    request.error = StoreError(
                        f"the connection to {self._where()} was lost while committing: this "
                        "write may or may not have been recorded. Read it back before "
                        f"repeating it. ({unknown.cause})"
                    )
                return
            except psycopg.OperationalError as exc:
                if retry and conn.broken:
                    raise _Lost from exc
                for request in pending:
                    request.error = StoreError(
                        f"writing to {self._where()} failed: {exc}. Nothing of this write was "
                        "recorded; retry."
                    )
                return
            except psycopg.Error as exc:
                if len(pending) > 1:
                    # The database refused a row; which request's is not known: each alone.
                    for request in pending:
                        self._run_batch(conn, [request], retry=retry)
                    return
                pending[0].error = StoreError(
                    f"{self._where()} refused this write: {exc}. Nothing of it was recorded."
                )
                return

    def _apply_in_txn(self, conn: psycopg.Connection[Any], pending: list[_Request]) -> None:
        hook = self._hook
        probes: list[WriteProbe | None] | None = None
        if hook is not None:
            hook.before_transaction(len(pending))
            probes = _probes_of(pending)
        results: list[CommitResult | None] = []
        errors: list[tuple[int, BaseException]] = []
        fenced: dict[int, BaseException] = {}
        started = time.perf_counter()
        try:
            with conn.cursor() as cur:
                touched: list[set[int]] = []
                first = None
                if self._owner is not None and self._fencing:
                    touched = [self._partitions_of(r.prepared) for r in pending]
                    if any(touched):
                        first = self._owner.fence_query(set().union(*touched))
                kv = _PgWriterKV(cur, self._sql, self._remembered)
                # The fence check (locking the partitions' rows) and the rows the batch
                # checks, in one round trip.
                fence_rows = kv.read_ahead(
                    {
                        "heads": (a.wf_key for r in pending for a in r.prepared.appends),
                        "workflows": (
                            _workflow_key(w) for r in pending for w in r.prepared.workflows
                        ),
                    },
                    first,
                )
                if first is not None:
                    fenced = self._fence(fence_rows, touched)
                _fill(kv, pending, results, errors, probes, fenced)
                if hook is not None:
                    hook.before_commit(len(pending))
                if self._audit_table is not None and self._owner is not None:
                    self._audit(cur, [r for i, r in enumerate(pending) if i not in fenced])
                committing = time.perf_counter()
                try:
                    # Every table's rows and the commit (one WAL flush for the whole batch)
                    # in one round trip.
                    with conn.pipeline():
                        kv.flush()
                        if (self.role == "client" or self._owner is not None) and any(
                            r.prepared.inbox_put for r in pending
                        ):
                            # Delivered with the commit: the engine takes it at once. (What
                            # an engine alone on the schema keeps in the inbox for itself
                            # rings no bell, as on LMDB: it looks there at its own pace. With
                            # partitions, what an engine queues is for the owner of another.)
                            cur.execute("SELECT pg_notify(%s, '')", (self._channel,))
                        conn.commit()
                except psycopg.OperationalError as exc:
                    if not conn.broken:
                        # The server refused a statement or the commit (a timeout, a full
                        # disk ...) and said so: nothing was committed; rolled back below.
                        raise
                    self._forget()
                    raise _CommitUnknown(exc) from exc
        except _CommitUnknown:
            raise
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        done = time.perf_counter()
        notify(self._observer, len(pending), done - started, done - committing)
        self._remember(kv.known())
        for request, result in zip(pending, results, strict=True):
            request.result = result
        for index, error in errors:
            pending[index].error = error
        if probes is not None:
            _after_commit(pending, probes)

    # --- partitions ---------------------------------------------------------------------------

    def _fence(self, rows: list[Any], touched: list[set[int]]) -> dict[int, BaseException]:
        """Check, from the partitions' rows read under their row locks, that this engine
        still owns the partitions of the batch's writes (``touched``: each request's) at its
        fences; the requests that touch a lost one, by index, with their error (they are left
        out of the batch whole)."""
        assert self._owner is not None
        lost = self._owner.fence_result(rows, set().union(*touched))
        if not lost:
            return {}
        return {
            i: PartitionLost(
                f"this engine ({self._owner.engine_id}) no longer owns partition "
                f"{min(parts & lost)} of {self._where()}: another engine took it over. Nothing "
                "of this write was recorded; the new owner drives those runs."
            )
            for i, parts in enumerate(touched)
            if parts & lost
        }

    def _partitions_of(self, prepared: Prepared) -> set[int]:
        assert self._owner is not None
        keys = [a.wf_key for a in prepared.appends]
        keys += [_workflow_key(w) for w in prepared.workflows]
        keys += [_owner_key(key, 8) for key, _ in prepared.timers_add]
        keys += [_owner_key(key, 8) for key in prepared.timers_delete]
        keys += [_owner_key(key, 0) for key, _ in prepared.waitpoints]
        keys += [k.workflow_key(a.tenant, a.workflow_id) for a in prepared.approvals]
        for row in prepared.quarantine:
            if row.table in _PER_WORKFLOW:
                keys.append(_owner_key(row.key, 0))
            elif row.table == "timers":
                keys.append(_owner_key(row.key, 8))
        count = self._owner.count
        return {partition_of_key(key, count) for key in keys}

    def _ownership_changed(self, gained: set[int], lost: set[int]) -> None:
        if lost:
            self._forget()  # rows of a lost partition may change under another owner
        callback = self.on_partitions
        if callback is not None:
            try:
                callback(gained, lost)
            except Exception:  # called on the writer's thread: never worth the writer
                log.exception("the on_partitions callback failed")

    #: Test-only switch: False skips the fence check (the negative control of the fencing
    #: tests shows that a stale owner's write then lands after a takeover).
    _fencing = True

    #: Test-only: a table (in the store's schema) where every batch records, for each
    #: partition it writes, the fence this engine believes it holds (the chaos test checks
    #: them against the partition's fence at commit time, with a deferred trigger).
    _audit_table: str | None = None

    def _audit(self, cur: psycopg.Cursor[Any], requests: list[_Request]) -> None:
        assert self._owner is not None and self._audit_table is not None
        touched = set().union(*(self._partitions_of(r.prepared) for r in requests))
        if not touched:
            return
        owned = self._owner.owned()
        rows = sorted(touched)
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (partition, fence, engine) "
                "SELECT p, f, %s FROM unnest(%s::integer[], %s::bigint[]) AS a(p, f)"
            ).format(sql.Identifier(self.schema, self._audit_table)),
            (self._owner.engine_id, rows, [owned.get(p, -1) for p in rows]),
        )

    #: Called with (gained, lost) partitions whenever this engine's ownership changes.
    on_partitions: Callable[[set[int], set[int]], None] | None = None

    @property
    def engine_id(self) -> str | None:
        """This engine's id in the ``engines`` table (``ownership="partitions"``), else None."""
        return None if self._owner is None else self._owner.engine_id

    def partition_of(self, workflow_id: str, *, tenant: str = "default") -> int:
        """The partition of a workflow (``ownership="partitions"``)."""
        return partition_of_key(k.workflow_key(tenant, workflow_id), self._need_owner().count)

    @property
    def partition_count(self) -> int:
        """The schema's number of partitions (``ownership="partitions"``)."""
        return self._need_owner().count

    @property
    def lease_ttl(self) -> float:
        """How long this engine's lease lasts unrenewed (``ownership="partitions"``)."""
        return self._need_owner().lease_ttl

    def owned_partitions(self) -> dict[int, int]:
        """The partitions this engine owns and their fencing numbers."""
        return self._need_owner().owned()

    def balance(self) -> tuple[set[int], set[int]]:
        """Renew this engine's lease and claim or release partitions toward a fair share;
        returns (gained, lost). Call it more often than ``lease_ttl``."""
        return self._need_owner().balance()

    def claim(self, partitions: Iterable[int]) -> tuple[set[int], set[int]]:
        """Claim these partitions if they are free or their owner's lease ran out."""
        return self._need_owner().claim(partitions)

    def renew_lease(self) -> None:
        """Extend this engine's lease to ``lease_ttl`` from now (the database's clock)."""
        self._need_owner().renew()

    def _need_owner(self) -> Ownership:
        if self._owner is None:
            raise InvalidArgument(
                "this store was opened with ownership='lock' (one engine per schema): "
                "partitions need PostgresStore(..., ownership='partitions')"
            )
        return self._owner

    def _remember(self, known: dict[str, dict[bytes, bytes | None]]) -> None:
        """Keep the heads and workflow rows a committed batch read or wrote: only this
        writer changes them while it holds the engine lock, so the next batches need not read
        them back (bounded: beyond ``MAX_REMEMBERED`` rows a table starts afresh)."""
        if self._remembered is None:
            return
        for table, rows in self._remembered.items():
            new = known.get(table)
            if new:
                if len(rows) + len(new) > MAX_REMEMBERED:
                    rows.clear()
                rows.update(new)

    def _forget(self) -> None:
        """Forget every remembered row (the lock was, or may have been, lost)."""
        if self._remembered is not None:
            for rows in self._remembered.values():
                rows.clear()

    def _new_inbox_id(self) -> str:
        # Ordered by time across processes; unique by process and counter (pids repeat across
        # machines: the counter starts at a random value).
        return f"{time.time_ns():020d}-{os.getpid():08x}-{self._inbox_counter.next():016x}"

    def _cursor_key(self) -> CursorKey:
        return self._cursors

    def read_meta(self, key: bytes) -> bytes | None:
        """A row of the store's ``meta`` table (synchronously)."""
        try:
            with self._readers().connection(timeout=self._connect_timeout) as conn:
                return read_meta(conn, self._sql, key)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"reading the meta rows of {self._where()} failed: {exc}") from exc

    def write_meta_once(self, key: bytes, value: bytes) -> bytes:
        """Store ``value`` under ``key`` unless a value is there; returns the one stored.
        (On a connection of its own: the read connections are read-only.)"""
        try:
            with self._connect() as conn:
                return write_meta_once(conn, self._sql, key, value)
        except psycopg.Error as exc:
            raise StoreError(f"writing the meta rows of {self._where()} failed: {exc}") from exc

    def load_or_create_key_ring(self, *, now: datetime, require_existing: bool) -> KeyRing:
        """The waitpoint key ring kept in the store (every engine and client on the database
        shares it), created at first use like the key file of a data directory.

        Raises:
            DataDirectoryError: ``require_existing`` and the store holds no ring yet, or the
                stored ring is unreadable.
        """
        where = f"(the meta row 'waitpoint_keys' of {self._where()})"
        data = self.read_meta(WAITPOINT_KEYS)
        if data is None:
            if require_existing:
                raise DataDirectoryError(
                    f"the engine was configured to require an existing waitpoint key, but "
                    f"{where} does not exist yet. Pass your key with waitpoint_key=..."
                )
            data = self.write_meta_once(WAITPOINT_KEYS, encode_ring(KeyRing.generate(now)))
        return parse_ring(data, where)

    def record_payload_limit(self, limit: int) -> None:
        """Record the engine's ``max_payload_bytes`` for clients to check against."""
        try:
            with self._connect() as conn, conn.transaction():
                conn.execute(self._sql.put["meta"], (PAYLOAD_LIMIT, b"%d" % limit))
        except psycopg.Error as exc:
            raise StoreError(
                f"recording the payload limit in {self._where()} failed: {exc}"
            ) from exc

    def payload_limit(self) -> int | None:
        """The limit the last engine recorded, or None."""
        data = self.read_meta(PAYLOAD_LIMIT)
        try:
            return None if data is None else int(data)
        except ValueError:
            return None

    # --- the inbox doorbell -----------------------------------------------------------------

    def listen_inbox(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (from a thread of the store's) whenever a command is committed to
        the inbox, by any process (LISTEN/NOTIFY); None stops it. A hint only, as the doorbell
        of a data directory: a notification lost with a connection is made up for by the
        engine's regular look at the inbox, and by one call after reconnecting. The listening
        thread runs from the first call until the store closes."""
        self._on_inbox = callback
        if callback is not None and self._listener is None and not self._closed:
            self._listener = threading.Thread(
                target=self._listen, name=f"aion-inbox-listener:{self.schema}", daemon=True
            )
            self._listener.start()

    def _listen(self) -> None:
        backoff = 0.05
        while not self._closed:
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._rang()  # what was queued while nobody listened
                    backoff = 0.05
                    while not self._closed:
                        for _ in conn.notifies(timeout=0.25):
                            self._rang()
            except psycopg.Error as exc:
                log.debug("inbox listener of %s: %s; reconnecting", self._where(), exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _rang(self) -> None:
        callback = self._on_inbox
        if callback is not None:
            try:
                callback()
            except Exception:  # a hint: never worth the listener
                log.debug("inbox callback failed", exc_info=True)

    # --- lifecycle --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"the store in {self._where()} is closed")

    def close(self) -> None:
        """Finish queued writes, stop the writer, close the connections (the engine lock goes
        with the writer's). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
        self._close_writer_connection()
        if self._owner is not None:
            with contextlib.suppress(psycopg.Error, AionError):
                self._owner.release_all()  # the others take the partitions over at once
            self._owner.close()
        self._on_inbox = None
        if self._listener is not None:
            self._listener.join()
        self._readers().close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _debug_put_raw(self, table: str, key: bytes, value: bytes) -> None:
        """Write raw bytes into a table, bypassing every check (tests of corrupt records)."""
        with self._connect() as conn, conn.cursor() as cur:
            _PgKV(cur, self._sql).put(table, key, value)
        self._forget()


class _Lost(Exception):
    """The connection broke before the commit (nothing written): worth one more try."""


class _CommitUnknown(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Counter:
    """A thread-safe counter starting at a random value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = int.from_bytes(os.urandom(6), "big") << 16

    def next(self) -> int:
        with self._lock:
            self._value += 1
            return self._value


def _fill(
    kv: _PgWriterKV,
    pending: list[_Request],
    results: list[CommitResult | None],
    errors: list[tuple[int, BaseException]],
    probes: list[WriteProbe | None] | None,
    fenced: dict[int, BaseException] | None = None,
) -> None:
    """Apply every request's rows: a stale head, a corrupt row or a lost partition
    (``fenced``) fails its request alone (nothing of it written); anything else it raises
    poisons it (the batch is replayed without it)."""
    for index, request in enumerate(pending):
        prepared = request.prepared
        if fenced and index in fenced:
            errors.append((len(results), fenced[index]))
            results.append(None)
            continue
        try:
            _apply.check(kv, prepared)
        except AionError as exc:  # SequenceConflict, CorruptRecord: nothing written
            errors.append((len(results), exc))
            results.append(None)
            continue
        probe = None if probes is None else probes[index]
        try:
            if probe is None:
                results.append(_apply.apply(kv, prepared, checked=True))
            else:
                probe.before_apply(len(pending))
                results.append(_apply.apply(ProbedKV(kv, probe), prepared, checked=True))
                probe.before_commit()
        except psycopg.Error:
            raise
        except Exception as exc:
            raise _Poisoned(request, exc) from exc


def _make_request(
    prepared: Prepared,
    notify: Notifier | None,
    event: asyncio.Future[None] | threading.Event | None,
    probe: WriteProbe | None,
) -> _Request:
    if probe is None:
        return _Request(prepared, notify, event)
    return _ProbedRequest(prepared, notify, event, probe)


#: Tables whose keys start with ``tenant NUL workflow id`` (fenced by that workflow's partition).
_PER_WORKFLOW = frozenset(
    {"events", "heads", "runs", "workflows", "active", "waitpoints", "approvals"}
)


def _owner_key(key: bytes, start: int) -> bytes:
    """``tenant NUL workflow id`` of a row key that has it at ``start`` (timer keys after their
    due time, waitpoint keys at 0), followed by NUL and more."""
    first = key.find(b"\x00", start)
    if first < 0:  # no workflow id in it (a damaged key): the bytes as they are
        return key[start:]
    second = key.find(b"\x00", first + 1)
    return key[start : second if second >= 0 else len(key)]


def _workflow_key(record: WorkflowRecord) -> bytes:
    return k.workflow_key(record.tenant, record.workflow_id)


def _configure_reader(conn: psycopg.Connection[Any]) -> None:
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True


#: aion's own query parameters of a store URL (libpq does not know them).
_URL_PARAMETERS = ("schema", "ownership", "partitions", "lease_ttl")


def _split_params(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without aion's own query parameters (``schema``, ``ownership``, ``partitions``,
    ``lease_ttl``), and their values."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    found: dict[str, str] = {}
    for name, value in query:
        if name in _URL_PARAMETERS:
            if name in found:
                raise InvalidArgument(f"the URL names {name} more than once: name it once")
            found[name] = value
    if not found:
        return url, found
    rest = urllib.parse.urlencode([(n, v) for n, v in query if n not in _URL_PARAMETERS])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), found


def _from_url(found: dict[str, str], name: str, given: Any, default: Any, kind: type) -> Any:
    """The value of a store setting named in the URL and/or passed as an argument."""
    if name not in found:
        return given
    text = found[name]
    try:
        value = kind(text)
    except ValueError:
        raise InvalidArgument(
            f"the URL's {name}={text!r} is not {'a number' if kind is not str else 'valid'}"
        ) from None
    if given not in (default, value):
        raise InvalidArgument(
            f"the URL names {name}={text!r} and {name}={given!r} was passed: pass one"
        )
    return value


def _redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
