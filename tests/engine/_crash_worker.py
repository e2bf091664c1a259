"""The worker process of the crash-loop test (tests/engine/test_crash_loop.py).

Run as ``python _crash_worker.py DATADIR SIDE_EFFECT_LOG COUNT``. It opens a real engine on
``DATADIR`` (LMDB store, durable commits, system clock), prints ``started`` as soon as it runs,
starts workflows ``0 .. COUNT-1`` by fixed ids (idempotently: after a restart the existing ones
are kept; the parent raises ``COUNT`` from boot to boot so that every boot has new work), sends
each signalled workflow its signal unless one is already recorded, waits for every result and
prints ``done``. If a run is parked BLOCKED (it would never finish) it prints ``blocked ...``
and exits with status 3; if the next result does not come within ``STALL`` seconds it prints
``stalled ...`` and exits with status 4. The parent kills it with SIGKILL at random moments
and starts it again on the same directory.

Every step execution appends one line ``workflow_id run_id step_seq attempt pid`` to the side
effect log (O_APPEND, fsync'd), after which the step pauses briefly so that kills often land
between a side effect and its record.

The module is imported by the test too: the workflow definitions and :func:`expected_result`
live here so that both sides agree.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import anyio

import aion

SLEEP = 0.05  # the durable timer of every workflow, in seconds
STEP_PAUSE = 0.02  # after the side effect, before the step returns
STALL = 45.0  # a boot that waits this long for a result reports the stuck runs and exits
_LOG_FD: int | None = None


def workflow_id(index: int) -> str:
    return f"wf-{index:04d}"


def continues_as_new(index: int) -> bool:
    return index % 4 == 0


def has_signal(index: int) -> bool:
    return index % 4 != 0


def has_child(index: int) -> bool:
    return index % 5 == 1


def signal_payload(index: int) -> int:
    return index * 11


def effect(index: int, x: int) -> int:
    """The step: a logged side effect and a deterministic result."""
    info = aion.current_step()
    line = f"{info.workflow_id} {info.run_id} {info.step_seq} {info.attempt} {os.getpid()}\n"
    fd = _LOG_FD
    if fd is None:  # imported by the test: steps never run there, but be safe
        raise RuntimeError("the side-effect log is not open")
    os.write(fd, line.encode())
    os.fsync(fd)
    time.sleep(STEP_PAUSE)
    return _f(index, x)


def _f(index: int, x: int) -> int:
    return (x * 7 + index * 13 + 5) % 100_003


@aion.workflow(name="crash.child")
async def crash_child(ctx: aion.Context, index: int) -> int:
    v = await ctx.step(effect, index, 1000)
    await ctx.sleep(SLEEP)
    return int(v) + 1


@aion.workflow(name="crash.main")
async def crash_main(ctx: aion.Context, index: int, generation: int = 0) -> dict[str, Any]:
    if continues_as_new(index) and generation == 0:
        first = await ctx.step(effect, index, -1)
        await ctx.sleep(SLEEP)
        ctx.continue_as_new(index, int(first) % 97 + 1)
    a = await ctx.step(effect, index, index + generation)
    await ctx.sleep(SLEEP)
    b = await ctx.step(effect, index, a + 1)
    signal = await ctx.wait_signal("go") if has_signal(index) else None
    c, d = await ctx.gather(ctx.step(effect, index, b * 2), ctx.step(effect, index, b * 3))
    child = await ctx.child(crash_child, index) if has_child(index) else None
    return {
        "index": index,
        "generation": generation,
        "values": [a, b, c, d],
        "signal": signal,
        "child": child,
    }


WORKFLOWS = [crash_main, crash_child]


def expected_result(index: int) -> dict[str, Any]:
    """What ``crash_main(index)`` returns, computed without running it."""
    generation = _f(index, -1) % 97 + 1 if continues_as_new(index) else 0
    a = _f(index, index + generation)
    b = _f(index, a + 1)
    return {
        "index": index,
        "generation": generation,
        "values": [a, b, _f(index, b * 2), _f(index, b * 3)],
        "signal": signal_payload(index) if has_signal(index) else None,
        "child": _f(index, 1000) + 1 if has_child(index) else None,
    }


def expected_steps(index: int) -> list[int]:
    """Steps per run of ``crash_main(index)`` (one entry per run: its number of steps)."""
    return [1, 4] if continues_as_new(index) else [4]


async def _fail_on_blocked(engine: aion.Engine) -> None:
    """A run parked BLOCKED never finishes: say so and exit at once instead of hanging."""
    while True:
        page = await engine.list(status=aion.Status.BLOCKED)
        if page.items:
            for d in page.items:
                print(f"blocked {d.workflow_id}: {d.reason}", flush=True)
            os._exit(3)
        await anyio.sleep(0.1)


async def _signals_queued(store: Any) -> set[str]:
    """Workflow ids with a signal waiting in the inbox."""
    found: set[str] = set()
    after: str | None = None
    while True:
        commands = await store.read_inbox(limit=500, after=after)
        found.update(c.workflow_id for c in commands if c.kind == "signal")
        if len(commands) < 500:
            return found
        after = commands[-1].command_id


async def main(datadir: str, log_path: str, count: int) -> None:
    global _LOG_FD
    _LOG_FD = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("started", flush=True)
    async with aion.Engine(datadir, workflows=WORKFLOWS) as engine:
        handles = [
            await engine.start(crash_main, i, workflow_id=workflow_id(i)) for i in range(count)
        ]
        # Signals go out after all starts, newest first: some arrive before the workflow
        # waits (buffered), some after. One per workflow: not again once recorded, nor while
        # one waits in the inbox (on a shared PostgreSQL schema an engine queues a signal for
        # a run another engine drives; killed, the next boot finds it queued, not recorded).
        # The inbox is read before the histories: a command applied in between is in both.
        queued = await _signals_queued(engine.store)
        for i in reversed(range(count)):
            if not has_signal(i) or workflow_id(i) in queued:
                continue
            try:
                history = await engine.history(workflow_id(i))
            except aion.WorkflowNotFound:  # its start is queued for another engine (PostgreSQL)
                history = []
            if any(h.type == "signal.received" for h in history):
                continue
            with contextlib.suppress(aion.WorkflowClosed):
                await engine.signal(workflow_id(i), "go", signal_payload(i))
        async with anyio.create_task_group() as tg:
            tg.start_soon(_fail_on_blocked, engine)
            for handle in handles:
                # A run that never finishes: say which, at once. (The next result, not all
                # of them, within STALL: 20,000 runs take longer than that on a slow machine.)
                with anyio.move_on_after(STALL) as waiting:
                    await handle.result()
                if waiting.cancelled_caught:
                    stuck = [r.workflow_id for r in await engine.store.scan_active()]
                    print(f"stalled {stuck[:20]}", flush=True)
                    os._exit(4)
            tg.cancel_scope.cancel()
    os.close(_LOG_FD)
    print("done", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
