"""LmdbStore's group-commit writer: one thread owns LMDB's single write transaction.

Requests from every task queue up; the writer takes all that are waiting, applies them in one
transaction, commits with one fsync and then wakes every requester. Each request succeeds or
fails on its own: a stale ``expected_seq`` is detected before the request writes anything, and
a request that fails halfway (a bug, a corrupt row) is dropped by aborting and replaying the
batch without it.

The writer shares the GIL with the event loop, so every microsecond of Python it spends per
request is one the loop cannot spend: requests arrive validated and encoded (``_prepare`` runs
in the caller), the writer remembers the heads it committed instead of reading them back, and
it writes a batch's event rows and heads with one ``putmulti`` per table. A write hook
(``_hooks``) costs the writer one ``None`` check per transaction when none is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lmdb

from aion._loop import Notifier
from aion.errors import AionError, StoreError, StoreFull

from . import _apply
from ._hooks import ProbedKV, WriteHook, WriteProbe
from ._lmdb_files import _store_error
from ._lmdb_kv import _FlushFailed, _LmdbKV, _WriterKV
from ._observer import CommitObserver, notify
from ._prepare import Prepared
from ._records import CommitResult

__all__ = [
    "MAX_BATCH",
    "PAUSE_MAX_SECONDS",
    "PAUSE_MIN_BATCH",
    "_GroupCommit",
    "_QueueWriter",
    "_Request",
]

log = logging.getLogger("aion.store")

MAX_BATCH = 4096
#: A batch of at least this many requests pauses its event loop while it is written, for at
#: most ``PAUSE_MAX_SECONDS`` (see ``_LoopPause``).
PAUSE_MIN_BATCH = 16
PAUSE_MAX_SECONDS = 0.02
#: How many workflows' heads the writer remembers (about 150 bytes each); beyond, it forgets all.
MAX_REMEMBERED_HEADS = 4096


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


class _ProbedRequest(_Request):
    """A request whose write a write hook follows into the transaction (see ``_hooks``)."""

    __slots__ = ("probe",)

    def __init__(
        self,
        prepared: Prepared,
        notify: Notifier | None,
        event: asyncio.Future[None] | threading.Event | None,
        probe: WriteProbe,
    ) -> None:
        super().__init__(prepared, notify, event)
        self.probe = probe


class _Poisoned(Exception):
    def __init__(self, request: _Request, error: BaseException) -> None:
        self.request = request
        self.error = error


_STOP = object()


class _QueueWriter:
    """The writer thread of a store: takes every waiting request, writes them as one batch
    (``_write_batch``, the backend's), wakes their requesters; a writer that dies fails what
    is queued instead of leaving it waiting. Shared by LmdbStore and PostgresStore."""

    _queue: queue.SimpleQueue[Any]
    _failure: BaseException | None

    def _writer_of(self) -> str:
        """What the writer writes to, for messages."""
        raise NotImplementedError

    def _write_batch(self, batch: list[_Request]) -> None:
        """Write ``batch``; set each request's result or error."""
        raise NotImplementedError

    def _submit(self, request: _Request) -> None:
        if self._failure is not None:
            raise StoreError(
                f"the store writer for {self._writer_of()} has failed"
            ) from self._failure
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
                self._write_batch(batch)
                _wake(batch)
                batch = []
                if stop:
                    return
        except BaseException as exc:  # the writer must never die silently
            log.critical("store writer for %s failed", self._writer_of(), exc_info=True)
            self._failure = exc
            for request in batch:
                if request.result is None and request.error is None:
                    request.error = StoreError(
                        f"the store writer for {self._writer_of()} failed: {exc!r}; this write "
                        "may not have been recorded. Reopen the store."
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
            request.error = StoreError(
                f"the store writer for {self._writer_of()} has failed: {exc}"
            )
        _wake(pending)


class _GroupCommit(_QueueWriter):
    """The writer half of :class:`~aion.store.LmdbStore`: its thread, batches and retries.

    A mixin: LmdbStore opens the environment and sets the attributes below; the requests it
    submits are applied here.
    """

    path: Path
    _env: lmdb.Environment
    _dbs: dict[str, Any]
    _gate: _Gate
    _max_map_size: int
    _queue: queue.SimpleQueue[Any]
    _failure: BaseException | None
    #: Heads as of the last commit (engine role), or None (client role: read them back).
    _heads: dict[bytes, bytes] | None
    _bulk_writes: bool
    _hook: WriteHook | None
    _observer: CommitObserver | None

    def _writer_of(self) -> str:
        return str(self.path)

    def _write_batch(self, batch: list[_Request]) -> None:
        self._run_batch(batch)

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
        hook = self._hook
        probes: list[WriteProbe | None] | None = None
        if hook is not None:
            hook.before_transaction(len(pending))
            probes = _probes_of(pending)
        # Outcomes are published only after the commit: a batch that aborts (and is replayed
        # without a poisoned request) must not have told anyone "recorded".
        results: list[CommitResult | None] = []
        errors: list[tuple[int, BaseException]] = []
        heads = self._heads
        started = time.perf_counter()
        txn = self._env.begin(write=True)
        try:
            if heads is None:
                kv: _LmdbKV = _LmdbKV(txn, self._dbs)
            else:
                # A batch with a followed write is written row by row: each of that write's
                # rows is then one put that its probe sees, attributed to it.
                kv = _WriterKV(txn, self._dbs, heads, bulk=self._bulk_writes and probes is None)
            pause = _LoopPause.for_batch(pending)
            try:
                self._fill(kv, pending, results, errors, probes)
            finally:
                if pause is not None:
                    pause.end()  # before anything that may wait on the loop (a map resize)
            if hook is not None:
                hook.before_commit(len(pending))
        except BaseException:
            txn.abort()
            raise
        committing = time.perf_counter()
        txn.commit()  # one fsync for the whole batch (when durable)
        done = time.perf_counter()
        notify(self._observer, len(pending), done - started, done - committing)
        if isinstance(kv, _WriterKV) and heads is not None:
            if len(heads) + len(kv.written) > MAX_REMEMBERED_HEADS:
                heads.clear()
            heads.update(kv.written)
        for request, result in zip(pending, results, strict=True):
            request.result = result
        for index, error in errors:
            pending[index].error = error
        if probes is not None:
            _after_commit(pending, probes)

    @staticmethod
    def _fill(
        kv: _LmdbKV,
        pending: list[_Request],
        results: list[CommitResult | None],
        errors: list[tuple[int, BaseException]],
        probes: list[WriteProbe | None] | None = None,
    ) -> None:
        """Put every request's rows. A followed write's rows go through its probe (``probes``:
        one per request, None when the hook follows none), and whatever a probe raises fails
        its write alone."""
        check, apply = _apply.check, _apply.apply
        for index, request in enumerate(pending):
            prepared = request.prepared
            try:
                check(kv, prepared)
            except AionError as exc:  # SequenceConflict, CorruptRecord: nothing written
                errors.append((len(results), exc))
                results.append(None)
                continue
            probe = None if probes is None else probes[index]
            try:
                if probe is None:
                    results.append(apply(kv, prepared, checked=True))
                else:
                    probe.before_apply(len(pending))
                    results.append(apply(ProbedKV(kv, probe), prepared, checked=True))
                    probe.before_commit()
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


def _probes_of(pending: list[_Request]) -> list[WriteProbe | None] | None:
    """The probes of a batch's requests, or None when the hook follows none of them."""
    probes = [getattr(request, "probe", None) for request in pending]
    return probes if any(probe is not None for probe in probes) else None


def _after_commit(pending: list[_Request], probes: list[WriteProbe | None]) -> None:
    """Tell the probes their writes are committed; what one raises is its caller's outcome."""
    for request, probe in zip(pending, probes, strict=True):
        if probe is not None and request.error is None:
            try:
                probe.after_commit()
            except Exception as exc:
                request.error = exc


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
