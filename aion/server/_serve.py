"""``aion serve``: an engine with a module's workflows and its control plane under uvicorn, in
one process, until SIGINT/SIGTERM (a clean stop) or the engine fails for good."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from aion._engine import Engine

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

    async with Engine(target, workflows=workflows) as engine:
        app = engine.asgi_app(api_keys=api_keys)
        config = uvicorn.Config(
            app, host=host, port=port, lifespan="off", log_level="info", access_log=False
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:

            async def watch_engine() -> None:
                try:
                    await engine.wait_stopped()
                finally:
                    server.should_exit = True

            async def stop_on_signal() -> None:
                # Ours, not uvicorn's: uvicorn re-raises the signal once it stopped, which would
                # end the process before the engine stops cleanly.
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        server.should_exit = True
                        return

            async def announce() -> None:
                while not server.started:
                    if server.should_exit:
                        return
                    await anyio.sleep(0.01)
                if on_ready is not None:
                    on_ready(f"http://{host}:{port}")

            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
            tg.start_soon(stop_on_signal)
            tg.start_soon(watch_engine)
            tg.start_soon(announce)
            await server.serve()
            tg.cancel_scope.cancel()
