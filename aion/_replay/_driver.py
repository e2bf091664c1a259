"""The deterministic workflow driver: pure, no I/O, no event loop.

The driver steps workflow coroutines itself (``coro.send``) from a FIFO ready queue. Workflow
code awaits only driver futures; every durable operation it calls becomes a :class:`Command`
numbered per kind. Events go in (:meth:`Driver.replay` for recorded history, :meth:`Driver.apply`
for new facts); commands come out (:meth:`Driver.take_commands`).

During replay a command is matched against the next recorded event at the moment the code
issues it; a mismatch raises :class:`~aion.errors.NondeterminismError` naming the workflow, the
position, what history recorded and what the code did now. Time only moves with events:
``ctx.now()`` is the recorded time of the event that woke the code, live and on replay alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import traceback
import types
import typing
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aion import _validate
from aion import events as ev
from aion._codec import DEFAULT_MAX_PAYLOAD_BYTES, decode_payload, encode, encode_payload
from aion._tokens import fingerprint as token_fingerprint
from aion.errors import (
    ActivationFailed,
    ApprovalRejected,
    Cancelled,
    InvalidArgument,
    NondeterminismError,
    PayloadError,
    StepError,
    WaitTimedOut,
    WorkflowCancelled,
    WorkflowFailed,
)

from ._commands import (
    CancelTimer,
    CancelWorkflow,
    Command,
    CompleteWorkflow,
    ContinueAsNew,
    CreateWaitpoint,
    FailWorkflow,
    RecordPatch,
    RequestApproval,
    ScheduleStep,
    StartChild,
    StartTimer,
    UpsertSearchAttributes,
    describe_command,
    describe_event,
    is_command_event,
    matches,
)
from ._context import Context
from ._definition import DEFAULT_RETRY, RetryPolicy, WorkflowDefinition, convert, definition_of
from ._waits import Approval, ApprovalState, Waitpoint, WaitpointState, approval_digest
from ._watch import LIVE_OVERRUNS, ActivationWatch

#: Signs a waitpoint token: (tenant, workflow id, waitpoint id, created at, expires at, key id
#: or None for the current key) -> (key id, token). An empty token if the key is gone.
Signer = Callable[[str, str, str, datetime, datetime | None, str | None], tuple[str, str]]

__all__ = ["Driver", "PendingStep", "WorkflowInfo"]


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """Identity of the running workflow (``ctx.info``)."""

    workflow_id: str
    run_id: str
    workflow_type: str
    tenant: str
    started_at: datetime
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None


_MARKERS = (ev.WorkflowBlocked, ev.WorkflowUnblocked)


class _Diverged(BaseException):
    """Unwinds workflow code after a divergence; ``except Exception`` cannot swallow it."""


class _ContinueAsNewRequest(BaseException):
    def __init__(self, input: bytes) -> None:
        super().__init__("continue-as-new")
        self.input = input


class DurableFuture:
    """What workflow code awaits. Resolved only by the driver, in event order."""

    __slots__ = ("callbacks", "done", "error", "value", "waiters")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiters: list[_Task] = []
        self.callbacks: list[Callable[[DurableFuture], None]] = []

    def __await__(self) -> Generator[DurableFuture, None, Any]:
        if not self.done:
            yield self
        if self.error is not None:
            raise self.error
        return self.value


class _TimerFuture(DurableFuture):
    __slots__ = ("due", "seq")

    def __init__(self, seq: int, due: datetime) -> None:
        super().__init__()
        self.seq = seq
        self.due = due


class _SignalWait(DurableFuture):
    __slots__ = ("name", "timer")

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.timer: _TimerFuture | None = None


@dataclass(slots=True)
class PendingStep:
    """A step the code awaits: its command, attempts started, and a scheduled retry if any."""

    future: DurableFuture
    command: ScheduleStep
    result_type: Any
    attempts: int = 0
    retry_due: datetime | None = None
    held: str | None = None  # the approval the engine's policy holds it for, until decided

    @property
    def name(self) -> str:
        return self.command.name


@dataclass(slots=True)
class _Child:
    future: DurableFuture
    workflow_id: str
    result_type: Any


class _Task:
    __slots__ = ("coro", "future", "name", "ready", "waiting_on")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str,
        ready: deque[tuple[_Task, BaseException | None]],
    ) -> None:
        self.coro = coro
        self.name = name
        self.ready = ready  # the owning driver's ready queue: a resolved future wakes us there
        self.future = DurableFuture()
        self.waiting_on: DurableFuture | None = None


class Driver:
    """Replays and runs one workflow run. Not thread-safe; one owner (the run's actor).

    Args:
        definition: the workflow to run.
        max_payload_bytes: limit for encoded arguments, results and payloads.
        resolve: turns a workflow type name into a definition (for typed child results).
        sign: signs waitpoint tokens (without it, ``ctx.waitpoint`` hands out empty tokens).
        watch: where activations are published for the engine's watchdog; with a ``limit``,
            an activation that holds the event loop longer parks the run (replaying: the first
            time; live: the ``LIVE_OVERRUNS``-th time) with :class:`ActivationFailed`.
    """

    def __init__(
        self,
        definition: WorkflowDefinition,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        resolve: Callable[[str], WorkflowDefinition | None] | None = None,
        sign: Signer | None = None,
        watch: ActivationWatch | None = None,
    ) -> None:
        self.definition = definition
        self._watch = watch
        self.overruns = 0  # live activations that held the event loop past the watch's limit
        self._in_replay = False  # inside replay(): an overrun there parks the run at once
        self._stepping: _Task | None = None  # the task stepped last (where an overrun was)
        self.max_payload_bytes = max_payload_bytes
        self._resolve = resolve
        self._sign = sign
        self.info: WorkflowInfo | None = None
        self.time: datetime | None = None
        self.outcome: Command | None = None
        self.cancel_requested = False
        self.position = 0
        self._ready: deque[tuple[_Task, BaseException | None]] = deque()
        self._tasks: list[_Task] = []
        self._main: _Task | None = None
        self._counters = {"step": 0, "timer": 0, "child": 0, "approval": 0, "waitpoint": 0}
        self._steps: dict[int, PendingStep] = {}
        self._timers: dict[int, _TimerFuture] = {}
        self._children: dict[int, _Child] = {}
        # Signals received and not yet consumed, by name: (arrival ordinal, payload).
        self._signals: dict[str, deque[tuple[int, bytes]]] = {}
        self._signal_ordinal = 0
        self._signal_waiters: dict[str, deque[_SignalWait]] = {}
        self._patches: dict[str, bool] = {}
        self._approvals: dict[str, ApprovalState] = {}  # pending, by approval id
        self._waitpoints: dict[str, WaitpointState] = {}  # every waitpoint of the run
        # Approvals and waitpoints that closed without an event of their own (timed out,
        # expired, withdrawn by cancellation): the engine updates their rows.
        self._closed: list[ApprovalState | WaitpointState] = []
        self._history: Sequence[ev.Event] = ()
        self._pos = 0
        self._new: list[Command] = []
        self._fatal: NondeterminismError | None = None
        self._rng: random.Random | None = None
        self._continued = False
        self._compensations: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    # --- feeding events ---------------------------------------------------------------------

    @property
    def replaying(self) -> bool:
        """True while recorded history is being replayed."""
        return self._pos < len(self._history)

    @property
    def in_replay(self) -> bool:
        """True inside :meth:`replay`, also while the code runs on past the recorded history."""
        return self._in_replay

    def replay(self, events: Sequence[ev.Event]) -> None:
        """Replay recorded events (a run segment, from its ``WorkflowStarted``).

        Raises:
            NondeterminismError: the code did something other than what was recorded.
        """
        self._history = events
        self._pos = 0
        self._in_replay = True
        try:
            while self._pos < len(self._history):
                event = self._history[self._pos]
                self._pos += 1
                if is_command_event(event):
                    self._diverge(event, None)
                self._resolve_event(event)
                self._run()
        finally:
            self._history = ()
            self._pos = 0
            self._in_replay = False

    def apply(self, event: ev.Event) -> list[Command]:
        """Feed one new fact (live) and return the commands the code issued in response."""
        if is_command_event(event):
            raise InvalidArgument(f"{type(event).__name__} is recorded by the driver, not fed")
        self._resolve_event(event)
        self._run()
        return self.take_commands()

    def take_commands(self) -> list[Command]:
        """Commands issued live since the last call, in issue order."""
        commands, self._new = self._new, []
        return commands

    # --- what the run waits on (for describe) ------------------------------------------------

    def pending(self) -> dict[str, list[str]]:
        """Durable operations the run is waiting for, by kind (only kinds it waits on)."""
        # On every commit (the projection's waiting_on): kinds with nothing pending cost a
        # truth test, not a list.
        out: dict[str, list[str]] = {}
        if self._steps:
            out["steps"] = [s.name for s in self._steps.values()]
        if self._timers:
            out["timers"] = [
                f"#{seq} due {t.due:%Y-%m-%d %H:%M:%S}" for seq, t in self._timers.items()
            ]
        if self._signal_waiters:
            signals = [name for name, ws in self._signal_waiters.items() if ws]
            if signals:
                out["signals"] = signals
        if self._children:
            out["children"] = [c.workflow_id for c in self._children.values()]
        if self._approvals:
            out["approvals"] = [f"{a.action} ({a.approval_id})" for a in self._approvals.values()]
        if self._waitpoints:
            waitpoints = [w.name for w in self._waitpoints.values() if w.pending]
            if waitpoints:
                out["waitpoints"] = waitpoints
        return out

    def pending_approvals(self) -> list[ApprovalState]:
        """Approvals waiting for a decision, in request order."""
        return list(self._approvals.values())

    def waitpoint_state(self, waitpoint_id: str) -> WaitpointState | None:
        return self._waitpoints.get(waitpoint_id)

    def pending_waitpoints(self) -> list[WaitpointState]:
        """Waitpoints neither completed nor expired, in creation order."""
        return [w for w in self._waitpoints.values() if w.pending]

    def take_closed(self) -> Sequence[ApprovalState | WaitpointState]:
        """Approvals (timed out, withdrawn: see ``closed_as``) and waitpoints (expired) that
        closed without an event of their own since the last call; the engine updates their
        rows."""
        if not self._closed:  # the common case, on every event fed: no allocation
            return ()
        closed, self._closed = self._closed, []
        return closed

    def pending_steps(self) -> list[PendingStep]:
        """Steps scheduled and not yet resolved, by step number."""
        return list(self._steps.values())

    def pending_step(self, seq: int) -> PendingStep | None:
        """The pending step with this number, if it is still pending."""
        return self._steps.get(seq)

    def pending_timers(self) -> list[tuple[int, datetime]]:
        """Timers started and neither fired nor cancelled: (timer number, due)."""
        return [(seq, t.due) for seq, t in self._timers.items()]

    def pending_children(self) -> list[tuple[int, str]]:
        """Children started and not finished: (child number, workflow id)."""
        return [(seq, c.workflow_id) for seq, c in self._children.items()]

    # --- events -----------------------------------------------------------------------------

    def _resolve_event(self, event: ev.Event) -> None:
        self.position = event.seq
        if not isinstance(event, ev.WorkflowStarted) and self.info is None:
            raise NondeterminismError(
                f"history of workflow {self.definition.name!r} does not begin with "
                f"WorkflowStarted (event {event.seq} is {type(event).__name__})"
            )
        self.time = event.at
        match event:
            case ev.WorkflowStarted():
                self._start(event)
            case ev.StepStarted():
                step = self._steps.get(event.step_seq)
                if step is not None:
                    step.attempts = max(step.attempts, event.attempt)
                    step.retry_due = None
            case ev.StepRetryScheduled():
                step = self._steps.get(event.step_seq)
                if step is not None:
                    step.retry_due = event.due
            case ev.StepCompleted():
                step = self._take_step(event, event.step_seq)
                value = self._decode(
                    event.result, step.result_type, f"result of step {step.name!r}"
                )
                _resolve(step.future, value)
            case ev.StepFailed():
                if not event.will_retry:
                    step = self._take_step(event, event.step_seq)
                    _fail(
                        step.future,
                        StepError(step.name, event.error_type, event.message, event.attempt),
                    )
            case ev.TimerFired():
                timer = self._timers.pop(event.timer_seq, None)
                if timer is not None:
                    _resolve(timer, None)
            case ev.SignalReceived():
                self._deliver_signal(event.name, event.payload)
            case ev.ChildCompleted():
                child = self._take_child(event, event.child_seq)
                value = self._decode(event.result, child.result_type, "child result")
                _resolve(child.future, value)
            case ev.ChildFailed():
                child = self._take_child(event, event.child_seq)
                error: BaseException
                if event.error_type == "WorkflowCancelled":
                    error = WorkflowCancelled(f"child workflow {child.workflow_id!r} was cancelled")
                else:
                    error = WorkflowFailed(child.workflow_id, event.error_type, event.message)
                _fail(child.future, error)
            case ev.ApprovalRequested():
                self._hold_step(event)
            case ev.ApprovalDecided():
                self._decide(event)
            case ev.WaitpointCompleted():
                self._complete_waitpoint(event)
            case ev.WorkflowCancelRequested():
                self._cancel(event.reason)
            case _:
                pass  # markers, blocked/unblocked, retries scheduled: nothing wakes

    def _start(self, event: ev.WorkflowStarted) -> None:
        if self.info is not None:
            raise NondeterminismError(
                f"workflow {event.workflow_id!r}: a second WorkflowStarted at event {event.seq} "
                "inside one run segment"
            )
        self.info = WorkflowInfo(
            workflow_id=event.workflow_id,
            run_id=event.run_id,
            workflow_type=event.workflow_type,
            tenant=event.tenant,
            started_at=event.at,
            parent_workflow_id=event.parent_workflow_id,
            parent_run_id=event.parent_run_id,
        )
        self._rng = None  # seeded from the run's identity on first use (ctx.random/uuid4)
        self._continued = event.continued_from_run_id is not None
        try:
            args = self.definition.decode_input(event.input)
            # A fresh Context, not one kept on the driver: a driver -> context -> driver cycle
            # would leave every finished run to the cyclic garbage collector.
            coro = self.definition.fn(Context(self), *args)
        except BaseException as exc:  # bad input or arity: as if the code raised it (_step)
            self._main = _Task(_raise(exc), "main", self._ready)
        else:
            self._main = _Task(coro, "main", self._ready)
        self._tasks.append(self._main)
        self._ready.append((self._main, None))

    def _take_step(self, event: ev.Event, seq: int) -> PendingStep:
        step = self._steps.pop(seq, None)
        if step is None:
            self._diverge(
                event,
                None,
                detail=f"history has a result for step #{seq}, which "
                "the code has not scheduled at this point",
            )
        return step

    def _take_child(self, event: ev.Event, seq: int) -> _Child:
        child = self._children.pop(seq, None)
        if child is None:
            self._diverge(
                event,
                None,
                detail=f"history has a result for child #{seq}, which "
                "the code has not started at this point",
            )
        return child

    def _decode(self, data: bytes, tp: Any, what: str) -> Any:
        return convert(decode_payload(data, what=what), tp, what=what)

    # --- running the code -------------------------------------------------------------------

    def _run(self) -> None:
        """One activation: run the code woken so far until every task waits again."""
        watch = self._watch
        if watch is None or not self._ready:
            self._run_ready()
            return
        started = time.monotonic()
        watch.ordinal = ordinal = watch.ordinal + 1
        watch.current = (self, started, ordinal)
        try:
            self._run_ready()
        finally:
            watch.current = None
        held = time.monotonic() - started
        if watch.limit is not None and held > watch.limit:
            self._overran(held, watch.limit, watch.seen_at(ordinal))

    def _run_ready(self) -> None:
        while self._ready and self.outcome is None:
            task, error = self._ready.popleft()
            self._stepping = task
            self._step(task, error)
            if self._fatal is not None:
                raise self._fatal

    def _step(self, task: _Task, error: BaseException | None) -> None:
        task.waiting_on = None
        try:
            try:
                yielded = task.coro.throw(error) if error is not None else task.coro.send(None)
            except StopIteration as stop:
                self._finish(task, stop.value, None)
                return
            except (Exception, Cancelled, _ContinueAsNewRequest) as exc:
                self._finish(task, None, exc)
                return
            except _Diverged:
                raise
            except BaseException as exc:
                # KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit ... raised
                # by workflow code: not an outcome to record, and never the engine's to
                # propagate. The run is parked BLOCKED (the other runs go on).
                self._fatal = _raised(self._name(), self.info, exc)
                return
        except _Diverged:
            return  # self._fatal says why; _run raises it
        if isinstance(yielded, DurableFuture):
            if yielded.done:
                self._ready.append((task, None))
            else:
                yielded.waiters.append(task)
                task.waiting_on = yielded
        else:
            self._illegal_await(task, yielded)

    def _finish(self, task: _Task, value: Any, error: BaseException | None) -> None:
        self._tasks.remove(task)
        if task is not self._main:
            if error is None:
                _resolve(task.future, value)
            else:
                _fail(task.future, error)
            return
        self._issue(self._outcome_command(value, error))
        for other in list(self._tasks):  # the run is over: drop what still runs
            # Its cleanup failing does not change the run's outcome (a divergence in it set
            # self._fatal, which _run raises).
            with contextlib.suppress(BaseException):
                other.coro.close()
        self._tasks.clear()
        # Nothing resolves now: drop callbacks (closures over the driver) that would otherwise
        # keep the finished run alive in reference cycles.
        for timer in self._timers.values():
            timer.callbacks.clear()
        for step in self._steps.values():
            step.future.callbacks.clear()

    def _outcome_command(self, value: Any, error: BaseException | None) -> Command:
        assert self.info is not None
        if isinstance(error, _ContinueAsNewRequest):
            return ContinueAsNew(self.info.workflow_type, error.input)
        if isinstance(error, Cancelled):
            return CancelWorkflow(str(error) or None)
        if error is None:
            workflow_type = self.info.workflow_type
            try:
                result = encode_payload(
                    value,
                    limit=self.max_payload_bytes,
                    what=lambda: f"result of workflow {workflow_type!r}",
                )
            except PayloadError as exc:
                error = exc
            else:
                return CompleteWorkflow(result)
        error_type = error.error_type if isinstance(error, StepError) else type(error).__name__
        if isinstance(error, StepError):
            message = _validate.storable(error.error_message)
        else:
            message = _validate.error_text(error)
        try:  # (recorded: no lone surrogates, and a broken __str__ must not cost the record)
            tb = _validate.storable("".join(traceback.format_exception(error)[-20:]))
        except Exception:
            tb = ""
        return FailWorkflow(error_type, message, tb)

    def _overran(self, held: float, limit: float, seen: str | None) -> None:
        """An activation held the event loop ``held`` seconds, past ``limit``: park the run
        when it happened while replaying, or for the ``LIVE_OVERRUNS``-th time live."""
        if not self._in_replay:
            self.overruns += 1
            if self.overruns < LIVE_OVERRUNS:
                return
        if seen is not None:
            where = f"at {seen}"
        else:  # the watchdog did not look: where the code went on to wait
            task = self._stepping
            where = "before " + (_code_location(task.coro) if task is not None else "?")
        when = (
            "(while its history was replayed)"
            if self._in_replay
            else f"(live: {self.overruns} activations past the limit)"
        )
        workflow_id = self.info.workflow_id if self.info is not None else "ID"
        self._fatal = ActivationFailed(
            f"workflow {self._name()} held the event loop for {held:.2f} s {where} {when}; the "
            f"limit is {limit:g} s (Engine(activation_limit=...)) and every other run waited "
            "meanwhile. Workflow code must not block: move blocking calls and long computations "
            f"into a step (ctx.step), then `aion unblock {workflow_id}` (or restart the engine)."
        )
        raise self._fatal

    def _illegal_await(self, task: _Task, yielded: object) -> None:
        name = _awaited_name(task.coro, yielded)
        where = _code_location(task.coro)
        self._fatal = NondeterminismError(
            f"workflow {self._name()} awaited {name}, which is not an aion operation ({where}). "
            "Workflow code may only await ctx operations (ctx.step, ctx.sleep, "
            "ctx.wait_signal, ctx.child, ctx.gather ...); move I/O and real waiting into a "
            "step."
        )
        task.coro.close()

    # --- commands ---------------------------------------------------------------------------

    def _issue(self, command: Command) -> ev.Event | None:
        """Issue ``command``: replaying, match it and return the recorded event; live, queue it
        for the engine and return None."""
        self._skip_markers()
        if self._pos < len(self._history):
            event = self._history[self._pos]
            if not is_command_event(event) or not matches(command, event):
                self._diverge(event, command)
            self._pos += 1
            if isinstance(command, (CompleteWorkflow, FailWorkflow, CancelWorkflow, ContinueAsNew)):
                self.outcome = command
            return event
        self._new.append(command)
        if isinstance(command, (CompleteWorkflow, FailWorkflow, CancelWorkflow, ContinueAsNew)):
            self.outcome = command
        return None

    def _skip_markers(self) -> None:
        """Pass over the engine's markers (parked BLOCKED, unblocked): the code issued nothing
        there. A run parked while its code was at a point (say, awaiting something that is not
        an aion operation) resumes there after the fix, and its next command comes after them."""
        history = self._history
        while self._pos < len(history) and isinstance(history[self._pos], _MARKERS):
            self._pos += 1

    def _recorded_next(self) -> ev.Event | None:
        """Replaying, the event the next command must match (markers passed over, not
        consumed); live, None."""
        history, pos = self._history, self._pos
        while pos < len(history) and isinstance(history[pos], _MARKERS):
            pos += 1
        return history[pos] if pos < len(history) else None

    def _diverge(
        self, event: ev.Event | None, command: Command | None, *, detail: str | None = None
    ) -> typing.NoReturn:
        position = event.seq if event is not None else self.position + 1
        what = detail or (
            f"history has {describe_event(event)}, the code now "
            + ("does " if command is None else "calls ")
            + describe_command(command)
        )
        self._fatal = NondeterminismError(
            f"workflow {self._name()} diverged at event {position}: {what}. Did the workflow "
            "code change? Use ctx.patched() for new code paths, or restore the old code, then "
            "restart the engine."
        )
        raise _Diverged()

    def _name(self) -> str:
        if self.info is None:
            return repr(self.definition.name)
        return f"{self.info.workflow_id!r} ({self.info.workflow_type})"

    @property
    def rng(self) -> random.Random:
        """The run's deterministic random generator, seeded from its identity."""
        if self._rng is None:
            ident = (
                f"{self.info.workflow_id}\x00{self.info.run_id}" if self.info is not None else ""
            )
            seed = hashlib.sha256(ident.encode()).digest() if ident else bytes(8)
            self._rng = random.Random(int.from_bytes(seed[:8], "big"))
        return self._rng

    def _next(self, kind: str) -> int:
        self._counters[kind] += 1
        return self._counters[kind]

    def schedule_step(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        name: str | None,
        retry: RetryPolicy | None,
        timeout: float | None,
    ) -> DurableFuture:
        step_name = name or getattr(fn, "__qualname__", None) or repr(fn)
        encoded = encode_payload(
            [list(args), kwargs],
            limit=self.max_payload_bytes,
            what=lambda: f"arguments of step {step_name!r}",
        )
        seq = self._next("step")
        future = DurableFuture()
        command = ScheduleStep(
            seq, step_name, fn, args, kwargs, encoded, retry or DEFAULT_RETRY, timeout
        )
        self._steps[seq] = PendingStep(future, command, _return_type(fn))
        self._issue(command)
        return future

    def start_timer(self, delay: float, name: str = "") -> _TimerFuture:
        assert self.time is not None
        seq = self._next("timer")
        due = self.time + timedelta(seconds=delay)
        future = _TimerFuture(seq, due)
        self._timers[seq] = future
        self._issue(StartTimer(seq, due, name))
        return future

    def cancel_timer(self, timer: _TimerFuture) -> None:
        if self._timers.pop(timer.seq, None) is not None:
            self._issue(CancelTimer(timer.seq, timer.due))
            # Its callbacks never run now; they close over the driver and what waited on the
            # timer, which may point back at the timer: a cycle the collector would have to find.
            timer.callbacks.clear()

    def wait_signal(self, name: str, timeout: float | None) -> DurableFuture:
        buffered = self._signals.get(name)
        if buffered:
            return _done(self._decode(buffered.popleft()[1], Any, f"signal {name!r}"))
        if timeout is not None and timeout <= 0:
            future = DurableFuture()
            _fail(future, WaitTimedOut(f"no signal {name!r} had arrived (timeout {timeout}s)"))
            return future
        wait = _SignalWait(name)
        self._signal_waiters.setdefault(name, deque()).append(wait)
        if timeout is not None:
            timer = self.start_timer(timeout, f"signal:{name}")
            wait.timer = timer

            def on_timeout(_: DurableFuture) -> None:
                if not wait.done:
                    self._signal_waiters[name].remove(wait)
                    _fail(wait, WaitTimedOut(f"no signal {name!r} within {timeout}s"))

            timer.callbacks.append(on_timeout)
        return wait

    def _deliver_signal(self, name: str, payload: bytes) -> None:
        waiters = self._signal_waiters.get(name)
        if waiters:
            wait = waiters.popleft()
            if wait.timer is not None:
                self.cancel_timer(wait.timer)
            _resolve(wait, self._decode(payload, Any, f"signal {name!r}"))
        else:
            self._signal_ordinal += 1
            self._signals.setdefault(name, deque()).append((self._signal_ordinal, payload))

    def unconsumed_signals(self) -> list[tuple[str, bytes]]:
        """Signals received and not consumed by a wait, in arrival order: (name, payload).

        ``continue_as_new`` hands them to the successor run.
        """
        items = [(n, name, p) for name, queue in self._signals.items() for n, p in queue]
        items.sort(key=lambda item: item[0])
        return [(name, payload) for _, name, payload in items]

    def start_child(
        self, workflow: Any, args: tuple[Any, ...], workflow_id: str | None
    ) -> DurableFuture:
        assert self.info is not None
        if isinstance(workflow, str):
            _validate.identifier(workflow, "ctx.child's workflow type")
            definition = self._resolve(workflow) if self._resolve else None
            type_name = workflow
        else:
            definition = definition_of(workflow)
            type_name = definition.name
        if definition is not None:
            try:
                encoded = definition.encode_input(args, limit=self.max_payload_bytes)
            except PayloadError:
                recorded = self._recorded_next()
                if not (
                    isinstance(recorded, ev.ChildStarted)
                    and recorded.child_seq == self._counters["child"] + 1
                    and _unchecked(recorded.input, args)
                ):
                    raise
                encoded = recorded.input  # the child started with it: the call stands
        else:
            encoded = encode_payload(
                list(args), limit=self.max_payload_bytes, what=f"input of child {type_name!r}"
            )
        seq = self._next("child")
        # The default id is unique across the runs of a continue-as-new chain: children of
        # earlier runs keep theirs (finished or still running).
        run = f"/{self.info.run_id}" if self._continued else ""
        child_id = workflow_id or f"{self.info.workflow_id}{run}/child-{seq}"
        if workflow_id is None and len(child_id.encode()) > _validate.MAX_ID_BYTES:
            # Refused here, in the workflow: recorded, it would fail the write of whichever
            # request made the parent run, and every later one (a start or signal of another).
            self._counters["child"] -= 1
            raise InvalidArgument(
                f"ctx.child() without workflow_id= would name the child {child_id[:40]!r}... "
                f"({len(child_id.encode())} bytes), over the {_validate.MAX_ID_BYTES}-byte "
                "limit of ids, because the parent's id is long: pass "
                "ctx.child(..., workflow_id=...) with a shorter id (derived from "
                "ctx.info.workflow_id, e.g. a hash of it). Nothing was recorded"
            )
        future = DurableFuture()
        result_type = _return_type(definition.fn) if definition is not None else Any
        self._children[seq] = _Child(future, child_id, result_type)
        self._issue(StartChild(seq, type_name, child_id, encoded))
        return future

    # --- people and outside systems -----------------------------------------------------------

    def request_approval(self, action: str, details: Any, timeout: float | None) -> DurableFuture:
        assert self.info is not None and self.time is not None
        if not isinstance(action, str) or not action:
            raise InvalidArgument(
                f"an approval's action is a non-empty string, not {_validate.shown(action)}"
            )
        if timeout is not None and timeout <= 0:
            raise InvalidArgument(f"an approval's timeout must be positive, not {timeout!r}")
        encoded = encode_payload(
            details, limit=self.max_payload_bytes, what=f"details of approval {action!r}"
        )
        seq = self._next("approval")
        future = DurableFuture()
        state = ApprovalState(
            approval_id=f"{self.info.run_id[:8]}-a{seq}",
            seq=seq,
            action=action,
            details=encoded,
            digest=approval_digest(action, encoded),
            timeout_at=None if timeout is None else self.time + timedelta(seconds=timeout),
            future=future,
        )
        self._approvals[state.approval_id] = state
        command = RequestApproval(
            seq, state.approval_id, action, encoded, state.digest, state.timeout_at, state
        )
        recorded = self._issue(command)
        if recorded is not None:
            state.requested_at = recorded.at
        if timeout is not None:
            timer = state.timer = self.start_timer(timeout, f"approval:{action}")

            def on_timeout(_: DurableFuture) -> None:
                if self._approvals.pop(state.approval_id, None) is not None:
                    state.closed_as = "timed_out"
                    self._closed.append(state)
                    _fail(
                        future,
                        WaitTimedOut(f"approval {action!r} was not decided within {timeout}s"),
                    )

            timer.callbacks.append(on_timeout)
        return future

    def _hold_step(self, event: ev.ApprovalRequested) -> None:
        """The engine's approval policy holds a scheduled step until a person decides."""
        step = self._steps.get(event.step_seq)
        if event.step_seq == 0 or step is None:
            self._diverge(
                event,
                None,
                detail=f"history holds step #{event.step_seq} for approval, which the code has "
                "not scheduled at this point",
            )
        step.held = event.approval_id
        self._approvals[event.approval_id] = ApprovalState(
            approval_id=event.approval_id,
            seq=0,
            action=event.action,
            details=event.details,
            digest=event.digest,
            timeout_at=event.timeout_at,
            step_seq=event.step_seq,
            requested_at=event.at,
        )

    def _decide(self, event: ev.ApprovalDecided) -> None:
        state = self._approvals.pop(event.approval_id, None)
        if state is None or (event.digest and event.digest != state.digest):
            self._diverge(
                event,
                None,
                detail=f"history has a decision on approval {event.approval_id!r}, which the "
                "code has not requested (with these details) at this point",
            )
        rejected = ApprovalRejected(
            f"{state.action!r} was rejected by {event.user}"
            + (f": {event.comment}" if event.comment else " (no comment)")
        )
        if state.step_seq:
            step = self._steps.get(state.step_seq)
            if step is None:
                return
            step.held = None
            if not event.approved:
                del self._steps[state.step_seq]
                _fail(step.future, rejected)
            return
        assert state.future is not None
        if state.timer is not None:
            self.cancel_timer(state.timer)
        if event.approved:
            _resolve(state.future, Approval(event.user, event.comment, event.at))
        else:
            _fail(state.future, rejected)

    def create_waitpoint(self, name: str, timeout: float | None) -> Waitpoint:
        assert self.info is not None and self.time is not None
        if not isinstance(name, str) or not name:
            raise InvalidArgument(
                f"a waitpoint's name is a non-empty string, not {_validate.shown(name)}"
            )
        if timeout is not None and timeout <= 0:
            raise InvalidArgument(f"a waitpoint's timeout must be positive, not {timeout!r}")
        seq = self._next("waitpoint")
        waitpoint_id = f"{self.info.run_id[:8]}-w{seq}"
        created = self.time
        expires = None if timeout is None else created + timedelta(seconds=timeout)
        command = CreateWaitpoint(seq, waitpoint_id, name, created, expires, "", "")
        recorded = self._issue(command)
        # Replaying, the token is signed again with the key that signed it first: the same text.
        kid = recorded.kid if isinstance(recorded, ev.WaitpointCreated) else None
        token = ""
        if self._sign is not None:
            kid, token = self._sign(
                self.info.tenant, self.info.workflow_id, waitpoint_id, created, expires, kid
            )
        command.kid = kid or ""
        command.fingerprint = token_fingerprint(token) if token else ""
        state = WaitpointState(
            waitpoint_id=waitpoint_id,
            seq=seq,
            name=name,
            created_at=created,
            expires_at=expires,
            kid=command.kid,
            token=token,
            fingerprint=command.fingerprint,
            future=DurableFuture(),
        )
        self._waitpoints[waitpoint_id] = state
        if timeout is not None:
            timer = state.timer = self.start_timer(timeout, f"waitpoint:{name}")

            def on_timeout(_: DurableFuture) -> None:
                if state.pending:
                    state.expired = True
                    self._closed.append(state)
                    _fail(
                        state.future, WaitTimedOut(f"waitpoint {name!r} expired after {timeout}s")
                    )

            timer.callbacks.append(on_timeout)
        return Waitpoint(state)

    def _complete_waitpoint(self, event: ev.WaitpointCompleted) -> None:
        state = self._waitpoints.get(event.waitpoint_id)
        if state is None or not state.pending:
            self._diverge(
                event,
                None,
                detail=f"history completes waitpoint {event.waitpoint_id!r}, which the code has "
                "not created (or which had closed) at this point",
            )
        state.completed = True
        if state.timer is not None:
            self.cancel_timer(state.timer)
        _resolve(state.future, self._decode(event.payload, Any, f"waitpoint {state.name!r}"))

    def patched(self, patch_id: str) -> bool:
        if patch_id in self._patches:
            return self._patches[patch_id]
        self._skip_markers()
        if self.replaying:
            event = self._history[self._pos]
            result = isinstance(event, ev.PatchRecorded) and event.patch_id == patch_id
            if result:
                self._pos += 1
        else:
            self._issue(RecordPatch(patch_id))
            result = True
        self._patches[patch_id] = result
        return result

    def upsert_search_attributes(self, attributes: dict[str, ev.SearchValue]) -> None:
        self._issue(UpsertSearchAttributes(dict(attributes)))

    def continue_as_new(self, args: tuple[Any, ...]) -> typing.NoReturn:
        try:
            encoded = self.definition.encode_input(args, limit=self.max_payload_bytes)
        except PayloadError:
            recorded = self._recorded_next()
            if not (
                isinstance(recorded, ev.WorkflowContinuedAsNew) and _unchecked(recorded.input, args)
            ):
                raise
            encoded = recorded.input  # the successor started with it: the call stands
        raise _ContinueAsNewRequest(encoded)

    def gather(self, awaitables: Sequence[Any]) -> DurableFuture:
        futures: list[DurableFuture] = []
        for i, aw in enumerate(awaitables):
            if isinstance(aw, DurableFuture):
                futures.append(aw)
            elif isinstance(aw, types.CoroutineType):
                task = _Task(aw, f"gather[{i}]", self._ready)
                self._tasks.append(task)
                self._ready.append((task, None))
                futures.append(task.future)
            else:
                raise InvalidArgument(
                    f"ctx.gather() takes aion operations or coroutines, not {_validate.shown(aw)}"
                )
        combined = DurableFuture()
        if not futures:
            _resolve(combined, [])
            return combined
        remaining = [len(futures)]

        def on_done(f: DurableFuture) -> None:
            if combined.done:
                return
            if f.error is not None:
                _fail(combined, f.error)
                return
            remaining[0] -= 1
            if remaining[0] == 0:
                _resolve(combined, [x.value for x in futures])

        for f in futures:
            if f.done:
                on_done(f)
            else:
                f.callbacks.append(on_done)
        return combined

    def _cancel(self, reason: str | None) -> None:
        self.cancel_requested = True
        for task in list(self._tasks):
            waiting = task.waiting_on
            if waiting is None:
                continue
            waiting.waiters.remove(task)
            task.waiting_on = None
            if isinstance(waiting, _TimerFuture):
                self.cancel_timer(waiting)
            elif isinstance(waiting, _SignalWait):
                self._signal_waiters[waiting.name].remove(waiting)
                if waiting.timer is not None:
                    self.cancel_timer(waiting.timer)
            self._ready.append((task, Cancelled(reason or "workflow cancelled")))
        self._withdraw_approvals()

    def _withdraw_approvals(self) -> None:
        """Cancellation interrupts every wait for a decision (directly or inside a gather):
        pending approvals close, and a step held for approval never runs."""
        for state in list(self._approvals.values()):
            del self._approvals[state.approval_id]
            state.closed_as = "closed"
            self._closed.append(state)
            if state.timer is not None:
                self.cancel_timer(state.timer)
            if state.step_seq:
                self._steps.pop(state.step_seq, None)


def _resolve(future: DurableFuture, value: Any) -> None:
    future.done = True
    future.value = value
    _wake(future)


def _fail(future: DurableFuture, error: BaseException) -> None:
    future.done = True
    future.error = error
    _wake(future)


def _wake(future: DurableFuture) -> None:
    for task in future.waiters:
        task.waiting_on = None
        task.ready.append((task, None))
    future.waiters.clear()
    callbacks, future.callbacks = future.callbacks, []
    for callback in callbacks:
        callback(future)


def _done(value: Any) -> DurableFuture:
    future = DurableFuture()
    future.done = True
    future.value = value
    return future


async def _raise(exc: BaseException) -> Any:
    raise exc


def _unchecked(recorded: bytes, args: tuple[Any, ...]) -> bool:
    """Whether ``recorded`` is ``args`` encoded as-is, the way versions that did not check
    arguments against the annotations recorded a child's or a successor's input. Such a
    call stands on replay; one whose PayloadError the code caught (and recorded something
    else after) does not."""
    try:
        return encode(list(args)) == recorded
    except (TypeError, ValueError, OverflowError):
        return False


_RETURN_TYPES: dict[Any, Any] = {}


def _return_type(fn: Callable[..., Any]) -> Any:
    """The return annotation of ``fn`` (cached: ``get_type_hints`` costs ~15 us a call)."""
    try:
        return _RETURN_TYPES[fn]
    except (KeyError, TypeError):
        pass
    try:
        tp = typing.get_type_hints(fn).get("return", Any)
    except Exception:
        tp = Any
    try:
        if len(_RETURN_TYPES) < 4096:
            _RETURN_TYPES[fn] = tp
    except TypeError:  # unhashable callable
        pass
    return tp


def _awaited_name(coro: Coroutine[Any, Any, Any], yielded: object) -> str:
    """Name the first awaited call outside the workflow's own source file."""
    home = getattr(getattr(coro, "cr_code", None), "co_filename", None)
    inner: Any = getattr(coro, "cr_await", None)
    while inner is not None:
        code = getattr(inner, "cr_code", None) or getattr(inner, "gi_code", None)
        if code is None:
            break
        if code.co_filename != home:
            frame = getattr(inner, "cr_frame", None) or getattr(inner, "gi_frame", None)
            module = frame.f_globals.get("__name__", "?") if frame is not None else "?"
            return f"{module}.{code.co_qualname}()"
        inner = getattr(inner, "cr_await", None) or getattr(inner, "gi_yieldfrom", None)
    return f"{type(yielded).__module__}.{type(yielded).__qualname__} ({yielded!r:.60})"


def _raised(name: str, info: WorkflowInfo | None, exc: BaseException) -> ActivationFailed:
    """Why a run whose code raised ``exc`` (a BaseException, not an Exception) is parked."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = "location unknown"
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f"{code.co_filename}:{tb.tb_lineno} in {code.co_qualname}"
    what = type(exc).__qualname__
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    if isinstance(exc, asyncio.CancelledError):
        hint = (
            "; workflow code does not run on asyncio: cancel a run with engine.cancel(), and "
            "inside the run cancellation arrives as aion.Cancelled"
        )
    elif isinstance(exc, KeyboardInterrupt | SystemExit):
        hint = "; a run cannot stop the process"
    else:
        hint = ""
    workflow_id = info.workflow_id if info is not None else "ID"
    return ActivationFailed(
        f"workflow {name} raised {what}{': ' + text[:200] if text else ''} at {where}. A run "
        f"fails with the Exceptions its code raises; {what} is not an Exception, and no outcome "
        f"of a run{hint}. Fix the code (raise an Exception to fail the run), then "
        f"`aion unblock {workflow_id}` (or restart the engine)."
    )


def _code_location(coro: Coroutine[Any, Any, Any]) -> str:
    frame = getattr(coro, "cr_frame", None)
    if frame is None:
        return "location unknown"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}"
