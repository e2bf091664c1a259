from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aion.store import EventStore, ForwardingStore, LmdbStore, MemoryStore
from tests import _postgres


@pytest.fixture(params=["memory", "lmdb", "forwarding", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """Every backend, for the conformance suite (and the base of store wrappers)."""
    if request.param == "postgres":
        with _postgres.fresh_schema() as schema:
            from aion.store import PostgresStore

            s: EventStore = PostgresStore(_postgres.URL, schema=schema)
            try:
                yield s
            finally:
                await s.aclose()
        return
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
