"""The code in docs/client.md and docs/operations.md ("In a web service") runs as shown: an
engine in one process, a client in another."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@contextmanager
def background(
    argv: list[str], cwd: Path, ready: str, env: dict[str, str] | None = None
) -> Iterator[None]:
    """Run ``argv`` until the block ends (then SIGINT, as Ctrl-C would); it has started once
    it printed the line ``ready``."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.strip() == ready, line
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_client_guide_example_runs(tmp_path: Path) -> None:
    path = ROOT / "docs" / "client.md"
    engine_code, client_code = python_blocks(path)
    (printed,) = re.findall(r"It prints:\n\n```\n(.*?)```", path.read_text(), re.S)
    (tmp_path / "engine.py").write_text(engine_code)
    (tmp_path / "client.py").write_text(client_code)
    with background([sys.executable, "engine.py"], tmp_path, "engine running"):
        proc = subprocess.run(
            [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == printed


# --- the web service of docs/operations.md, driven through ASGI --------------------------------


async def request(app: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP request to an ASGI app, as a server would make it: (status, JSON body)."""
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    done = anyio.Event()
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return status, json.loads(b"".join(chunks))


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The app's lifespan, as a server runs it around the requests."""
    to_app, from_server = anyio.create_memory_object_stream[dict[str, Any]](2)
    to_server, from_app = anyio.create_memory_object_stream[dict[str, Any]](2)
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    async with anyio.create_task_group() as tg:
        tg.start_soon(app, scope, from_server.receive, to_server.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        yield
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


def load_app(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("aion_docs_web_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


ENGINE_WORKER = """
import sys
import anyio
sys.path.insert(0, ".")
from app import app
from tests.client.test_docs_client import lifespan

async def main() -> None:
    async with lifespan(app):
        print("ready", flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


async def test_web_service_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("starlette")
    (code,) = python_blocks(ROOT / "docs" / "operations.md")
    (tmp_path / "app.py").write_text(code)
    (tmp_path / "engine_worker.py").write_text(ENGINE_WORKER)
    data = tmp_path / "aion-data"
    env = {**os.environ, "AION_DATA": str(data), "AION_ENGINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    monkeypatch.setenv("AION_DATA", str(data))
    monkeypatch.delenv("AION_ENGINE", raising=False)
    with background([sys.executable, "engine_worker.py"], tmp_path, "ready", env):
        app = load_app(tmp_path / "app.py")  # a web worker: a client on the same directory
        async with lifespan(app):
            status, body = await request(app, "POST", "/orders", {"id": "o-7", "amount": 70})
            assert (status, body) == (202, {"workflow_id": "order-o-7"})
            status, body = await request(app, "POST", "/orders/order-o-7/ship", {"via": "ups"})
            assert (status, body) == (202, {"queued": True})
            with anyio.fail_after(10):
                while True:
                    status, body = await request(app, "GET", "/orders/order-o-7")
                    if status == 200 and body["status"] == "completed":
                        break
                    await anyio.sleep(0.01)
            assert body["result"] == {"order": "o-7", "amount": 70, "ship": {"via": "ups"}}
            # Refusals come back as the handler maps them, and queue nothing.
            assert (await request(app, "GET", "/orders/nope"))[0] == 404
            assert (await request(app, "POST", "/orders/order-o-7/ship", {}))[0] == 409
            status, body = await request(app, "POST", "/orders", {"id": "o-8", "amount": "x"})
            assert status == 400 and "amount" in body["error"]
