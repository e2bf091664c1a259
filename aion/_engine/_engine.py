"""``aion.Engine``: wiring, lifecycle and the public methods.

One cohesive thing over ~600 lines: the public class. Each public method checks its arguments
and documents what it raises (most of the length); the work is done elsewhere: run actors in
:mod:`._actor` (given :class:`_Services`, never the engine), timers in :mod:`._timers`, the
inbox in :mod:`._inbox`, reads in :mod:`._views`, the data directory's files in
:mod:`._datadir`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from aion import _control, _gc, _tracing, _validate
from aion import events as ev
from aion._clock import Clock, SystemClock, from_timestamp
from aion._codec import (
    DECODE_ERRORS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    decode_event,
    decode_events,
    encode_payload,
)
from aion._doorbell import Doorbell
from aion._ids import new_id, new_workflow_id
from aion._loop import Flag, wait_all_tasks_blocked
from aion._recovery import RecoveryReport, sweep
from aion._replay import WorkflowDefinition, definition_of
from aion._replay._watch import ActivationWatch
from aion._supervision import (
    Backoff,
    ChildContext,
    ChildSpec,
    ChildStartError,
    Strategy,
    Supervisor,
)
from aion._tokens import KeyRing, peek_claims
from aion.errors import (
    AionError,
    DependencyMissing,
    EngineStopped,
    InvalidArgument,
    InvalidToken,
    PartitionLost,
    PayloadError,
    SequenceConflict,
    StoreError,
)
from aion.store import (
    EventStore,
    InboxCommand,
    LmdbStore,
    Page,
    Status,
    TimerRow,
    WorkflowRecord,
    Write,
)
from aion.store._postgres_import import is_postgres_url, postgres_store

from ._actor import Runtime
from ._config import RuntimeConfig
from ._datadir import data_dir, load_keys, record_payload_limit
from ._inbox import Inbox, start_args, start_queued
from ._messages import (
    Cancel,
    Complete,
    Decide,
    Message,
    Outcome,
    Reply,
    Signal,
    Wake,
    to_inbox,
)
from ._metrics import Metrics, StoreCounts
from ._options import check_options
from ._partitions import Partitions
from ._policy import ApprovalPolicy, ApprovalRule
from ._round import RunStart
from ._steps import StepExecutor
from ._tasks import Started, leaves, one_error
from ._timers import Timers
from ._types import (
    HistoryEvent,
    PendingApproval,
    WaitpointInfo,
    WorkflowDescription,
    WorkflowHandle,
)
from ._views import Reader
from ._watchdog import Watchdog

__all__ = ["Engine"]

log = logging.getLogger("aion.engine")


class Engine:
    """An embedded durable-workflow engine on one data directory.

    Args:
        path: the data directory (created if missing), a PostgreSQL URL
            (``"postgresql://user@host/db"``: a :class:`~aion.store.PostgresStore` in schema
            ``aion``, needs ``pip install "aion[postgres]"``), or an
            :class:`~aion.store.EventStore` instance to run on (e.g. ``MemoryStore()`` in tests).
            Engines on one PostgreSQL schema share its runs (docs/scale-out.md): a request for
            a run that another engine drives returns once it is durably queued for that
            engine, not once it is recorded (``?ownership=lock``: one engine per schema).
        workflows: the workflow functions (decorated with ``@aion.workflow``) this engine runs.
        clock: the source of time (``aion.testing.ManualClock`` in tests).
        durable: fsync every commit (default). See docs/operations.md.
        max_payload_bytes: limit for encoded arguments, results and signal payloads.
        max_resident_runs / max_resident_bytes: idle runs are evicted (least recently used
            first) while more than ``max_resident_runs`` runs are in memory or their estimated
            memory is above ``max_resident_bytes`` (default 64 MiB; a run is counted at 8 KiB
            plus 128 bytes per event of its current run); an evicted run leaves nothing in
            memory and is replayed when something happens to it. See docs/operations.md.
        max_concurrent_steps: steps running at once; ``step_threads``: of them, sync steps in
            worker threads at once.
        activation_workers: runs processed concurrently (their commits share fsyncs).
        inbox_interval: how often commands left by other processes are picked up (seconds).
        code_version: recorded in every run started by this engine.
        approval_policy: steps that wait for a person's approval before they run (an
            :class:`ApprovalPolicy`, or a list of rules / step-name globs).
        waitpoint_key: the key ring (or one secret of at least 32 bytes) that signs waitpoint
            tokens. Default: ``waitpoint-keys.json`` in the data directory, created (mode 0600)
            on first use; an in-memory random key for a store instance without a directory.
        require_waitpoint_key: refuse to start unless ``waitpoint_key`` is given or the key
            file exists (for deployments that distribute keys themselves).
        service_restarts / service_window: the root supervisor's restart intensity: a service
            (store writer, timer wheel, step executor, run actors, inbox) that fails more than
            ``service_restarts`` times within ``service_window`` seconds stops the engine.
        tune_gc: while the engine runs, raise CPython's youngest-generation GC threshold from
            its default 700 to 50,000 (~20% less CPU per workflow under load; an application
            that set its own thresholds keeps them; restored when the last engine stops). See
            docs/operations.md.
        activation_limit: seconds an activation of workflow code may hold the event loop. A
            watchdog thread logs a WARNING naming the run and its code location while one holds
            it longer; a run is parked BLOCKED when it does so while its history is replayed,
            or three times live. None turns the watchdog off. See docs/limits.md.

    Raises:
        InvalidArgument: an option has the wrong type or is out of range (the message names
            it and the range); nothing is opened.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | EventStore,
        *,
        workflows: Iterable[Any] = (),
        clock: Clock | None = None,
        durable: bool = True,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_resident_runs: int = 10_000,
        max_resident_bytes: int = 64 * 2**20,
        max_concurrent_steps: int = 256,
        step_threads: int = 32,
        activation_workers: int = 256,
        inbox_interval: float = 0.5,
        timer_horizon: float = 60.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        code_version: str | None = None,
        approval_policy: ApprovalPolicy | Iterable[ApprovalRule | str] | None = None,
        waitpoint_key: KeyRing | bytes | None = None,
        require_waitpoint_key: bool = False,
        service_restarts: int = 3,
        service_window: float = 5.0,
        tune_gc: bool = True,
        activation_limit: float | None = 10.0,
    ) -> None:
        check_options(
            durable=durable,
            max_payload_bytes=max_payload_bytes,
            max_resident_runs=max_resident_runs,
            max_resident_bytes=max_resident_bytes,
            max_concurrent_steps=max_concurrent_steps,
            step_threads=step_threads,
            activation_workers=activation_workers,
            inbox_interval=inbox_interval,
            timer_horizon=timer_horizon,
            max_restarts=max_restarts,
            restart_window=restart_window,
            code_version=code_version,
            require_waitpoint_key=require_waitpoint_key,
            service_restarts=service_restarts,
            service_window=service_window,
            tune_gc=tune_gc,
            activation_limit=activation_limit,
        )
        self._path = path
        #: What keeps the key ring and the payload limit: the data directory (or store object)
        #: given, or the PostgreSQL store opened for a URL.
        self._home: object = path
        self._tune_gc = tune_gc
        self._gc_held = False
        self._durable = durable
        self.clock: Clock = clock or SystemClock()
        self.max_payload_bytes = max_payload_bytes
        self.max_resident_runs = max_resident_runs
        self.max_resident_bytes = max_resident_bytes
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.code_version = code_version
        if approval_policy is not None and not isinstance(approval_policy, ApprovalPolicy):
            approval_policy = ApprovalPolicy(approval_policy)
        self.approval_policy: ApprovalPolicy | None = (
            approval_policy if approval_policy is not None and approval_policy.rules else None
        )
        if isinstance(waitpoint_key, bytes):
            waitpoint_key = KeyRing.from_secret(waitpoint_key)
        self._given_keys = waitpoint_key
        self._require_key = require_waitpoint_key
        self._keys: KeyRing | None = None
        self._activation_workers = activation_workers
        self._inbox_interval = inbox_interval
        self._timer_horizon = timer_horizon
        self._registry: dict[str, WorkflowDefinition] = {}
        for wf in workflows:
            definition = definition_of(wf)
            other = self._registry.get(definition.name)
            if other is not None and other.fn is not definition.fn:
                raise InvalidArgument(f"two workflows are named {definition.name!r}")
            self._registry[definition.name] = definition
        busy = getattr(self.clock, "busy", None)
        self._busy: Callable[[], AbstractContextManager[object]] = busy or _not_busy
        self._metrics = Metrics()
        self._executor = StepExecutor(
            workers=max_concurrent_steps,
            threads=step_threads,
            busy=self._busy,
            metrics=self._metrics,
        )
        # Drivers publish their activations here; the watchdog thread reports long ones.
        self._activation_watch = (
            ActivationWatch(activation_limit) if activation_limit is not None else None
        )
        self._watchdog = (
            Watchdog(self._activation_watch) if self._activation_watch is not None else None
        )
        config = RuntimeConfig(
            max_payload_bytes=max_payload_bytes,
            code_version=code_version,
            approval_policy=self.approval_policy,
            max_restarts=max_restarts,
            restart_window=restart_window,
            max_resident_runs=max_resident_runs,
            max_resident_bytes=max_resident_bytes,
            activation_workers=activation_workers,
        )
        self._runtime = Runtime(config, _Services(self), self._metrics)
        self._timers = Timers(
            self.clock,
            lambda: self.store,
            self._runtime.send,
            self._runtime.scheduler.room_for_timers,
            timer_horizon,
            owns=self._drives,
        )
        self._inbox = Inbox(
            store=lambda: self.store,
            verify=self._verify_token,
            limit=max_payload_bytes,
            send=self._runtime.send,
            resident=lambda key: key in self._runtime.actors,
            start=self._start_from_inbox,
            owns=self._drives,
        )
        #: The partitions this engine drives of a store it shares with other engines
        #: (PostgreSQL, ``ownership=partitions``); None when it drives every run.
        self._partitions: Partitions | None = None
        self._inbox_bell: Doorbell | None = None
        self._store: EventStore | None = None
        self._owns_store = False
        self._tg: TaskGroup | None = None
        self._root: Supervisor | None = None
        self._failure: AionError | None = None
        self._stopped = anyio.Event()
        self._service_restarts = service_restarts
        self._service_window = service_window
        self._store_check_interval = 0.25
        self._side_tasks = 0  # background writes that wait_idle() waits for
        self._waiters: dict[tuple[str, str], _ResultWaiter] = {}
        self._reader = Reader(lambda: self.store, self._registry.get)
        self.recovery = RecoveryReport()
        self._metrics.runs_resident.set_function(self._runtime.actors.__len__)
        self._metrics.inbox_depth.set_function(lambda: self._inbox.depth)
        self._store_counts = StoreCounts(self._metrics, lambda: self.store, self.now)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise EngineStopped("the engine is not running: use it as `async with Engine(...)`")
        return self._store

    @property
    def metrics(self) -> Metrics:
        """The engine's metrics: counters, histograms and gauges kept in process, cheap to
        update; ``engine.metrics.snapshot()`` returns every one of them (a list of
        ``MetricFamily``: name, kind, help, label names, samples) for an exporter such as the
        control plane's ``/metrics``. Reading it reads no store and is safe from any thread.

        Counted from when the engine object was made, never on replay: a replayed step is not
        an attempt, a re-activated run is not a start. The open and BLOCKED run counts start
        from the recovery sweep; timer counts come from a background read of the store every
        10 s. Each metric's help text says what it counts (docs/observability.md; how current
        each one is: docs/operations.md).
        """
        return self._metrics

    async def __aenter__(self) -> Engine:
        try:
            await self._start_up()
        except BaseException as exc:
            await self._undo_start_up(exc)
            if isinstance(exc, ChildStartError):
                raise AionError(f"the engine could not start: {exc}") from exc
            raise
        return self

    async def _start_up(self) -> None:
        path = self._path
        if is_postgres_url(path):
            store_class = postgres_store()
            # Engines on one database share its runs (partitions) unless the URL says
            # ``ownership=lock`` (one engine per schema).
            shared: dict[str, Any] = (
                {} if "ownership" in _url_parameters(str(path)) else {"ownership": "partitions"}
            )
            self._store = await anyio.to_thread.run_sync(
                lambda: store_class(path, durable=self._durable, **shared)
            )
            self._owns_store = True
            self._home = self._store  # the store keeps the key ring and the payload limit
        elif isinstance(path, str | os.PathLike):
            self._store = await anyio.to_thread.run_sync(
                lambda: LmdbStore(path, durable=self._durable)
            )
            self._owns_store = True
        else:
            self._store = path
        observe = getattr(self._store, "set_commit_observer", None)
        if observe is not None:
            observe(self._metrics.observe_commit)
        self._keys = await anyio.to_thread.run_sync(
            lambda: load_keys(
                self._home, given=self._given_keys, require=self._require_key, now=self.now()
            )
        )
        if getattr(self._store, "engine_id", None) is not None:
            # A store shared with other engines: claim a share of its partitions first, and
            # drive (and repair) only those.
            self._partitions = Partitions(self._store, gained=self._take_over, lost=self._let_go)
            await self._partitions.balance()
        # Before any new work: repair what a crash left half done (renewing the lease on
        # partitions meanwhile: the sweep of a large store may take longer than it lasts).
        partitions = self._partitions
        if partitions is None:
            self.recovery = await sweep(
                self.store, now=self.now(), apply=True, code_version=self.code_version
            )
        else:
            with one_error():
                async with anyio.create_task_group() as keep:
                    keep.start_soon(partitions.keep_lease)
                    self.recovery = await sweep(
                        self.store,
                        now=self.now(),
                        apply=True,
                        code_version=self.code_version,
                        owns=self._drives,
                    )
                    keep.cancel_scope.cancel()
        await anyio.to_thread.run_sync(record_payload_limit, self._home, self.max_payload_bytes)
        self._metrics.recovered(self.recovery)
        await self._store_counts.refresh()  # before the timer wheel fires what is overdue
        self._failure = None
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        run_auto = getattr(self.clock, "run_auto_advance", None)
        if run_auto is not None and getattr(self.clock, "auto_advance", False):
            tg.start_soon(run_auto)
        if self._watchdog is not None:
            self._watchdog.start()  # before the recovery's replays, which it watches too
        tg.start_soon(self._store_counts.run)
        self._root = self._supervision_tree()
        await tg.start(self._supervise, self._root)
        for key in self.recovery.reactivate:  # lazily: the workers take them in turn
            self._runtime.send(key, Wake())
        self._gc_held = self._tune_gc and _gc.acquire()

    async def _undo_start_up(self, exc: BaseException) -> None:
        """``__aenter__`` failed at some stage (``exc``): give back whatever it took (tasks,
        the watchdog thread, the GC setting, the store with its directory lock and files), so
        that the next engine on the data directory starts."""
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                try:
                    await tg.__aexit__(type(exc), exc, exc.__traceback__)
                except BaseException as other:  # exc (grouped) or its echo: exc is raised
                    log.debug("while stopping a failed start: %r", other)
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            if self._gc_held:
                self._gc_held = False
                _gc.release()
            await self._close_store()  # shielded: a cancelled start closes it too

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg = self._tg
        self._tg = None
        swallowed = False
        try:
            if tg is not None:
                if self._root is not None and self._failure is None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                        await self._root.shutdown()  # services stop in reverse start order
                tg.cancel_scope.cancel()
                # True when the body was cancelled because the engine stopped on its own.
                try:
                    swallowed = bool(await tg.__aexit__(t, e, tb))
                except BaseExceptionGroup as group:
                    if e is None or leaves(group) != [e]:
                        raise
                    # The body's own exception: it propagates as it is, not in a group.
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            if self._gc_held:
                self._gc_held = False
                _gc.release()
            self._release_waiters(self._failure)
            await self._close_store()
        if self._failure is not None and (t is None or swallowed):
            raise self._failure
        return None

    # --- the supervision tree ---------------------------------------------------------------

    def _supervision_tree(self) -> Supervisor:
        """The engine's services under one root supervisor (ARCHITECTURE.md, invariant 10).

        A service that fails is restarted (one for one); past the root's restart intensity the
        engine stops and the embedding service sees an :class:`AionError` naming the cause
        (from calls, from waiting ``result()`` calls, from :meth:`wait_stopped` and from leaving
        ``async with``). Run actors are not tasks: their faults restart the actor by replay.
        """
        return Supervisor(
            [
                ChildSpec("store-writer", self._watch_store),
                ChildSpec("timer-wheel", self._timers.run),
                ChildSpec("step-executor", self._run_executor),
                ChildSpec("run-actors", self._run_actors),
                ChildSpec("inbox", self._run_inbox),
                *(
                    [ChildSpec("partitions", self._partitions.run)]
                    if self._partitions is not None
                    else []
                ),
            ],
            name="aion-engine",
            strategy=Strategy.ONE_FOR_ONE,
            max_restarts=self._service_restarts,
            max_seconds=self._service_window,
            backoff=Backoff(initial=0.05, maximum=1.0),
            clock=self.clock,
            on_restart=self._metrics.service_restarted,
        )

    async def _supervise(
        self, root: Supervisor, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        started = False

        def on_started() -> None:
            nonlocal started
            started = True
            task_status.started()

        try:
            await root.run(task_status=Started(on_started))
        except AionError as exc:
            if not started:
                raise  # __aenter__ reports it
            self._stop(exc)

    def _stop(self, cause: AionError) -> None:
        """The root gave up: stop the engine and make the cause visible to every caller.

        The body of ``async with Engine(...)`` is cancelled, and leaving it raises the failure:
        a service built on the engine does not carry on, or hang, on a dead engine.
        """
        log.critical("the engine stopped: %s", cause)
        self._failure = EngineStopped(
            f"the engine stopped because a service failed: {cause} Recorded history is intact; "
            "fix the cause and start the engine again."
        )
        self._failure.__cause__ = cause
        self._stopped.set()
        self._release_waiters(self._failure)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def wait_stopped(self) -> None:
        """Wait until the engine stops on its own because a service failed for good.

        For services that have nothing else to wait on:
        ``async with Engine(...) as engine: await engine.wait_stopped()``: the body is then
        cancelled and leaving ``async with`` raises the failure (an :class:`AionError` naming
        the cause).
        """
        await self._stopped.wait()
        if self._failure is not None:
            raise self._failure

    @property
    def resident_runs(self) -> int:
        """How many runs are in memory now (resident actors; parked runs evicted under
        ``max_resident_runs`` or ``max_resident_bytes`` are not)."""
        return len(self._runtime.actors)

    @property
    def resident_bytes(self) -> int:
        """The estimated memory of the resident runs, as counted against
        ``max_resident_bytes``."""
        return self._runtime.scheduler.resident_bytes

    @property
    def path(self) -> object:
        """What the engine was opened on: the data directory, a PostgreSQL URL or a store."""
        return self._path

    @property
    def workflow_types(self) -> list[str]:
        """The type names of the registered workflows, sorted."""
        return sorted(self._registry)

    @property
    def running(self) -> bool:
        """True from the end of ``async with``'s entry (recovered, services running) until
        it is left, or a service fails for good."""
        return self._tg is not None and self._failure is None and self._store is not None

    def asgi_app(self, **options: Any) -> Any:
        """The control plane (HTTP API, ``/metrics``) for this engine: a Starlette application
        to serve with uvicorn or mount in your own app (``pip install "aion[server]"``).

        Options are those of :func:`aion.server.create_app`: ``api_keys`` (the key file;
        default ``api-keys.json`` in the data directory), ``max_body_bytes``, ``metrics``.

        Raises:
            DependencyMissing: Starlette is not installed.
        """
        try:
            from aion.server import create_app  # noqa: PLC0415 (an optional extra)
        except ImportError as exc:
            raise DependencyMissing(
                f'the HTTP API needs Starlette ({exc}); install it with: pip install "aion[server]"'
            ) from exc
        return create_app(self, **options)

    @property
    def failure(self) -> AionError | None:
        """Why the engine stopped on its own, or None while it runs (or after a clean stop)."""
        return self._failure

    async def _watch_store(self, ctx: ChildContext) -> None:
        """The store writer runs on its own thread; this service notices if it dies."""
        failed: Callable[[], BaseException | None] | None
        failed = getattr(self.store, "writer_failure", None)
        if failed is None:
            ctx.started()  # a store without a writer thread of its own
            await anyio.sleep_forever()
            return
        started = False
        while True:
            failure = failed()
            if failure is not None:
                raise StoreError(f"the store writer failed: {failure!r}") from failure
            if not started:
                ctx.started()
                started = True
            await anyio.sleep(self._store_check_interval)

    async def _run_executor(self, ctx: ChildContext) -> None:
        with one_error():
            async with anyio.create_task_group() as tg:
                await self._executor.run(tg)  # steps that were running when it failed run again
                ctx.started()

    async def _run_actors(self, ctx: ChildContext) -> None:
        with one_error():
            async with anyio.create_task_group() as tg:
                for _ in range(self._activation_workers):
                    tg.start_soon(self._runtime.scheduler.worker)
                if ctx.restarts:
                    # Mail that waited while the workers were down.
                    self._runtime.scheduler.reschedule()
                ctx.started()

    async def _run_inbox(self, ctx: ChildContext) -> None:
        # Other processes ring the doorbell once a command is queued: it is taken at once.
        async with Doorbell(data_dir(self._home), self.store) as bell:
            self._inbox_bell = bell
            listen = getattr(self.store, "listen_inbox", None)  # a shared store's doorbell
            if listen is not None:
                listen(bell.ring)
            try:
                ctx.started()
                await self._inbox.run(self._inbox_interval, bell.wait)
            finally:
                if listen is not None:
                    listen(None)

    # --- partitions of a shared store -------------------------------------------------------

    def _drives(self, tenant: str, workflow_id: str) -> bool:
        """Whether this engine drives the run now: always, unless it shares its store with
        other engines (then: whether it owns the run's partition)."""
        return self._partitions is None or self._partitions.owns(tenant, workflow_id)

    async def _take_over(self, gained: set[int]) -> None:
        """Partitions taken over from other engines (or from none): repair what their last
        owner left half done, wake their runs with work, fire their timers, apply their
        inbox commands."""
        partitions = self._partitions
        assert partitions is not None

        def owns(tenant: str, workflow_id: str) -> bool:
            return partitions.partition_of(tenant, workflow_id) in gained

        # Runs still in memory from an earlier ownership of these partitions may be behind
        # what another engine recorded since: they start again from the store.
        self._runtime.let_go(lambda key: owns(*key))
        try:
            report = await sweep(
                self.store,
                now=self.now(),
                apply=True,
                code_version=self.code_version,
                owns=owns,
                check_rows=False,
            )
            for key in report.reactivate:
                self._runtime.send(key, Wake())
        finally:  # (a failed sweep is tried again at the next round)
            self._timers.reload()
            if self._inbox_bell is not None:
                self._inbox_bell.ring()

    def _let_go(self, lost: set[int]) -> None:
        """Partitions another engine drives now: their resident runs leave memory, writing
        nothing (one busy now fails its next write with ``PartitionLost`` and leaves then)."""
        self._runtime.let_go(lambda key: not self._drives(*key))

    def _release_waiters(self, failure: AionError | None = None) -> None:
        """Nobody waits forever on a stopped engine: results and replies fail with a reason."""
        stopped = failure or EngineStopped(
            "the engine stopped before this completed; what was recorded is kept and the "
            "next engine on this data directory continues it"
        )
        self._runtime.release(stopped)
        for waiter in self._waiters.values():
            waiter.event.set()
        self._waiters.clear()

    async def _close_store(self) -> None:
        observe = getattr(self._store, "set_commit_observer", None)
        if observe is not None and not self._owns_store:
            observe(None)  # the caller's store: this engine's metrics stop counting its writes
        if self._store is not None and self._owns_store:
            with anyio.CancelScope(shield=True):
                await self._store.aclose()
        self._store = None

    # --- what the runtime is given ---------------------------------------------------------------

    def _sign_waitpoint(
        self,
        tenant: str,
        workflow_id: str,
        waitpoint_id: str,
        created_at: datetime,
        expires_at: datetime | None,
        kid: str | None,
    ) -> tuple[str, str]:
        """Sign a waitpoint's token; ``kid``: the key that signed it first (on replay)."""
        keys = self._keys
        if keys is None:
            return kid or "", ""
        if kid is not None and kid not in {k.kid for k in keys.keys}:
            return kid, ""  # its key was pruned: the token can no longer be handed out
        token = keys.sign(tenant, workflow_id, waitpoint_id, created_at, expires_at, kid=kid)
        return kid or keys.current.kid, token

    def now(self) -> datetime:
        """The engine clock's time (UTC)."""
        return from_timestamp(self.clock.now())

    def _spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        if self._tg is None:
            return False  # stopping: the next engine's recovery sweep takes the run up
        self._tg.start_soon(work)
        return True

    def _run_closed(self, record: WorkflowRecord, outcome: Outcome) -> None:
        """A run closed: wake its result waiters (they need not read the store back)."""
        waiter = self._waiters.pop((record.tenant, record.workflow_id), None)
        if waiter is not None:
            waiter.outcome = (record, outcome)
            waiter.event.set()

    async def wait_idle(self) -> None:
        """Return once nothing is happening: no run has work, no step runs, no timer is due.

        For tests with a manual clock: after ``wait_idle()`` only moving the clock or an outside
        call (start, signal, cancel) can make anything happen.
        """
        while True:
            await wait_all_tasks_blocked()
            if self._idle() and not self._timer_due():
                await wait_all_tasks_blocked()
                if self._idle():
                    return
            await anyio.sleep(0.001)  # work on threads (steps, store commits) is under way

    def _idle(self) -> bool:
        return (
            self._runtime.idle()
            and self._executor.idle
            and not self._side_tasks
            and not getattr(self._store, "reads_in_flight", 0)  # reads on threads (PostgreSQL)
        )

    def _timer_due(self) -> bool:
        next_deadline = getattr(self.clock, "next_deadline", None)
        if next_deadline is None:
            return False
        deadline = next_deadline()
        return deadline is not None and deadline <= self.clock.now()

    # --- public API -----------------------------------------------------------------------------

    async def start(
        self,
        workflow: Any,
        *args: Any,
        workflow_id: str | None = None,
        tenant: str = "default",
        identity: str | None = None,
    ) -> WorkflowHandle:
        """Start a workflow, or return a handle to the existing one with this ``workflow_id``.

        ``identity`` (who asks: a user or an API key's label, at most 256 bytes) is recorded
        in the run's ``WorkflowStarted`` event; likewise for ``signal``, ``cancel`` and
        ``unblock``.

        Raises:
            PayloadError: the arguments cannot be encoded, exceed the payload limit, or do not
                match the workflow's parameter annotations (nothing is recorded).
            InvalidArgument: unknown workflow type, malformed id (``""`` too: pass None for
                a generated one), wrong number of arguments, or an id taken by a run of
                another workflow type.
        """
        tenant = _validate.identifier(tenant, "tenant")
        workflow_id = (
            self._new_workflow_id(tenant)
            if workflow_id is None
            else _validate.identifier(workflow_id)
        )
        who = _validate.identity(identity)
        definition = self._resolve(workflow)
        encoded = definition.encode_input(args, limit=self.max_payload_bytes)
        if not self._drives(tenant, workflow_id):
            return await self._start_elsewhere(workflow_id, tenant, definition, encoded, who)
        resident = self._runtime.actors.get((tenant, workflow_id))
        if resident is not None:
            if resident.record is not None:
                return self._same_run(resident.record, definition)
            return await self._existing(workflow_id, tenant, definition)
        with _tracing.start_span(definition.name, workflow_id, tenant) as trace:
            start = RunStart(
                tenant,
                workflow_id,
                definition.name,
                encoded,
                run_id=new_id(),
                identity=who,
                trace=trace,
            )
            return await self._start_here(start, definition)

    async def _start_here(self, start: RunStart, definition: WorkflowDefinition) -> WorkflowHandle:
        workflow_id, tenant = start.workflow_id, start.tenant
        try:
            await self._runtime.start(start)
        except SequenceConflict as exc:
            if (exc.tenant, exc.workflow_id) != (tenant, workflow_id):
                raise  # a child's id, taken by a start that raced ours: nothing recorded
            return await self._existing(workflow_id, tenant, definition)
        except PartitionLost:  # taken over just now: nothing recorded, its new owner starts it
            return await self._start_elsewhere(
                workflow_id, tenant, definition, start.input, start.identity
            )
        return WorkflowHandle(workflow_id, tenant, self._result)  # (the ids are checked)

    async def _start_elsewhere(
        self,
        workflow_id: str,
        tenant: str,
        definition: WorkflowDefinition,
        encoded: bytes,
        identity: str,
    ) -> WorkflowHandle:
        """``start`` of a run whose partition another engine drives: queued in the inbox for
        it (it is notified at once), as an :class:`aion.Client` queues it."""
        record = await self.store.get_workflow(workflow_id, tenant=tenant)
        if record is not None:
            return self._same_run(record, definition)
        command = InboxCommand(
            "start",
            tenant,
            workflow_id,
            self.now(),
            name=definition.name,
            payload=encoded,
            user=identity,
        )
        command_id = await self.store.put_inbox(command)

        async def result(workflow_id: str, tenant: str, timeout: float | None) -> Any:
            return await self._result(workflow_id, tenant, timeout, command_id)

        return WorkflowHandle(workflow_id, tenant, result)

    def _new_workflow_id(self, tenant: str) -> str:
        """A new workflow id; with a shared store, one in a partition this engine drives (so
        the run starts here, without a trip through the inbox to another engine)."""
        workflow_id = new_workflow_id()
        if self._partitions is not None and self._partitions.owned:
            for _ in range(_LOCAL_ID_TRIES):
                if self._drives(tenant, workflow_id):
                    break
                workflow_id = new_workflow_id()
        return workflow_id

    async def _start_from_inbox(self, command: InboxCommand) -> bool:
        """Begin the run a start command left by another process asks for; its first write
        deletes the command. An unregistered type starts parked BLOCKED (it runs once an
        engine with the type runs it); arguments that do not fit the workflow fail the run at
        once, with the reason: what was accepted is recorded either way."""
        key = (command.tenant, command.workflow_id)
        record = await self.store.get_workflow(command.workflow_id, tenant=command.tenant)
        if record is None and key in self._runtime.actors:
            return False  # being started here right now: the next read of the inbox decides
        if record is not None:
            if record.workflow_type != command.name:
                log.warning(
                    "inbox command %s (start of %r as %s/%s) dropped: the id is taken by a run "
                    "of type %r",
                    command.command_id,
                    command.name,
                    *key,
                    record.workflow_type,
                )
            await self.store.commit(Write(inbox_delete=[command.command_id]))
            return True
        definition = self._registry.get(command.name)
        encoded, error = command.payload, None
        if definition is not None:
            try:
                encoded = definition.encode_input(start_args(command), limit=self.max_payload_bytes)
            except (InvalidArgument, PayloadError) as exc:
                error = exc
        start = RunStart(
            command.tenant,
            command.workflow_id,
            command.name,
            encoded,
            new_id(),
            identity=command.user,
        )
        try:
            await self._runtime.start(start, inbox_id=command.command_id, error=error)
        except (SequenceConflict, PartitionLost):
            # Started meanwhile, or its partition moved to another engine (which takes the
            # command from the inbox): the next read of the inbox decides.
            return False
        return True

    async def _existing(
        self, workflow_id: str, tenant: str, definition: WorkflowDefinition
    ) -> WorkflowHandle:
        """``start`` of an id that exists: idempotent for the same type, refused otherwise."""
        record = await self.store.get_workflow(workflow_id, tenant=tenant)
        if record is None:
            raise AionError(
                f"workflow {workflow_id!r} could not be started: its id is being claimed "
                "concurrently; nothing was recorded, call start again"
            )
        return self._same_run(record, definition)

    def _same_run(self, record: WorkflowRecord, definition: WorkflowDefinition) -> WorkflowHandle:
        _control.check_same_type(record, definition.name)
        return WorkflowHandle(record.workflow_id, record.tenant, self._result)

    def handle(self, workflow_id: str, *, tenant: str = "default") -> WorkflowHandle:
        """A handle to an existing workflow (whether it exists is not checked until used).

        Raises:
            InvalidArgument: the id or tenant is malformed.
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        return WorkflowHandle(workflow_id, tenant, self._result)

    async def _result(
        self, workflow_id: str, tenant: str, timeout: float | None, command_id: str = ""
    ) -> Any:
        # The ids were checked when the handle was made (handle(), start()).
        timeout = _validate.optional_seconds(timeout, "result(timeout=...)")
        with anyio.fail_after(timeout) if timeout is not None else nullcontext():
            key = (tenant, workflow_id)
            poll = 0.001
            while True:
                waiter = self._waiters.get(key)
                if waiter is None:
                    waiter = self._waiters[key] = _ResultWaiter()
                here = self._drives(*key) and self._runtime.running_here(key)
                if not here:
                    record = await self._record_or_starting(workflow_id, tenant, command_id)
                    if record is not None and record.status.is_terminal:
                        if self._waiters.get(key) is waiter and not waiter.event.is_set():
                            del self._waiters[key]
                        return await self._outcome(record)
                if self._partitions is None:
                    await waiter.event.wait()
                else:
                    # Another engine may drive it (now or later): look at the store too, first
                    # after 1 ms, then 1.5 times longer each time, up to 50 ms (while it runs
                    # here, only to notice that its partition moved).
                    with anyio.move_on_after(_RESULT_POLL if here else poll):
                        await waiter.event.wait()
                    if not waiter.event.is_set():
                        poll = min(poll * 1.5, _RESULT_POLL)
                        continue
                if waiter.outcome is not None:
                    return self._reader.outcome_of(*waiter.outcome)
                if self._failure is not None:
                    raise self._failure
                if self._tg is None:
                    raise EngineStopped(
                        f"the engine stopped before workflow {workflow_id!r} finished; the run "
                        "continues when an engine next runs on this data directory"
                    )

    async def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        tenant: str = "default",
        identity: str | None = None,
    ) -> None:
        """Send signal ``name`` with ``payload``; returns once it is recorded.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            WorkflowClosed: the workflow has finished.
            PayloadError: the payload cannot be encoded or is too large.
            InvalidArgument: the id, tenant or name is malformed (names: non-empty text of at
                most 256 UTF-8 bytes).
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        name = _validate.name(name, "signal name")
        who = _validate.identity(identity)
        encoded = encode_payload(payload, limit=self.max_payload_bytes, what=f"signal {name!r}")
        signal = Signal(name=name, payload=encoded, identity=who, reply=Reply())
        await self._deliver(workflow_id, tenant, signal)

    async def cancel(
        self,
        workflow_id: str,
        *,
        reason: str | None = None,
        tenant: str = "default",
        identity: str | None = None,
    ) -> None:
        """Ask the workflow to cancel: its current await raises ``aion.Cancelled``.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            WorkflowClosed: the workflow has finished.
            InvalidArgument: the id or tenant is malformed, or ``reason`` is not text (of at
                most 64 KiB).
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        reason = _validate.optional_text(reason, "cancel reason")
        who = _validate.identity(identity)
        await self._deliver(workflow_id, tenant, Cancel(reason=reason, identity=who, reply=Reply()))

    async def _deliver(self, workflow_id: str, tenant: str, message: Message) -> None:
        record = await self._record_or_starting(workflow_id, tenant)
        if record is None:  # its start waits in the inbox: this is applied after it
            await self._queue_elsewhere(workflow_id, tenant, message)
            return
        match message:
            case Decide():
                _control.check_decidable(record)
            case Complete():
                _control.check_completable(record)
            case _:
                _control.check_open(record)
        assert message.reply is not None
        if self._drives(tenant, workflow_id):
            self._runtime.send((tenant, workflow_id), message)
            try:
                await message.reply.wait()
                return
            except PartitionLost:
                pass  # taken over before it was recorded: queued for the new owner
        await self._queue_elsewhere(workflow_id, tenant, message)

    async def _queue_elsewhere(self, workflow_id: str, tenant: str, message: Message) -> None:
        """A request for a run that another engine drives: durably queued in the inbox for
        it (its owner is notified at once and applies it), as :class:`aion.Client` does."""
        at = self.now()
        command: InboxCommand | None
        if isinstance(message, Decide):
            # Chosen here, as the Client chooses: the decision names exactly one approval.
            pending = await _control.pending_approvals(self.store, workflow_id, tenant)
            chosen = _control.choose_approval(
                workflow_id,
                pending,
                message.approval_id,
                message.digest,
                None,
                pick=_control.PICK_APPROVAL,
            )
            command = InboxCommand(
                "approve" if message.approved else "reject",
                tenant,
                workflow_id,
                at,
                user=message.user,
                comment=message.comment,
                target_id=chosen.approval_id,
                digest=message.digest or "",
            )
        else:
            command = to_inbox(message, tenant, workflow_id, at)
        assert command is not None  # signals, completions, cancellations and decisions
        await self.store.put_inbox(command)

    async def describe(self, workflow_id: str, *, tenant: str = "default") -> WorkflowDescription:
        """Status, times, result or error, history length and what the run waits on.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        return await self._reader.describe(workflow_id, tenant=tenant)

    async def history(
        self,
        workflow_id: str,
        *,
        after_seq: int = 0,
        tenant: str = "default",
        limit: int | None = None,
    ) -> list[HistoryEvent]:
        """The recorded events after ``after_seq``, in order (at most ``limit``: a page; pass
        the last one's ``seq`` as ``after_seq`` for the next).

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: the id or tenant is malformed, ``after_seq`` is not an int >= 0,
                or ``limit`` is not 1 to 10,000.
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        after_seq = _validate.after_seq(after_seq)
        if limit is not None:
            limit = _validate.page_limit(limit)
        return await self._reader.history(
            workflow_id, after_seq=after_seq, tenant=tenant, limit=limit
        )

    async def list(
        self,
        *,
        status: Status | None = None,
        workflow_type: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        parent_workflow_id: str | None = None,
        search: Mapping[str, Any] | None = None,
        id_prefix: str | None = None,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowDescription]:
        """Workflows of ``tenant``, newest first, keyset-paginated (pass ``next_cursor`` back).

        Raises:
            InvalidArgument: a filter, ``limit`` (1 to 10,000) or ``cursor`` is malformed, or
                the cursor was made for another query.
        """
        return await self._reader.list(
            status=status,
            workflow_type=workflow_type,
            started_after=started_after,
            started_before=started_before,
            parent_workflow_id=parent_workflow_id,
            search=search,
            id_prefix=id_prefix,
            tenant=tenant,
            limit=limit,
            cursor=cursor,
        )

    async def unblock(
        self, workflow_id: str, *, tenant: str = "default", identity: str | None = None
    ) -> WorkflowDescription:
        """Retry a ``BLOCKED`` run now: replay it and go on (after the cause was fixed).

        Returns the run's description afterwards: ``RUNNING`` (or finished) if it went on,
        ``BLOCKED`` again, with the new reason, if the cause is still there.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: the run is not blocked (or the id is malformed).
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        who = _validate.identity(identity)
        record = await self._record(workflow_id, tenant)
        _control.check_blocked(record)
        key = (tenant, workflow_id)
        if not self._drives(*key):
            # Another engine drives it: queued for it; the description once it took it.
            command_id = await self.store.put_inbox(
                InboxCommand("unblock", tenant, workflow_id, self.now(), user=who)
            )
            with anyio.move_on_after(_ELSEWHERE_UNBLOCK_WAIT):
                while await self.store.inbox_pending([command_id]):
                    await anyio.sleep(0.01)
            return await self.describe(workflow_id, tenant=tenant)
        actor = self._runtime.actors.get(key)
        if actor is not None:
            actor.restarts = None  # an operator's retry starts a fresh restart budget
        reply = Reply()
        self._runtime.send(key, Wake(identity=who, reply=reply))
        with contextlib.suppress(AionError):  # blocked again: the description says why
            await reply.wait()  # set once the replay's outcome is recorded
        return await self.describe(workflow_id, tenant=tenant)

    # --- people and outside systems ---------------------------------------------------------

    async def approve(
        self,
        workflow_id: str,
        *,
        user: str,
        comment: str | None = None,
        approval_id: str | None = None,
        digest: str | None = None,
        tenant: str = "default",
    ) -> None:
        """Approve the run's pending approval; returns once the decision is recorded.

        Args:
            approval_id: which approval (needed when several are pending).
            digest: if given, the decision applies only if the pending approval is for exactly
                this (``PendingApproval.digest``): what you approve is what you saw.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            WorkflowClosed: the workflow has finished.
            NoPendingApproval: nothing (or not that approval, or not with that digest) is pending;
                e.g. it was decided already: of two concurrent decisions exactly one wins.
            AmbiguousApproval: several approvals are pending and no ``approval_id`` was given.
        """
        await self._decide(workflow_id, tenant, True, user, comment, approval_id, digest)

    async def reject(
        self,
        workflow_id: str,
        *,
        user: str,
        comment: str | None = None,
        approval_id: str | None = None,
        digest: str | None = None,
        tenant: str = "default",
    ) -> None:
        """Reject the run's pending approval: the workflow's ``await`` raises
        ``aion.ApprovalRejected`` naming ``user`` and ``comment``. Same errors as
        :meth:`approve`."""
        await self._decide(workflow_id, tenant, False, user, comment, approval_id, digest)

    async def _decide(
        self,
        workflow_id: str,
        tenant: str,
        approved: bool,
        user: str,
        comment: str | None,
        approval_id: str | None,
        digest: str | None,
    ) -> None:
        workflow_id, tenant = _key(workflow_id, tenant)
        user = _validate.user(user)
        comment = _validate.optional_text(comment, "comment")
        approval_id = _validate.optional_identifier(approval_id, "approval_id")
        digest = _validate.optional_text(digest, "digest", limit=_validate.MAX_NAME_BYTES)
        decision = Decide(
            approved=approved,
            user=user,
            comment=comment,
            approval_id=approval_id,
            digest=digest,
            reply=Reply(),
        )
        await self._deliver(workflow_id, tenant, decision)

    async def pending_approvals(
        self,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
        workflow_id: str | None = None,
    ) -> Page[PendingApproval]:
        """Approvals waiting for a person across the tenant's runs, oldest first (keyset
        pagination: pass ``next_cursor`` back); with ``workflow_id``, that run's, all on one
        page.

        Raises:
            WorkflowNotFound: ``workflow_id`` names no workflow of this tenant.
            InvalidArgument: the tenant, ``limit`` (1 to 10,000) or ``cursor`` is malformed, or
                the cursor was made for another query.
        """
        tenant = _validate.identifier(tenant, "tenant")
        limit = _validate.page_limit(limit)
        cursor = _validate.cursor(cursor)
        if workflow_id is not None:  # one run's: all of them, on one page
            workflow_id = _validate.identifier(workflow_id)
            return Page(await self._reader.run_approvals(workflow_id, tenant), None)
        return await self._reader.pending_approvals(tenant=tenant, limit=limit, cursor=cursor)

    async def complete_waitpoint(self, token: str, payload: Any = None) -> None:
        """Complete the waitpoint ``token`` names with ``payload``; returns once recorded.

        Raises:
            InvalidToken: the token is forged, malformed, truncated, re-signed, signed with an
                unknown or retired key, or expired. Nothing is recorded in the history; the time
                of the failed attempt is kept on the waitpoint (``pending_waitpoints``).
            WaitpointClosed: the waitpoint was completed already (tokens are one-shot), or its
                run has finished.
            PayloadError: the payload cannot be encoded or is too large.
        """
        claims = self._verify_token(token)
        tenant, workflow_id = claims.tenant, claims.workflow_id
        row = _control.check_waitpoint_row(
            await self.store.get_waitpoint(workflow_id, claims.waitpoint_id, tenant=tenant), claims
        )
        encoded = encode_payload(
            payload, limit=self.max_payload_bytes, what=f"completion of waitpoint {row.name!r}"
        )
        completion = Complete(
            waitpoint_id=claims.waitpoint_id, payload=encoded, token=token, reply=Reply()
        )
        await self._deliver(workflow_id, tenant, completion)

    def _verify_token(self, token: str, at: datetime | None = None) -> Any:
        keys = self._keys
        if keys is None:
            raise EngineStopped("the engine is not running: use it as `async with Engine(...)`")
        if not isinstance(token, str):
            raise InvalidToken(f"a waitpoint token is text, not {type(token).__name__}")
        try:
            return keys.verify(token, now=at or self.now())
        except InvalidToken:
            self._note_failed_validation(token)
            raise

    def _note_failed_validation(self, token: str) -> None:
        """Keep the time of a failed validation on the waitpoint the token claims to be for.

        Written straight to the row: the store never lets such a write undo a completion, and
        keeps the latest failure time when the run's actor rewrites the row.
        """
        claims = peek_claims(token)
        if claims is None or self._tg is None:
            return
        at = self.now()
        self._side_tasks += 1

        async def note() -> None:
            try:
                row = await self.store.get_waitpoint(
                    claims.workflow_id, claims.waitpoint_id, tenant=claims.tenant
                )
                if row is not None:
                    failed = msgspec.structs.replace(row, last_failed_validation_at=at)
                    await self.store.commit(Write(waitpoints=[failed]))
            except AionError as exc:  # a note for operators: never worth failing a service
                log.warning("could not note a failed token validation: %s", exc)
            finally:
                self._side_tasks -= 1

        self._tg.start_soon(note)

    async def pending_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointInfo]:
        """The workflow's pending waitpoints by id (keyset pagination). Items show a fingerprint
        of the token, never the token.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: the id, tenant, ``limit`` (1 to 10,000) or ``cursor`` is
                malformed, or the cursor was made for another query.
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        limit = _validate.page_limit(limit)
        cursor = _validate.cursor(cursor)
        return await self._reader.pending_waitpoints(
            workflow_id, tenant=tenant, limit=limit, cursor=cursor
        )

    async def _record_or_starting(
        self, workflow_id: str, tenant: str, command_id: str = ""
    ) -> WorkflowRecord | None:
        """The workflow's record; None while its start waits in the inbox for the engine
        that drives it (a store shared with other engines; ``command_id``: that start's, when
        known, else the inbox is searched).

        Raises:
            WorkflowNotFound: no such workflow, and no start of it queued.
        """
        if self._partitions is None:
            return await self._record(workflow_id, tenant)
        record = await self.store.get_workflow(workflow_id, tenant=tenant)
        if record is not None:
            return record
        if await start_queued(self.store, workflow_id, tenant, command_id):
            return None
        return await self._record(workflow_id, tenant)  # started meanwhile?

    async def _record(self, workflow_id: str, tenant: str) -> WorkflowRecord:
        return await self._reader.record(workflow_id, tenant)

    async def _outcome(self, record: WorkflowRecord) -> Any:
        return await self._reader.outcome(record)

    def _resolve(self, workflow: Any) -> WorkflowDefinition:
        if isinstance(workflow, str):
            definition = self._registry.get(workflow)
            if definition is None:
                raise InvalidArgument(
                    f"workflow type {_validate.shown(workflow)} is not registered with this "
                    "engine; pass it in Engine(..., workflows=[...])"
                )
            return definition
        definition = definition_of(workflow)
        if definition.name not in self._registry:
            self._registry[definition.name] = definition
        return definition


_NOT_BUSY: AbstractContextManager[object] = nullcontext()


def _url_parameters(url: str) -> set[str]:
    """The names of a URL's query parameters."""
    query = urllib.parse.urlsplit(url).query
    return {name for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}


#: With a shared store, how often ``result()`` looks at the store for a run that another
#: engine may drive, and how long ``unblock()`` waits for another engine to take a retry.
_RESULT_POLL = 0.05
#: New workflow ids tried for one in a partition this engine drives (each is a hash: with
#: 1/N of the partitions, N tries on average).
_LOCAL_ID_TRIES = 1000
_ELSEWHERE_UNBLOCK_WAIT = 10.0


class _Services:
    """What an engine gives its runtime (:class:`~._config.Services`): the store, its clock,
    workflow definitions, token signing, timers, steps, result waiters, background tasks.

    The calls made for every workflow are the engine's own bound methods, set once here.
    """

    __slots__ = (
        "_engine",
        "activation_watch",
        "busy",
        "definition",
        "monotonic",
        "now",
        "run_closed",
        "sign_waitpoint",
        "sleep",
        "spawn",
        "submit_step",
    )

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.busy = engine._busy
        self.now = engine.now
        self.monotonic = engine.clock.now
        self.sleep = engine.clock.sleep
        self.definition = engine._registry.get
        self.sign_waitpoint = engine._sign_waitpoint
        self.activation_watch = engine._activation_watch
        self.submit_step = engine._executor.submit
        self.run_closed = engine._run_closed
        self.spawn = engine._spawn

    @property
    def store(self) -> EventStore:
        return self._engine.store

    # Made after the runtime (they take its scheduler): looked up at each call.

    def hold_timer(self, row: TimerRow) -> None:
        self._engine._timers.hold(row)

    def release_timer(self, row: TimerRow) -> None:
        self._engine._timers.release(row)

    def drives(self, key: tuple[str, str]) -> bool:
        return self._engine._drives(*key)

    def same_partition(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        partitions = self._engine._partitions
        return partitions is None or partitions.partition_of(*a) == partitions.partition_of(*b)

    def inbox_message(self, command: InboxCommand) -> Message | str:
        return self._engine._inbox.message(command)


def _key(workflow_id: object, tenant: object) -> tuple[str, str]:
    """A public method's (workflow id, tenant), checked (ARCHITECTURE.md, invariant 17)."""
    return _validate.identifier(workflow_id), _validate.identifier(tenant, "tenant")


def _not_busy() -> AbstractContextManager[object]:
    """The busy marker of clocks without one: one shared no-op (it is entered per step)."""
    return _NOT_BUSY


class _ResultWaiter:
    """Shared by the ``result()`` calls waiting on one run; ``_run_closed`` hands them the
    outcome."""

    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = Flag()  # not anyio's Event: that one asks sniffio for the backend
        self.outcome: tuple[WorkflowRecord, Outcome] | None = None


def event_of(item: HistoryEvent | ev.Event) -> ev.Event:
    """Back from the public view to the stored event (exactly, from ``raw``)."""
    if isinstance(item, ev.Event):
        return item
    if not item.raw:
        raise InvalidArgument(f"history event {item.seq} carries no raw encoding to replay")
    try:
        return decode_event(item.raw)
    except DECODE_ERRORS as exc:
        raise InvalidArgument(
            f"history event {item.seq} has a raw encoding that cannot be decoded ({exc}); pass "
            "history exactly as Engine.history or Reader.history returned it"
        ) from exc


def events_of(history: Sequence[HistoryEvent | ev.Event]) -> list[ev.Event]:
    """The stored events of a history; one bulk decode when it is all ``HistoryEvent``s."""
    if all(type(h) is HistoryEvent for h in history):
        with contextlib.suppress(*DECODE_ERRORS):  # decoded one by one below, to say which
            return list(decode_events([h.raw for h in history]))  # type: ignore[union-attr]
    return [event_of(h) for h in history]
