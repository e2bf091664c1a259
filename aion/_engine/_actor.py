"""Run actors: one per workflow run that has work, none for a parked run.

An actor is not a task. It is a mailbox and, while resident, a replay driver. A fixed pool of
activation workers takes actors with mail from a ready queue, so a parked run costs no task and
an evicted run costs no memory: a message for it re-activates it by replaying its current run
segment.

Processing one actor: drain its mailbox; turn each message into an event; feed the event to the
driver; turn the commands the code issued into more events and rows; commit all of it in one
write (group-committed with every other actor's); then carry out the side effects (start steps,
hold timers, wake waiters). A failed commit or any engine error drops the driver: the actor
restarts by replay, with backoff, and is parked BLOCKED past its restart intensity.
"""

from __future__ import annotations

import itertools
import logging
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from aion import _validate
from aion import events as ev
from aion._clock import from_timestamp
from aion._codec import encode_payload
from aion._ids import new_id
from aion._loop import Flag, WorkQueue
from aion._replay import (
    ApprovalState,
    Driver,
    WaitpointState,
    WorkflowDefinition,
    approval_digest,
)
from aion._replay import _commands as c
from aion.errors import (
    AionError,
    AmbiguousApproval,
    InvalidArgument,
    NondeterminismError,
    NoPendingApproval,
    PayloadError,
    SequenceConflict,
    StoreFull,
    WaitpointClosed,
    WorkflowBlocked,
    WorkflowClosed,
    WorkflowNotFound,
)
from aion.store import (
    Append,
    ApprovalRow,
    ApprovalStatus,
    InboxCommand,
    Status,
    TimerRow,
    WaitpointRow,
    WaitpointStatus,
    WorkflowRecord,
    Write,
    begin_run,
)

from ._steps import StepJob, format_failure
from ._types import PENDING_KINDS, StepInfo

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["Actor", "Message", "Reply"]

log = logging.getLogger("aion.engine")

Key = tuple[str, str]  # (tenant, workflow id)

#: Commit errors that guarantee nothing was written (no lost-acknowledgement check needed).
_NOTHING_WRITTEN = (SequenceConflict, StoreFull, PayloadError, InvalidArgument)
#: How many of the least recently used runs one eviction round looks at.
EVICTION_SCAN = 1024
#: The timer wheel waits while this many runs per activation worker wait to be processed.
TIMER_BACKLOG_PER_WORKER = 2


class Reply:
    """Completion of a request that waits for its message to be recorded (signal, cancel)."""

    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = Flag()  # not anyio's Event: that one asks sniffio for the backend
        self.error: BaseException | None = None

    def set(self, error: BaseException | None = None) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()

    async def wait(self) -> None:
        await self.event.wait()
        if self.error is not None:
            raise self.error


@dataclass(slots=True)
class Message:
    """Something that happened to a run. ``kind``: step, timer, signal, cancel, child, wake,
    decide (an approval), complete (a waitpoint)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    reply: Reply | None = None
    inbox_id: str | None = None


@dataclass(slots=True)
class Actor:
    key: Key
    mailbox: deque[Message] = field(default_factory=deque)
    driver: Driver | None = None
    record: WorkflowRecord | None = None
    head: int = 0
    queued: bool = False
    steps_in_flight: int = 0
    restarts: list[float] = field(default_factory=list)
    blocked: bool = False
    busy: bool = False  # a worker is processing it

    @property
    def idle(self) -> bool:
        """Nothing to do and nothing under way: the run may be evicted. A run being processed
        is busy even with an empty mailbox: its write may be in flight, and the steps it
        dispatches after the commit belong to this actor (an evicted copy would replay and
        dispatch them again)."""
        return not (self.mailbox or self.steps_in_flight or self.queued or self.busy)


class _Batch:
    """What one processing round writes and then does (two per workflow at least: a plain
    class with list displays, cheaper to make than a dataclass's default factories)."""

    __slots__ = (
        "after",
        "approvals",
        "at",
        "children",
        "events",
        "inbox_delete",
        "refused",
        "replies",
        "timers_add",
        "timers_delete",
        "waitpoints",
    )

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.timers_add: list[TimerRow] = []
        self.timers_delete: list[TimerRow] = []
        self.approvals: list[ApprovalRow] = []
        self.waitpoints: list[WaitpointRow] = []
        self.inbox_delete: list[str] = []
        self.after: list[Callable[[], None]] = []
        self.replies: list[Reply] = []
        # Requests refused because of what this round decides (e.g. the loser of a race):
        # told only once that is recorded; if the commit fails they get its error instead.
        self.refused: list[tuple[Reply, AionError]] = []
        self.at: datetime | None = None  # one timestamp for everything one round records
        self.children: list[_ChildStart] = []  # started with this write (checked, then merged)


@dataclass(slots=True)
class _ChildStart:
    """A child run started by a parent's write: its first events, rows and actor."""

    append: Append
    batch: _Batch
    actor: Actor
    refused: Message  # what the parent gets if the id turns out to be taken


def _child_refused(command: c.StartChild) -> Message:
    return Message(
        "child",
        {
            "seq": command.seq,
            "error_type": "ChildStartFailed",
            "message": f"workflow id {command.workflow_id!r} is already in use; a child needs an "
            "id of its own (pass workflow_id= to ctx.child)",
            "result": b"",
        },
    )


class Runtime:
    """The actors of one engine and everything that moves them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.actors: OrderedDict[Key, Actor] = OrderedDict()
        self.processing = 0
        # Steps executing in this process: (tenant, workflow id, run id, step, attempt). A run
        # re-activated by replay must not dispatch them a second time.
        self.steps_running: set[tuple[str, str, str, int, int]] = set()
        self._ready: WorkQueue[Actor] = WorkQueue()

    # --- mail ---------------------------------------------------------------------------------

    def idle(self) -> bool:
        """No run has mail, is being processed, or has a step in flight."""
        return not self.processing and all(
            not a.mailbox and not a.queued and not a.steps_in_flight for a in self.actors.values()
        )

    def actor(self, key: Key) -> Actor:
        actor = self.actors.get(key)
        if actor is None:
            actor = self.actors[key] = Actor(key)
        return actor

    def send(self, key: Key, message: Message) -> None:
        actor = self.actor(key)
        actor.mailbox.append(message)
        self._schedule(actor)

    def reschedule(self) -> None:
        """After the activation workers restarted: every run with mail gets processed."""
        self.processing = 0
        old, self._ready = self._ready, WorkQueue()
        old.release()  # producers waiting for room look at the new queue
        for actor in self.actors.values():
            actor.queued = actor.busy = False
            if actor.mailbox:
                self._schedule(actor)

    async def room_for_timers(self) -> None:
        """Back-pressure for the timer wheel: wait while ``TIMER_BACKLOG_PER_WORKER`` runs per
        activation worker are already waiting to be processed.

        Without it, a backlog of overdue timers (after an outage) wakes every one of its runs at
        once: all of them become resident together, and new work queues behind all of them.
        """
        limit = TIMER_BACKLOG_PER_WORKER * self.engine._activation_workers
        while len(self._ready) >= limit:
            await self._ready.wait_shorter_than(limit)  # woken too if the queue is replaced

    def _schedule(self, actor: Actor) -> None:
        if not actor.queued and not actor.busy:
            actor.queued = True
            self._ready.put_nowait(actor)

    async def worker(self) -> None:
        """An activation worker: processes actors with mail, one at a time."""
        ready = self._ready
        while True:
            actor = await ready.get()
            actor.queued = False
            actor.busy = True  # mail that arrives now waits for this round: one worker per run
            self.processing += 1
            crashed = False
            try:
                with self.engine._busy():
                    try:
                        await self._process(actor)
                    except Exception as exc:
                        crashed = True
                        await self._crashed(actor, exc)
            finally:
                actor.busy = False
                self.processing -= 1
            if crashed:
                pass  # a restart is scheduled after a backoff (or the run was parked)
            elif actor.mailbox:
                self._schedule(actor)
            elif actor.steps_in_flight == 0 and _finished(actor):
                # A closed run keeps nothing in memory: later mail activates from the store
                # and finds it closed.
                if self.actors.get(actor.key) is actor:
                    del self.actors[actor.key]
            else:
                if actor.key in self.actors:
                    self.actors.move_to_end(actor.key)  # least recently used are evicted first
                self._maybe_evict()

    # --- activation ---------------------------------------------------------------------------

    async def _activate(self, actor: Actor) -> bool:
        """Load and replay the current run. False if the workflow is gone or finished."""
        tenant, workflow_id = actor.key
        store = self.engine.store
        record = await store.get_workflow(workflow_id, tenant=tenant)
        if record is None or record.status.is_terminal:
            error: AionError = (
                WorkflowNotFound(workflow_id, tenant)
                if record is None
                else WorkflowClosed(
                    f"workflow {workflow_id!r} has finished ({record.status.value})"
                )
            )
            # A timer that fires for a closed run only leaves its row behind: delete it.
            rows = [m.data["row"] for m in actor.mailbox if m.kind == "timer"]
            if rows:
                await store.commit(Write(timers_delete=rows))
            self._drop_mail(actor, error)
            self.actors.pop(actor.key, None)
            return False
        wake: Message | None = None
        if record.status is Status.BLOCKED:
            wake = await self._hold(actor, record)
            if wake is None:
                self._parked(actor)  # nothing asked to retry it: it stays parked
                return False
        try:
            blocked = await self._replay_run(actor, record)
        except BaseException as exc:
            if wake is not None and wake.reply is not None:
                wake.reply.set(exc if isinstance(exc, Exception) else None)
            raise
        if blocked is not None:
            if wake is not None and wake.reply is not None:
                wake.reply.set(WorkflowBlocked(workflow_id, blocked, "the retry"))
            return False
        if wake is not None:
            actor.mailbox.appendleft(wake)  # answered once this round is recorded
            await self._take_held(actor)
        return True

    async def _replay_run(self, actor: Actor, record: WorkflowRecord) -> str | None:
        """Replay the current run segment and record what it issues past its history. None
        once it runs, or why it is (still) parked BLOCKED."""
        tenant, workflow_id = actor.key
        store = self.engine.store
        segment = await store.read_current_run(workflow_id, tenant=tenant)
        actor.record = record
        actor.head = segment[-1].seq if segment else 0
        definition = self.engine.definition(record.workflow_type)
        if definition is None:
            reason = f"workflow type {record.workflow_type!r} is not registered with this engine"
            await self._block(
                actor,
                reason,
                "register it with Engine(..., workflows=[...]) and restart the engine",
            )
            return reason
        driver = self._new_driver(definition)
        try:
            driver.replay(segment)
        except NondeterminismError as exc:
            reason = _validate.error_text(exc)
            await self._block(actor, reason, "")
            return reason
        driver.take_closed()  # their rows were updated when they happened
        actor.driver = driver
        actor.blocked = False
        batch = _Batch()
        if record.status is Status.BLOCKED:
            self._record(
                actor,
                batch,
                lambda seq, at: ev.WorkflowUnblocked(seq=seq, at=at, reason="replayed"),
            )
            actor.record = _replace(record, status=Status.RUNNING, reason="")
        # Commands the code issued past the recorded history (e.g. after a code fix).
        self._record_commands(actor, batch, driver.take_commands())
        self._resume_in_flight(actor, batch, driver)
        await self._commit(actor, batch)
        return None

    async def _hold(self, actor: Actor, record: WorkflowRecord) -> Message | None:
        """The run is parked BLOCKED: keep what must not be lost, up to the first ``wake``.

        A ``wake`` (``unblock``, a restart's recovery) retries the run: it is returned (taken
        out of the mailbox).
        Until then signals, waitpoint completions and cancellations are kept in the inbox (those
        that came from it stay there) and applied in arrival order once the run runs again
        (``_take_held``); a decision is refused with ``WorkflowBlocked``, since it must be
        taken against what the run waits on then. Timer firings, step results and child
        outcomes are let go: the replay that unblocks the run re-arms its timers, runs its
        interrupted steps again and asks its children again. Nothing is appended to the
        history: a webhook retried every second during an outage does not grow it.
        """
        tenant, workflow_id = actor.key
        keep: list[InboxCommand] = []
        kept: list[Reply] = []
        refused: list[tuple[Reply, AionError]] = []
        at = self.engine.now()
        while actor.mailbox and actor.mailbox[0].kind != "wake":
            message = actor.mailbox.popleft()
            if message.inbox_id is not None:
                continue  # it waits in the inbox already
            data = message.data
            match message.kind:
                case "signal":
                    command = InboxCommand(
                        "signal",
                        tenant,
                        workflow_id,
                        at,
                        name=data["name"],
                        payload=data["payload"],
                    )
                case "complete":
                    command = InboxCommand(
                        "complete_waitpoint",
                        tenant,
                        workflow_id,
                        at,
                        payload=data["payload"],
                        token=data["token"],
                    )
                case "cancel":
                    command = InboxCommand(
                        "cancel", tenant, workflow_id, at, comment=data.get("reason")
                    )
                case "decide":
                    if message.reply is not None:
                        refusal = WorkflowBlocked(workflow_id, record.reason, "the decision")
                        refused.append((message.reply, refusal))
                    continue
                case _:
                    continue  # re-derived by the replay that unblocks it
            keep.append(command)
            if message.reply is not None:
                kept.append(message.reply)
        if keep:
            try:
                await self.engine.store.commit(Write(inbox_put=keep))
            except Exception as exc:
                log.warning(
                    "could not keep %d commands for BLOCKED run %s/%s: %s",
                    len(keep),
                    tenant,
                    workflow_id,
                    exc,
                )
                error = exc if isinstance(exc, AionError) else AionError(str(exc))
                refused += [(reply, error) for reply in kept]
                kept = []
        for reply, error in refused:
            reply.set(error)
        for reply in kept:
            reply.set()
        return actor.mailbox.popleft() if actor.mailbox else None

    async def _take_held(self, actor: Actor) -> None:
        """The run runs again: what was kept for it while BLOCKED comes first, in arrival
        order (the inbox's ids are time-ordered)."""
        store = self.engine.store
        held: list[Message] = []
        after: str | None = None
        while True:
            rows = await store.read_inbox(limit=500, after=after)
            for row in rows:
                if (row.tenant, row.workflow_id) == actor.key and row.kind != "unblock":
                    message = self.engine.inbox_message(row)
                    if isinstance(message, Message):
                        held.append(message)
            if len(rows) < 500:
                break
            after = rows[-1].command_id
        actor.mailbox.extendleft(reversed(held))

    async def _drop_applied(self, actor: Actor) -> None:
        """Only inbox commands still in the inbox are applied: one can reach a run twice (the
        inbox loop retries; a run that unblocks takes its kept commands itself)."""
        checked: set[str] = set()
        while True:
            ids = {m.inbox_id for m in actor.mailbox if m.inbox_id is not None} - checked
            if not ids:
                return
            pending = await self.engine.store.inbox_pending(ids)
            checked |= ids
            gone = ids - pending
            if gone:
                actor.mailbox = deque(m for m in actor.mailbox if m.inbox_id not in gone)

    def _new_driver(self, definition: WorkflowDefinition) -> Driver:
        return Driver(
            definition,
            max_payload_bytes=self.engine.max_payload_bytes,
            resolve=self.engine.definition,
            sign=self.engine.sign_waitpoint,
            watch=self.engine.activation_watch,
        )

    def _resume_in_flight(self, actor: Actor, batch: _Batch, driver: Driver) -> None:
        """After a replay: re-run interrupted steps, re-arm timers, re-ask finished children."""
        # A timer whose firing woke the run is in its mail: the wheel has let go of it, and
        # arming it again would fire it a second time. (If processing that mail crashes, the
        # restart's activation arms it again.) Only this run's: timer numbers start again at 1
        # after continue-as-new, and a stale row of the run before must not hide a live timer.
        assert actor.record is not None
        run_id = actor.record.run_id
        firing = {
            m.data["row"].timer_id
            for m in actor.mailbox
            if m.kind == "timer" and m.data["row"].run_id == run_id
        }
        for step in driver.pending_steps():
            if step.retry_due is not None:
                timer_id = f"retry:{step.command.seq}"
                if timer_id not in firing:
                    row = self._timer_row(actor, timer_id, step.retry_due)
                    batch.after.append(partial(self.engine.hold_timer, row))
            elif step.attempts > 0:
                # Started, never finished: the process died mid-step (or the actor restarted
                # while it runs). Run it again unless it is still running here
                # (at-least-once); it keeps its attempt number.
                running = (*actor.key, run_id, step.command.seq, step.attempts)
                if running not in self.steps_running:
                    batch.after.append(partial(self._dispatch, actor, step.command, step.attempts))
        for seq, due in driver.pending_timers():
            if f"timer:{seq}" not in firing:
                row = self._timer_row(actor, f"timer:{seq}", due)
                batch.after.append(partial(self.engine.hold_timer, row))
        for seq, child_id in driver.pending_children():
            batch.after.append(partial(self.engine.check_child, actor.key, seq, child_id))
            if driver.cancel_requested:
                # Passing a cancellation on to children happens in memory after the commit: a
                # crash in between loses it, so a replay passes it on again (children that
                # have it already, or have finished, ignore it).
                batch.after.append(partial(self.engine.cancel_child, actor.key[0], child_id))

    # --- processing -----------------------------------------------------------------------------

    async def _process(self, actor: Actor) -> None:
        if actor.driver is None and not await self._activate(actor):
            return
        assert actor.driver is not None and actor.record is not None
        if any(m.inbox_id is not None for m in actor.mailbox):
            await self._drop_applied(actor)
        batch = _Batch()
        # actor.driver, not a local: after continue-as-new the successor takes the rest of
        # the mail (a signal sent with the one that ended the run is not "closed").
        while actor.mailbox and _running(actor):
            message = actor.mailbox.popleft()
            if message.reply is not None:
                batch.replies.append(message.reply)
            if message.inbox_id is not None:
                if message.inbox_id in batch.inbox_delete:
                    continue  # the same command twice in one round
                batch.inbox_delete.append(message.inbox_id)
            try:
                self._handle(actor, batch, message)
            except _Block as block:
                await self.commit_blocked(actor, batch, block.reason)
                return
        for message in list(actor.mailbox):  # the run ended: later mail finds it closed
            if not _running(actor):
                actor.mailbox.remove(message)
                if message.reply is not None:
                    _refuse_later(batch, message.reply, _closed_error(actor, message))
                if message.inbox_id is not None:
                    batch.inbox_delete.append(message.inbox_id)
        await self._commit(actor, batch)

    def _handle(self, actor: Actor, batch: _Batch, message: Message) -> None:
        driver = actor.driver
        assert driver is not None
        data = message.data
        match message.kind:
            case "wake":
                pass
            case "signal":
                self._feed(
                    actor,
                    batch,
                    lambda seq, at: ev.SignalReceived(
                        seq=seq, at=at, name=data["name"], payload=data["payload"]
                    ),
                )
            case "cancel":
                if driver.cancel_requested:
                    return
                self._feed(
                    actor,
                    batch,
                    lambda seq, at: ev.WorkflowCancelRequested(
                        seq=seq, at=at, reason=data.get("reason")
                    ),
                )
                for _, child_id in driver.pending_children():
                    batch.after.append(partial(self.engine.cancel_child, actor.key[0], child_id))
            case "timer":
                self._on_timer(actor, batch, data["row"])
            case "decide":
                self._on_decision(actor, batch, message)
            case "complete":
                self._on_completion(actor, batch, message)
            case "step":
                self._on_step_result(actor, batch, data)
            case "child":
                pending = driver.pending_children()
                seq = data.get("seq")
                if seq is None:
                    seq = next((s for s, cid in pending if cid == data["child_id"]), None)
                if seq is None or seq not in dict(pending):
                    return  # already recorded (a duplicate notification)
                if data["error_type"] is None:
                    self._feed(
                        actor,
                        batch,
                        lambda s, at: ev.ChildCompleted(
                            seq=s, at=at, child_seq=seq, result=data["result"]
                        ),
                    )
                else:
                    self._feed(
                        actor,
                        batch,
                        lambda s, at: ev.ChildFailed(
                            seq=s,
                            at=at,
                            child_seq=seq,
                            error_type=data["error_type"],
                            message=data["message"],
                        ),
                    )
            case _:
                log.error("message of unknown kind %r for %s/%s dropped", message.kind, *actor.key)
                if message.reply is not None:
                    message.reply.set(AionError(f"unknown message kind {message.kind!r}"))

    def _on_timer(self, actor: Actor, batch: _Batch, row: TimerRow) -> None:
        driver = actor.driver
        assert driver is not None and actor.record is not None
        if row.run_id != actor.record.run_id:
            # Of an earlier run (it continued as new): timer numbers start again at 1 in the
            # successor, so this row must not fire the successor's timer.
            batch.timers_delete.append(row)
            return
        kind, _, rest = row.timer_id.partition(":")
        if kind == "timer":
            seq = int(rest)
            if seq not in dict(driver.pending_timers()):
                batch.timers_delete.append(row)  # already fired or cancelled: drop the row
                return
            batch.timers_delete.append(row)
            self._feed(actor, batch, lambda s, at: ev.TimerFired(seq=s, at=at, timer_seq=seq))
        elif kind == "retry":
            seq = int(rest)
            step = next((s for s in driver.pending_steps() if s.command.seq == seq), None)
            batch.timers_delete.append(row)
            if step is None or step.retry_due is None:
                return
            self._start_attempt(actor, batch, step.command, step.attempts + 1)

    def _on_step_result(self, actor: Actor, batch: _Batch, data: dict[str, Any]) -> None:
        driver = actor.driver
        assert driver is not None
        seq = data["seq"]
        attempt = data["attempt"]
        assert actor.record is not None
        if data.get("run_id", actor.record.run_id) != actor.record.run_id:
            return  # a step of an earlier run (it continued as new) finished: not this run's
        step = driver.pending_step(seq)
        if step is None or step.attempts != attempt:
            return  # a stale result (an attempt re-run after a crash already recorded)
        error: BaseException | None = data["error"]
        result = b""
        if error is None:
            try:
                result = encode_payload(
                    data["value"],
                    limit=self.engine.max_payload_bytes,
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
                batch,
                lambda s, at: ev.StepCompleted(
                    seq=s, at=at, step_seq=seq, attempt=attempt, result=result
                ),
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
        if not will_retry:
            self._feed(actor, batch, failed)  # the step failed for good: the code sees it
            return
        due = from_timestamp(self.engine.clock.now() + policy.interval(attempt))
        self._record(actor, batch, failed)
        self._feed(
            actor,
            batch,
            lambda s, at: ev.StepRetryScheduled(
                seq=s, at=at, step_seq=seq, next_attempt=attempt + 1, due=due
            ),
        )
        row = self._timer_row(actor, f"retry:{seq}", due)
        batch.timers_add.append(row)
        batch.after.append(lambda: self.engine.hold_timer(row))

    # --- people and outside systems ------------------------------------------------------------

    def _on_decision(self, actor: Actor, batch: _Batch, message: Message) -> None:
        """Record a person's decision on a pending approval (or say why it cannot be)."""
        driver = actor.driver
        assert driver is not None and actor.record is not None
        data = message.data
        workflow_id = actor.key[1]
        pending = driver.pending_approvals()
        wanted: str | None = data.get("approval_id")
        error: AionError | None = None
        state: ApprovalState | None = None
        if wanted is None:
            if not pending:
                error = NoPendingApproval(
                    f"workflow {workflow_id!r} has no pending approval to decide"
                )
            elif len(pending) > 1:
                ids = ", ".join(f"{a.approval_id} ({a.action})" for a in pending)
                error = AmbiguousApproval(
                    f"workflow {workflow_id!r} has {len(pending)} pending approvals: {ids}; "
                    "pass approval_id= to pick one"
                )
            else:
                state = pending[0]
        else:
            state = next((a for a in pending if a.approval_id == wanted), None)
            if state is None:
                error = NoPendingApproval(
                    f"approval {wanted!r} of workflow {workflow_id!r} is not pending: it was "
                    "decided already, timed out, or never requested by this run"
                )
        if (
            state is not None
            and state.timeout_at is not None
            and self.engine.now() >= state.timeout_at
        ):
            # Its timeout is past: the timer (perhaps not processed yet) records the timeout.
            error = NoPendingApproval(
                f"approval {state.approval_id!r} of workflow {workflow_id!r} timed out at "
                f"{state.timeout_at.isoformat()}; nothing was recorded"
            )
        elif state is not None and data.get("digest") and data["digest"] != state.digest:
            error = NoPendingApproval(
                f"approval {state.approval_id!r} of workflow {workflow_id!r} is for something "
                f"else than what was decided (digest {data['digest']!r}, pending "
                f"{state.digest!r}); nothing was recorded"
            )
        if error is not None or state is None:
            self._refuse(actor, batch, message, error or NoPendingApproval("no pending approval"))
            return
        approved: bool = data["approved"]
        decided = state
        self._feed(
            actor,
            batch,
            lambda s, at: ev.ApprovalDecided(
                seq=s,
                at=at,
                approval_id=decided.approval_id,
                approved=approved,
                user=data["user"],
                comment=data.get("comment"),
                digest=decided.digest,
            ),
        )
        batch.approvals.append(
            self._approval_row(
                actor,
                state,
                ApprovalStatus.APPROVED if approved else ApprovalStatus.REJECTED,
                decided_by=data["user"],
                comment=data.get("comment"),
                decided_at=batch.at,
            )
        )
        if state.step_seq and approved:
            step = next(
                (p for p in driver.pending_steps() if p.command.seq == state.step_seq), None
            )
            if step is not None:  # the held step starts now: its first attempt
                self._start_attempt(actor, batch, step.command, 1)

    def _on_completion(self, actor: Actor, batch: _Batch, message: Message) -> None:
        """Record an outside system's completion of a waitpoint (tokens are one-shot)."""
        driver = actor.driver
        assert driver is not None
        data = message.data
        state = driver.waitpoint_state(data["waitpoint_id"])
        if state is None or not state.pending:
            how = "expired" if state is not None and state.expired else "was completed already"
            if state is None:
                how = "belongs to an earlier run of this workflow"
            self._refuse(
                actor,
                batch,
                message,
                WaitpointClosed(f"waitpoint {data['waitpoint_id']!r} {how}; nothing was recorded"),
            )
            return
        completed = state
        self._feed(
            actor,
            batch,
            lambda s, at: ev.WaitpointCompleted(
                seq=s, at=at, waitpoint_id=completed.waitpoint_id, payload=data["payload"]
            ),
        )
        batch.waitpoints.append(self._waitpoint_row(actor, state, completed_at=batch.at))

    def _refuse(self, actor: Actor, batch: _Batch, message: Message, error: AionError) -> None:
        if message.reply is not None:
            _refuse_later(batch, message.reply, error)
        else:
            log.warning("command for %s/%s not applied: %s", *actor.key, error)

    def _hold_for_approval(self, actor: Actor, batch: _Batch, command: c.ScheduleStep) -> None:
        """The approval policy holds this step: request approval instead of starting it."""
        driver = actor.driver
        assert driver is not None and actor.record is not None
        approval_id = f"{actor.record.run_id[:8]}-s{command.seq}"
        digest = approval_digest(command.name, command.encoded_args)
        self._feed(
            actor,
            batch,
            lambda s, at: ev.ApprovalRequested(
                seq=s,
                at=at,
                approval_seq=0,
                approval_id=approval_id,
                action=command.name,
                details=command.encoded_args,
                digest=digest,
                step_seq=command.seq,
            ),
        )
        state = next(a for a in driver.pending_approvals() if a.approval_id == approval_id)
        batch.approvals.append(self._approval_row(actor, state, ApprovalStatus.PENDING))

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
            requested_at=state.requested_at or self.engine.now(),
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

    def _close_waits(self, actor: Actor, batch: _Batch) -> None:
        """The run ends: its pending approvals and waitpoints close with it."""
        driver = actor.driver
        assert driver is not None
        for approval in driver.pending_approvals():
            batch.approvals.append(self._approval_row(actor, approval, ApprovalStatus.CLOSED))
        for waitpoint in driver.pending_waitpoints():
            batch.waitpoints.append(
                self._waitpoint_row(actor, waitpoint, status=WaitpointStatus.CLOSED)
            )

    def _closed_waits(self, actor: Actor, batch: _Batch) -> None:
        """Approvals that timed out or were withdrawn, waitpoints that expired: their rows."""
        assert actor.driver is not None
        for state in actor.driver.take_closed():
            if isinstance(state, ApprovalState):
                status = ApprovalStatus(state.closed_as or "closed")
                batch.approvals.append(self._approval_row(actor, state, status))
            else:
                batch.waitpoints.append(self._waitpoint_row(actor, state))

    # --- recording ------------------------------------------------------------------------------

    def _record(
        self, actor: Actor, batch: _Batch, make: Callable[[int, datetime], ev.Event]
    ) -> ev.Event:
        """Add an event to the batch with the next sequence number and the current time."""
        actor.head += 1
        at = batch.at
        if at is None:
            at = batch.at = self.engine.now()
        event = make(actor.head, at)
        batch.events.append(event)
        return event

    def _feed(self, actor: Actor, batch: _Batch, make: Callable[[int, datetime], ev.Event]) -> None:
        """Record a fact, feed it to the driver and record the commands it causes."""
        event = self._record(actor, batch, make)
        assert actor.driver is not None
        try:
            commands = actor.driver.apply(event)
        except NondeterminismError as exc:
            raise _Block(_validate.error_text(exc)) from exc
        self._closed_waits(actor, batch)
        self._record_commands(actor, batch, commands)

    def _record_commands(self, actor: Actor, batch: _Batch, commands: list[c.Command]) -> None:
        assert actor.record is not None and actor.driver is not None
        for command in commands:
            if isinstance(command, c.StartChild) and (
                self.engine.definition(command.workflow_type) is None
            ):
                # Recoverable, like an unregistered top-level type: nothing of this activation
                # is recorded, and once the type is registered a replay issues it again.
                raise _Block(
                    f"child workflow type {command.workflow_type!r} is not registered with this "
                    "engine: register it with Engine(..., workflows=[...]) and restart the "
                    f"engine (or `aion unblock {actor.key[1]}`)"
                )
        started: list[c.ScheduleStep] = []
        ended = False
        for command in commands:
            match command:
                case c.ScheduleStep():
                    self._record(actor, batch, partial(c.to_event, command))
                    started.append(command)
                case c.StartTimer():
                    self._record(actor, batch, partial(c.to_event, command))
                    row = self._timer_row(actor, f"timer:{command.seq}", command.due)
                    batch.timers_add.append(row)
                    batch.after.append(partial(self.engine.hold_timer, row))
                case c.CancelTimer():
                    self._record(actor, batch, partial(c.to_event, command))
                    row = self._timer_row(actor, f"timer:{command.seq}", command.due)
                    batch.timers_delete.append(row)
                    batch.after.append(partial(self.engine.release_timer, row))
                case c.StartChild():
                    self._start_child(actor, batch, command)
                case c.RequestApproval():
                    event = self._record(actor, batch, partial(c.to_event, command))
                    state: ApprovalState = command.wait
                    state.requested_at = event.at
                    batch.approvals.append(self._approval_row(actor, state, ApprovalStatus.PENDING))
                case c.CreateWaitpoint():
                    self._record(actor, batch, partial(c.to_event, command))
                    wp = actor.driver.waitpoint_state(command.waitpoint_id)
                    assert wp is not None
                    batch.waitpoints.append(self._waitpoint_row(actor, wp))
                case c.CompleteWorkflow() | c.FailWorkflow() | c.CancelWorkflow():
                    self._record(actor, batch, partial(c.to_event, command))
                    self._close(actor, batch, command)
                    ended = True
                case c.ContinueAsNew():
                    self._continue_as_new(actor, batch, command)
                    ended = True
                case c.UpsertSearchAttributes():
                    self._record(actor, batch, partial(c.to_event, command))
                    attrs = {**actor.record.search_attributes, **command.attributes}
                    actor.record = _replace(actor.record, search_attributes=attrs)
                case _:
                    self._record(actor, batch, partial(c.to_event, command))
        # Every command of one activation is recorded before any attempt starts: replay matches
        # an activation's commands back to back, so a StepStarted may not come between them.
        # Fed to the driver too: it counts the step's attempts.
        if ended:
            # The run ended in this activation: its outcome stays its last event, and a step
            # it scheduled without awaiting never starts. (After continue-as-new the actor
            # already drives the successor, whose steps the nested call started.)
            return
        policy = self.engine.approval_policy
        for command in started:
            if policy is not None and policy.requires(
                command.name, actor.key[0], actor.record.workflow_type
            ):
                self._hold_for_approval(actor, batch, command)
            else:
                self._start_attempt(actor, batch, command, 1)

    def _start_attempt(
        self, actor: Actor, batch: _Batch, command: c.ScheduleStep, attempt: int
    ) -> None:
        self._feed(
            actor, batch, partial(_make, ev.StepStarted, step_seq=command.seq, attempt=attempt)
        )
        batch.after.append(partial(self._dispatch, actor, command, attempt))

    def _timer_row(self, actor: Actor, timer_id: str, due: datetime) -> TimerRow:
        assert actor.record is not None
        return TimerRow(due, actor.key[0], actor.key[1], timer_id, actor.record.run_id)

    def _close(self, actor: Actor, batch: _Batch, command: c.Command) -> None:
        assert actor.record is not None and actor.driver is not None
        status = _CLOSED_AS[type(command)]
        self._drop_all_timers(actor, batch)
        self._close_waits(actor, batch)
        # Closed when its closing event was recorded (this round's time).
        closed_at = batch.at or self.engine.now()
        actor.record = _replace(actor.record, status=status, closed_at=closed_at, waiting_on=())
        record = actor.record
        batch.after.append(lambda: self.engine.finished(record, command))

    def _drop_all_timers(self, actor: Actor, batch: _Batch) -> None:
        driver = actor.driver
        assert driver is not None
        for seq, due in driver.pending_timers():
            row = self._timer_row(actor, f"timer:{seq}", due)
            batch.timers_delete.append(row)
            batch.after.append(partial(self.engine.release_timer, row))
        for step in driver.pending_steps():
            if step.retry_due is not None:
                row = self._timer_row(actor, f"retry:{step.command.seq}", step.retry_due)
                batch.timers_delete.append(row)
                batch.after.append(partial(self.engine.release_timer, row))

    def _continue_as_new(self, actor: Actor, batch: _Batch, command: c.ContinueAsNew) -> None:
        assert actor.record is not None and actor.driver is not None
        new_run_id = new_id()
        self._record(actor, batch, lambda s, at: c.to_event(command, s, at, new_run_id=new_run_id))
        self._drop_all_timers(actor, batch)
        self._close_waits(actor, batch)
        carried = actor.driver.unconsumed_signals()
        old = actor.record
        definition = self.engine.definition(command.workflow_type)
        assert definition is not None
        started = self._record(
            actor,
            batch,
            lambda s, at: ev.WorkflowStarted(
                seq=s,
                at=at,
                workflow_id=old.workflow_id,
                run_id=new_run_id,
                workflow_type=command.workflow_type,
                input=command.input,
                tenant=old.tenant,
                parent_workflow_id=old.parent_workflow_id,
                parent_run_id=old.parent_run_id,
                code_version=self.engine.code_version,
                continued_from_run_id=old.run_id,
            ),
        )
        actor.record = _replace(
            old, run_id=new_run_id, run_started_at=started.at, status=Status.RUNNING, reason=""
        )
        actor.driver = self._new_driver(definition)
        try:
            commands = actor.driver.apply(started)
        except NondeterminismError as exc:
            raise _Block(_validate.error_text(exc)) from exc
        self._record_commands(actor, batch, commands)
        # Signals the run before received and never consumed go to the successor, in arrival
        # order and in this same write: what engine.signal() acknowledged is never lost.
        for name, payload in carried:
            if not _running(actor):
                break  # the successor ended at once (what it left unread ends with it)
            self._feed(
                actor,
                batch,
                partial(_make, ev.SignalReceived, name=name, payload=payload),
            )

    def _start_child(self, actor: Actor, batch: _Batch, command: c.StartChild) -> None:
        assert actor.record is not None
        tenant = actor.key[0]
        child_run_id = new_id()
        self._record(
            actor, batch, lambda s, at: c.to_event(command, s, at, child_run_id=child_run_id)
        )
        definition = self.engine.definition(command.workflow_type)
        assert definition is not None  # _record_commands blocks the run otherwise
        child_key = (tenant, command.workflow_id)
        if child_key in self.actors or child_key == actor.key:
            batch.after.append(partial(self.send, actor.key, _child_refused(command)))
            return
        child = Actor(child_key)
        child.driver = self._new_driver(definition)
        started, child.record = begin_run(
            tenant=tenant,
            workflow_id=command.workflow_id,
            run_id=child_run_id,
            workflow_type=command.workflow_type,
            input=command.input,
            at=self.engine.now(),
            parent_workflow_id=actor.key[1],
            parent_run_id=actor.record.run_id,
            code_version=self.engine.code_version,
        )
        child_batch = _Batch()
        child.head = 1
        child_batch.events.append(started)
        try:
            self._record_commands(child, child_batch, child.driver.apply(started))
            child.record = self._with_waiting(child)
        except (_Block, NondeterminismError) as exc:
            # The child's own first step cannot be taken (say, a grandchild type that is not
            # registered): the child starts parked BLOCKED, as a top-level start would.
            reason = _validate.error_text(exc)
            log.error("run %s/%s is BLOCKED: %s", tenant, command.workflow_id, reason)
            child_batch = _Batch()
            child_batch.events += [started, ev.WorkflowBlocked(seq=2, at=started.at, reason=reason)]
            child.head = 2
            child.record = _replace(child.record, status=Status.BLOCKED, reason=reason)
            child.driver = None
        batch.children.append(
            _ChildStart(
                append=Append(command.workflow_id, child_batch.events, 0, tenant),
                batch=child_batch,
                actor=child,
                refused=_child_refused(command),
            )
        )

    async def commit_blocked(self, actor: Actor, batch: _Batch, reason: str) -> None:
        """Commit what the batch recorded so far, then park the run BLOCKED with ``reason``.

        The event that the code diverged on stays recorded, so a replay after the fix sees it.
        """
        assert actor.record is not None
        log.error("run %s/%s is BLOCKED: %s", actor.key[0], actor.key[1], reason)
        self._record(actor, batch, partial(_make, ev.WorkflowBlocked, reason=reason))
        if actor.driver is not None:
            actor.record = self._with_waiting(actor)  # what it waits on after this round
        actor.record = _replace(actor.record, status=Status.BLOCKED, reason=reason)
        try:
            await self._commit(actor, batch)
        except BaseException:
            self._parked(actor)
            raise
        await self._after_block(actor, actor.record)

    async def _after_block(self, actor: Actor, record: WorkflowRecord) -> None:
        """The run was just parked BLOCKED: the mail left is kept or refused now. A retry
        asked for before it blocked (again) is answered with ``WorkflowBlocked``: the run is
        not retried at once, which would spin on a cause that is still there."""
        while actor.mailbox:
            wake = await self._hold(actor, record)
            if wake is not None and wake.reply is not None:
                wake.reply.set(WorkflowBlocked(actor.key[1], record.reason, "the retry"))
        self._parked(actor)

    def _parked(self, actor: Actor) -> None:
        """The run is parked BLOCKED: no driver; an actor with no mail leaves memory (mail
        that comes later activates a fresh one, which keeps or refuses it)."""
        actor.driver = None
        actor.blocked = True
        if not actor.mailbox and self.actors.get(actor.key) is actor:
            del self.actors[actor.key]

    # --- commit and side effects ------------------------------------------------------------------

    async def _commit(self, actor: Actor, batch: _Batch) -> None:
        if not (
            batch.events
            or batch.timers_delete
            or batch.inbox_delete
            or batch.waitpoints
            or batch.approvals
        ):
            for action in batch.after:  # nothing to record, but things to re-arm
                action()
            _answer(batch)
            return
        assert actor.record is not None
        expected = actor.head - len(batch.events)
        if actor.driver is not None and actor.record.status is not Status.BLOCKED:
            actor.record = self._with_waiting(actor)
        if batch.children:
            await self._check_children(actor, batch)
        appends: list[Append] = []
        if batch.events:
            appends.append(Append(actor.key[1], batch.events, expected, actor.key[0]))
        records = [actor.record]
        timers_add, approvals, waitpoints = batch.timers_add, batch.approvals, batch.waitpoints
        for child in batch.children:
            assert child.actor.record is not None
            appends.append(child.append)
            records.append(child.actor.record)
            timers_add = [*timers_add, *child.batch.timers_add]
            approvals = [*approvals, *child.batch.approvals]
            waitpoints = [*waitpoints, *child.batch.waitpoints]
        write = Write(
            appends=appends,
            workflows=records,
            timers_add=timers_add,
            timers_delete=batch.timers_delete,
            approvals=approvals,
            waitpoints=waitpoints,
            inbox_delete=batch.inbox_delete,
        )
        try:
            await self.engine.store.commit(write)
        except BaseException as exc:
            if not (isinstance(exc, Exception) and appends and await self._landed(appends[0], exc)):
                for reply in batch.replies:
                    reply.set(exc if isinstance(exc, Exception) else None)
                raise
        for action in batch.after:
            action()
        for child in batch.children:
            if child.actor.driver is not None:
                self.actors.setdefault(child.actor.key, child.actor)
            for action in child.batch.after:
                action()
        _answer(batch)

    async def _check_children(self, actor: Actor, batch: _Batch) -> None:
        """A child whose id is taken (a run in the store, or a sibling in this write) is not
        started: the parent's ``ctx.child`` gets an error naming the id once this is recorded.

        (A start that races this check makes the write fail with SequenceConflict; the parent
        restarts by replay and this check then sees the id taken.)
        """
        store = self.engine.store
        kept: list[_ChildStart] = []
        taken: set[str] = set()
        for child in batch.children:
            workflow_id = child.append.workflow_id
            if workflow_id in taken or await store.head(workflow_id, tenant=child.append.tenant):
                batch.after.append(partial(self.send, actor.key, child.refused))
            else:
                taken.add(workflow_id)
                kept.append(child)
        batch.children = kept

    async def _landed(self, append: Append, error: Exception) -> bool:
        """Lost acknowledgement: the commit reported ``error`` but may have happened. Re-read
        the history's tail: if our events are there, the write is done (it was atomic)."""
        if isinstance(error, _NOTHING_WRITTEN):
            return False
        try:
            tail = await self.engine.store.read_history(
                append.workflow_id, tenant=append.tenant, from_seq=append.expected_seq + 1
            )
        except Exception:
            return False
        ours = list(append.events)
        if tail[: len(ours)] != ours:
            return False
        log.warning(
            "the commit for %s/%s reported %s: %s, but its events are recorded; continuing",
            append.tenant,
            append.workflow_id,
            type(error).__name__,
            error,
        )
        return True

    def _with_waiting(self, actor: Actor) -> WorkflowRecord:
        assert actor.record is not None and actor.driver is not None
        if actor.record.status.is_terminal:
            return actor.record
        pending = actor.driver.pending()
        waiting = tuple(
            f"{PENDING_KINDS[kind]}:{name}" for kind, names in pending.items() for name in names
        )
        return _replace(actor.record, waiting_on=waiting)

    def _dispatch(self, actor: Actor, command: c.ScheduleStep, attempt: int) -> None:
        assert actor.record is not None
        tenant, workflow_id = actor.key
        run_id = actor.record.run_id
        info = StepInfo(
            workflow_id=workflow_id,
            run_id=run_id,
            step_seq=command.seq,
            name=command.name,
            attempt=attempt,
            idempotency_key=f"{tenant}/{workflow_id}/{run_id}/{command.seq}",
            tenant=tenant,
        )
        actor.steps_in_flight += 1
        key = actor.key
        running = (tenant, workflow_id, run_id, command.seq, attempt)
        self.steps_running.add(running)

        def done(job: StepJob, value: Any, error: BaseException | None) -> None:
            self.steps_running.discard(running)
            current = self.actors.get(key)
            if current is not None:
                current.steps_in_flight = max(0, current.steps_in_flight - 1)
            self.send(
                key,
                Message(
                    "step",
                    {
                        "seq": command.seq,
                        "attempt": attempt,
                        "value": value,
                        "error": error,
                        "run_id": run_id,
                    },
                ),
            )

        self.engine.executor.submit(
            StepJob(info, command.fn, command.args, command.kwargs, command.timeout, done)
        )

    # --- faults ---------------------------------------------------------------------------------

    async def _crashed(self, actor: Actor, exc: Exception) -> None:
        if isinstance(exc, _Block):
            await self._park(actor, exc, exc.reason, "")
            return
        log.warning(
            "run %s crashed in the engine; restarting it by replay", actor.key, exc_info=exc
        )
        actor.driver = None
        now = self.engine.clock.now()
        window = self.engine.restart_window
        actor.restarts = [t for t in actor.restarts if t > now - window] + [now]
        if len(actor.restarts) > self.engine.max_restarts:
            trace = _validate.storable("".join(traceback.format_exception(exc)[-30:]))
            await self._park(
                actor,
                exc,
                f"crash loop: {type(exc).__name__}: {_validate.error_text(exc)}",
                "the engine failed on this run repeatedly; fix the cause, then "
                f"`aion unblock {actor.key[1]}` (or restart the engine). Last traceback:\n" + trace,
            )
            return
        if actor.mailbox or actor.steps_in_flight == 0:
            self.engine.restart_later(actor.key, self.engine.restart_backoff(len(actor.restarts)))

    async def _park(self, actor: Actor, exc: Exception, reason: str, hint: str) -> None:
        """Park the run BLOCKED; if even that cannot be recorded (say, the disk is full), answer
        its waiting requests with the error and try again later: never spin, never strand."""
        try:
            await self._block(actor, reason, hint)
        except Exception as failure:
            log.error("could not park run %s as BLOCKED (%s); retrying later", actor.key, failure)
            error = failure if isinstance(failure, AionError) else AionError(str(failure))
            self._drop_mail(actor, error)
            actor.driver = None
            self.engine.restart_later(actor.key, self.engine.restart_backoff(10))

    async def _block(self, actor: Actor, reason: str, hint: str) -> None:
        """Park the run BLOCKED with ``reason``; it resumes after a fix and a restart."""
        tenant, workflow_id = actor.key
        store = self.engine.store
        record = await store.get_workflow(workflow_id, tenant=tenant)
        if record is None:
            return
        detail = f"{reason} {hint}".strip()
        if record.status is Status.BLOCKED and record.reason == reason:
            # A retry (unblock, restart) found the same cause: one marker per blocking.
            log.warning("run %s/%s is still BLOCKED: %s", tenant, workflow_id, detail)
        else:
            head = await store.head(workflow_id, tenant=tenant)
            log.error("run %s/%s is BLOCKED: %s", tenant, workflow_id, detail)
            blocked = ev.WorkflowBlocked(
                seq=head + 1, at=self.engine.now(), reason=reason, detail=hint
            )
            record = _replace(record, status=Status.BLOCKED, reason=reason)
            await store.commit(
                Write(appends=[Append(workflow_id, [blocked], head, tenant)], workflows=[record])
            )
        await self._after_block(actor, record)

    def _drop_mail(self, actor: Actor, error: AionError | None) -> None:
        while actor.mailbox:
            message = actor.mailbox.popleft()
            if message.reply is not None:
                message.reply.set(error)

    def _maybe_evict(self) -> None:
        limit = self.engine.max_resident_runs
        excess = len(self.actors) - limit
        if excess <= 0:
            return
        # Oldest first; stop as soon as enough idle runs are found, and look at no more than
        # EVICTION_SCAN runs: when the oldest are all busy (a backlog of woken runs), a full walk
        # on every processing round is quadratic. Busy runs move to the end once processed, so
        # idle ones surface and a later round evicts them.
        idle: list[Key] = []
        for key, actor in itertools.islice(self.actors.items(), EVICTION_SCAN):
            if actor.idle:
                idle.append(key)
                if len(idle) >= excess:
                    break
        for key in idle:
            del self.actors[key]


_CLOSED_AS: dict[type[c.Command], Status] = {
    c.CompleteWorkflow: Status.COMPLETED,
    c.FailWorkflow: Status.FAILED,
    c.CancelWorkflow: Status.CANCELLED,
}


def _refuse_later(batch: _Batch, reply: Reply, error: AionError) -> None:
    batch.replies.append(reply)
    batch.refused.append((reply, error))


def _answer(batch: _Batch) -> None:
    """The round is recorded: refusals get their error, everything else its acknowledgement."""
    for reply, error in batch.refused:
        reply.set(error)
    for reply in batch.replies:
        reply.set()


def _closed_error(actor: Actor, message: Message) -> AionError:
    """What mail that reaches a run after it ended gets (e.g. the loser of a decision race)."""
    workflow_id = actor.key[1]
    if message.kind == "decide":
        return NoPendingApproval(
            f"workflow {workflow_id!r} has finished: its approvals are closed (decided "
            "already, or ended with the run); nothing was recorded"
        )
    if message.kind == "complete":
        return WaitpointClosed(
            f"workflow {workflow_id!r} has finished: its waitpoints are closed; nothing was "
            "recorded"
        )
    return WorkflowClosed(f"workflow {workflow_id!r} has finished")


def _finished(actor: Actor) -> bool:
    """The run closed and its close is recorded (a crash drops the driver instead)."""
    return actor.driver is not None and actor.record is not None and actor.record.status.is_terminal


def _running(actor: Actor) -> bool:
    """Whether the actor's current run (after continue-as-new: the successor) is open."""
    return actor.driver is not None and actor.driver.outcome is None


def _make(cls: type[ev.Event], seq: int, at: datetime, **fields: Any) -> ev.Event:
    return cls(seq=seq, at=at, **fields)


class _Block(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _replace(record: WorkflowRecord, **changes: Any) -> WorkflowRecord:
    return msgspec.structs.replace(record, **changes)
