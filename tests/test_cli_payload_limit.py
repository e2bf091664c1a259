"""``aion signal`` / ``aion complete`` check a payload against the limit of the engine that runs
on the data directory, not the default: a payload that engine would drop is never queued."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import anyio

import aion
from aion.testing import ManualClock
from tests.test_cli_hitl import cli_process

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@aion.workflow
async def listens(ctx: aion.Context) -> object:
    return await ctx.wait_signal("go")


async def test_the_cli_refuses_a_payload_over_the_engines_limit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with aion.Engine(
        data,
        workflows=[listens],
        clock=ManualClock(T0),
        max_payload_bytes=64,
        inbox_interval=0.01,
    ) as e:
        await e.start(listens, workflow_id="l")
        big = json.dumps("x" * 100)
        [(code, out, err)] = await cli_process(["signal", "l", "go", big, "--data", str(data)])
        assert code == 1 and out == ""
        # The engine's own message, with the engine's limit (the client encodes against it).
        assert "signal 'go' is 102 bytes encoded, over the limit of 64 bytes" in err, err
        assert await e.store.read_inbox() == []
        [(code, _, err)] = await cli_process(["signal", "l", "go", '"small"', "--data", str(data)])
        assert code == 0, err
        with anyio.fail_after(5):
            assert await e.handle("l").result() == "small"
