"""``aion serve`` as a process: a port in use is said at once (nothing started), and SIGTERM
stops it cleanly even while a client holds a history stream open."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from aion._apikeys import ApiKeys
from tests.server._serving import httpx

ROOT = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "aion", "serve", "--app", "tests.server._serve_app"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_a_port_in_use_is_refused_before_the_engine_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [*SERVE, "--data", str(tmp_path / "d"), "--port", str(port)],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "d" / "data.mdb").exists()  # the engine never opened the store


def test_sigterm_stops_cleanly_with_a_stream_open(tmp_path: Path) -> None:
    data = tmp_path / "d"
    key, _ = ApiKeys(data / "api-keys.json").create(role="admin", tenant="default")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [*SERVE, "--data", str(data), "--port", str(port)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {key}"}
    try:
        assert proc.stdout is not None
        assert "serving" in proc.stdout.readline()  # printed once it listens
        body = {"workflow_type": "collector", "workflow_id": "c"}
        assert httpx.post(base + "/api/v1/workflows", json=body, headers=headers).status_code == 201
        with httpx.stream(
            "GET", base + "/api/v1/workflows/c/history/stream", headers=headers, timeout=60
        ) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("id: 1")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - t0 < 20
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
