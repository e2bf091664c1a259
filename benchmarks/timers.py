"""Timer wheel: insert/cancel cost at 1,000,000 pending timers, fire cost, firing lateness.

What it measures, each against a baseline measured in the same run:

- **insert / cancel** cost per timer with ``pending`` timers held (1,000,000; 10,000 with
  ``--quick``), for :class:`aion._timerwheel.TimerWheel` and for the heapq priority-queue recipe
  from the Python docs (an entry dict for cancel by key, lazy deletion: a cancelled entry is
  marked and skipped when it reaches the top). Keys are ``(tenant, workflow id, timer id)``
  tuples, as the engine uses; due times are uniform over the next hour. Batches of inserts and
  then cancels alternate between the two structures, and each is timed with the GC off. The
  run churns more than ``pending`` timers so the wheel's compaction of cancelled entries (and
  the heap's growth by dead entries) are inside the "amortised" figure.
- **fire** cost per timer: all pending timers (and the cancelled ones still stored) fired by
  a driver on a manual clock stepped one second at a time, through an async callback. The
  baseline is a heapq driver loop (pop, skip cancelled, await the callback).
- **whole scenario**: churn plus fire. The wheel pays for cancelled entries when it compacts,
  the heap when they reach its top, so this is the like-for-like total.
- **lateness** of firing (fire time minus due time, on the real clock): 10,000 timers per
  second for a few seconds (1 s with ``--quick``), median / p99 / max, for the wheel holding
  everything, for the wheel fed by a sorted-list index through ``load``/``peek`` with a 1 s
  horizon (so it scans twice a second), and for a heapq driver that sleeps until the top.

Run: ``python -m benchmarks timers [--json] [--quick]``.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import itertools
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio

from aion._clock import Clock, ManualClock, SystemClock, from_timestamp
from aion._timerwheel import Timer, TimerWheel

Key = tuple[str, str, str]
_REMOVED: Any = object()


class HeapQueue:
    """The heapq recipe from the Python docs: entry dict for cancel, lazy deletion."""

    def __init__(self) -> None:
        self.heap: list[list[Any]] = []
        self.entries: dict[Key, list[Any]] = {}
        self.counter = itertools.count()

    def schedule(self, due: float, key: Key, payload: object) -> None:
        if key in self.entries:
            self.cancel(key)
        entry = [due, next(self.counter), key, payload]
        self.entries[key] = entry
        heapq.heappush(self.heap, entry)

    def cancel(self, key: Key) -> bool:
        entry = self.entries.pop(key, None)
        if entry is None:
            return False
        entry[2] = _REMOVED
        return True

    async def drive(self, clock: Clock, fire: Callable[[float, Key], Awaitable[None]]) -> None:
        """The usual driver: sleep until the top entry is due, pop, skip if cancelled, fire."""
        heap = self.heap
        while heap:
            due = heap[0][0]
            if due > clock.now():
                await clock.sleep_until(due)
                continue
            due, _, key, _ = heapq.heappop(heap)
            if key is not _REMOVED:
                del self.entries[key]
                await fire(due, key)


def _key(i: int) -> Key:
    return ("default", f"wf-{i:08d}", "t-1")


# --- insert / cancel --------------------------------------------------------------------------


def _timed(fn: Callable[[], None]) -> float:
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def insert_cancel(pending: int, batch: int, rounds: int, seed: int = 1) -> dict[str, Any]:
    """Per-timer insert and cancel cost with ``pending`` timers held, wheel vs heapq."""
    rnd = random.Random(seed)
    clock = ManualClock()
    t0 = clock.now()

    sink: list[Callable[[float, Key], Awaitable[None]]] = []  # the fire part sets it

    async def fire(timer: Timer[Key, None]) -> None:
        await sink[0](timer.due, timer.key)

    wheel: TimerWheel[Key, None] = TimerWheel(clock, fire)
    heap = HeapQueue()
    prefill = [(t0 + rnd.random() * 3600, _key(i)) for i in range(pending)]
    for due, key in prefill:
        wheel.schedule(due, key, None)
        heap.schedule(due, key, None)
    live_dues = sorted(due for due, _ in prefill)  # every batch is cancelled: these stay
    del prefill
    gc.collect()
    times: dict[str, dict[str, list[float]]] = {
        name: {"insert": [], "cancel": []} for name in ("wheel", "heapq")
    }
    structures: dict[str, Any] = {"wheel": wheel, "heapq": heap}
    for r in range(rounds):
        dues = [t0 + rnd.random() * 3600 for _ in range(batch)]
        keys = [_key(pending + r * batch + i) for i in range(batch)]
        order = ("wheel", "heapq") if r % 2 == 0 else ("heapq", "wheel")
        for name in order:
            s = structures[name]
            schedule, cancel = s.schedule, s.cancel

            def do_insert(schedule: Any = schedule, dues: Any = dues, keys: Any = keys) -> None:
                for due, key in zip(dues, keys, strict=True):
                    schedule(due, key, None)

            def do_cancel(cancel: Any = cancel, keys: Any = keys) -> None:
                for key in keys:
                    cancel(key)

            times[name]["insert"].append(_timed(do_insert) / batch * 1e9)
            times[name]["cancel"].append(_timed(do_cancel) / batch * 1e9)
    out: dict[str, Any] = {"pending": pending, "batch": batch, "rounds": rounds}
    for name, t in times.items():
        pairs = [i + c for i, c in zip(t["insert"], t["cancel"], strict=True)]
        out[name] = {
            "insert_ns": statistics.median(t["insert"]),
            "cancel_ns": statistics.median(t["cancel"]),
            "insert_cancel_ns": statistics.median(pairs),
            "insert_cancel_amortised_ns": statistics.fmean(pairs),
            "insert_cancel_worst_batch_ns": max(pairs),
        }
    out["heap_entries_after"] = len(heap.heap)
    out["wheel_entries_after"] = _stored(wheel)
    w, h = out["wheel"], out["heapq"]
    out["ratio_insert_cancel"] = w["insert_cancel_ns"] / h["insert_cancel_ns"]
    out["ratio_insert_cancel_amortised"] = (
        w["insert_cancel_amortised_ns"] / h["insert_cancel_amortised_ns"]
    )
    out["_state"] = (clock, wheel, heap, t0, sink, live_dues)
    return out


def _stored(wheel: TimerWheel[Any, Any]) -> int:
    """Entries physically held, cancelled ones included (a benchmark may peek inside)."""
    levels = wheel._levels
    return sum(len(slot) for row in levels for slot in row) + len(wheel._ready)


# --- fire ---------------------------------------------------------------------------------------


async def _fire_all(state: tuple[Any, ...]) -> dict[str, Any]:
    """Fire everything held, one clock second at a time, wheel vs heapq driver.

    Each structure has its own driver task and its own manual clock, stepped alternately; a
    step ends when its driver has fired every timer due by then (known from the live due times).
    """
    wheel_clock, wheel, heap, t0, sink, live_dues = state
    heap_clock = ManualClock(from_timestamp(math.floor(t0)))
    heap_clock.set_time(t0)
    counts = {"wheel": 0, "heapq": 0}
    last = {"wheel": 0.0, "heapq": 0.0}
    in_order = {"wheel": True, "heapq": True}
    want = {"wheel": 0, "heapq": 0}
    reached = {"wheel": anyio.Event(), "heapq": anyio.Event()}

    def recorder(name: str) -> Callable[[float, Key], Awaitable[None]]:
        async def fire(due: float, key: Key) -> None:
            counts[name] += 1
            in_order[name] &= due >= last[name]
            last[name] = due
            if counts[name] == want[name]:
                reached[name].set()

        return fire

    heap_fire = recorder("heapq")
    sink.append(recorder("wheel"))
    held = len(wheel)
    elapsed = {"wheel": 0.0, "heapq": 0.0}
    gc.collect()
    gc.disable()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(wheel.run)
            tg.start_soon(heap.drive, heap_clock, heap_fire)
            for second in range(1, 3602):
                due_by_now = bisect.bisect_right(live_dues, t0 + second)
                for name, clock in (("wheel", wheel_clock), ("heapq", heap_clock)):
                    start = time.perf_counter()
                    want[name] = due_by_now
                    reached[name] = anyio.Event()
                    clock.set_time(t0 + second)
                    if counts[name] < due_by_now:
                        await reached[name].wait()
                    elapsed[name] += time.perf_counter() - start
            tg.cancel_scope.cancel()
    finally:
        gc.enable()
    assert counts["wheel"] == counts["heapq"] == held, (counts, held)
    out: dict[str, Any] = {"fired": held, "in_order": in_order}
    for name in ("wheel", "heapq"):
        out[name] = {"fire_ns": elapsed[name] / held * 1e9}
    out["ratio_fire"] = out["wheel"]["fire_ns"] / out["heapq"]["fire_ns"]
    return out


# --- lateness -----------------------------------------------------------------------------------


class SortedIndex:
    """A durable due-time index stand-in: a sorted list of (due, key, payload) rows."""

    def __init__(self, rows: Iterable[tuple[float, Key, None]]) -> None:
        self.rows = sorted(rows)
        self.dues = [row[0] for row in self.rows]
        self.scans = 0

    async def load(
        self, after: float, after_key: Key | None, until: float, limit: int
    ) -> list[tuple[float, Key, None]]:
        self.scans += 1
        if after_key is None:
            lo = bisect.bisect_right(self.dues, after)
        else:
            lo = bisect.bisect_right(self.rows, (after, after_key), key=lambda row: row[:2])
        hi = min(bisect.bisect_right(self.dues, until), lo + limit)
        return self.rows[lo:hi]

    async def peek(self, after: float) -> float | None:
        i = bisect.bisect_right(self.dues, after)
        return self.dues[i] if i < len(self.dues) else None


def _summary(lateness: list[float]) -> dict[str, Any]:
    ordered = sorted(lateness)
    n = len(ordered)
    return {
        "fires": n,
        "median_ms": ordered[n // 2] * 1e3,
        "p99_ms": ordered[min(n - 1, int(n * 0.99))] * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


async def lateness(rate: int, seconds: float, kind: str) -> dict[str, Any]:
    """Fire ``rate`` timers per second for ``seconds`` on the real clock; lateness figures."""
    clock: Clock = SystemClock()
    count = int(rate * seconds)
    first = clock.now() + 0.3
    dues = [first + i / rate for i in range(count)]
    late: list[float] = []
    done = anyio.Event()

    async def record(due: float) -> None:
        late.append(clock.now() - due)
        if len(late) == count:
            done.set()

    if kind == "heapq":
        queue = HeapQueue()
        for i, due in enumerate(dues):
            queue.schedule(due, _key(i), None)

        async def fire_heap(due: float, key: Key) -> None:
            await record(due)

        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.drive, clock, fire_heap)
            await done.wait()
            tg.cancel_scope.cancel()
        return _summary(late)

    async def fire(timer: Timer[Key, None]) -> None:
        await record(timer.due)

    index: SortedIndex | None = None
    if kind == "wheel":
        wheel: TimerWheel[Key, None] = TimerWheel(clock, fire)
        for i, due in enumerate(dues):
            wheel.schedule(due, _key(i), None)
    else:
        index = SortedIndex((due, _key(i), None) for i, due in enumerate(dues))
        wheel = TimerWheel(clock, fire, load=index.load, peek=index.peek, horizon=1.0)
    async with anyio.create_task_group() as tg:
        await tg.start(wheel.run)
        await done.wait()
        tg.cancel_scope.cancel()
    out = _summary(late)
    if index is not None:
        out["scans"] = index.scans
    return out


# --- runner -------------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    """Run every part; ``quick`` uses small sizes (a smoke test of a few seconds)."""
    pending = 10_000 if quick else 1_000_000
    batch = 2_000 if quick else 100_000
    # Enough churn that the wheel compacts its cancelled entries at least once.
    rounds = 4 if quick else max(6, (pending + 2 * 65536) // batch + 2)
    seconds = 1.0 if quick else 3.0
    ops = insert_cancel(pending, batch, rounds)
    state = ops.pop("_state")
    fire = anyio.run(_fire_all, state)
    del state
    gc.collect()
    late = {
        kind: anyio.run(lateness, 10_000, seconds, kind) for kind in ("wheel", "indexed", "heapq")
    }
    # The whole scenario: churn (insert + cancel, with the wheel's compaction) and then firing
    # everything (with the heap's deferred cost of skipping and freeing its cancelled entries).
    churned = rounds * batch
    total = {
        name: (churned * ops[name]["insert_cancel_amortised_ns"] + pending * fire[name]["fire_ns"])
        / 1e9
        for name in ("wheel", "heapq")
    }
    return {
        "insert_cancel": ops,
        "fire": fire,
        "scenario_s": {**total, "churned": churned, "ratio": total["wheel"] / total["heapq"]},
        "lateness": {"rate_per_s": 10_000, "seconds": seconds, **late},
    }


def print_report(figures: dict[str, Any]) -> None:
    """Print the figures as a short table."""
    ops, fire, late = figures["insert_cancel"], figures["fire"], figures["lateness"]
    print(f"insert/cancel with {ops['pending']:,} pending timers (ns per timer, median batch)")
    for name in ("wheel", "heapq"):
        f = ops[name]
        print(
            f"  {name:6s} insert {f['insert_ns']:7.0f}  cancel {f['cancel_ns']:7.0f}  "
            f"both {f['insert_cancel_ns']:7.0f}  amortised {f['insert_cancel_amortised_ns']:7.0f}"
            f"  worst batch {f['insert_cancel_worst_batch_ns']:7.0f}"
        )
    print(
        f"  wheel/heapq: {ops['ratio_insert_cancel']:.2f} "
        f"(amortised {ops['ratio_insert_cancel_amortised']:.2f}); entries stored after: "
        f"wheel {ops['wheel_entries_after']:,}, heapq {ops['heap_entries_after']:,}"
    )
    print(f"fire {fire['fired']:,} timers, 1 s clock steps (ns per timer)")
    print(
        f"  wheel {fire['wheel']['fire_ns']:7.0f}  heapq {fire['heapq']['fire_ns']:7.0f}  "
        f"wheel/heapq {fire['ratio_fire']:.2f}"
    )
    total = figures["scenario_s"]
    print(
        f"whole scenario ({total['churned']:,} inserted and cancelled, then {fire['fired']:,} "
        f"fired): wheel {total['wheel']:.2f} s, heapq {total['heapq']:.2f} s, "
        f"wheel/heapq {total['ratio']:.2f}"
    )
    print(f"lateness at {late['rate_per_s']:,} fires/s for {late['seconds']} s, real clock (ms)")
    for kind in ("wheel", "indexed", "heapq"):
        f = late[kind]
        print(
            f"  {kind:8s} median {f['median_ms']:6.3f}  p99 {f['p99_ms']:6.3f}  "
            f"max {f['max_ms']:7.3f}  ({f['fires']:,} fires)"
        )
