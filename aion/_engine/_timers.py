"""The timer service: durable timer rows fire through an in-memory timing wheel.

The wheel holds the timers due within its horizon and reloads from the store's due index as
time moves; a timer that comes due is sent to its run as a :class:`~._messages.TimerDue`, at
the pace the activation workers take them (a backlog of overdue timers after an outage does
not wake every run at once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from aion._clock import Clock, from_timestamp
from aion._supervision import ChildContext
from aion._timerwheel import Timer, TimerWheel
from aion.store import EventStore, TimerRow

from ._messages import Message, TimerDue
from ._tasks import one_error

__all__ = ["Timers"]

TimerKey = tuple[str, str, str]

#: Rows read per store call when the wheel reloads.
_PAGE = 1000


class Timers:
    """Holds, releases and fires timer rows (a supervised service: :meth:`run`)."""

    def __init__(
        self,
        clock: Clock,
        store: Callable[[], EventStore],
        send: Callable[[tuple[str, str], Message], None],
        room: Callable[[], Awaitable[None]],
        horizon: float,
    ) -> None:
        self._clock = clock
        self._store = store
        self._send = send
        self._room = room
        self._horizon = horizon
        self._wheel: TimerWheel[TimerKey, TimerRow] | None = None

    async def run(self, ctx: ChildContext) -> None:
        # A fresh wheel on every (re)start: it reloads what is due from the store's index.
        self._wheel = TimerWheel(
            self._clock, self._fire, load=self._load, peek=self._peek, horizon=self._horizon
        )
        with one_error():
            async with anyio.create_task_group() as tg:
                await tg.start(self._wheel.run)
                ctx.started()

    def hold(self, row: TimerRow) -> None:
        if self._wheel is not None:
            self._wheel.schedule(row.due.timestamp(), _key(row), row)

    def release(self, row: TimerRow) -> None:
        if self._wheel is not None:
            self._wheel.cancel(_key(row))

    async def _fire(self, timer: Timer[TimerKey, TimerRow]) -> None:
        await self._room()
        row = timer.payload
        self._send((row.tenant, row.workflow_id), TimerDue(row=row))

    async def _load(self, after: float, until: float) -> list[tuple[float, TimerKey, TimerRow]]:
        out: list[tuple[float, TimerKey, TimerRow]] = []
        last: TimerRow | None = None
        until_dt = from_timestamp(until)
        while True:
            rows = await self._store().due_timers(until_dt, limit=_PAGE, after=last)
            for row in rows:
                due = row.due.timestamp()
                if due > after:
                    out.append((due, _key(row), row))
            if len(rows) < _PAGE:
                return out
            last = rows[-1]

    async def _peek(self, after: float) -> float | None:
        due = await self._store().next_timer_due(from_timestamp(after))
        return None if due is None else due.timestamp()


def _key(row: TimerRow) -> TimerKey:
    return (row.tenant, row.workflow_id, row.timer_id)
