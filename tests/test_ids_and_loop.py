"""Small hot-path helpers: engine-made ids and the cached running-loop lookup."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from types import SimpleNamespace
from typing import Any
from unittest import mock

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aion._ids
from aion._ids import new_id, new_workflow_id
from aion._loop import WorkQueue, running_loop


@pytest.mark.parametrize("make", [new_id, new_workflow_id])
def test_ids_are_32_hex_digits_and_unique(make: Any) -> None:
    ids = [make() for _ in range(20_000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)


def test_run_ids_start_with_random_digits() -> None:
    # Approval and waitpoint ids are named after a run id's first eight digits; a new run of
    # the same workflow (continue-as-new) must not repeat them.
    assert len({new_id()[:8] for _ in range(1_000)}) > 990


def test_workflow_ids_are_uuid7_carrying_the_time_they_were_made() -> None:
    import time

    before = time.time_ns() // 1_000_000
    made = new_workflow_id()
    after = time.time_ns() // 1_000_000
    value = uuid.UUID(hex=made)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


@given(st.integers(0, 2**48 - 2), st.integers(1, 10**9))
def test_a_workflow_id_made_a_millisecond_later_sorts_after(millis: int, gap: int) -> None:
    # Sorted like their creation times, the ids of a batch of starts share the store's pages.
    clock = SimpleNamespace(time_ns=lambda: millis * 1_000_000)
    with mock.patch.object(aion._ids, "time", clock):
        first = new_workflow_id()
        clock.time_ns = lambda: min(millis + gap, 2**48 - 1) * 1_000_000
        second = new_workflow_id()
    assert first < second
    assert uuid.UUID(hex=first).version == uuid.UUID(hex=second).version == 7


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id and leave at once
        try:
            os.write(write_end, new_id().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    parent_next = new_id()
    with os.fdopen(read_end, "rb") as pipe:
        child_first = pipe.read().decode()
    os.waitpid(pid, 0)
    assert len(child_first) == 32
    assert child_first != parent_next  # without a reseed at fork both would be the same


def test_running_loop_is_the_running_loop_across_loops_and_threads() -> None:
    seen: list[tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]] = []

    async def probe() -> None:
        seen.append((running_loop(), asyncio.get_running_loop()))
        seen.append((running_loop(), asyncio.get_running_loop()))  # the cached path

    anyio.run(probe)
    anyio.run(probe)  # a new loop on the same thread: the cached one is stopped
    thread = threading.Thread(target=anyio.run, args=(probe,))
    thread.start()
    thread.join()
    assert len(seen) == 6
    assert all(mine is theirs for mine, theirs in seen)
    assert len({id(loop) for loop, _ in seen[::2]}) == 3


def test_running_loop_outside_a_loop_raises_like_asyncio() -> None:
    with pytest.raises(RuntimeError):
        running_loop()


def test_engines_raise_the_default_gc_threshold_while_they_run(tmp_path: Any) -> None:
    import gc

    import aion
    from aion._gc import ENGINE_GEN0_THRESHOLD

    before = gc.get_threshold()
    gc.set_threshold(700, before[1], before[2])  # CPython's default
    try:

        async def main() -> list[int]:
            seen = []
            async with aion.Engine(tmp_path / "a"):
                seen.append(gc.get_threshold()[0])
                async with aion.Engine(tmp_path / "b"):
                    seen.append(gc.get_threshold()[0])
                seen.append(gc.get_threshold()[0])  # the first engine still runs
            seen.append(gc.get_threshold()[0])  # the last one stopped: restored
            async with aion.Engine(tmp_path / "c", tune_gc=False):
                seen.append(gc.get_threshold()[0])
            gc.set_threshold(5_000)  # the application's own choice is kept
            async with aion.Engine(tmp_path / "d"):
                seen.append(gc.get_threshold()[0])
            return seen

        assert anyio.run(main) == [
            ENGINE_GEN0_THRESHOLD,
            ENGINE_GEN0_THRESHOLD,
            ENGINE_GEN0_THRESHOLD,
            700,
            700,
            5_000,
        ]
    finally:
        gc.set_threshold(*before)


def test_a_flag_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    from aion._loop import Flag

    async def main() -> None:
        flag = Flag()
        woke: list[int] = []

        async def waiter(i: int) -> None:
            await flag.wait()
            woke.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(waiter, i)
            with anyio.CancelScope() as scope:  # a waiter that gives up
                scope.cancel()
                await flag.wait()
            assert scope.cancelled_caught
            await anyio.lowlevel.checkpoint()
            assert len(flag._waiters) == 3  # the three tasks; the cancelled wait is gone
            assert not flag.is_set() and woke == []
            flag.set()
        assert sorted(woke) == [0, 1, 2] and flag.is_set() and flag._waiters == []
        await flag.wait()  # set: returns at once
        flag.set()  # idempotent

    anyio.run(main)


def test_a_producer_waits_for_room_in_a_work_queue() -> None:
    async def main() -> None:
        queue: WorkQueue[int] = WorkQueue()
        for i in range(5):
            queue.put_nowait(i)
        await queue.wait_shorter_than(6)  # already shorter: returns at once
        woke: list[int] = []

        async def producer() -> None:
            await queue.wait_shorter_than(3)
            woke.append(len(queue))

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            assert await queue.get() == 0
            assert await queue.get() == 1
            await anyio.wait_all_tasks_blocked()
            assert woke == []  # 3 left: not yet
            assert await queue.get() == 2
        assert woke == [2]

        # Cancelled producers leave no waiter behind; release() wakes every producer.
        with anyio.move_on_after(0):
            await queue.wait_shorter_than(1)
        assert queue._room == []
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.wait_shorter_than, 1)
            tg.start_soon(queue.wait_shorter_than, 2)
            await anyio.wait_all_tasks_blocked()
            assert len(queue._room) == 2
            queue.release()
        assert len(queue) == 2 and queue._room == []

    anyio.run(main)
