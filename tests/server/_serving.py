"""Serving an engine's control plane with uvicorn on a loopback port, inside a test."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

pytest.importorskip("starlette", reason="the HTTP API needs the extra aion[server]")
uvicorn = pytest.importorskip("uvicorn", reason="the HTTP API tests serve with uvicorn")
httpx = pytest.importorskip("httpx", reason="the HTTP API tests call it with httpx")


@asynccontextmanager
async def serving(engine: Any, **options: Any) -> AsyncIterator[str]:
    """Serve ``engine.asgi_app(**options)`` on 127.0.0.1 (a free port); yields its base URL."""
    app = engine.asgi_app(**options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.capture_signals = contextlib.nullcontext  # keep pytest's signal handlers
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()
