"""``aion serve``: an engine with a module's workflows and its control plane under uvicorn, in
one process, until SIGINT/SIGTERM (a clean stop) or the engine fails for good."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from aion._engine import Engine
from aion.errors import InvalidArgument

__all__ = ["serve"]


async def serve(
    target: str | os.PathLike[str],
    workflows: Sequence[Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_keys: str | os.PathLike[str] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the engine on ``target`` with ``workflows`` and serve its API on ``host:port``.

    ``on_ready`` is called with the base URL once the engine has recovered and the socket
    listens. Returns after a signal stopped the server (the engine then stops cleanly).

    Raises:
        AionError: the engine could not start, or failed for good while serving.
    """
    import uvicorn  # noqa: PLC0415 (the extra aion[server])

    sock = _listen(host, port)  # before the engine starts: a port in use is said at once
    try:
        async with Engine(target, workflows=workflows) as engine:
            app = engine.asgi_app(api_keys=api_keys)
            config = uvicorn.Config(
                app,
                lifespan="off",
                log_level="info",
                access_log=False,
                # Open streams (a history tail) are closed after this long on a stop.
                timeout_graceful_shutdown=GRACE_SECONDS,
            )
            server = uvicorn.Server(config)
            await _run(server, engine, sock, on_ready)
    finally:
        sock.close()


#: Seconds a stop waits for open requests (server-sent-event streams too) before closing them.
GRACE_SECONDS = 5


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise InvalidArgument(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
            "(or --host), or stop what uses it"
        ) from exc
    sock.set_inheritable(True)
    return sock


async def _run(
    server: Any, engine: Engine, sock: socket.socket, on_ready: Callable[[str], None] | None
) -> None:
    async with anyio.create_task_group() as tg:

        async def watch_engine() -> None:
            try:
                await engine.wait_stopped()
            finally:
                server.should_exit = True

        async def stop_on_signal() -> None:
            # Ours, not uvicorn's: uvicorn re-raises the signal once it stopped, which would
            # end the process before the engine stops cleanly. A second signal stops at once.
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    if server.should_exit:
                        server.force_exit = True
                    server.config.app.state.closing = True  # open streams end (clients resume)
                    server.should_exit = True

        async def announce() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await anyio.sleep(0.01)
            if on_ready is not None:
                host, port = sock.getsockname()[:2]
                on_ready(f"http://{host}:{port}")

        server.capture_signals = contextlib.nullcontext
        tg.start_soon(stop_on_signal)
        tg.start_soon(watch_engine)
        tg.start_soon(announce)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
