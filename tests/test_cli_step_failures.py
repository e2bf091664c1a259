"""``aion describe`` and ``aion history`` show a failed step's traceback.

The tests marked "needs the actor" read the traceback the actor records in ``step.failed``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

import aion
from aion.cli import main
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def reserve(sku: str) -> None:
    raise LookupError(f"no stock of {sku}")


@aion.workflow(name="stocker")
async def stocker(ctx: aion.Context, sku: str) -> None:
    await ctx.step(reserve, sku, retry=aion.RetryPolicy(max_attempts=2, initial_interval=30))


async def _prepare(data: Path) -> None:
    clock = ManualClock(T0)  # moved by hand: "waiting" stays between its attempts
    async with aion.Engine(data, workflows=[stocker], clock=clock) as engine:
        failed = await engine.start(stocker, "sku-1", workflow_id="failed")
        await engine.wait_idle()
        clock.advance(30)
        with pytest.raises(aion.WorkflowFailed):
            await failed.result(timeout=10)
        await engine.start(stocker, "sku-2", workflow_id="waiting")
        await engine.wait_idle()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    anyio.run(_prepare, path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, _ = capsys.readouterr()
    return code, out


def test_describe_shows_the_last_step_failure(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "describe", "waiting", "--data", str(data))
    assert code == 0
    assert (
        "step failure  'reserve' (step 1) attempt 1 at 2026-01-01 00:00:30: "
        "LookupError: no stock of sku-2 (will retry)"
    ) in out
    code, out = run(capsys, "describe", "failed", "--data", str(data))
    assert code == 0
    expected = "attempt 2 at 2026-01-01 00:00:30: LookupError: no stock of sku-1 (failed for good)"
    assert expected in out
    code, out = run(capsys, "describe", "failed", "--data", str(data), "--json")
    failure = json.loads(out)["last_step_failure"]
    assert failure["step_name"] == "reserve" and failure["attempt"] == 2
    assert failure["will_retry"] is False and failure["error_type"] == "LookupError"


def test_describe_prints_the_traceback_under_the_failure(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Needs the actor to record ``traceback=format_failure(error)``."""
    code, out = run(capsys, "describe", "failed", "--data", str(data))
    assert code == 0
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("traceback"))
    assert lines[start] == "traceback     Traceback (most recent call last):"
    block = lines[start + 1 :]
    assert any('raise LookupError(f"no stock of {sku}")' in line for line in block)
    assert block[-1] == "              LookupError: no stock of sku-1"  # lined up under it
    code, out = run(capsys, "describe", "failed", "--data", str(data), "--json")
    assert "in reserve" in json.loads(out)["last_step_failure"]["traceback"]


def test_history_prints_tracebacks_under_failed_steps(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Needs the actor to record ``traceback=format_failure(error)``."""
    code, out = run(capsys, "history", "failed", "--data", str(data))
    assert code == 0
    lines = out.splitlines()
    rows = [i for i, line in enumerate(lines) if line.split()[3:4] == ["step.failed"]]
    assert len(rows) == 2
    for row in rows:
        assert "traceback=" not in lines[row]  # in full below, not cut into the summary
        assert lines[row + 1] == "    Traceback (most recent call last):"
        block = lines[row + 1 : row + 12]
        assert "    LookupError: no stock of sku-1" in block
    code, out = run(capsys, "history", "failed", "--data", str(data), "--json")
    failed = [e for e in json.loads(out) if e["type"] == "step.failed"]
    assert [e["data"]["traceback"].startswith("Traceback") for e in failed] == [True, True]


def test_history_no_tracebacks_prints_the_table_alone(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "history", "failed", "--data", str(data), "--no-tracebacks")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "RECORDED", "EVENT", "DETAILS"]
    assert [line.split()[0] for line in lines[1:]] == [str(n) for n in range(1, len(lines))]
    failed = [line for line in lines if "step.failed" in line]
    assert len(failed) == 2 and all('error_type="LookupError"' in line for line in failed)
