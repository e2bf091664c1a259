"""A backlog of overdue durable timers after a restart is paged through, not loaded whole.

The engine's timer wheel loads at most ``aion._engine._timers.MAX_HELD`` rows ahead of firing
them; here the cap is 50 and 3,000 timers are overdue when the engine reopens its LMDB store.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
from aion._engine import _timers
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RUNS = 3_000
CAP = 50

resumed: Counter[str] = Counter()


@aion.workflow(name="backlog-sleeper")
async def sleeper(ctx: aion.Context, seconds: int) -> str:
    await ctx.sleep(seconds)
    # Runs once per resumption after the timer fired (a replay stops at the sleep).
    resumed[ctx.info.workflow_id] += 1
    return ctx.info.workflow_id


async def test_a_restart_over_thousands_of_overdue_timers_fires_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data"
    resumed.clear()
    async with aion.Engine(
        path, workflows=[sleeper], clock=ManualClock(T0), durable=False
    ) as engine:
        for i in range(RUNS):
            # Due 1-600 s after T0, many tied (five runs per second), keys not in due order.
            await engine.start(sleeper, 1 + (i * 7919) % 600, workflow_id=f"s{i:05d}")
        await engine.wait_idle()

    # raising=False: without the cap the test still runs, and fails on what the wheel held.
    monkeypatch.setattr(_timers, "MAX_HELD", CAP, raising=False)
    engine = aion.Engine(
        path, workflows=[sleeper], clock=ManualClock(T0 + timedelta(hours=1)), durable=False
    )
    timers = engine._timers
    held: list[int] = []
    fired: Counter[str] = Counter()
    order: list[tuple[float, Any]] = []
    real_fire, real_load = timers._fire, timers._load
    pages: list[int] = []

    async def fire(timer: Any) -> None:
        assert timers._wheel is not None
        held.append(len(timers._wheel))
        fired[timer.payload.workflow_id] += 1
        order.append((timer.due, timer.key))
        await real_fire(timer)

    async def load(*args: Any) -> Any:
        rows = await real_load(*args)
        pages.append(len(rows))
        return rows

    # Bound when the wheel is made, in __aenter__.
    timers._fire = fire  # type: ignore[method-assign]
    timers._load = load  # type: ignore[method-assign, assignment]
    async with engine:
        with anyio.fail_after(120):
            for i in range(RUNS):
                assert await engine.handle(f"s{i:05d}").result() == f"s{i:05d}"
        assert (await engine.list(status=aion.Status.RUNNING)).items == []
    assert len(fired) == RUNS and set(fired.values()) == {1}
    assert order == sorted(order)  # in (due, key) order across pages, ties included
    assert len(resumed) == RUNS and set(resumed.values()) == {1}
    assert max(held) <= CAP
    assert len(pages) >= RUNS // CAP and max(pages) <= CAP
