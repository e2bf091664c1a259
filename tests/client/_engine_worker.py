"""The engine process of the Client tests (tests/client/test_client.py).

Run as ``python -m tests.client._engine_worker DATADIR WORKDIR [MAX_PAYLOAD_BYTES]``. It runs an
engine on ``DATADIR`` (LMDB, durable, system clock, the default waitpoint key file) with the
workflows below and ``inbox_interval=60``: commands from other processes reach it through the
doorbell, or would wait a minute. It prints ``ready`` once the engine runs, and stops cleanly
(leaving ``async with``) when its stdin is closed.

The waitpoint workflow hands its token out through a step that writes
``WORKDIR/tokens/<workflow id>`` (atomically), where the test picks it up as an outside system
would. The module is imported by the tests too, so both sides agree on the workflows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio

import aion

#: Where the waitpoint workflow's step writes its token (set by ``main`` or by a test).
WORKDIR: list[Path] = []

#: How often the worker's engine looks at the inbox without a ring: long, on purpose.
INBOX_INTERVAL = 60.0


@aion.workflow(name="client.greet")
async def greet(ctx: aion.Context, name: str) -> str:
    return f"hello {name}"


@aion.workflow(name="client.waits")
async def waits(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


@aion.workflow(name="client.two_signals")
async def two_signals(ctx: aion.Context) -> list[Any]:
    first = await ctx.wait_signal("go")
    second = await ctx.wait_signal("go")
    return [first, second]


@aion.workflow(name="client.approval")
async def needs_approval(ctx: aion.Context, amount: int) -> dict[str, Any]:
    approval = await ctx.approval("pay", details={"amount": amount})
    return {"by": approval.user, "comment": approval.comment, "amount": amount}


def hand_out(workflow_id: str, token: str) -> str:
    """Give the token to the "outside system": a file the test reads."""
    folder = WORKDIR[0] / "tokens"
    folder.mkdir(exist_ok=True)
    temp = folder / f".{workflow_id}.{os.getpid()}"
    temp.write_text(token)
    os.replace(temp, folder / workflow_id)
    return "sent"


@aion.workflow(name="client.callback")
async def callback(ctx: aion.Context) -> Any:
    waitpoint = await ctx.waitpoint("provider")
    await ctx.step(hand_out, ctx.info.workflow_id, waitpoint.token)
    return await waitpoint.wait()


WORKFLOWS = [greet, waits, two_signals, needs_approval, callback]


async def main(datadir: str, workdir: str, limit: int) -> None:
    WORKDIR[:] = [Path(workdir)]
    async with aion.Engine(
        datadir, workflows=WORKFLOWS, inbox_interval=INBOX_INTERVAL, max_payload_bytes=limit
    ):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the test closes our stdin
    print("stopped", flush=True)


if __name__ == "__main__":
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 2 * 1024 * 1024
    anyio.run(main, sys.argv[1], sys.argv[2], limit)
