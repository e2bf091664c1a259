"""Workflow benchmarks: throughput, replay speed, parked-run memory and signal latency.

Each figure comes with a baseline measured in the same run on the same machine:

* **throughput** -- trivial workflows (start, one step, complete) per second, fully durable
  (``aion.Engine`` on a fresh data directory, ``durable=True``), with 1, 50 and 1000 requesters
  each looping ``start`` -> ``result`` for a fixed time. Baseline: DBOS Transact on SQLite doing
  the same work in its best mode here (sync workflows in sequence, or async with 50 in flight,
  whichever is faster). Every configuration runs in a fresh subprocess. The 25x target is judged
  against DBOS's best single repeat (DBOS waits on fsync, so a busy shared disk slows it far more
  than aion) and also checked against DBOS's quiet-machine range (150-190/s).
* **replay** -- events per second replaying a ~10,000-event history (3,333 steps, recorded by
  the engine) into a fresh ``aion._replay.Driver``, and through ``aion.testing.replay`` when it
  exists. Reference (not measured here): Temporal's Python ``Replayer``, ~2,300-4,600 events/s.
* **memory** -- anonymous RSS growth for 1,000,000 runs parked on a signal, started 200 at a
  time on an engine with the **default** settings (checkpoints at 10,000 and 100,000: the
  slope is what each further parked run leaves in memory), the peak while starting, and RSS
  after every run was woken and finished. Extra row (tuned, never the headline):
  ``max_resident_runs=100``. Baselines: 100,000 bare asyncio tasks awaiting an ``Event`` and
  100,000 anyio tasks, each in a fresh subprocess.
* **latency floor** -- two fsync'd raw-LMDB commits in sequence, the least one durable
  workflow (a start and a completion) costs on this filesystem: the baseline of the
  one-at-a-time latency (throughput at 1 in flight).
* **signal latency** -- from ``engine.signal(...)`` to the start of the next step of a parked,
  evicted run (replay on activation, one fsync'd commit, step dispatch): median and p99.

``python -m benchmarks workflows [--json] [--quick]``; ``--quick`` uses tiny sizes, runs the
throughput in-process, and skips the DBOS baseline (the figures say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

import aion
import aion.testing
from benchmarks._child import child_main, run_child
from benchmarks._common import rss

FULL: dict[str, Any] = {
    "concurrency": (1, 50, 1000),
    "duration": 3.0,  # measured window per repeat, seconds
    "warmup": 1.0,  # discarded before the window (1000 in flight need ~1 s to reach steady state)
    "repeats": 5,
    "sync_step_concurrency": 50,  # one extra configuration with a sync (thread) step
    "replay_steps": 3333,  # 1 + 3 * 3333 + 1 = 10,001 events
    "replay_repeats": 15,
    "parked": 1_000_000,  # with the default engine settings
    "parked_checkpoints": (10_000, 100_000),
    "tuned_parked": 100_000,  # the extra row: max_resident_runs below
    "baseline_parked": 100_000,  # bare asyncio / anyio tasks
    "max_resident_runs": 100,
    "latency_runs": 1000,
    "latency_resident": 10,
    "dbos_modes": (("sync", 1), ("async", 50)),
    "floor_pairs": 2000,
}
QUICK: dict[str, Any] = {
    "concurrency": (1, 5, 20),
    "duration": 0.2,
    "warmup": 0.05,
    "repeats": 1,
    "sync_step_concurrency": 5,
    "replay_steps": 30,
    "replay_repeats": 2,
    "parked": 1000,
    "parked_checkpoints": (200,),
    "tuned_parked": 500,
    "baseline_parked": 1000,
    "max_resident_runs": 20,
    "latency_runs": 20,
    "latency_resident": 4,
    "dbos_modes": (),
    "floor_pairs": 50,
}

#: Issue 14's targets, each judged with the defaults a user gets.
TARGETS = {
    "throughput_vs_dbos_at_50": 25.0,  # 50 in flight, x DBOS's best mode (its best repeat)
    "throughput_at_50_per_s": 4_500.0,
    "sync_step_vs_dbos_at_50": 20.0,  # the same with a sync step in a worker thread
    "latency_p50_ms": 1.0,  # one workflow at a time: start -> one async step -> complete
    "replay_events_per_s": 500_000.0,
    "parked_1m_anon_mb": 200.0,  # 1,000,000 runs parked on a signal, default settings
}
TEMPORAL_REPLAY_REFERENCE = (2_300.0, 4_600.0)  # events/s, quoted from ARCHITECTURE.md
# DBOS 3.4 on SQLite on these machines when quiet (ARCHITECTURE.md, "Costs measured"). DBOS waits
# on fsync, so other I/O on a shared machine slows it far more than aion; a same-run baseline
# below this range is flagged, and the target is also checked against the range's top.
DBOS_QUIET_REFERENCE = (150.0, 190.0)


# --- workflows ---------------------------------------------------------------------------------


async def bump(x: int) -> int:
    return x + 1


def bump_sync(x: int) -> int:
    return x + 1


@aion.workflow(name="bench-trivial")
async def trivial(ctx: aion.Context, x: int) -> int:
    return await ctx.step(bump, x)


@aion.workflow(name="bench-trivial-sync")
async def trivial_sync(ctx: aion.Context, x: int) -> int:
    return await ctx.step(bump_sync, x)


async def noop(i: int) -> int:
    return i


@aion.workflow(name="bench-many-steps")
async def many_steps(ctx: aion.Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step(noop, i)
    return total


@aion.workflow(name="bench-parked")
async def parked(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


_STEP_STARTED: dict[str, float] = {}
_STEP_EVENTS: dict[str, anyio.Event] = {}


async def mark() -> None:
    """Records when it starts: the end of the signal-latency measurement."""
    workflow_id = aion.current_step().workflow_id
    _STEP_STARTED[workflow_id] = time.perf_counter()
    event = _STEP_EVENTS.get(workflow_id)
    if event is not None:
        event.set()


@aion.workflow(name="bench-signalled")
async def signalled(ctx: aion.Context) -> None:
    await ctx.wait_signal("go")
    await ctx.step(mark)


# --- helpers -----------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# --- throughput --------------------------------------------------------------------------------


async def _aion_throughput_once(
    concurrency: int, duration: float, warmup: float, sync_step: bool, target: str | None = None
) -> dict[str, Any]:
    """One window on a fresh data directory, or on ``target`` (a store URL) when given."""
    workflow = trivial_sync if sync_step else trivial
    data = tempfile.mkdtemp(prefix="aion-bench-")
    try:
        async with aion.Engine(target or data, workflows=[trivial, trivial_sync]) as engine:
            begin = time.perf_counter() + warmup
            end = begin + duration
            done = 0
            latencies: list[float] = []

            async def requester() -> None:
                nonlocal done
                x = 0
                while True:
                    started = time.perf_counter()
                    if started >= end:
                        return
                    handle = await engine.start(workflow, x)
                    result = await handle.result()
                    finished = time.perf_counter()
                    if result != x + 1:
                        raise AssertionError(f"wrong result {result!r} for {x}")
                    if begin <= finished < end:
                        done += 1
                        latencies.append(finished - started)
                    x += 1

            cpu: list[float] = []

            async def cpu_meter() -> None:
                # CPU seconds of the whole process (event loop, store writer, step threads)
                # over the measured window: steadier than wall-clock rates on a shared VM.
                await anyio.sleep(max(0.0, begin - time.perf_counter()))
                cpu.append(time.process_time())
                await anyio.sleep(max(0.0, end - time.perf_counter()))
                cpu.append(time.process_time())

            async with anyio.create_task_group() as tg:
                tg.start_soon(cpu_meter)
                for _ in range(concurrency):
                    tg.start_soon(requester)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return {
        "workflows_per_s": done / duration,
        "completed": done,
        "cpu_ms_per_workflow": (cpu[1] - cpu[0]) * 1000 / max(done, 1),
        "latency_p50_ms": _pct(latencies, 0.5) * 1000,
        "latency_p99_ms": _pct(latencies, 0.99) * 1000,
    }


def _aion_throughput(args: dict[str, Any]) -> dict[str, Any]:
    runs = []
    for _ in range(args["repeats"]):
        runs.append(
            anyio.run(
                _aion_throughput_once,
                args["concurrency"],
                args["duration"],
                args["warmup"],
                args.get("sync_step", False),
            )
        )
        gc.collect()
    return _summarise(runs, concurrency=args["concurrency"])


def _lmdb_floor(args: dict[str, Any]) -> dict[str, Any]:
    """The latency floor of one durable workflow: two fsync'd LMDB commits in sequence (what a
    start and a completion each cost at least), raw py-lmdb, one small row each, on the same
    filesystem. Median and p99 of ``count`` pairs."""
    import lmdb

    data = tempfile.mkdtemp(prefix="aion-bench-floor-")
    try:
        env = lmdb.open(data, map_size=2**28, sync=True, metasync=True)
        try:
            pairs: list[float] = []
            for i in range(args["count"] + 50):
                t = time.perf_counter()
                for half in (b"s", b"c"):
                    with env.begin(write=True) as txn:
                        txn.put(b"%s%08d" % (half, i), b"x" * 40)
                if i >= 50:  # the first ones warm the file up
                    pairs.append(time.perf_counter() - t)
        finally:
            env.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return {
        "what": "two durable LMDB commits in sequence (raw py-lmdb, sync=True, one row each)",
        "pairs": args["count"],
        "p50_ms": _pct(pairs, 0.5) * 1000,
        "p99_ms": _pct(pairs, 0.99) * 1000,
    }


def _summarise(runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    rates = [r["workflows_per_s"] for r in runs]
    out: dict[str, Any] = {
        **extra,
        "workflows_per_s": statistics.median(rates),
        "runs": [round(r, 1) for r in rates],
    }
    for name in ("cpu_ms_per_workflow", "latency_p50_ms", "latency_p99_ms"):
        if runs and name in runs[0]:
            out[name] = statistics.median(r[name] for r in runs)
    return out


def _dbos_baseline(args: dict[str, Any]) -> dict[str, Any]:
    """DBOS Transact on SQLite: one-step workflows, sync in sequence and async in flight."""
    try:
        from dbos import DBOS
    except ImportError as exc:
        return {"skipped": f"dbos cannot be imported ({exc}); pip install -e '.[bench]'"}
    import logging

    logging.getLogger("dbos").setLevel(logging.ERROR)

    @DBOS.step()
    def d_step(x: int) -> int:
        return x + 1

    @DBOS.workflow()
    def d_sync(x: int) -> int:
        return d_step(x)  # type: ignore[no-any-return]

    @DBOS.step()
    async def d_astep(x: int) -> int:
        return x + 1

    @DBOS.workflow()
    async def d_async(x: int) -> int:
        return await d_astep(x)  # type: ignore[no-any-return]

    data = tempfile.mkdtemp(prefix="dbos-bench-")
    # ``system_database_url``: DBOS on that database (PostgreSQL) instead of SQLite.
    database = args.get("system_database_url") or f"sqlite:///{data}/dbos.sqlite"
    DBOS(config={"name": "aion-bench", "system_database_url": database, "log_level": "ERROR"})
    DBOS.launch()
    duration, warmup = args["duration"], args["warmup"]

    def sync_once() -> float:
        begin = time.perf_counter() + warmup
        end = begin + duration
        done = x = 0
        while True:
            if time.perf_counter() >= end:
                return done / duration
            if d_sync(x) != x + 1:
                raise AssertionError("wrong result")
            if begin <= time.perf_counter() < end:
                done += 1
            x += 1

    async def async_once(concurrency: int) -> float:
        begin = time.perf_counter() + warmup
        end = begin + duration
        done = 0

        async def requester(r: int) -> None:
            nonlocal done
            x = r * 10_000_000
            while time.perf_counter() < end:
                handle = await DBOS.start_workflow_async(d_async, x)
                if await handle.get_result() != x + 1:
                    raise AssertionError("wrong result")
                if begin <= time.perf_counter() < end:
                    done += 1
                x += 1

        await asyncio.gather(*(requester(r) for r in range(concurrency)))
        return done / duration

    modes: dict[str, Any] = {}
    try:
        for kind, concurrency in args["modes"]:
            rates = []
            for _ in range(args["repeats"]):
                if kind == "sync":
                    rates.append(sync_once())
                else:
                    rates.append(asyncio.run(async_once(concurrency)))
            modes[f"{kind}_{concurrency}"] = {
                "mode": "sync workflows in sequence"
                if kind == "sync"
                else f"async workflows, {concurrency} in flight",
                "workflows_per_s": statistics.median(rates),
                "runs": [round(r, 1) for r in rates],
            }
    finally:
        try:
            DBOS.destroy(destroy_registry=True)
        finally:
            shutil.rmtree(data, ignore_errors=True)
    best = max(modes, key=lambda m: modes[m]["workflows_per_s"])
    import importlib.metadata

    return {
        "version": importlib.metadata.version("dbos"),
        "database": "PostgreSQL (DBOS's system database)"
        if database.startswith("postgres")
        else "SQLite (DBOS default pragmas: rollback journal, synchronous=FULL)",
        "modes": modes,
        "best_mode": best,
        "workflows_per_s": modes[best]["workflows_per_s"],
        # DBOS waits on fsync, so other I/O on a shared machine slows it more than aion: its
        # single best repeat is the conservative baseline the target is judged against.
        "best_run_workflows_per_s": max(r for m in modes.values() for r in m["runs"]),
    }


def _throughput(size: dict[str, Any], quick: bool) -> dict[str, Any]:
    common = {"duration": size["duration"], "warmup": size["warmup"], "repeats": size["repeats"]}
    aion_figures: dict[str, Any] = {}
    configs = [(c, False) for c in size["concurrency"]]
    configs.append((size["sync_step_concurrency"], True))
    for concurrency, sync_step in configs:
        args = {**common, "concurrency": concurrency, "sync_step": sync_step}
        key = f"{concurrency}" + ("_sync_step" if sync_step else "")
        if quick:
            figures = _aion_throughput(args)
        else:
            timeout = 120 + size["repeats"] * (size["duration"] + size["warmup"]) * 4
            figures = run_child("benchmarks.workflows", "aion-throughput", args, timeout=timeout)
        figures["step"] = "sync (worker thread)" if sync_step else "async"
        aion_figures[key] = figures
    floor = run_child("benchmarks.workflows", "lmdb-floor", {"count": size["floor_pairs"]}, 120)
    if quick:
        dbos: dict[str, Any] = {"skipped": "quick mode: the DBOS baseline is not run"}
    else:
        dbos = run_child(
            "benchmarks.workflows", "dbos", {**common, "modes": size["dbos_modes"]}, timeout=300
        )
    out: dict[str, Any] = {
        "workflow": "start -> one step (x + 1) -> complete; requesters loop start -> result",
        "durable": True,
        "window_s": size["duration"],
        "repeats": size["repeats"],
        "aion": aion_figures,
        "dbos": dbos,
        "latency_floor": floor,
    }
    out["ratio_vs_dbos"] = _ratios(aion_figures, dbos.get("workflows_per_s"))
    out["ratio_vs_dbos_best_run"] = _ratios(aion_figures, dbos.get("best_run_workflows_per_s"))
    conservative = out["ratio_vs_dbos_best_run"]
    out["best_ratio_vs_dbos"] = max(conservative.values()) if conservative else None
    return out


def _ratios(aion_figures: dict[str, Any], base: float | None) -> dict[str, float] | None:
    if not base:
        return None
    return {
        k: v["workflows_per_s"] / base
        for k, v in aion_figures.items()
        if isinstance(v.get("workflows_per_s"), int | float)
    }


# --- replay ------------------------------------------------------------------------------------


async def _replay_figures(steps: int, repeats: int) -> dict[str, Any]:
    from aion._replay import Driver, definition_of

    data = tempfile.mkdtemp(prefix="aion-bench-")
    try:
        async with aion.Engine(data, workflows=[many_steps], durable=False) as engine:
            t0 = time.perf_counter()
            handle = await engine.start(many_steps, steps, workflow_id="replay-me")
            expected = await handle.result()
            built_s = time.perf_counter() - t0
            events = await engine.store.read_current_run("replay-me")
            history = await engine.history("replay-me")
            definition = definition_of(many_steps)

            cpu_times: list[float] = []

            def replay_once() -> float:
                driver = Driver(definition)
                c = time.process_time()
                t = time.perf_counter()
                driver.replay(events)
                elapsed = time.perf_counter() - t
                cpu_times.append(time.process_time() - c)
                if driver.outcome is None:
                    raise AssertionError("the replay did not reach the recorded outcome")
                return elapsed

            async def activation_once() -> float:
                # What a reactivation does: read the run segment from LMDB, decode, replay.
                t = time.perf_counter()
                segment = await engine.store.read_current_run("replay-me")
                Driver(definition).replay(segment)
                return time.perf_counter() - t

            replay_once()  # warm caches
            cpu_times.clear()
            driver_times = [replay_once() for _ in range(repeats)]
            activation_times = [await activation_once() for _ in range(repeats)]

            testing_replay = getattr(aion.testing, "replay", None)
            testing: dict[str, Any]
            if testing_replay is None:
                testing = {"skipped": "aion.testing.replay does not exist yet"}
            else:
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    testing_replay(many_steps, history)
                    times.append(time.perf_counter() - t)
                testing = {
                    "events_per_s": len(events) / statistics.median(times),
                    "input": "engine.history() (HistoryEvent list)",
                }
    finally:
        shutil.rmtree(data, ignore_errors=True)
    n = len(events)
    driver_rate = n / statistics.median(driver_times)
    return {
        "events": n,
        "steps": steps,
        "result_ok": expected == sum(range(steps)),
        "history_built_in_s": built_s,
        "driver_events_per_s": driver_rate,
        "driver_events_per_s_best": n / min(driver_times),
        "driver_ms": statistics.median(driver_times) * 1000,
        # CPU time of the process during the replay: what the wall figure would be on an idle
        # core (other load on a shared machine inflates wall time, not this).
        "driver_events_per_cpu_s": n / max(statistics.median(cpu_times), 1e-9),
        "activation_events_per_s": n / statistics.median(activation_times),
        "testing_replay": testing,
        "temporal_reference_events_per_s": list(TEMPORAL_REPLAY_REFERENCE),
        "ratio_vs_temporal_reference": [driver_rate / r for r in TEMPORAL_REPLAY_REFERENCE],
        "repeats": repeats,
    }


# --- memory ------------------------------------------------------------------------------------


def _memory_aion(args: dict[str, Any]) -> dict[str, Any]:
    """``count`` runs parked on a signal, started ``starters`` at a time on an engine with
    ``options`` (none: the defaults a user gets); anonymous RSS at checkpoints, the peak while
    starting, then every run woken and finished, and RSS after (no leak)."""
    count, starters, options = args["count"], args["starters"], args.get("options", {})
    checkpoints = sorted({*args.get("checkpoints", ()), count})

    async def main() -> dict[str, Any]:
        data = tempfile.mkdtemp(prefix="aion-bench-")
        try:
            async with aion.Engine(data, workflows=[parked], **options) as engine:
                gc.collect()
                before = rss()
                marks: list[dict[str, Any]] = []
                peak = 0.0
                next_id = 0
                t0 = time.perf_counter()

                async def starter(goal: int) -> None:
                    nonlocal next_id, peak
                    while next_id < goal:
                        i = next_id
                        next_id += 1
                        await engine.start(parked, workflow_id=f"p{i:07d}")
                        if i % 1000 == 0:
                            peak = max(peak, rss().get("RssAnon", 0.0))

                for goal in checkpoints:
                    async with anyio.create_task_group() as tg:
                        for _ in range(starters):
                            tg.start_soon(starter, goal)
                    gc.collect()
                    now = rss()
                    marks.append(
                        {
                            "runs": next_id,
                            "anon_delta_mb": now.get("RssAnon", 0) - before.get("RssAnon", 0),
                            "rss_delta_mb": now["VmRSS"] - before["VmRSS"],
                            "resident_runs": engine.resident_runs,
                            "resident_bytes_mb": engine.resident_bytes / 2**20,
                        }
                    )
                start_s = time.perf_counter() - t0
                sample = await engine.describe(f"p{count // 2:07d}")
                waiting = "go" in sample.pending.get("signals", [])
                db_mb = sum(f.stat().st_size for f in Path(data).iterdir()) / 2**20
                finished_s = None
                after_finish = None
                if args.get("wake", True):
                    t1 = time.perf_counter()
                    next_id = 0

                    async def waker() -> None:
                        nonlocal next_id
                        while next_id < count:
                            i = next_id
                            next_id += 1
                            wid = f"p{i:07d}"
                            await engine.signal(wid, "go", i)
                            if await engine.handle(wid).result(timeout=600) != i:
                                raise AssertionError(f"{wid}: wrong result")

                    async with anyio.create_task_group() as tg:
                        for _ in range(starters):
                            tg.start_soon(waker)
                    finished_s = time.perf_counter() - t1
                    gc.collect()
                    now = rss()
                    after_finish = {
                        "anon_delta_mb": now.get("RssAnon", 0) - before.get("RssAnon", 0),
                        "resident_runs": engine.resident_runs,
                    }
                    if _malloc_trim():  # what the C allocator kept for reuse, given back
                        trimmed = rss().get("RssAnon", 0) - before.get("RssAnon", 0)
                        after_finish["anon_delta_after_malloc_trim_mb"] = trimmed
        finally:
            shutil.rmtree(data, ignore_errors=True)
        last = marks[-1]
        out: dict[str, Any] = {
            "runs": count,
            "engine_options": options or "defaults",
            "starters": starters,
            "sample_waiting_on_signal": waiting,
            "starts_per_s": count / start_s,
            "rss_before_mb": before,
            "checkpoints": marks,
            "anon_delta_mb": last["anon_delta_mb"],
            "rss_delta_mb": last["rss_delta_mb"],
            "anon_peak_delta_mb": max(peak, last["anon_delta_mb"] + before.get("RssAnon", 0))
            - before.get("RssAnon", 0),
            "data_files_mb": db_mb,
            "woken_and_finished_in_s": finished_s,
            "after_finish": after_finish,
        }
        if len(marks) >= 2:  # what each further parked run leaves in memory
            first = marks[-2]
            runs = last["runs"] - first["runs"]
            out["bytes_per_further_run"] = (
                (last["anon_delta_mb"] - first["anon_delta_mb"]) * 2**20 / runs
            )
        return out

    return anyio.run(main)


def _malloc_trim() -> bool:
    """Ask glibc to return the free memory it keeps (False where there is no glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _memory_asyncio(args: dict[str, Any]) -> dict[str, Any]:
    count = args["count"]

    async def main() -> dict[str, Any]:
        event = asyncio.Event()
        gc.collect()
        before = rss()
        tasks = [asyncio.create_task(event.wait()) for _ in range(count)]
        await asyncio.sleep(0)  # every task runs to its await and parks
        await asyncio.sleep(0)
        gc.collect()
        after = rss()
        event.set()
        await asyncio.gather(*tasks)
        return {
            "runs": count,
            "what": "asyncio.create_task(event.wait()), all parked",
            "rss_before_mb": before,
            "rss_after_mb": after,
            "rss_delta_mb": after["VmRSS"] - before["VmRSS"],
            "anon_delta_mb": after.get("RssAnon", 0) - before.get("RssAnon", 0),
        }

    return asyncio.run(main())


def _memory_anyio(args: dict[str, Any]) -> dict[str, Any]:
    count = args["count"]

    async def main() -> dict[str, Any]:
        event = anyio.Event()
        gc.collect()
        before = rss()
        after: dict[str, float] = {}
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(event.wait)
            await anyio.wait_all_tasks_blocked()
            gc.collect()
            after = rss()
            event.set()
        return {
            "runs": count,
            "what": "anyio task group, tasks awaiting anyio.Event",
            "rss_delta_mb": after["VmRSS"] - before["VmRSS"],
            "anon_delta_mb": after.get("RssAnon", 0) - before.get("RssAnon", 0),
        }

    return anyio.run(main)


def _memory(size: dict[str, Any]) -> dict[str, Any]:
    count = size["parked"]
    timeout = 300 + count / 500
    engine = run_child(
        "benchmarks.workflows",
        "memory-aion",
        {"count": count, "starters": 200, "checkpoints": size["parked_checkpoints"]},
        timeout,
    )
    # Extra row (a tuned configuration, not the headline): a small resident set.
    tuned_count = size["tuned_parked"]
    tuned = run_child(
        "benchmarks.workflows",
        "memory-aion",
        {
            "count": tuned_count,
            "starters": 200,
            "options": {"max_resident_runs": size["max_resident_runs"]},
            "wake": False,
        },
        timeout=120 + tuned_count / 500,
    )
    baseline_count = size["baseline_parked"]
    bare = run_child(
        "benchmarks.workflows", "memory-asyncio", {"count": baseline_count}, timeout=300
    )
    anyio_tasks = run_child(
        "benchmarks.workflows", "memory-anyio", {"count": baseline_count}, timeout=300
    )
    out: dict[str, Any] = {
        "runs": count,
        "aion": engine,
        "aion_tuned": tuned,
        "asyncio_tasks": bare,
        "anyio_tasks": anyio_tasks,
    }
    if "anon_delta_mb" in engine:
        out["aion_bytes_per_run"] = engine["anon_delta_mb"] * 2**20 / count
        if bare.get("anon_delta_mb"):
            per_task = bare["anon_delta_mb"] * 2**20 / baseline_count
            out["asyncio_bytes_per_task"] = per_task
            out["ratio_aion_vs_asyncio_per_run"] = out["aion_bytes_per_run"] / per_task
    return out


# --- signal latency ----------------------------------------------------------------------------


async def _latency(runs: int, resident: int) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="aion-bench-")
    try:
        async with aion.Engine(
            data, workflows=[signalled, parked], max_resident_runs=resident
        ) as engine:
            ids = [f"s{i:05d}" for i in range(runs)]
            for wid in ids:
                await engine.start(signalled, workflow_id=wid)
            # Parked runs started last fill the resident set, so every measured run is evicted.
            for i in range(resident):
                await engine.start(parked, workflow_id=f"filler{i}")
            # (Private, for the benchmark only: is a given run resident?)
            actors = engine._runtime.actors
            to_signal: list[float] = []
            to_record: list[float] = []
            evicted = 0
            for wid in ids:
                if ("default", wid) not in actors:
                    evicted += 1
                event = _STEP_EVENTS[wid] = anyio.Event()
                t0 = time.perf_counter()
                await engine.signal(wid, "go")
                to_record.append(time.perf_counter() - t0)
                with anyio.fail_after(10):
                    await event.wait()
                to_signal.append(_STEP_STARTED[wid] - t0)
            for wid in ids:
                await engine.handle(wid).result(timeout=10)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        _STEP_EVENTS.clear()
        _STEP_STARTED.clear()
    return {
        "runs": runs,
        "max_resident_runs": resident,
        "evicted_when_signalled": evicted,
        "durable": True,
        "signal_to_step_start_ms": {
            "p50": _pct(to_signal, 0.5) * 1000,
            "p99": _pct(to_signal, 0.99) * 1000,
            "max": max(to_signal) * 1000,
        },
        "signal_call_returns_ms": {
            "p50": _pct(to_record, 0.5) * 1000,
            "p99": _pct(to_record, 0.99) * 1000,
        },
    }


# --- the benchmark -----------------------------------------------------------------------------


def _host() -> dict[str, Any]:
    """What else the machine was doing: the figures are only as quiet as the machine."""
    out: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    out["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return out


def run(quick: bool) -> dict[str, Any]:
    size = QUICK if quick else FULL
    t0 = time.perf_counter()
    host_before = _host()
    throughput = _throughput(size, quick)
    replay = anyio.run(_replay_figures, size["replay_steps"], size["replay_repeats"])
    memory = _memory(size)
    latency = anyio.run(_latency, size["latency_runs"], size["latency_resident"])
    figures: dict[str, Any] = {
        "quick": quick,
        "host": {**host_before, "load_average_after": _host().get("load_average")},
        "throughput": throughput,
        "replay": replay,
        "memory": memory,
        "signal_latency": latency,
    }
    figures["targets"] = _targets(figures, quick)
    figures["elapsed_s"] = time.perf_counter() - t0
    return figures


def _targets(figures: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Each target with its value; ``met`` is None when not judged (quick sizes, no baseline,
    fewer parked runs than the target names)."""
    tp = figures["throughput"]
    conservative = tp.get("ratio_vs_dbos_best_run") or {}
    at_50 = tp["aion"].get("50", {})
    at_1 = tp["aion"].get("1", {})
    memory = figures["memory"]
    parked_mb = memory["aion"].get("anon_delta_mb")
    if memory["runs"] < 1_000_000:
        parked_mb = None
    checks: dict[str, tuple[float, Any, bool]] = {
        "throughput_vs_dbos_at_50": (
            TARGETS["throughput_vs_dbos_at_50"],
            conservative.get("50"),
            True,
        ),
        "throughput_at_50_per_s": (
            TARGETS["throughput_at_50_per_s"],
            at_50.get("workflows_per_s"),
            True,
        ),
        "sync_step_vs_dbos_at_50": (
            TARGETS["sync_step_vs_dbos_at_50"],
            conservative.get("50_sync_step"),
            True,
        ),
        "latency_p50_ms": (TARGETS["latency_p50_ms"], at_1.get("latency_p50_ms"), False),
        "replay_events_per_s": (
            TARGETS["replay_events_per_s"],
            figures["replay"]["driver_events_per_s"],
            True,
        ),
        "parked_1m_anon_mb": (TARGETS["parked_1m_anon_mb"], parked_mb, False),
    }
    out: dict[str, Any] = {}
    for name, (target, value, at_least) in checks.items():
        met: bool | None = None
        if value is not None and not quick:
            met = value >= target if at_least else value <= target
        out[name] = {"target": target, "value": value, "met": met}
        if quick:
            out[name]["note"] = "quick sizes: not judged"
    dbos_best = tp["dbos"].get("best_run_workflows_per_s")
    out["throughput_vs_dbos_at_50"].update(
        {
            "dbos_best_run_workflows_per_s": dbos_best,
            "ratio_vs_dbos_median": (tp.get("ratio_vs_dbos") or {}).get("50"),
            "ratio_vs_quiet_reference_190_per_s": (at_50.get("workflows_per_s") or 0.0)
            / DBOS_QUIET_REFERENCE[1],
            "baseline_disturbed": dbos_best is not None and dbos_best < DBOS_QUIET_REFERENCE[0],
        }
    )
    floor = tp.get("latency_floor", {}).get("p50_ms")
    out["latency_p50_ms"]["floor_p50_ms"] = floor
    if floor and at_1.get("latency_p50_ms"):
        out["latency_p50_ms"]["above_floor_ms"] = at_1["latency_p50_ms"] - floor
    return out


def print_report(figures: dict[str, Any]) -> None:
    tp = figures["throughput"]
    print(f"throughput (durable, one-step workflows; median of {tp['repeats']} runs)")
    for key, f in tp["aion"].items():
        if "workflows_per_s" not in f:
            print(f"  aion {key}: {f}")
            continue
        ratio = (tp.get("ratio_vs_dbos") or {}).get(key)
        strict = (tp.get("ratio_vs_dbos_best_run") or {}).get(key)
        extra = f"  ({ratio:.1f}x DBOS median, {strict:.1f}x its best run)" if ratio else ""
        kind = "async step" if f["step"] == "async" else "sync step (thread)"
        label = f"{f['concurrency']:>4} in flight, {kind}"
        print(
            f"  aion, {label:<32} {f['workflows_per_s']:7.0f}/s  "
            f"CPU {f['cpu_ms_per_workflow']:.2f} ms/wf  "
            f"p50 {f['latency_p50_ms']:.2f} ms  p99 {f['latency_p99_ms']:.2f} ms{extra}"
        )
    dbos = tp["dbos"]
    if "modes" in dbos:
        for m in dbos["modes"].values():
            print(f"  DBOS {dbos['version']}, {m['mode']}: {m['workflows_per_s']:.0f}/s")
    else:
        print(f"  DBOS: {dbos}")
    rp = figures["replay"]
    print(
        f"replay: {rp['events']} events, driver {rp['driver_events_per_s']:,.0f} events/s "
        f"(best {rp['driver_events_per_s_best']:,.0f}; per CPU-second "
        f"{rp['driver_events_per_cpu_s']:,.0f}); from LMDB "
        f"{rp['activation_events_per_s']:,.0f} events/s; aion.testing.replay: "
        f"{rp['testing_replay']}"
    )
    mem = figures["memory"]
    aion_mem, tuned = mem["aion"], mem["aion_tuned"]
    print(
        f"memory: {mem['runs']:,} parked runs, default settings, 200 starters: anonymous RSS "
        f"+{aion_mem.get('anon_delta_mb', '?')} MB (peak +{aion_mem.get('anon_peak_delta_mb')}, "
        f"{aion_mem.get('bytes_per_further_run')} bytes per further run; after all woke and "
        f"finished: {aion_mem.get('after_finish')}); "
        f"extra row {tuned.get('engine_options')}: +{tuned.get('anon_delta_mb', '?')} MB for "
        f"{tuned.get('runs')} runs; asyncio tasks {mem.get('asyncio_bytes_per_task', '?')} "
        "bytes each"
    )
    floor = tp.get("latency_floor", {})
    print(
        f"latency floor (two fsync'd LMDB commits): p50 {floor.get('p50_ms', float('nan')):.2f} "
        f"ms, p99 {floor.get('p99_ms', float('nan')):.2f} ms"
    )
    lat = figures["signal_latency"]["signal_to_step_start_ms"]
    print(f"signal -> next step (evicted run): p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms")
    for name, t in figures["targets"].items():
        print(f"target {name}: {t}")


_MODES = {
    "aion-throughput": _aion_throughput,
    "dbos": _dbos_baseline,
    "lmdb-floor": _lmdb_floor,
    "memory-aion": _memory_aion,
    "memory-asyncio": _memory_asyncio,
    "memory-anyio": _memory_anyio,
}


def _main(argv: list[str]) -> int:
    return child_main(_MODES, argv)


if __name__ == "__main__":
    code = _main(sys.argv[1:])
    os._exit(code)  # do not wait for third-party background threads (DBOS)
