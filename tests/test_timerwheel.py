"""Tests for aion._timerwheel: order, horizon refills, cancel races, wake-ups, errors.

Every test drives the wheel with a ManualClock and synchronises with
``anyio.wait_all_tasks_blocked`` (the driver is blocked once it sleeps on the clock), never with
real sleeps. A sorted list stands in for the store's due-time index.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aion._clock import ManualClock
from aion._timerwheel import Timer, TimerWheel

START = datetime(2024, 1, 1, tzinfo=UTC)
DAY = 86400.0


class FakeIndex:
    """The store's due-time index: rows sorted by (due, key), scanned by range.

    With ``gated`` set, a scan takes its snapshot and then waits until :meth:`release`, so a
    test can act while the scan is in flight (as with a real store read on another thread).
    """

    def __init__(self, slack: float = 0.0) -> None:
        self.rows: list[tuple[float, int, str]] = []
        self.loads: list[tuple[float, float]] = []
        self.positions: list[tuple[float, int | None]] = []
        self.limits: list[int] = []
        self.extra = 0  # rows returned beyond the limit
        self.peeks: list[float] = []
        self.gated = False
        self.gate: anyio.Event | None = None
        # A scan returns rows up to `slack` beyond both ends of its range, as a loader that
        # rounds the bounds to the store's precision does.
        self.slack = slack

    def add(self, due: float, key: int, payload: str = "") -> None:
        bisect.insort(self.rows, (due, key, payload))

    def delete(self, key: int) -> None:
        self.rows = [row for row in self.rows if row[1] != key]

    async def load(
        self, after: float, after_key: int | None, until: float, limit: int
    ) -> Iterable[tuple[float, int, str]]:
        self.loads.append((after, until))
        self.positions.append((after, after_key))
        self.limits.append(limit)
        # A page: the first `limit` rows past the position (more with `extra`, as a loader
        # that finishes a group of ties would return), and with `slack` also rows just outside
        # the range, which do not count. A loader reading on from a row has no slack there.
        lo = after - self.slack if after_key is None else after
        hi = until + self.slack
        below = [
            row for row in self.rows if lo < row[0] <= after and not past(row, after, after_key)
        ]
        page = [row for row in self.rows if past(row, after, after_key) and row[0] <= hi]
        snapshot = below + page[: limit + self.extra]
        await self._maybe_wait()
        return snapshot

    async def peek(self, after: float) -> float | None:
        self.peeks.append(after)
        nxt = next((row[0] for row in self.rows if row[0] > after), None)
        await self._maybe_wait()
        return nxt

    def release(self) -> bool:
        """Let an in-flight scan return its (possibly stale) snapshot."""
        gate, self.gate = self.gate, None
        if gate is None:
            return False
        gate.set()
        return True

    async def _maybe_wait(self) -> None:
        if self.gated:
            self.gate = anyio.Event()
            await self.gate.wait()


def past(row: tuple[float, int, str], after: float, after_key: int | None) -> bool:
    """Whether an index row lies after the position (after, after_key)."""
    due, key = row[0], row[1]
    return due > after or (due == after and after_key is not None and key > after_key)


class Recorder:
    """A fire callback like the engine's: record the timer, then delete its durable row."""

    def __init__(self, clock: ManualClock, index: FakeIndex | None = None) -> None:
        self.clock = clock
        self.index = index
        self.fired: list[tuple[float, int]] = []
        self.at: list[float] = []  # the clock's time at each fire
        self.early: list[tuple[float, float]] = []
        self.first = anyio.Event()

    async def __call__(self, timer: Timer[int, str]) -> None:
        if timer.due > self.clock.now():
            self.early.append((timer.due, self.clock.now()))
        self.fired.append((timer.due, timer.key))
        self.at.append(self.clock.now())
        self.first.set()
        if self.index is not None:
            self.index.delete(timer.key)

    def keys(self) -> list[int]:
        return [key for _, key in self.fired]


@asynccontextmanager
async def driving(wheel: TimerWheel[int, str]) -> AsyncIterator[None]:
    """Run the wheel's driver for the duration of the block (until it is blocked, at first)."""
    async with anyio.create_task_group() as tg:
        await tg.start(wheel.run)
        await anyio.wait_all_tasks_blocked()
        yield
        tg.cancel_scope.cancel()


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


def new_clock(**kwargs: Any) -> tuple[ManualClock, float]:
    clock = ManualClock(START, **kwargs)
    return clock, clock.now()


# --- order -----------------------------------------------------------------------------------


async def test_fires_in_due_order_with_ties_in_key_order() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    plan = [(5.0, 1), (1.0, 2), (5.0, 3), (0.5, 4), (5.0, 0), (300.0, 5), (1.0, 6)]
    for offset, key in plan:  # ties: not in key order, not all in one slot
        assert wheel.schedule(t0 + offset, key, "")
    async with driving(wheel):
        clock.advance(400)
        await settle()
    assert rec.keys() == [4, 2, 6, 0, 1, 3, 5]
    assert rec.early == []


async def test_fires_exactly_at_due_time_and_not_before() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    due = t0 + 10.123456
    wheel.schedule(due, 1, "")
    async with driving(wheel):
        clock.set_time(math.nextafter(due, -math.inf))
        await settle()
        assert rec.fired == []
        clock.set_time(due)
        await settle()
        assert rec.fired == [(due, 1)]


async def test_far_timers_cascade_and_fire_in_order_after_one_big_jump() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    # Around level boundaries (2**8, 2**16, 2**24 ticks of 2**-10 s) and far beyond.
    offsets = [3 * 365 * DAY, 0.001, 64.0, 16384.0, 0.25, 1.0, 30 * DAY, 16383.999, 0.2490, 65.0]
    for key, offset in enumerate(offsets):
        wheel.schedule(t0 + offset, key, "")
    async with driving(wheel):
        clock.advance(4 * 365 * DAY)
        await settle()
    assert [due for due, _ in rec.fired] == sorted(t0 + offset for offset in offsets)


async def test_timers_within_one_tick_fire_in_due_order() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec, resolution=1.0)
    offsets = [100.5, 100.25, 100.75, 100.0, 100.5]  # one tick; cascaded from level 1
    for key, offset in enumerate(offsets):
        wheel.schedule(t0 + offset, key, "")
    async with driving(wheel):
        clock.advance(100.3)
        await settle()
        assert rec.keys() == [3, 1]
        clock.advance(1)
        await settle()
    assert rec.keys() == [3, 1, 0, 4, 2]


async def test_a_crowded_slot_fires_each_timer_exactly_on_time() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    # 40 timers in one tick (a crowded level-0 slot), then 60 more over many ticks.
    dues = [t0 + 10 + i * 0.00001 for i in range(40)]
    dues += [t0 + 10.001 + i * 0.0005 for i in range(60)]
    for key, due in enumerate(dues):
        wheel.schedule(due, key, "")
    async with driving(wheel):
        for offset in (8.0, 9.9, 9.999):  # cascades on the way down, none due yet
            clock.set_time(t0 + offset)
            await settle()
            deadline = clock.next_deadline()
            assert deadline is not None and deadline <= dues[0]
        assert rec.fired == []
        for i, due in enumerate(dues):
            deadline = clock.next_deadline()
            assert deadline is not None and deadline <= due  # never sleeps past a due time
            clock.set_time(due)
            await settle()
            assert len(rec.fired) == i + 1
    assert rec.at == dues


class CountingClock(ManualClock):
    """A manual clock that counts reads, to catch a driver that spins instead of sleeping."""

    reads = 0

    def now(self) -> float:
        self.reads += 1
        return super().now()


async def test_driver_sleeps_instead_of_spinning() -> None:
    clock = CountingClock(START, auto_advance=True)
    t0 = clock.now()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    wheel.schedule(t0 + 30 * DAY + 0.123, 1, "")
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run_auto_advance)
        await tg.start(wheel.run)
        await rec.first.wait()
        tg.cancel_scope.cancel()
    assert rec.at == [t0 + 30 * DAY + 0.123]
    # One wake per level the timer cascades through, not one per tick or per loop.
    assert clock.reads <= 3 * 8


async def test_duplicate_key_is_ignored_and_cancel_then_reschedule_fires_once() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    assert wheel.schedule(t0 + 5, 1, "a")
    assert not wheel.schedule(t0 + 1, 1, "b")  # first schedule wins
    assert len(wheel) == 1 and 1 in wheel
    assert wheel.cancel(1)
    assert not wheel.cancel(1)
    assert not wheel.cancel(99)
    assert wheel.schedule(t0 + 2, 1, "c")
    async with driving(wheel):
        clock.advance(10)
        await settle()
    assert rec.fired == [(t0 + 2, 1)]
    assert len(wheel) == 0


async def test_cancelled_timer_does_not_fire() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    for key in range(10):
        wheel.schedule(t0 + key, key, "")
    async with driving(wheel):
        clock.advance(4.5)
        await settle()
        assert wheel.cancel(7)
        assert not wheel.cancel(2)  # already fired
        clock.advance(10)
        await settle()
    assert rec.keys() == [0, 1, 2, 3, 4, 5, 6, 8, 9]


async def test_a_timer_cancelled_by_an_earlier_callback_in_the_same_batch_does_not_fire() -> None:
    clock, t0 = new_clock()
    fired: list[int] = []
    wheel: TimerWheel[int, str]

    async def fire(timer: Timer[int, str]) -> None:
        fired.append(timer.key)
        if timer.key == 1:
            wheel.cancel(3)

    wheel = TimerWheel(clock, fire, resolution=1.0)
    for key in (1, 2, 3, 4):
        wheel.schedule(t0 + 5 + key / 10, key, "")  # one tick: drained together
    async with driving(wheel):
        clock.advance(6)
        await settle()
    assert fired == [1, 2, 4]


async def test_overdue_timer_scheduled_while_running_fires_at_once() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    wheel.schedule(t0 + 100, 1, "")
    async with driving(wheel):
        wheel.schedule(t0 - 5, 2, "")
        wheel.schedule(t0 - 50, 3, "")
        await settle()
        assert rec.keys() == [3, 2]


# --- wake-ups --------------------------------------------------------------------------------


async def test_earlier_insert_wakes_the_driver_without_spawning_tasks() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    wheel.schedule(t0 + 100, 1, "")
    async with driving(wheel):
        deadline = clock.next_deadline()
        assert deadline is not None and t0 + 60 <= deadline <= t0 + 100
        tasks = len(asyncio.all_tasks())
        assert wheel.schedule(t0 + 1, 2, "")
        for key in range(1000, 2000):  # later timers: no wake-up needed, nothing spawned
            wheel.schedule(t0 + 200 + key, key, "")
        assert len(asyncio.all_tasks()) == tasks
        await settle()
        # The driver re-armed its sleep for the earlier timer.
        assert clock.next_deadline() == t0 + 1
        clock.advance(1)
        await settle()
        assert rec.keys() == [2]


async def test_later_insert_does_not_wake_the_driver() -> None:
    clock, t0 = new_clock()
    rec = Recorder(clock)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec)
    wheel.schedule(t0 + 1, 1, "")
    async with driving(wheel):
        assert wheel._sleep_scope is not None
        scope = wheel._sleep_scope
        wheel.schedule(t0 + 2, 2, "")
        assert not scope.cancel_called
        wheel.schedule(t0 + 0.5, 3, "")
        assert scope.cancel_called


# --- horizon and the durable index ----------------------------------------------------------


def scanning_wheel(
    clock: ManualClock, index: FakeIndex, *, peek: bool = False, horizon: float = 60.0
) -> tuple[TimerWheel[int, str], Recorder]:
    rec = Recorder(clock, index)
    wheel: TimerWheel[int, str] = TimerWheel(
        clock, rec, load=index.load, peek=index.peek if peek else None, horizon=horizon
    )
    return wheel, rec


def commit(index: FakeIndex, wheel: TimerWheel[int, str], due: float, key: int) -> bool:
    """Schedule as the engine does: durable row first, then the wheel."""
    index.add(due, key)
    return wheel.schedule(due, key, "")


def uncommit(index: FakeIndex, wheel: TimerWheel[int, str], key: int) -> bool:
    """Cancel as the engine does: delete the durable row first, then tell the wheel."""
    index.delete(key)
    return wheel.cancel(key)


async def test_overdue_timers_fire_at_start_in_due_order() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key, offset in enumerate([-5.0, -3600.0, -0.25, -3600.0, -DAY, 30.0, 3600.0]):
        index.add(t0 + offset, key)
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        # No clock movement: overdue timers fire promptly, earliest first, ties by key.
        assert rec.keys() == [4, 1, 3, 0, 2]
        assert index.loads == [(-math.inf, t0 + 60)]
        assert len(wheel) == 1  # t0 + 30 is held; t0 + 3600 stays in the index
        clock.advance(3600)
        await settle()
    assert rec.keys() == [4, 1, 3, 0, 2, 5, 6]
    assert index.rows == []


async def test_timer_beyond_the_horizon_is_not_held_until_its_range_is_scanned() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        assert wheel.loaded_until == t0 + 60
        assert not commit(index, wheel, t0 + 90, 1)  # durable only
        assert len(wheel) == 0
        assert commit(index, wheel, t0 + 45, 2)
        clock.advance(29.5)
        await settle()
        assert len(wheel) == 1 and len(index.loads) == 1
        clock.advance(0.5)  # half the horizon has passed: scan (t0 + 60, t0 + 90]
        await settle()
        assert index.loads[1] == (t0 + 60, t0 + 90)
        assert 1 in wheel
        clock.advance(60)
        await settle()
    assert rec.keys() == [2, 1]


async def test_a_sloppy_scan_does_not_bring_back_a_timer_that_already_fired() -> None:
    clock, t0 = new_clock()
    index = FakeIndex(slack=45)  # returns rows far outside its range on both ends
    fired: list[int] = []

    async def fire(timer: Timer[int, str]) -> None:
        fired.append(timer.key)  # the row is deleted later, by the run's actor

    index.add(t0 + 20, 1)
    index.add(t0 + 70, 2)
    wheel: TimerWheel[int, str] = TimerWheel(clock, fire, load=index.load)
    async with driving(wheel):
        clock.advance(20)
        await settle()
        assert fired == [1]
        clock.advance(10)  # scans (t0 + 60, t0 + 90]; the loader also returns the t0 + 20 row
        await settle()
        clock.advance(60)
        await settle()
    assert fired == [1, 2]


async def test_timers_exactly_at_the_horizon_boundary() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    edge = t0 + 60
    after_edge = math.nextafter(edge, math.inf)
    index.add(edge, 1)  # in the first scan: until is inclusive
    index.add(after_edge, 2)  # in the second: after is exclusive
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        assert index.loads == [(-math.inf, edge)]
        assert 1 in wheel and 2 not in wheel
        assert commit(index, wheel, edge, 3)  # due == loaded_until: held
        assert not commit(index, wheel, after_edge, 4)  # just beyond: left to the scan
        clock.advance(30)
        await settle()
        assert index.loads[1] == (edge, edge + 30)
        clock.set_time(after_edge)
        await settle()
    assert rec.keys() == [1, 3, 2, 4]


async def test_loaded_timer_that_is_also_scheduled_fires_once() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    index.add(t0 + 10, 1)
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        assert 1 in wheel
        assert not wheel.schedule(t0 + 10, 1, "")  # e.g. re-scheduled by a replaying actor
        clock.advance(100)
        await settle()
    assert rec.keys() == [1]


async def test_cancel_of_a_loaded_timer() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    index.add(t0 + 10, 1)
    index.add(t0 + 20, 2)
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        assert uncommit(index, wheel, 1)
        clock.advance(100)
        await settle()
    assert rec.keys() == [2]


async def test_cancel_of_a_timer_not_loaded_yet() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    index.add(t0 + 600, 1)
    index.add(t0 + 601, 2)
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        assert not uncommit(index, wheel, 1)  # not held: the row deletion is what counts
        clock.advance(1000)
        await settle()
    assert rec.keys() == [2]


async def test_cancel_during_an_in_flight_scan_does_not_resurrect_the_timer() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        commit(index, wheel, t0 + 70, 1)
        commit(index, wheel, t0 + 71, 2)
        index.gated = True
        clock.advance(30)
        await settle()  # the scan of (t0 + 60, t0 + 90] has its snapshot and waits
        assert index.gate is not None
        assert not uncommit(index, wheel, 1)  # deleted after the snapshot was taken
        index.gated = False
        index.release()
        await settle()
        assert 1 not in wheel and 2 in wheel
        clock.advance(100)
        await settle()
    assert rec.keys() == [2]


async def test_timer_scheduled_during_an_in_flight_scan_fires_once() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        commit(index, wheel, t0 + 75, 1)  # beyond the first range: in the next snapshot
        index.gated = True
        clock.advance(30)
        await settle()
        assert index.gate is not None
        # Committed after the snapshot: the scan misses it, so the wheel must hold it now.
        assert commit(index, wheel, t0 + 80, 2)
        # Committed before the snapshot but scheduled late: held now, deduplicated later.
        assert commit(index, wheel, t0 + 75, 1)
        index.gated = False
        index.release()
        await settle()
        clock.advance(100)
        await settle()
    assert rec.keys() == [1, 2]


async def test_failed_scan_propagates_and_a_restart_rescans() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    index.add(t0 - 1, 1)
    failures = [OSError("disk on fire")]

    async def flaky_load(
        after: float, after_key: int | None, until: float, limit: int
    ) -> Iterable[tuple[float, int, str]]:
        if failures:
            raise failures.pop()
        return await index.load(after, after_key, until, limit)

    rec = Recorder(clock, index)
    wheel: TimerWheel[int, str] = TimerWheel(clock, rec, load=flaky_load)
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="disk on fire")):
        async with anyio.create_task_group() as tg:
            await tg.start(wheel.run)
    async with driving(wheel):
        pass
    assert rec.keys() == [1]


async def test_rows_just_outside_the_range_are_left_to_the_neighbouring_scan() -> None:
    clock, t0 = new_clock()
    index = FakeIndex(slack=2e-6)  # like rounding the bounds to whole microseconds
    edge = t0 + 60
    past = math.nextafter(edge, math.inf)
    for key, due in enumerate([edge - 1e-6, edge, past, edge + 1e-6, edge + 30 + 1e-6]):
        index.add(due, key)
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        assert [key in wheel for key in range(5)] == [True, True, False, False, False]
        clock.advance(100)
        await settle()
    assert rec.keys() == [0, 1, 2, 3, 4]  # each once, in order
    assert index.loads[0] == (-math.inf, edge)


async def test_loader_returning_rows_out_of_due_order_is_an_error() -> None:
    clock, t0 = new_clock()

    async def unsorted_load(
        after: float, after_key: int | None, until: float, limit: int
    ) -> Iterable[tuple[float, int, str]]:
        return [(t0 + 2, 1, ""), (t0 + 1, 2, "")]

    wheel: TimerWheel[int, str] = TimerWheel(clock, Recorder(clock), load=unsorted_load)
    with pytest.raises(ValueError, match=r"in \(due, key\) order"):
        await wheel.run()

    async def unsorted_ties(
        after: float, after_key: int | None, until: float, limit: int
    ) -> Iterable[tuple[float, int, str]]:
        return [(t0 + 1, 2, ""), (t0 + 1, 1, "")]  # a page may end between ties: key order

    wheel = TimerWheel(clock, Recorder(clock), load=unsorted_ties)
    with pytest.raises(ValueError, match=r"in \(due, key\) order"):
        await wheel.run()


async def test_an_overdue_scan_result_is_applied_whole_before_anything_fires() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key in range(600):
        index.add(t0 + 61 + key / 100, key)
    fired: list[float] = []
    wheel: TimerWheel[int, str]

    async def fire(timer: Timer[int, str]) -> None:
        fired.append(timer.due)
        index.delete(timer.key)
        if len(fired) == 1:  # a timer scheduled now, due among rows not applied yet
            commit(index, wheel, t0 + 61 + 5.205, 10_000)

    wheel = TimerWheel(clock, fire, load=index.load)
    async with driving(wheel):
        clock.advance(1000)  # the whole next range is overdue
        await settle()
    assert len(fired) == 601
    assert fired == sorted(fired)


async def test_held_timers_fire_while_a_long_scan_result_is_applied() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key in range(2000):
        index.add(t0 + 61 + key / 100, key)
    held_when_fired: list[int] = []
    wheel: TimerWheel[int, str]

    async def fire(timer: Timer[int, str]) -> None:
        held_when_fired.append(len(wheel))

    wheel = TimerWheel(clock, fire, load=index.load)
    async with driving(wheel):
        wheel.schedule(t0 + 30, 9999, "")  # held: due before loaded_until
        clock.advance(30)  # the second scan (2000 rows) and the held timer are both due now
        await settle()
        assert held_when_fired and held_when_fired[0] < 2000  # fired part-way through
        assert len(wheel) == 2000


async def test_without_peek_an_idle_wheel_rescans_every_half_horizon() -> None:
    clock, t0 = new_clock(auto_advance=True)
    index = FakeIndex()
    index.add(t0 + DAY, 1)
    wheel, rec = scanning_wheel(clock, index, horizon=3600)
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run_auto_advance)
        await tg.start(wheel.run)
        await rec.first.wait()
        tg.cancel_scope.cancel()
    assert rec.fired == [(t0 + DAY, 1)]
    assert rec.at == [t0 + DAY]
    assert len(index.loads) == 1 + DAY / 1800  # at start, then every 1800 s up to the fire


async def test_with_peek_an_idle_wheel_sleeps_until_the_next_stored_timer() -> None:
    clock, t0 = new_clock(auto_advance=True)
    index = FakeIndex()
    index.add(t0 + 30 * DAY, 1)
    wheel, rec = scanning_wheel(clock, index, peek=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run_auto_advance)
        await tg.start(wheel.run)
        await rec.first.wait()
        tg.cancel_scope.cancel()
    assert rec.fired == [(t0 + 30 * DAY, 1)]
    assert rec.at == [t0 + 30 * DAY]
    assert len(index.loads) == 2  # at start, and half a horizon before the timer


async def test_with_peek_a_timer_beyond_the_horizon_brings_the_next_scan_forward() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    wheel, rec = scanning_wheel(clock, index, peek=True)
    async with driving(wheel):
        assert clock.next_deadline() is None  # nothing stored: the driver sleeps for good
        assert not commit(index, wheel, t0 + DAY, 1)
        await settle()
        assert clock.next_deadline() == t0 + DAY - 30
        clock.advance(DAY)
        await settle()
    assert rec.keys() == [1]
    assert len(index.loads) == 2


async def test_with_peek_a_timer_within_the_horizon_is_held_without_a_scan() -> None:
    clock, _ = new_clock()
    index = FakeIndex()
    wheel, rec = scanning_wheel(clock, index, peek=True)
    async with driving(wheel):
        clock.advance(10 * DAY)  # idle: loaded_until is stale, but nothing is stored
        await settle()
        assert commit(index, wheel, clock.now() + 5, 1)
        assert wheel.loaded_until == clock.now() + 60
        clock.advance(5)
        await settle()
    assert rec.keys() == [1]
    assert len(index.loads) == 1


async def test_timer_scheduled_during_an_in_flight_peek_is_scanned_in_time() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    index.gated = True
    wheel, rec = scanning_wheel(clock, index, peek=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(wheel.run)
        await settle()
        assert index.release()  # the first scan returns; the peek takes its snapshot and waits
        await settle()
        assert index.peeks == [t0 + 60]
        # Committed after the peek's snapshot, beyond the scanned range: not held, and the
        # peek will say "nothing stored", but the next scan must still come in time.
        assert not commit(index, wheel, t0 + 200, 1)
        index.gated = False
        assert index.release()
        await settle()
        assert clock.next_deadline() == t0 + 170
        clock.advance(200)
        await settle()
        tg.cancel_scope.cancel()
    assert rec.keys() == [1]


async def test_scanless_advance_stops_short_of_the_next_stored_timer() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    index.add(t0 + 100, 1)
    wheel, rec = scanning_wheel(clock, index, peek=True)
    async with driving(wheel):
        clock.advance(45)  # the next scan is due at t0 + 70
        await settle()
        assert len(index.loads) == 1
        # (t0 + 60, t0 + 100) is known empty: hold this one without a scan, but the stored
        # timer at exactly t0 + 100 must stay beyond loaded_until for the scan to find it.
        assert commit(index, wheel, t0 + 80, 2)
        assert wheel.loaded_until < t0 + 100
        clock.advance(100)
        await settle()
    assert rec.keys() == [2, 1]


async def test_restart_rescans_the_index_from_the_beginning() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    wheel, rec = scanning_wheel(clock, index)
    async with driving(wheel):
        pass
    # Written while the driver was down and never passed to schedule (say, by a repair tool).
    index.add(t0 + 10, 1)
    index.add(t0 - 10, 2)
    async with driving(wheel):
        assert index.loads == [(-math.inf, t0 + 60)] * 2
        clock.advance(10)
        await settle()
    assert rec.keys() == [2, 1]


async def test_held_timers_are_never_beyond_the_loaded_range() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key in range(2000):
        index.add(t0 + key * 0.5, key)
    wheel, rec = scanning_wheel(clock, index, horizon=10)
    async with driving(wheel):
        for _ in range(310):  # 1023 s
            clock.advance(3.3)
            await settle()
            assert wheel.loaded_until <= clock.now() + 10
            assert len(wheel) <= 21  # 10 s of timers, two per second, and the edge
    assert rec.keys() == list(range(2000))


# --- max_held: a backlog is loaded a page at a time -------------------------------------------


def capped_wheel(
    clock: ManualClock, index: FakeIndex, max_held: int, *, peek: bool = False
) -> tuple[TimerWheel[int, str], Recorder, list[int]]:
    """A wheel fed by ``index`` with a cap; also returns the held count seen at each fire."""
    rec = Recorder(clock, index)
    held: list[int] = []
    wheel: TimerWheel[int, str]

    async def fire(timer: Timer[int, str]) -> None:
        held.append(len(wheel))
        await rec(timer)

    wheel = TimerWheel(
        clock, fire, load=index.load, peek=index.peek if peek else None, max_held=max_held
    )
    return wheel, rec, held


async def test_a_backlog_of_overdue_stored_timers_is_held_a_page_at_a_time() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    # 3,000 overdue timers (ties in groups of 7, keys not in due order) and 1,000 due within
    # the horizon: without a cap the first scan loads all 4,000.
    for i in range(3000):
        index.add(t0 - 600 + (i % 430), i)
    for i in range(3000, 4000):
        index.add(t0 + (i - 3000) * 0.05, i)
    wheel, rec, held = capped_wheel(clock, index, max_held=100)
    async with driving(wheel):
        assert len(rec.fired) == 3000 + 1  # every overdue timer, and the one due now
        clock.advance(60)
        await settle()
    assert rec.fired == sorted(rec.fired) and len(set(rec.keys())) == 4000
    assert max(held) <= 100
    assert index.rows == []
    assert max(index.limits) <= 100 and len(index.loads) >= 4000 // 100


async def test_a_page_can_end_between_timers_due_at_the_same_time() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key in (9, 3, 7, 1, 5, 2, 8, 4, 6, 0):
        index.add(t0 + 10, key)  # ten ties
    index.add(t0 + 5, 10)
    wheel, rec, held = capped_wheel(clock, index, max_held=4)
    async with driving(wheel):
        assert wheel.loaded_until == t0 + 10 and wheel.loaded_key == 2
        assert index.positions == [(-math.inf, None)]
        assert [key in wheel for key in (10, 0, 1, 2, 3)] == [True] * 4 + [False]
        clock.advance(10)
        await settle()
    assert rec.keys() == [10, *range(10)]
    assert max(held) <= 4
    # Each later page reads on from the last key loaded at t0 + 10 (the ties fire together,
    # so the wheel is empty when it loads the next page).
    assert index.positions[1:] == [(t0 + 10, 2), (t0 + 10, 6)]
    assert index.limits == [4, 4, 4]


async def test_a_loader_returning_more_than_asked_is_cut_at_the_limit() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    index.extra = 5
    for key in range(20):
        index.add(t0 - 20 + key, key)
    wheel, rec, held = capped_wheel(clock, index, max_held=4)
    async with driving(wheel):
        pass
    assert rec.keys() == list(range(20))
    assert max(held) <= 4


async def test_a_timer_scheduled_past_where_a_scan_is_cut_is_left_to_the_next_scan() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key in range(10):
        index.add(t0 - 10 + key, key)
    wheel, rec, _ = capped_wheel(clock, index, max_held=4)
    index.gated = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(wheel.run)
        await settle()  # the first scan has its snapshot (keys 0-3 of the first 4) and waits
        # Committed now, in the range being scanned: held while the scan is in flight ...
        assert commit(index, wheel, t0 - 5.5, 100)  # between keys 4 and 5: past the page
        assert commit(index, wheel, t0 - 9.5, 101)  # between keys 0 and 1: within the page
        assert 100 in wheel and 101 in wheel
        index.gated = False
        index.release()
        await settle()
        tg.cancel_scope.cancel()
    # ... but 100 was let go when the page ended at key 3, and came back in order.
    assert rec.keys() == [0, 101, 1, 2, 3, 4, 100, 5, 6, 7, 8, 9]


async def test_a_timer_scheduled_at_the_cut_due_time_after_its_key_is_left_to_the_scan() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key in (0, 2, 4, 6, 8, 10):
        index.add(t0 + 10, key)
    wheel, rec, _ = capped_wheel(clock, index, max_held=3)
    async with driving(wheel):
        assert (wheel.loaded_until, wheel.loaded_key) == (t0 + 10, 4)
        assert commit(index, wheel, t0 + 10, 3)  # before the cut: held
        assert not commit(index, wheel, t0 + 10, 5)  # after it: the next page has it
        assert not commit(index, wheel, math.nextafter(t0 + 10, math.inf), 1)
        clock.advance(20)  # one jump: everything due at once
        await settle()
    assert rec.keys() == [0, 2, 3, 4, 5, 6, 8, 10, 1]


async def test_a_timer_scheduled_by_a_callback_past_where_a_scan_is_cut_is_let_go() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key in range(2000):
        index.add(t0 + 61 + key / 100, key)
    fired: list[tuple[float, int]] = []
    wheel: TimerWheel[int, str]
    held_after: list[bool] = []

    async def fire(timer: Timer[int, str]) -> None:
        fired.append((timer.due, timer.key))
        index.delete(timer.key)
        if timer.key == 9999:  # fires part-way through applying the scan's 999 rows
            commit(index, wheel, t0 + 61 + 15.005, 10_000)  # past the cut (at key 998)

    wheel = TimerWheel(clock, fire, load=index.load, max_held=1000)
    async with driving(wheel):
        assert commit(index, wheel, t0 + 30, 9999)
        clock.advance(30)  # scans (t0 + 60, t0 + 90], cut at 999 rows; 9999 fires meanwhile
        await settle()
        assert fired == [(t0 + 30, 9999)] and wheel.loaded_key == 998
        held_after.append(10_000 in wheel)
        clock.advance(1000)  # one jump: everything due at once
        await settle()
    assert held_after == [False]
    assert fired == sorted(fired) and len(fired) == 2002


async def test_cancels_that_leave_room_wake_the_driver_for_the_next_page() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    for key in range(8):
        index.add(t0 + 10 + key, key)
    wheel, rec, _ = capped_wheel(clock, index, max_held=4)
    async with driving(wheel):
        assert len(wheel) == 4 and len(index.loads) == 1
        for key in range(3):
            uncommit(index, wheel, key)
        await settle()
        # At most 2 held (4 // 2): the next page is loaded now, not when key 3 is due.
        assert len(index.loads) == 2 and len(wheel) == 4
        clock.advance(20)
        await settle()
    assert rec.keys() == [3, 4, 5, 6, 7]


async def test_a_restart_lets_go_of_held_timers_and_pages_from_the_start() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    fired: list[int] = []
    failures = {2}

    async def fire(timer: Timer[int, str]) -> None:
        if timer.key in failures:
            failures.discard(timer.key)
            raise RuntimeError("store write failed")
        fired.append(timer.key)
        index.delete(timer.key)

    for key in range(6):
        index.add(t0 - 10 + key, key)
    wheel: TimerWheel[int, str] = TimerWheel(clock, fire, load=index.load, max_held=3)
    with pytest.RaisesGroup(RuntimeError):
        async with driving(wheel):
            pass
    assert fired == [0, 1] and 2 in wheel
    # Written while the driver was down: before the held timer 2, on another page.
    index.add(t0 - 20, 100)
    index.add(t0 - 19, 101)
    index.add(t0 - 18, 102)
    async with driving(wheel):
        pass
    assert fired == [0, 1, 100, 101, 102, 2, 3, 4, 5]


def test_max_held_must_be_a_positive_int() -> None:
    clock = ManualClock(START)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_held"):
            TimerWheel(clock, Recorder(clock), max_held=bad)  # type: ignore[arg-type]


# --- the fire callback -------------------------------------------------------------------------


async def test_callback_error_crashes_the_driver_and_the_timer_stays_pending() -> None:
    clock, t0 = new_clock()
    fired: list[int] = []
    failures = {2}

    async def fire(timer: Timer[int, str]) -> None:
        if timer.key in failures:
            failures.discard(timer.key)
            raise RuntimeError("bookkeeping failed")
        fired.append(timer.key)

    wheel: TimerWheel[int, str] = TimerWheel(clock, fire)
    for key in range(4):
        wheel.schedule(t0 + key, key, "")
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="bookkeeping failed")) as info:
        async with driving(wheel):
            clock.advance(10)
            await settle()
    [error] = info.value.exceptions
    assert any("timer 2 " in note for note in error.__notes__)
    assert fired == [0, 1]
    assert 2 in wheel and len(wheel) == 2
    # The supervisor's restart: the failed timer fires first, then the rest, each once.
    async with driving(wheel):
        pass
    assert fired == [0, 1, 2, 3]


async def test_callback_error_with_a_loader_refires_once_after_restart() -> None:
    clock, t0 = new_clock()
    index = FakeIndex()
    fired: list[int] = []
    failures = {1}

    async def fire(timer: Timer[int, str]) -> None:
        if timer.key in failures:
            failures.discard(timer.key)
            raise RuntimeError("store write failed")
        fired.append(timer.key)
        index.delete(timer.key)

    for key in range(3):
        index.add(t0 - 3 + key, key)
    wheel: TimerWheel[int, str] = TimerWheel(clock, fire, load=index.load)
    with pytest.RaisesGroup(RuntimeError):
        async with driving(wheel):
            pass
    async with driving(wheel):  # rescans from -inf: key 1 is loaded again, deduplicated
        assert len(index.loads) == 2 and index.loads[-1][0] == -math.inf
    assert fired == [0, 1, 2]


async def test_cancel_during_the_callback_prevents_a_retry() -> None:
    clock, t0 = new_clock()
    wheel: TimerWheel[int, str]

    async def fire(timer: Timer[int, str]) -> None:
        assert wheel.cancel(timer.key)  # held until the callback returns
        raise RuntimeError("boom")

    wheel = TimerWheel(clock, fire)
    wheel.schedule(t0, 1, "")
    with pytest.RaisesGroup(RuntimeError):
        async with driving(wheel):
            pass
    assert len(wheel) == 0


async def test_the_firing_key_is_held_until_its_callback_returns() -> None:
    clock, t0 = new_clock()
    results: list[bool] = []
    wheel: TimerWheel[int, str]

    async def fire(timer: Timer[int, str]) -> None:
        results.append(timer.key in wheel)
        results.append(wheel.schedule(t0 + 1, timer.key, ""))
        await anyio.lowlevel.checkpoint()

    wheel = TimerWheel(clock, fire)
    wheel.schedule(t0, 1, "")
    async with driving(wheel):
        assert results == [True, False]
        assert len(wheel) == 0
        clock.advance(5)
        await settle()
    assert results == [True, False]


async def test_driver_cancelled_during_a_callback_keeps_the_timer_pending() -> None:
    clock, t0 = new_clock()
    entered = anyio.Event()

    async def fire(timer: Timer[int, str]) -> None:
        entered.set()
        await anyio.sleep_forever()

    wheel: TimerWheel[int, str] = TimerWheel(clock, fire)
    wheel.schedule(t0, 1, "")
    async with anyio.create_task_group() as tg:
        tg.start_soon(wheel.run)
        await entered.wait()
        tg.cancel_scope.cancel()
    assert 1 in wheel


async def test_run_twice_at_once_is_an_error() -> None:
    clock, _ = new_clock()
    wheel: TimerWheel[int, str] = TimerWheel(clock, Recorder(clock))
    async with driving(wheel):
        with pytest.raises(RuntimeError, match="already running"):
            await wheel.run()


# --- validation and memory ----------------------------------------------------------------------


async def test_invalid_due_times_are_rejected() -> None:
    clock, _ = new_clock()
    wheel: TimerWheel[int, str] = TimerWheel(clock, Recorder(clock))
    for bad in (math.nan, math.inf, -math.inf, 1e300):
        with pytest.raises(ValueError):
            wheel.schedule(bad, 1, "")
    assert len(wheel) == 0
    index = FakeIndex()
    scanning, _ = scanning_wheel(clock, index)
    with pytest.raises(ValueError):
        scanning.schedule(math.nan, 1, "")
    assert not scanning.schedule(1e300, 1, "")  # far, but fine: left to the index


def test_invalid_configuration_is_rejected() -> None:
    clock = ManualClock(START)
    with pytest.raises(ValueError):
        TimerWheel(clock, Recorder(clock), horizon=0)
    with pytest.raises(ValueError):
        TimerWheel(clock, Recorder(clock), resolution=-1)
    with pytest.raises(ValueError, match="peek needs load"):
        TimerWheel(clock, Recorder(clock), peek=FakeIndex().peek)


def stored(wheel: TimerWheel[int, str]) -> int:
    """Entries the wheel physically holds, cancelled ones included (white box)."""
    return sum(len(slot) for row in wheel._levels for slot in row) + len(wheel._ready)


async def test_cancelled_entries_are_dropped_when_their_slot_cascades() -> None:
    clock, t0 = new_clock()
    wheel: TimerWheel[int, str] = TimerWheel(clock, Recorder(clock))
    for key in range(1000):
        wheel.schedule(t0 + 3600 + key / 1000, key, "")
    wheel.schedule(t0 + 3600.5, 5000, "")
    for key in range(1000):
        wheel.cancel(key)
    assert stored(wheel) == 1001  # cancel is O(1): nothing is searched for
    async with driving(wheel):
        clock.advance(3599)  # the slot holding them cascades before this
        await settle()
        assert stored(wheel) == 1


def test_cancelled_entries_are_compacted() -> None:
    clock = ManualClock(START)
    t0 = clock.now()
    wheel: TimerWheel[int, str] = TimerWheel(clock, Recorder(clock))
    for key in range(10):
        wheel.schedule(t0 + 1e6 + key, key, "")
    for key in range(10, 400_010):
        wheel.schedule(t0 + key, key, "")
        wheel.cancel(key)
    assert len(wheel) == 10
    assert stored(wheel) <= 2 * 65536 + 10  # dead entries stay bounded, not 400,000


# --- property: the wheel against a sorted-list model ---------------------------------------------

schedule_op = st.tuples(
    st.just("schedule"),
    st.one_of(
        st.integers(-40, 400).map(lambda i: i / 4),
        st.floats(-50, 500),
        st.sampled_from([0.0, 0.5, 1.0, 10.0, 60.0]),  # often exactly at a scan's edge
    ),
)
# Due on a grid of whole half-seconds (not relative to the clock): ties with other grid timers.
grid_op = st.tuples(st.just("grid"), st.integers(-20, 140).map(lambda i: i / 2))
cancel_op = st.tuples(st.just("cancel"), st.integers(0, 10_000))
advance_op = st.tuples(
    st.just("advance"),
    st.one_of(st.integers(0, 160).map(lambda i: i / 8), st.floats(0, 200), st.just(64.0)),
)
# Advance, but leave any scan it starts in flight, so the next operations race with it.
advance_mid_scan_op = st.tuples(st.just("advance_mid_scan"), st.integers(0, 80).map(float))
# Let an in-flight scan (or peek) return, and stop at the next one, if any.
step_scan_op = st.tuples(st.just("step_scan"), st.just(0.0))
restart_op = st.tuples(st.just("restart"), st.just(0.0))
# Several timers in one go, in random order, on a fine grid: many share a tick.
burst_op = st.tuples(
    st.just("burst"),
    st.lists(st.integers(0, 64).map(lambda i: 50 + i / 8), min_size=2, max_size=40),
)
# Rows written while the driver is down (an outage), on the half-second grid, overdue or due
# soon, many tied: the restart pages through them.
backlog_op = st.tuples(
    st.just("backlog"),
    st.lists(st.integers(-60, 40).map(lambda i: i / 2), min_size=1, max_size=60),
)
any_op = st.one_of(
    schedule_op,
    schedule_op,
    grid_op,
    burst_op,
    cancel_op,
    advance_op,
    advance_mid_scan_op,
    step_scan_op,
    restart_op,
    backlog_op,
)
operations = st.lists(any_op, min_size=4, max_size=60)
# None: the default (50,000, never reached here); tiny caps cut nearly every scan short.
max_helds = st.sampled_from([None, 1, 2, 3, 4, 5, 8, 20])


async def check_against_model(
    mode: str,
    horizon: float,
    resolution: float,
    start_offset: float,
    ops: list[tuple[str, Any]],
    max_held: int | None = None,
    extra: int = 0,
) -> None:
    clock = ManualClock(START)
    clock.set_time(clock.now() + start_offset)
    index = FakeIndex(slack=0.25 if mode == "sloppy" else 0.0)
    index.extra = extra  # rows beyond the limit, as a loader finishing a group of ties would
    index.gated = mode != "memory"
    rec = Recorder(clock, index if mode != "memory" else None)
    model: dict[int, float] = {}  # live timers: scheduled, not cancelled, not fired
    keys: list[int] = []
    direct: set[int] = set()  # keys the wheel took from schedule(), not from a scan
    seen = 0
    cap = 50_000 if max_held is None else max_held

    def make() -> TimerWheel[int, str]:
        if mode == "memory":
            return TimerWheel(clock, rec, resolution=resolution)
        return TimerWheel(
            clock,
            rec,
            load=index.load,
            peek=index.peek if mode in ("peek", "sloppy") else None,
            horizon=horizon,
            resolution=resolution,
            max_held=cap,
        )

    async def settle_fully() -> None:
        while True:
            # Let a task just started or cancelled run first: wait_all_tasks_blocked sleeps
            # 0.1 s (real time) whenever a task is runnable.
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
            if not index.release():
                return

    def check(complete: bool) -> None:
        nonlocal seen
        now = clock.now()
        batch, seen = rec.fired[seen:], len(rec.fired)
        assert rec.early == []
        assert batch == sorted(batch)  # in (due, key) order
        for due, key in batch:
            assert model.pop(key) == due  # live, not fired before, not cancelled
        if complete:
            assert [key for key, due in model.items() if due <= now] == []
        if mode == "memory":
            assert len(wheel) == len(model)
        else:
            for key, due in model.items():
                if key in wheel:  # at or before the loaded position
                    assert due <= wheel.loaded_until <= now + horizon
                    if due == wheel.loaded_until and wheel.loaded_key is not None:
                        assert key <= wheel.loaded_key
            # Scans never bring in more than the cap (direct schedules may add to it).
            assert sum(1 for key in model if key in wheel and key not in direct) <= cap
            assert len(index.limits) == 0 or max(index.limits) <= cap

    def add(due: float) -> int:
        key = len(keys)
        keys.append(key)
        model[key] = due
        if mode != "memory":
            index.add(due, key)
        return key

    wheel = make()
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def drive(w: TimerWheel[int, str], s: anyio.CancelScope) -> None:
            with s:
                await w.run()

        async def stop() -> None:
            nonlocal scope
            scope.cancel()
            await settle_fully()
            scope = anyio.CancelScope()

        tg.start_soon(drive, wheel, scope)
        await settle_fully()
        check(True)
        for op, arg in ops:
            if op in ("schedule", "burst", "grid"):
                for offset in [arg] if op != "burst" else arg:
                    base = math.floor(clock.now()) if op == "grid" else clock.now()
                    due = base + offset
                    key = add(due)
                    if wheel.schedule(due, key, ""):
                        direct.add(key)
            elif op == "cancel" and keys:
                key = keys[int(arg) % len(keys)]
                index.delete(key)
                model.pop(key, None)
                wheel.cancel(key)
            elif op in ("advance", "advance_mid_scan"):
                clock.advance(arg)
            elif op in ("restart", "backlog"):
                await stop()
                if mode != "memory":
                    wheel = make()  # a new process: only the index survives
                for offset in arg if op == "backlog" else []:
                    key = add(math.floor(clock.now()) + offset)
                    if mode == "memory":
                        wheel.schedule(model[key], key, "")
                tg.start_soon(drive, wheel, scope)
            elif op == "step_scan":
                index.release()
            if op in ("advance_mid_scan", "step_scan"):
                await anyio.wait_all_tasks_blocked()
                check(False)
            else:
                await settle_fully()
                check(True)
        scope.cancel()


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(["memory", "scan", "peek", "sloppy"]),
    horizon=st.sampled_from([1.0, 10.0, 60.0]),
    resolution=st.sampled_from([2.0**-10, 2.0**-3, 1.0, 0.3]),
    start_offset=st.one_of(st.just(0.0), st.floats(0, 10_000)),
    ops=operations,
    max_held=max_helds,
    extra=st.sampled_from([0, 0, 3]),
)
async def test_matches_a_sorted_list_model(
    mode: str,
    horizon: float,
    resolution: float,
    start_offset: float,
    ops: list[tuple[str, Any]],
    max_held: int | None,
    extra: int,
) -> None:
    await check_against_model(mode, horizon, resolution, start_offset, ops, max_held, extra)


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(["scan", "peek", "sloppy"]),
    horizon=st.sampled_from([1.0, 10.0, 60.0]),
    ops=st.lists(
        st.one_of(backlog_op, grid_op, cancel_op, advance_mid_scan_op, step_scan_op, advance_op),
        min_size=2,
        max_size=40,
    ),
    max_held=st.integers(1, 5),
    extra=st.sampled_from([0, 2]),
)
async def test_tiny_caps_page_through_tied_backlogs_in_order(
    mode: str,
    horizon: float,
    ops: list[tuple[str, Any]],
    max_held: int,
    extra: int,
) -> None:
    await check_against_model(
        mode, horizon, 2.0**-10, 0.0, [("backlog", [0.0]), *ops], max_held, extra
    )


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(
    mode=st.sampled_from(["memory", "scan", "peek", "sloppy"]),
    horizon=st.sampled_from([0.5, 1.0, 10.0, 60.0, 3600.0]),
    resolution=st.sampled_from([2.0**-10, 2.0**-6, 2.0**-3, 1.0, 0.3, 0.001]),
    start_offset=st.one_of(st.just(0.0), st.floats(0, 1e6)),
    ops=st.lists(any_op, max_size=200),
    max_held=max_helds,
    extra=st.sampled_from([0, 0, 3]),
)
async def test_matches_a_sorted_list_model_thoroughly(
    mode: str,
    horizon: float,
    resolution: float,
    start_offset: float,
    ops: list[tuple[str, Any]],
    max_held: int | None,
    extra: int,
) -> None:
    await check_against_model(mode, horizon, resolution, start_offset, ops, max_held, extra)


# --- the benchmark -------------------------------------------------------------------------------


def test_benchmark_runs_quick() -> None:
    from benchmarks import timers

    figures = timers.run(quick=True)
    assert figures["insert_cancel"]["wheel"]["insert_ns"] > 0
    assert figures["insert_cancel"]["heapq"]["insert_ns"] > 0
    assert figures["lateness"]["wheel"]["fires"] > 0
