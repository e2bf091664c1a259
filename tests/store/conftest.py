from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aion.store import EventStore, LmdbStore, MemoryStore


@pytest.fixture(params=["memory", "lmdb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """Every backend, for the conformance suite."""
    s: EventStore = MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "data")
    try:
        yield s
    finally:
        await s.aclose()
