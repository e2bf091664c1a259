"""Child slots, their running instances, and stopping them within their shutdown policies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio

from aion._clock import Clock

from ._budget import RestartBudget
from ._spec import ChildContext, ChildSpec, ChildState

__all__ = ["Child", "Instance", "describe", "stop_children", "wait_within"]

logger = logging.getLogger("aion.supervision")


class Child:
    """A child slot: its spec and bookkeeping, surviving its restarts."""

    __slots__ = (
        "budget",
        "instance",
        "last_error",
        "restart_at",
        "restarts",
        "seq",
        "spec",
        "state",
        "static",
    )

    def __init__(self, spec: ChildSpec, seq: int, *, static: bool) -> None:
        self.spec = spec
        self.seq = seq  # start order; a restarted child keeps its place
        self.static = static  # from the constructor (kept as STOPPED) or start_child (dropped)
        self.state = ChildState.STOPPED
        self.restarts = 0
        self.last_error: BaseException | None = None
        self.instance: Instance | None = None
        self.restart_at = 0.0
        # This child's own restarts inside the intensity window, for its backoff (the intensity
        # that escalates is the supervisor's, over all children). Made on its first restart:
        # most children of a dynamic supervisor never restart.
        self.budget: RestartBudget | None = None

    @property
    def id(self) -> str:
        return self.spec.id


class Instance:
    """One run of a child's start function, from spawn to exit."""

    __slots__ = (
        "_done",
        "cancelled",
        "child",
        "ctx",
        "error",
        "exited",
        "expected",
        "handled",
        "is_started",
        "ready",
        "scope",
    )

    def __init__(self, child: Child) -> None:
        self.child = child
        self.ctx = ChildContext(child.id, child.restarts, self._on_started)
        self.scope: anyio.CancelScope | None = None
        self.is_started = False
        self.cancelled = False
        # The supervisor stopped it: its exit is a shutdown, which no strategy acts on.
        self.expected = False
        # Its exit was dealt with already (it failed to start).
        self.handled = False
        self.exited = False
        self.error: Exception | None = None
        # Set by ctx.started() or by the exit; dropped once the start is over. Events are made
        # only while someone waits: ~0.9 KB each, per child, adds up over 10,000 actors.
        self.ready: anyio.Event | None = anyio.Event()
        self._done: anyio.Event | None = None

    def _on_started(self) -> None:
        self.is_started = True
        if self.ready is not None:
            self.ready.set()

    def mark_exited(self) -> None:
        self.exited = True
        if self.ready is not None:
            self.ready.set()
        if self._done is not None:
            self._done.set()

    async def wait_exited(self) -> None:
        if not self.exited:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


def describe(error: BaseException | None) -> str:
    return "a normal exit" if error is None else f"{type(error).__name__}: {error}"


async def stop_children(
    children: Sequence[Child],
    *,
    supervisor: str,
    clock: Clock,
    kill_grace: float,
    concurrent: bool,
    reason: str,
) -> None:
    """Stop ``children`` (given in start order) within their shutdown policies.

    One at a time in reverse order, or all together (``concurrent``). A child still running
    ``kill_grace`` after its cancellation is reported (ERROR, state ``UNRESPONSIVE``) and waited
    for only after the others have stopped.
    """
    stopper = _Stopper(supervisor, clock, kill_grace, reason)
    stuck: list[Instance] = []
    if concurrent:
        stuck += await stopper.terminate(children)
    else:
        for child in reversed(children):
            stuck += await stopper.terminate((child,))
    for inst in stuck:
        # Structured concurrency: a task cannot be abandoned, only waited for. It has been
        # reported, and the other children were stopped meanwhile.
        await inst.wait_exited()
        inst.child.state = ChildState.STOPPED
        logger.warning(
            "supervisor %r: unresponsive child %r has finally stopped",
            supervisor,
            inst.child.id,
            extra={"supervisor": supervisor, "child_id": inst.child.id},
        )


async def wait_within(
    clock: Clock, deadline: float | None, wait: Callable[[], Awaitable[None]]
) -> None:
    """Run ``wait`` until it returns or ``clock`` reaches ``deadline`` (``None``: no limit)."""
    if deadline is None:
        await wait()
        return
    # The injected clock has no cancel scopes of its own: race a sleeper against the wait.
    async with anyio.create_task_group() as tg:

        async def alarm() -> None:
            await clock.sleep_until(deadline)
            tg.cancel_scope.cancel()

        tg.start_soon(alarm)
        await wait()
        tg.cancel_scope.cancel()


class _Stopper:
    __slots__ = ("_clock", "_kill_grace", "_name", "_reason")

    def __init__(self, name: str, clock: Clock, kill_grace: float, reason: str) -> None:
        self._name = name
        self._clock = clock
        self._kill_grace = kill_grace
        self._reason = reason

    async def terminate(self, children: Iterable[Child]) -> list[Instance]:
        """Stop ``children`` together; return those still running ``kill_grace`` after cancel."""
        running: list[Instance] = []
        for child in children:
            inst, child.instance = child.instance, None
            child.state = ChildState.STOPPED
            if inst is None:
                continue
            inst.expected = True
            if inst.exited:
                continue
            child.state = ChildState.STOPPING
            running.append(inst)
            logger.debug(
                "supervisor %r: stopping child %r (%s)",
                self._name,
                child.id,
                self._reason,
                extra={"supervisor": self._name, "child_id": child.id},
            )
            if child.spec.shutdown.timeout == 0:
                inst.cancel()
            else:
                inst.ctx._request_shutdown()
        if not running:
            return []

        # Graceful policies: every child gets until its own deadline, and the waits overlap,
        # so stopping many children together takes the longest timeout, not the sum.
        asked_at = self._clock.now()
        timeouts = sorted(
            {t for i in running if (t := i.child.spec.shutdown.timeout) is not None and t > 0}
        )
        for timeout in timeouts:
            group = [i for i in running if i.child.spec.shutdown.timeout == timeout]
            await self._wait_exited(group, asked_at + timeout)
            for inst in group:
                if not inst.exited:
                    logger.warning(
                        "supervisor %r: child %r did not stop within %g s of being asked;"
                        " cancelling it",
                        self._name,
                        inst.child.id,
                        timeout,
                        extra={"supervisor": self._name, "child_id": inst.child.id},
                    )
                    inst.cancel()

        stuck: list[Instance] = []
        cancelled = [i for i in running if i.cancelled and not i.exited]
        if cancelled:
            await self._wait_exited(cancelled, self._clock.now() + self._kill_grace)
            for inst in cancelled:
                if not inst.exited:
                    inst.child.state = ChildState.UNRESPONSIVE
                    stuck.append(inst)
                    logger.error(
                        "supervisor %r: child %r ignores cancellation: still running %g s after"
                        " it was cancelled (a shielded scope, or a loop that swallows the"
                        " cancellation). Stopping the other children; waiting on for it.",
                        self._name,
                        inst.child.id,
                        self._kill_grace,
                        extra={"supervisor": self._name, "child_id": inst.child.id},
                    )
        patient = [i for i in running if i.child.spec.shutdown.timeout is None]
        if patient:
            # INFINITY means no cancellation, not no word: say who is being waited for.
            await self._wait_exited(patient, self._clock.now() + self._kill_grace)
            for inst in patient:
                if not inst.exited:
                    logger.warning(
                        "supervisor %r: still waiting for child %r to stop (%g s after being"
                        " asked; its shutdown policy is INFINITY)",
                        self._name,
                        inst.child.id,
                        self._kill_grace,
                        extra={"supervisor": self._name, "child_id": inst.child.id},
                    )
            await self._wait_exited(patient)

        for inst in running:
            if not inst.exited:
                continue
            inst.child.state = ChildState.STOPPED
            if inst.error is not None:
                inst.child.last_error = inst.error
                logger.warning(
                    "supervisor %r: child %r raised while stopping (%s)",
                    self._name,
                    inst.child.id,
                    describe(inst.error),
                    exc_info=inst.error,
                    extra={"supervisor": self._name, "child_id": inst.child.id},
                )
        return stuck

    async def _wait_exited(self, insts: Sequence[Instance], deadline: float | None = None) -> None:
        async def all_exited() -> None:
            for inst in insts:
                await inst.wait_exited()

        await wait_within(self._clock, deadline, all_exited)
