"""The recorder: what one processing round of a run records and then does. No I/O.

Given a run's state (its record, head and replay driver) and a message, the recorder decides
the facts to record (events with their sequence numbers and the round's time), feeds them to
the driver, turns the commands the workflow code issues into more events and store rows
(timers, approvals, waitpoints, the projection row), and lists the side effects to carry out
once all of it is durable, as data (:data:`Effect`): dispatch a step, hold or release a timer,
the run closed, check or cancel a child, mail to a run. The actor commits the :class:`Round`
and then carries out its effects; the recorder reads no store and touches no task.

(One cohesive thing over ~600 lines: every rule that maps a message or command to what is
recorded lives here, so the rules are read, and unit-tested, in one place.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, assert_never

import msgspec

from aion import _control, _validate
from aion import events as ev
from aion._clock import from_timestamp
from aion._codec import encode_payload
from aion._ids import new_id
from aion._replay import ApprovalState, Driver, WaitpointState, WorkflowDefinition, approval_digest
from aion._replay import _commands as c
from aion.errors import (
    AionError,
    NondeterminismError,
    NoPendingApproval,
    PayloadError,
    WaitpointClosed,
    WorkflowClosed,
)
from aion.store import (
    Append,
    ApprovalRow,
    ApprovalStatus,
    Status,
    TimerRow,
    WaitpointRow,
    WaitpointStatus,
    WorkflowRecord,
    begin_run,
)

from ._config import RuntimeConfig
from ._messages import (
    Cancel,
    ChildDone,
    Complete,
    Decide,
    Message,
    Outcome,
    Signal,
    StepDone,
    TimerDue,
    Wake,
)
from ._round import (
    Blocked,
    CancelChild,
    CheckChild,
    ChildStart,
    DispatchStep,
    HoldTimer,
    Mail,
    ReleaseTimer,
    Round,
    RunClosed,
    RunStart,
)
from ._state import Actor
from ._steps import format_failure
from ._types import PENDING_KINDS

__all__ = ["Recorder"]

log = logging.getLogger("aion.engine")


_CLOSED_AS: dict[type[c.Command], Status] = {
    c.CompleteWorkflow: Status.COMPLETED,
    c.FailWorkflow: Status.FAILED,
    c.CancelWorkflow: Status.CANCELLED,
}


class Recorder:
    """The rules that turn messages and commands into recorded facts and effects."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        now: Callable[[], datetime],
        definition: Callable[[str], WorkflowDefinition | None],
        new_driver: Callable[[WorkflowDefinition], Driver],
        new_run_id: Callable[[], str] = new_id,
    ) -> None:
        self.config = config
        self.now = now
        self.definition = definition
        self.new_driver = new_driver
        self.new_run_id = new_run_id

    # --- runs begin ------------------------------------------------------------------------------

    def begin(self, start: RunStart) -> tuple[Actor, Round, str | None]:
        """A new run's actor and first round: its ``WorkflowStarted`` and what the code does
        first. The third item is why it is parked BLOCKED at once (the code cannot take its
        first step with this engine), recorded in the round; None when it runs."""
        actor, rnd, started = self._started(start)
        definition = self.definition(start.workflow_type)
        try:
            if definition is None:
                raise Blocked(
                    f"workflow type {start.workflow_type!r} is not registered with this engine: "
                    "register it with Engine(..., workflows=[...]) and restart the engine"
                )
            self._open(actor, rnd, definition, started)
        except Blocked as block:
            self.blocked(actor, rnd, block.reason)
            return actor, rnd, block.reason
        return actor, rnd, None  # what it waits on is written with its commit

    def _open(
        self, actor: Actor, rnd: Round, definition: WorkflowDefinition, started: ev.WorkflowStarted
    ) -> None:
        """A new driver takes the run from its ``WorkflowStarted`` (a start, a child, a
        successor); what the code issues first is recorded."""
        actor.driver = self.new_driver(definition)
        actor.since = started.seq
        try:
            commands = actor.driver.apply(started)
        except NondeterminismError as exc:
            raise Blocked(_validate.error_text(exc)) from exc
        self.record_commands(actor, rnd, commands)

    def failed_start(self, start: RunStart, error: AionError) -> tuple[Actor, Round]:
        """A run whose input does not fit its workflow (a start left in the inbox by another
        process): recorded, and failed at once with ``error``."""
        actor, rnd, started = self._started(start)
        assert actor.record is not None
        message = _validate.error_text(error)
        failed = self._record(
            actor,
            rnd,
            partial(_make, ev.WorkflowFailed, error_type=type(error).__name__, message=message),
        )
        assert isinstance(failed, ev.WorkflowFailed)
        actor.record = _replace(actor.record, status=Status.FAILED, closed_at=started.at)
        rnd.tally.append(("closed", (start.workflow_type, "failed")))
        outcome = Outcome(Status.FAILED, error_type=failed.error_type, message=message)
        rnd.effects.append(RunClosed(actor.record, outcome))
        return actor, rnd

    def _started(self, start: RunStart) -> tuple[Actor, Round, ev.WorkflowStarted]:
        """A new run's actor and a round holding its ``WorkflowStarted`` (and record)."""
        actor = Actor((start.tenant, start.workflow_id))
        rnd = Round()
        started, actor.record = begin_run(
            tenant=start.tenant,
            workflow_id=start.workflow_id,
            run_id=start.run_id,
            workflow_type=start.workflow_type,
            input=start.input,
            at=self.now(),
            parent_workflow_id=start.parent_workflow_id,
            parent_run_id=start.parent_run_id,
            code_version=self.config.code_version,
            identity=start.identity,
            trace=start.trace,
        )
        actor.trace = start.trace
        actor.head = 1
        rnd.at = started.at
        rnd.events.append(started)
        rnd.tally.append(("started", (start.workflow_type,)))
        return actor, rnd, started

    # --- one round -------------------------------------------------------------------------------

    def handle(self, actor: Actor, rnd: Round, message: Message) -> None:
        """Record what ``message`` means for the run (raises :class:`Blocked`)."""
        driver = actor.driver
        assert driver is not None
        match message:
            case Wake():
                pass
            case Signal(name=name, payload=payload, identity=identity):
                signal = partial(
                    _make, ev.SignalReceived, name=name, payload=payload, identity=identity
                )
                self._feed(actor, rnd, signal)
            case Cancel(reason=reason, identity=identity):
                if driver.cancel_requested:
                    return
                cancel = partial(
                    _make, ev.WorkflowCancelRequested, reason=reason, identity=identity
                )
                self._feed(actor, rnd, cancel)
                for _, child_id in driver.pending_children():
                    rnd.effects.append(CancelChild(child_id))
            case TimerDue(row=row):
                self._on_timer(actor, rnd, row)
            case Decide():
                self._on_decision(actor, rnd, message)
            case Complete():
                self._on_completion(actor, rnd, message)
            case StepDone():
                self._on_step_result(actor, rnd, message)
            case ChildDone():
                self._on_child(actor, rnd, message)
            case _:
                assert_never(message)

    def closed_error(self, actor: Actor, message: Message) -> AionError:
        """What mail that reaches a run after it ended gets (e.g. the loser of a decision
        race)."""
        workflow_id = actor.key[1]
        if isinstance(message, Decide):
            return NoPendingApproval(
                f"workflow {workflow_id!r} has finished: its approvals are closed (decided "
                "already, or ended with the run); nothing was recorded"
            )
        if isinstance(message, Complete):
            return WaitpointClosed(
                f"workflow {workflow_id!r} has finished: its waitpoints are closed; nothing was "
                "recorded"
            )
        return WorkflowClosed(workflow_id)

    def _on_child(self, actor: Actor, rnd: Round, message: ChildDone) -> None:
        driver = actor.driver
        assert driver is not None
        pending = dict(driver.pending_children())
        seq = message.seq
        if seq is None:
            seq = next((s for s, cid in pending.items() if cid == message.child_id), None)
        if seq is None or seq not in pending:
            return  # already recorded (a duplicate notification)
        outcome = message.outcome
        if outcome is not None and outcome.status is Status.COMPLETED:
            self._feed(
                actor, rnd, partial(_make, ev.ChildCompleted, child_seq=seq, result=outcome.result)
            )
            return
        if outcome is None:
            error_type, text = "ChildStartFailed", message.refusal
        elif outcome.status is Status.FAILED:
            error_type, text = outcome.error_type, outcome.message
        else:
            error_type, text = "WorkflowCancelled", "cancelled"
        self._feed(
            actor,
            rnd,
            partial(_make, ev.ChildFailed, child_seq=seq, error_type=error_type, message=text),
        )

    def _on_timer(self, actor: Actor, rnd: Round, row: TimerRow) -> None:
        driver = actor.driver
        assert driver is not None and actor.record is not None
        rnd.timers_delete.append(row)
        if row.run_id != actor.record.run_id:
            # Of an earlier run (it continued as new): timer numbers start again at 1 in the
            # successor, so this row must not fire the successor's timer.
            return
        kind, _, rest = row.timer_id.partition(":")
        if kind == "timer":
            seq = int(rest)
            if seq in dict(driver.pending_timers()):  # else fired or cancelled: drop the row
                self._feed(actor, rnd, partial(_make, ev.TimerFired, timer_seq=seq))
        elif kind == "retry":
            step = driver.pending_step(int(rest))
            if step is not None and step.retry_due is not None:
                self._start_attempt(actor, rnd, step.command, step.attempts + 1)

    def _on_step_result(self, actor: Actor, rnd: Round, done: StepDone) -> None:
        driver = actor.driver
        assert driver is not None and actor.record is not None
        if done.run_id != actor.record.run_id:
            return  # a step of an earlier run (it continued as new) finished: not this run's
        seq, attempt = done.seq, done.attempt
        step = driver.pending_step(seq)
        if step is None or step.attempts != attempt:
            return  # a stale result (an attempt re-run after a crash already recorded)
        error = done.error
        result = b""
        if error is None:
            try:
                result = encode_payload(
                    done.value,
                    limit=self.config.max_payload_bytes,
                    what=lambda: f"result of step {step.name!r}",
                )
            except PayloadError as exc:
                error = exc
                log.warning(
                    "step %r (attempt %d) of workflow %s/%s failed: %s: %s",
                    step.name,
                    attempt,
                    *actor.key,
                    type(exc).__name__,
                    exc,
                )
        if error is None:
            self._feed(
                actor,
                rnd,
                partial(_make, ev.StepCompleted, step_seq=seq, attempt=attempt, result=result),
            )
            return
        policy = step.command.retry
        retryable = policy.retryable(error)
        will_retry = retryable and attempt < policy.max_attempts and not driver.cancel_requested
        failed = partial(
            _make,
            ev.StepFailed,
            step_seq=seq,
            attempt=attempt,
            error_type=type(error).__name__,
            message=_validate.error_text(error),
            retryable=retryable,
            will_retry=will_retry,
            traceback=format_failure(error),
        )
        labels = (actor.record.workflow_type, step.name)
        rnd.tally.append(("step_failed", labels))
        if not will_retry:
            self._feed(actor, rnd, failed)  # the step failed for good: the code sees it
            return
        event = self._record(actor, rnd, failed)
        rnd.tally.append(("step_retry", labels))
        due = from_timestamp(event.at.timestamp() + policy.interval(attempt))
        self._feed(
            actor,
            rnd,
            partial(_make, ev.StepRetryScheduled, step_seq=seq, next_attempt=attempt + 1, due=due),
        )
        row = self.timer_row(actor, f"retry:{seq}", due)
        rnd.timers_add.append(row)
        rnd.effects.append(HoldTimer(row))

    # --- people and outside systems ------------------------------------------------------------

    def _on_decision(self, actor: Actor, rnd: Round, message: Decide) -> None:
        """Record a person's decision on a pending approval (or say why it cannot be)."""
        driver = actor.driver
        assert driver is not None and actor.record is not None
        workflow_id = actor.key[1]
        try:
            state = _control.choose_approval(
                workflow_id,
                driver.pending_approvals(),
                message.approval_id,
                message.digest,
                self.now(),
            )
        except AionError as error:  # NoPendingApproval, AmbiguousApproval
            self._refuse(actor, rnd, message, error)
            return
        decided = state
        self._feed(
            actor,
            rnd,
            partial(
                _make,
                ev.ApprovalDecided,
                approval_id=decided.approval_id,
                approved=message.approved,
                user=message.user,
                comment=message.comment,
                digest=decided.digest,
            ),
        )
        rnd.approvals.append(
            self._approval_row(
                actor,
                state,
                ApprovalStatus.APPROVED if message.approved else ApprovalStatus.REJECTED,
                decided_by=message.user,
                comment=message.comment,
                decided_at=rnd.at,
            )
        )
        if state.step_seq and message.approved:
            step = driver.pending_step(state.step_seq)
            if step is not None:  # the held step starts now: its first attempt
                self._start_attempt(actor, rnd, step.command, 1)

    def _on_completion(self, actor: Actor, rnd: Round, message: Complete) -> None:
        """Record an outside system's completion of a waitpoint (tokens are one-shot)."""
        driver = actor.driver
        assert driver is not None
        state = driver.waitpoint_state(message.waitpoint_id)
        refusal = _control.refuse_waitpoint(message.waitpoint_id, state)
        if refusal is not None or state is None:
            self._refuse(actor, rnd, message, refusal or WaitpointClosed("no such waitpoint"))
            return
        completed = state
        self._feed(
            actor,
            rnd,
            partial(
                _make,
                ev.WaitpointCompleted,
                waitpoint_id=completed.waitpoint_id,
                payload=message.payload,
            ),
        )
        rnd.waitpoints.append(self._waitpoint_row(actor, state, completed_at=rnd.at))

    def _refuse(self, actor: Actor, rnd: Round, message: Message, error: AionError) -> None:
        if message.reply is not None:
            rnd.refuse(message.reply, error)
        else:
            log.warning("command for %s/%s not applied: %s", *actor.key, error)

    def _hold_for_approval(self, actor: Actor, rnd: Round, command: c.ScheduleStep) -> None:
        """The approval policy holds this step: request approval instead of starting it."""
        driver = actor.driver
        assert driver is not None and actor.record is not None
        approval_id = f"{actor.record.run_id[:8]}-s{command.seq}"
        self._feed(
            actor,
            rnd,
            partial(
                _make,
                ev.ApprovalRequested,
                approval_seq=0,
                approval_id=approval_id,
                action=command.name,
                details=command.encoded_args,
                digest=approval_digest(command.name, command.encoded_args),
                step_seq=command.seq,
            ),
        )
        state = next(a for a in driver.pending_approvals() if a.approval_id == approval_id)
        rnd.approvals.append(self._approval_row(actor, state, ApprovalStatus.PENDING))

    def _approval_row(
        self, actor: Actor, state: ApprovalState, status: ApprovalStatus, **changes: Any
    ) -> ApprovalRow:
        assert actor.record is not None
        return ApprovalRow(
            tenant=actor.key[0],
            workflow_id=actor.key[1],
            approval_id=state.approval_id,
            run_id=actor.record.run_id,
            action=state.action,
            digest=state.digest,
            requested_at=state.requested_at or self.now(),
            status=status,
            details=state.details,
            timeout_at=state.timeout_at,
            **changes,
        )

    def _waitpoint_row(self, actor: Actor, state: WaitpointState, **changes: Any) -> WaitpointRow:
        assert actor.record is not None
        status = WaitpointStatus.PENDING
        if state.completed:
            status = WaitpointStatus.COMPLETED
        elif state.expired:
            status = WaitpointStatus.EXPIRED
        return WaitpointRow(
            tenant=actor.key[0],
            workflow_id=actor.key[1],
            waitpoint_id=state.waitpoint_id,
            run_id=actor.record.run_id,
            name=state.name,
            created_at=state.created_at,
            status=changes.pop("status", status),
            expires_at=state.expires_at,
            fingerprint=state.fingerprint,
            kid=state.kid,
            **changes,
        )

    def _close_waits(self, actor: Actor, rnd: Round) -> None:
        """The run ends: its pending approvals and waitpoints close with it."""
        driver = actor.driver
        assert driver is not None
        for approval in driver.pending_approvals():
            rnd.approvals.append(self._approval_row(actor, approval, ApprovalStatus.CLOSED))
        for waitpoint in driver.pending_waitpoints():
            rnd.waitpoints.append(
                self._waitpoint_row(actor, waitpoint, status=WaitpointStatus.CLOSED)
            )

    def _closed_waits(self, actor: Actor, rnd: Round) -> None:
        """Approvals that timed out or were withdrawn, waitpoints that expired: their rows."""
        assert actor.driver is not None
        for state in actor.driver.take_closed():
            if isinstance(state, ApprovalState):
                status = ApprovalStatus(state.closed_as or "closed")
                rnd.approvals.append(self._approval_row(actor, state, status))
            else:
                rnd.waitpoints.append(self._waitpoint_row(actor, state))

    # --- after a replay ------------------------------------------------------------------------

    def resume_in_flight(
        self, actor: Actor, rnd: Round, firing: set[str], running: Callable[[tuple[Any, ...]], bool]
    ) -> None:
        """After a replay: re-run interrupted steps, re-arm timers, re-ask finished children.

        ``firing``: timer ids of this run whose firing is in its mail (the wheel let go of
        them: arming them again would fire them twice). ``running(step key)``: the attempt is
        still executing in this process (not dispatched again).
        """
        driver = actor.driver
        assert actor.record is not None and driver is not None
        run_id = actor.record.run_id
        for step in driver.pending_steps():
            if step.retry_due is not None:
                timer_id = f"retry:{step.command.seq}"
                if timer_id not in firing:
                    rnd.effects.append(HoldTimer(self.timer_row(actor, timer_id, step.retry_due)))
            elif step.attempts > 0 and not running(
                (*actor.key, run_id, step.command.seq, step.attempts)
            ):
                # Started, never finished: the process died mid-step (or the actor restarted
                # while it runs). Run it again unless it is still running here
                # (at-least-once); it keeps its attempt number.
                rnd.effects.append(DispatchStep(step.command, step.attempts))
        for seq, due in driver.pending_timers():
            if f"timer:{seq}" not in firing:
                rnd.effects.append(HoldTimer(self.timer_row(actor, f"timer:{seq}", due)))
        for seq, child_id in driver.pending_children():
            rnd.effects.append(CheckChild(seq, child_id))
            if driver.cancel_requested:
                # Passing a cancellation on to children happens in memory after the commit: a
                # crash in between loses it, so a replay passes it on again (children that
                # have it already, or have finished, ignore it).
                rnd.effects.append(CancelChild(child_id))

    def unblocked(self, actor: Actor, rnd: Round, identity: str = "") -> None:
        """A BLOCKED run replayed cleanly: it runs again (``identity``: who asked)."""
        assert actor.record is not None
        self._record(
            actor,
            rnd,
            partial(_make, ev.WorkflowUnblocked, reason="replayed", identity=identity),
        )
        actor.record = _replace(actor.record, status=Status.RUNNING, reason="")
        rnd.tally.append(("unblocked", ()))

    def blocked(self, actor: Actor, rnd: Round, reason: str) -> None:
        """Park the run BLOCKED with ``reason`` after what the round recorded so far (the
        event the code diverged on stays recorded: a replay after the fix sees it)."""
        assert actor.record is not None
        if actor.record.status is not Status.BLOCKED:
            rnd.tally.append(("blocked", ()))
        self._record(actor, rnd, partial(_make, ev.WorkflowBlocked, reason=reason))
        if actor.driver is not None:
            actor.record = self.with_waiting(actor)  # what it waits on after this round
        actor.record = _replace(actor.record, status=Status.BLOCKED, reason=reason)
        actor.drop_driver()

    def with_waiting(self, actor: Actor) -> WorkflowRecord:
        """The run's projection row with what it waits on now."""
        assert actor.record is not None and actor.driver is not None
        if actor.record.status.is_terminal:
            return actor.record
        pending = actor.driver.pending()
        waiting = tuple(
            f"{PENDING_KINDS[kind]}:{name}" for kind, names in pending.items() for name in names
        )
        return _replace(actor.record, waiting_on=waiting)

    # --- recording -----------------------------------------------------------------------------

    def _record(
        self, actor: Actor, rnd: Round, make: Callable[[int, datetime], ev.Event]
    ) -> ev.Event:
        """Add an event to the round with the next sequence number and the round's time."""
        actor.head += 1
        at = rnd.at
        if at is None:
            at = rnd.at = self.now()
        event = make(actor.head, at)
        rnd.events.append(event)
        return event

    def _feed(self, actor: Actor, rnd: Round, make: Callable[[int, datetime], ev.Event]) -> None:
        """Record a fact, feed it to the driver and record the commands it causes."""
        event = self._record(actor, rnd, make)
        assert actor.driver is not None
        try:
            commands = actor.driver.apply(event)
        except NondeterminismError as exc:
            raise Blocked(_validate.error_text(exc)) from exc
        self._closed_waits(actor, rnd)
        self.record_commands(actor, rnd, commands)

    def record_commands(self, actor: Actor, rnd: Round, commands: list[c.Command]) -> None:
        """Record the commands the code issued (raises :class:`Blocked`)."""
        assert actor.record is not None and actor.driver is not None
        for command in commands:
            if isinstance(command, c.StartChild) and (
                self.definition(command.workflow_type) is None
            ):
                # Recoverable, like an unregistered top-level type: nothing of this activation
                # is recorded, and once the type is registered a replay issues it again.
                raise Blocked(
                    f"child workflow type {command.workflow_type!r} is not registered with this "
                    "engine: register it with Engine(..., workflows=[...]) and restart the "
                    f"engine (or `aion unblock {actor.key[1]}`)"
                )
        started: list[c.ScheduleStep] = []
        ended = False
        for command in commands:
            match command:
                case c.ScheduleStep():
                    self._record(actor, rnd, partial(c.to_event, command))
                    started.append(command)
                case c.StartTimer():
                    self._record(actor, rnd, partial(c.to_event, command))
                    row = self.timer_row(actor, f"timer:{command.seq}", command.due)
                    rnd.timers_add.append(row)
                    rnd.effects.append(HoldTimer(row))
                case c.CancelTimer():
                    self._record(actor, rnd, partial(c.to_event, command))
                    row = self.timer_row(actor, f"timer:{command.seq}", command.due)
                    self._drop_row(rnd, row)
                    rnd.effects.append(ReleaseTimer(row))
                case c.StartChild():
                    self._start_child(actor, rnd, command)
                case c.RequestApproval():
                    event = self._record(actor, rnd, partial(c.to_event, command))
                    state: ApprovalState = command.wait
                    state.requested_at = event.at
                    rnd.approvals.append(self._approval_row(actor, state, ApprovalStatus.PENDING))
                case c.CreateWaitpoint():
                    self._record(actor, rnd, partial(c.to_event, command))
                    wp = actor.driver.waitpoint_state(command.waitpoint_id)
                    assert wp is not None
                    rnd.waitpoints.append(self._waitpoint_row(actor, wp))
                case c.CompleteWorkflow() | c.FailWorkflow() | c.CancelWorkflow():
                    self._record(actor, rnd, partial(c.to_event, command))
                    self._close(actor, rnd, command)
                    ended = True
                case c.ContinueAsNew():
                    self._continue_as_new(actor, rnd, command)
                    ended = True
                case c.UpsertSearchAttributes():
                    self._record(actor, rnd, partial(c.to_event, command))
                    attrs = {**actor.record.search_attributes, **command.attributes}
                    actor.record = _replace(actor.record, search_attributes=attrs)
                case _:
                    self._record(actor, rnd, partial(c.to_event, command))
        # Every command of one activation is recorded before any attempt starts: replay matches
        # an activation's commands back to back, so a StepStarted may not come between them.
        # Fed to the driver too: it counts the step's attempts.
        if ended:
            # The run ended in this activation: its outcome stays its last event, and a step
            # it scheduled without awaiting never starts. (After continue-as-new the actor
            # already drives the successor, whose steps the nested call started.)
            return
        policy = self.config.approval_policy
        for command in started:
            if policy is not None and policy.requires(
                command.name, actor.key[0], actor.record.workflow_type
            ):
                self._hold_for_approval(actor, rnd, command)
            else:
                self._start_attempt(actor, rnd, command, 1)

    def _start_attempt(
        self, actor: Actor, rnd: Round, command: c.ScheduleStep, attempt: int
    ) -> None:
        self._feed(
            actor, rnd, partial(_make, ev.StepStarted, step_seq=command.seq, attempt=attempt)
        )
        rnd.effects.append(DispatchStep(command, attempt))

    def timer_row(self, actor: Actor, timer_id: str, due: datetime) -> TimerRow:
        assert actor.record is not None
        return TimerRow(due, actor.key[0], actor.key[1], timer_id, actor.record.run_id)

    def _close(self, actor: Actor, rnd: Round, command: c.Command) -> None:
        assert actor.record is not None and actor.driver is not None
        status = _CLOSED_AS[type(command)]
        self._drop_all_timers(actor, rnd)
        self._close_waits(actor, rnd)
        # Closed when its closing event was recorded (this round's time).
        closed_at = rnd.at or self.now()
        actor.record = _replace(actor.record, status=status, closed_at=closed_at, waiting_on=())
        rnd.tally.append(("closed", (actor.record.workflow_type, status.value)))
        outcome = Outcome.of_command(command)
        assert outcome is not None
        rnd.effects.append(RunClosed(actor.record, outcome))

    def _drop_all_timers(self, actor: Actor, rnd: Round) -> None:
        driver = actor.driver
        assert driver is not None
        timers, steps = driver.pending_timers(), driver.pending_steps()
        if not timers and not any(step.retry_due is not None for step in steps):
            return
        rows = [self.timer_row(actor, f"timer:{seq}", due) for seq, due in timers]
        rows += [
            self.timer_row(actor, f"retry:{step.command.seq}", step.retry_due)
            for step in steps
            if step.retry_due is not None
        ]
        for row in rows:
            self._drop_row(rnd, row)
        rnd.effects += [ReleaseTimer(row) for row in rows]

    @staticmethod
    def _drop_row(rnd: Round, row: TimerRow) -> None:
        """Delete a timer's row; one this round adds is not added at all (a store applies a
        write's deletes before its adds: it would be kept)."""
        if row in rnd.timers_add:
            rnd.timers_add.remove(row)
        else:
            rnd.timers_delete.append(row)

    def _continue_as_new(self, actor: Actor, rnd: Round, command: c.ContinueAsNew) -> None:
        assert actor.record is not None and actor.driver is not None
        new_run_id = self.new_run_id()
        self._record(actor, rnd, lambda s, at: c.to_event(command, s, at, new_run_id=new_run_id))
        self._drop_all_timers(actor, rnd)
        self._close_waits(actor, rnd)
        carried = actor.driver.unconsumed_signals()
        old = actor.record
        definition = self.definition(command.workflow_type)
        assert definition is not None
        actor.head += 1
        started, _ = begin_run(
            tenant=old.tenant,
            workflow_id=old.workflow_id,
            run_id=new_run_id,
            workflow_type=command.workflow_type,
            input=command.input,
            at=rnd.at or self.now(),
            seq=actor.head,
            created_at=old.created_at,
            parent_workflow_id=old.parent_workflow_id,
            parent_run_id=old.parent_run_id,
            code_version=self.config.code_version,
            continued_from_run_id=old.run_id,
            trace=actor.trace,  # the successor stays in the trace of the first start
        )
        rnd.events.append(started)
        rnd.tally.append(("closed", (old.workflow_type, "continued_as_new")))
        rnd.tally.append(("started", (command.workflow_type,)))
        actor.record = _replace(
            old, run_id=new_run_id, run_started_at=started.at, status=Status.RUNNING, reason=""
        )
        self._open(actor, rnd, definition, started)
        # Signals the run before received and never consumed go to the successor, in arrival
        # order and in this same write: what engine.signal() acknowledged is never lost.
        for name, payload in carried:
            if not actor.running:
                break  # the successor ended at once (what it left unread ends with it)
            self._feed(actor, rnd, partial(_make, ev.SignalReceived, name=name, payload=payload))

    def _start_child(self, actor: Actor, rnd: Round, command: c.StartChild) -> None:
        assert actor.record is not None
        tenant = actor.key[0]
        child_run_id = self.new_run_id()
        self._record(
            actor, rnd, lambda s, at: c.to_event(command, s, at, child_run_id=child_run_id)
        )
        refused = ChildDone(
            child_id=command.workflow_id,
            seq=command.seq,
            refusal=f"workflow id {command.workflow_id!r} is already in use; a child needs an "
            "id of its own (pass workflow_id= to ctx.child)",
        )
        if (tenant, command.workflow_id) == actor.key:
            rnd.effects.append(Mail(actor.key, refused))
            return
        start = RunStart(
            tenant=tenant,
            workflow_id=command.workflow_id,
            workflow_type=command.workflow_type,
            input=command.input,
            run_id=child_run_id,
            parent_workflow_id=actor.key[1],
            parent_run_id=actor.record.run_id,
            trace=actor.trace,  # a family is one trace
        )
        child, child_round, blocked = self.begin(start)
        if blocked is None:
            child.record = self.with_waiting(child)  # written with the parent's commit
        else:
            # The child's own first step cannot be taken (say, a grandchild type that is not
            # registered): the child starts parked BLOCKED, as a top-level start would.
            log.error("run %s/%s is BLOCKED: %s", tenant, command.workflow_id, blocked)
        rnd.children.append(
            ChildStart(
                append=Append(command.workflow_id, child_round.events, 0, tenant),
                round=child_round,
                actor=child,
                refused=refused,
                refused_to=actor.key,
            )
        )


def _make(cls: type[ev.Event], seq: int, at: datetime, **fields: Any) -> ev.Event:
    return cls(seq=seq, at=at, **fields)


def _replace(record: WorkflowRecord, **changes: Any) -> WorkflowRecord:
    return msgspec.structs.replace(record, **changes)
