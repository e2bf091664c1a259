"""Scale-out on PostgreSQL: trivial durable workflows per second on one shared database.

- **aion**: an engine on ``postgresql://...?schema=<fresh>`` (``aion.Engine(url)``, every other
  setting the default), requesters looping ``start`` -> ``result`` of a one-step workflow, at 1
  and 50 in flight, each configuration in a fresh subprocess and a fresh schema.
- **baseline**: DBOS Transact on the same PostgreSQL server (its system database, a fresh
  database per run), sync workflows in sequence and async with 50 in flight; its best repeat
  is the baseline. Same run, same machine, alternating with aion.

- **2 and 3 processes**: as many engine processes on one schema (the default: they share its
  partitions), each with 50 requesters starting workflows without ids (an engine makes up
  ids in partitions it drives, so each process runs what it was asked to). Their rates are
  summed over a window that begins once the partitions are balanced.
- **takeover**: two engine processes, a run parked on a signal in every partition; one process
  is SIGKILLed and its runs signalled at once; the time from the kill (and from its lease's
  expiry, by the database's clock) until the first of its runs completes on the survivor.

Targets (issue 15): one engine process >= 10x DBOS on PostgreSQL; takeover within the lease
(``lease_ttl``, default 10 s) + 1 s of the kill.

``python -m benchmarks scaleout [--json] [--quick]``. ``AION_BENCH_POSTGRES`` names the server
(default ``postgresql://postgres@127.0.0.1:5432/test``; DBOS gets database ``aion_bench_dbos``
on it). Without a reachable server the figures say why and measure nothing.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import anyio

import aion
from benchmarks._child import ROOT, child_main, run_child
from benchmarks._common import median
from benchmarks.workflows import _aion_throughput_once, _dbos_baseline

URL = os.environ.get("AION_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DBOS_DATABASE = "aion_bench_dbos"

FULL: dict[str, Any] = {
    "duration": 3.0,
    "warmup": 1.0,
    "repeats": 3,
    "concurrency": (1, 50),
    "processes": (2, 3),
    "balance_warmup": 4.0,
    "lease_ttl": None,  # the default
}
QUICK: dict[str, Any] = {
    "duration": 0.3,
    "warmup": 0.1,
    "repeats": 1,
    "concurrency": (1, 4),
    "processes": (2,),
    "balance_warmup": 3.0,
    "lease_ttl": 1.0,
}
TARGET = 10.0
#: The default lease of an engine on a shared schema (PostgresStore's ``lease_ttl``).
DEFAULT_LEASE = 10.0


@aion.workflow
async def scaleout_parked(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


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
    """``args["url"]``: measure on that (shared) schema, left as it is; else each repeat on a
    fresh schema, dropped afterwards."""
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
                    args.get("url") or f"{URL}?schema={schema}",
                )
            )
        finally:
            if not args.get("url"):
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


def _processes(count: int, size: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``count`` engine processes on one fresh schema at once, 50 requesters each; each
    repeat's rates summed."""
    totals: list[float] = []
    rows: list[list[dict[str, Any]]] = []
    for _ in range(size["repeats"]):
        schema = f"aion_bench_{secrets.token_hex(4)}"
        url = f"{URL}?schema={schema}"
        if size["lease_ttl"] is not None:
            url += f"&lease_ttl={size['lease_ttl']}"
        _admin(f'CREATE SCHEMA "{schema}"')
        args = {
            "duration": size["duration"],
            # Long enough for the first engine to hand over partitions to the others.
            "warmup": max(size["warmup"], size["balance_warmup"]),
            "repeats": 1,
            "concurrency": 50,
            "url": url,
        }
        results: list[dict[str, Any]] = [{} for _ in range(count)]

        def one(i: int, args: dict[str, Any], results: list[dict[str, Any]]) -> None:
            results[i] = run_child("benchmarks.scaleout", "aion", args, timeout)

        try:
            threads = [threading.Thread(target=one, args=(i, args, results)) for i in range(count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            return {"error": errors[0]}
        rows.append(results)
        totals.append(sum(r["workflows_per_s"] for r in results))
    return {
        "processes": count,
        "concurrency_per_process": 50,
        "workflows_per_s": median(totals),
        "runs": [round(t, 1) for t in totals],
        "per_process": [[round(r["workflows_per_s"], 1) for r in rs] for rs in rows],
        "latency_p50_ms": median([r["latency_p50_ms"] for rs in rows for r in rs]),
    }


def _takeover(size: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL one of two engine processes; seconds until the first of its runs completes on
    the other (from the kill, and from its lease's expiry by the database's clock)."""
    import psycopg

    from aion.store._keys import workflow_key
    from aion.store._postgres_owner import partition_of_key

    lease = size["lease_ttl"] or DEFAULT_LEASE
    from_kill: list[float] = []
    from_expiry: list[float] = []
    for _ in range(size["repeats"]):
        schema = f"aion_bench_{secrets.token_hex(4)}"
        url = f"{URL}?schema={schema}&partitions=16"
        if size["lease_ttl"] is not None:
            url += f"&lease_ttl={size['lease_ttl']}"
        procs: list[subprocess.Popen[str]] = []
        try:
            engine_ids = []
            for _ in range(2):
                proc, engine_id = _serve(url)
                procs.append(proc)
                engine_ids.append(engine_id)
            # One run parked in every partition.
            ids: dict[int, str] = {}
            n = 0
            while len(ids) < 16:
                ids.setdefault(partition_of_key(workflow_key("default", f"p-{n}"), 16), f"p-{n}")
                n += 1
            with psycopg.connect(URL, autocommit=True) as conn:
                owners = _balanced(conn, schema, 2)
                anyio.run(_park, url, list(ids.values()))
                victim, victim_id = procs[1], engine_ids[1]
                lease_until = conn.execute(
                    f'SELECT lease_until FROM "{schema}".engines WHERE id = %s', (victim_id,)
                ).fetchone()
                victims = [w for p, w in ids.items() if owners.get(p) == victim_id]
                killed = time.perf_counter()
                victim.kill()
                victim.wait()
                first = anyio.run(_first_done, url, victims)
                from_kill.append(first - killed)
                now = conn.execute("SELECT now()").fetchone()
                assert lease_until is not None and now is not None
                from_expiry.append((now[0] - lease_until[0]).total_seconds())
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return {
        "lease_ttl_s": lease,
        "from_kill_s": median(from_kill),
        "runs_from_kill_s": [round(t, 2) for t in from_kill],
        "from_lease_expiry_s": median(from_expiry),
        "target_s": lease + 1.0,
        "met": median(from_kill) <= lease + 1.0,
    }


def _serve(url: str) -> tuple[subprocess.Popen[str], str]:
    """An engine process on ``url``, and its engine id."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scaleout", "serve", url],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        raise RuntimeError(f"the engine process said {line!r}")
    return proc, line.split()[1]


def _balanced(conn: Any, schema: str, engines: int) -> dict[int, str]:
    """Wait until ``engines`` engines own the partitions evenly; partition -> owner."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = conn.execute(f'SELECT id, owner FROM "{schema}".partitions').fetchall()
        owners = {int(p): o for p, o in rows}
        counts = Counter(owners.values())
        if (
            None not in counts
            and len(counts) == engines
            and max(counts.values()) <= min(counts.values()) + 1
        ):
            return owners
        time.sleep(0.05)
    raise RuntimeError("the engines did not balance their partitions within 60 s")


async def _park(url: str, ids: list[str]) -> None:
    async with aion.Client(url) as client:
        for workflow_id in ids:
            await client.start(scaleout_parked, workflow_id=workflow_id)
        for workflow_id in ids:
            while True:
                try:
                    if (await client.describe(workflow_id)).pending.get("signals"):
                        break
                except aion.WorkflowNotFound:  # its start is still queued for its engine
                    pass
                await anyio.sleep(0.01)


async def _first_done(url: str, ids: list[str]) -> float:
    """Signal ``ids`` at once; the time the first of them completes."""
    async with aion.Client(url) as client:
        for workflow_id in ids:
            await client.signal(workflow_id, "go", 1)
        while True:
            for workflow_id in ids:
                if (await client.describe(workflow_id)).status is aion.Status.COMPLETED:
                    return time.perf_counter()
            await anyio.sleep(0.005)


def _serve_main(url: str) -> int:
    async def serve() -> None:
        async with aion.Engine(url, workflows=[scaleout_parked]) as engine:
            print("ready", engine.store.engine_id, flush=True)  # type: ignore[attr-defined]
            await engine.wait_stopped()

    anyio.run(serve)
    return 0


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
            **{str(n): _processes(n, size, timeout) for n in size["processes"]},
        },
        "takeover": _takeover(size),
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
    for count, row in figures["processes"].items():
        if count == "1":
            continue
        if "error" in row:
            print(f"aion, {count} processes: {row['error']}")
            continue
        print(
            f"aion, {count} processes x 50 in flight: {row['workflows_per_s']:,.0f}/s "
            f"(repeats {row['runs']}; per process {row['per_process']})"
        )
    takeover = figures["takeover"]
    print(
        f"takeover after SIGKILL: {takeover['from_kill_s']:.2f} s from the kill "
        f"(runs {takeover['runs_from_kill_s']}), {takeover['from_lease_expiry_s']:.2f} s from "
        f"the lease's expiry; lease {takeover['lease_ttl_s']:.0f} s, target "
        f"{takeover['target_s']:.0f} s: {takeover['met']}"
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
    if argv[:1] == ["serve"]:
        return _serve_main(argv[1])
    return child_main(_MODES, argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
