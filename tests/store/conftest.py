from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aion.store import EventStore, ForwardingStore, LmdbStore, MemoryStore


@pytest.fixture(params=["memory", "lmdb", "forwarding"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """Every backend, for the conformance suite (and the base of store wrappers)."""
    s: EventStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "lmdb":
        s = LmdbStore(tmp_path / "data")
    else:
        s = ForwardingStore(MemoryStore())
    try:
        yield s
    finally:
        await s.aclose()
