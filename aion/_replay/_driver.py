"""The deterministic workflow driver: pure, no I/O, no event loop.

The driver steps workflow coroutines itself (``coro.send``) from a FIFO ready queue. Workflow
code awaits only driver futures; every durable operation it calls becomes a :class:`Command`
numbered per kind. Events go in (:meth:`Driver.replay` for recorded history, :meth:`Driver.apply`
for new facts); commands come out (:meth:`Driver.take_commands`).

During replay a command is matched against the next recorded event at the moment the code
issues it; a mismatch raises :class:`~aion.errors.NondeterminismError` naming the workflow, the
position, what history recorded and what the code did now. Time only moves with events:
``ctx.now()`` is the recorded time of the event that woke the code, live and on replay alike.

This module holds the driver proper: what the engine calls (feeding events, what the run waits
on) and running the code. Below it: the operations workflow code calls (:mod:`._operations`),
replay matching (:mod:`._matching`) and the futures and records of what the code awaits
(:mod:`._state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from aion import _validate
from aion import events as ev
from aion._codec import DEFAULT_MAX_PAYLOAD_BYTES, encode_payload
from aion.errors import (
    ActivationFailed,
    Cancelled,
    InvalidArgument,
    NondeterminismError,
    PayloadError,
    StepError,
    WorkflowCancelled,
    WorkflowFailed,
)

from ._commands import (
    COMMAND_EVENT_TYPES,
    CancelWorkflow,
    Command,
    CompleteWorkflow,
    ContinueAsNew,
    FailWorkflow,
    is_command_event,
)
from ._context import Context
from ._definition import WorkflowDefinition
from ._matching import Diverged
from ._operations import ContinueAsNewRequest, Operations, Signer
from ._state import DurableFuture, PendingStep, Task, WorkflowInfo, fail, resolve
from ._waits import ApprovalState, WaitpointState
from ._watch import LIVE_OVERRUNS, ActivationWatch

__all__ = ["Driver", "DurableFuture", "PendingStep", "Signer", "WorkflowInfo"]


class Driver(Operations):
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

    __slots__ = (
        "_in_replay",
        "_main",
        "_stepping",
        "_watch",
        "overruns",
    )

    def __init__(
        self,
        definition: WorkflowDefinition,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        resolve: Callable[[str], WorkflowDefinition | None] | None = None,
        sign: Signer | None = None,
        watch: ActivationWatch | None = None,
    ) -> None:
        super().__init__(
            definition, max_payload_bytes=max_payload_bytes, resolve=resolve, sign=sign
        )
        self._watch = watch
        self.overruns = 0  # live activations that held the event loop past the watch's limit
        self._in_replay = False  # inside replay(): an overrun there parks the run at once
        self._stepping: Task | None = None  # the task stepped last (where an overrun was)
        self._main: Task | None = None

    # --- feeding events ---------------------------------------------------------------------

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
        # The hot loop of every reactivation: locals, and the code runs only when an event woke
        # some of it (a StepStarted wakes nothing); without a watch, an activation is no more
        # than running what is ready. (``while True``: CPython 3.11 specializes a loop's code
        # while it runs only at an unconditional jump back, else from the 8th call on.)
        ready = self._ready
        resolve_event = self._resolve_event
        run = self._run if self._watch is not None else self._run_ready
        end = len(events)
        try:
            while True:
                pos = self._pos  # (commands the code issues advance it too)
                if pos >= end:
                    break
                event = events[pos]
                self._pos = pos + 1
                if type(event) in COMMAND_EVENT_TYPES and is_command_event(event):
                    self._diverge(event, None)  # (the set test first: no call for a fact)
                resolve_event(event)
                if ready:
                    run()
        except Diverged:  # found by the driver, not in the code: a recorded fact it cannot take
            raise self._diverged() from None
        finally:
            self._history = ()
            self._pos = 0
            self._in_replay = False

    def apply(self, event: ev.Event) -> list[Command]:
        """Feed one new fact (live) and return the commands the code issued in response.

        Raises:
            NondeterminismError: the fact contradicts what the code did (say, the result of a
                step it has not scheduled).
        """
        if is_command_event(event):
            raise InvalidArgument(f"{type(event).__name__} is recorded by the driver, not fed")
        try:
            self._resolve_event(event)
        except Diverged:
            raise self._diverged() from None
        self._run()
        return self.take_commands()

    def _diverged(self) -> NondeterminismError:
        """Why the run diverged, once ``_diverge`` has unwound past the code (it raised
        ``Diverged``, which must not leave the driver)."""
        assert self._fatal is not None
        return self._fatal

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
        """Feed one recorded fact: resolve what it resolves (see ``_ON_EVENT``), which queues
        the code that awaited it."""
        self.position = event.seq
        if self.info is None and type(event) is not ev.WorkflowStarted:
            kind = type(event).__name__
            raise NondeterminismError(
                "",
                event.seq,
                kind,
                "has not started the run",
                workflow_type=self.definition.name,
                detail=f"the history does not begin with WorkflowStarted (event {event.seq} is "
                f"{kind})",
                remedy="Replay a run's history from its WorkflowStarted event.",
            )
        self.time = event.at
        on_event = _ON_EVENT.get(type(event))
        if on_event is not None:  # (markers, blocked/unblocked, retries scheduled: nothing wakes)
            on_event(self, event)

    def _step_started(self, event: ev.StepStarted) -> None:
        step = self._steps.get(event.step_seq)
        if step is not None:
            step.attempts = max(step.attempts, event.attempt)
            step.retry_due = None

    def _step_retry_scheduled(self, event: ev.StepRetryScheduled) -> None:
        step = self._steps.get(event.step_seq)
        if step is not None:
            step.retry_due = event.due

    def _step_completed(self, event: ev.StepCompleted) -> None:
        step = self._take_step(event, event.step_seq)
        resolve(step.future, self._decode(event.result, step.result_type, step.what_result))

    def _step_failed(self, event: ev.StepFailed) -> None:
        if not event.will_retry:
            step = self._take_step(event, event.step_seq)
            fail(step.future, StepError(step.name, event.error_type, event.message, event.attempt))

    def _timer_fired(self, event: ev.TimerFired) -> None:
        timer = self._timers.pop(event.timer_seq, None)
        if timer is not None:
            resolve(timer, None)

    def _signal_received(self, event: ev.SignalReceived) -> None:
        self._deliver_signal(event.name, event.payload)

    def _child_completed(self, event: ev.ChildCompleted) -> None:
        child = self._take_child(event, event.child_seq)
        resolve(child.future, self._decode(event.result, child.result_type, "child result"))

    def _child_failed(self, event: ev.ChildFailed) -> None:
        child = self._take_child(event, event.child_seq)
        error: BaseException
        if event.error_type == "WorkflowCancelled":
            error = WorkflowCancelled(f"child workflow {child.workflow_id!r} was cancelled")
        else:
            error = WorkflowFailed(child.workflow_id, event.error_type, event.message)
        fail(child.future, error)

    def _cancel_requested(self, event: ev.WorkflowCancelRequested) -> None:
        self._cancel(event.reason)

    def _start(self, event: ev.WorkflowStarted) -> None:
        if self.info is not None:
            raise NondeterminismError(
                event.workflow_id,
                event.seq,
                "a second WorkflowStarted",
                "runs the run started before",
                workflow_type=event.workflow_type,
                detail="history has a second WorkflowStarted inside one run segment",
                remedy="Replay one run segment at a time: from a WorkflowStarted to the next.",
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
            self._main = Task(_raise(exc), "main", self._ready)
        else:
            self._main = Task(coro, "main", self._ready)
        self._tasks.append(self._main)
        self._ready.append((self._main, None))

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

    def _step(self, task: Task, error: BaseException | None) -> None:
        task.waiting_on = None
        try:
            try:
                yielded = task.coro.throw(error) if error is not None else task.coro.send(None)
            except StopIteration as stop:
                self._finish(task, stop.value, None)
                return
            except (Exception, Cancelled, ContinueAsNewRequest) as exc:
                self._finish(task, None, exc)
                return
            except Diverged:
                raise
            except BaseException as exc:
                # KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit ... raised
                # by workflow code: not an outcome to record, and never the engine's to
                # propagate. The run is parked BLOCKED (the other runs go on).
                self._fatal = self._activation_failed(*_raised(exc))
                return
        except Diverged:
            return  # self._fatal says why; _run raises it
        if isinstance(yielded, DurableFuture):
            if yielded.done:
                self._ready.append((task, None))
            else:
                yielded.waiters.append(task)
                task.waiting_on = yielded
        else:
            self._illegal_await(task, yielded)

    def _finish(self, task: Task, value: Any, error: BaseException | None) -> None:
        self._tasks.remove(task)
        if task is not self._main:
            if error is None:
                resolve(task.future, value)
            else:
                fail(task.future, error)
            return
        outcome = self._outcome_command(value, error)
        self._issue(outcome)
        self.outcome = outcome
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

    def discard(self) -> None:
        """The run leaves memory (evicted, or its actor dropped): take its reference cycles
        apart so that reference counting frees it now.

        Otherwise a waiting run is cyclic garbage (task -> coroutine frame -> context -> driver
        -> task, futures <-> their waiters), freed only by a full collection, which in a process
        with many long-lived objects runs rarely: evicted runs' memory would pile up until then.
        Closing the coroutines runs the workflow's ``finally`` blocks as the collector would
        have; an operation they await stops them there (nothing is recorded: the driver is
        gone). The driver must not be used afterwards.
        """
        if self.outcome is not None and not self._tasks:
            return  # the run ended: _finish took its cycles apart already
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            _close(task.coro)
            if task.waiting_on is not None:
                task.waiting_on.waiters.clear()
                task.waiting_on = None
        self._main = self._stepping = None
        self._ready.clear()  # what was ready, and what the cleanup code woke
        # Futures keep closures over the driver (timeouts, gather) and the tasks waiting.
        futures: list[DurableFuture | None] = [s.future for s in self._steps.values()]
        futures += self._timers.values()
        futures += (child.future for child in self._children.values())
        for waits in self._signal_waiters.values():
            futures += waits
        futures += (approval.future for approval in self._approvals.values())
        futures += (waitpoint.future for waitpoint in self._waitpoints.values())
        for future in futures:
            if future is not None:
                future.callbacks.clear()
                future.waiters.clear()
        self._steps.clear()
        self._timers.clear()
        self._children.clear()
        self._signal_waiters.clear()
        self._approvals.clear()
        self._waitpoints.clear()
        self._closed.clear()
        self._compensations.clear()
        self._new = []
        self._fatal = None

    def _outcome_command(self, value: Any, error: BaseException | None) -> Command:
        assert self.info is not None
        if isinstance(error, ContinueAsNewRequest):
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
        self._fatal = self._activation_failed(
            f"held the event loop for {held:.2f} s {where} {when}",
            f"The limit is {limit:g} s (Engine(activation_limit=...)) and every other run waited "
            "meanwhile. Workflow code must not block: move blocking calls and long computations "
            "into a step (ctx.step)",
        )
        raise self._fatal

    def _illegal_await(self, task: Task, yielded: object) -> None:
        name = _awaited_name(task.coro, yielded)
        where = _code_location(task.coro)
        self._fatal = self._activation_failed(
            f"awaited {name}, which is not an aion operation ({where})",
            "Workflow code may only await ctx operations (ctx.step, ctx.sleep, "
            "ctx.wait_signal, ctx.child, ctx.gather ...); move I/O and real waiting into a "
            "step",
        )
        task.coro.close()

    def _activation_failed(self, now: str, remedy: str) -> ActivationFailed:
        """Why the run is parked: its code did ``now`` in the activation after the event fed
        last; ``remedy`` says what to fix before unblocking it."""
        workflow_id, workflow_type = self._identity()
        return ActivationFailed(
            workflow_id, self.position, now, remedy, workflow_type=workflow_type
        )


#: What a recorded fact does, by its exact type (event types are never subclassed): one lookup
#: per replayed event, where a ``match`` would test the types in turn. Facts not listed wake
#: nothing.
_ON_EVENT: dict[type[ev.Event], Callable[[Driver, Any], None]] = {
    ev.WorkflowStarted: Driver._start,
    ev.StepStarted: Driver._step_started,
    ev.StepRetryScheduled: Driver._step_retry_scheduled,
    ev.StepCompleted: Driver._step_completed,
    ev.StepFailed: Driver._step_failed,
    ev.TimerFired: Driver._timer_fired,
    ev.SignalReceived: Driver._signal_received,
    ev.ChildCompleted: Driver._child_completed,
    ev.ChildFailed: Driver._child_failed,
    ev.ApprovalRequested: Driver._hold_step,
    ev.ApprovalDecided: Driver._decide,
    ev.WaitpointCompleted: Driver._complete_waitpoint,
    ev.WorkflowCancelRequested: Driver._cancel_requested,
}


async def _raise(exc: BaseException) -> Any:
    raise exc


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


def _raised(exc: BaseException) -> tuple[str, str]:
    """Why a run whose code raised ``exc`` (a BaseException, not an Exception) is parked, and
    what to do: (what the code did, the remedy)."""
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
    return (
        f"raised {what}{': ' + text[:200] if text else ''} at {where}",
        f"A run fails with the Exceptions its code raises; {what} is not an Exception, and no "
        f"outcome of a run{hint}. Fix the code (raise an Exception to fail the run)",
    )


def _code_location(coro: Coroutine[Any, Any, Any]) -> str:
    frame = getattr(coro, "cr_frame", None)
    if frame is None:
        return "location unknown"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}"


#: How many times :func:`_close` throws ``GeneratorExit`` into a coroutine whose cleanup awaits.
_CLOSE_ATTEMPTS = 8


def _close(coro: Coroutine[Any, Any, Any]) -> None:
    """Close ``coro`` whatever its cleanup does: an operation awaited in a ``finally`` block
    makes ``close()`` fail with "coroutine ignored GeneratorExit" and leaves it suspended there;
    closing again ends that block. (A coroutine that keeps catching it is left to the collector.)
    """
    for _ in range(_CLOSE_ATTEMPTS):
        try:
            coro.close()
        except RuntimeError:
            continue  # it awaited in its cleanup: throw again where it waits now
        except BaseException:  # its cleanup raised: it is closed
            return
        return
