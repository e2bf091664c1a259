"""pytest plugin: the ``aion_engine`` and ``aion_clock`` fixtures (registered on install)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from aion._clock import ManualClock
from aion._engine import Engine
from aion.store import MemoryStore


@pytest.fixture
def aion_clock() -> ManualClock:
    """A manual clock at 2030-01-01 UTC that jumps to the next timer when all is idle."""
    return ManualClock(datetime(2030, 1, 1, tzinfo=UTC), auto_advance=True)


@pytest.fixture
async def aion_engine(aion_clock: ManualClock) -> AsyncIterator[Engine]:
    """A running engine on an in-memory store with ``aion_clock``.

    ``engine.start(fn, ...)`` registers the decorated function it starts. Workflows that only
    run as children (``ctx.child``) are not registered that way: a parent whose child type is
    unknown parks ``BLOCKED``. For those, make your own fixture with
    ``Engine(MemoryStore(), clock=aion_clock, workflows=[parent, child])``.
    """
    async with Engine(MemoryStore(), clock=aion_clock) as engine:
        yield engine
