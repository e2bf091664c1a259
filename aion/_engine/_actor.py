"""Run actors: activation by replay, one round per batch of mail, commit, crash and park.

An actor is not a task. It is a mailbox and, while resident, a replay driver (see
:mod:`._scheduler` for how actors with mail reach a worker, and :mod:`._recorder` for what a
round records). Processing one actor: activate it if it is not resident (replay its current
run segment; re-run interrupted steps, re-arm timers); drain its mailbox through the recorder;
commit the round in one write (group-committed with every other actor's), checking a lost
acknowledgement against the history; then carry out the round's effects. A failed commit or any
engine error drops the driver: the actor restarts by replay, with backoff, and is parked BLOCKED
past its restart budget. A BLOCKED run keeps the mail that must not be lost in the inbox.

The runtime knows nothing of :class:`aion.Engine`: it is given a :class:`~._config.RuntimeConfig`
and :class:`~._config.Services`.

(A little over ~600 lines, kept whole: activation, commit and parking share the rules about
what a run may lose and what it must keep, and read best side by side.)
"""

from __future__ import annotations

import logging
import random
import re
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from aion import _tracing, _validate
from aion import events as ev
from aion._replay import Driver, WorkflowDefinition
from aion._replay import _commands as c
from aion._supervision import Backoff, RestartBudget
from aion.errors import (
    AionError,
    InvalidArgument,
    NondeterminismError,
    PartitionLost,
    PayloadError,
    SequenceConflict,
    StoreFull,
    WorkflowBlocked,
    WorkflowClosed,
    WorkflowNotFound,
)
from aion.store import Append, InboxCommand, Status, WorkflowRecord, Write

from ._config import RuntimeConfig, Services
from ._messages import (
    Cancel,
    ChildDone,
    Decide,
    Message,
    Outcome,
    Reply,
    StepDone,
    TimerDue,
    Wake,
    to_inbox,
)
from ._metrics import Metrics
from ._recorder import Recorder
from ._round import (
    Blocked,
    CancelChild,
    CheckChild,
    ChildStart,
    DispatchStep,
    Effect,
    HoldTimer,
    Mail,
    ReleaseTimer,
    Round,
    RunClosed,
    RunStart,
)
from ._scheduler import Scheduler
from ._state import Actor, Key
from ._steps import StepJob
from ._types import StepInfo

__all__ = ["Runtime"]

log = logging.getLogger("aion.engine")

#: Commit errors that guarantee nothing was written (no lost-acknowledgement check needed).
_NOTHING_WRITTEN = (SequenceConflict, StoreFull, PayloadError, InvalidArgument, PartitionLost)

#: A parent id that ends like a continued run's segment of a default child id.
_RUN_SEGMENT = re.compile(r"/[0-9a-f]{32}\Z")

#: Restarts of a crashed run: 50 ms after its first crash, doubling to 5 s, with jitter.
RUN_BACKOFF = Backoff(initial=0.05, maximum=5.0, multiplier=2.0, jitter=0.5, immediate_first=False)


class Runtime:
    """The run actors of one engine and everything that moves them."""

    def __init__(
        self, config: RuntimeConfig, services: Services, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.services = services
        #: Counted here once a round is committed (the recorder's notes), and at restarts.
        self.metrics = metrics if metrics is not None else Metrics()
        self.recorder = Recorder(
            config, now=services.now, definition=services.definition, new_driver=self.new_driver
        )
        self.scheduler = Scheduler(
            process=self._process,
            crashed=self._crashed,
            busy=services.busy,
            max_resident=config.max_resident_runs,
            max_resident_bytes=config.max_resident_bytes,
            workers=config.activation_workers,
            elsewhere=lambda key: not services.drives(key),
        )
        self.actors = self.scheduler.actors
        self.send = self.scheduler.send
        # Steps executing in this process: (tenant, workflow id, run id, step, attempt). A run
        # re-activated by replay must not dispatch them a second time.
        self.steps_running: set[tuple[Any, ...]] = set()
        self._rng = random.Random()

    def new_driver(self, definition: WorkflowDefinition) -> Driver:
        services = self.services
        return Driver(
            definition,
            max_payload_bytes=self.config.max_payload_bytes,
            resolve=services.definition,
            sign=services.sign_waitpoint,
            watch=services.activation_watch,
        )

    def idle(self) -> bool:
        return self.scheduler.idle()

    def running_here(self, key: Key) -> bool:
        """The run is resident and unfinished: ``run_closed`` will be told when it closes."""
        actor = self.actors.get(key)
        return (
            actor is not None
            and actor.running
            and actor.record is not None
            and not actor.record.status.is_terminal
        )

    def release(self, error: AionError) -> None:
        """The engine stops: whoever waits on a reply gets ``error``."""
        for actor in self.actors.values():
            for message in actor.mailbox:
                if message.reply is not None:
                    message.reply.set(error)

    # --- starting runs --------------------------------------------------------------------------

    async def start(
        self, start: RunStart, *, inbox_id: str | None = None, error: AionError | None = None
    ) -> WorkflowRecord:
        """Record a new run (its start and its first round) and make it resident.

        ``error``: the input does not fit the workflow: the run is recorded failed with it (a
        start another process left in the inbox). ``inbox_id``: the command it applies.

        Raises:
            SequenceConflict: the workflow id is taken (nothing recorded).
        """
        key = (start.tenant, start.workflow_id)
        with self.services.busy():
            if error is not None:
                actor, rnd = self.recorder.failed_start(start, error)
                blocked = None
            else:
                actor, rnd, blocked = self.recorder.begin(start)
            if inbox_id is not None:
                rnd.inbox_delete.append(inbox_id)
            # Registered but marked queued: no worker touches it until its start is recorded.
            actor.queued = True
            self.actors[key] = actor
            try:
                if blocked is None:
                    await self._commit(actor, rnd)
                else:
                    await self._commit_parked(actor, rnd)
            except SequenceConflict:
                # The id was taken: mail that arrived meanwhile goes to an actor that activates
                # from the store.
                self.scheduler.forget(actor)
                for message in actor.mailbox:
                    self.send(key, message)
                raise
            except BaseException:
                self.scheduler.forget(actor)
                raise
            assert actor.record is not None
            if blocked is not None:
                return actor.record
            self.scheduler.charge(actor)
            actor.queued = False
            if actor.mailbox:
                self.scheduler.schedule(actor)
            elif actor.record.status.is_terminal:
                self.scheduler.forget(actor)
            else:
                self.scheduler.evict()
            return actor.record

    # --- activation -----------------------------------------------------------------------------

    async def _activate(self, actor: Actor) -> bool:
        """Load and replay the current run. False if the workflow is gone or finished."""
        tenant, workflow_id = actor.key
        store = self.services.store
        record = await store.get_workflow(workflow_id, tenant=tenant)
        if record is None or record.status.is_terminal:
            error: AionError = (
                WorkflowNotFound(workflow_id, tenant)
                if record is None
                else WorkflowClosed(workflow_id, record.status.value)
            )
            # A timer that fires for a closed run only leaves its row behind: delete it.
            rows = [m.row for m in actor.mailbox if isinstance(m, TimerDue)]
            if rows:
                await store.commit(Write(timers_delete=rows))
            self._drop_mail(actor, error)
            self.scheduler.forget(actor)
            return False
        wake: Message | None = None
        if record.status is Status.BLOCKED:
            wake = await self._hold(actor, record)
            if wake is None:
                self._parked(actor)  # nothing asked to retry it: it stays parked
                return False
        try:
            identity = wake.identity if isinstance(wake, Wake) else ""
            blocked = await self._replay_run(actor, record, identity)
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

    async def _replay_run(
        self, actor: Actor, record: WorkflowRecord, identity: str = ""
    ) -> str | None:
        """Replay the current run segment and record what it issues past its history. None
        once it runs, or why it is (still) parked BLOCKED (``identity``: who asked to retry a
        BLOCKED run)."""
        tenant, workflow_id = actor.key
        actor.record = record  # first: a crash while reading is counted under its type
        segment = await self.services.store.read_current_run(workflow_id, tenant=tenant)
        if segment and isinstance(segment[0], ev.WorkflowStarted):
            actor.trace = segment[0].trace
        actor.head = segment[-1].seq if segment else 0
        actor.since = segment[0].seq if segment else 1
        definition = self.services.definition(record.workflow_type)
        if definition is None:
            reason = f"workflow type {record.workflow_type!r} is not registered with this engine"
            await self._block(
                actor,
                reason,
                "register it with Engine(..., workflows=[...]) and restart the engine",
            )
            return reason
        driver = self.new_driver(definition)
        try:
            driver.replay(segment)
        except NondeterminismError as exc:
            reason = _validate.error_text(exc)
            await self._block(actor, reason, "")
            return reason
        driver.take_closed()  # their rows were updated when they happened
        actor.driver = driver
        actor.blocked = False
        rnd = Round()
        if record.status is Status.BLOCKED:
            self.recorder.unblocked(actor, rnd, identity)
        # Commands the code issued past the recorded history (e.g. after a code fix).
        self.recorder.record_commands(actor, rnd, driver.take_commands())
        run_id = record.run_id
        firing = {
            m.row.timer_id
            for m in actor.mailbox
            if isinstance(m, TimerDue) and m.row.run_id == run_id
        }
        self.recorder.resume_in_flight(actor, rnd, firing, self.steps_running.__contains__)
        await self._commit(actor, rnd)
        return None

    async def _hold(self, actor: Actor, record: WorkflowRecord) -> Message | None:
        """The run is parked BLOCKED: keep what must not be lost, up to the first ``Wake``.

        A ``Wake`` (``unblock``, a restart's recovery) retries the run: it is returned (taken
        out of the mailbox).
        Until then signals, waitpoint completions and cancellations are kept in the inbox (those
        that came from it stay there) and applied in arrival order once the run runs again
        (``_take_held``); a decision is refused with ``WorkflowBlocked``, since it must be
        taken against what the run waits on then. Timer firings, step results and child
        outcomes are let go: the replay that unblocks the run re-arms its timers, runs its
        interrupted steps again and asks its children again. Nothing is appended to the
        history: a webhook retried every second during an outage does not grow it.
        """
        while True:
            await self._keep_held(actor, record)
            # Mail that came while the kept commands were being written is held the same way:
            # only a ``Wake`` retries the run.
            if actor.mailbox and not isinstance(actor.mailbox[0], Wake):
                continue
            return actor.mailbox.popleft() if actor.mailbox else None

    async def _keep_held(self, actor: Actor, record: WorkflowRecord) -> None:
        """Keep (or refuse) the mail before the first ``Wake``; see :meth:`_hold`."""
        tenant, workflow_id = actor.key
        keep: list[InboxCommand] = []
        kept: list[Reply] = []
        refused: list[tuple[Reply, AionError]] = []
        at = self.services.now()
        while actor.mailbox and not isinstance(actor.mailbox[0], Wake):
            message = actor.mailbox.popleft()
            if message.inbox_id is not None:
                continue  # it waits in the inbox already
            if isinstance(message, Decide):
                if message.reply is not None:
                    refusal = WorkflowBlocked(workflow_id, record.reason, "the decision")
                    refused.append((message.reply, refusal))
                continue
            command = to_inbox(message, tenant, workflow_id, at)
            if command is None:
                continue  # re-derived by the replay that unblocks it
            keep.append(command)
            if message.reply is not None:
                kept.append(message.reply)
        if keep:
            try:
                await self.services.store.commit(Write(inbox_put=keep))
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

    async def _take_held(self, actor: Actor) -> None:
        """The run runs again: what was kept for it while BLOCKED comes first, in arrival
        order (the inbox's ids are time-ordered)."""
        store = self.services.store
        held: list[Message] = []
        after: str | None = None
        while True:
            rows = await store.read_inbox(limit=500, after=after)
            for row in rows:
                if (row.tenant, row.workflow_id) == actor.key and row.kind not in (
                    "unblock",
                    "start",
                ):
                    message = self.services.inbox_message(row)
                    if not isinstance(message, str):
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
            pending = await self.services.store.inbox_pending(ids)
            checked |= ids
            gone = ids - pending
            if gone:
                actor.mailbox = deque(m for m in actor.mailbox if m.inbox_id not in gone)

    # --- processing -----------------------------------------------------------------------------

    async def _process(self, actor: Actor) -> None:
        if not self.services.drives(actor.key):
            self._let_go(actor)
            return
        if actor.driver is None and not await self._activate(actor):
            return
        assert actor.record is not None
        if _tracing.enabled():  # (after the replay: replay makes no spans, and knows the trace)
            workflow_type = actor.record.workflow_type
            with _tracing.activation_span(actor.trace, workflow_type, actor.key):
                await self._process_mail(actor)
            return
        await self._process_mail(actor)

    async def _process_mail(self, actor: Actor) -> None:
        assert actor.driver is not None and actor.record is not None
        if any(m.inbox_id is not None for m in actor.mailbox):
            await self._drop_applied(actor)
        rnd = Round()
        recorder = self.recorder
        # actor.running, not the driver now: after continue-as-new the successor takes the
        # rest of the mail (a signal sent with the one that ended the run is not "closed").
        while actor.mailbox and actor.running:
            message = actor.mailbox.popleft()
            if message.reply is not None:
                rnd.replies.append(message.reply)
            if message.inbox_id is not None:
                if message.inbox_id in rnd.inbox_delete:
                    continue  # the same command twice in one round
                rnd.inbox_delete.append(message.inbox_id)
            try:
                recorder.handle(actor, rnd, message)
            except Blocked as block:
                recorder.blocked(actor, rnd, block.reason)
                await self._commit_parked(actor, rnd)
                return
        if actor.mailbox and not actor.running:  # the run ended: later mail finds it closed
            for message in actor.mailbox:
                if message.reply is not None:
                    rnd.refuse(message.reply, recorder.closed_error(actor, message))
                if message.inbox_id is not None:
                    rnd.inbox_delete.append(message.inbox_id)
            actor.mailbox.clear()
        await self._commit(actor, rnd)

    async def _commit_parked(self, actor: Actor, rnd: Round) -> None:
        """Commit a round that parked the run BLOCKED (the recorder recorded why)."""
        assert actor.record is not None
        log.error("run %s/%s is BLOCKED: %s", actor.key[0], actor.key[1], actor.record.reason)
        try:
            await self._commit(actor, rnd)
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
        actor.drop_driver()
        actor.blocked = True
        if not actor.mailbox:
            self.scheduler.forget(actor)

    # --- commit and side effects ------------------------------------------------------------------

    async def _commit(self, actor: Actor, rnd: Round) -> None:
        if not rnd.writes:
            self._carry_out(actor, rnd.effects)  # nothing to record, but things to re-arm
            rnd.answer()
            return
        assert actor.record is not None
        expected = actor.head - len(rnd.events)
        if actor.driver is not None and actor.record.status is not Status.BLOCKED:
            actor.record = self.recorder.with_waiting(actor)
        if rnd.children:
            await self._check_children(rnd, set())
        appends: list[Append] = []
        if rnd.events:
            appends.append(Append(actor.key[1], rnd.events, expected, actor.key[0]))
        records = [actor.record]
        timers_add, timers_delete = rnd.timers_add, rnd.timers_delete
        approvals, waitpoints = rnd.approvals, rnd.waitpoints
        children = list(_descendants(rnd)) if rnd.children else []
        for child in children:
            assert child.actor.record is not None
            appends.append(child.append)
            records.append(child.actor.record)
            timers_add = [*timers_add, *child.round.timers_add]
            timers_delete = [*timers_delete, *child.round.timers_delete]
            approvals = [*approvals, *child.round.approvals]
            waitpoints = [*waitpoints, *child.round.waitpoints]
        write = Write(
            appends=appends,
            workflows=records,
            timers_add=timers_add,
            timers_delete=timers_delete,
            approvals=approvals,
            waitpoints=waitpoints,
            inbox_delete=rnd.inbox_delete,
        )
        try:
            await self.services.store.commit(write)
        except BaseException as exc:
            if not (isinstance(exc, Exception) and appends and await self._landed(appends[0], exc)):
                for reply in rnd.replies:
                    reply.set(exc if isinstance(exc, Exception) else None)
                raise
        if rnd.tally:
            self.metrics.tally(rnd.tally)
        self._carry_out(actor, rnd.effects)
        for child in children:
            if child.round.tally:
                self.metrics.tally(child.round.tally)
            if child.actor.driver is not None:
                self.actors.setdefault(child.actor.key, child.actor)
            self._carry_out(child.actor, child.round.effects)
        rnd.answer()

    async def _check_children(self, rnd: Round, taken: set[Key]) -> None:
        """A child whose id is taken (a run in the store or in memory, or a sibling in this
        write) is not started: the ``ctx.child`` of the run that started it gets an error
        naming the id once this is recorded. Children that children start in their first
        round are checked the same way.

        (A start that races this check makes the write fail with SequenceConflict; the parent
        restarts by replay and this check then sees the id taken.)
        """
        store = self.services.store
        kept = []
        for child in rnd.children:
            key = child.actor.key
            if not self.services.same_partition(child.refused_to, key):
                refusal = (
                    f"child id {key[1]!r} is in another partition of the shared store than "
                    f"its parent {child.refused_to[1]!r}: a child is written with its parent, "
                    "so with several engines it needs the default id (ctx.child without "
                    "workflow_id=) or one that starts with the parent's id and "
                    "'/child-<number>'"
                )
                if _RUN_SEGMENT.search(child.refused_to[1]):
                    refusal += (
                        " (the parent's id ends in '/' and 32 hex digits, which its default "
                        "children's ids read as a continued run's: give such workflows ids "
                        "with another separator, e.g. 'order-<hex>')"
                    )
                refused = msgspec.structs.replace(child.refused, refusal=refusal)
                rnd.effects.append(Mail(child.refused_to, refused))
            elif (
                key in taken
                or key in self.actors
                or await store.head(child.append.workflow_id, tenant=child.append.tenant)
            ):
                rnd.effects.append(Mail(child.refused_to, child.refused))
            else:
                taken.add(key)
                kept.append(child)
                if child.round.children:
                    await self._check_children(child.round, taken)
        rnd.children = kept

    async def _landed(self, append: Append, error: Exception) -> bool:
        """Lost acknowledgement: the commit reported ``error`` but may have happened. Re-read
        the history's tail: if our events are there, the write is done (it was atomic)."""
        if isinstance(error, _NOTHING_WRITTEN):
            return False
        try:
            tail = await self.services.store.read_history(
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

    def _carry_out(self, actor: Actor, effects: list[Effect]) -> None:
        """The round is recorded: do what it asked for."""
        services = self.services
        for effect in effects:
            match effect:
                case DispatchStep(command=command, attempt=attempt):
                    self._dispatch(actor, command, attempt)
                case HoldTimer(row=row):
                    services.hold_timer(row)
                case ReleaseTimer(row=row):
                    services.release_timer(row)
                case RunClosed(record=record, outcome=outcome):
                    services.run_closed(record, outcome)
                    if record.parent_workflow_id is not None:
                        parent = (record.tenant, record.parent_workflow_id)
                        self.send(parent, ChildDone(child_id=record.workflow_id, outcome=outcome))
                case CheckChild(child_id=child_id):
                    self._check_child(actor.key, child_id)
                case CancelChild(child_id=child_id):
                    self.send((actor.key[0], child_id), Cancel(reason="parent cancelled"))
                case Mail(key=key, message=message):
                    self.send(key, message)

    def _check_child(self, parent: Key, child_id: str) -> None:
        """After a parent replays: a child that finished while nobody listened reports now
        (if the engine stops first, the parent asks again when it next replays)."""

        async def check() -> None:
            store = self.services.store
            record = await store.get_workflow(child_id, tenant=parent[0])
            if record is None or not record.status.is_terminal:
                return
            events = await store.read_current_run(child_id, tenant=parent[0])
            outcome = Outcome.of_event(events[-1]) if events else None
            if outcome is not None:
                self.send(parent, ChildDone(child_id=child_id, outcome=outcome))

        self.services.spawn(check)

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
                StepDone(seq=command.seq, attempt=attempt, run_id=run_id, value=value, error=error),
            )

        self.services.submit_step(
            StepJob(
                info,
                command.fn,
                command.args,
                command.kwargs,
                command.timeout,
                done,
                actor.record.workflow_type,
                actor.trace,
            )
        )

    # --- faults ---------------------------------------------------------------------------------

    async def _crashed(self, actor: Actor, exc: Exception) -> None:
        if isinstance(exc, PartitionLost):
            log.info("run %s/%s is driven by another engine now: %s", *actor.key, exc)
            self._let_go(actor)
            return
        if isinstance(exc, Blocked):
            await self._park(actor, exc.reason, "")
            return
        log.warning(
            "run %s crashed in the engine; restarting it by replay", actor.key, exc_info=exc
        )
        actor.drop_driver()
        budget = actor.restarts
        if budget is None:
            budget = actor.restarts = RestartBudget(
                self.config.max_restarts, self.config.restart_window, RUN_BACKOFF, rng=self._rng
            )
        if not budget.record(self.services.monotonic()):
            trace = _validate.storable("".join(traceback.format_exception(exc)[-30:]))
            await self._park(
                actor,
                f"crash loop: {type(exc).__name__}: {_validate.error_text(exc)}",
                "the engine failed on this run repeatedly; fix the cause, then "
                f"`aion unblock {actor.key[1]}` (or restart the engine). Last traceback:\n" + trace,
            )
            return
        workflow_type = actor.record.workflow_type if actor.record is not None else ""
        self.metrics.workflow_restarts.inc((workflow_type,))
        if actor.mailbox or actor.steps_in_flight == 0:
            self.restart_later(actor.key, budget.delay())

    # --- runs another engine drives (a shared store's partitions) ---------------------------------

    def let_go(self, elsewhere: Callable[[Key], bool]) -> None:
        """The runs ``elsewhere`` is true of are driven by another engine now: the idle ones
        leave memory at once; one with mail or work leaves when it is next processed."""
        for actor in [a for a in self.actors.values() if elsewhere(a.key)]:
            if actor.idle:
                self.scheduler.forget(actor)
            elif not actor.busy:
                self.scheduler.schedule(actor)

    def _let_go(self, actor: Actor) -> None:
        """The run is driven by another engine: leave memory, writing nothing. A request
        waiting on it gets ``PartitionLost`` (the engine's methods then queue it for the new
        owner); mail from the inbox stays there for the new owner; step outcomes and timer
        firings are the new owner's to make again (steps are at least once)."""
        error = PartitionLost(
            f"workflow {actor.key[1]!r} is driven by another engine now; nothing of this "
            "request was recorded here"
        )
        self._drop_mail(actor, error)
        self.scheduler.forget(actor)

    def restart_later(self, key: Key, delay: float) -> None:
        """Wake the run after ``delay`` seconds (if the engine stops first, the next engine's
        recovery sweep takes the run up)."""

        async def later() -> None:
            await self.services.sleep(delay)
            self.send(key, Wake())

        self.services.spawn(later)

    async def _park(self, actor: Actor, reason: str, hint: str) -> None:
        """Park the run BLOCKED; if even that cannot be recorded (say, the disk is full), answer
        its waiting requests with the error and try again later: never spin, never strand."""
        try:
            await self._block(actor, reason, hint)
        except Exception as failure:
            log.error("could not park run %s as BLOCKED (%s); retrying later", actor.key, failure)
            error = failure if isinstance(failure, AionError) else AionError(str(failure))
            self._drop_mail(actor, error)
            actor.drop_driver()
            self.restart_later(actor.key, RUN_BACKOFF.maximum * (0.5 + self._rng.random()))

    async def _block(self, actor: Actor, reason: str, hint: str) -> None:
        """Park the run BLOCKED with ``reason``; it resumes after a fix and a restart."""
        tenant, workflow_id = actor.key
        store = self.services.store
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
                seq=head + 1, at=self.services.now(), reason=reason, detail=hint
            )
            newly = record.status is not Status.BLOCKED
            record = _blocked_record(record, reason)
            await store.commit(
                Write(appends=[Append(workflow_id, [blocked], head, tenant)], workflows=[record])
            )
            if newly:
                self.metrics.tally([("blocked", ())])
        await self._after_block(actor, record)

    def _drop_mail(self, actor: Actor, error: AionError | None) -> None:
        while actor.mailbox:
            message = actor.mailbox.popleft()
            if message.reply is not None:
                message.reply.set(error)


def _descendants(rnd: Round) -> Iterator[ChildStart]:
    """The children a round starts, and theirs (started in their first round), parents first."""
    for child in rnd.children:
        yield child
        yield from _descendants(child.round)


def _blocked_record(record: WorkflowRecord, reason: str) -> WorkflowRecord:
    return msgspec.structs.replace(record, status=Status.BLOCKED, reason=reason)
