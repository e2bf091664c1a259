"""Two engines on one data directory: the second is refused with a clear error; after the first
is killed with SIGKILL, the next engine takes over its stale lock and continues its runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import aion
import aion.errors

WORKER = textwrap.dedent(
    """
    import sys, anyio, aion

    @aion.workflow(name="held")
    async def held(ctx: aion.Context) -> str:
        return await ctx.wait_signal("go")

    async def main() -> None:
        async with aion.Engine(sys.argv[1], workflows=[held]) as engine:
            await engine.start("held", workflow_id="w-1")
            print("ready", flush=True)
            await anyio.sleep_forever()

    anyio.run(main)
    """
)


@aion.workflow(name="held")
async def held(ctx: aion.Context) -> str:
    return str(await ctx.wait_signal("go"))


async def test_a_second_engine_is_refused_and_a_killed_ones_lock_is_taken_over(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(aion.errors.StoreLocked) as refused:
            async with aion.Engine(data, workflows=[held]):
                pytest.fail("a second engine started on a locked data directory")
        message = str(refused.value)
        assert str(data) in message and f"pid {proc.pid}" in message
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    async with aion.Engine(data, workflows=[held]) as engine:
        assert (await engine.describe("w-1")).status is aion.Status.RUNNING
        await engine.signal("w-1", "go", "went on")
        with anyio.fail_after(10):
            assert await engine.handle("w-1").result() == "went on"
