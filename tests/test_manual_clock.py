"""ManualClock details that the engine relies on (the clock's main tests: tests/test_clock.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio

from aion.testing import ManualClock


async def test_auto_advance_ignores_cancelled_sleepers() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC), auto_advance=True)
    start = clock.now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run_auto_advance)
        with anyio.move_on_after(0) as scope:  # a real-time scope: cancels at once
            await clock.sleep(1000)
        assert scope.cancelled_caught
        assert clock.next_deadline() is None
        await clock.sleep(5)
        assert clock.now() == start + 5  # not 1000: the cancelled sleep is forgotten
        tg.cancel_scope.cancel()
