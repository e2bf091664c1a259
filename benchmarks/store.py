"""Store benchmarks: durable group-commit appends and history reads, each against a baseline.

Each figure comes with a baseline measured in the same run, on the same filesystem:

* **durable appends** -- appends per second through ``LmdbStore(durable=True)`` with 1, 100 and
  1000 concurrent requesters. Each requester is one long-lived task looping
  ``store.append(its own workflow id, [one small event], head)`` for a fixed time; appends that
  complete inside the measured window count (a warm-up before it is discarded). The group-commit
  writer shares one transaction and one fsync among every request waiting at that moment.
  Baseline: raw py-lmdb, ``sync=True``, one put per write transaction (one fsync per append),
  in a loop, in a directory beside the store's, run right before each store run; the ratio is
  taken within each pair (the median of the pairs is reported), since both drift with the
  disk's other load. Target: at 1000 requesters, >= 20x the baseline.
  Reference beside it: a minimal group commit with no aion code (a raw py-lmdb writer thread
  and bare asyncio futures), to show how much of the gap is the store and how much is Python.
* **history read** -- ``store.read_history`` of a 10,000-event history (steps scheduled, started,
  completed; ~40-byte events), events per second, median of several repetitions. Ceiling beside
  it, alternating with it: a raw py-lmdb cursor scan of the same table (a copy of the store's
  file) plus a msgspec decode of each value, with no checks. Target: >= 1,000,000 events/s.

``python -m benchmarks store [--json] [--quick]``; ``--quick`` uses tiny sizes (a smoke test).
Set ``AION_BENCH_DIR`` to measure on another filesystem (default: the system temp directory).
"""

from __future__ import annotations

import asyncio
import gc
import os
import queue
import shutil
import struct
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import lmdb
import msgspec

from aion import events as ev
from aion._codec import encode_event
from aion.store import LmdbStore
from benchmarks._common import median, scratch

FULL: dict[str, Any] = {
    "concurrency": (1, 100, 1000),
    "duration": 2.0,  # measured window per repetition, seconds
    "warmup": 0.5,  # discarded before the window
    "repeats": 3,
    "history_events": 10_000,
    "read_repeats": 15,
}
QUICK: dict[str, Any] = {
    "concurrency": (1, 100, 1000),
    "duration": 0.1,
    "warmup": 0.02,
    "repeats": 1,
    "history_events": 300,
    "read_repeats": 2,
}
TARGETS = {
    "appends_ratio_at_1000": 20.0,  # durable appends at 1000 requesters vs one fsync per append
    "read_events_per_s": 1_000_000.0,
}

AT = datetime(2026, 1, 1, tzinfo=UTC)
SMALL_PAYLOAD = b"\x81\xa2ok\xc3"  # msgpack {"ok": True}
_BE64 = struct.Struct(">Q").pack


def small_event(seq: int) -> ev.SignalReceived:
    """The event each append records: 37 bytes encoded."""
    return ev.SignalReceived(seq=seq, at=AT, name="tick", payload=SMALL_PAYLOAD)


# --- where and how --------------------------------------------------------------------------------


def _filesystem(path: Path) -> str:
    """The filesystem type and device holding ``path`` (from /proc/mounts, where there is one)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best = ("", "unknown", "unknown")
    resolved = str(path.resolve())
    for line in mounts:
        device, point, fstype = line.split()[:3]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype, device)
    return f"{best[1]} on {best[2]} (mounted at {best[0]})"


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- durable appends ------------------------------------------------------------------------------


def _raw_fsync_puts(path: Path, _requesters: int, warmup: float, duration: float) -> dict[str, Any]:
    """Baseline: one LMDB write transaction (one fsync) per put, as fast as one thread can."""
    env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True)
    value = encode_event(small_event(1))
    try:
        seq = 0
        start = time.perf_counter()
        window_start, window_end = start + warmup, start + warmup + duration
        counted = 0
        now = start
        while now < window_end:
            seq += 1
            with env.begin(write=True) as txn:
                txn.put(_BE64(seq), value)
            now = time.perf_counter()
            if now >= window_start and now <= window_end:
                counted += 1
        return {"per_s": counted / duration, "count": counted}
    finally:
        env.close()


async def _store_appends(
    path: Path, requesters: int, warmup: float, duration: float
) -> dict[str, Any]:
    """``requesters`` long-lived tasks, each looping appends on its own workflow."""
    store = LmdbStore(path, durable=True)
    latencies: list[float] = []
    counted = 0
    clock = time.perf_counter
    start = clock()
    window_start, window_end = start + warmup, start + warmup + duration
    txn_ids: list[int] = []

    async def requester(i: int) -> None:
        nonlocal counted
        workflow_id = f"wf-{i}"
        head = 0
        append = store.append
        while True:
            began = clock()
            if began >= window_end:
                return
            head = await append(workflow_id, [small_event(head + 1)], head)
            done = clock()
            if began >= window_start and done <= window_end:
                counted += 1
                latencies.append(done - began)

    async def mark_window() -> None:
        await anyio.sleep(max(0.0, window_start - clock()))
        txn_ids.append(_last_txn_id(store))
        await anyio.sleep(max(0.0, window_end - clock()))
        txn_ids.append(_last_txn_id(store))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(mark_window)
            for i in range(requesters):
                tg.start_soon(requester, i)
    finally:
        await store.aclose()
    commits = txn_ids[1] - txn_ids[0] if len(txn_ids) == 2 else 0
    return {
        "per_s": counted / duration,
        "count": counted,
        "latencies": latencies,
        "appends_per_commit": counted / commits if commits > 0 else None,
    }


async def _minimal_group_commit(
    path: Path, requesters: int, warmup: float, duration: float
) -> dict[str, Any]:
    """Reference: the least group commit can do in Python, with no aion code at all.

    The same requesters and events; a writer thread takes every request waiting, checks each
    head and puts the event and the new head in one fsync'd transaction, then resolves bare
    asyncio futures with one callback per batch. No validation, projection, shielding or
    error isolation: what is left is py-lmdb, the fsync, the GIL and the event loop.
    """
    env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True, max_dbs=4)
    events_db, heads_db = env.open_db(b"events"), env.open_db(b"heads")
    loop = asyncio.get_running_loop()
    requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def resolve(futures: list[asyncio.Future[int]], heads: list[int]) -> None:
        for future, head in zip(futures, heads, strict=True):
            if head < 0:
                future.set_exception(RuntimeError("sequence conflict in the reference writer"))
            else:
                future.set_result(head)

    def writer() -> None:
        while (item := requests.get()) is not None:
            batch = [item]
            while True:
                try:
                    batch.append(requests.get_nowait())
                except queue.Empty:
                    break
            heads = []
            with env.begin(write=True) as txn:
                for key, expected, value, _ in batch:
                    stored = txn.get(key, db=heads_db)
                    if (0 if stored is None else int.from_bytes(stored)) != expected:
                        heads.append(-1)
                        continue
                    txn.put(key + b"\x00" + _BE64(expected + 1), value, db=events_db)
                    txn.put(key, _BE64(expected + 1), db=heads_db)
                    heads.append(expected + 1)
            loop.call_soon_threadsafe(resolve, [r[3] for r in batch], heads)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    counted = 0
    clock = time.perf_counter
    start = clock()
    window_start, window_end = start + warmup, start + warmup + duration

    async def requester(i: int) -> None:
        nonlocal counted
        key = f"default\x00wf-{i}".encode()
        head = 0
        while True:
            began = clock()
            if began >= window_end:
                return
            future: asyncio.Future[int] = loop.create_future()
            requests.put((key, head, encode_event(small_event(head + 1)), future))
            head = await future
            if began >= window_start and clock() <= window_end:
                counted += 1

    try:
        async with anyio.create_task_group() as tg:
            for i in range(requesters):
                tg.start_soon(requester, i)
    finally:
        requests.put(None)
        thread.join()
        env.close()
    return {"per_s": counted / duration}


def _last_txn_id(store: LmdbStore) -> int:
    """The id of LMDB's last committed write transaction (diagnostics: ~appends per commit)."""
    return int(store._env.info()["last_txnid"])


def _appends(size: dict[str, Any]) -> dict[str, Any]:
    warmup, duration = size["warmup"], size["duration"]
    baseline_runs: dict[int, list[float]] = {n: [] for n in size["concurrency"]}
    level_runs: dict[int, list[dict[str, Any]]] = {n: [] for n in size["concurrency"]}
    minimal_runs: dict[int, list[float]] = {n: [] for n in size["concurrency"]}
    with scratch("appends") as root:
        filesystem = _filesystem(root)
        # Each store run sits between its own baseline run and its reference run, and a ratio
        # is taken within that triple: other load on the machine (and on the disk: the
        # baseline is all fsync) drifts slowly, so it hits all three alike.
        for rep in range(size["repeats"]):
            for n in size["concurrency"]:
                for name, measure in (
                    ("raw", _raw_fsync_puts),
                    ("store", _store_run),
                    ("minimal", _minimal_run),
                ):
                    gc.collect()
                    data = root / f"{name}-{n}-{rep}"
                    result = measure(data, n, warmup, duration)
                    shutil.rmtree(data)
                    if name == "raw":
                        baseline_runs[n].append(result["per_s"])
                    elif name == "store":
                        level_runs[n].append(result)
                    else:
                        minimal_runs[n].append(result["per_s"])
    levels: list[dict[str, Any]] = []
    for n, runs in level_runs.items():
        per_s = median([r["per_s"] for r in runs])
        ratios = [r["per_s"] / base for r, base in zip(runs, baseline_runs[n], strict=True) if base]
        latencies = [x for r in runs for x in r["latencies"]]
        batches = [r["appends_per_commit"] for r in runs if r["appends_per_commit"]]
        minimal = median(minimal_runs[n])
        levels.append(
            {
                "requesters": n,
                "appends_per_s": per_s,
                "runs": [r["per_s"] for r in runs],
                "baseline_per_s": median(baseline_runs[n]),
                "baseline_runs": baseline_runs[n],
                "ratio_to_baseline": median(ratios) if ratios else None,
                "ratio_runs": ratios,
                "latency_ms_p50": _percentile(latencies, 0.50) * 1e3,
                "latency_ms_p99": _percentile(latencies, 0.99) * 1e3,
                "appends_per_commit": median(batches) if batches else None,
                "minimal_group_commit_per_s": minimal,
                "minimal_runs": minimal_runs[n],
                "fraction_of_minimal": per_s / minimal if minimal else None,
            }
        )
    top = max(levels, key=lambda level: int(level["requesters"]))
    ratio = top["ratio_to_baseline"] or 0.0
    all_baselines = [x for runs in baseline_runs.values() for x in runs]
    return {
        "filesystem": filesystem,
        "duration_s": duration,
        "repeats": size["repeats"],
        "baseline": {
            "name": "raw py-lmdb, sync=True, one put per write transaction",
            "appends_per_s": median(all_baselines),
            "runs": all_baselines,
        },
        "reference": (
            "minimal group commit: raw py-lmdb writer thread + bare asyncio futures, no aion "
            "(the same requesters and events); what the architecture leaves on this machine"
        ),
        "levels": levels,
        "target": {
            "requesters": top["requesters"],
            "min_ratio": TARGETS["appends_ratio_at_1000"],
            "ratio": ratio,
            "met": ratio >= TARGETS["appends_ratio_at_1000"],
        },
    }


def _store_run(path: Path, requesters: int, warmup: float, duration: float) -> dict[str, Any]:
    return anyio.run(_store_appends, path, requesters, warmup, duration)


def _minimal_run(path: Path, requesters: int, warmup: float, duration: float) -> dict[str, Any]:
    return anyio.run(_minimal_group_commit, path, requesters, warmup, duration)


# --- history reads --------------------------------------------------------------------------------


def history_events(count: int) -> list[ev.Event]:
    """A workflow start, then steps (scheduled, started, completed) up to ``count`` events."""
    events: list[ev.Event] = [
        ev.WorkflowStarted(
            seq=1,
            at=AT,
            workflow_id="big",
            run_id="run-1",
            workflow_type="bench",
            input=b"\x90",
            tenant="default",
        )
    ]
    step = 0
    while len(events) < count:
        seq = len(events) + 1
        kind = (seq - 2) % 3
        if kind == 0:
            step += 1
            events.append(ev.StepScheduled(seq=seq, at=AT, step_seq=step, name="charge_card"))
        elif kind == 1:
            events.append(ev.StepStarted(seq=seq, at=AT, step_seq=step, attempt=1))
        else:
            result = msgspec.msgpack.encode({"id": f"ch_{step:08d}", "amount": step})
            events.append(ev.StepCompleted(seq=seq, at=AT, step_seq=step, attempt=1, result=result))
    return events


def _time_reads(read: Callable[[], list[Any]], count: int, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        gc.collect()
        began = time.perf_counter()
        got = read()
        elapsed = time.perf_counter() - began
        assert len(got) == count, (len(got), count)
        rates.append(count / elapsed)
    return rates


def _reads(size: dict[str, Any]) -> dict[str, Any]:
    count, repeats = size["history_events"], size["read_repeats"]
    events = history_events(count)
    with scratch("reads") as root:
        data, copy = root / "data", root / "copy"

        async def write() -> None:
            async with LmdbStore(data, durable=False) as store:
                for first in range(0, count, 1000):
                    await store.append("big", events[first : first + 1000], first)

        anyio.run(write)
        # The ceiling reads a byte-for-byte copy of the store's file (LMDB allows one handle
        # per file per process), so that store and ceiling runs can alternate: drift in the
        # machine's load then hits both alike.
        shutil.copytree(data, copy)
        env = lmdb.open(str(copy), readonly=True, lock=False, max_dbs=64)
        try:
            table = env.open_db(b"events", create=False)
            decode = msgspec.msgpack.Decoder(ev.AnyEvent).decode

            def raw_scan_decode() -> list[Any]:
                with env.begin(db=table) as txn:
                    cursor = txn.cursor()
                    cursor.first()
                    return [decode(v) for v in cursor.iternext(keys=False, values=True)]

            def raw_scan_only() -> list[Any]:
                with env.begin(db=table) as txn:
                    cursor = txn.cursor()
                    cursor.first()
                    return list(cursor.iternext(keys=False, values=True))

            async def alternate() -> tuple[list[float], list[float], list[float]]:
                store_rates: list[float] = []
                raw_rates: list[float] = []
                scan_rates: list[float] = []
                async with LmdbStore(data, durable=False) as store:
                    assert await store.read_history("big") == events, "another history came back"
                    assert raw_scan_decode() == events
                    for _ in range(repeats):
                        gc.collect()
                        # One awaited call, as an actor activating makes it.
                        began = time.perf_counter()
                        history = await store.read_history("big")
                        store_rates.append(len(history) / (time.perf_counter() - began))
                        raw_rates += _time_reads(raw_scan_decode, count, 1)
                        scan_rates += _time_reads(raw_scan_only, count, 1)
                return store_rates, raw_rates, scan_rates

            store_rates, raw_rates, scan_rates = anyio.run(alternate)
        finally:
            env.close()
    store_per_s, raw_per_s = median(store_rates), median(raw_rates)
    return {
        "events": count,
        "event_bytes_mean": sum(len(encode_event(e)) for e in events) / count,
        "repeats": repeats,
        "store_events_per_s": store_per_s,
        "store_runs": store_rates,
        "ceiling": {
            "name": "raw py-lmdb cursor scan + msgspec decode, same table (a copy of the file)",
            "events_per_s": raw_per_s,
            "runs": raw_rates,
        },
        "scan_only_events_per_s": median(scan_rates),
        "fraction_of_ceiling": store_per_s / raw_per_s if raw_per_s else None,
        "target": {
            "min_events_per_s": TARGETS["read_events_per_s"],
            "met": store_per_s >= TARGETS["read_events_per_s"],
        },
    }


# --- runner ---------------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    """Every figure of this benchmark, as plain data (``--json`` prints it)."""
    size = QUICK if quick else FULL
    load_before = os.getloadavg()
    appends = _appends(size)
    reads = _reads(size)
    return {
        "quick": quick,
        # The 1-minute load average before and after: other processes on the machine (tests,
        # builds) skew every figure; the baselines are measured beside them to share the skew.
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "durable_appends": appends,
        "history_read": reads,
    }


def print_report(figures: dict[str, Any]) -> None:
    appends, reads = figures["durable_appends"], figures["history_read"]
    base = appends["baseline"]["appends_per_s"]
    print(f"durable appends ({appends['filesystem']}; medians of {appends['repeats']} runs)")
    print(f"  baseline: {appends['baseline']['name']}: {base:,.0f}/s (median of all runs)")
    print(f"  load average before/after: {figures['load_average']}")
    print(
        "  requesters   appends/s   baseline/s   x baseline   p50 ms   p99 ms   appends/commit"
        "   minimal group commit/s"
    )
    for level in appends["levels"]:
        batch = level["appends_per_commit"]
        print(
            f"  {level['requesters']:>10}  {level['appends_per_s']:>10,.0f}  "
            f"{level['baseline_per_s']:>11,.0f}  "
            f"{level['ratio_to_baseline'] or 0:>10.1f}x  {level['latency_ms_p50']:>7.2f}  "
            f"{level['latency_ms_p99']:>7.2f}   {'-' if batch is None else f'{batch:>14,.1f}'}"
            f"   {level['minimal_group_commit_per_s']:>14,.0f}"
        )
    target = appends["target"]
    print(
        f"  target: >= {target['min_ratio']:.0f}x at {target['requesters']} requesters: "
        f"{target['ratio']:.1f}x, {'met' if target['met'] else 'NOT MET'}"
    )
    print(f"history read ({reads['events']:,} events; medians of {reads['repeats']} runs)")
    print(f"  store.read_history:        {reads['store_events_per_s']:>12,.0f} events/s")
    print(f"  ceiling (scan + decode):   {reads['ceiling']['events_per_s']:>12,.0f} events/s")
    print(f"  scan only, no decode:      {reads['scan_only_events_per_s']:>12,.0f} events/s")
    print(
        f"  target: >= {reads['target']['min_events_per_s']:,.0f} events/s: "
        f"{'met' if reads['target']['met'] else 'NOT MET'} "
        f"({reads['fraction_of_ceiling']:.0%} of the ceiling)"
    )
