"""The activation watchdog (issue 12, item 7): workflow code holding the event loop.

Real time, bounded: the workflows call ``time.sleep(0.3)`` and the engines run with
``activation_limit=0.1``. The tests wait on conditions with timeouts, never on sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

import aion
from aion.store import MemoryStore
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMIT = 0.1
HOLD = 0.3
#: How long the code holds the loop per activation (0: it does not); changed by the tests.
HOLDING = {"seconds": HOLD}


def _line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith(marker))


@aion.workflow
async def holds_once(ctx: aion.Context) -> str:
    await ctx.sleep(1)
    time.sleep(HOLD)  # hold-once
    return "done"


@aion.workflow
async def holds_always(ctx: aion.Context) -> None:
    while True:
        time.sleep(HOLD)  # hold-always
        await ctx.sleep(1)


def _crunch(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


@aion.workflow
async def holds_on_replay(ctx: aion.Context, rounds: int) -> str:
    for _ in range(rounds):
        if HOLDING["seconds"]:
            _crunch(HOLDING["seconds"])  # calls-crunch
        await ctx.sleep(1)
    await ctx.sleep(3600)
    return "woke"


@aion.workflow
async def quick(ctx: aion.Context, n: int) -> int:
    await ctx.sleep(5)
    return n + 1


ALL = [holds_once, holds_always, holds_on_replay, quick]


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.01)  # a poll interval, not a synchronisation


def _held_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "aion.engine"
        and r.levelno == logging.WARNING
        and "has held the event loop" in r.getMessage()
    ]


async def test_the_watchdog_reports_the_run_its_code_location_and_how_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aion.engine")
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(
        MemoryStore(), workflows=ALL, clock=clock, activation_limit=LIMIT
    ) as engine:
        handle = await engine.start(holds_once, workflow_id="hog-1")
        # Held once live: reported, not parked.
        assert await handle.result(timeout=20) == "done"
    reports = _held_reports(caplog)
    assert reports, caplog.text
    report = reports[0]
    assert "workflow default/hog-1 (holds_once)" in report
    assert f"{Path(__file__).name}:{_line_of('# hold-once')} in holds_once" in report
    held = float(report.split("has held the event loop for ")[1].split(" s")[0])
    assert LIMIT <= held <= HOLD + 0.5


async def test_a_run_holding_the_loop_repeatedly_is_parked_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aion.engine")
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(
        MemoryStore(), workflows=ALL, clock=clock, activation_limit=LIMIT
    ) as engine:
        await engine.start(holds_always, workflow_id="hog")
        others = [await engine.start(quick, n) for n in range(5)]

        async def parked() -> bool:
            return (await engine.describe("hog")).status is aion.Status.BLOCKED

        await _until(parked)
        assert [await h.result(timeout=20) for h in others] == [1, 2, 3, 4, 5]
        reason = (await engine.describe("hog")).reason or ""
        assert "workflow 'hog' (holds_always) held the event loop for 0." in reason
        assert f"{Path(__file__).name}:{_line_of('# hold-always')} in holds_always" in reason
        assert "(live: 3 activations past the limit)" in reason
        assert "activation_limit" in reason and "aion unblock hog" in reason
        assert engine.failure is None
    assert _held_reports(caplog)


async def test_a_restart_parks_a_run_whose_replay_holds_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the limit, replaying 40 rounds of 0.3 s would hold a restarting engine for 12 s
    (the issue: ``async with Engine`` hung); with it the replay stops at the first round."""
    caplog.set_level(logging.WARNING, logger="aion.engine")
    rounds = 40
    HOLDING["seconds"] = 0.0
    try:
        # Moved by hand, not auto-advanced: an auto-advancing clock would fire the 1 h timer
        # too, whenever it won the race with the end of this block (the run then finished).
        clock = ManualClock(T0)
        async with aion.Engine(tmp_path, workflows=ALL, clock=clock) as engine:
            await engine.start(holds_on_replay, rounds, workflow_id="slow-replay")
            for _ in range(rounds):
                await engine.wait_idle()
                clock.advance(1)
            await engine.wait_idle()  # every round recorded; waits on its 1 h timer
            desc = await engine.describe("slow-replay")
            assert desc.status is aion.Status.RUNNING and desc.pending.get("timers"), desc
        HOLDING["seconds"] = HOLD  # the code now holds the loop in every round (replayed too)
        # Its timer is overdue: it fires while the engine starts, and the run replays.
        clock = ManualClock(T0 + timedelta(days=1), auto_advance=True)
        began = time.monotonic()
        with anyio.fail_after(rounds * HOLD / 2):
            async with aion.Engine(
                tmp_path, workflows=ALL, clock=clock, activation_limit=LIMIT
            ) as engine:

                async def parked() -> bool:
                    record = await engine.describe("slow-replay")
                    return record.status is aion.Status.BLOCKED

                await _until(parked, timeout=rounds * HOLD / 2)
                other = await engine.start(quick, 1)
                assert await other.result(timeout=20) == 2
                reason = (await engine.describe("slow-replay")).reason or ""
        assert time.monotonic() - began < rounds * HOLD / 2
        assert "(while its history was replayed)" in reason, reason
        # Where the time went, and the workflow's own line that called it.
        caller = f"{Path(__file__).name}:{_line_of('# calls-crunch')} in holds_on_replay"
        assert "in _crunch, called from " in reason and caller in reason, reason
        replayed = [m for m in _held_reports(caplog) if "while replaying its history" in m]
        assert replayed and "called from" in replayed[0] and "in holds_on_replay" in replayed[0]
    finally:
        HOLDING["seconds"] = HOLD
    # Fixed (the code no longer holds the loop) and restarted: it goes on.
    HOLDING["seconds"] = 0.0
    try:
        async with aion.Engine(
            tmp_path, workflows=ALL, clock=clock, activation_limit=LIMIT
        ) as engine:
            assert await engine.handle("slow-replay").result(timeout=20) == "woke"
    finally:
        HOLDING["seconds"] = HOLD


async def test_no_limit_no_watchdog() -> None:
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(MemoryStore(), workflows=ALL, clock=clock, activation_limit=None) as e:
        assert not [t for t in threading.enumerate() if t.name == "aion-watchdog"]
        handle = await e.start(holds_once)
        assert await handle.result(timeout=20) == "done"
