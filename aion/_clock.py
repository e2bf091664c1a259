"""Clocks: the one source of time for everything in aion that waits or timestamps.

Time is a float of seconds since the Unix epoch (UTC). The engine, the timer wheel and the
supervisors take a :class:`Clock`; tests pass :class:`aion.testing.ManualClock` to make waits
instant and exact.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock", "from_timestamp", "to_timestamp"]


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
