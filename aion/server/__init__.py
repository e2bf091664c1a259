"""The control plane: an authenticated HTTP API over a running engine (``pip install
"aion[server]"``; see docs/http.md).

``engine.asgi_app()`` (or :func:`create_app`) returns a Starlette application: mount it in
your own app or serve it with uvicorn; ``aion serve`` does the latter for a module's workflows.
"""

from __future__ import annotations

from ._app import DEFAULT_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from ._app import create_app as create_app

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]
