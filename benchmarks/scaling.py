"""Scaling: do the calls users feel stay flat from 10,000 to 1,000,000 stored runs, and do
1,000,000 durable timers fire on time after a restart?

Everything runs on the default engine (``aion.Engine(path)``: durable, ``max_resident_runs``
10,000, the real clock), each part in a fresh subprocess.

- **growth** (one subprocess, one data directory grown 10,000 -> 100,000 -> 1,000,000 runs;
  ``--quick``: 200 -> 1,000 -> 2,000): the store is filled through the engine, with runs parked
  on a signal started by 200 concurrent starters (the fill's time and rate are figures too).
  The baseline is a second default engine in the same process on a store of the smallest size
  (it grows by the runs the start-rate windows add), measured alternately with the grown one,
  one operation (or start window) at a time, so that both see the same machine: on a shared
  machine the disk's fsync latency alone moves a signal's latency from under 1 ms to 20 ms.
  At each size, once the grown store holds that many runs:

  * **start rate**: 200 concurrent starters start new parked runs (four windows of 1,000 per
    engine; the median window's rate, CPU per start, and each start's latency);
  * **describe**: latency (p50/p99) of ``engine.describe`` of random stored runs, one at a time,
    and beside it the store's own read of a random run's record (``store.get_workflow``);
  * **list**: latency of ``engine.list(limit=100)``: the first page, and consecutive pages from
    the middle of a cursor walk (reached with pages of up to 10,000), without a filter and with
    ``status=RUNNING``;
  * **signal**: from ``engine.signal(...)`` to the start of the next step of a parked run that
    was evicted (started before more than ``max_resident_runs`` newer runs): replay on
    activation, one fsync'd commit, step dispatch;
  * RSS (anonymous and file-backed, of the process: both engines) and the data files' size.

  The report gives each figure of the grown store over the baseline's: flat is within 20% (a
  latency at most 1.2x, a rate at least 1/1.2 of the baseline's). The JSON also has each
  figure's ratio to the grown store's own figure at the smallest size.
- **timers** (two scenarios, each two subprocesses: a real restart): the engine starts
  1,000,000 runs (2,000 with ``--quick``), each parked on ``await ctx.sleep_until(due)``, and
  stops; a new process opens the data directory and the timers come due from 60 s after it
  began opening (``--quick``: 2 s), evenly spread:

  * **burst**: over 60 s (16,700/s; ``--quick``: 2 s), beyond what one core fires: the
    engine's fire capacity (fires/s, CPU per fire while firing), and the memory a backlog
    takes (the wheel loads at most ``MAX_HELD`` timers ahead of firing them);
  * **spread**: over ``timer_window`` seconds (600 s, 1,667/s; ``--quick``: 4 s), a rate the
    engine sustains: whether timers fire on time is judged here.

  Figures: the fill, the time to reopen (``__aenter__``), the time until every timer fired and
  its run completed, lateness (the run's code after the sleep runs minus its due time)
  p50/p99/max, CPU per fire, RSS, and, sampled every 0.25 s while the timers fire, the peak
  anonymous RSS and the most timers the wheel held. So that nothing comes due while the store
  is filled, the due times lie a day ahead and the reopened engine runs on the real clock
  shifted forward by that day (``Engine(clock=...)``, a constant offset: every other setting
  is the default).

Run: ``python -m benchmarks scaling [--json] [--quick]``. Set ``AION_BENCH_DIR`` to measure on
another filesystem (default: the system temp directory).
"""

from __future__ import annotations

import gc
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

import aion
from aion._clock import SystemClock, from_timestamp
from aion.store import Status
from benchmarks._child import Mode, child_main, run_child
from benchmarks._common import median, rss, scratch
from benchmarks.workflows import _STEP_EVENTS, _STEP_STARTED, parked, signalled

FULL: dict[str, Any] = {
    "sizes": (10_000, 100_000, 1_000_000),
    "starters": 200,
    "start_windows": 4,
    "start_window_runs": 1_000,  # starts per window (4,000 runs added to each store per size)
    "describes": 2_000,
    "pages": 200,  # list pages timed per kind
    "signals": 200,  # evicted runs signalled per size
    "timer_runs": 1_000_000,
    "fire_after": 60.0,  # the first timer comes due this long after the reopen began
    "fire_spread": 60.0,  # and the last this much later (the burst)
    "timer_window": 600.0,  # the spread scenario: the last this much after the first
}
QUICK: dict[str, Any] = {
    "sizes": (200, 1_000, 2_000),
    "starters": 200,
    "start_windows": 3,
    "start_window_runs": 100,
    "describes": 200,
    "pages": 20,
    "signals": 10,
    "timer_runs": 2_000,
    "fire_after": 2.0,
    "fire_spread": 2.0,
    "timer_window": 4.0,
}
FLAT = 1.2  # "flat": no more than 20% worse than at the smallest size
PAGE = 100  # the list page measured
WALK_PAGE = 10_000  # the page size of the walk to the middle (engine.list's largest limit)
TIMER_SHIFT_S = 86_400.0  # the timers' due times lie this far ahead while the store is filled


# --- workflows ---------------------------------------------------------------------------------


# The parked and signalled runs are the workflows benchmark's (its signal latency, the same way).


class _Fired:
    """Lateness of every timer-parked run that got past its sleep; set once all of them have."""

    def __init__(self) -> None:
        self.clock: SystemClock = SystemClock()
        self.goal = 0
        self.late: list[float] = []
        self.first: float | None = None
        self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0  # process CPU time at the first and last fire
        self.done: anyio.Event | None = None

    def record(self, due: float) -> None:
        now = self.clock.now()
        self.late.append(now - due)
        if self.first is None:
            self.first, self.cpu_first = now, time.process_time()
        self.last = now
        if len(self.late) >= self.goal and self.done is not None:
            self.cpu_last = time.process_time()
            self.done.set()


_FIRED = _Fired()


@aion.workflow(name="bench-scaling-sleeper")
async def sleeper(ctx: aion.Context, due: float) -> None:
    await ctx.sleep_until(from_timestamp(due))
    # A side effect in workflow code, on purpose: it runs once, when the run resumes after its
    # timer fired (the replay on activation stops at the sleep); the run then completes.
    _FIRED.record(due)


WORKFLOWS = (parked, signalled, sleeper)


class _ShiftedClock(SystemClock):
    """The real clock plus a constant offset (seconds)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await anyio.sleep(delay)
        else:
            await anyio.lowlevel.checkpoint()

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.now() + seconds)


# --- helpers -----------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(values: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max of durations in seconds, in milliseconds."""
    return {
        "p50": _pct(values, 0.5) * 1000,
        "p99": _pct(values, 0.99) * 1000,
        "max": max(values, default=float("nan")) * 1000,
        "n": len(values),
    }


def _memory() -> dict[str, float]:
    """RSS now (after a full collection) and the peak, in MB."""
    gc.collect()
    out = rss()
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["VmHWM"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _data_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


async def _pool(workers: int, count: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(0 .. count-1)`` with ``workers`` concurrent tasks."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await job(i)

    async with anyio.create_task_group() as tg:
        for _ in range(min(workers, count)):
            tg.start_soon(worker)


def _parked_id(n: int) -> str:
    return f"p{n:08d}"


# --- growth (one subprocess) -------------------------------------------------------------------


class _Subject:
    """One engine and what it stores: parked runs ``{prefix}00000000 ..`` and signal targets."""

    def __init__(self, name: str, engine: aion.Engine, path: Path, starters: int) -> None:
        self.name = name
        self.engine = engine
        self.path = path
        self.starters = starters
        self.parked = 0  # parked runs started: ids self.parked_id(0 .. parked - 1)
        self.stored = 0  # every run started
        self.targets: dict[int, list[str]] = {}  # signal targets, by the size they serve
        self.cursor: str | None = None  # of the list walk being measured
        self.middle: str | None = None  # where it began
        self.evicted = 0

    def parked_id(self, n: int) -> str:
        return f"{self.name[0]}{n:08d}"

    async def start_parked(self, count: int, latencies: list[float] | None = None) -> None:
        first = self.parked
        self.parked += count
        self.stored += count
        engine = self.engine

        async def one(i: int) -> None:
            t = time.perf_counter()
            await engine.start(parked, workflow_id=self.parked_id(first + i))
            if latencies is not None:
                latencies.append(time.perf_counter() - t)

        await _pool(self.starters, count, one)

    async def fill_to(self, size: int) -> dict[str, Any]:
        """Parked runs until the store holds ``size``: time, rate, and the rate by tenths."""
        count = size - self.stored
        began = time.perf_counter()
        tenths: list[float] = []
        step = max(1, math.ceil(count / 10))
        done = 0
        while done < count:
            n = min(step, count - done)
            t = time.perf_counter()
            await self.start_parked(n)
            tenths.append(n / (time.perf_counter() - t))
            done += n
        seconds = time.perf_counter() - began
        return {
            "runs": count,
            "seconds": seconds,
            "starts_per_s": count / seconds if seconds else None,
            "starts_per_s_by_tenth": [round(r) for r in tenths],
        }

    async def add_targets(self, size: int, count: int) -> None:
        """Runs to signal at ``size``: started before the runs that will push them out of the
        resident set (more than max_resident_runs are started after them)."""
        ids = [f"{self.name[0]}sig-{size}-{i:05d}" for i in range(count)]

        async def one(i: int) -> None:
            await self.engine.start(signalled, workflow_id=ids[i])

        await _pool(self.starters, count, one)
        self.stored += count
        self.targets[size] = ids


Op = Callable[[_Subject, int], Awaitable[float]]


async def _alternate(
    subjects: Sequence[_Subject], rounds: int, op: Op
) -> dict[str, tuple[list[float], list[float]]]:
    """``op`` ``rounds`` times on every subject, alternating one by one (the order flips every
    round), so that every subject sees the same machine: (wall seconds, CPU seconds) each."""
    out: dict[str, tuple[list[float], list[float]]] = {s.name: ([], []) for s in subjects}
    for i in range(rounds):
        for subject in subjects if i % 2 == 0 else subjects[::-1]:
            cpu = time.process_time()
            wall = await op(subject, i)
            walls, cpus = out[subject.name]
            walls.append(wall)
            cpus.append(time.process_time() - cpu)
    return out


def _figures(
    samples: dict[str, tuple[list[float], list[float]]], **extra: Any
) -> dict[str, dict[str, Any]]:
    return {
        name: {"latency_ms": _ms(walls), "cpu_us": median(cpus) * 1e6, **extra}
        for name, (walls, cpus) in samples.items()
    }


async def _start_rate(subjects: Sequence[_Subject], windows: int, runs: int) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {s.name: [] for s in subjects}

    async def window(subject: _Subject, i: int) -> float:
        t = time.perf_counter()
        await subject.start_parked(runs, latencies[subject.name])
        return time.perf_counter() - t

    samples = await _alternate(subjects, windows, window)
    out: dict[str, Any] = {}
    for name, (walls, cpus) in samples.items():
        rates = [runs / w for w in walls]
        out[name] = {
            "starts_per_s": median(rates),
            "windows": [round(r) for r in rates],
            "runs_per_window": runs,
            "cpu_us_per_start": median(cpus) * 1e6 / runs,
            "latency_ms": _ms(latencies[name]),
        }
    return out


async def _describe(
    subjects: Sequence[_Subject], samples: int, rnd: random.Random
) -> dict[str, Any]:
    not_running = 0

    async def describe(subject: _Subject, i: int) -> float:
        nonlocal not_running
        wid = subject.parked_id(rnd.randrange(subject.parked))
        t = time.perf_counter()
        description = await subject.engine.describe(wid)
        elapsed = time.perf_counter() - t
        not_running += description.status is not Status.RUNNING
        return elapsed

    async def floor(subject: _Subject, i: int) -> float:
        # The store's own read of the run's record: what describe cannot do without.
        wid = subject.parked_id(rnd.randrange(subject.parked))
        t = time.perf_counter()
        await subject.engine.store.get_workflow(wid)
        return time.perf_counter() - t

    out = _figures(await _alternate(subjects, samples, describe))
    floors = _figures(await _alternate(subjects, samples, floor))
    for name, figures in out.items():
        figures["store_get_workflow"] = floors[name]
    if not_running:
        raise AssertionError(f"{not_running} described runs were not RUNNING")
    return out


async def _list(subjects: Sequence[_Subject], pages: int, status: Status | None) -> dict[str, Any]:
    async def first(subject: _Subject, i: int) -> float:
        t = time.perf_counter()
        page = await subject.engine.list(status=status, limit=PAGE)
        elapsed = time.perf_counter() - t
        if len(page.items) != min(PAGE, subject.stored):
            raise AssertionError(f"a first page of {len(page.items)} items")
        return elapsed

    out: dict[str, dict[str, Any]] = {
        name: {"first_page": f}
        for name, f in _figures(await _alternate(subjects, pages, first)).items()
    }
    for subject in subjects:
        # To the middle of the walk in large pages (a cursor serves any page size of its query).
        walk_began = time.perf_counter()
        position = 0
        subject.cursor = None
        goal = subject.stored // 2
        walk_limit = max(PAGE, min(WALK_PAGE, goal // 4))
        while position + walk_limit <= goal:
            page = await subject.engine.list(status=status, limit=walk_limit, cursor=subject.cursor)
            position += len(page.items)
            subject.cursor = page.next_cursor
        walk_s = time.perf_counter() - walk_began
        subject.middle = subject.cursor
        out[subject.name].update(
            {
                "deep_from_position": position,
                "walk_page": walk_limit,
                "walk_to_middle_s": walk_s,
                "walk_items_per_s": position / walk_s if walk_s > 0 else None,
            }
        )

    async def deep(subject: _Subject, i: int) -> float:
        t = time.perf_counter()
        page = await subject.engine.list(status=status, limit=PAGE, cursor=subject.cursor)
        elapsed = time.perf_counter() - t
        # At the end of a small store's walk (quick sizes), go on from the middle again.
        subject.cursor = page.next_cursor or subject.middle
        return elapsed

    for name, f in _figures(await _alternate(subjects, pages, deep)).items():
        out[name]["deep_page"] = f
    return out


async def _signals(subjects: Sequence[_Subject], size: int) -> dict[str, Any]:
    async def signal(subject: _Subject, i: int) -> float:
        engine = subject.engine
        wid = subject.targets[size][i]
        actors = getattr(getattr(engine, "_runtime", None), "actors", None)  # a peek inside
        subject.evicted += actors is not None and ("default", wid) not in actors
        event = _STEP_EVENTS[wid] = anyio.Event()
        t = time.perf_counter()
        await engine.signal(wid, "go")
        with anyio.fail_after(30):
            await event.wait()
        return _STEP_STARTED[wid] - t

    for subject in subjects:
        subject.evicted = 0
    count = min(len(s.targets[size]) for s in subjects)
    out = _figures(await _alternate(subjects, count, signal))
    for subject in subjects:
        for wid in subject.targets[size]:
            await subject.engine.handle(wid).result(timeout=30)
        out[subject.name]["evicted_when_signalled"] = subject.evicted
    _STEP_EVENTS.clear()
    _STEP_STARTED.clear()
    return out


async def _grow(args: dict[str, Any]) -> dict[str, Any]:
    root = Path(args["path"])
    sizes: list[int] = args["sizes"]
    rnd = random.Random(14)
    out: list[dict[str, Any]] = []
    began = time.perf_counter()
    fill_s = 0.0
    before = _memory()
    async with (
        aion.Engine(root / "grown", workflows=WORKFLOWS) as engine,
        aion.Engine(root / "baseline", workflows=WORKFLOWS) as baseline_engine,
    ):
        grown = _Subject("grown", engine, root / "grown", args["starters"])
        baseline = _Subject("baseline", baseline_engine, root / "baseline", args["starters"])
        for size in sizes:
            await baseline.add_targets(size, args["signals"])
        baseline_fill = await baseline.fill_to(sizes[0])
        subjects = (grown, baseline)
        for size in sizes:
            load = _load()
            await grown.add_targets(size, args["signals"])
            fill = await grown.fill_to(size)
            fill_s += fill["seconds"]
            stored = {s.name: s.stored for s in subjects}
            memory = _memory()
            row: dict[str, Any] = {
                "size": size,
                "stored_when_measured": stored,
                "fill": fill,
                "fill_total_s": fill_s,
                "rss_mb": memory,
                "data_mb": {s.name: _data_mb(s.path) for s in subjects},
                "start": await _start_rate(
                    subjects, args["start_windows"], args["start_window_runs"]
                ),
                "describe": await _describe(subjects, args["describes"], rnd),
                "list": {
                    "all": await _list(subjects, args["pages"], None),
                    "running": await _list(subjects, args["pages"], Status.RUNNING),
                },
                "signal": await _signals(subjects, size),
                "stored_after": {s.name: s.stored for s in subjects},
                "resident_runs": {s.name: s.engine.resident_runs for s in subjects},
                "load_average": [load, _load()],
            }
            out.append(row)
    return {
        "engine": "aion.Engine(path): default settings (durable, max_resident_runs=10,000)",
        "baseline": (
            f"a second default engine in the same process on a store of {sizes[0]:,} runs, "
            "measured alternately with the grown one, one operation at a time"
        ),
        "baseline_fill": baseline_fill,
        "rss_before_mb": before,
        "sizes": out,
        "fill_to_largest_s": fill_s,
        "elapsed_s": time.perf_counter() - began,
    }


def _grow_mode(args: dict[str, Any]) -> dict[str, Any]:
    return anyio.run(_grow, args)


# --- timers (two subprocesses: a restart) ------------------------------------------------------


async def _timers_fill(args: dict[str, Any]) -> dict[str, Any]:
    path, runs = Path(args["path"]), args["runs"]
    # Nothing comes due while this process runs: the reopened engine's clock is shifted by a day.
    base = time.time() + TIMER_SHIFT_S
    first, spread = base + args["fire_after"], args["fire_spread"]
    before = _memory()
    began = time.perf_counter()
    async with aion.Engine(path, workflows=WORKFLOWS) as engine:
        entered = time.perf_counter()

        async def one(i: int) -> None:
            due = first + spread * i / max(1, runs - 1)
            await engine.start(sleeper, due, workflow_id=f"t{i:08d}")

        await _pool(args["starters"], runs, one)
        filled = time.perf_counter()
        memory = _memory()
        sample = await engine.describe(f"t{runs // 2:08d}")
        stopping = time.perf_counter()
    stopped = time.perf_counter()
    return {
        "base": base,
        "runs": runs,
        "aenter_s": entered - began,
        "fill_s": filled - entered,
        "starts_per_s": runs / (filled - entered),
        "stop_s": stopped - stopping,
        "rss_before_mb": before,
        "rss_after_fill_mb": memory,
        "data_mb": _data_mb(path),
        "sample_waits_on_timer": bool(sample.pending.get("timers")),
    }


class _Peaks:
    """Samples, while the timers fire, the anonymous RSS and the timers the wheel holds."""

    def __init__(self) -> None:
        self.rss_anon_mb = 0.0
        self.held = 0
        self.samples = 0

    async def sample(self, engine: aion.Engine, every: float = 0.25) -> None:
        while True:
            anon = rss().get("RssAnon", 0.0)
            self.rss_anon_mb = max(self.rss_anon_mb, anon)
            wheel = engine._timers._wheel  # white box: a benchmark of the engine's internals
            self.held = max(self.held, len(wheel) if wheel is not None else 0)
            self.samples += 1
            await anyio.sleep(every)


async def _timers_restart(args: dict[str, Any]) -> dict[str, Any]:
    path, runs = Path(args["path"]), args["runs"]
    # The clock reads `base` as the reopen begins: the first timer is due fire_after later.
    clock = _ShiftedClock(args["base"] - time.time())
    _FIRED.clock, _FIRED.goal, _FIRED.late, _FIRED.done = clock, runs, [], anyio.Event()
    peaks = _Peaks()
    opened_at = clock.now()
    load = _load()
    before = _memory()
    began = time.perf_counter()
    cpu = time.process_time()
    async with aion.Engine(path, workflows=WORKFLOWS, clock=clock) as engine:
        entered = time.perf_counter()
        at_entered = _memory()
        timeout = args["fire_after"] + args["fire_spread"] + args["timeout"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(peaks.sample, engine)
            with anyio.move_on_after(timeout):
                await _FIRED.done.wait()
                await engine.wait_idle()  # the last runs' commits
            tg.cancel_scope.cancel()
        finished = time.perf_counter()
        cpu_s = time.process_time() - cpu
        at_end = _memory()
        fired = len(_FIRED.late)
        still_open = len(await engine.store.scan_active(after=None, limit=1000))
        recovery = engine.recovery
    late = _FIRED.late
    first_due = args["base"] + args["fire_after"]
    last_due = first_due + args["fire_spread"]
    return {
        "runs": runs,
        "reopen_s": entered - began,
        "recovery_sweep_s": recovery.seconds,
        "all_done_s": finished - began,  # from the start of the reopen
        "all_done_after_last_due_s": (finished - began) - (last_due - opened_at),
        "first_due_after_reopen_s": first_due - opened_at,
        "last_due_after_reopen_s": last_due - opened_at,
        "fired": fired,
        "all_fired": fired == runs,
        "still_open": still_open,
        "fires_per_s": (
            fired / (_FIRED.last - _FIRED.first)
            if _FIRED.first and _FIRED.last > _FIRED.first
            else None
        ),
        "fire_rate_due_per_s": runs / args["fire_spread"] if args["fire_spread"] else None,
        "cpu_s": cpu_s,
        "cpu_us_per_fire": cpu_s * 1e6 / max(1, fired),
        # From the first fire to the last: the cost of firing alone (and the run it resumes).
        "cpu_us_per_fire_while_firing": (
            (_FIRED.cpu_last - _FIRED.cpu_first) * 1e6 / (fired - 1) if fired > 1 else None
        ),
        "load_average": [load, _load()],
        "lateness_ms": {
            "p50": _pct(late, 0.5) * 1000,
            "p99": _pct(late, 0.99) * 1000,
            "max": max(late, default=float("nan")) * 1000,
            "min": min(late, default=float("nan")) * 1000,
            "mean": statistics.fmean(late) * 1000 if late else float("nan"),
        },
        "rss_before_mb": before,
        "rss_after_reopen_mb": at_entered,
        "rss_after_fired_mb": at_end,
        "peak_rss_anon_while_firing_mb": peaks.rss_anon_mb,
        "peak_timers_held": peaks.held,
        "rss_samples": peaks.samples,
    }


def _timers_fill_mode(args: dict[str, Any]) -> dict[str, Any]:
    return anyio.run(_timers_fill, args)


def _timers_restart_mode(args: dict[str, Any]) -> dict[str, Any]:
    return anyio.run(_timers_restart, args)


def _timers_scenario(runs: int, fire_after: float, spread: float, starters: int) -> dict[str, Any]:
    """Fill a store with ``runs`` timer-parked runs due ``fire_after`` .. ``fire_after +
    spread`` seconds after the reopen begins; reopen it and let every timer fire."""
    timeout = 600 + runs / 200
    common = {"runs": runs, "fire_after": fire_after, "fire_spread": spread}
    with scratch("scaling-timers") as root:
        fill = run_child(
            "benchmarks.scaling",
            "timers-fill",
            {**common, "path": str(root), "starters": starters},
            timeout,
        )
        if "error" in fill:
            return {"fill": fill}
        restart = run_child(
            "benchmarks.scaling",
            "timers-restart",
            {**common, "path": str(root), "base": fill["base"], "timeout": timeout},
            timeout + fire_after + spread + 60,
        )
    return {"fill": fill, "restart": restart}


def _timers(size: dict[str, Any], scenarios: Sequence[str] = ("burst", "spread")) -> dict[str, Any]:
    """The burst (due faster than the engine fires) and the spread (a rate it sustains)."""
    runs = size["timer_runs"]
    spreads = {"burst": size["fire_spread"], "spread": size["timer_window"]}
    out: dict[str, Any] = {"runs": runs}
    for name in scenarios:
        began = time.perf_counter()
        out[name] = _timers_scenario(runs, size["fire_after"], spreads[name], size["starters"])
        out[name]["elapsed_s"] = time.perf_counter() - began
    return out


# --- the benchmark -----------------------------------------------------------------------------

Reader = Callable[[dict[str, Any], str], float]


def _page(which: str, page: str, q: str) -> Reader:
    """Reads ``row["list"][which][who][page]["latency_ms"][q]``."""

    def read(row: dict[str, Any], who: str) -> float:
        return float(row["list"][which][who][page]["latency_ms"][q])

    return read


def _lat(*path: str, q: str = "p50") -> Reader:
    """Reads ``row[path...][who]["latency_ms"][q]``."""

    def read(row: dict[str, Any], who: str) -> float:
        node = row
        for key in path:
            node = node[key]
        return float(node[who]["latency_ms"][q])

    return read


#: (name, how to read it from one size's row for "grown" or "baseline", True if higher is
#: better). Each is judged against the baseline engine measured alternately with it.
_FIGURES: tuple[tuple[str, Reader, bool], ...] = (
    ("start_per_s", lambda r, w: r["start"][w]["starts_per_s"], True),
    ("start_cpu_us", lambda r, w: r["start"][w]["cpu_us_per_start"], False),
    ("start_p99_ms", lambda r, w: r["start"][w]["latency_ms"]["p99"], False),
    ("describe_p50_ms", _lat("describe"), False),
    ("describe_p99_ms", _lat("describe", q="p99"), False),
    (
        "store_get_p50_ms",
        lambda r, w: r["describe"][w]["store_get_workflow"]["latency_ms"]["p50"],
        False,
    ),
    ("list_first_p50_ms", _page("all", "first_page", q="p50"), False),
    ("list_first_p99_ms", _page("all", "first_page", q="p99"), False),
    ("list_deep_p50_ms", _page("all", "deep_page", q="p50"), False),
    ("list_deep_p99_ms", _page("all", "deep_page", q="p99"), False),
    ("list_running_first_p50_ms", _page("running", "first_page", q="p50"), False),
    ("list_running_deep_p50_ms", _page("running", "deep_page", q="p50"), False),
    ("list_running_deep_p99_ms", _page("running", "deep_page", q="p99"), False),
    ("signal_p50_ms", _lat("signal"), False),
    ("signal_p99_ms", _lat("signal", q="p99"), False),
    ("signal_cpu_us", lambda r, w: r["signal"][w]["cpu_us"], False),
)


def _worse(ratio: float, higher_is_better: bool) -> float:
    """How many times worse (>= 1) or better (< 1) a ratio of figures is."""
    if not higher_is_better:
        return ratio
    return 1 / ratio if ratio else float("inf")


def _ratios(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure of the grown store at each size: against the baseline engine measured
    alternately with it (judged: both saw the same machine), and against the grown store's
    own figure at the smallest size (the load on a shared machine changes in between)."""
    first = sizes[0]
    out: dict[str, Any] = {}
    for name, read, higher_is_better in _FIGURES:
        rows: dict[str, Any] = {}
        for row in sizes:
            grown, baseline = read(row, "grown"), read(row, "baseline")
            ratio = grown / baseline if baseline else float("nan")
            earlier = read(first, "grown")
            worse = _worse(ratio, higher_is_better)
            rows[str(row["size"])] = {
                "grown": grown,
                "baseline": baseline,
                "ratio": ratio,
                "worse": worse,
                "flat": worse <= FLAT,
                "ratio_vs_smallest": grown / earlier if earlier else float("nan"),
            }
        out[name] = rows
    # Memory: the process holds both engines; what matters is growth with the stored runs.
    anon = [row["rss_mb"].get("RssAnon", row["rss_mb"]["VmRSS"]) for row in sizes]
    out["rss_anon_mb"] = {
        str(row["size"]): {
            "grown": mb,
            "ratio_vs_smallest": mb / anon[0],
            "flat": mb / anon[0] <= FLAT,
        }
        for row, mb in zip(sizes, anon, strict=True)
    }
    return out


def run(quick: bool) -> dict[str, Any]:
    """Grow one store through the sizes, then the timers' restart; ``quick``: small sizes."""
    size = QUICK if quick else FULL
    began = time.perf_counter()
    load_before = _load()
    largest = size["sizes"][-1]
    with scratch("scaling") as root:
        grow = run_child(
            "benchmarks.scaling",
            "grow",
            {
                "path": str(root),
                **{
                    k: size[k]
                    for k in (
                        "sizes",
                        "starters",
                        "start_windows",
                        "start_window_runs",
                        "describes",
                        "pages",
                        "signals",
                    )
                },
            },
            timeout=600 + largest / 100,
        )
    timers = _timers(size)
    figures: dict[str, Any] = {
        "quick": quick,
        "load_average": [load_before, _load()],
        "flat_within": FLAT,
        "growth": grow,
        "timers": timers,
    }
    if "sizes" in grow:
        figures["ratios"] = _ratios(grow["sizes"])
        figures["not_flat"] = sorted(
            f"{name}@{at}"
            for name, rows in figures["ratios"].items()
            for at, row in rows.items()
            if not row["flat"]
        )
    figures["elapsed_s"] = time.perf_counter() - began
    return figures


def _fmt(value: float) -> str:
    return f"{value:8,.0f}" if abs(value) >= 100 else f"{value:8.3g}"


def print_report(figures: dict[str, Any]) -> None:
    """Print the figures as a short table."""
    grow = figures["growth"]
    if "sizes" not in grow:
        print(f"growth: {grow}")
    else:
        sizes = grow["sizes"]
        print(
            f"scaling, default engine; load average before/after {figures['load_average']}; "
            f"the grown store against a {sizes[0]['size']:,}-run baseline engine measured "
            "alternately with it (ratio grown/baseline; flat: at most "
            f"{FLAT:.1f}x worse)"
        )
        for row in sizes:
            fill = row["fill"]
            print(
                f"  {row['size']:>9,} runs: fill {fill['seconds']:6.1f} s "
                f"({fill['starts_per_s'] or 0:,.0f}/s; to here {row['fill_total_s']:.0f} s), "
                f"stored when measured {row['stored_when_measured']}, RSS anon "
                f"{row['rss_mb'].get('RssAnon', 0):.0f} MB, data "
                f"{row['data_mb']['grown']:.0f} MB, load {row['load_average']}, evicted "
                f"when signalled {row['signal']['grown']['evicted_when_signalled']}"
            )
        head = "".join(f"{row['size']:>28,}" for row in sizes)
        print(f"  {'figure (grown vs baseline)':<26}{head}")
        for name, rows in figures["ratios"].items():
            cells = []
            for row in rows.values():
                mark = "" if row["flat"] else "!"
                if "baseline" in row:
                    pair = f"{_fmt(row['grown'])} /{_fmt(row['baseline'])}"
                    cells.append(f"{pair} ={row['ratio']:5.2f}{mark:1}")
                else:
                    cells.append(f"{_fmt(row['grown'])} ({row['ratio_vs_smallest']:.2f}x){mark:1}")
            print(f"  {name:<26}" + "".join(f"{c:>28}" for c in cells))
        print("  (! = not flat)")
    print_timers(figures["timers"])
    print(f"elapsed {figures['elapsed_s']:.0f} s")


def print_timers(timers: dict[str, Any]) -> None:
    """Print the timers part: one block per scenario."""
    for name in ("burst", "spread"):
        if name not in timers:
            continue
        fill, restart = timers[name].get("fill", {}), timers[name].get("restart", {})
        if "error" in fill or "error" in restart or not restart:
            print(f"timers ({name}): {timers[name]}")
            continue
        late = restart["lateness_ms"]
        print(
            f"timers ({name}): {timers['runs']:,} runs parked on a durable timer; fill "
            f"{fill['fill_s']:.1f} s ({fill['starts_per_s']:,.0f}/s), stop {fill['stop_s']:.2f} s, "
            f"{fill['data_mb']:.0f} MB; scenario {timers[name]['elapsed_s']:.0f} s"
        )
        print(
            f"  restart: reopen {restart['reopen_s']:.2f} s; due "
            f"{restart['first_due_after_reopen_s']:.0f}-{restart['last_due_after_reopen_s']:.0f} s "
            f"after it ({restart['fire_rate_due_per_s'] or 0:,.0f}/s); all fired and completed "
            f"{restart['all_done_s']:.1f} s after it "
            f"({restart['all_done_after_last_due_s']:+.1f} s after the last due time); "
            f"{restart['fires_per_s'] or 0:,.0f} fires/s, CPU "
            f"{restart['cpu_us_per_fire']:.0f} us per fire overall, "
            f"{restart['cpu_us_per_fire_while_firing'] or 0:.0f} while firing; load "
            f"{restart['load_average']}"
        )
        print(
            f"  lateness p50 {late['p50']:.1f} ms, p99 {late['p99']:.1f} ms, max "
            f"{late['max']:.1f} ms; fired {restart['fired']:,}/{timers['runs']:,}, still open "
            f"{restart['still_open']}; RSS anon {restart['rss_before_mb'].get('RssAnon', 0):.0f} "
            f"MB before the reopen, {restart['rss_after_reopen_mb'].get('RssAnon', 0):.0f} MB "
            f"after it, peak {restart['peak_rss_anon_while_firing_mb']:.0f} MB while firing "
            f"(at most {restart['peak_timers_held']:,} timers held), "
            f"{restart['rss_after_fired_mb'].get('RssAnon', 0):.0f} MB after; peak VmHWM "
            f"{restart['rss_after_fired_mb'].get('VmHWM', 0):.0f} MB"
        )


_MODES: dict[str, Mode] = {
    "grow": _grow_mode,
    "timers-fill": _timers_fill_mode,
    "timers-restart": _timers_restart_mode,
}


def _main(argv: list[str]) -> int:
    return child_main(_MODES, argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
