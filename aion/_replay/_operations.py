"""The durable operations workflow code calls through :class:`~aion.Context` (steps, timers,
signals, children, approvals, waitpoints, patches, gather, continue-as-new), and the pending
state the driver keeps for them: what the run waits on, and how recorded facts resolve it.

:class:`Operations` sits between replay matching (:class:`~._matching.Matcher`, below) and
the driver proper (:class:`~._driver.Driver`, above), which feeds events and runs the code.
"""

from __future__ import annotations

import hashlib
import random
import types
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

from aion import _validate
from aion import events as ev
from aion._codec import DEFAULT_MAX_PAYLOAD_BYTES, What, decode_payload, encode_payload
from aion._tokens import fingerprint as token_fingerprint
from aion.errors import ApprovalRejected, Cancelled, InvalidArgument, PayloadError, WaitTimedOut

from ._commands import (
    CancelTimer,
    CreateWaitpoint,
    RecordPatch,
    RequestApproval,
    ScheduleStep,
    StartChild,
    StartTimer,
    UpsertSearchAttributes,
)
from ._definition import (
    DEFAULT_RETRY,
    RetryPolicy,
    WorkflowDefinition,
    convert,
    definition_of,
    return_type,
)
from ._matching import Matcher, unchecked
from ._state import (
    DurableFuture,
    PendingChild,
    PendingStep,
    SignalWait,
    Task,
    TimerFuture,
    done,
    fail,
    resolve,
)
from ._waits import Approval, ApprovalState, Waitpoint, WaitpointState, approval_digest

__all__ = ["ContinueAsNewRequest", "Operations", "Signer"]

#: Signs a waitpoint token: (tenant, workflow id, waitpoint id, created at, expires at, key id
#: or None for the current key) -> (key id, token). An empty token if the key is gone.
Signer = Callable[[str, str, str, datetime, datetime | None, str | None], tuple[str, str]]


class ContinueAsNewRequest(BaseException):
    """Unwinds workflow code that called ``ctx.continue_as_new``; carries the encoded input."""

    def __init__(self, input: bytes) -> None:
        super().__init__("continue-as-new")
        self.input = input


class Operations(Matcher):
    """The operations of one run and what it waits on. Not thread-safe; one owner.

    Args:
        definition: the workflow to run.
        max_payload_bytes: limit for encoded arguments, results and payloads.
        resolve: turns a workflow type name into a definition (for typed child results).
        sign: signs waitpoint tokens (without it, ``ctx.waitpoint`` hands out empty tokens).
    """

    __slots__ = (
        "_approvals",
        "_children",
        "_closed",
        "_compensations",
        "_continued",
        "_counters",
        "_patches",
        "_ready",
        "_resolve",
        "_rng",
        "_sign",
        "_signal_ordinal",
        "_signal_waiters",
        "_signals",
        "_steps",
        "_tasks",
        "_timers",
        "_waitpoints",
        "cancel_requested",
        "max_payload_bytes",
        "time",
    )

    def __init__(
        self,
        definition: WorkflowDefinition,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        resolve: Callable[[str], WorkflowDefinition | None] | None = None,
        sign: Signer | None = None,
    ) -> None:
        super().__init__(definition)
        self.max_payload_bytes = max_payload_bytes
        self._resolve = resolve
        self._sign = sign
        self.time: datetime | None = None  # the recorded time of the event fed last
        self.cancel_requested = False
        self._ready: deque[tuple[Task, BaseException | None]] = deque()
        self._tasks: list[Task] = []
        self._counters = {"step": 0, "timer": 0, "child": 0, "approval": 0, "waitpoint": 0}
        self._steps: dict[int, PendingStep] = {}
        self._timers: dict[int, TimerFuture] = {}
        self._children: dict[int, PendingChild] = {}
        # Signals received and not yet consumed, by name: (arrival ordinal, payload).
        self._signals: dict[str, deque[tuple[int, bytes]]] = {}
        self._signal_ordinal = 0
        self._signal_waiters: dict[str, deque[SignalWait]] = {}
        self._patches: dict[str, bool] = {}
        self._approvals: dict[str, ApprovalState] = {}  # pending, by approval id
        self._waitpoints: dict[str, WaitpointState] = {}  # every waitpoint of the run
        # Approvals and waitpoints that closed without an event of their own (timed out,
        # expired, withdrawn by cancellation): the engine updates their rows.
        self._closed: list[ApprovalState | WaitpointState] = []
        self._rng: random.Random | None = None
        self._continued = False  # the run continues an earlier one (continue-as-new)
        self._compensations: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    # --- facts recorded for what the run waits on ------------------------------------------

    def _take_step(self, event: ev.Event, seq: int) -> PendingStep:
        step = self._steps.pop(seq, None)
        if step is None:
            self._diverge(
                event,
                None,
                recorded=f"a result for step #{seq}",
                now=f"has not scheduled step #{seq}",
                detail=f"history has a result for step #{seq}, which "
                "the code has not scheduled at this point",
            )
        return step

    def _take_child(self, event: ev.Event, seq: int) -> PendingChild:
        child = self._children.pop(seq, None)
        if child is None:
            self._diverge(
                event,
                None,
                recorded=f"a result for child #{seq}",
                now=f"has not started child #{seq}",
                detail=f"history has a result for child #{seq}, which "
                "the code has not started at this point",
            )
        return child

    def _decode(self, data: bytes, tp: Any, what: What) -> Any:
        return convert(decode_payload(data, what=what), tp, what=what)

    # --- operations -------------------------------------------------------------------------

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
            [args, kwargs],  # (the tuple encodes as the list it decodes to)
            limit=self.max_payload_bytes,
            what=lambda: f"arguments of step {step_name!r}",
        )
        seq = self._next("step")
        future = DurableFuture()
        command = ScheduleStep(
            seq, step_name, fn, args, kwargs, encoded, retry or DEFAULT_RETRY, timeout
        )
        self._steps[seq] = PendingStep(future, command, return_type(fn))
        self._issue(command)
        return future

    def start_timer(self, delay: float, name: str = "") -> TimerFuture:
        assert self.time is not None
        seq = self._next("timer")
        due = self.time + timedelta(seconds=delay)
        future = TimerFuture(seq, due)
        self._timers[seq] = future
        self._issue(StartTimer(seq, due, name))
        return future

    def cancel_timer(self, timer: TimerFuture) -> None:
        if self._timers.pop(timer.seq, None) is not None:
            self._issue(CancelTimer(timer.seq, timer.due))
            # Its callbacks never run now; they close over the driver and what waited on the
            # timer, which may point back at the timer: a cycle the collector would have to find.
            timer.callbacks.clear()

    def wait_signal(self, name: str, timeout: float | None) -> DurableFuture:
        buffered = self._signals.get(name)
        if buffered:
            return done(self._decode(buffered.popleft()[1], Any, f"signal {name!r}"))
        if timeout is not None and timeout <= 0:
            future = DurableFuture()
            fail(future, WaitTimedOut(f"no signal {name!r} had arrived (timeout {timeout}s)"))
            return future
        wait = SignalWait(name)
        self._signal_waiters.setdefault(name, deque()).append(wait)
        if timeout is not None:
            timer = self.start_timer(timeout, f"signal:{name}")
            wait.timer = timer

            def on_timeout(_: DurableFuture) -> None:
                if not wait.done:
                    self._signal_waiters[name].remove(wait)
                    fail(wait, WaitTimedOut(f"no signal {name!r} within {timeout}s"))

            timer.callbacks.append(on_timeout)
        return wait

    def _deliver_signal(self, name: str, payload: bytes) -> None:
        waiters = self._signal_waiters.get(name)
        if waiters:
            wait = waiters.popleft()
            if wait.timer is not None:
                self.cancel_timer(wait.timer)
            resolve(wait, self._decode(payload, Any, f"signal {name!r}"))
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
                    and unchecked(recorded.input, args)
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
        result_type = return_type(definition.fn) if definition is not None else Any
        self._children[seq] = PendingChild(future, child_id, result_type)
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
                    fail(
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
                recorded=f"step #{event.step_seq} held for approval",
                now=f"has not scheduled step #{event.step_seq}",
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
                recorded=f"a decision on approval {event.approval_id!r}",
                now="has not requested it (with these details)",
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
                fail(step.future, rejected)
            return
        assert state.future is not None
        if state.timer is not None:
            self.cancel_timer(state.timer)
        if event.approved:
            resolve(state.future, Approval(event.user, event.comment, event.at))
        else:
            fail(state.future, rejected)

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
                    fail(state.future, WaitTimedOut(f"waitpoint {name!r} expired after {timeout}s"))

            timer.callbacks.append(on_timeout)
        return Waitpoint(state)

    def _complete_waitpoint(self, event: ev.WaitpointCompleted) -> None:
        state = self._waitpoints.get(event.waitpoint_id)
        if state is None or not state.pending:
            self._diverge(
                event,
                None,
                recorded=f"a completion of waitpoint {event.waitpoint_id!r}",
                now="has not created it (or it had closed)",
                detail=f"history completes waitpoint {event.waitpoint_id!r}, which the code has "
                "not created (or which had closed) at this point",
            )
        state.completed = True
        if state.timer is not None:
            self.cancel_timer(state.timer)
        resolve(state.future, self._decode(event.payload, Any, f"waitpoint {state.name!r}"))

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

    def continue_as_new(self, args: tuple[Any, ...]) -> NoReturn:
        try:
            encoded = self.definition.encode_input(args, limit=self.max_payload_bytes)
        except PayloadError:
            recorded = self._recorded_next()
            if not (
                isinstance(recorded, ev.WorkflowContinuedAsNew) and unchecked(recorded.input, args)
            ):
                raise
            encoded = recorded.input  # the successor started with it: the call stands
        raise ContinueAsNewRequest(encoded)

    def gather(self, awaitables: Sequence[Any]) -> DurableFuture:
        futures: list[DurableFuture] = []
        for i, aw in enumerate(awaitables):
            if isinstance(aw, DurableFuture):
                futures.append(aw)
            elif isinstance(aw, types.CoroutineType):
                task = Task(aw, f"gather[{i}]", self._ready)
                self._tasks.append(task)
                self._ready.append((task, None))
                futures.append(task.future)
            else:
                raise InvalidArgument(
                    f"ctx.gather() takes aion operations or coroutines, not {_validate.shown(aw)}"
                )
        combined = DurableFuture()
        if not futures:
            resolve(combined, [])
            return combined
        remaining = [len(futures)]

        def on_done(f: DurableFuture) -> None:
            if combined.done:
                return
            if f.error is not None:
                fail(combined, f.error)
                return
            remaining[0] -= 1
            if remaining[0] == 0:
                resolve(combined, [x.value for x in futures])

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
            if isinstance(waiting, TimerFuture):
                self.cancel_timer(waiting)
            elif isinstance(waiting, SignalWait):
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
