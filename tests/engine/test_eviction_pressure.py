"""Eviction pressure never runs a step twice (issue 12, item 3).

With more runs active than ``max_resident_runs``, idle runs are evicted; a run whose write is
still in flight is busy, not idle. Evicting it orphaned the actor that dispatched its steps,
and the fresh copy's replay dispatched them again: steps ran twice with no crash at all.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

import aion
from aion.store import MemoryStore
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RAN: Counter[tuple[str, int]] = Counter()


async def work(n: int) -> int:
    info = aion.current_step()
    RAN[(info.workflow_id, info.step_seq)] += 1
    await anyio.sleep(0)
    return n + 1


def work_sync(n: int) -> int:
    info = aion.current_step()
    RAN[(info.workflow_id, info.step_seq)] += 1
    return n + 1


@aion.workflow
async def three_steps(ctx: aion.Context, sync: bool) -> int:
    total = 0
    for i in range(3):
        total += await ctx.step(work_sync if sync else work, i)
    return total


async def run_many(target: object, runs: int, resident: int, sync: bool) -> None:
    RAN.clear()
    async with aion.Engine(
        target, workflows=[three_steps], clock=ManualClock(T0), max_resident_runs=resident
    ) as engine:
        handles = []
        async with anyio.create_task_group() as tg:

            async def start(i: int) -> None:
                handles.append(await engine.start(three_steps, sync, workflow_id=f"w{i}"))

            for i in range(runs):
                tg.start_soon(start, i)
        with anyio.fail_after(60):
            for handle in handles:
                assert await handle.result() == 6
    twice = {key: n for key, n in RAN.items() if n != 1}
    assert not twice, f"steps that did not run exactly once: {dict(list(twice.items())[:5])}"
    assert len(RAN) == runs * 3


async def test_every_step_runs_once_under_eviction_pressure(tmp_path: Path) -> None:
    await run_many(tmp_path / "data", runs=400, resident=5, sync=False)


@settings(max_examples=12, deadline=None)
@given(
    runs=st.integers(1, 150),
    resident=st.integers(1, 20),
    sync=st.booleans(),
    lmdb=st.booleans(),
)
def test_steps_run_once_for_any_eviction_pressure(
    tmp_path_factory: object, runs: int, resident: int, sync: bool, lmdb: bool
) -> None:
    import tempfile

    target: object = MemoryStore()
    if lmdb:
        target = Path(tempfile.mkdtemp()) / "data"
    anyio.run(run_many, target, runs, resident, sync)
