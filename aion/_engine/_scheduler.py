"""The scheduler: mailboxes, the ready queue, the activation workers and the resident set.

A message for a run goes to its actor's mailbox; an actor with mail waits in one FIFO ready
queue; a fixed pool of workers takes actors from it, one round each, so a parked run costs no
task. Resident actors are kept in least-recently-used order: past ``max_resident_runs``, or
past ``max_resident_bytes`` of estimated memory, idle ones are evicted (a later message
re-activates the run by replay). An evicted run leaves nothing behind: its driver's reference
cycles are taken apart, so that its memory is freed at once rather than by a full collection.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager

from aion._loop import WorkQueue

from ._messages import Message
from ._state import Actor, Key

__all__ = ["Scheduler"]

#: How many of the least recently used runs one eviction round looks at.
EVICTION_SCAN = 1024
#: The timer wheel waits while this many runs per activation worker wait to be processed.
TIMER_BACKLOG_PER_WORKER = 2
#: What a resident run is charged against ``max_resident_bytes``: a run's driver, coroutine
#: frames and futures, measured at ~7.3 KB for a run waiting on a signal (``python -m
#: benchmarks workflows``), plus per event of its current run what its code may keep of it.
RESIDENT_RUN_BYTES = 8 * 1024
RESIDENT_EVENT_BYTES = 128


class Scheduler:
    """Moves actors with mail through the workers; keeps the resident set bounded.

    Args:
        process: one round of an actor (raises when the actor crashed).
        crashed: what follows a crash (restart later, or park).
        busy: held while an actor is processed (see :class:`~._config.Services`).
        max_resident: idle actors beyond this many are evicted.
        max_resident_bytes: idle actors are evicted while the estimated memory of the resident
            ones (see :func:`cost`) is above this.
        workers: the number of activation workers (bounds the timer back-pressure).
        elsewhere: whether another engine drives a run now (a shared store's partitions).
    """

    def __init__(
        self,
        *,
        process: Callable[[Actor], Awaitable[None]],
        crashed: Callable[[Actor, Exception], Awaitable[None]],
        busy: Callable[[], AbstractContextManager[object]],
        max_resident: int,
        max_resident_bytes: int,
        workers: int,
        elsewhere: Callable[[Key], bool] = lambda key: False,
    ) -> None:
        self.actors: OrderedDict[Key, Actor] = OrderedDict()
        self.resident_bytes = 0  # the sum of the actors' charges
        self.processing = 0
        self._process = process
        self._crashed = crashed
        self._busy = busy
        self._max_resident = max_resident
        self._max_bytes = max_resident_bytes
        self._workers = workers
        self._elsewhere = elsewhere
        self._ready: WorkQueue[Actor] = WorkQueue()

    @property
    def backlog(self) -> int:
        """Runs waiting in the ready queue."""
        return len(self._ready)

    def idle(self) -> bool:
        """No run has mail, is being processed, or has a step in flight."""
        return not self.processing and all(
            not a.mailbox and not a.queued and not a.steps_in_flight for a in self.actors.values()
        )

    def actor(self, key: Key) -> Actor:
        actor = self.actors.get(key)
        if actor is None:
            actor = self.actors[key] = Actor(key)
        return actor

    def send(self, key: Key, message: Message) -> None:
        actor = self.actor(key)
        actor.mailbox.append(message)
        self.schedule(actor)

    def schedule(self, actor: Actor) -> None:
        if not actor.queued and not actor.busy:
            actor.queued = True
            self._ready.put_nowait(actor)

    def forget(self, actor: Actor) -> None:
        """``actor`` leaves memory (if it is still the resident one of its run)."""
        if self.actors.get(actor.key) is actor:
            del self.actors[actor.key]
            self._release(actor)

    def charge(self, actor: Actor) -> None:
        """Count the resident ``actor`` at what it costs now (after a round or a start)."""
        if self.actors.get(actor.key) is actor:
            charge = cost(actor)
            self.resident_bytes += charge - actor.charged
            actor.charged = charge

    def _release(self, actor: Actor) -> None:
        self.resident_bytes -= actor.charged
        actor.charged = 0
        actor.drop_driver()

    def reschedule(self) -> None:
        """After the activation workers restarted: every run with mail gets processed."""
        self.processing = 0
        old, self._ready = self._ready, WorkQueue()
        old.release()  # producers waiting for room look at the new queue
        for actor in self.actors.values():
            actor.queued = actor.busy = False
            if actor.mailbox:
                self.schedule(actor)

    async def room_for_timers(self) -> None:
        """Back-pressure for the timer wheel: wait while ``TIMER_BACKLOG_PER_WORKER`` runs per
        activation worker are already waiting to be processed.

        Without it, a backlog of overdue timers (after an outage) wakes every one of its runs at
        once: all of them become resident together, and new work queues behind all of them.
        """
        limit = TIMER_BACKLOG_PER_WORKER * self._workers
        while len(self._ready) >= limit:
            await self._ready.wait_shorter_than(limit)  # woken too if the queue is replaced

    async def worker(self) -> None:
        """An activation worker: processes actors with mail, one at a time."""
        ready = self._ready
        while True:
            actor = await ready.get()
            actor.queued = False
            actor.busy = True  # mail that arrives now waits for this round: one worker per run
            self.processing += 1
            crashed = False
            try:
                with self._busy():
                    try:
                        await self._process(actor)
                    except Exception as exc:
                        crashed = True
                        await self._crashed(actor, exc)
            finally:
                actor.busy = False
                self.processing -= 1
                self.charge(actor)
            if crashed:
                pass  # a restart is scheduled after a backoff (or the run was parked)
            elif actor.mailbox:
                self.schedule(actor)
            elif (actor.steps_in_flight == 0 and actor.finished) or (
                actor.idle and self._elsewhere(actor.key)
            ):
                # A closed run keeps nothing in memory: later mail activates from the store
                # and finds it closed. Nor does one that another engine drives now (its
                # partition moved while this round was under way).
                self.forget(actor)
            else:
                if actor.key in self.actors:
                    self.actors.move_to_end(actor.key)  # least recently used are evicted first
                self.evict()

    def evict(self) -> None:
        """Evict idle runs beyond the resident limits, least recently used first."""
        excess = len(self.actors) - self._max_resident
        over = self.resident_bytes - self._max_bytes
        if excess <= 0 and over <= 0:
            return
        # Oldest first; stop as soon as enough idle runs are found, and look at no more than
        # EVICTION_SCAN runs: when the oldest are all busy (a backlog of woken runs), a full walk
        # on every processing round is quadratic. Busy runs move to the end once processed, so
        # idle ones surface and a later round evicts them.
        idle: list[Actor] = []
        for actor in itertools.islice(self.actors.values(), EVICTION_SCAN):
            if actor.idle:
                idle.append(actor)
                excess -= 1
                over -= actor.charged
                if excess <= 0 and over <= 0:
                    break
        for actor in idle:
            del self.actors[actor.key]
            self._release(actor)


def cost(actor: Actor) -> int:
    """The estimated memory of a resident run: nothing without a driver (a run with mail, not
    yet activated), else :func:`cost_of` the events of its current run."""
    if actor.driver is None:
        return 0
    return cost_of(events=actor.head - actor.since + 1)


def cost_of(*, events: int) -> int:
    """What a resident run with ``events`` events in its current run is charged."""
    return RESIDENT_RUN_BYTES + RESIDENT_EVENT_BYTES * events
