"""The timer service: durable timer rows fire through an in-memory timing wheel.

The wheel holds the timers due within its horizon, at most :data:`MAX_HELD` loaded at a time,
and reloads from the store's due index as time moves; a timer that comes due is sent to its run
as a :class:`~._messages.TimerDue`, at the pace the activation workers take them (a backlog of
overdue timers after an outage does not wake every run at once, nor is it loaded at once).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio

from aion._clock import Clock, from_timestamp
from aion._supervision import ChildContext
from aion._timerwheel import Timer, TimerWheel
from aion.store import EventStore, TimerRow

from ._messages import Message, TimerDue
from ._tasks import one_error

__all__ = ["Timers"]

#: (due in whole microseconds since the epoch, tenant, workflow id, timer id): the order of the
#: store's due index, exactly (the float due time alone cannot tell every microsecond apart).
TimerKey = tuple[int, str, str, str]

#: Rows read per store call when the wheel reloads.
_PAGE = 1000

#: The most timer rows the wheel loads ahead of firing them (its ``max_held``): about 0.5 KB of
#: memory each, so some 25 MB. A backlog (say 1,000,000 timers overdue after an outage) is paged
#: through in due order instead of loaded whole. Half of it is several seconds of firing at the
#: engine's pace (about 7,000 fires/s on one core), far more than a reload takes.
MAX_HELD = 50_000


class Timers:
    """Holds, releases and fires timer rows (a supervised service: :meth:`run`)."""

    def __init__(
        self,
        clock: Clock,
        store: Callable[[], EventStore],
        send: Callable[[tuple[str, str], Message], None],
        room: Callable[[], Awaitable[None]],
        horizon: float,
        owns: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._clock = clock
        self._store = store
        self._send = send
        self._room = room
        self._horizon = horizon
        #: Whether this engine drives a run (a shared store: only its partitions' timers).
        self._owns = owns
        self._reload = anyio.Event()
        self._wheel: TimerWheel[TimerKey, TimerRow] | None = None
        self._last: TimerRow | None = None  # the last row _load returned: where to read on

    async def run(self, ctx: ChildContext) -> None:
        # A fresh wheel on every (re)start: it reloads what is due from the store's index.
        started = False
        while True:
            self._reload = anyio.Event()
            self._last = None
            self._wheel = TimerWheel(
                self._clock,
                self._fire,
                load=self._load,
                peek=self._peek,
                horizon=self._horizon,
                max_held=MAX_HELD,
            )
            with one_error():
                async with anyio.create_task_group() as tg:
                    await tg.start(self._wheel.run)
                    if not started:
                        ctx.started()
                        started = True
                    await self._reload.wait()
                    tg.cancel_scope.cancel()

    def reload(self) -> None:
        """Start over with a fresh wheel that loads from the store's index (partitions taken
        over: their timers, before the loaded position too)."""
        self._reload.set()

    def hold(self, row: TimerRow) -> None:
        if self._wheel is not None:
            self._wheel.schedule(row.due.timestamp(), _key(row), row)

    def release(self, row: TimerRow) -> None:
        if self._wheel is not None:
            self._wheel.cancel(_key(row))

    async def _fire(self, timer: Timer[TimerKey, TimerRow]) -> None:
        await self._room()
        row = timer.payload
        if self._owns is not None and not self._owns(row.tenant, row.workflow_id):
            return  # let go since it was loaded: its new owner fires it
        self._send((row.tenant, row.workflow_id), TimerDue(row=row))

    async def _load(
        self, after: float, after_key: TimerKey | None, until: float, limit: int
    ) -> list[tuple[float, TimerKey, TimerRow]]:
        """Up to ``limit`` rows past the position ``(after, after_key)``, due by ``until``."""
        # Read on from the last row returned when the position is there (a page cut short), or
        # past it (a range read to its end). Otherwise from the start of the index, skipping
        # the rows at or before the position in Python.
        last = self._last
        start: TimerRow | None = None
        if last is not None and after > -math.inf:
            last_due = last.due.timestamp()
            if after_key is None:
                start = last if last_due <= after else None
            elif last_due == after and _key(last) == after_key:
                start = last
        if start is None and after_key is not None:
            micros, tenant, workflow_id, timer_id = after_key
            start = TimerRow(_EPOCH + micros * _US, tenant, workflow_id, timer_id)
        out: list[tuple[float, TimerKey, TimerRow]] = []
        until_dt = from_timestamp(until)
        while True:
            rows = await self._store().due_timers(until_dt, limit=_PAGE, after=start)
            for row in rows:
                if self._owns is not None and not self._owns(row.tenant, row.workflow_id):
                    continue  # another engine's partition
                due = row.due.timestamp()
                key = _key(row)
                if due > after or (due == after and after_key is not None and after_key < key):
                    out.append((due, key, row))
                    if len(out) == limit:
                        self._last = row
                        return out
            if len(rows) < _PAGE:
                if out:
                    self._last = out[-1][2]
                return out
            start = rows[-1]

    async def _peek(self, after: float) -> float | None:
        due = await self._store().next_timer_due(from_timestamp(after))
        return None if due is None else due.timestamp()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _key(row: TimerRow) -> TimerKey:
    return ((row.due - _EPOCH) // _US, row.tenant, row.workflow_id, row.timer_id)
