"""Clocks: the one source of time for everything in aion that waits or timestamps.

Time is a float of seconds since the Unix epoch (UTC). The engine, the timer wheel and the
supervisors take a :class:`Clock`; tests pass :class:`aion.testing.ManualClock` to make waits
instant and exact.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import anyio

from aion._loop import wait_all_tasks_blocked

__all__ = ["Clock", "ManualClock", "SystemClock", "from_timestamp", "to_timestamp"]


@runtime_checkable
class Clock(Protocol):
    """What aion needs of time."""

    def now(self) -> float:
        """Current time, seconds since the Unix epoch."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline`` (at once if it already is). Cancellable."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time. Cancellable."""
        ...


class SystemClock:
    """The real wall clock, sleeping with anyio."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.time()
        if delay > 0:
            await anyio.sleep(delay)
        else:
            await anyio.lowlevel.checkpoint()

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(time.time() + seconds)


def to_timestamp(when: datetime) -> float:
    """Seconds since the epoch for an aware datetime (naive datetimes are rejected)."""
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: pass an aware datetime (e.g. tzinfo=UTC)")
    return when.timestamp()


def from_timestamp(ts: float) -> datetime:
    """Aware UTC datetime for seconds since the epoch."""
    return datetime.fromtimestamp(ts, tz=UTC)


class ManualClock:
    """A clock that moves only when told to: instant, exact timing in tests.

    ``advance(seconds)`` moves time forward and wakes every sleeper whose deadline has come, in
    deadline order. With ``auto_advance=True``, :meth:`run_auto_advance` (started by the engine,
    or by a test in a task group) jumps time to the next deadline whenever every task is blocked,
    so a workflow that sleeps 30 days finishes in milliseconds. Work the clock cannot see (a step
    running in a worker thread) holds time still through :meth:`busy`.

    Args:
        start: the initial time as an aware datetime; default: the real time now.
        auto_advance: whether :meth:`run_auto_advance` may move time on its own.
    """

    def __init__(self, start: datetime | None = None, *, auto_advance: bool = False) -> None:
        self._now = time.time() if start is None else to_timestamp(start)
        self.auto_advance = auto_advance
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._counter = 0
        self._busy = 0
        self._changed = anyio.Event() if _in_async_context() else None

    def now(self) -> float:
        return self._now

    def datetime(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return from_timestamp(self._now)

    async def sleep_until(self, deadline: float) -> None:
        if math.isnan(deadline):
            raise ValueError("a deadline cannot be NaN")
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        if math.isinf(deadline):  # forever: no deadline for auto-advance to jump to
            await anyio.sleep_forever()
        event = anyio.Event()
        self._counter += 1
        heapq.heappush(self._sleepers, (deadline, self._counter, event))
        self._notify()
        try:
            await event.wait()
        finally:
            # A cancelled sleeper marks itself done, so auto-advance never jumps to a deadline
            # nobody waits for any more (next_deadline skips set events).
            event.set()

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper now due, earliest first."""
        if not seconds >= 0:  # also NaN
            raise ValueError(f"a clock cannot go backwards or by {seconds!r}")
        self.set_time(self._now + seconds)

    def set_time(self, ts: float) -> None:
        """Move time forward to ``ts`` (seconds since the epoch)."""
        if not math.isfinite(ts):
            raise ValueError(f"a clock's time must be finite, not {ts!r}")
        if ts < self._now:
            raise ValueError(f"a clock cannot go backwards ({ts} < {self._now})")
        self._now = ts
        while self._sleepers and self._sleepers[0][0] <= ts:
            _, _, event = heapq.heappop(self._sleepers)
            event.set()
        self._notify()

    def next_deadline(self) -> float | None:
        """The earliest pending sleeper's deadline, if any."""
        while self._sleepers and self._sleepers[0][2].is_set():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Hold auto-advance while work the clock cannot see (e.g. a worker thread) runs."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._notify()

    async def run_auto_advance(self) -> None:
        """Jump to the next deadline whenever all other tasks are blocked. Runs until cancelled.

        Does nothing unless ``auto_advance`` is true.
        """
        if not self.auto_advance:
            await anyio.sleep_forever()
        while True:
            await wait_all_tasks_blocked()
            deadline = self.next_deadline()
            if self._busy or deadline is None:
                # Nothing to jump to yet: wait until a sleeper registers or work finishes.
                self._changed = anyio.Event()
                await self._changed.wait()
                continue
            self.set_time(max(deadline, self._now))

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()


def _in_async_context() -> bool:
    try:
        anyio.get_current_task()
    except RuntimeError:
        return False
    return True
