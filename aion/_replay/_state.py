"""What the driver keeps about the code it runs: the run's identity, the futures workflow code
awaits (plain, timer, signal), the steps and children it waits on, and its tasks.

Bookkeeping only: these records are created and resolved by the driver (:mod:`._operations`,
:mod:`._driver`), in event order; resolving a future queues the tasks that waited on it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from ._commands import ScheduleStep

__all__ = [
    "DurableFuture",
    "PendingChild",
    "PendingStep",
    "SignalWait",
    "Task",
    "TimerFuture",
    "WorkflowInfo",
    "done",
    "fail",
    "resolve",
    "wake",
]


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


class DurableFuture:
    """What workflow code awaits. Resolved only by the driver, in event order."""

    __slots__ = ("callbacks", "done", "error", "value", "waiters")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiters: list[Task] = []
        self.callbacks: list[Callable[[DurableFuture], None]] = []

    def __await__(self) -> Generator[DurableFuture, None, Any]:
        if not self.done:
            yield self
        if self.error is not None:
            raise self.error
        return self.value


class TimerFuture(DurableFuture):
    """A started timer (``ctx.sleep``, or the timeout of a wait): resolved when it fires."""

    __slots__ = ("due", "seq")

    def __init__(self, seq: int, due: datetime) -> None:
        super().__init__()
        self.seq = seq
        self.due = due


class SignalWait(DurableFuture):
    """A wait for the next signal of a name, and the timer of its timeout if it has one."""

    __slots__ = ("name", "timer")

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.timer: TimerFuture | None = None


class PendingStep(msgspec.Struct):
    """A step the code awaits: its command, attempts started, and a scheduled retry if any.

    (A Struct: made in C, for every step the code schedules, replayed or live.)
    """

    future: DurableFuture
    command: ScheduleStep
    result_type: Any
    attempts: int = 0
    retry_due: datetime | None = None
    held: str | None = None  # the approval the engine's policy holds it for, until decided

    @property
    def name(self) -> str:
        return self.command.name

    def what_result(self) -> str:
        """Its result, for error messages (made only when there is one to report)."""
        return f"result of step {self.command.name!r}"


@dataclass(slots=True)
class PendingChild:
    """A child workflow the code started and awaits."""

    future: DurableFuture
    workflow_id: str
    result_type: Any


class Task:
    """A coroutine the driver steps: the workflow's main one, or one ``ctx.gather`` runs."""

    __slots__ = ("coro", "future", "name", "ready", "waiting_on")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str,
        ready: deque[tuple[Task, BaseException | None]],
    ) -> None:
        self.coro = coro
        self.name = name
        self.ready = ready  # the owning driver's ready queue: a resolved future wakes us there
        self.future = DurableFuture()
        self.waiting_on: DurableFuture | None = None


def resolve(future: DurableFuture, value: Any) -> None:
    """Resolve ``future`` with ``value`` and wake what waits on it."""
    future.done = True
    future.value = value
    wake(future)


def fail(future: DurableFuture, error: BaseException) -> None:
    """Resolve ``future`` with ``error`` (raised where it is awaited) and wake what waits on it."""
    future.done = True
    future.error = error
    wake(future)


def wake(future: DurableFuture) -> None:
    """Queue the tasks waiting on the resolved ``future``, then run its callbacks."""
    for task in future.waiters:
        task.waiting_on = None
        task.ready.append((task, None))
    future.waiters.clear()
    if future.callbacks:  # most futures have none: no new list for them
        callbacks, future.callbacks = future.callbacks, []
        for callback in callbacks:
            callback(future)


def done(value: Any) -> DurableFuture:
    """A future resolved already with ``value``."""
    future = DurableFuture()
    future.done = True
    future.value = value
    return future
