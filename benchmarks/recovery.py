"""Recovery: from opening a store of 100,000 open runs to accepting new work, and to firing
every overdue timer.

The data directory holds ``runs`` non-terminal runs (100,000; 2,000 with ``--quick``): half are
parked on a durable timer that came due about an hour before the engine opens
(``await ctx.sleep(60)``, then return), half wait on a signal (``await ctx.wait_signal("go")``).
It is written once, straight through the store API in large ``durable=False`` commits. The rows
are cloned from runs the real engine records on a manual clock first (the ``WorkflowStarted``,
the ``TimerScheduled`` and its row in the due-time index, the projection row with its
``waiting_on``), and the clone is checked to reproduce a second engine-recorded run exactly, so
replay matches what the workflows do now. Every repeat then runs on a fresh copy of that
directory, in a fresh subprocess (so RSS figures start clean; the OS page cache is warm).

Figures, medians of the repeats:

- **engine** (``aion.Engine(path)``, ``durable=True``): ``__aenter__`` (open the store, the
  recovery sweep, the timer wheel's first load of the overdue timers, start the workers), with
  the sweep's share; the first ``start()`` of a trivial one-step workflow after ``__aenter__``
  returned (the target: ``__aenter__`` plus that start under 2 s at 100,000 runs) and its
  result; the time until every timer-parked run has completed (its timer fired, the run
  replayed and finished, every commit done), timers fired per second, and RSS growth.
- **baseline** (a fresh subprocess on the same copy, before the engine's): opening the store,
  and a raw scan through the store API of every open run's projection row (``scan_active``) and
  of every due timer row (``due_timers``), pages of 1,000: what any recovery that looks at each
  open run and each overdue timer must read, the floor. Beside it, alternating with it, the
  recovery sweep alone as a dry run (``apply=False``; nothing to repair here, so it reads what
  the real sweep reads).

Afterwards each repeat checks that the sweep saw every run and timer and repaired nothing, that
every timer-parked run completed (with its own result, sampled) and that every signal-parked run
is still open and waiting.

Run: ``python -m benchmarks recovery [--json] [--quick]``. Set ``AION_BENCH_DIR`` to measure on
another filesystem (default: the system temp directory).
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec

import aion
from aion import events as ev
from aion._recovery import sweep
from aion._replay import definition_of
from aion.store import (
    Append,
    EventStore,
    LmdbStore,
    MemoryStore,
    Status,
    TimerRow,
    WorkflowRecord,
    Write,
)
from aion.testing import ManualClock
from benchmarks._child import child_main, run_child
from benchmarks._common import median, rss, scratch

FULL: dict[str, Any] = {"runs": 100_000, "repeats": 3, "scan_repeats": 3, "batch": 5_000}
QUICK: dict[str, Any] = {"runs": 2_000, "repeats": 1, "scan_repeats": 2, "batch": 500}
TARGETS = {"accept_new_work_s": 2.0}  # __aenter__ + the first start() at 100,000 runs

SLEEP_S = 60.0  # the timer-parked runs' sleep
OVERDUE_S = 3600.0  # their timers came due about this long before the engine opens
_PAGE = 1000
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


# --- workflows ---------------------------------------------------------------------------------


class _Progress:
    """Counts timer-parked runs that got past their sleep; set once all of them have."""

    def __init__(self) -> None:
        self.goal = 0
        self.count = 0
        self.done: anyio.Event | None = None

    def tick(self) -> None:
        self.count += 1
        if self.count >= self.goal and self.done is not None:
            self.done.set()


_PROGRESS = _Progress()


@aion.workflow(name="bench-recovery-sleeper")
async def sleeper(ctx: aion.Context, i: int) -> int:
    await ctx.sleep(SLEEP_S)
    # A side effect in workflow code, on purpose: it runs once per run, right after the timer
    # fired (replay of the parked history stops at the sleep), and tells the benchmark when
    # every run has moved on.
    _PROGRESS.tick()
    return i


@aion.workflow(name="bench-recovery-waiter")
async def waiter(ctx: aion.Context, i: int) -> Any:
    return await ctx.wait_signal("go")


async def bump(x: int) -> int:
    return x + 1


@aion.workflow(name="bench-recovery-fresh")
async def fresh(ctx: aion.Context, x: int) -> int:
    return int(await ctx.step(bump, x))


WORKFLOWS = (sleeper, waiter, fresh)


# --- helpers -----------------------------------------------------------------------------------


def _rss_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def _data_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20


# --- building the store ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Parked:
    """What the engine records for one parked run: its history, projection row, timer rows."""

    events: tuple[ev.Event, ...]
    record: WorkflowRecord
    timers: tuple[TimerRow, ...]


def _stamp(when: datetime) -> str:
    # How the projection's waiting_on shows a timer's due time (to the second).
    return f"{when:%Y-%m-%d %H:%M:%S}"


def _clone(
    template: _Parked, *, workflow_id: str, run_id: str, at: datetime, input: bytes
) -> _Parked:
    """``template`` as another run: its ids, its input, every time shifted to start at ``at``."""
    shift = at - template.events[0].at
    replace = msgspec.structs.replace
    events: list[ev.Event] = []
    old_dues: list[datetime] = []
    for event in template.events:
        match event:
            case ev.WorkflowStarted():
                events.append(
                    replace(event, at=at, workflow_id=workflow_id, run_id=run_id, input=input)
                )
            case ev.TimerScheduled():
                old_dues.append(event.due)
                events.append(replace(event, at=event.at + shift, due=event.due + shift))
            case _:
                raise AssertionError(
                    f"the engine now records {type(event).__name__} for a parked run; teach "
                    "benchmarks/recovery.py to clone it"
                )
    waiting = []
    for item in template.record.waiting_on:
        text = item
        for due in old_dues:
            text = text.replace(_stamp(due), _stamp(due + shift))
        waiting.append(text)
    record = replace(
        template.record,
        workflow_id=workflow_id,
        run_id=run_id,
        created_at=template.record.created_at + shift,
        run_started_at=template.record.run_started_at + shift,
        waiting_on=tuple(waiting),
    )
    timers = tuple(
        replace(row, due=row.due + shift, workflow_id=workflow_id, run_id=run_id)
        for row in template.timers
    )
    return _Parked(tuple(events), record, timers)


async def _recorded(store: EventStore, workflow_id: str) -> _Parked:
    record = await store.get_workflow(workflow_id)
    assert record is not None
    timers = [t for t in await store.due_timers(_FAR_FUTURE) if t.workflow_id == workflow_id]
    return _Parked(tuple(await store.read_current_run(workflow_id)), record, tuple(timers))


async def _templates() -> dict[str, _Parked]:
    """One run of each kind recorded by the real engine; the clone checked against a second."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    clock = ManualClock(t0)
    store = MemoryStore()
    async with aion.Engine(store, workflows=WORKFLOWS, clock=clock) as engine:
        for i in (0, 1):
            await engine.start(sleeper, i, workflow_id=f"tpl-sleeper-{i}")
            await engine.start(waiter, i, workflow_id=f"tpl-waiter-{i}")
            await engine.wait_idle()
            clock.advance(1.234567)  # the second pair starts at another time, to the microsecond
        templates: dict[str, _Parked] = {}
        for kind, workflow in (("sleeper", sleeper), ("waiter", waiter)):
            first = await _recorded(store, f"tpl-{kind}-0")
            second = await _recorded(store, f"tpl-{kind}-1")
            clone = _clone(
                first,
                workflow_id=second.record.workflow_id,
                run_id=second.record.run_id,
                at=second.events[0].at,
                input=definition_of(workflow).encode_input([1], limit=engine.max_payload_bytes),
            )
            if clone != second:
                raise AssertionError(
                    f"cloning a recorded {kind} run does not reproduce what the engine records:"
                    f"\n  clone:    {clone}\n  recorded: {second}"
                )
            templates[kind] = first
    return templates


def _workflow_id(kind: str, i: int) -> str:
    return f"{kind}-{i:07d}"


async def _write_runs(path: Path, runs: int, batch: int, base: datetime) -> None:
    templates = await _templates()
    inputs = {
        kind: definition_of(workflow)
        for kind, workflow in (("sleeper", sleeper), ("waiter", waiter))
    }
    async with LmdbStore(path, durable=False) as store:
        for first in range(0, runs, batch):
            appends: list[Append] = []
            records: list[WorkflowRecord] = []
            timers: list[TimerRow] = []
            for n in range(first, min(first + batch, runs)):
                # Alternate the kinds, one run started every millisecond.
                kind, i = ("sleeper", n // 2) if n % 2 == 0 else ("waiter", n // 2)
                parked = _clone(
                    templates[kind],
                    workflow_id=_workflow_id(kind, i),
                    run_id=f"{n:032x}",
                    at=base + timedelta(milliseconds=n),
                    input=inputs[kind].encode_input([i], limit=1 << 20),
                )
                appends.append(Append(parked.record.workflow_id, parked.events, 0, "default"))
                records.append(parked.record)
                timers.extend(parked.timers)
            await store.commit(Write(appends=appends, workflows=records, timers_add=timers))


def _setup(path: Path, runs: int, batch: int) -> dict[str, Any]:
    # Every run started between OVERDUE_S + SLEEP_S and OVERDUE_S seconds (+ the spread) ago.
    spread = runs / 1000
    base = datetime.now(UTC) - timedelta(seconds=OVERDUE_S + SLEEP_S + spread)
    began = time.perf_counter()
    anyio.run(_write_runs, path, runs, batch, base)
    seconds = time.perf_counter() - began
    return {
        "seconds": seconds,
        "runs_per_s": runs / seconds,
        "batch": batch,
        "durable": False,
        "data_mb": _data_mb(path),
        "first_start": base.isoformat(),
        "cloned_from_engine_runs": True,  # _templates raised otherwise
    }


# --- baseline (in a subprocess) ----------------------------------------------------------------


async def _raw_scan(store: EventStore, now: datetime) -> tuple[int, int, float, float]:
    """Every open run's projection row, then every due timer row, through the store API."""
    began = time.perf_counter()
    runs = 0
    after: tuple[str, str] | None = None
    while True:
        rows = await store.scan_active(after=after, limit=_PAGE)
        runs += len(rows)
        if len(rows) < _PAGE:
            break
        after = (rows[-1].tenant, rows[-1].workflow_id)
    scanned = time.perf_counter()
    timers = 0
    last: TimerRow | None = None
    while True:
        due = await store.due_timers(now, limit=_PAGE, after=last)
        timers += len(due)
        if len(due) < _PAGE:
            break
        last = due[-1]
    return runs, timers, scanned - began, time.perf_counter() - scanned


def _baseline(args: dict[str, Any]) -> dict[str, Any]:
    gc.collect()
    began = time.perf_counter()
    store = LmdbStore(args["path"])
    open_s = time.perf_counter() - began

    async def main() -> dict[str, Any]:
        now = datetime.now(UTC)
        projection: list[float] = []
        timer_rows: list[float] = []
        sweeps: list[float] = []
        counts: set[tuple[int, int]] = set()
        report = None
        scan_cpu: list[float] = []
        sweep_cpu: list[float] = []
        for _ in range(args["repeats"]):
            gc.collect()
            cpu = time.process_time()
            runs, timers, runs_s, timers_s = await _raw_scan(store, now)
            scan_cpu.append(time.process_time() - cpu)
            counts.add((runs, timers))
            projection.append(runs_s)
            timer_rows.append(timers_s)
            gc.collect()
            cpu = time.process_time()
            t = time.perf_counter()
            report = await sweep(store, now=now, apply=False)
            sweeps.append(time.perf_counter() - t)
            sweep_cpu.append(time.process_time() - cpu)
        assert report is not None
        ((runs, timers),) = counts
        scans = [a + b for a, b in zip(projection, timer_rows, strict=True)]
        return {
            "open_s": open_s,
            "open_runs_scanned": runs,
            "due_timers_scanned": timers,
            "scan_s": median(scans),
            "scan_projection_s": median(projection),
            "scan_timers_s": median(timer_rows),
            "scan_runs": scans,
            "scan_cpu_s": median(scan_cpu),
            "sweep_dry_run_s": median(sweeps),
            "sweep_dry_run_cpu_s": median(sweep_cpu),
            "sweep_dry_run_runs": sweeps,
            "sweep_saw": [report.runs_scanned, report.timers_overdue, len(report.repairs)],
        }

    try:
        return anyio.run(main)
    finally:
        store.close()


# --- the engine (in a subprocess) --------------------------------------------------------------


async def _engine(args: dict[str, Any]) -> dict[str, Any]:
    path, runs = args["path"], args["runs"]
    sleepers, waiters = (runs + 1) // 2, runs // 2
    _PROGRESS.goal, _PROGRESS.count, _PROGRESS.done = sleepers, 0, anyio.Event()
    gc.collect()
    before = rss()
    cpu_began = time.process_time()
    began = time.perf_counter()
    async with aion.Engine(path, workflows=WORKFLOWS) as engine:
        entered = time.perf_counter()
        cpu_entered = time.process_time()
        at_entered = rss()
        handle = await engine.start(fresh, 41, workflow_id="fresh-after-recovery")
        started = time.perf_counter()
        result = await handle.result(timeout=args["timeout"])
        resulted = time.perf_counter()
        done = _PROGRESS.done
        with anyio.fail_after(args["timeout"]):
            await done.wait()
            await engine.wait_idle()  # the last runs' commits
        fired = time.perf_counter()
        cpu_fired = time.process_time()
        gc.collect()
        at_fired = rss()
        report = engine.recovery
        checks = await _check(engine, sleepers, waiters, result)
    return {
        "aenter_s": entered - began,
        # CPU time of the process (every thread) over the same spans: what the wall figure
        # would be on an idle machine, as long as nothing waits on the disk.
        "aenter_cpu_s": cpu_entered - cpu_began,
        "sweep_s": report.seconds,
        "aenter_other_s": entered - began - report.seconds,
        "first_start_s": started - entered,
        "accept_s": started - began,
        "first_result_s": resulted - entered,
        "fire_all_s": fired - entered,
        "fire_all_from_open_s": fired - began,
        "fire_all_cpu_s": cpu_fired - cpu_entered,
        "timers_per_s": sleepers / (fired - entered),
        "rss_before_mb": before,
        "rss_growth_at_aenter_mb": _rss_delta(at_entered, before),
        "rss_growth_after_fired_mb": _rss_delta(at_fired, before),
        "sweep": {
            "runs_scanned": report.runs_scanned,
            "runs_reactivated": report.runs_reactivated,
            "timers_overdue": report.timers_overdue,
            "repairs": len(report.repairs),
        },
        "checks": checks,
    }


async def _check(
    engine: aion.Engine, sleepers: int, waiters: int, result: int
) -> dict[str, bool | int]:
    """Did every timer-parked run finish, and is every signal-parked one still waiting?"""
    store = engine.store
    report = engine.recovery
    completed = 0
    for i in range(sleepers):
        record = await store.get_workflow(_workflow_id("sleeper", i))
        completed += record is not None and record.status is Status.COMPLETED
    samples = sorted({0, sleepers // 2, sleepers - 1})
    results = [await engine.handle(_workflow_id("sleeper", i)).result(timeout=5) for i in samples]
    still_open = 0
    waiting = True
    after: tuple[str, str] | None = None
    while True:
        rows = await store.scan_active(after=after, limit=_PAGE)
        for row in rows:
            still_open += 1
            waiting &= row.workflow_type == "bench-recovery-waiter" and row.waiting_on == (
                "signal:go",
            )
        if len(rows) < _PAGE:
            break
        after = (rows[-1].tenant, rows[-1].workflow_id)
    return {
        "sweep_saw_every_run": report.runs_scanned == sleepers + waiters,
        "sweep_saw_every_overdue_timer": report.timers_overdue == sleepers,
        "nothing_to_repair": not report.repairs,
        "sleepers_completed": completed,
        "every_sleeper_completed": completed == sleepers,
        "sampled_results_right": results == samples,
        "waiters_still_open": still_open,
        "every_waiter_waiting": waiting and still_open == waiters,
        "fresh_result_right": result == 42,
        "ok": (
            report.runs_scanned == sleepers + waiters
            and report.timers_overdue == sleepers
            and not report.repairs
            and completed == sleepers
            and results == samples
            and waiting
            and still_open == waiters
            and result == 42
        ),
    }


def _engine_mode(args: dict[str, Any]) -> dict[str, Any]:
    return anyio.run(_engine, args)


# --- runner ------------------------------------------------------------------------------------

_ENGINE_MEDIANS = (
    "aenter_s",
    "aenter_cpu_s",
    "sweep_s",
    "aenter_other_s",
    "first_start_s",
    "accept_s",
    "first_result_s",
    "fire_all_s",
    "fire_all_from_open_s",
    "fire_all_cpu_s",
    "timers_per_s",
)
_BASELINE_MEDIANS = (
    "open_s",
    "scan_s",
    "scan_projection_s",
    "scan_timers_s",
    "scan_cpu_s",
    "sweep_dry_run_s",
    "sweep_dry_run_cpu_s",
)


def _medians(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, float]:
    good = [r for r in rows if "error" not in r]
    return {name: median([r[name] for r in good]) for name in names}


def run(quick: bool) -> dict[str, Any]:
    """Build the store once, then measure baseline and engine on fresh copies of it."""
    size = QUICK if quick else FULL
    runs = size["runs"]
    load_before = _load()
    timeout = 120 + runs / 100
    baselines: list[dict[str, Any]] = []
    engines: list[dict[str, Any]] = []
    with scratch("recovery") as root:
        source = root / "source"
        setup = _setup(source, runs, size["batch"])
        for r in range(size["repeats"]):
            copy = root / f"copy-{r}"
            shutil.copytree(source, copy)
            baselines.append(
                run_child(
                    "benchmarks.recovery",
                    "baseline",
                    {"path": str(copy), "repeats": size["scan_repeats"]},
                    timeout,
                )
            )
            engines.append(
                run_child(
                    "benchmarks.recovery",
                    "engine",
                    {"path": str(copy), "runs": runs, "timeout": timeout},
                    timeout,
                )
            )
            shutil.rmtree(copy, ignore_errors=True)
    engine = _medians(engines, _ENGINE_MEDIANS)
    baseline = _medians(baselines, _BASELINE_MEDIANS)
    floor = baseline["open_s"] + baseline["scan_s"]
    good = [e for e in engines if "error" not in e]
    rss = {
        when: {
            name: median([e[when].get(name, 0.0) for e in good])
            for name in ("VmRSS", "RssAnon", "RssFile")
        }
        for when in ("rss_growth_at_aenter_mb", "rss_growth_after_fired_mb")
    }
    accept = engine["accept_s"]
    return {
        "quick": quick,
        # The 1-minute load average before and after: other work on the machine skews every
        # figure; the baseline runs beside the engine to share the skew.
        "load_average": [load_before, _load()],
        "runs": runs,
        "timer_parked": (runs + 1) // 2,
        "signal_parked": runs // 2,
        "repeats": size["repeats"],
        "setup": setup,
        "engine": {**engine, **rss, "runs": engines},
        "baseline": {
            "name": "store open + scan_active and due_timers through the store API, pages of 1000",
            **baseline,
            "floor_s": floor,
            "runs": baselines,
        },
        "ratios": {
            "aenter_vs_floor": engine["aenter_s"] / floor if floor else None,
            "aenter_cpu_vs_scan_cpu": (
                engine["aenter_cpu_s"] / baseline["scan_cpu_s"] if baseline["scan_cpu_s"] else None
            ),
            "sweep_vs_scan": engine["sweep_s"] / baseline["scan_s"] if baseline["scan_s"] else None,
            "sweep_dry_run_vs_scan": (
                baseline["sweep_dry_run_s"] / baseline["scan_s"] if baseline["scan_s"] else None
            ),
        },
        "checks_ok": bool(good)
        and len(good) == len(engines)
        and all(e["checks"]["ok"] for e in good),
        "target": {
            "accept_new_work_s": TARGETS["accept_new_work_s"],
            "value": accept,
            "met": None if quick else accept < TARGETS["accept_new_work_s"],
        },
    }


def print_report(figures: dict[str, Any]) -> None:
    """Print the figures as a short table."""
    e, b, s = figures["engine"], figures["baseline"], figures["setup"]
    print(
        f"recovery of {figures['runs']:,} open runs ({figures['timer_parked']:,} on overdue "
        f"timers, {figures['signal_parked']:,} on a signal); medians of {figures['repeats']}; "
        f"load average before/after {figures['load_average']}"
    )
    print(f"  setup: {s['seconds']:.2f} s ({s['runs_per_s']:,.0f} runs/s, {s['data_mb']:.1f} MB)")
    print(
        f"  __aenter__:                {e['aenter_s']:8.3f} s (CPU {e['aenter_cpu_s']:.3f} s; "
        f"of it the sweep {e['sweep_s']:.3f} s)"
    )
    print(
        f"  first start() after it:    {e['first_start_s']:8.3f} s "
        f"(its result {e['first_result_s']:.3f} s)"
    )
    print(f"  accepting new work:        {e['accept_s']:8.3f} s")
    print(
        f"  every overdue timer fired: {e['fire_all_s']:8.3f} s after __aenter__ "
        f"(CPU {e['fire_all_cpu_s']:.3f} s; {e['timers_per_s']:,.0f} timers/s)"
    )
    growth, after = e["rss_growth_at_aenter_mb"], e["rss_growth_after_fired_mb"]
    print(
        f"  RSS growth: {growth['VmRSS']:.1f} MB at __aenter__ (anon {growth['RssAnon']:.1f}), "
        f"{after['VmRSS']:.1f} MB after firing (anon {after['RssAnon']:.1f})"
    )
    print(
        f"  baseline: open {b['open_s']:.3f} s + scan {b['scan_s']:.3f} s "
        f"(projection {b['scan_projection_s']:.3f}, timers {b['scan_timers_s']:.3f}; "
        f"CPU {b['scan_cpu_s']:.3f}); dry-run sweep {b['sweep_dry_run_s']:.3f} s "
        f"(CPU {b['sweep_dry_run_cpu_s']:.3f})"
    )
    r = figures["ratios"]
    print(
        f"  ratios: __aenter__ / floor {r['aenter_vs_floor'] or 0:.1f}x (CPU "
        f"{r['aenter_cpu_vs_scan_cpu'] or 0:.1f}x), sweep / scan {r['sweep_vs_scan'] or 0:.1f}x"
    )
    t = figures["target"]
    verdict = {None: "not judged (quick)", True: "met", False: "NOT MET"}[t["met"]]
    print(f"  target: accepting new work < {t['accept_new_work_s']} s: {verdict}")
    print(f"  checks: {'ok' if figures['checks_ok'] else 'FAILED'}")


_MODES = {"baseline": _baseline, "engine": _engine_mode}


def _main(argv: list[str]) -> int:
    return child_main(_MODES, argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
