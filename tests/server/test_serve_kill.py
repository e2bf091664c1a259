"""``aion serve`` SIGKILLed while HTTP clients signal and approve: every request that got a 2xx
is in the history after the restart, exactly once (slow: real processes, several kills)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from aion._apikeys import ApiKeys
from tests.server._serving import httpx

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COLLECTORS = 8
APPROVALS = 60
KILLS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _launch(data: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aion",
            "serve",
            "--data",
            str(data),
            "--app",
            "tests.server._serve_app",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _ready(http: httpx.AsyncClient, base: str, proc: subprocess.Popen[bytes]) -> None:
    with anyio.fail_after(60):
        while True:
            assert proc.poll() is None, "aion serve exited"
            try:
                if (await http.get(base + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.05)


async def test_every_acknowledged_request_is_recorded_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key, _ = ApiKeys(data / "api-keys.json").create(role="admin", tenant="default", label="kill")
    headers = {"authorization": f"Bearer {key}"}
    rng = random.Random(7)
    acked_signals: list[str] = []
    acked_approvals: list[str] = []
    counter = 0
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        proc = _launch(data, port)
        try:
            await _ready(http, base, proc)
            for i in range(COLLECTORS):
                start = {"workflow_type": "collector", "workflow_id": f"c{i}"}
                assert (await http.post(base + "/api/v1/workflows", json=start)).status_code == 201
            for i in range(APPROVALS):
                body: dict[str, object] = {
                    "workflow_type": "needs_ok",
                    "args": [i],
                    "workflow_id": f"a{i}",
                }
                assert (await http.post(base + "/api/v1/workflows", json=body)).status_code == 201

            async def signaller() -> None:
                nonlocal counter
                while True:
                    counter += 1
                    payload = f"item-{counter}"
                    url = f"{base}/api/v1/workflows/c{rng.randrange(COLLECTORS)}/signals/item"
                    try:
                        r = await http.post(url, json=payload)
                    except httpx.TransportError:
                        return  # the server died under us: unknown, not acknowledged
                    if r.status_code == 202:
                        acked_signals.append(payload)

            async def approver() -> None:
                while True:
                    try:
                        page = await http.get(base + "/api/v1/approvals", params={"limit": 5})
                        for item in page.json()["items"]:
                            path = (
                                f"{base}/api/v1/workflows/{item['workflow_id']}/approvals/"
                                f"{item['approval_id']}/approve"
                            )
                            r = await http.post(path, json={"digest": item["digest"]})
                            if r.status_code == 202:
                                acked_approvals.append(item["workflow_id"])
                        if not page.json()["items"]:
                            await anyio.sleep(0.01)
                    except (httpx.TransportError, ValueError):
                        return

            for _ in range(KILLS):
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(signaller)
                    tg.start_soon(approver)
                    await anyio.sleep(rng.uniform(0.3, 1.2))  # how long the load runs
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                proc = _launch(data, port)
                await _ready(http, base, proc)
            for i in range(COLLECTORS):
                url = f"{base}/api/v1/workflows/c{i}/signals/stop"
                assert (await http.post(url, json="done")).status_code == 202
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    assert len(acked_signals) > 50 and acked_approvals, (len(acked_signals), acked_approvals)
    print(f"{KILLS} kills: {len(acked_signals)} signals, {len(acked_approvals)} approvals acked")
    import aion

    async with aion.Client(data) as client:
        seen: Counter[str] = Counter()
        for i in range(COLLECTORS):
            for event in await client.history(f"c{i}"):
                if event.type == "signal.received" and event.data["name"] == "item":
                    seen[event.data["payload"]] += 1
                    assert event.data["identity"] == "kill"
        assert [p for p, n in seen.items() if n > 1] == []  # nothing twice
        assert [p for p in acked_signals if seen[p] != 1] == []  # every acknowledged one
        for workflow_id in acked_approvals:
            decided = [e for e in await client.history(workflow_id) if e.type == "approval.decided"]
            assert len(decided) == 1, workflow_id
