"""The command line and a BLOCKED run (issue 11, item 1): ``aion signal`` / ``aion cancel`` are
kept and applied once the run runs again; ``aion approve`` is refused with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import aion
from aion.testing import ManualClock
from tests.engine.test_inputs_kept import ALL, BLOCK, T0, gate, gate_approval
from tests.test_cli_hitl import cli_process


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    BLOCK["on"] = False
    yield
    BLOCK["on"] = False


def engine(data: Path) -> aion.Engine:
    return aion.Engine(data, workflows=ALL, clock=ManualClock(T0), inbox_interval=0.01)


async def blocked(e: aion.Engine, workflow_id: str) -> None:
    BLOCK["on"] = True
    await e.signal(workflow_id, "go")
    await e.wait_idle()
    assert (await e.describe(workflow_id)).status is aion.Status.BLOCKED


async def test_cli_signals_to_a_blocked_run_are_applied_after_unblock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with engine(data) as e:
        await e.start(gate, workflow_id="g")
        await blocked(e, "g")
        results = await cli_process(
            ["signal", "g", "more", "1", "--data", str(data)],
            ["signal", "g", "more", "2", "--data", str(data)],
        )
        for code, out, err in results:
            assert code == 0, err
            assert "BLOCKED" in out and "kept" in out, out
        length = (await e.describe("g")).history_length
        BLOCK["on"] = False  # "the fix is deployed"
        [(code, _, err)] = await cli_process(["unblock", "g", "--data", str(data)])
        assert code == 0, err
        with anyio.fail_after(10):
            assert await e.handle("g").result() == [1, 2]
        history = await e.history("g")
        received = [h.data["payload"] for h in history[length:] if h.type == "signal.received"]
        assert received == [1, 2]
        with anyio.fail_after(5):
            while await e.store.read_inbox():
                await anyio.sleep(0.01)


async def test_cli_signals_kept_while_no_engine_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with engine(data) as e:
        await e.start(gate, workflow_id="g")
        await blocked(e, "g")
    [(code, out, err)] = await cli_process(["signal", "g", "more", '"x"', "--data", str(data)])
    assert code == 0 and "kept" in out, err
    [(code, out, err)] = await cli_process(["signal", "g", "more", '"y"', "--data", str(data)])
    BLOCK["on"] = False
    async with engine(data) as e:  # the restart retries the blocked run, then applies both
        with anyio.fail_after(10):
            assert await e.handle("g").result() == ["x", "y"]


async def test_cli_decision_for_a_blocked_run_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with engine(data) as e:
        await e.start(gate_approval, workflow_id="a")
        await e.wait_idle()
        await blocked(e, "a")
        [(code, out, err)] = await cli_process(
            ["approve", "a", "--user", "alice", "--data", str(data)]
        )
        assert code != 0 and out == ""
        assert "BLOCKED" in err and "'a'" in err and "aion unblock a" in err, err
        assert await e.store.read_inbox() == []  # nothing queued
