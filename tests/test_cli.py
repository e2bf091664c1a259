"""The ``aion`` command line, on a real data directory, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import aion
from aion.cli import main
from aion.testing import ManualClock

APP = textwrap.dedent(
    """
    import aion

    def greet(name: str) -> str:
        return "hello " + name

    @aion.workflow(name="greeter")
    async def greeter(ctx: aion.Context, name: str) -> str:
        text = await ctx.step(greet, name)
        ctx_signal = await ctx.wait_signal("done")
        return f"{text} {ctx_signal}"
    """
)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    (tmp_path / "cliapp.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    sys.modules.pop("cliapp", None)
    return importlib.import_module("cliapp")


async def _prepare(data: Path, app: object) -> None:
    greeter = app.greeter  # type: ignore[attr-defined]
    async with aion.Engine(data, workflows=[greeter], clock=ManualClock()) as engine:
        for i in range(3):
            await engine.start(greeter, f"n{i}", workflow_id=f"g{i}")
        await engine.start(greeter, "x", workflow_id="other", tenant="acme")
        await engine.wait_idle()
        await engine.signal("g0", "done", "!")
        await engine.handle("g0").result(timeout=5)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_describe_history(
    tmp_path: Path, app: object, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    anyio.run(_prepare, data, app)
    code, out, _ = run(capsys, "list", "--data", str(data))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["WORKFLOW", "TYPE", "STATUS", "STARTED", "CLOSED", "WAITING", "ON"]
    assert [line.split()[0] for line in lines[1:]] == ["g2", "g1", "g0"]
    assert "signal done" in lines[1]
    code, out, _ = run(capsys, "list", "--data", str(data), "--json", "--status", "completed")
    assert [i["workflow_id"] for i in json.loads(out)["items"]] == ["g0"]
    code, out, _ = run(capsys, "list", "--data", str(data), "--tenant", "acme", "--limit", "1")
    assert "other" in out

    code, out, _ = run(capsys, "describe", "g0", "--data", str(data))
    assert code == 0 and "completed" in out and '"hello n0 !"' in out
    code, out, _ = run(capsys, "describe", "g0", "--data", str(data), "--json")
    assert json.loads(out)["result"] == "hello n0 !"

    code, out, _ = run(capsys, "history", "g0", "--data", str(data))
    assert code == 0
    assert [line.split()[3] for line in out.splitlines()[1:]][:2] == [
        "workflow.started", "step.scheduled",
    ]  # fmt: skip
    code, out, _ = run(capsys, "history", "g0", "--data", str(data), "--json")
    assert json.loads(out)[-1]["type"] == "workflow.completed"


def test_errors_are_one_clear_line(
    tmp_path: Path, app: object, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    anyio.run(_prepare, data, app)
    code, _, err = run(capsys, "describe", "nope", "--data", str(data))
    assert code == 1 and err.strip() == "aion: workflow 'nope' not found in tenant 'default'"
    code, _, err = run(capsys, "describe", "other", "--data", str(data))
    assert code == 1 and "not found" in err  # another tenant's workflow
    code, _, err = run(capsys, "list", "--data", str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in err
    code, _, err = run(capsys, "signal", "g0", "done", "--data", str(data))
    assert code == 1 and "has finished" in err
    code, _, err = run(capsys, "signal", "g1", "done", "{bad json", "--data", str(data))
    assert code == 1 and "not valid JSON" in err


def test_signal_and_cancel_reach_the_next_engine(
    tmp_path: Path, app: object, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    anyio.run(_prepare, data, app)
    code, out, _ = run(capsys, "signal", "g1", "done", '{"by": "cli"}', "--data", str(data))
    assert code == 0 and "queued signal for g1" in out
    code, out, _ = run(capsys, "cancel", "g2", "--reason", "not needed", "--data", str(data))
    assert code == 0
    greeter = app.greeter  # type: ignore[attr-defined]

    async def next_engine() -> None:
        async with aion.Engine(
            data, workflows=[greeter], clock=ManualClock(), inbox_interval=0.01
        ) as engine:
            assert await engine.handle("g1").result(timeout=5) == "hello n1 {'by': 'cli'}"
            with pytest.raises(aion.WorkflowCancelled, match="not needed"):
                await engine.handle("g2").result(timeout=5)

    anyio.run(next_engine)


def test_replay_reports_divergence(
    tmp_path: Path, app: object, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    anyio.run(_prepare, data, app)
    code, out, _ = run(capsys, "replay", "--app", "cliapp", "--data", str(data))
    assert code == 0 and "replayed 4 histories: 4 ok, 0 not" in out
    (tmp_path / "changed.py").write_text(APP.replace("ctx.step(greet, name)", "ctx.sleep(1)"))
    code, out, _ = run(capsys, "replay", "--app", "changed", "--data", str(data))
    assert code == 1
    assert "default/g0: divergent" in out and "history has step 'greet'" in out
    assert "replayed 4 histories: 0 ok, 4 not" in out


def test_demo_survives_its_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "aion.cli", "demo", "--data", str(data)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    out = proc.stdout
    assert "Killing the worker" in out and "with SIGKILL" in out
    assert "status      running" in out  # what the store held while no engine ran
    assert "workflow completed" in out
    # Completed steps did not run again after the restart.
    assert out.count("step reserve_stock") == 1
    assert out.count("charged 4200") == 1
    assert "workflow.completed" in out
    again = subprocess.run(
        [sys.executable, "-m", "aion.cli", "demo", "--data", str(data)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "already holds a finished demo run" in again.stdout


def test_recover_is_a_dry_run_unless_applied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aion.store import LmdbStore
    from tests.test_recovery import stranded

    data = tmp_path / "data"

    async def prepare() -> None:
        store = LmdbStore(data)
        try:
            await stranded(store)  # type: ignore[arg-type]
        finally:
            await store.aclose()

    anyio.run(prepare)
    code, out, _ = run(capsys, "recover", "--data", str(data))
    assert code == 0 and "to repair (dry run): 1 stranded-continue-as-new" in out
    assert "stranded-continue-as-new: default/c" in out
    code, out, _ = run(capsys, "recover", "--data", str(data), "--apply")
    assert code == 0 and "repaired: 1 stranded-continue-as-new" in out
    code, out, _ = run(capsys, "recover", "--data", str(data))
    assert "to repair (dry run): nothing" in out
