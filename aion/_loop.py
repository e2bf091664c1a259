"""Event-loop specifics: how other threads wake waiters, and idleness checks for tests.

The store's writer thread finishes requests made by tasks on an event loop. Waking them must not
block the writer (anyio's ``from_thread.run_sync`` would wait for the loop), so it posts one
callback per batch with the loop's own thread-safe, non-blocking ``call_soon_threadsafe``. aion
runs on anyio's asyncio backend (docs/limits.md).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from threading import get_ident
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Flag", "Notifier", "WorkQueue", "running_loop", "wait_all_tasks_blocked"]

#: Schedules a callback to run on the event loop it was taken from; callable from any thread.
Notifier = Callable[[Callable[[], None]], object]


_last_loop: Any = None


def running_loop() -> asyncio.AbstractEventLoop:
    """The running event loop: ``asyncio.get_running_loop()`` without a system call.

    On Python 3.11, ``get_running_loop`` calls ``getpid()`` on every call (to notice a fork),
    and on the hot paths (each durable write waits on a future made here) that system call cost
    ~3 us per append under load. An asyncio loop keeps the id of the thread running it in
    ``_thread_id`` (None when stopped), so the loop last seen is still the running one exactly
    when that id is this thread's. A fork forgets it (below); a loop without ``_thread_id``
    (another implementation) always takes the slow path.
    """
    global _last_loop
    loop = _last_loop
    if loop is not None and loop._thread_id == get_ident():
        return loop  # type: ignore[no-any-return]
    loop = asyncio.get_running_loop()
    _last_loop = loop if hasattr(loop, "_thread_id") else None
    return loop


def _forget_loop() -> None:
    global _last_loop
    _last_loop = None


os.register_at_fork(after_in_child=_forget_loop)


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


class WorkQueue(Generic[T]):
    """An unbounded FIFO feeding a pool of worker tasks on one event loop.

    What anyio's memory object stream does for the pools, at a fraction of the cost: ``get``
    does not yield to the loop when an item is ready (a stream's ``receive`` always does, and
    builds an Event and a generic receiver object whenever it waits). To stay fair to other
    tasks, a worker yields once every ``fair_every`` items it takes without waiting.
    """

    __slots__ = ("_items", "_room", "_streak", "_waiters", "fair_every")

    def __init__(self, fair_every: int = 32) -> None:
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[T]] = deque()
        # Producers waiting for the queue to get shorter: (length they wait for, future).
        self._room: list[tuple[int, asyncio.Future[None]]] = []
        self._streak = 0
        self.fair_every = fair_every

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> None:
        """Hand ``item`` to a waiting worker, or queue it. Never blocks."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        self._items.append(item)

    async def get(self) -> T:
        if self._items:
            self._streak += 1
            if self._streak >= self.fair_every:
                self._streak = 0
                await asyncio.sleep(0)
                if not self._items:
                    return await self.get()
            item = self._items.popleft()
            if self._room:
                self._make_room()
            return item
        self._streak = 0
        waiter: asyncio.Future[T] = running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._items.appendleft(waiter.result())  # handed over, then cancelled: keep it
            else:
                waiter.cancel()
            raise

    async def wait_shorter_than(self, length: int) -> None:
        """Wait until fewer than ``length`` items are queued, or :meth:`release` is called.

        A producer's back-pressure: the queue itself stays unbounded.
        """
        if len(self._items) < length:
            return
        waiter: asyncio.Future[None] = running_loop().create_future()
        self._room.append((length, waiter))
        try:
            await waiter
        except BaseException:
            self._room = [(n, w) for n, w in self._room if w is not waiter]
            raise

    def release(self) -> None:
        """Wake every producer waiting for room (the queue is being replaced)."""
        room, self._room = self._room, []
        for _, waiter in room:
            if not waiter.done():
                waiter.set_result(None)

    def _make_room(self) -> None:
        length = len(self._items)
        waiting = []
        for n, waiter in self._room:
            if length < n:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((n, waiter))
        self._room = waiting


class Flag:
    """A one-shot event on one event loop: :meth:`set` wakes every :meth:`wait`, now and later.

    What ``asyncio.Event`` does for the engine's result waiters and replies, without its
    ``getpid()`` per wait (it looks the loop up through ``get_running_loop``; this uses
    :func:`running_loop`) and with no reset.
    """

    __slots__ = ("_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        if self._is_set:
            return
        self._is_set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self) -> None:
        if self._is_set:
            return
        waiter: asyncio.Future[None] = running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:  # cancelled before set(): do not keep it
                self._waiters.remove(waiter)
            raise
