"""Supervisors: start children in order, restart them by strategy, stop them, escalate.

Somewhat over 600 lines because it is one thing: the OTP supervisor process, its control loop
and the decisions that loop makes. What could stand alone lives beside it: the dynamic variant
(``_dynamic``), the requests in its inbox (``_calls``), child slots and stopping them
(``_children``), the restart budget (``_budget``).

Each supervisor run is one control loop (the OTP supervisor process) plus one wrapper task per
running child. A wrapper catches its child's ``Exception`` and posts the exit to the loop's
inbox, so the anyio task group that holds the children never sees a child's error: without the
wrappers the group would behave like ``ONE_FOR_ALL`` with no restarts. Requests from outside
(``start_child``, ``terminate_child``) go through the same inbox, so every decision is made by
the loop, one at a time, as in OTP.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from aion._clock import Clock, SystemClock

from ._budget import RestartBudget
from ._calls import Call, StartChild, TerminateChild
from ._children import Child, Instance, describe, stop_children, wait_within
from ._errors import (
    ChildNotFound,
    ChildStartError,
    DuplicateChild,
    SupervisorEscalation,
    SupervisorNotRunning,
)
from ._spec import (
    Backoff,
    ChildContext,
    ChildReport,
    ChildSpec,
    ChildState,
    Restart,
    Shutdown,
    Strategy,
)

__all__ = ["Supervisor"]

logger = logging.getLogger("aion.supervision")


_Message = Instance | StartChild | TerminateChild


class Supervisor:
    """Runs child tasks with Erlang/OTP supervisor semantics.

    Children start in the given order, each after the previous one called
    ``ctx.started()``. When a child exits on its own, its :class:`Restart` type decides whether
    it is restarted and the :class:`Strategy` which siblings restart with it. More than
    ``max_restarts`` restarts within ``max_seconds`` (of ``clock``) stop every child and raise
    :class:`SupervisorEscalation` out of :meth:`run`, to the parent supervisor or the caller.
    Exactly ``max_restarts`` restarts within the window are still allowed. On shutdown the
    children stop in reverse start order, each within its :class:`Shutdown` policy.

    Run it at the root with ``await task_group.start(sup.run)`` (returns once every child has
    started; raises :class:`ChildStartError` if one fails), stop it with :meth:`shutdown`.
    Nest it under another supervisor with ``Supervisor([..., sup.child_spec()])``.

    Args:
        children: the static children, in start order; ids must be unique.
        name: names the supervisor in logs and errors.
        strategy: which children restart together.
        max_restarts: restarts allowed within ``max_seconds`` (OTP intensity); ``0`` escalates
            on the first exit that calls for a restart.
        max_seconds: the sliding window for ``max_restarts`` (OTP period), in seconds.
        backoff: delays between repeated restarts of the same child.
        kill_grace: how long to wait for a cancelled child to finish before reporting it as
            unresponsive (logged at ERROR, state ``UNRESPONSIVE``); the supervisor then stops
            the other children and waits on for it, since anyio cannot abandon a task.
        clock: the source of time for the window, backoff and shutdown timeouts.
        rng: the source of backoff jitter; seed it for reproducible delays.
        on_restart: called with a child's id each time the supervisor restarts it (after a
            crash, a normal exit of a permanent child, or with a sibling), e.g. to count
            restarts; it must not raise or block.
    """

    # Stop children one at a time in reverse start order (False) or all together (True).
    _concurrent_stop: ClassVar[bool] = False

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        name: str = "supervisor",
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        backoff: Backoff | None = None,
        kill_grace: float = 5.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, not {max_restarts}")
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, not {max_seconds}")
        if not kill_grace >= 0:
            raise ValueError(f"kill_grace must be >= 0, not {kill_grace}")
        self._specs = tuple(children)
        seen: set[str] = set()
        for spec in self._specs:
            if spec.id in seen:
                raise DuplicateChild(name, spec.id)
            seen.add(spec.id)
        self._name = name
        self._strategy = strategy
        self._max_restarts = max_restarts
        self._max_seconds = float(max_seconds)
        self._backoff = Backoff() if backoff is None else backoff
        self._kill_grace = float(kill_grace)
        self._clock: Clock = SystemClock() if clock is None else clock
        self._rng = random.Random() if rng is None else rng
        self._on_restart = on_restart

        # Per-run state, reset by run(); kept after it so report() can show how it ended.
        self._children: dict[str, Child] = {}  # insertion order is start order
        self._pending: dict[str, Child] = {}  # children waiting out their restart backoff
        self._inbox: deque[_Message] = deque()
        self._wakeup: anyio.Event | None = None
        # The intensity, over all children; each child's own budget paces its backoff.
        self._budget = RestartBudget(max_restarts, self._max_seconds)
        self._seq = 0
        self._tg: TaskGroup | None = None
        self._accepting = False
        self._stop_requested = False
        self._finished: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self._strategy.name}>"

    @property
    def name(self) -> str:
        """The supervisor's name, as in logs and errors."""
        return self._name

    @property
    def strategy(self) -> Strategy:
        """The restart strategy."""
        return self._strategy

    def child_spec(
        self,
        *,
        id: str | None = None,
        restart: Restart = Restart.PERMANENT,
        shutdown: Shutdown = Shutdown.INFINITY,
    ) -> ChildSpec:
        """A spec that runs this supervisor as a child of another one.

        Args:
            id: the child id; default: the supervisor's name.
            restart: the restart type in the parent.
            shutdown: default ``INFINITY``: the parent asks, and this supervisor stops its own
                children within their own policies.
        """
        return ChildSpec(
            id=self._name if id is None else id, start=self.run, restart=restart, shutdown=shutdown
        )

    # --- running ------------------------------------------------------------------------

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start the children, supervise them until shutdown, then stop them.

        Signals ``started`` (``ctx.started()`` under a parent, ``task_status.started()`` under
        ``TaskGroup.start``) once every static child has started. Returns after a shutdown
        (:meth:`shutdown`, or the parent's request through ``ctx``).

        Args:
            ctx: given when this supervisor runs as a child of another one.
            task_status: for ``await task_group.start(sup.run)``.

        Raises:
            ChildStartError: a static child failed to start; the ones started before it were
                stopped in reverse order.
            SupervisorEscalation: the restart intensity was exceeded; every child was stopped.
            RuntimeError: the supervisor is already running.
        """
        if self._finished is not None and not self._finished.is_set():
            raise RuntimeError(f"supervisor {self._name!r} is already running")
        self._reset()
        finished = self._finished = anyio.Event()
        failure: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                failure = await self._start_static()
                if failure is None:
                    if ctx is not None:
                        tg.start_soon(self._forward_shutdown, ctx, name=f"{self._name}/ctx")
                        ctx.started()
                    task_status.started()
                    failure = await self._loop()
                # Only helper tasks are left: every child has been stopped.
                tg.cancel_scope.cancel()
        finally:
            self._accepting = False
            self._tg = None
            self._pending.clear()
            for child in self._children.values():
                child.instance = None
                child.state = ChildState.STOPPED
            while self._inbox:
                message = self._inbox.popleft()
                if isinstance(message, Call):
                    self._refuse(message)
            finished.set()
        if failure is not None:
            raise failure from failure.__cause__

    async def shutdown(self) -> None:
        """Stop every child (reverse start order, per their policies) and wait until :meth:`run`
        has returned. Does nothing if the supervisor is not running."""
        self.request_shutdown()
        if self._finished is not None:
            await self._finished.wait()

    def request_shutdown(self) -> None:
        """Ask the supervisor to shut down, without waiting; safe to call from its children."""
        if self._finished is None or self._finished.is_set():
            return
        self._accepting = False
        self._stop_requested = True
        self._wake()

    async def start_child(self, spec: ChildSpec) -> None:
        """Add a child at run time and start it, after the current children.

        Returns once the child has called ``ctx.started()``. A dynamically started child is
        removed from the supervisor once it stops for good.

        Raises:
            DuplicateChild: a current child has the same id.
            ChildStartError: the child raised before ``ctx.started()``; it was not added.
            SupervisorNotRunning: the supervisor is not running (or is shutting down).
        """
        call = StartChild(spec)
        await self._call(call)
        if call.child_error is not None:
            raise ChildStartError(self._name, spec.id, call.child_error) from call.child_error

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child within its shutdown policy and remove it from the supervisor.

        Raises:
            ChildNotFound: no current child has this id.
            SupervisorNotRunning: the supervisor is not running (or is shutting down).
        """
        await self._call(TerminateChild(child_id))

    def report(self) -> list[ChildReport]:
        """The children in start order with their state, restart count and last error.

        After :meth:`run` has ended, shows how the children were left.
        """
        return [
            ChildReport(c.id, c.state, c.spec.restart, c.restarts, c.last_error)
            for c in self._children.values()
        ]

    # --- the control loop -----------------------------------------------------------------

    def _reset(self) -> None:
        self._children = {}
        self._pending = {}
        self._inbox = deque()
        self._budget.reset()
        self._seq = 0
        self._stop_requested = False
        self._accepting = True
        for spec in self._specs:
            self._add(spec, static=True)

    def _add(self, spec: ChildSpec, *, static: bool) -> Child:
        self._seq += 1
        child = self._children[spec.id] = Child(spec, self._seq, static=static)
        return child

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _post(self, message: _Message) -> None:
        self._inbox.append(message)
        self._wake()

    async def _call(self, call: StartChild | TerminateChild) -> None:
        if not self._accepting:
            raise SupervisorNotRunning(self._name)
        self._post(call)
        await call.reply.wait()
        if call.error is not None:
            raise call.error

    def _refuse(self, call: Call) -> None:
        if not call.reply.is_set():
            call.error = call.error or SupervisorNotRunning(self._name)
            call.reply.set()

    async def _forward_shutdown(self, ctx: ChildContext) -> None:
        await ctx.wait_shutdown_requested()
        self.request_shutdown()

    async def _start_static(self) -> BaseException | None:
        children = list(self._children.values())
        for index, child in enumerate(children):
            error = await self._start(child)
            if error is not None:
                logger.error(
                    "supervisor %r: child %r failed to start (%s); stopping the %d started"
                    " before it",
                    self._name,
                    child.id,
                    describe(error),
                    index,
                    exc_info=error,
                    extra={"supervisor": self._name, "child_id": child.id},
                )
                await self._stop(children[:index], reason=f"child {child.id!r} failed to start")
                failure = ChildStartError(self._name, child.id, error)
                failure.__cause__ = error
                return failure
        logger.info(
            "supervisor %r started %d children",
            self._name,
            len(children),
            extra={"supervisor": self._name, "child_id": None},
        )
        return None

    async def _loop(self) -> BaseException | None:
        while True:
            if self._stop_requested:
                await self._shut_down()
                return None
            deadline = min((c.restart_at for c in self._pending.values()), default=None)
            if deadline is not None and deadline <= self._clock.now():
                failure = await self._restart_due()
            elif self._inbox:
                failure = await self._handle(self._inbox.popleft())
            else:
                self._wakeup = anyio.Event()
                await wait_within(self._clock, deadline, self._wakeup.wait)
                self._wakeup = None
                continue
            if failure is not None:
                return failure

    async def _handle(self, message: _Message) -> BaseException | None:
        if isinstance(message, Instance):
            return await self._on_exit(message)
        try:
            if isinstance(message, StartChild):
                await self._on_start_child(message)
            else:
                await self._on_terminate_child(message)
        finally:
            # Answer even if the loop is cancelled mid-request, so no caller waits forever.
            self._refuse(message)
        return None

    async def _on_start_child(self, call: StartChild) -> None:
        spec = call.spec
        if spec.id in self._children:
            call.error = DuplicateChild(self._name, spec.id)
        else:
            child = self._add(spec, static=False)
            error = await self._start(child)
            if error is not None:
                self._remove(child)
                call.child_error = error
                logger.warning(
                    "supervisor %r: dynamic child %r failed to start (%s)",
                    self._name,
                    spec.id,
                    describe(error),
                    extra={"supervisor": self._name, "child_id": spec.id},
                )
        call.reply.set()

    async def _on_terminate_child(self, call: TerminateChild) -> None:
        child = self._children.get(call.child_id)
        if child is None:
            call.error = ChildNotFound(self._name, call.child_id)
        else:
            await self._stop([child], reason="terminate_child")
            self._remove(child)
            logger.info(
                "supervisor %r: terminated child %r",
                self._name,
                child.id,
                extra={"supervisor": self._name, "child_id": child.id},
            )
        call.reply.set()

    async def _on_exit(self, inst: Instance) -> BaseException | None:
        child = inst.child
        if inst.expected or inst.handled or child.instance is not inst:
            return None  # a shutdown, a failed start, or a stale notice: nothing to decide
        child.instance = None
        error = inst.error
        if error is None:
            logger.debug(
                "supervisor %r: child %r returned",
                self._name,
                child.id,
                extra={"supervisor": self._name, "child_id": child.id},
            )
        else:
            child.last_error = error
            logger.warning(
                "supervisor %r: child %r crashed (%s)",
                self._name,
                child.id,
                describe(error),
                exc_info=error,
                extra={"supervisor": self._name, "child_id": child.id},
            )
        return await self._after_exit(child, error)

    async def _after_exit(self, child: Child, error: Exception | None) -> BaseException | None:
        """Apply the restart type, intensity, strategy and backoff to a child that exited."""
        restart = child.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and error is None):
            self._retire(child)
            return None

        now = self._clock.now()
        if not self._budget.record(now):
            return await self._escalate(child, error, self._budget.count)
        budget = child.budget
        if budget is None:
            budget = child.budget = RestartBudget(
                self._max_restarts, self._max_seconds, self._backoff, self._rng
            )
        budget.record(now)  # within the supervisor's budget, so within the child's
        delay = budget.delay()

        group = self._group(child)
        siblings = [c for c in group if c is not child]
        if siblings:
            await self._stop(siblings, reason=f"restarting with {child.id!r}")
            for sibling in siblings:
                if sibling.spec.restart is Restart.TEMPORARY:
                    self._remove(sibling)  # temporary children never restart, not even here
            group = [c for c in group if self._children.get(c.id) is c]
        restart_at = self._clock.now() + delay
        for member in group:
            member.state = ChildState.RESTARTING
            member.restart_at = restart_at
            self._pending[member.id] = member
        logger.warning(
            "supervisor %r: restarting %s after %s of child %r%s (restart %d of %d allowed"
            " within %g s)",
            self._name,
            ", ".join(repr(c.id) for c in group),
            "an abnormal exit" if error is not None else "a normal exit",
            child.id,
            f" in {delay:.3g} s" if delay else "",
            self._budget.count,
            self._max_restarts,
            self._max_seconds,
            extra={"supervisor": self._name, "child_id": child.id},
        )
        return None

    def _group(self, child: Child) -> list[Child]:
        """The children that restart together with ``child``, in start order."""
        if self._strategy is Strategy.ONE_FOR_ONE:
            return [child]
        members = list(self._children.values())
        if self._strategy is Strategy.REST_FOR_ONE:
            members = members[members.index(child) :]
        # A child that stopped for good (a transient child that returned) stays stopped.
        return [c for c in members if c is child or c.state is not ChildState.STOPPED]

    async def _restart_due(self) -> BaseException | None:
        now = self._clock.now()
        due = sorted((c for c in self._pending.values() if c.restart_at <= now), key=_by_seq)
        for child in due:
            del self._pending[child.id]
            child.restarts += 1
            if self._on_restart is not None:
                self._on_restart(child.id)
            error = await self._start(child)
            if error is not None:
                logger.warning(
                    "supervisor %r: child %r failed to restart (%s)",
                    self._name,
                    child.id,
                    describe(error),
                    exc_info=error,
                    extra={"supervisor": self._name, "child_id": child.id},
                )
                # A failed restart counts as another crash. Stop here: the failure may have
                # rescheduled the rest of this batch, and the loop restarts it in order.
                return await self._after_exit(child, error)
        return None

    async def _escalate(
        self, child: Child, error: Exception | None, restarts: int
    ) -> BaseException:
        logger.error(
            "supervisor %r: child %r exited (%s); %d restarts within %g s exceed the limit of"
            " %d: stopping all children and escalating",
            self._name,
            child.id,
            describe(error),
            restarts,
            self._max_seconds,
            self._max_restarts,
            extra={"supervisor": self._name, "child_id": child.id},
        )
        self._accepting = False
        self._pending.clear()
        await self._stop(list(self._children.values()), reason="escalation")
        failure = SupervisorEscalation(
            self._name,
            child.id,
            error,
            restarts=restarts,
            max_restarts=self._max_restarts,
            max_seconds=self._max_seconds,
        )
        failure.__cause__ = error
        return failure

    async def _shut_down(self) -> None:
        logger.info(
            "supervisor %r: shutting down %d children",
            self._name,
            len(self._children),
            extra={"supervisor": self._name, "child_id": None},
        )
        self._pending.clear()
        await self._stop(list(self._children.values()), reason="shutdown")
        logger.info(
            "supervisor %r: shut down",
            self._name,
            extra={"supervisor": self._name, "child_id": None},
        )

    # --- starting and stopping one child ------------------------------------------------------

    async def _start(self, child: Child) -> Exception | None:
        """Spawn ``child`` and wait until it calls ``started()`` or exits.

        Returns the exception if it raised before ``started()`` (a failed start). A child that
        returns before ``started()`` counts as started and then exited: its exit notice is
        handled by the loop like any other.
        """
        assert self._tg is not None
        inst = Instance(child)
        child.instance = inst
        child.state = ChildState.STARTING
        self._tg.start_soon(self._run_instance, inst, name=f"{self._name}/{child.id}")
        assert inst.ready is not None
        await inst.ready.wait()
        inst.ready = None
        if not inst.is_started and inst.error is not None:
            inst.handled = True
            child.instance = None
            child.state = ChildState.STOPPED
            child.last_error = inst.error
            return inst.error
        if child.instance is inst:
            child.state = ChildState.RUNNING
        return None

    async def _run_instance(self, inst: Instance) -> None:
        try:
            with anyio.CancelScope() as scope:
                inst.scope = scope
                if inst.cancelled:
                    scope.cancel()
                try:
                    await inst.child.spec.start(inst.ctx)
                except Exception as exc:
                    # Caught here so that the task group never sees it (see module docstring).
                    inst.error = exc
        finally:
            inst.scope = None
            inst.mark_exited()
            self._post(inst)

    def _retire(self, child: Child) -> None:
        if child.static and child.spec.restart is not Restart.TEMPORARY:
            child.state = ChildState.STOPPED
        else:
            self._remove(child)

    def _remove(self, child: Child) -> None:
        if self._children.get(child.id) is child:
            del self._children[child.id]
        self._pending.pop(child.id, None)
        child.state = ChildState.STOPPED

    async def _stop(self, children: Sequence[Child], *, reason: str) -> None:
        for child in children:
            self._pending.pop(child.id, None)
        await stop_children(
            children,
            supervisor=self._name,
            clock=self._clock,
            kill_grace=self._kill_grace,
            concurrent=self._concurrent_stop,
            reason=reason,
        )


def _by_seq(child: Child) -> int:
    return child.seq
