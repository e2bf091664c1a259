"""Scale-out on PostgreSQL: trivial durable workflows per second on one shared database.

- **aion**: an engine on ``postgresql://...?schema=<fresh>`` (``aion.Engine(url)``, every other
  setting the default), requesters looping ``start`` -> ``result`` of a one-step workflow, at 1
  and 50 in flight, each configuration in a fresh subprocess and a fresh schema.
- **baseline**: DBOS Transact on the same PostgreSQL server (its system database, a fresh
  database per run), sync workflows in sequence and async with 50 in flight; its best repeat
  is the baseline. Same run, same machine, alternating with aion.

Target (issue 15): one engine process >= 10x DBOS on PostgreSQL. Several engine processes on
one schema are not built yet (one engine per schema): the 2- and 3-process rows say so.

``python -m benchmarks scaleout [--json] [--quick]``. ``AION_BENCH_POSTGRES`` names the server
(default ``postgresql://postgres@127.0.0.1:5432/test``; DBOS gets database ``aion_bench_dbos``
on it). Without a reachable server the figures say why and measure nothing.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from typing import Any

import anyio

from benchmarks._child import child_main, run_child
from benchmarks._common import median
from benchmarks.workflows import _aion_throughput_once, _dbos_baseline

URL = os.environ.get("AION_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DBOS_DATABASE = "aion_bench_dbos"

FULL: dict[str, Any] = {"duration": 3.0, "warmup": 1.0, "repeats": 3, "concurrency": (1, 50)}
QUICK: dict[str, Any] = {"duration": 0.3, "warmup": 0.1, "repeats": 1, "concurrency": (1, 4)}
TARGET = 10.0


def _unavailable() -> str | None:
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}): pip install -e '.[postgres]'"
    try:
        with psycopg.connect(URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {URL}: {exc}"
    return None


def _admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(statement)


def _aion_mode(args: dict[str, Any]) -> dict[str, Any]:
    runs = []
    for _ in range(args["repeats"]):
        schema = f"aion_bench_{secrets.token_hex(4)}"
        try:
            runs.append(
                anyio.run(
                    _aion_throughput_once,
                    args["concurrency"],
                    args["duration"],
                    args["warmup"],
                    False,
                    f"{URL}?schema={schema}",
                )
            )
        finally:
            _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    rates = [r["workflows_per_s"] for r in runs]
    return {
        "concurrency": args["concurrency"],
        "workflows_per_s": median(rates),
        "runs": [round(r, 1) for r in rates],
        "latency_p50_ms": median([r["latency_p50_ms"] for r in runs]),
        "cpu_ms_per_workflow": median([r["cpu_ms_per_workflow"] for r in runs]),
    }


def _dbos_mode(args: dict[str, Any]) -> dict[str, Any]:
    _admin(f'DROP DATABASE IF EXISTS "{DBOS_DATABASE}"')
    try:
        base = URL.rsplit("/", 1)[0]
        return _dbos_baseline({**args, "system_database_url": f"{base}/{DBOS_DATABASE}"})
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{DBOS_DATABASE}" WITH (FORCE)')


def run(quick: bool) -> dict[str, Any]:
    size = QUICK if quick else FULL
    reason = _unavailable()
    if reason is not None:
        return {"quick": quick, "skipped": reason}
    t0 = time.perf_counter()
    window = {k: size[k] for k in ("duration", "warmup", "repeats")}
    timeout = 120 + size["repeats"] * (size["duration"] + size["warmup"] + 10) * 4
    aion_rows: dict[str, Any] = {}
    for concurrency in size["concurrency"]:
        aion_rows[str(concurrency)] = run_child(
            "benchmarks.scaleout", "aion", {**window, "concurrency": concurrency}, timeout
        )
    dbos: dict[str, Any] = {"skipped": "not measured with --quick"}
    if not quick:
        dbos = run_child(
            "benchmarks.scaleout",
            "dbos",
            {**window, "modes": [["sync", 1], ["async", 50]]},
            timeout,
        )
    figures: dict[str, Any] = {
        "quick": quick,
        "server": URL.split("@")[-1],
        "workflow": "start -> one async step (x + 1) -> complete; requesters loop start -> result",
        "processes": {
            "1": aion_rows,
            "2": "not built: one engine per schema (docs/limits.md)",
            "3": "not built: one engine per schema (docs/limits.md)",
        },
        "dbos": dbos,
    }
    best = dbos.get("best_run_workflows_per_s")
    top = max(
        (row.get("workflows_per_s", 0.0) for row in aion_rows.values() if isinstance(row, dict)),
        default=0.0,
    )
    figures["target"] = {
        "what": "one engine process vs DBOS's best repeat on the same PostgreSQL",
        "target": TARGET,
        "value": top / best if best else None,
        "met": (top / best >= TARGET) if best and not quick else None,
    }
    figures["elapsed_s"] = time.perf_counter() - t0
    return figures


def print_report(figures: dict[str, Any]) -> None:
    if "skipped" in figures:
        print(f"scale-out: skipped ({figures['skipped']})")
        return
    for concurrency, row in figures["processes"]["1"].items():
        if "error" in row:
            print(f"aion, 1 process, {concurrency} in flight: {row['error']}")
            continue
        print(
            f"aion, 1 process, {concurrency} in flight: {row['workflows_per_s']:,.0f}/s "
            f"(repeats {row['runs']}), p50 {row['latency_p50_ms']:.2f} ms"
        )
    dbos = figures["dbos"]
    if "modes" in dbos:
        for mode in dbos["modes"].values():
            print(f"DBOS on PostgreSQL, {mode['mode']}: {mode['workflows_per_s']:,.0f}/s")
    target = figures["target"]
    if target["value"] is not None:
        print(f"ratio: {target['value']:.1f}x (target {target['target']:.0f}x): {target['met']}")


_MODES = {"aion": _aion_mode, "dbos": _dbos_mode}


def _main(argv: list[str]) -> int:
    return child_main(_MODES, argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
