"""Workflows whose recorded histories are kept in tests/golden/ (see test_golden_histories.py).

``order_v1`` is the code the golden history was recorded with. ``order`` is today's code: it
added a fraud check guarded by ``ctx.patched`` and must still replay the old history.
``order_broken`` changed a step without a guard: replaying the old history must fail.
"""

from __future__ import annotations

from typing import Any

import aion


def reserve(order_id: str) -> str:
    return f"rsv-{order_id}"


def charge(order_id: str, amount: int) -> str:
    return f"ch-{order_id}-{amount}"


def fraud_check(order_id: str) -> bool:
    return True


def charge_v2(order_id: str, amount: int) -> str:
    return f"ch2-{order_id}-{amount}"


@aion.workflow(name="order")
async def order_v1(ctx: aion.Context, order_id: str, amount: int) -> dict[str, Any]:
    reservation = await ctx.step(reserve, order_id)
    charged = await ctx.step(charge, order_id, amount)
    await ctx.sleep(60)
    carrier = await ctx.wait_signal("ship", timeout=3600)
    return {
        "reservation": reservation,
        "charge": charged,
        "carrier": carrier,
        "token": str(ctx.uuid4()),
    }


@aion.workflow(name="order")
async def order(ctx: aion.Context, order_id: str, amount: int) -> dict[str, Any]:
    reservation = await ctx.step(reserve, order_id)
    if ctx.patched("fraud-check"):
        await ctx.step(fraud_check, order_id)
    charged = await ctx.step(charge, order_id, amount)
    await ctx.sleep(60)
    carrier = await ctx.wait_signal("ship", timeout=3600)
    return {
        "reservation": reservation,
        "charge": charged,
        "carrier": carrier,
        "token": str(ctx.uuid4()),
    }


@aion.workflow(name="order")
async def order_broken(ctx: aion.Context, order_id: str, amount: int) -> dict[str, Any]:
    reservation = await ctx.step(reserve, order_id)
    charged = await ctx.step(charge_v2, order_id, amount)  # renamed step, no patch guard
    return {"reservation": reservation, "charge": charged}
