"""Tests for aion._clock: ManualClock (advance, auto-advance, busy) and SystemClock.

Synchronisation is by ``anyio.wait_all_tasks_blocked`` and events; the only real waits are the
SystemClock's own (a few milliseconds), and ``fail_after`` guards against hangs.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

from aion._clock import Clock, ManualClock, SystemClock, from_timestamp, to_timestamp

START = datetime(2024, 1, 1, tzinfo=UTC)
DAY = 86400.0


async def test_advance_wakes_sleepers_in_deadline_order_and_not_before() -> None:
    clock = ManualClock(START)
    t0 = clock.now()
    woken: list[tuple[str, float]] = []

    async def sleeper(name: str, deadline: float) -> None:
        await clock.sleep_until(deadline)
        woken.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        for name, offset in [("c", 3.0), ("a", 1.0), ("d", 10.0), ("b", 2.0)]:
            tg.start_soon(sleeper, name, t0 + offset)
        await anyio.wait_all_tasks_blocked()
        assert clock.next_deadline() == t0 + 1
        clock.advance(0.999)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        clock.advance(0.001)
        await anyio.wait_all_tasks_blocked()
        assert woken == [("a", t0 + 1)]
        clock.advance(5)  # b and c are both due now: woken earliest first
        await anyio.wait_all_tasks_blocked()
        assert woken == [("a", t0 + 1), ("b", t0 + 6), ("c", t0 + 6)]
        assert clock.next_deadline() == t0 + 10
        clock.set_time(t0 + 10)
    assert [name for name, _ in woken] == ["a", "b", "c", "d"]


async def test_equal_deadlines_wake_in_arrival_order() -> None:
    clock = ManualClock(START)
    woken: list[int] = []

    async def sleeper(i: int) -> None:
        await clock.sleep(5)
        woken.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(sleeper, i)
            await anyio.wait_all_tasks_blocked()
        clock.advance(5)
    assert woken == [0, 1, 2, 3, 4]


async def test_sleeping_until_now_or_the_past_returns_at_once() -> None:
    clock = ManualClock(START)
    with anyio.fail_after(5):
        await clock.sleep_until(clock.now())
        await clock.sleep_until(clock.now() - DAY)
        await clock.sleep(0)
        await clock.sleep(-1)
    assert clock.now() == START.timestamp()
    assert clock.next_deadline() is None


def test_time_never_goes_backwards() -> None:
    clock = ManualClock(START)
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set_time(clock.now() - 0.001)
    clock.set_time(clock.now())  # standing still is fine
    assert clock.datetime() == START


async def test_a_cancelled_sleeper_is_not_a_pending_deadline() -> None:
    clock = ManualClock(START)
    t0 = clock.now()
    with anyio.move_on_after(0):  # cancelled at its first checkpoint: the clock wait
        await clock.sleep_until(t0 + 100)
    assert clock.next_deadline() is None


async def test_auto_advance_jumps_to_the_next_deadline_when_all_tasks_block() -> None:
    clock = ManualClock(START, auto_advance=True)
    t0 = clock.now()
    seen: list[float] = []

    async def sleeper(offset: float) -> None:
        await clock.sleep_until(t0 + offset)
        seen.append(clock.now())

    with anyio.fail_after(10):  # a hang guard only: the assertions are on the manual clock
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.run_auto_advance)
            async with anyio.create_task_group() as sleepers:
                sleepers.start_soon(sleeper, 30 * DAY)
                sleepers.start_soon(sleeper, 1.5)
                sleepers.start_soon(sleeper, DAY)
            tg.cancel_scope.cancel()
    # Each sleeper woke exactly at its deadline: time jumped, deadline by deadline.
    assert seen == [t0 + 1.5, t0 + DAY, t0 + 30 * DAY]
    assert clock.now() == t0 + 30 * DAY


async def test_auto_advance_waits_for_a_sleeper_that_arrives_later() -> None:
    clock = ManualClock(START, auto_advance=True)
    t0 = clock.now()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.run_auto_advance)
            await anyio.wait_all_tasks_blocked()  # auto-advance idles: nobody sleeps
            assert clock.now() == t0
            await clock.sleep(3600)
            tg.cancel_scope.cancel()
    assert clock.now() == t0 + 3600


async def test_busy_holds_auto_advance() -> None:
    clock = ManualClock(START, auto_advance=True)
    t0 = clock.now()
    done = anyio.Event()

    async def sleeper() -> None:
        await clock.sleep(60)
        done.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.run_auto_advance)
            with clock.busy():
                tg.start_soon(sleeper)
                await anyio.wait_all_tasks_blocked()
                # Everything is blocked, but work the clock cannot see is running: hold time.
                assert clock.now() == t0
                assert not done.is_set()
            await done.wait()
            tg.cancel_scope.cancel()
    assert clock.now() == t0 + 60


async def test_without_auto_advance_time_stands_still() -> None:
    clock = ManualClock(START)
    t0 = clock.now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run_auto_advance)
        tg.start_soon(clock.sleep, 60)
        await anyio.wait_all_tasks_blocked()
        assert clock.now() == t0
        assert clock.next_deadline() == t0 + 60
        tg.cancel_scope.cancel()


def test_a_clock_made_outside_an_event_loop_auto_advances() -> None:
    clock = ManualClock(START, auto_advance=True)

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(clock.run_auto_advance)
                await clock.sleep(7 * DAY)
                tg.cancel_scope.cancel()

    anyio.run(main)
    assert clock.now() == START.timestamp() + 7 * DAY


def test_default_start_is_the_real_time() -> None:
    before = time.time()
    clock = ManualClock()
    assert before <= clock.now() <= time.time()


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(ManualClock(START), Clock)
    assert isinstance(SystemClock(), Clock)


async def test_system_clock_sleep_until_the_past_returns_at_once() -> None:
    clock = SystemClock()
    start = time.perf_counter()
    await clock.sleep_until(clock.now() - 3600)
    await clock.sleep_until(clock.now())
    await clock.sleep(-5)
    assert time.perf_counter() - start < 0.05


async def test_system_clock_sleep_until_returns_at_or_after_the_deadline() -> None:
    clock = SystemClock()
    for delay in (0.0005, 0.002, 0.01):
        deadline = clock.now() + delay
        await clock.sleep_until(deadline)
        assert clock.now() >= deadline
    assert abs(clock.now() - time.time()) < 1


def test_timestamp_helpers() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert from_timestamp(to_timestamp(when)) == when
    east = datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert to_timestamp(east) == to_timestamp(when)
    assert from_timestamp(0) == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        to_timestamp(datetime(2024, 1, 1))  # naive on purpose


# --- regressions: non-finite times ---------------------------------------------------------


def test_non_finite_times_are_rejected() -> None:
    clock = ManualClock(START)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            clock.advance(bad)
        with pytest.raises(ValueError):
            clock.set_time(bad)
    assert clock.now() == START.timestamp()


async def test_auto_advance_never_jumps_to_an_infinite_deadline() -> None:
    clock = ManualClock(START, auto_advance=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run_auto_advance)
        tg.start_soon(clock.sleep_until, math.inf)
        await anyio.wait_all_tasks_blocked()
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert clock.now() == START.timestamp()
