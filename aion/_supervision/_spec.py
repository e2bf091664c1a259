"""What a supervisor is told and what it reports: strategies, child specs, contexts, report rows."""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

import anyio

__all__ = [
    "Backoff",
    "ChildContext",
    "ChildReport",
    "ChildSpec",
    "ChildState",
    "Restart",
    "Shutdown",
    "Strategy",
]


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them has to be restarted.

    The names and meanings are OTP's.
    """

    ONE_FOR_ONE = "one_for_one"
    """Restart only the child that exited."""

    ONE_FOR_ALL = "one_for_all"
    """Stop every other child (in reverse start order), then restart them all in start order."""

    REST_FOR_ONE = "rest_for_one"
    """Stop the children started after the one that exited (in reverse order), then restart the
    exited child and those, in start order."""


class Restart(enum.Enum):
    """When a child that exited on its own is restarted.

    A coroutine that returns is a *normal* exit; one that raises an ``Exception`` is *abnormal*;
    one that the supervisor stops is a *shutdown* and is never restarted by that stop.
    """

    PERMANENT = "permanent"
    """Always restarted, whether it returned or raised."""

    TRANSIENT = "transient"
    """Restarted only after an abnormal exit (it raised)."""

    TEMPORARY = "temporary"
    """Never restarted; removed from the supervisor once it exits, also when a sibling's restart
    under ``ONE_FOR_ALL``/``REST_FOR_ONE`` stops it."""


class ChildState(enum.Enum):
    """Where a child is in its life, as :meth:`Supervisor.report` shows it."""

    STARTING = "starting"
    """Its start function runs and has not called :meth:`ChildContext.started` yet."""

    RUNNING = "running"
    """Started and not asked to stop."""

    RESTARTING = "restarting"
    """Exited (or stopped for a sibling's restart) and waiting out its restart backoff."""

    STOPPING = "stopping"
    """Asked to stop; the supervisor is waiting for it (within its shutdown policy)."""

    UNRESPONSIVE = "unresponsive"
    """Cancelled, and still running after the supervisor's ``kill_grace``: it ignores
    cancellation (e.g. a shielded scope). Logged at ERROR; the supervisor waits on for it."""

    STOPPED = "stopped"
    """Not running and not going to be restarted (a transient child that returned, or every
    child once the supervisor has stopped)."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """How a supervisor stops a child (OTP's ``shutdown`` field).

    Use one of the three forms:

    * :attr:`Shutdown.CANCEL` (OTP ``brutal_kill``): cancel the child at once. Its ``finally``
      blocks and ``async with`` exits run, as for any cancelled anyio task. The default, because
      in Python cancellation *is* the ordinary way to stop a task.
    * :meth:`Shutdown.after` ``(seconds)`` (OTP: a timeout): ask the child to stop (its
      :meth:`ChildContext.wait_shutdown_requested` returns), wait up to ``seconds`` for it to
      return, then cancel it. For children with work to finish, such as a writer that should
      flush its last batch.
    * :attr:`Shutdown.INFINITY` (OTP ``infinity``): ask, then wait as long as it takes. For
      child supervisors, which stop their own children within their own policies.

    Attributes:
        timeout: seconds to wait after asking before cancelling; ``0`` cancels at once, ``None``
            never cancels.
    """

    timeout: float | None

    CANCEL: ClassVar[Shutdown]
    INFINITY: ClassVar[Shutdown]

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout >= 0:
            raise ValueError(f"shutdown timeout must be >= 0 or None, not {self.timeout!r}")

    @classmethod
    def after(cls, seconds: float) -> Shutdown:
        """Ask the child to stop, wait up to ``seconds`` of the supervisor's clock, then cancel."""
        return cls(float(seconds))


Shutdown.CANCEL = Shutdown(0.0)
Shutdown.INFINITY = Shutdown(None)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between repeated restarts of the same child.

    The first restart of a child within the intensity window (``max_seconds``) is immediate, as
    in OTP: a one-off crash recovers at once. The n-th restart of the same child within the
    window (n >= 2) waits ``min(maximum, initial * multiplier ** (n - 2))``, scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` (and capped at ``maximum`` again), so a crash loop
    slows down and a crowd of crashing siblings does not restart in lock step.

    With ``immediate_first=False`` the first restart waits too: the n-th (n >= 1) waits
    ``min(maximum, initial * multiplier ** (n - 1))``, jittered and capped alike. For restarts
    that would otherwise race whatever made them crash (a run actor replaying its history).

    Keep ``maximum * max_restarts`` well below the supervisor's ``max_seconds``: restarts spaced
    wider than ``max_seconds / max_restarts`` never exceed the intensity, so the supervisor would
    keep restarting a child that can never run instead of escalating.

    Attributes:
        initial: the delay before the second restart, in seconds.
        maximum: the longest delay, in seconds.
        multiplier: growth factor per further restart (>= 1).
        jitter: relative spread of the random factor, in ``[0, 1]``.
        immediate_first: whether the first restart in the window is immediate (OTP); if not,
            it waits ``initial`` (jittered).
    """

    initial: float = 0.05
    maximum: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.1
    immediate_first: bool = True

    NONE: ClassVar[Backoff]

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.maximum:
            raise ValueError(f"need 0 <= initial <= maximum, got {self.initial}, {self.maximum}")
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, not {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], not {self.jitter}")

    def delay(self, earlier_restarts: int, rng: random.Random) -> float:
        """Seconds to wait before a restart.

        Args:
            earlier_restarts: restarts of the same child already inside the intensity window.
            rng: the source of jitter (seed it for reproducible delays).

        Returns:
            ``0.0`` for the first restart in the window (unless ``immediate_first`` is false),
            else the jittered, capped delay.
        """
        if self.immediate_first:
            steps = earlier_restarts - 1
            if steps < 0:
                return 0.0
        else:
            steps = max(earlier_restarts, 0)
        if self.maximum == 0:
            return 0.0
        try:
            grown = self.initial * self.multiplier**steps
        except OverflowError:  # a long crash loop under a huge intensity: far past the cap
            grown = self.maximum if self.initial else 0.0
        base = min(self.maximum, grown)
        spread = rng.uniform(1.0 - self.jitter, 1.0 + self.jitter) if self.jitter else 1.0
        return min(self.maximum, base * spread)


Backoff.NONE = Backoff(initial=0.0, maximum=0.0, jitter=0.0)


class ChildContext:
    """What a child's start function receives: its identity and the supervisor's requests.

    A child tells the supervisor it has started by calling :meth:`started`; the supervisor starts
    the next child only after that (or after the start function returned or raised). A child
    with a graceful :class:`Shutdown` policy watches :meth:`wait_shutdown_requested` (or polls
    :attr:`shutdown_requested`) and returns when asked to stop.
    """

    __slots__ = ("_id", "_on_started", "_restarts", "_shutdown_event", "_shutdown_requested")

    def __init__(self, child_id: str, restarts: int, on_started: Callable[[], None]) -> None:
        self._id = child_id
        self._restarts = restarts
        self._on_started: Callable[[], None] | None = on_started
        self._shutdown_requested = False
        # Created on demand: most children never wait for a shutdown request, and a supervisor
        # of 10,000 actors should not pay for 10,000 idle events.
        self._shutdown_event: anyio.Event | None = None

    @property
    def id(self) -> str:
        """The child's id (from its :class:`ChildSpec`)."""
        return self._id

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted this child before this run of it."""
        return self._restarts

    @property
    def shutdown_requested(self) -> bool:
        """Whether the supervisor has asked this child to stop."""
        return self._shutdown_requested

    def started(self) -> None:
        """Tell the supervisor the child is up; it then goes on to start the next child.

        Call it once, after the initialisation that must succeed for the start to count (an
        exception raised before it fails the start). Raises ``RuntimeError`` when called twice.
        """
        if self._on_started is None:
            raise RuntimeError(f"child {self._id!r} called started() twice")
        callback, self._on_started = self._on_started, None
        callback()

    async def wait_shutdown_requested(self) -> None:
        """Return once the supervisor asks this child to stop (graceful shutdown policies)."""
        if self._shutdown_requested:
            await anyio.lowlevel.checkpoint()
            return
        if self._shutdown_event is None:
            self._shutdown_event = anyio.Event()
        await self._shutdown_event.wait()

    def _request_shutdown(self) -> None:
        self._shutdown_requested = True
        if self._shutdown_event is not None:
            self._shutdown_event.set()


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child (OTP's child specification).

    Attributes:
        id: unique among the supervisor's children; names the child in logs, reports and errors.
        start: ``async def start(ctx: ChildContext) -> None``. It must call ``ctx.started()``
            once it is up; returning is a normal exit, raising an ``Exception`` is an abnormal
            exit, being stopped by the supervisor is a shutdown. A supervisor's ``run`` fits
            here (see :meth:`Supervisor.child_spec`).
        restart: when the child is restarted after it exits on its own.
        shutdown: how the supervisor stops it; see :class:`Shutdown`.
    """

    id: str
    start: Callable[[ChildContext], Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    shutdown: Shutdown = Shutdown.CANCEL


@dataclass(frozen=True, slots=True)
class ChildReport:
    """One row of :meth:`Supervisor.report`.

    Attributes:
        id: the child's id.
        state: where the child is in its life.
        restart: its restart type.
        restarts: how many times the supervisor has restarted it (also for a sibling's restart).
        last_error: the exception its last abnormal exit (or failed start) raised, if any.
    """

    id: str
    state: ChildState
    restart: Restart
    restarts: int
    last_error: BaseException | None
