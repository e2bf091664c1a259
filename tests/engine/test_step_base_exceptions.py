"""A step that raises a BaseException fails that attempt; the engine keeps serving (issue 12,
invariant 19). Before, an async step raising SystemExit, KeyboardInterrupt, GeneratorExit, a
bare BaseException or a CancelledError nobody asked for failed the step-executor service."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

import aion
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "BaseException": BaseException,
    "CancelledError": asyncio.CancelledError,
}


async def explode(kind: str) -> str:
    raise KINDS[kind]("from the step")


def explode_sync(kind: str) -> str:
    raise KINDS[kind]("from the step")


async def fine() -> str:
    return "fine"


@aion.workflow
async def uses(ctx: aion.Context, kind: str, sync: bool) -> str:
    try:
        await ctx.step(explode_sync if sync else explode, kind, retry=aion.RetryPolicy(1))
    except aion.StepError as exc:
        return f"{exc.error_type}: {await ctx.step(fine)}"
    return "no error"


@pytest.mark.parametrize("sync", [False, True])
@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_step_raising_a_base_exception_fails_that_step(
    tmp_path: Path, kind: str, sync: bool
) -> None:
    async with aion.Engine(
        tmp_path / "data", workflows=[uses], clock=ManualClock(T0, auto_advance=True)
    ) as engine:
        for i in range(3):  # several in a row: the executor keeps serving
            handle = await engine.start(uses, kind, sync, workflow_id=f"{kind}-{i}")
            assert await handle.result(timeout=10) == f"{KINDS[kind].__name__}: fine"
        assert engine.failure is None
