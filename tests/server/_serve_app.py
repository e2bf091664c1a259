"""Workflows for the tests that run ``aion serve --app tests.server._serve_app``."""

from __future__ import annotations

import aion


@aion.workflow
async def collector(ctx: aion.Context) -> str:
    """Waits for a ``stop`` signal; every ``item`` signal sent meanwhile is in its history."""
    value: str = await ctx.wait_signal("stop")
    return value


@aion.workflow
async def needs_ok(ctx: aion.Context, n: int) -> str:
    decision = await ctx.approval("ok", details={"n": n})
    user: str = decision.user
    return user
