"""``aion demo``: an order workflow that survives its worker being killed with SIGKILL.

The demo runs a worker process (an engine with the ``demo-order`` workflow) on a real data
directory. The workflow reserves stock, charges a card (the first attempt fails and is retried
on a durable timer), waits on a durable timer for the warehouse, then for a ``ship`` signal,
then ships. Midway, the demo kills the worker with SIGKILL, shows what the store holds, starts a
new worker, sends the signal from outside (through the store's inbox) and shows the run finish
from where it was: completed steps do not run again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

import aion
from aion._codec import encode_payload
from aion._engine import Reader
from aion._format import describe_text, history_table
from aion.store import InboxCommand, LmdbStore

__all__ = ["run_demo"]

WORKFLOW_ID = "demo-order-1"
_charge_attempts: dict[str, int] = {}


def _say(text: str) -> None:
    print(text, flush=True)


def reserve_stock(order_id: str, items: list[str]) -> str:
    _say(f"  [worker {os.getpid()}] step reserve_stock: reserved {', '.join(items)}")
    return f"rsv-{order_id}"


def charge_card(order_id: str, amount: int) -> str:
    step = aion.current_step()
    if step.attempt == 1:
        _say(f"  [worker {os.getpid()}] step charge_card: attempt 1 fails (card network down)")
        raise ConnectionError("card network down")
    _say(f"  [worker {os.getpid()}] step charge_card: attempt {step.attempt} charged {amount}")
    return f"ch-{order_id}"


def ship(order_id: str, carrier: str) -> str:
    _say(f"  [worker {os.getpid()}] step ship: handed {order_id} to {carrier}")
    return f"trk-{order_id}-{carrier}"


@aion.workflow(name="demo-order")
async def demo_order(ctx: aion.Context, order_id: str, amount: int) -> dict[str, Any]:
    reservation = await ctx.step(reserve_stock, order_id, ["book", "lamp"])
    charge = await ctx.step(
        charge_card, order_id, amount, retry=aion.RetryPolicy(initial_interval=1.0)
    )
    await ctx.sleep(4)  # the warehouse needs a moment: a durable timer
    decision = await ctx.wait_signal("ship", timeout=3600)
    tracking = await ctx.step(ship, order_id, decision["carrier"])
    return {"reservation": reservation, "charge": charge, "tracking": tracking}


# --- the worker process -------------------------------------------------------------------------


async def _worker(data: Path) -> None:
    async with aion.Engine(data, workflows=[demo_order], inbox_interval=0.2) as engine:
        _say(f"  [worker {os.getpid()}] engine up on {data}")
        _say(f"  [worker {os.getpid()}] {engine.recovery.summary()}")
        handle = await engine.start(demo_order, "o-1", 4200, workflow_id=WORKFLOW_ID)
        result = await handle.result()
        _say(f"  [worker {os.getpid()}] workflow completed: {result}")
        _say("DONE")


# --- the showcase ---------------------------------------------------------------------------------


def _spawn(data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "aion._demo", "worker", str(data)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _follow(proc: subprocess.Popen[str], until: str, deadline: float) -> bool:
    """Echo the worker's lines until one contains ``until``; False if it ended first."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return False
        if line.strip() != "DONE":
            print(line, end="", flush=True)
        if until in line:
            return True
    raise TimeoutError(f"the demo worker did not reach {until!r} in time")


async def _snapshot(data: Path) -> str:
    store = LmdbStore(data, role="client")
    try:
        desc = await Reader(lambda: store).describe(WORKFLOW_ID)
    finally:
        await store.aclose()
    return describe_text(desc)


async def _wait_for_timer(data: Path, deadline: float) -> None:
    store = LmdbStore(data, role="client")
    try:
        while time.monotonic() < deadline:
            desc = await Reader(lambda: store).describe(WORKFLOW_ID)
            if desc.pending.get("timers"):
                return
            await anyio.sleep(0.02)
    finally:
        await store.aclose()
    raise TimeoutError("the demo run never reached its timer")


async def _send_ship(data: Path) -> None:
    store = LmdbStore(data, role="client")
    try:
        await store.put_inbox(
            InboxCommand(
                "signal",
                "default",
                WORKFLOW_ID,
                datetime.now(UTC),
                name="ship",
                payload=encode_payload({"carrier": "ups"}),
            )
        )
    finally:
        await store.aclose()


async def _history(data: Path) -> str:
    store = LmdbStore(data, role="client")
    try:
        events = await Reader(lambda: store).history(WORKFLOW_ID)
    finally:
        await store.aclose()
    return history_table(events)


def run_demo(data: Path, *, fresh: bool = False) -> int:
    """Run the showcase on ``data``; returns a process exit code."""
    started = time.monotonic()
    deadline = started + 120
    if fresh and data.exists():
        shutil.rmtree(data)
    _say(f"aion demo: a durable order workflow on {data}\n")
    _say("1. Starting a worker process with an embedded engine...")
    worker = _spawn(data)
    try:
        reached = _follow(worker, "step charge_card: attempt 2", deadline)
        if not reached:
            return _already_done(worker, data)
        # Wait until the run sits on its durable 4-second timer, then kill the worker.
        anyio.run(_wait_for_timer, data, deadline)
        _say(f"\n2. Killing the worker (pid {worker.pid}) with SIGKILL, mid-run...")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        _say("   What the store holds now (read by another process, no engine running):\n")
        _say(_indent(anyio.run(_snapshot, data)))
        _say("\n3. Starting a new worker: it recovers the run from its history...")
        worker = _spawn(data)
        _follow(worker, "recovery:", deadline)
        _say("   (reserve_stock and charge_card are recorded: they do not run again)")
        _say("\n4. Sending the 'ship' signal from outside, through the store's inbox...")
        anyio.run(_send_ship, data)
        _follow(worker, "workflow completed", deadline)
        worker.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    _say("\n5. The run's recorded history:\n")
    _say(_indent(anyio.run(_history, data)))
    _say(f"\nDone in {time.monotonic() - started:.1f} s. Look around with:")
    _say(f"  aion list --data {data}")
    _say(f"  aion describe {WORKFLOW_ID} --data {data}")
    _say(f"  aion history {WORKFLOW_ID} --data {data}")
    _say("Run it again from scratch with: aion demo --fresh")
    return 0


def _already_done(worker: subprocess.Popen[str], data: Path) -> int:
    worker.wait()
    _say("\nThis data directory already holds a finished demo run:\n")
    _say(_indent(anyio.run(_snapshot, data)))
    _say("\nRun it again from scratch with: aion demo --fresh")
    return 0


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        anyio.run(_worker, Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m aion._demo worker DATA_DIR")
