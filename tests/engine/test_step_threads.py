"""Sync steps run on daemon threads of the executor's own (issue 12, item 12).

A sync step that never returns must not keep the process from exiting after the engine stopped,
must not hold up leaving ``async with Engine``, and, once its timeout abandoned it, must not
take a thread slot from the steps after it. What a sync step raises, ``SystemExit`` and
``KeyboardInterrupt`` included, is that step's failure, never the engine's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import aion
from aion.store import MemoryStore
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)

SCRIPT = """
import threading
import anyio
import aion

entered = threading.Event()


def stuck() -> None:
    entered.set()
    threading.Event().wait()  # never returns


@aion.workflow
async def wf(ctx: aion.Context) -> None:
    await ctx.step(stuck)


async def main(path: str) -> None:
    async with aion.Engine(path, workflows=[wf]) as engine:
        await engine.start(wf, workflow_id="stuck")
        await anyio.to_thread.run_sync(entered.wait, 10.0)
        assert entered.is_set()
    print("left the engine", flush=True)


anyio.run(main, {path!r})
print("main returned", flush=True)
"""


def test_a_step_that_never_returns_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent(SCRIPT.format(path=str(tmp_path / "data"))))
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["left the engine", "main returned"]
    assert time.monotonic() - began < 15  # the interpreter did not wait for the step's thread


release = threading.Event()
ran: list[str] = []


def hangs() -> None:
    release.wait(30)


def quick(label: str) -> str:
    ran.append(label)
    return f"{label} ran"


def exits() -> None:
    sys.exit(3)


def interrupts() -> None:
    raise KeyboardInterrupt("from a step")


@aion.workflow
async def abandon_then_go_on(ctx: aion.Context) -> str:
    with pytest.raises(aion.errors.StepError, match="TimeoutError"):
        await ctx.step(hangs, timeout=0.2, retry=aion.RetryPolicy(max_attempts=1))
    result: str = await ctx.step(quick, "after")
    return result


@aion.workflow
async def raises_base_exceptions(ctx: aion.Context) -> list[str]:
    seen = []
    for fn in (exits, interrupts):
        try:
            await ctx.step(fn, retry=aion.RetryPolicy(max_attempts=1))
        except aion.errors.StepError as exc:
            seen.append(exc.error_type)
    return seen


async def test_a_timed_out_step_frees_its_thread_slot() -> None:
    release.clear()
    clock = ManualClock(T0, auto_advance=True)
    try:
        async with aion.Engine(
            MemoryStore(), workflows=[abandon_then_go_on], clock=clock, step_threads=1
        ) as engine:
            handle = await engine.start(abandon_then_go_on)
            # One thread slot: the next step runs while the abandoned one still hangs.
            assert await handle.result(timeout=20) == "after ran"
    finally:
        release.set()


async def test_a_step_raising_system_exit_or_keyboard_interrupt_just_fails() -> None:
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(MemoryStore(), workflows=[raises_base_exceptions], clock=clock) as e:
        handle = await e.start(raises_base_exceptions)
        assert await handle.result(timeout=20) == ["SystemExit", "KeyboardInterrupt"]
        assert e.failure is None


async def test_outcomes_that_finish_together_wake_the_loop_once() -> None:
    import asyncio

    from aion._engine._threads import DaemonThreads

    threads = DaemonThreads("test-batch")
    loop = asyncio.get_running_loop()
    wakes = 0
    real = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakes
        wakes += 1
        return real(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        calls = [asyncio.ensure_future(threads.run(lambda i=i: i * 2)) for i in range(20)]
        await asyncio.sleep(0)  # every call is submitted
        # The loop stands still until every thread reported: their outcomes wait together.
        deadline = time.monotonic() + 30
        while len(threads._outcomes.get(loop, ())) < 20:
            assert time.monotonic() < deadline, "the threads did not report"
            time.sleep(0.001)
        results = await asyncio.gather(*calls)
    finally:
        del loop.call_soon_threadsafe
    assert results == [(i * 2, None) for i in range(20)]
    assert wakes == 1
