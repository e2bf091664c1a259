"""The control plane over HTTP against the same calls in-process, on one engine.

- **signal**: ``POST /api/v1/workflows/{id}/signals/ping`` one at a time from another process
  (httpx, a kept-alive connection, an operator key) against ``await engine.signal(...)`` in the
  engine's own process: p50/p99 of each, on the same engine and run, alternating.
- **list**: a page of 100 from ``runs`` stored runs (100,000), the first page and the pages
  after it by cursor: ``GET /api/v1/workflows?limit=100`` against ``engine.list(limit=100)``.

The engine runs with its defaults (``aion.Engine(dir)``) and the API under uvicorn, as
``aion serve`` runs them. Targets (issue 16): HTTP signal p50 under 3 ms; a list page under
10 ms.

``python -m benchmarks http [--json] [--quick]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import anyio

import aion
from benchmarks._child import ROOT
from benchmarks._common import median, scratch

FULL = {"runs": 100_000, "signals": 2000, "pages": 200, "rounds": 3}
QUICK = {"runs": 500, "signals": 100, "pages": 10, "rounds": 1}
READY = "@@READY@@"
TARGETS = {"signal_p50_ms": 3.0, "list_page_p50_ms": 10.0}


@aion.workflow
async def bench_noop(ctx: aion.Context) -> None:
    return None


@aion.workflow
async def bench_sink(ctx: aion.Context) -> None:
    await ctx.wait_signal("stop")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _summary(latencies_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in latencies_s]
    return {"p50_ms": median(ms), "p99_ms": _pct(ms, 0.99), "n": len(ms)}


# --- the serving process --------------------------------------------------------------------


async def _serve(size: dict[str, Any]) -> None:
    import uvicorn

    from aion._apikeys import ApiKeys

    with scratch("http") as directory:
        key, _ = ApiKeys(directory / "api-keys.json").create(
            role="operator", tenant="default", label="bench"
        )
        async with aion.Engine(directory, workflows=[bench_noop, bench_sink]) as engine:
            await engine.start(bench_sink, workflow_id="sink")
            started = 0

            async def starter() -> None:
                nonlocal started
                while started < size["runs"]:
                    started += 1
                    await engine.start(bench_noop)

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(starter)
            await engine.wait_idle()
            setup_s = time.perf_counter() - t0
            server = uvicorn.Server(
                uvicorn.Config(
                    engine.asgi_app(),
                    host="127.0.0.1",
                    port=0,
                    log_level="warning",
                    lifespan="off",
                    access_log=False,
                )
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                while not server.started:
                    await anyio.sleep(0.01)
                port = server.servers[0].sockets[0].getsockname()[1]
                ready = {"port": port, "key": key, "setup_s": setup_s}
                print(READY + json.dumps(ready), flush=True)
                while True:
                    line = await anyio.to_thread.run_sync(sys.stdin.readline)
                    if line.strip() != "inprocess":
                        break
                    print(READY + json.dumps(await _inprocess(engine, size)), flush=True)
                server.should_exit = True


async def _inprocess(engine: aion.Engine, size: dict[str, Any]) -> dict[str, Any]:
    signals: list[float] = []
    for i in range(size["signals"]):
        t = time.perf_counter()
        await engine.signal("sink", "ping", i)
        signals.append(time.perf_counter() - t)
    pages: list[float] = []
    cursor = None
    for _ in range(size["pages"]):
        t = time.perf_counter()
        page = await engine.list(limit=100, cursor=cursor)
        pages.append(time.perf_counter() - t)
        cursor = page.next_cursor
    return {"signal": _summary(signals), "list_page": _summary(pages)}


# --- the client (the benchmark's own process) -----------------------------------------------


def _over_http(base: str, key: str, size: dict[str, Any]) -> dict[str, Any]:
    import httpx

    headers = {"authorization": f"Bearer {key}"}
    signals: list[float] = []
    pages: list[float] = []
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        for i in range(20):  # warm the connection and the routes
            http.post("/api/v1/workflows/sink/signals/ping", json=-i).raise_for_status()
        for i in range(size["signals"]):
            t = time.perf_counter()
            r = http.post("/api/v1/workflows/sink/signals/ping", json=i)
            signals.append(time.perf_counter() - t)
            assert r.status_code == 202, r.text
        cursor = None
        for _ in range(size["pages"]):
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            t = time.perf_counter()
            r = http.get("/api/v1/workflows", params=params)
            pages.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            cursor = r.json()["next_cursor"]
    return {"signal": _summary(signals), "list_page": _summary(pages)}


def _read_ready(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(READY):
            result: dict[str, Any] = json.loads(line[len(READY) :])
            return result
    raise RuntimeError(f"the serving process ended ({proc.wait()})")


def run(quick: bool) -> dict[str, Any]:
    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return {"quick": quick, "skipped": f"needs aion[server] and httpx: {exc}"}
    size = QUICK if quick else FULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.http", "serve", json.dumps(size)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _read_ready(proc)
        base = f"http://127.0.0.1:{ready['port']}"
        http_rounds, local_rounds = [], []
        for _ in range(size["rounds"]):
            http_rounds.append(_over_http(base, ready["key"], size))
            assert proc.stdin is not None
            proc.stdin.write("inprocess\n")
            proc.stdin.flush()
            local_rounds.append(_read_ready(proc))
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()

    def med(rounds: list[dict[str, Any]], what: str, stat: str) -> float:
        return median([r[what][stat] for r in rounds])

    figures: dict[str, Any] = {
        "quick": quick,
        "runs_stored": size["runs"],
        "setup_s": ready["setup_s"],
        "rounds": size["rounds"],
        "http": http_rounds,
        "in_process": local_rounds,
    }
    summary = {}
    for what in ("signal", "list_page"):
        for stat in ("p50_ms", "p99_ms"):
            summary[f"{what}_{stat}_http"] = med(http_rounds, what, stat)
            summary[f"{what}_{stat}_in_process"] = med(local_rounds, what, stat)
    figures["summary"] = summary
    figures["targets"] = {
        name: {
            "target": target,
            "value": summary[f"{name.removesuffix('_p50_ms')}_p50_ms_http"],
            "met": summary[f"{name.removesuffix('_p50_ms')}_p50_ms_http"] < target,
        }
        for name, target in TARGETS.items()
    }
    return figures


def print_report(figures: dict[str, Any]) -> None:
    if "skipped" in figures:
        print("http: skipped:", figures["skipped"])
        return
    s = figures["summary"]
    print(f"control plane over HTTP, {figures['runs_stored']:,} runs stored")
    for what in ("signal", "list_page"):
        print(
            f"  {what:10} HTTP p50 {s[f'{what}_p50_ms_http']:.2f} ms "
            f"p99 {s[f'{what}_p99_ms_http']:.2f} ms | in-process p50 "
            f"{s[f'{what}_p50_ms_in_process']:.2f} ms p99 {s[f'{what}_p99_ms_in_process']:.2f} ms"
        )
    for name, t in figures["targets"].items():
        print(f"  target {name} < {t['target']} ms: {t['value']:.2f} ms, met={t['met']}")


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "serve":
        anyio.run(_serve, json.loads(argv[1]))
        return 0
    raise SystemExit("usage: python -m benchmarks http")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
