"""The engine's metrics: cheap in-process instruments, read all at once by an exporter.

The core does not depend on any metrics library. The engine updates plain instruments as
things happen: a :class:`Counter` (a dict from label values to an int: an increment is one
dict get and one set), a :class:`Histogram` with fixed bucket bounds (an observation is one
``bisect`` and two increments) and a :class:`Gauge` read through a callable when it is
scraped. An exporter (the HTTP control plane's ``/metrics``, with ``prometheus-client``)
calls :meth:`Metrics.snapshot` at scrape time and renders the :class:`MetricFamily` list.

Where each figure comes from (ARCHITECTURE.md, invariant 22: counted once the round that
records it is durable, never on replay):

- workflow starts and closes, step failures and retries, runs parked BLOCKED and unblocked:
  the recorder notes them in the round (``Round.tally``), the actor applies the notes once the
  round's write is committed (:meth:`Metrics.tally`). A replay records nothing, so it counts
  nothing; an activation that issues new commands past the history records, and counts, them.
- step attempts and their durations: the step executor, around each execution.
- transactions: the store's writer, through its commit observer (:meth:`observe_commit`).
- restarts: the root supervisor (services) and the runtime (crashed run actors).
- gauges: counts the engine keeps (resident actors, the inbox's last read, open and BLOCKED
  runs: the recovery sweep's counts at start, then kept up to date by the tallies), and two
  that only the store can count (timers pending and overdue), read in the background by
  :class:`StoreCounts` every ``REFRESH_SECONDS`` with a bound, so that a scrape reads no store.

Threads: counters, gauges' state and the step histogram are updated on the event loop's
thread only (no lock). The commit histograms are updated by the store's writer thread (or, on
MemoryStore, by whoever commits), under a lock of their own, once per transaction.
:meth:`Metrics.snapshot` may be called from any thread: it copies each series with single
C-level operations (``list(dict.items())``, ``list(counts)``) and never sees a torn dict; a
histogram's count is the sum of its bucket counts, so the two always agree.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeVar

import anyio

from aion.errors import AionError

if TYPE_CHECKING:
    from aion._recovery import RecoveryReport
    from aion.store import EventStore

__all__ = [
    "COMMIT_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "HistogramSample",
    "MetricFamily",
    "Metrics",
    "Sample",
    "StoreCounts",
    "Tally",
]

log = logging.getLogger("aion.engine")

Labels = tuple[str, ...]
Kind = Literal["counter", "gauge", "histogram"]

#: A note of the recorder's, applied by :meth:`Metrics.tally` once its round is committed:
#: ``("started", (workflow_type,))``, ``("closed", (workflow_type, outcome))``,
#: ``("step_failed" | "step_retry", (workflow_type, step))``, ``("blocked" | "unblocked", ())``.
Tally = tuple[str, Labels]

#: Seconds, for step attempts: 1 ms to 5 minutes.
STEP_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
)  # fmt: skip
#: Seconds, for transactions and their commit: 50 us (no fsync) to 2.5 s (a disk in trouble).
COMMIT_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
)  # fmt: skip
#: Writes per transaction: powers of two up to the LMDB writer's batch limit (4096).
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0)

#: How often (seconds of real time) the store-counted gauges are read again.
REFRESH_SECONDS = 10.0
#: The most timer rows counted for ``aion_timers_pending`` (LMDB and memory count for free;
#: PostgreSQL counts rows, bounded by this).
PENDING_LIMIT = 1_000_000
#: The most overdue timer rows counted (a range count on every backend).
OVERDUE_LIMIT = 100_000


class Sample(NamedTuple):
    """One series of a counter or gauge: its label values (in ``label_names`` order) and value."""

    labels: Labels
    value: float


class HistogramSample(NamedTuple):
    """One series of a histogram.

    Attributes:
        labels: the label values, in the family's ``label_names`` order.
        bounds: the buckets' upper bounds (inclusive), ascending; the last is ``math.inf``
            (Prometheus' ``+Inf``).
        cumulative: observations at or below each bound (one per bound: ``zip`` them); the
            last equals ``observations``.
        sum: the sum of the observed values (Prometheus' ``_sum``).
        observations: the number of observations (Prometheus' ``_count``; ``count`` is a
            tuple method).
    """

    labels: Labels
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float
    observations: int


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One metric as an exporter renders it (Prometheus' HELP, TYPE and samples).

    Attributes:
        name: e.g. ``aion_workflows_started_total``.
        kind: ``"counter"``, ``"gauge"`` or ``"histogram"``.
        help: what it measures (one line).
        label_names: the names of its labels, e.g. ``("workflow_type", "outcome")``.
        samples: :class:`Sample`s for counters and gauges, :class:`HistogramSample`s for
            histograms; one per label combination seen so far (an unlabelled counter has one
            from the start).
    """

    name: str
    kind: Kind
    help: str
    label_names: Labels
    samples: tuple[Sample, ...] | tuple[HistogramSample, ...]


class Counter:
    """A monotonic counter per label combination (the event loop's thread updates it)."""

    __slots__ = ("help", "label_names", "name", "values")

    def __init__(self, name: str, help: str, label_names: Labels = ()) -> None:
        self.name = name
        self.help = help
        self.label_names = label_names
        self.values: dict[Labels, int] = {} if label_names else {(): 0}

    def inc(self, labels: Labels = (), amount: int = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def value(self, labels: Labels = ()) -> int:
        """The count for these label values (0 if never counted)."""
        return self.values.get(labels, 0)

    def family(self) -> MetricFamily:
        samples = tuple(Sample(labels, float(n)) for labels, n in list(self.values.items()))
        return MetricFamily(self.name, "counter", self.help, self.label_names, samples)


class Gauge:
    """An unlabelled gauge: a value read through a callable at scrape time, or the last value
    :meth:`set`. A gauge with neither has no sample."""

    __slots__ = ("_read", "_value", "help", "label_names", "name")

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self.label_names: Labels = ()
        self._read: Callable[[], float] | None = None
        self._value: float | None = None

    def set_function(self, read: Callable[[], float]) -> None:
        """Read the gauge's value by calling ``read`` (cheap, safe from any thread)."""
        self._read = read

    def set(self, value: float) -> None:
        self._value = value

    def value(self) -> float | None:
        """The current value, or None when the gauge has none yet."""
        read = self._read
        return float(read()) if read is not None else self._value

    def family(self) -> MetricFamily:
        value = self.value()
        samples = () if value is None else (Sample((), value),)
        return MetricFamily(self.name, "gauge", self.help, (), samples)


class _Series:
    """One histogram series: per-bucket counts (not cumulative; the last is ``+Inf``), sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0


class Histogram:
    """Observations in fixed buckets, per label combination.

    Args:
        bounds: the buckets' upper bounds (inclusive, ascending, finite); ``+Inf`` is added.
        lock: held for each observation and while a sample is copied, when observations come
            from more than one thread (several histograms may share one); None: one thread
            observes (the event loop's).
    """

    __slots__ = ("_all_bounds", "_lock", "_series", "bounds", "help", "label_names", "name")

    def __init__(
        self,
        name: str,
        help: str,
        label_names: Labels = (),
        *,
        bounds: Sequence[float],
        lock: threading.Lock | None = None,
    ) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)) or not math.isfinite(bounds[-1]):
            raise ValueError(f"bucket bounds must be distinct and ascending: {bounds!r}")
        self.name = name
        self.help = help
        self.label_names = label_names
        self.bounds = tuple(float(b) for b in bounds)
        self._all_bounds = (*self.bounds, math.inf)
        self._series: dict[Labels, _Series] = {}
        self._lock = lock

    def observe(self, value: float, labels: Labels = ()) -> None:
        lock = self._lock
        if lock is None:
            self._observe(value, labels)
        else:
            with lock:
                self._observe(value, labels)

    def _observe(self, value: float, labels: Labels) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(len(self.bounds) + 1)
        series.counts[bisect_left(self.bounds, value)] += 1
        series.sum += value

    def sample(self, labels: Labels = ()) -> HistogramSample | None:
        """The series of these label values, or None if nothing was observed for them."""
        series = self._series.get(labels)
        return None if series is None else self._sample(labels, series)

    def _sample(self, labels: Labels, series: _Series) -> HistogramSample:
        lock = self._lock
        if lock is None:
            counts, total = list(series.counts), series.sum
        else:
            with lock:
                counts, total = list(series.counts), series.sum
        cumulative: list[int] = []
        running = 0
        for n in counts:
            running += n
            cumulative.append(running)
        return HistogramSample(labels, self._all_bounds, tuple(cumulative), total, running)

    def family(self) -> MetricFamily:
        samples = tuple(
            self._sample(labels, series) for labels, series in list(self._series.items())
        )
        return MetricFamily(self.name, "histogram", self.help, self.label_names, samples)


_F = TypeVar("_F", Counter, Gauge, Histogram)


class Metrics:
    """The metrics of one engine (``engine.metrics``): its instruments, and
    :meth:`snapshot` for an exporter.

    The instruments are attributes (``metrics.workflows_started.value(("checkout",))``);
    their names, all prefixed ``aion_``, and what they count are in each one's help text.
    """

    def __init__(self) -> None:
        self._families: list[Counter | Gauge | Histogram] = []
        wt = ("workflow_type",)
        step = ("workflow_type", "step")
        # The commit histograms: observed together by the store's writer thread.
        self._commit_lock = commit_lock = threading.Lock()
        self.workflows_started = self._add(
            Counter(
                "aion_workflows_started_total",
                "Workflow runs started and recorded (a continue-as-new successor and a child "
                "count; a run re-activated by replay does not).",
                wt,
            )
        )
        self.workflows_closed = self._add(
            Counter(
                "aion_workflows_closed_total",
                "Workflow runs that ended, by outcome: completed, failed, cancelled, "
                "continued_as_new.",
                ("workflow_type", "outcome"),
            )
        )
        self.step_attempts = self._add(
            Counter(
                "aion_step_attempts_total",
                "Step attempts executed (a replayed step is not executed, so not counted; an "
                "attempt a crash interrupted runs, and counts, again).",
                step,
            )
        )
        self.step_failures = self._add(
            Counter(
                "aion_step_failures_total",
                "Failed step attempts recorded (StepFailed), retried or not.",
                step,
            )
        )
        self.step_retries = self._add(
            Counter(
                "aion_step_retries_total",
                "Step retries scheduled (StepRetryScheduled) after a failed attempt.",
                step,
            )
        )
        self.step_duration = self._add(
            Histogram(
                "aion_step_duration_seconds",
                "Wall time of each executed step attempt in the step executor (including a "
                "wait for a free step thread).",
                step,
                bounds=STEP_BUCKETS,
            )
        )
        self.commit_batch_size = self._add(
            Histogram(
                "aion_commit_batch_size",
                "Writes (requests) per committed store transaction (group commit).",
                bounds=BATCH_BUCKETS,
                lock=commit_lock,
            )
        )
        self.commit_seconds = self._add(
            Histogram(
                "aion_commit_seconds",
                "Committed store transactions: from the transaction's start through its commit.",
                bounds=COMMIT_BUCKETS,
                lock=commit_lock,
            )
        )
        self.fsync_seconds = self._add(
            Histogram(
                "aion_fsync_seconds",
                "The commit of each store transaction alone: LMDB's txn.commit() (with its "
                "fsync when durable); PostgreSQL's last round trip, the batch's rows and "
                "COMMIT pipelined together (the WAL flush is in it). Not observed on "
                "MemoryStore.",
                bounds=COMMIT_BUCKETS,
                lock=commit_lock,
            )
        )
        self.timers_pending = self._add(
            Gauge(
                "aion_timers_pending",
                f"Durable timer rows in the store (not fired yet), counted up to "
                f"{PENDING_LIMIT:,} in the background every {REFRESH_SECONDS:g} s: up to "
                f"{REFRESH_SECONDS:g} s old.",
            )
        )
        self.timers_overdue = self._add(
            Gauge(
                "aion_timers_overdue",
                f"Timer rows due before now and not fired (recorded) yet, counted up to "
                f"{OVERDUE_LIMIT:,} in the background every {REFRESH_SECONDS:g} s: up to "
                f"{REFRESH_SECONDS:g} s old.",
            )
        )
        self.runs_resident = self._add(
            Gauge("aion_runs_resident", "Runs in memory (resident run actors).")
        )
        self.runs_passivated = self._add(
            Gauge(
                "aion_runs_passivated",
                "Open runs (not finished, not BLOCKED) that are not in memory: they are "
                "replayed when something happens to them. Counted from the recovery sweep at "
                "start and the starts and closes since.",
            )
        )
        self.runs_blocked = self._add(
            Gauge(
                "aion_runs_blocked",
                "Runs parked BLOCKED (waiting for a fix and a retry). Counted from the recovery "
                "sweep at start and the blockings and unblockings since.",
            )
        )
        self.inbox_depth = self._add(
            Gauge(
                "aion_inbox_depth",
                "Commands other processes left in the inbox and not handed to their runs yet "
                "(e.g. kept for a BLOCKED run), as of the inbox's last pass (every "
                "inbox_interval, or when the doorbell rings).",
            )
        )
        self.service_restarts = self._add(
            Counter(
                "aion_service_restarts_total",
                "Engine services (store-writer, timer-wheel, step-executor, run-actors, "
                "inbox, ...) restarted by the root supervisor.",
                ("service",),
            )
        )
        self.workflow_restarts = self._add(
            Counter(
                "aion_workflow_restarts_total",
                "Run actors restarted by replay after an engine fault (a crash, not a "
                "workflow's own exception).",
                wt,
            )
        )
        #: Open runs (RUNNING or BLOCKED) and BLOCKED runs, kept by :meth:`tally`.
        self.runs_open = 0
        self.blocked = 0
        self.runs_blocked.set_function(lambda: self.blocked)
        self.runs_passivated.set_function(self._passivated)

    def _add(self, family: _F) -> _F:
        self._families.append(family)
        return family

    def _passivated(self) -> float:
        resident = self.runs_resident.value() or 0.0
        return max(0.0, self.runs_open - self.blocked - resident)

    def snapshot(self) -> list[MetricFamily]:
        """Every metric with its current samples, in a fixed order (callable from any
        thread; reads nothing from the store)."""
        return [family.family() for family in self._families]

    # --- what the engine calls --------------------------------------------------------------

    def tally(self, notes: Iterable[Tally]) -> None:
        """Apply the recorder's notes of a round that is now committed."""
        for kind, labels in notes:
            if kind == "started":
                self.workflows_started.inc(labels)
                self.runs_open += 1
            elif kind == "closed":
                self.workflows_closed.inc(labels)
                self.runs_open -= 1
            elif kind == "step_failed":
                self.step_failures.inc(labels)
            elif kind == "step_retry":
                self.step_retries.inc(labels)
            elif kind == "blocked":
                self.blocked += 1
            elif kind == "unblocked":
                self.blocked -= 1

    def step_attempt(self, workflow_type: str, step: str, seconds: float) -> None:
        """A step attempt was executed (the step executor)."""
        labels = (workflow_type, step)
        self.step_attempts.inc(labels)
        self.step_duration.observe(seconds, labels)

    def observe_commit(self, writes: int, seconds: float, commit_seconds: float | None) -> None:
        """A store transaction of ``writes`` writes committed in ``seconds``, of which its
        commit took ``commit_seconds`` (None: not measurable). The store's commit observer:
        called by its writer thread."""
        with self._commit_lock:  # one acquisition for the three
            self.commit_batch_size._observe(writes, ())
            self.commit_seconds._observe(seconds, ())
            if commit_seconds is not None:
                self.fsync_seconds._observe(commit_seconds, ())

    def service_restarted(self, service: str) -> None:
        """The root supervisor restarts a service (its ``on_restart``)."""
        self.service_restarts.inc((service,))

    def recovered(self, report: RecoveryReport) -> None:
        """The startup sweep's counts: the open and BLOCKED runs the engine starts with."""
        started = sum(r.kind == "child-never-started" for r in report.repairs if report.applied)
        self.runs_open = report.runs_scanned + started
        self.blocked = report.runs_blocked


class StoreCounts:
    """The gauges only the store can count (timers pending and overdue), read in the
    background: once at start (:meth:`refresh`, before the timer wheel fires anything), then
    every ``interval`` seconds of real time (:meth:`run`). A scrape reads the last values.

    A store without ``count_timers`` leaves the gauges without samples; a failed read keeps
    the last values (and logs a warning).
    """

    def __init__(
        self,
        metrics: Metrics,
        store: Callable[[], EventStore],
        now: Callable[[], datetime],
        interval: float = REFRESH_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._now = now
        self._interval = interval
        self._lock = anyio.Lock()  # one read at a time: the last one started is the last word

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._interval)  # real time: a manual clock must not see it
            await self.refresh()

    async def refresh(self) -> None:
        """Count again now (on a worker thread: a count may read up to ``OVERDUE_LIMIT``
        keys)."""
        async with self._lock:
            try:
                store = self._store()
            except AionError:
                return  # stopped
            count: Callable[..., int] | None = getattr(store, "count_timers", None)
            if count is None:
                return
            now = self._now()

            def read() -> tuple[int, int]:
                pending = count(limit=PENDING_LIMIT)
                return pending, count(due_before=now, limit=OVERDUE_LIMIT)

            try:
                pending, overdue = await anyio.to_thread.run_sync(read)
            except Exception as exc:  # a metric is never worth failing the engine
                log.warning("could not count the store's timers for the metrics: %s", exc)
                return
            self._metrics.timers_pending.set(pending)
            self._metrics.timers_overdue.set(overdue)
