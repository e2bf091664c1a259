"""Daemon threads for sync steps.

anyio's worker threads are not daemon threads, and the interpreter waits for them at exit: one
sync step that never returns (a socket without a timeout, ``threading.Event().wait()``) would
keep the process alive after the engine stopped. Python cannot stop a thread, so the engine
runs sync steps on daemon threads of its own instead: leaving ``async with Engine`` never waits
for a step, and the process exits with a stuck step still running (its attempt is recorded as
started and not finished, so the next engine runs it again: at-least-once).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from aion._loop import running_loop

__all__ = ["DaemonThreads"]

#: An idle thread exits after this many seconds without work.
IDLE_SECONDS = 10.0

_Job = tuple[
    Callable[[], Any],
    asyncio.AbstractEventLoop,
    "asyncio.Future[tuple[Any, BaseException | None]]",
]
_Outcome = tuple[
    "asyncio.Future[tuple[Any, BaseException | None]]", tuple[Any, BaseException | None]
]


class DaemonThreads:
    """Runs sync callables on daemon threads, made on demand, reused while there is work.

    Concurrency is the caller's to bound (the step executor's capacity limiter). A call whose
    caller stops waiting (a step's timeout, the engine stopping) is abandoned: its thread runs
    it to the end and drops the result, and a later call gets another thread.

    Args:
        name: the threads' name prefix.
        idle: seconds an idle thread waits for work before it exits.
    """

    def __init__(self, name: str = "aion-step", *, idle: float = IDLE_SECONDS) -> None:
        self._name = name
        self._idle_seconds = idle
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job and not yet claimed by one
        self._made = 0
        # Outcomes not yet taken by their event loop, by loop (see _report).
        self._outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}

    async def run(self, fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
        """Run ``fn()`` on a daemon thread: ``(its result, None)``, or ``(None, what it
        raised)``. Returned, not raised: a ``KeyboardInterrupt`` or ``SystemExit`` that a step
        raises is that step's failure, and raised into a task it would stop the event loop."""
        loop = running_loop()
        future: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
        self._submit((fn, loop, future))
        try:
            return await future
        finally:
            if not future.done():
                future.cancel()  # abandoned: the thread drops the result when it comes

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._jobs.put(job)
            if self._idle > 0:
                self._idle -= 1  # an idle thread takes it
                return
            self._made += 1
            number = self._made
        thread = threading.Thread(target=self._work, name=f"{self._name}-{number}", daemon=True)
        thread.start()

    def _work(self) -> None:
        while True:
            try:
                fn, loop, future = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1  # nobody claimed a waiting thread: this one leaves
                        return
                continue  # every waiting thread is claimed: a job is queued for this one
            error: BaseException | None = None
            try:
                value = fn()
            except BaseException as exc:
                value, error = None, exc
            self._report(loop, future, (value, error))
            del fn, loop, future, value, error  # not kept alive while this thread waits
            with self._lock:
                self._idle += 1

    def _report(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[tuple[Any, BaseException | None]],
        outcome: tuple[Any, BaseException | None],
    ) -> None:
        """Hand an outcome to its loop. Outcomes that finish while the loop has not yet taken
        the earlier ones go with them: one wake-up of the loop (a write to its self-pipe, a
        callback) per batch, not one per step."""
        with self._lock:
            batch = self._outcomes.get(loop)
            if batch is not None:
                batch.append((future, outcome))
                return
            batch = self._outcomes[loop] = [(future, outcome)]
        # A closed event loop refuses it (RuntimeError): nobody waits for these results.
        try:
            loop.call_soon_threadsafe(self._settle_all, loop)
        except RuntimeError:
            with self._lock:
                self._outcomes.pop(loop, None)

    def _settle_all(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._outcomes.pop(loop, ())
        for future, outcome in batch:
            if not future.done():  # else abandoned
                future.set_result(outcome)
