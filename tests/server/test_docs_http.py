"""docs/http.md runs as shown: its workflow module under ``aion serve``, its curl walk-through
against it, and its Starlette mounting example."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aion._apikeys import ApiKeys
from tests.server._serving import httpx

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "http.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), re.S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through uses curl")
def test_curl_walk_through_against_aion_serve(tmp_path: Path) -> None:
    shop, _mount = _blocks("python")
    (tmp_path / "shop.py").write_text(shop)
    data = tmp_path / "aion-data"
    keys = ApiKeys.for_target(data)
    operator, _ = keys.create(role="operator", tenant="acme", label="deploy-bot")
    approver, _ = keys.create(role="approver", tenant="acme", label="grace")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-m", "aion", "serve", "--data", str(data), "--app", "shop"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=tmp_path, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "aion serve exited"
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "aion serve did not get ready"
            time.sleep(0.05)
        (script,) = _blocks("bash")
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env={**env, "AION": base, "KEY": operator, "APPROVER": approver},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert '"status":"completed"' in out.stdout
        assert "event: workflow.completed" in out.stdout and "event: end" in out.stdout
        assert '"approved_by":"grace"' in out.stdout and '"carrier":"ups"' in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_mounting_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    shop, mount = _blocks("python")
    (tmp_path / "shop.py").write_text(shop)
    (tmp_path / "myservice.py").write_text(mount)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    key, _ = ApiKeys.for_target(tmp_path / "aion-data").create(
        role="viewer", tenant="default", label="t"
    )
    import myservice  # type: ignore[import-not-found]

    with TestClient(myservice.app) as client:
        r = client.get("/aion/api/v1/workflows", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    sys.modules.pop("myservice", None)
    sys.modules.pop("shop", None)


async def test_ui_history_download_replays_as_docs_ui_md_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/ui.md: the history a run's page downloads replays with aion.testing.replay."""
    import importlib

    import anyio

    import aion
    from tests.server._serving import serving

    shop, _mount = _blocks("python")
    (tmp_path / "shop.py").write_text(shop)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("shop", None)
    order = importlib.import_module("shop").order
    key, _ = ApiKeys(tmp_path / "api-keys.json").create(role="admin", tenant="default")
    async with aion.Engine(tmp_path, workflows=[order]) as engine, serving(engine) as base:
        await engine.start(order, "lamp", workflow_id="order-1")
        await engine.wait_idle()
        await engine.approve("order-1", user="grace")
        await engine.signal("order-1", "carrier", "ups")
        await engine.handle("order-1").result(timeout=10)
        async with httpx.AsyncClient(base_url=base) as http:
            signed_in = await http.post("/ui/login", data={"key": key})
            assert signed_in.status_code == 303
            r = await http.get("/ui/workflows/order-1/history.json")
            assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    (tmp_path / "order-1.history.json").write_bytes(r.content)
    (code,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "ui.md").read_text(), re.S)
    (tmp_path / "replay_it.py").write_text(code)
    out = await anyio.run_process(
        [sys.executable, "replay_it.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    assert out.stdout.decode().startswith("replays cleanly:")
    sys.modules.pop("shop", None)
