"""``aion.Engine``: wiring, lifecycle and the public methods."""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import random
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from aion import _gc, _validate
from aion import events as ev
from aion._clock import Clock, SystemClock, from_timestamp
from aion._codec import (
    DECODE_ERRORS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    decode_event,
    decode_events,
    encode_payload,
)
from aion._ids import new_id
from aion._loop import Flag, wait_all_tasks_blocked
from aion._recovery import RecoveryReport, sweep
from aion._replay import WorkflowDefinition, definition_of
from aion._replay import _commands as c
from aion._replay._watch import ActivationWatch
from aion._supervision import (
    Backoff,
    ChildContext,
    ChildSpec,
    ChildStartError,
    Strategy,
    Supervisor,
)
from aion._timerwheel import Timer, TimerWheel
from aion._tokens import KeyRing, load_or_create, peek_claims
from aion.errors import (
    AionError,
    DataDirectoryError,
    EngineStopped,
    InvalidArgument,
    InvalidToken,
    NondeterminismError,
    SequenceConflict,
    StoreError,
    WaitpointClosed,
    WorkflowClosed,
)
from aion.store import (
    EventStore,
    InboxCommand,
    LmdbStore,
    Page,
    Status,
    TimerRow,
    WaitpointStatus,
    WorkflowRecord,
    Write,
    begin_run,
)

from ._actor import Actor, Message, Reply, Runtime, _Batch, _Block
from ._options import check_options
from ._policy import ApprovalPolicy, ApprovalRule
from ._steps import StepExecutor
from ._types import (
    HistoryEvent,
    PendingApproval,
    WaitpointInfo,
    WorkflowDescription,
    WorkflowHandle,
)
from ._views import Reader, refuse_completion
from ._watchdog import Watchdog

__all__ = ["Engine"]

log = logging.getLogger("aion.engine")

TimerKey = tuple[str, str, str]

#: The file in the data directory where an engine records its ``max_payload_bytes``: the CLI
#: checks what it queues against it.
PAYLOAD_LIMIT_FILE = "payload-limit"

#: The longest wait before an inbox command that has not applied yet is handed over again.
INBOX_MAX_BACKOFF = 30.0

#: Key rings of stores without a data directory (in-memory stores), shared by the engines that
#: run on one store in turn, for as long as the store lives.
_EPHEMERAL_KEYS: weakref.WeakKeyDictionary[Any, KeyRing] = weakref.WeakKeyDictionary()


class Engine:
    """An embedded durable-workflow engine on one data directory.

    Args:
        path: the data directory (created if missing), or an :class:`~aion.store.EventStore`
            instance to run on (e.g. ``MemoryStore()`` in tests).
        workflows: the workflow functions (decorated with ``@aion.workflow``) this engine runs.
        clock: the source of time (``aion.testing.ManualClock`` in tests).
        durable: fsync every commit (default). See docs/operations.md.
        max_payload_bytes: limit for encoded arguments, results and signal payloads.
        max_resident_runs: runs kept in memory; idle runs beyond it are evicted and replayed
            when something happens to them.
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
        self._tune_gc = tune_gc
        self._gc_held = False
        self._durable = durable
        self.clock: Clock = clock or SystemClock()
        self.max_payload_bytes = max_payload_bytes
        self.max_resident_runs = max_resident_runs
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
        self.executor = StepExecutor(
            workers=max_concurrent_steps, threads=step_threads, busy=self._busy
        )
        self.runtime = Runtime(self)
        # Drivers publish their activations here; the watchdog thread reports long ones.
        self.activation_watch = (
            ActivationWatch(activation_limit) if activation_limit is not None else None
        )
        self._watchdog = (
            Watchdog(self.activation_watch) if self.activation_watch is not None else None
        )
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
        self._wheel: TimerWheel[TimerKey, TimerRow] | None = None
        self._waiters: dict[tuple[str, str], _ResultWaiter] = {}
        self._rng = random.Random()
        self._reader = Reader(lambda: self.store, self.definition)
        self.recovery = RecoveryReport()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise EngineStopped("the engine is not running: use it as `async with Engine(...)`")
        return self._store

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
        if isinstance(self._path, str | os.PathLike):
            self._store = await anyio.to_thread.run_sync(
                lambda: LmdbStore(self._path, durable=self._durable)  # type: ignore[arg-type]
            )
            self._owns_store = True
        else:
            self._store = self._path
        self._keys = await anyio.to_thread.run_sync(self._load_keys)
        # Before any new work: repair what a crash left half done.
        self.recovery = await sweep(
            self.store, now=self.now(), apply=True, code_version=self.code_version
        )
        await anyio.to_thread.run_sync(self._record_payload_limit)
        self._failure = None
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        run_auto = getattr(self.clock, "run_auto_advance", None)
        if run_auto is not None and getattr(self.clock, "auto_advance", False):
            tg.start_soon(run_auto)
        if self._watchdog is not None:
            self._watchdog.start()  # before the recovery's replays, which it watches too
        self._root = self._supervision_tree()
        await tg.start(self._supervise, self._root)
        for key in self.recovery.reactivate:  # lazily: the workers take them in turn
            self.runtime.send(key, Message("wake"))
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
                    if e is None or _leaves(group) != [e]:
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
                ChildSpec("timer-wheel", self._run_wheel),
                ChildSpec("step-executor", self._run_executor),
                ChildSpec("run-actors", self._run_actors),
                ChildSpec("inbox", self._run_inbox),
            ],
            name="aion-engine",
            strategy=Strategy.ONE_FOR_ONE,
            max_restarts=self._service_restarts,
            max_seconds=self._service_window,
            backoff=Backoff(initial=0.05, maximum=1.0),
            clock=self.clock,
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
            await root.run(task_status=_Started(on_started))
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

    async def _run_wheel(self, ctx: ChildContext) -> None:
        # A fresh wheel on every (re)start: it reloads what is due from the store's index.
        self._wheel = TimerWheel(
            self.clock,
            self._on_timer,
            load=self._load_timers,
            peek=self._peek_timer,
            horizon=self._timer_horizon,
        )
        with _one_error():
            async with anyio.create_task_group() as tg:
                await tg.start(self._wheel.run)
                ctx.started()

    async def _run_executor(self, ctx: ChildContext) -> None:
        with _one_error():
            async with anyio.create_task_group() as tg:
                await self.executor.run(tg)  # steps that were running when it failed run again
                ctx.started()

    async def _run_actors(self, ctx: ChildContext) -> None:
        with _one_error():
            async with anyio.create_task_group() as tg:
                for _ in range(self._activation_workers):
                    tg.start_soon(self.runtime.worker)
                if ctx.restarts:
                    self.runtime.reschedule()  # mail that waited while the workers were down
                ctx.started()

    async def _run_inbox(self, ctx: ChildContext) -> None:
        ctx.started()
        await self._inbox_loop()

    def _release_waiters(self, failure: AionError | None = None) -> None:
        """Nobody waits forever on a stopped engine: results and replies fail with a reason."""
        stopped = failure or EngineStopped(
            "the engine stopped before this completed; what was recorded is kept and the "
            "next engine on this data directory continues it"
        )
        for actor in self.runtime.actors.values():
            for message in actor.mailbox:
                if message.reply is not None:
                    message.reply.set(stopped)
        for waiter in self._waiters.values():
            waiter.event.set()
        self._waiters.clear()

    async def _close_store(self) -> None:
        if self._store is not None and self._owns_store:
            with anyio.CancelScope(shield=True):
                await self._store.aclose()
        self._store = None

    def _load_keys(self) -> KeyRing:
        if self._given_keys is not None:
            return self._given_keys
        directory = self._data_dir()
        if directory is None:
            if self._require_key:
                raise DataDirectoryError(
                    "the engine requires a provided waitpoint key (require_waitpoint_key=True) "
                    "and its store has no data directory: pass waitpoint_key=..."
                )
            ring = _EPHEMERAL_KEYS.get(self._path)  # as long as this in-memory store lives
            if ring is None:
                ring = _EPHEMERAL_KEYS[self._path] = KeyRing.generate(self.now())
            return ring
        return load_or_create(directory, now=self.now(), require_existing=self._require_key)

    def _record_payload_limit(self) -> None:
        """Other processes (the CLI) check what they queue against this engine's limit."""
        directory = self._data_dir()
        if directory is None:
            return
        path = os.path.join(directory, PAYLOAD_LIMIT_FILE)
        text = f"{self.max_payload_bytes}\n"
        try:
            with open(path, encoding="ascii") as f:
                if f.read() == text:
                    return
        except (OSError, ValueError):
            pass
        partial = f"{path}.{os.getpid()}.tmp"
        try:
            with open(partial, "w", encoding="ascii") as f:
                f.write(text)
            os.replace(partial, path)
        except OSError as exc:  # a hint for the CLI: never worth failing a start
            log.warning("could not record the payload limit in %s: %s", path, exc)

    def _data_dir(self) -> str | os.PathLike[str] | None:
        if isinstance(self._path, str | os.PathLike):
            return self._path
        path = getattr(self._path, "path", None)
        return path if isinstance(path, str | os.PathLike) else None

    # --- services used by the runtime -------------------------------------------------------

    def sign_waitpoint(
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

    def definition(self, workflow_type: str) -> WorkflowDefinition | None:
        return self._registry.get(workflow_type)

    def now(self) -> datetime:
        return from_timestamp(self.clock.now())

    def restart_backoff(self, restarts: int) -> float:
        return float(min(0.05 * 2 ** (restarts - 1), 5.0) * (0.5 + self._rng.random()))

    def restart_later(self, key: tuple[str, str], delay: float) -> None:
        if self._tg is None:
            return  # stopping: the next engine's recovery sweep takes the run up

        async def later() -> None:
            await self.clock.sleep(delay)
            self.runtime.send(key, Message("wake"))

        self._tg.start_soon(later)

    def hold_timer(self, row: TimerRow) -> None:
        if self._wheel is not None:
            self._wheel.schedule(row.due.timestamp(), _timer_key(row), row)

    def release_timer(self, row: TimerRow) -> None:
        if self._wheel is not None:
            self._wheel.cancel(_timer_key(row))

    async def _on_timer(self, timer: Timer[TimerKey, TimerRow]) -> None:
        await self.runtime.room_for_timers()
        row = timer.payload
        self.runtime.send((row.tenant, row.workflow_id), Message("timer", {"row": row}))

    async def _load_timers(
        self, after: float, until: float
    ) -> list[tuple[float, TimerKey, TimerRow]]:
        out: list[tuple[float, TimerKey, TimerRow]] = []
        last: TimerRow | None = None
        until_dt = from_timestamp(until)
        while True:
            rows = await self.store.due_timers(until_dt, limit=1000, after=last)
            for row in rows:
                due = row.due.timestamp()
                if due > after:
                    out.append((due, _timer_key(row), row))
            if len(rows) < 1000:
                return out
            last = rows[-1]

    async def _peek_timer(self, after: float) -> float | None:
        due = await self.store.next_timer_due(from_timestamp(after))
        return None if due is None else due.timestamp()

    def finished(self, record: WorkflowRecord, command: c.Command) -> None:
        """A run closed: wake result waiters and tell the parent."""
        key = (record.tenant, record.workflow_id)
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.outcome = (record, command)  # waiters need not read the store back
            waiter.event.set()
        if record.parent_workflow_id is not None:
            self._notify_parent(record, command)

    def _notify_parent(self, record: WorkflowRecord, command: c.Command) -> None:
        parent_key = (record.tenant, record.parent_workflow_id or "")
        data: dict[str, Any] = {"child_id": record.workflow_id, "result": b""}
        match command:
            case c.CompleteWorkflow():
                data.update(error_type=None, message="", result=command.result)
            case c.FailWorkflow():
                data.update(error_type=command.error_type, message=command.message)
            case _:
                data.update(error_type="WorkflowCancelled", message="cancelled")
        self.runtime.send(parent_key, Message("child", data))

    def check_child(self, parent: tuple[str, str], seq: int, child_id: str) -> None:
        """After a parent replays: a child that finished while nobody listened reports now."""
        if self._tg is None:
            return  # stopping: the parent asks again when it next replays

        async def check() -> None:
            record = await self.store.get_workflow(child_id, tenant=parent[0])
            if record is None or not record.status.is_terminal:
                return
            events = await self.store.read_current_run(child_id, tenant=parent[0])
            command = _outcome_command(events[-1]) if events else None
            if command is not None:
                self._notify_parent(record, command)

        self._tg.start_soon(check)

    def cancel_child(self, tenant: str, child_id: str) -> None:
        self.runtime.send((tenant, child_id), Message("cancel", {"reason": "parent cancelled"}))

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
        return self.runtime.idle() and self.executor.idle and not self._side_tasks

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
    ) -> WorkflowHandle:
        """Start a workflow, or return a handle to the existing one with this ``workflow_id``.

        Raises:
            PayloadError: the arguments cannot be encoded, exceed the payload limit, or do not
                match the workflow's parameter annotations (nothing is recorded).
            InvalidArgument: unknown workflow type, malformed id (``""`` too: pass None for
                a generated one), wrong number of arguments, or an id taken by a run of
                another workflow type.
        """
        tenant = _validate.identifier(tenant, "tenant")
        workflow_id = new_id() if workflow_id is None else _validate.identifier(workflow_id)
        definition = self._resolve(workflow)
        encoded = definition.encode_input(args, limit=self.max_payload_bytes)
        key = (tenant, workflow_id)
        resident = self.runtime.actors.get(key)
        if resident is not None:
            if resident.record is not None:
                return self._same_run(resident.record, definition)
            return await self._existing(workflow_id, tenant, definition)
        with self._busy():
            run_id = new_id()
            now = self.now()
            # Registered but marked queued: no worker touches it until its start is recorded.
            actor = self.runtime.actors[key] = Actor(key, queued=True)
            actor.driver = self.runtime._new_driver(definition)
            started, actor.record = begin_run(
                tenant=tenant,
                workflow_id=workflow_id,
                run_id=run_id,
                workflow_type=definition.name,
                input=encoded,
                at=now,
                code_version=self.code_version,
            )
            batch = _Batch()
            actor.head = 1
            batch.events.append(started)
            blocked: str | None = None
            try:
                self.runtime._record_commands(actor, batch, actor.driver.apply(started))
            except (NondeterminismError, _Block) as exc:
                blocked = str(exc)  # recorded as started, parked BLOCKED
            try:
                if blocked is None:
                    await self.runtime._commit(actor, batch)
                else:
                    await self.runtime.commit_blocked(actor, batch, blocked)
            except SequenceConflict as exc:
                # The id was taken: mail that arrived meanwhile goes to an actor that activates
                # from the store.
                if self.runtime.actors.get(key) is actor:
                    del self.runtime.actors[key]
                for message in actor.mailbox:
                    self.runtime.send(key, message)
                if (exc.tenant, exc.workflow_id) != key:
                    raise  # a child's id, taken by a start that raced ours: nothing recorded
                return await self._existing(workflow_id, tenant, definition)
            except BaseException:
                if self.runtime.actors.get(key) is actor:
                    del self.runtime.actors[key]
                raise
            if blocked is not None:
                return WorkflowHandle(workflow_id, tenant, self._result)
            actor.queued = False
            if actor.mailbox:
                self.runtime._schedule(actor)
            elif actor.record.status.is_terminal:
                self.runtime.actors.pop(key, None)
            else:
                self.runtime._maybe_evict()
        return WorkflowHandle(workflow_id, tenant, self._result)  # (the ids are checked)

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
        if record.workflow_type != definition.name:
            raise InvalidArgument(
                f"workflow id {record.workflow_id!r} is taken by a run of type "
                f"{record.workflow_type!r}; it cannot start a {definition.name!r} run. Nothing "
                "was recorded: use another workflow_id"
            )
        return WorkflowHandle(record.workflow_id, record.tenant, self._result)

    def handle(self, workflow_id: str, *, tenant: str = "default") -> WorkflowHandle:
        """A handle to an existing workflow (whether it exists is not checked until used).

        Raises:
            InvalidArgument: the id or tenant is malformed.
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        return WorkflowHandle(workflow_id, tenant, self._result)

    async def _result(self, workflow_id: str, tenant: str, timeout: float | None) -> Any:
        # The ids were checked when the handle was made (handle(), start()).
        timeout = _validate.optional_seconds(timeout, "result(timeout=...)")
        with anyio.fail_after(timeout) if timeout is not None else nullcontext():
            key = (tenant, workflow_id)
            while True:
                waiter = self._waiters.get(key)
                if waiter is None:
                    waiter = self._waiters[key] = _ResultWaiter()
                if not self._running_here(key):
                    record = await self._record(workflow_id, tenant)
                    if record.status.is_terminal:
                        if self._waiters.get(key) is waiter and not waiter.event.is_set():
                            del self._waiters[key]
                        return await self._outcome(record)
                await waiter.event.wait()
                if waiter.outcome is not None:
                    return self._reader.outcome_of(*waiter.outcome)
                if self._failure is not None:
                    raise self._failure
                if self._tg is None:
                    raise EngineStopped(
                        f"the engine stopped before workflow {workflow_id!r} finished; the run "
                        "continues when an engine next runs on this data directory"
                    )

    def _running_here(self, key: tuple[str, str]) -> bool:
        """The run is resident and unfinished: it exists and ``finished`` will wake us."""
        actor = self.runtime.actors.get(key)
        return (
            actor is not None
            and actor.driver is not None
            and actor.driver.outcome is None
            and actor.record is not None
            and not actor.record.status.is_terminal
        )

    async def signal(
        self, workflow_id: str, name: str, payload: Any = None, *, tenant: str = "default"
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
        encoded = encode_payload(payload, limit=self.max_payload_bytes, what=f"signal {name!r}")
        await self._deliver(
            workflow_id, tenant, Message("signal", {"name": name, "payload": encoded})
        )

    async def cancel(
        self, workflow_id: str, *, reason: str | None = None, tenant: str = "default"
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
        await self._deliver(workflow_id, tenant, Message("cancel", {"reason": reason}))

    async def _deliver(self, workflow_id: str, tenant: str, message: Message) -> None:
        record = await self._record(workflow_id, tenant)
        if record.status.is_terminal:
            raise WorkflowClosed(
                f"workflow {workflow_id!r} has finished ({record.status.value}); it takes no "
                "more signals or cancellations"
            )
        reply = Reply()
        message.reply = reply
        self.runtime.send((tenant, workflow_id), message)
        await reply.wait()

    async def describe(self, workflow_id: str, *, tenant: str = "default") -> WorkflowDescription:
        """Status, times, result or error, history length and what the run waits on.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        return await self._reader.describe(workflow_id, tenant=tenant)

    async def history(
        self, workflow_id: str, *, after_seq: int = 0, tenant: str = "default"
    ) -> list[HistoryEvent]:
        """The recorded events after ``after_seq``, in order.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: the id or tenant is malformed, or ``after_seq`` is not an int >= 0.
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        after_seq = _validate.after_seq(after_seq)
        return await self._reader.history(workflow_id, after_seq=after_seq, tenant=tenant)

    async def list(
        self,
        *,
        status: Status | None = None,
        workflow_type: str | None = None,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowDescription]:
        """Workflows of ``tenant``, newest first, keyset-paginated (pass ``next_cursor`` back).

        Raises:
            InvalidArgument: a filter, ``limit`` (1 to 10,000) or ``cursor`` is malformed, or
                the cursor was made for another query.
        """
        tenant = _validate.identifier(tenant, "tenant")
        if status is not None:
            status = _status(status)
        workflow_type = _validate.optional_identifier(workflow_type, "workflow_type")
        limit = _validate.page_limit(limit)
        cursor = _validate.cursor(cursor)
        return await self._reader.list(
            status=status, workflow_type=workflow_type, tenant=tenant, limit=limit, cursor=cursor
        )

    async def unblock(self, workflow_id: str, *, tenant: str = "default") -> WorkflowDescription:
        """Retry a ``BLOCKED`` run now: replay it and go on (after the cause was fixed).

        Returns the run's description afterwards: ``RUNNING`` (or finished) if it went on,
        ``BLOCKED`` again, with the new reason, if the cause is still there.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: the run is not blocked (or the id is malformed).
        """
        workflow_id, tenant = _key(workflow_id, tenant)
        record = await self._record(workflow_id, tenant)
        if record.status is not Status.BLOCKED:
            raise InvalidArgument(
                f"workflow {workflow_id!r} is {record.status.value}, not blocked; nothing to do"
            )
        key = (tenant, workflow_id)
        actor = self.runtime.actors.get(key)
        if actor is not None:
            actor.restarts.clear()  # an operator's retry starts a fresh restart budget
        reply = Reply()
        self.runtime.send(key, Message("wake", reply=reply))
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
        data = {
            "approved": approved,
            "user": user,
            "comment": comment,
            "approval_id": approval_id,
            "digest": digest,
        }
        await self._deliver(workflow_id, tenant, Message("decide", data))

    async def pending_approvals(
        self, *, tenant: str = "default", limit: int = 100, cursor: str | None = None
    ) -> Page[PendingApproval]:
        """Approvals waiting for a person across the tenant's runs, oldest first (keyset
        pagination: pass ``next_cursor`` back).

        Raises:
            InvalidArgument: the tenant, ``limit`` (1 to 10,000) or ``cursor`` is malformed, or
                the cursor was made for another query.
        """
        tenant = _validate.identifier(tenant, "tenant")
        limit = _validate.page_limit(limit)
        cursor = _validate.cursor(cursor)
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
        row = await self.store.get_waitpoint(workflow_id, claims.waitpoint_id, tenant=tenant)
        if row is None or row.created_at != claims.created_at:
            raise InvalidToken("the token names no waitpoint of this engine's store")
        if row.status is not WaitpointStatus.PENDING:
            raise refuse_completion(row)
        encoded = encode_payload(
            payload, limit=self.max_payload_bytes, what=f"completion of waitpoint {row.name!r}"
        )
        data = {"waitpoint_id": claims.waitpoint_id, "payload": encoded, "token": token}
        try:
            await self._deliver(workflow_id, tenant, Message("complete", data))
        except WorkflowClosed as exc:
            raise WaitpointClosed(f"{exc}; its waitpoints are closed") from exc

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

    async def _record(self, workflow_id: str, tenant: str) -> WorkflowRecord:
        return await self._reader.record(workflow_id, tenant)

    async def _outcome(self, record: WorkflowRecord) -> Any:
        return await self._reader.outcome(record)

    # --- inbox ----------------------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        """Hand commands left by other processes to their runs, until each is applied.

        A command stays in the inbox until the write that applies it deletes it. One whose
        application failed (a crash of its run, a full disk) is handed over again, with a
        backoff per command; one for a BLOCKED run waits there until the run runs again (the
        run takes it itself when it is unblocked); one that can never apply is removed with a
        log line.
        """
        tries: dict[str, tuple[int, float]] = {}  # command id -> (hand-overs, next at)
        while True:
            commands = await self._read_inbox()
            now = time.monotonic()
            for command in commands:
                count, due = tries.get(command.command_id, (0, 0.0))
                if due > now:
                    continue
                delay = min(max(self._inbox_interval, 0.05) * 2**count, INBOX_MAX_BACKOFF)
                tries[command.command_id] = (count + 1, now + delay)
                await self._apply_inbox(command)
            present = {command.command_id for command in commands}
            tries = {i: t for i, t in tries.items() if i in present}
            await anyio.sleep(self._inbox_interval)

    async def _read_inbox(self) -> builtins.list[InboxCommand]:
        out: builtins.list[InboxCommand] = []
        while True:
            rows = await self.store.read_inbox(limit=500, after=out[-1].command_id if out else None)
            out += rows
            if len(rows) < 500:
                return out

    def inbox_message(self, command: InboxCommand) -> Message | str:
        """The message that applies an inbox command, or why it can never apply.

        A waitpoint token is checked as of the time the command was accepted: a completion
        kept while its run was BLOCKED still applies after the token's expiry. A command whose
        fields the engine's own methods would refuse never applies (ARCHITECTURE.md,
        invariant 17: the inbox skips no check the API makes).
        """
        try:
            self._check_inbox(command)
        except AionError as exc:  # InvalidArgument, PayloadError
            return f"{exc} (the engine's methods refuse it too)"
        data: dict[str, Any]
        kind = command.kind
        if kind == "complete_waitpoint":
            try:
                claims = self._verify_token(command.token, at=command.created_at)
            except InvalidToken as exc:
                return str(exc)
            if (claims.tenant, claims.workflow_id) != (command.tenant, command.workflow_id):
                return "the token is for another workflow than the command names"
            kind = "complete"
            data = {
                "waitpoint_id": claims.waitpoint_id,
                "payload": command.payload,
                "token": command.token,
            }
        elif kind == "signal":
            data = {"name": command.name, "payload": command.payload}
        elif kind == "cancel":
            data = {"reason": command.comment}
        elif kind in ("approve", "reject"):
            kind = "decide"
            data = {
                "approved": command.kind == "approve",
                "user": command.user,
                "comment": command.comment,
                "approval_id": command.target_id or None,
                "digest": command.digest or None,
            }
        elif kind == "unblock":
            kind, data = "wake", {}
        else:
            return f"kind {kind!r} is not understood"
        return Message(kind, data, inbox_id=command.command_id)

    def _check_inbox(self, command: InboxCommand) -> None:
        """The checks of the method each inbox command stands for (the ``aion`` command makes
        them before it queues; another version, or another writer, may not have)."""
        _key(command.workflow_id, command.tenant)
        limit = self.max_payload_bytes
        match command.kind:
            case "signal":
                name = _validate.name(command.name, "signal name")
                _validate.payload_bytes(command.payload, limit=limit, what=f"signal {name!r}")
            case "complete_waitpoint":
                _validate.payload_bytes(command.payload, limit=limit, what="completion payload")
            case "cancel":
                _validate.optional_text(command.comment, "cancel reason")
            case "approve" | "reject":
                _validate.user(command.user)
                _validate.optional_text(command.comment, "comment")
                if command.target_id:
                    _validate.identifier(command.target_id, "approval_id")
                _validate.text(command.digest, "digest", limit=_validate.MAX_NAME_BYTES)

    async def _apply_inbox(self, command: InboxCommand) -> None:
        """Hand a command left by another process to its run; the write that applies it
        deletes it. One that cannot apply is logged and deleted."""
        key = (command.tenant, command.workflow_id)
        message = self.inbox_message(command)
        problem = message if isinstance(message, str) else None
        record = None
        if problem is None:
            record = await self.store.get_workflow(command.workflow_id, tenant=command.tenant)
            if record is None:
                problem = "the workflow does not exist"
            elif record.status.is_terminal:
                problem = f"the workflow has finished ({record.status.value})"
        if problem is not None:
            log.warning(
                "inbox command %s (%s for %s/%s) dropped: %s",
                command.command_id,
                command.kind,
                *key,
                problem,
            )
            await self.store.commit(Write(inbox_delete=[command.command_id]))
            return
        assert isinstance(message, Message) and record is not None
        if command.kind == "unblock":
            await self.store.commit(Write(inbox_delete=[command.command_id]))
            self.runtime.send(key, Message("wake"))
            return
        if record.status is Status.BLOCKED and key not in self.runtime.actors:
            return  # kept: the run takes it when it runs again
        self.runtime.send(key, message)

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


def _key(workflow_id: object, tenant: object) -> tuple[str, str]:
    """A public method's (workflow id, tenant), checked (ARCHITECTURE.md, invariant 17)."""
    return _validate.identifier(workflow_id), _validate.identifier(tenant, "tenant")


def _status(status: object) -> Status:
    if isinstance(status, Status):
        return status
    if isinstance(status, str) and status in _STATUS_VALUES:  # its value: "running" ...
        return Status(status)
    choices = ", ".join(repr(s.value) for s in Status)
    raise InvalidArgument(
        f"status {_validate.shown(status)} is not a status: pass an aion.Status ({choices})"
    )


_STATUS_VALUES = frozenset(s.value for s in Status)


def _not_busy() -> AbstractContextManager[object]:
    """The busy marker of clocks without one: one shared no-op (it is entered per step)."""
    return _NOT_BUSY


class _ResultWaiter:
    """Shared by the ``result()`` calls waiting on one run; ``finished`` hands them the outcome."""

    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = Flag()  # not anyio's Event: that one asks sniffio for the backend
        self.outcome: tuple[WorkflowRecord, c.Command] | None = None


def _timer_key(row: TimerRow) -> TimerKey:
    return (row.tenant, row.workflow_id, row.timer_id)


def _outcome_command(event: ev.Event) -> c.Command | None:
    match event:
        case ev.WorkflowCompleted():
            return c.CompleteWorkflow(event.result)
        case ev.WorkflowFailed():
            return c.FailWorkflow(event.error_type, event.message, event.traceback)
        case ev.WorkflowCancelled():
            return c.CancelWorkflow(event.reason)
    return None


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


class _Started:
    """A task status that tells ``_supervise`` (not only ``TaskGroup.start``) about the start."""

    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started

    def started(self, value: object = None) -> None:
        self._on_started()


@contextlib.contextmanager
def _one_error() -> Iterator[None]:
    """A service's task group failed: report its first error, not the group (the supervisor
    and the embedding service see what went wrong)."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = [e for e in _leaves(group) if isinstance(e, Exception)]
        if errors:
            raise errors[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in a group, cancellations left out."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += _leaves(exc)
        elif not isinstance(exc, anyio.get_cancelled_exc_class()):
            out.append(exc)
    return out
