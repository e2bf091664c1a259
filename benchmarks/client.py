"""Client latency: how long a command from another process takes to apply, against the same
command through the in-process Engine API.

An engine runs in one process with the default settings (``aion.Engine(path)``: durable LMDB,
``inbox_interval=0.5``). A second process uses ``aion.Client`` on the same data directory and
measures, one at a time (each round trip is a fresh workflow):

- **signal -> applied**: ``await client.signal(id, "go", i)`` to a workflow that waits on
  ``ctx.wait_signal("go")`` and returns it, until ``handle.result()`` returns: queuing (one
  fsync'd inbox commit), the doorbell ring, the engine applying the signal and recording the
  run's completion, and the client seeing the outcome (it polls the store, from 1 ms growing
  to 50 ms). The run is recorded and waiting before the clock starts. Also reported: how long
  ``signal()`` itself took (durably queued).
- **start -> result**: ``await (await client.start(greet, i)).result()`` of a workflow that
  returns at once.
- **signal -> applied, no doorbell**: the same with the client's ring turned off, so the
  engine finds the command at its next regular look at the inbox (every 0.5 s; the signal is
  sent at a random moment of that interval): what other processes got before the doorbell.

Baseline, measured in the same run on a fresh directory in a fresh process: the same two round
trips through the in-process API (``engine.signal`` then ``handle.result()``;
``engine.start`` then ``handle.result()``). Figures are the median and the 90th percentile in
milliseconds. Target: the client's signal -> applied median under 100 ms.

Run: ``python -m benchmarks client [--json] [--quick]``. Set ``AION_BENCH_DIR`` to measure on
another filesystem (default: the system temp directory).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

import aion
from benchmarks._child import MARK, ROOT, Mode, child_main, run_child
from benchmarks._common import median, scratch

FULL: dict[str, Any] = {"round_trips": 200, "polling_round_trips": 20}
QUICK: dict[str, Any] = {"round_trips": 5, "polling_round_trips": 2}
TARGETS = {"client_signal_median_ms": 100.0}

_TIMEOUT = 600.0


@aion.workflow(name="bench-client-greet")
async def greet(ctx: aion.Context, i: int) -> int:
    return i


@aion.workflow(name="bench-client-waits")
async def waits(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


WORKFLOWS = [greet, waits]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation, or 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {
        "median_ms": round(median(ms), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "min_ms": round(min(ms), 3) if ms else 0.0,
        "max_ms": round(max(ms), 3) if ms else 0.0,
        "n": len(ms),
    }


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


# --- the modes, each in a fresh interpreter ----------------------------------------------------


def _serve(args: dict[str, Any]) -> dict[str, Any]:
    """The engine process: default settings; runs until its stdin is closed."""

    async def go() -> None:
        async with aion.Engine(args["data"], workflows=WORKFLOWS):
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.read)

    anyio.run(go)
    return {}


async def _waiting(describe: Callable[[str], Awaitable[Any]], workflow_id: str) -> None:
    """Until the run is recorded and waits for its signal."""
    with anyio.fail_after(30):
        while True:
            try:
                if (await describe(workflow_id)).pending.get("signals"):
                    return
            except aion.WorkflowNotFound:
                pass
            await anyio.sleep(0.001)


def _client(args: dict[str, Any]) -> dict[str, Any]:
    """The other process: round trips through ``aion.Client``."""
    from aion import _client as client_module

    if not args["doorbell"]:
        client_module.ring = lambda directory, store=None: False  # type: ignore[attr-defined]

    async def go() -> dict[str, Any]:
        signal: list[float] = []
        queued: list[float] = []
        start: list[float] = []
        async with client_module.Client(args["data"]) as client:
            prefix = "p" if not args["doorbell"] else "d"
            for i in range(args["round_trips"]):
                workflow_id = f"{prefix}-signal-{i}"
                handle = await client.start(waits, workflow_id=workflow_id)
                await _waiting(client.describe, workflow_id)
                if not args["doorbell"]:
                    # At a random moment of the engine's inbox interval, as real traffic comes
                    # (right after the look that applied the start, it would wait a whole one).
                    await anyio.sleep(random.uniform(0, 0.5))
                started = time.perf_counter()
                await client.signal(workflow_id, "go", i)
                queued.append(time.perf_counter() - started)
                assert await handle.result(timeout=30) == i
                signal.append(time.perf_counter() - started)
            if args["starts"]:
                for i in range(args["round_trips"]):

                    async def one(i: int = i) -> None:
                        handle = await client.start(greet, i, workflow_id=f"{prefix}-start-{i}")
                        assert await handle.result(timeout=30) == i

                    start.append(await _timed(one))
        return {"signal": signal, "queued": queued, "start": start}

    return anyio.run(go)


def _engine(args: dict[str, Any]) -> dict[str, Any]:
    """The baseline: the same round trips through the in-process Engine API."""

    async def go() -> dict[str, Any]:
        signal: list[float] = []
        start: list[float] = []
        async with aion.Engine(args["data"], workflows=WORKFLOWS) as engine:
            for i in range(args["round_trips"]):
                workflow_id = f"e-signal-{i}"
                handle = await engine.start(waits, workflow_id=workflow_id)
                await _waiting(engine.describe, workflow_id)
                started = time.perf_counter()
                await engine.signal(workflow_id, "go", i)
                assert await handle.result(timeout=30) == i
                signal.append(time.perf_counter() - started)
            for i in range(args["round_trips"]):

                async def one(i: int = i) -> None:
                    handle = await engine.start(greet, i, workflow_id=f"e-start-{i}")
                    assert await handle.result(timeout=30) == i

                start.append(await _timed(one))
        return {"signal": signal, "start": start}

    return anyio.run(go)


MODES: dict[str, Mode] = {"serve": _serve, "client": _client, "engine": _engine}


# --- the run ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    return env


def _against_a_running_engine(data: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start the engine process, run each client measurement in its own process, stop it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.client", "serve", json.dumps({"data": str(data)})],
        cwd=tempfile.gettempdir(),
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        if server.stdout.readline().strip() != "ready":
            return [{"error": "the engine process did not start"} for _ in runs]
        results = [run_child("benchmarks.client", "client", args, _TIMEOUT) for args in runs]
        server.stdin.close()
        rest = server.stdout.read()
        if server.wait(timeout=60) != 0 or MARK not in rest:
            results.append({"error": f"the engine process exited with {server.returncode}"})
        return results
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for stream in (server.stdin, server.stdout):
            if stream is not None:
                stream.close()


def run(quick: bool = False) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    n, polled = sizes["round_trips"], sizes["polling_round_trips"]
    with scratch("client") as base:
        results = _against_a_running_engine(
            base / "served",
            [
                {"data": str(base / "served"), "round_trips": n, "doorbell": True, "starts": True},
                {
                    "data": str(base / "served"),
                    "round_trips": polled,
                    "doorbell": False,
                    "starts": False,
                },
            ],
        )
        baseline = run_child(
            "benchmarks.client",
            "engine",
            {"data": str(base / "in-process"), "round_trips": n},
            _TIMEOUT,
        )
    errors = [r["error"] for r in [*results, baseline] if "error" in r]
    client, polling = [*results, {}, {}][:2]
    figures: dict[str, Any] = {
        "quick": quick,
        "round_trips": n,
        "polling_round_trips": polled,
        "load_average": list(os.getloadavg()[:2]),
        "errors": errors,
        "client": {
            "signal": _summary(client.get("signal", [])),
            "signal_queued": _summary(client.get("queued", [])),
            "start": _summary(client.get("start", [])),
            "signal_without_doorbell": _summary(polling.get("signal", [])),
        },
        "engine": {
            "signal": _summary(baseline.get("signal", [])),
            "start": _summary(baseline.get("start", [])),
        },
    }
    value = figures["client"]["signal"]["median_ms"]
    goal = TARGETS["client_signal_median_ms"]
    figures["target"] = {
        "client_signal_median_ms": goal,
        "value": value,
        "met": None if quick or errors else value < goal,
    }
    return figures


def print_report(figures: dict[str, Any]) -> None:
    n = figures["round_trips"]
    print(
        f"client latency: aion.Client in another process vs the in-process Engine API, "
        f"default Engine settings, {n} round trips each" + (" (quick)" if figures["quick"] else "")
    )
    rows = [
        ("signal -> applied", "client", figures["client"]["signal"]),
        ("", "  signal() returned (queued)", figures["client"]["signal_queued"]),
        ("", "engine (baseline)", figures["engine"]["signal"]),
        ("", "client, no doorbell", figures["client"]["signal_without_doorbell"]),
        ("start -> result", "client", figures["client"]["start"]),
        ("", "engine (baseline)", figures["engine"]["start"]),
    ]
    print(f"{'':<18} {'':<28} {'median ms':>10} {'p90 ms':>10} {'n':>5}")
    for what, who, s in rows:
        print(f"{what:<18} {who:<28} {s['median_ms']:>10.2f} {s['p90_ms']:>10.2f} {s['n']:>5}")
    target = figures["target"]
    met = {None: "not judged (quick or errors)", True: "met", False: "NOT met"}[target["met"]]
    print(
        f"target: client signal -> applied median < {target['client_signal_median_ms']:.0f} ms: "
        f"{target['value']:.2f} ms, {met}"
    )
    for error in figures["errors"]:
        print(f"error: {error}")
    print(f"load average: {figures['load_average']}")


if __name__ == "__main__":
    sys.exit(child_main(MODES, sys.argv[1:]))
