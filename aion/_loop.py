"""Event-loop specifics: how other threads wake waiters, and idleness checks for tests.

The store's writer thread finishes requests made by tasks on an event loop. Waking them must not
block the writer (anyio's ``from_thread.run_sync`` would wait for the loop), so it posts one
callback per batch with the loop's own thread-safe, non-blocking ``call_soon_threadsafe``. aion
runs on anyio's asyncio backend (docs/limits.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Notifier", "wait_all_tasks_blocked"]

#: Schedules a callback to run on the event loop it was taken from; callable from any thread.
Notifier = Callable[[Callable[[], None]], object]


async def wait_all_tasks_blocked() -> None:
    """Return once every other task of the loop waits on something (for manual clocks).

    anyio's version polls every 100 ms; this one yields to the loop and re-checks at once, then
    backs off to 1 ms, so a simulated month of timers runs in milliseconds.
    """
    this = asyncio.current_task()
    spins = 0
    while True:
        await asyncio.sleep(0)
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if waiter is None or waiter.done():
                break
        else:
            return
        spins += 1
        if spins > 50:
            await asyncio.sleep(0.001)
