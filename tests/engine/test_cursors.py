"""Cursors of the engine's paged calls cannot be forged (issue 12, item 1; invariant 20).

Two tenants with the same workflow ids. For ``Engine.list`` (with each filter),
``Engine.pending_approvals`` and ``Engine.pending_waitpoints``: the unsigned cursor of the issue's
attack, truncated, bit-flipped, and swapped-between-queries and -tenants cursors raise
``InvalidArgument``, for both tenants, on both backends; a page never holds another tenant's row.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import aion
from aion.errors import InvalidArgument
from aion.store import Page, Status
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TENANTS = ("A", "B")
#: The store's refusal; the engine refuses what is not even cursor text (empty, not ASCII, too
#: long, not a str) before it reaches the store, with its own message.
REFUSED = r"not issued for this query|is not a cursor|longer than any cursor"


@aion.workflow
async def expense(ctx: aion.Context, amount: int) -> aion.Approval:
    approval: aion.Approval = await ctx.approval("pay", details={"amount": amount})
    return approval


@aion.workflow
async def hooks(ctx: aion.Context, tenant: str) -> Any:
    for i in range(5):
        await ctx.waitpoint(f"{tenant}-hook{i}")
    return await ctx.wait_signal("go")


Fetch = Callable[[aion.Engine, str, "str | None"], Awaitable[Page[Any]]]

#: Every paged call of the engine, two items a page.
QUERIES: dict[str, Fetch] = {
    "list": lambda e, t, c: e.list(tenant=t, limit=2, cursor=c),
    "list status": lambda e, t, c: e.list(tenant=t, status=Status.RUNNING, limit=2, cursor=c),
    "list type": lambda e, t, c: e.list(tenant=t, workflow_type="expense", limit=2, cursor=c),
    "pending_approvals": lambda e, t, c: e.pending_approvals(tenant=t, limit=2, cursor=c),
    "pending_waitpoints": lambda e, t, c: e.pending_waitpoints("h", tenant=t, limit=2, cursor=c),
}


@pytest.fixture(params=["lmdb", "memory", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[aion.Engine]:
    with _postgres.target(request.param, tmp_path) as target:
        clock = ManualClock(T0, auto_advance=True)
        async with aion.Engine(target, workflows=[expense, hooks], clock=clock) as e:
            for tenant in TENANTS:
                for i in range(5):
                    amount = 100 * (TENANTS.index(tenant) + 1) + i
                    await e.start(expense, amount, workflow_id=f"e{i}", tenant=tenant)
                    await e.wait_idle()
                    clock.advance(1)
                await e.start(hooks, tenant, workflow_id="h", tenant=tenant)
                await e.wait_idle()
            yield e


async def pages(engine: aion.Engine, fetch: Fetch, tenant: str) -> list[Page[Any]]:
    out = [await fetch(engine, tenant, None)]
    while out[-1].next_cursor is not None:
        out.append(await fetch(engine, tenant, out[-1].next_cursor))
    return out


async def refused(engine: aion.Engine, fetch: Fetch, tenant: str, cursor: Any) -> None:
    with pytest.raises(InvalidArgument, match=REFUSED):
        page = await fetch(engine, tenant, cursor)
        pytest.fail(f"a bad cursor returned {page.items!r}")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("name", list(QUERIES))
async def test_pages_hold_only_their_tenant(engine: aion.Engine, name: str) -> None:
    for tenant in TENANTS:
        found = await pages(engine, QUERIES[name], tenant)
        assert len(found) >= 2
        items = [item for page in found for item in page.items]
        assert {item.tenant for item in items} == {tenant}


async def test_the_forged_cursor_of_the_issue_is_refused(engine: aion.Engine) -> None:
    """``[1, query, last_key]`` with tenant A's key prefix read A's approvals for tenant B."""
    forged = b64(msgspec.msgpack.encode([1, ["approvals_pending", "B"], b"A\x00"]))
    for tenant in ("B", "A"):  # B: the attack; A: the tenant whose rows it reached
        await refused(engine, QUERIES["pending_approvals"], tenant, forged)
    listing = b64(msgspec.msgpack.encode([1, ["workflows", "B", None, None, None, None], b"C"]))
    await refused(engine, QUERIES["list"], "B", listing)
    waiting = b64(msgspec.msgpack.encode([1, ["waitpoints_pending", "B", "h"], b"A"]))
    await refused(engine, QUERIES["pending_waitpoints"], "B", waiting)


async def test_cursors_swapped_between_tenants_and_queries_are_refused(
    engine: aion.Engine,
) -> None:
    issued = {
        (name, tenant): [p.next_cursor for p in (await pages(engine, fetch, tenant))[:-1]]
        for name, fetch in QUERIES.items()
        for tenant in TENANTS
    }
    for name, fetch in QUERIES.items():
        for tenant in TENANTS:
            for source, cursors in issued.items():
                if source != (name, tenant):
                    for cursor in cursors:
                        await refused(engine, fetch, tenant, cursor)


@pytest.mark.parametrize("name", list(QUERIES))
async def test_truncated_and_bit_flipped_cursors_are_refused(
    engine: aion.Engine, name: str
) -> None:
    fetch = QUERIES[name]
    for tenant in TENANTS:
        cursor = (await fetch(engine, tenant, None)).next_cursor
        assert cursor is not None
        for n in range(0, len(cursor), 3):
            await refused(engine, fetch, tenant, cursor[:n])
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        for bit in range(0, len(raw) * 8, 5):
            flipped = bytearray(raw)
            flipped[bit // 8] ^= 1 << (bit % 8)
            await refused(engine, fetch, tenant, b64(bytes(flipped)))
        await refused(engine, fetch, tenant, cursor + "A")


async def test_a_cursor_that_is_not_text_is_refused(engine: aion.Engine) -> None:
    for fetch in QUERIES.values():
        with pytest.raises(InvalidArgument, match=r"cursor must be a str|is not a cursor"):
            await fetch(engine, "A", 5)  # type: ignore[arg-type]
