"""Crash tests with real processes: SIGKILL a worker engine at random moments, many times.

The worker (``_crash_worker.py``) runs a real engine (LMDB, durable commits, system clock) on
one data directory. The test kills it with SIGKILL at a random moment after it reports
``started``, restarts it on the same directory (taking over the dead engine's lock; recovery
re-runs interrupted steps and re-arms timers), and repeats. Each boot is asked to start a few
more workflows than the last, so every boot has work in flight when it dies. After the last
kill the worker runs to the end. Then, from the data directory and the side-effect log:

- every workflow (and child) completed exactly once, with the right result;
- histories have contiguous sequence numbers, no event is duplicated (one ``step.completed``
  per scheduled step, one signal per signalled workflow, timers fired once) and none is lost
  (every step that ran belongs to a recorded, scheduled step of a recorded run);
- every step ran at least once (side effects are at-least-once);
- each run segment replays deterministically through the driver to its recorded outcome;
- nothing is left behind: no active runs, no timer rows, no inbox commands.

Set ``AION_CRASH_SEED`` to replay a particular sequence of kill delays.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion.testing
from aion import events as ev
from aion._codec import decode_payload
from aion._replay import Driver, definition_of
from aion._replay import _commands as c
from aion.store import EventStore, LmdbStore, Status
from tests import _postgres

from . import _crash_worker as w

WORKER = Path(w.__file__)
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=UTC)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")


@dataclass
class LoopStats:
    seed: int
    boots: int = 0
    kills: int = 0  # kills that hit a live worker
    finished_early: int = 0  # boots that completed their work before the kill came
    seconds: float = 0.0
    reruns: int = 0  # step executions beyond the first (at-least-once in action)
    delays: list[float] = field(default_factory=list)


def _spawn(data: Path | str, log: Path, count: int, stderr: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(data), str(log), str(count)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def run_crash_loop(
    tmp_path: Path,
    *,
    count: int,
    kills: int,
    max_delay: float,
    first_wave: int,
    data: Path | str | None = None,
) -> LoopStats:
    """``data``: the data directory (default ``tmp_path / "data"``) or a PostgreSQL URL."""
    seed = int(os.environ.get("AION_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    stats = LoopStats(seed)
    data = tmp_path / "data" if data is None else data
    log = tmp_path / "effects.log"
    started_at = time.monotonic()
    with open(tmp_path / "worker.stderr", "a") as stderr:
        # Each boot starts a few more workflows than the last (all earlier ones again,
        # idempotently), so every boot has new work in flight when the kill comes.
        while stats.kills < kills:
            assert stats.boots < 3 * kills + 10, f"kills do not land (seed {seed}): {stats}"
            upto = min(count, first_wave + (count - first_wave) * stats.boots // kills)
            stats.boots += 1
            proc = _spawn(data, log, upto, stderr)
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()  # blocks until the worker runs
                assert line == "started\n", f"worker said {line!r} (seed {seed})"
                delay = rng.uniform(0.0, max_delay)
                stats.delays.append(delay)
                time.sleep(delay)  # the deliberately random moment of the kill
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    stats.kills += 1
                else:
                    stats.finished_early += 1
                out, _ = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode != -signal.SIGKILL:
                assert proc.returncode == 0, f"worker failed (seed {seed}): {out!r}"
                assert out.strip() == "done"
        # The last boot runs to the end: it starts every workflow and waits for all results.
        stats.boots += 1
        proc = _spawn(data, log, count, stderr)
        try:
            out, _ = proc.communicate(timeout=900)  # a safety net: 20,000 runs on a slow machine
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            stuck = anyio.run(_unfinished, data)
            pytest.fail(f"the final worker did not finish (seed {seed}); unfinished: {stuck}")
    assert proc.returncode == 0, f"final worker failed (seed {seed}): {out!r}"
    assert out.splitlines() == ["started", "done"]
    stats.seconds = time.monotonic() - started_at
    return stats


def _open(data: Path | str) -> EventStore:
    """The store of ``data`` (the workers are dead: this takes the engine lock)."""
    if isinstance(data, str):
        from aion.store import PostgresStore

        store: EventStore = PostgresStore(data)
        return store
    return LmdbStore(data)


async def _unfinished(data: Path | str) -> list[tuple[str, str, str]]:
    store = _open(data)
    try:
        return [
            (r.workflow_id, r.status.value, r.reason or ",".join(r.waiting_on))
            for r in await store.scan_active()
        ]
    finally:
        await store.aclose()


def _segments(history: list[ev.Event]) -> list[list[ev.Event]]:
    segments: list[list[ev.Event]] = []
    for event in history:
        if isinstance(event, ev.WorkflowStarted):
            segments.append([])
        assert segments, f"history does not begin with WorkflowStarted: {history[:1]}"
        segments[-1].append(event)
    return segments


def _check_history(
    workflow_id: str, history: list[ev.Event], effects: Counter[tuple[str, str, int]]
) -> list[list[ev.Event]]:
    """Checks that hold for every workflow; returns the run segments."""
    where = f"workflow {workflow_id}"
    assert [e.seq for e in history] == list(range(1, len(history) + 1)), f"{where}: seqs"
    kinds = [type(e) for e in history]
    assert kinds.count(ev.WorkflowCompleted) == 1, f"{where}: {kinds}"
    assert isinstance(history[-1], ev.WorkflowCompleted), f"{where}: ends with {kinds[-1]}"
    for kind in (ev.WorkflowFailed, ev.WorkflowBlocked, ev.StepFailed, ev.ChildFailed):
        assert kind not in kinds, f"{where}: has {kind.__name__}"
    segments = _segments(history)
    for number, segment in enumerate(segments):
        started = segment[0]
        assert isinstance(started, ev.WorkflowStarted)
        run = started.run_id
        if number:
            previous = segments[number - 1]
            can = previous[-1]
            assert isinstance(can, ev.WorkflowContinuedAsNew), f"{where}: run {number}"
            assert can.new_run_id == run and started.continued_from_run_id == previous[0].run_id
            assert started.input == can.input
        scheduled = Counter(e.step_seq for e in segment if isinstance(e, ev.StepScheduled))
        completed = Counter(e.step_seq for e in segment if isinstance(e, ev.StepCompleted))
        attempts = {e.step_seq: e.attempt for e in segment if isinstance(e, ev.StepStarted)}
        assert set(scheduled.values()) <= {1}, f"{where} run {run}: steps {scheduled}"
        assert completed == scheduled, f"{where} run {run}: completed {completed}"
        assert set(attempts) == set(scheduled) and set(attempts.values()) <= {1}
        for seq in scheduled:  # at least once
            assert effects[(workflow_id, run, seq)] >= 1, f"{where} run {run}: step {seq} never ran"
        timers = Counter(e.timer_seq for e in segment if isinstance(e, ev.TimerScheduled))
        fired = Counter(e.timer_seq for e in segment if isinstance(e, ev.TimerFired))
        assert fired == timers and set(timers.values()) <= {1}, f"{where}: timers {fired}"
        children = Counter(e.child_seq for e in segment if isinstance(e, ev.ChildStarted))
        done = Counter(e.child_seq for e in segment if isinstance(e, ev.ChildCompleted))
        assert done == children and set(children.values()) <= {1}, f"{where}: children"
        # The run replays through the driver to exactly its recorded outcome, issuing nothing
        # that is not recorded.
        definition = definition_of(w.crash_child if started.parent_workflow_id else w.crash_main)
        driver = Driver(definition)
        driver.replay(segment)
        assert driver.take_commands() == [], f"{where} run {run}: replay issued new commands"
        last = segment[-1]
        match last:
            case ev.WorkflowCompleted():
                assert driver.outcome == c.CompleteWorkflow(last.result)
            case ev.WorkflowContinuedAsNew():
                assert driver.outcome == c.ContinueAsNew(last.workflow_type, last.input)
            case _:
                pytest.fail(f"{where}: run {run} ends with {type(last).__name__}")
    return segments


async def verify(tmp_path: Path, count: int, data: Path | str | None = None) -> int:
    """Check the store (``data``, as in :func:`run_crash_loop`) and the side-effect log;
    returns the number of step re-runs."""
    effects: Counter[tuple[str, str, int]] = Counter()
    per_process: Counter[tuple[str, str, int, str]] = Counter()
    for line in (tmp_path / "effects.log").read_text().splitlines():
        wf, run, seq, attempt, pid = line.split()
        assert attempt == "1", line  # no step fails, so every execution is attempt 1
        effects[(wf, run, int(seq))] += 1
        per_process[(wf, run, int(seq), pid)] += 1
    # More than once only across a crash: one process never runs a step twice.
    twice = [key for key, n in per_process.items() if n > 1]
    assert not twice, f"steps run twice by one process: {twice[:5]}"
    store = _open(tmp_path / "data" if data is None else data)
    try:
        records = {}
        cursor = None
        while True:
            page = await store.list_workflows(limit=500, cursor=cursor)
            records.update({r.workflow_id: r for r in page.items})
            cursor = page.next_cursor
            if cursor is None:
                break
        assert all(r.status is Status.COMPLETED for r in records.values())
        assert await store.scan_active() == []
        assert await store.due_timers(FAR_FUTURE) == [], "timer rows left behind"
        assert await store.read_inbox() == []
        recorded_steps: set[tuple[str, str, int]] = set()
        expected_ids = {w.workflow_id(i) for i in range(count)}
        for i in range(count):
            wid = w.workflow_id(i)
            history = await store.read_history(wid)
            segments = _check_history(wid, history, effects)
            steps = [sum(isinstance(e, ev.StepScheduled) for e in s) for s in segments]
            assert steps == w.expected_steps(i), f"{wid}: steps per run {steps}"
            signals = [e for e in history if isinstance(e, ev.SignalReceived)]
            assert len(signals) == (1 if w.has_signal(i) else 0), f"{wid}: signals {signals}"
            last = history[-1]
            assert isinstance(last, ev.WorkflowCompleted)
            assert decode_payload(last.result) == w.expected_result(i), wid
            replayed = aion.testing.replay(w.crash_main, history, workflows=w.WORKFLOWS)
            assert (replayed.status, replayed.runs) == ("completed", len(segments))
            assert replayed.result == w.expected_result(i)
            assert records[wid].run_id == segments[-1][0].run_id
            for segment in segments:
                run = segment[0].run_id  # type: ignore[attr-defined]
                recorded_steps |= {
                    (wid, run, e.step_seq) for e in segment if isinstance(e, ev.StepScheduled)
                }
            child_ids = [e.child_workflow_id for e in history if isinstance(e, ev.ChildStarted)]
            assert len(child_ids) == (1 if w.has_child(i) else 0), f"{wid}: children {child_ids}"
            expected_ids.update(child_ids)
            for child_id in child_ids:
                assert child_id.startswith(f"{wid}/"), child_id
                child_history = await store.read_history(child_id)
                _check_history(child_id, child_history, effects)
                started = child_history[0]
                assert isinstance(started, ev.WorkflowStarted)
                assert started.parent_workflow_id == wid
                assert started.parent_run_id == segments[-1][0].run_id  # type: ignore[attr-defined]
                done = child_history[-1]
                assert isinstance(done, ev.WorkflowCompleted)
                assert decode_payload(done.result) == w.expected_result(i)["child"]
                recorded_steps |= {
                    (child_id, started.run_id, e.step_seq)
                    for e in child_history
                    if isinstance(e, ev.StepScheduled)
                }
        assert set(records) == expected_ids  # no workflow more, none less
        # Nothing ran that the history does not know of: a step execution without its
        # recorded StepScheduled (or of an unrecorded run) would mean a lost event.
        assert set(effects) == recorded_steps
        return sum(n - 1 for n in effects.values())
    finally:
        await store.aclose()


def test_crash_loop_quick(tmp_path: Path) -> None:
    """A few kills over a few dozen workflows (default suite)."""
    stats = run_crash_loop(tmp_path, count=30, kills=3, max_delay=0.35, first_wave=12)
    stats.reruns = anyio.run(verify, tmp_path, 30)
    print(f"crash loop (quick): {stats}")


@pytest.mark.slow
def test_crash_loop_many_kills(tmp_path: Path) -> None:
    """Two hundred workflows, forty kills at random moments."""
    stats = run_crash_loop(tmp_path, count=200, kills=40, max_delay=0.35, first_wave=60)
    stats.reruns = anyio.run(verify, tmp_path, 200)
    print(f"crash loop (slow): {stats}")
    assert stats.reruns > 0, "no kill landed between a side effect and its record"


@pytest.mark.slow
def test_crash_loop_twenty_thousand_runs(tmp_path: Path) -> None:
    """20,000 workflows at the default settings (more runs than ``max_resident_runs``, so runs
    are evicted under pressure), ten kills at random moments. Step re-runs are counted, and
    ``verify`` attributes every one to a kill: no process ever runs a step twice."""
    stats = run_crash_loop(tmp_path, count=20_000, kills=10, max_delay=4.0, first_wave=8_000)
    stats.reruns = anyio.run(verify, tmp_path, 20_000)
    print(f"crash loop (20,000 runs): {stats}")


@pytest.mark.parametrize("ownership", ["lock", "partitions"])
def test_crash_loop_quick_on_postgres(tmp_path: Path, ownership: str) -> None:
    """The same on PostgreSQL: the killed engine's connections die with it, and with them its
    engine lock, which the next worker takes (``lock``); or its lease runs out and the next
    worker takes its partitions over (``partitions``, the default: a lease of one second
    here, so that each boot waits at most that long for the runs of the killed one)."""
    with _postgres.fresh_schema() as schema:
        url = f"{_postgres.URL}?schema={schema}&ownership={ownership}&lease_ttl=1"
        stats = run_crash_loop(tmp_path, count=30, kills=3, max_delay=0.35, first_wave=12, data=url)
        stats.reruns = anyio.run(verify, tmp_path, 30, url)
    print(f"crash loop on PostgreSQL (quick, {ownership}): {stats}")


@pytest.mark.slow
def test_crash_loop_many_kills_on_postgres(tmp_path: Path) -> None:
    """Two hundred workflows on PostgreSQL, forty kills at random moments (partitions: each
    boot takes over the partitions of the engine killed before it)."""
    with _postgres.fresh_schema() as schema:
        url = f"{_postgres.URL}?schema={schema}&lease_ttl=1"
        stats = run_crash_loop(
            tmp_path, count=200, kills=40, max_delay=0.35, first_wave=60, data=url
        )
        stats.reruns = anyio.run(verify, tmp_path, 200, url)
    print(f"crash loop on PostgreSQL (slow): {stats}")
    assert stats.reruns > 0, "no kill landed between a side effect and its record"
