"""Recovery under fire: SIGKILL a worker engine at random moments while timers, children,
continue-as-new, cancellations and signals are in flight, then compare with an uninterrupted run.

The worker (``_recovery_worker.py``) runs a real engine (LMDB, durable commits, system clock)
on one data directory and a mix of workflows (see its docstring): durable timers of 0.05-0.5 s,
fan-out children, continue-as-new chains carrying a value, runs cancelled at a known point (a
timer, a child's timer, a running step) that clean up (steps, a timer) before they end, and runs
that fold signals. This test kills the worker with SIGKILL at a random moment (delays from a
seeded RNG; the seed is printed and ``AION_CRASH_SEED`` replays it), restarts it on the same
directory (the new engine takes over the dead one's lock and runs the recovery sweep), and
repeats. Meanwhile it leaves signals and
cancellations in the store's inbox from this process, as ``aion signal`` / ``aion cancel`` do:
signals at random moments (before or while the workflow waits for them, while workers die), a
cancellation as soon as the store shows the run waiting at its cancellation point. After the
last kill one worker runs to the end. Then:

- every workflow (and child) ended in the state and with the result computed from its inputs
  (:func:`_recovery_worker.expected`), and each history replays to it through the driver;
- each history equals, after the normalisation below, the history of the same workflow in an
  uninterrupted reference run of the same workload in this process (``MemoryStore``);
- sequence numbers are contiguous from 1; no event is duplicated (the comparison sees any extra
  completion, timer, child or cancellation event); each signal sent is recorded exactly once,
  in the order sent;
- every step's side effect happened at least once, no process ran a step twice, and nothing ran
  that the history does not record (a lost event would show as an unrecorded side effect);
- nothing is left behind (no open run, timer row or inbox command), no boot's recovery sweep
  had to repair anything (one transaction per state change), and finally an ``aion.Engine``
  opened on the directory and ``aion recover --data DIR`` (dry run) report nothing to repair.

What the history comparison normalises, and why (:func:`_shape`):

1. ``seq`` and ``at`` are dropped (contiguity is checked separately), as are run ids: each run id
   becomes ``run0``, ``run1``... in the order its workflow's runs started, inside workflow ids too
   (a child of a continued run is named after the run). Timer ``due`` becomes the delay
   ``due - at`` (the code computes it from the recorded time of the event that woke it, which
   is committed in the same batch: the delay is exact, crash or not).
2. ``SignalReceived`` events are taken out of the sequence and compared on their own (name,
   payload, order, count). Where a signal lands in a history depends on when the sender sent
   it relative to the run's progress: that varies between any two executions, crashes or not.
   The commands the code issues do not depend on it (signals are buffered until awaited).
3. Within a maximal run of consecutive completion events of one type (``StepCompleted``,
   ``TimerFired``, ``ChildCompleted``, ``ChildFailed``) events are ordered by their step, timer
   or child number: they complete operations that run concurrently (``ctx.gather``), whose
   order is a race in any execution. Completions of different types are never reordered, and
   nothing is reordered across a command event.
4. A ``StepStarted`` for a step the run already recorded as started is dropped, provided its
   side-effect log shows that the step really ran again (a re-run after a kill is legitimate:
   steps are at-least-once). This engine records nothing when it re-runs an interrupted step
   (the attempt keeps its number), so the count of such events is expected to be 0; it is
   reported. Attempt numbers are compared as recorded (no step of the workload fails).

Known bug (reproduced deterministically by ``test_cancel_reaches_child_after_crash``): a kill
between the commit of a parent's cancellation and the child's leaves the child running and the
parent waiting on it for ever. When the final worker is stuck on exactly that, and on nothing
else, the test passes the lost cancellations on (an inbox cancel with the reason the engine
gives), runs the final worker again, makes every other check, and then reports XFAIL with the
seed instead of a pass.

Cancellations are sent only once a run waits at its cancellation point, so that their place in
the history is fixed (and the step a ``cancel_step`` run is cancelled in ends only after the
test has seen the cancellation recorded, so that its result has a fixed place too). Payloads
(inputs, step arguments and results, child results) are compared decoded, exactly.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

import aion
import aion.testing
from aion import events as ev
from aion._codec import decode_payload, encode_payload
from aion._replay import definition_of
from aion.errors import DataDirectoryError, StoreFormatError
from aion.store import (
    Append,
    EventStore,
    InboxCommand,
    LmdbStore,
    MemoryStore,
    Status,
    WorkflowRecord,
    Write,
    collect_pages,
)

from . import _recovery_worker as w

WORKER = Path(w.__file__)
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=UTC)
TYPES = {definition_of(fn).name: fn for fn in w.WORKFLOWS}
FACTS = (ev.StepCompleted, ev.TimerFired, ev.ChildCompleted, ev.ChildFailed)
SIGNAL_CHANCE = 0.25  # per sender tick and signal workflow: send its next signal now

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")


# --- the sender: signals and cancellations from outside, through the inbox ----------------------


@dataclass
class Sender:
    """Leaves signals and cancellations in a store's inbox, as the CLI does."""

    rng: random.Random
    marks: Path  # where cancel_step runs learn that their cancellation is recorded
    signals: dict[str, list[int]] = field(default_factory=dict)  # workflow id -> payloads sent
    cancels: Counter[str] = field(default_factory=Counter)  # workflow id -> cancels sent
    inbox_len: int = 0

    async def tick(self, store: EventStore, upto: int) -> None:
        """Send what is due among workflows ``0 .. upto-1``."""
        now = datetime.now(UTC)
        for i in range(upto):
            wid = w.workflow_id(i)
            kind = w.kind(i)
            if kind == "signals":
                sent = self.signals.setdefault(wid, [])
                if len(sent) >= w.signal_count(i) or self.rng.random() >= SIGNAL_CHANCE:
                    continue
                if await store.get_workflow(wid) is None:
                    continue  # not started yet (the worker died first)
                payload = w.signal_payload(i, len(sent))
                command = InboxCommand(
                    "signal", "default", wid, now, name="add", payload=encode_payload(payload)
                )
                await store.put_inbox(command)
                sent.append(payload)
            elif kind == "cancel_step" and self.cancels[wid] and not (self.marks / wid).exists():
                # Once the cancellation is recorded, the step it interrupted may end.
                events = await store.read_current_run(wid)
                if any(isinstance(e, ev.WorkflowCancelRequested) for e in events):
                    self.marks.mkdir(exist_ok=True)
                    (self.marks / wid).touch()
            elif (
                kind in w.CANCELLED_KINDS
                and wid not in self.cancels
                and await at_cancel_point(store, i)
            ):
                command = InboxCommand("cancel", "default", wid, now, comment=w.cancel_reason(i))
                await store.put_inbox(command)
                self.cancels[wid] += 1
        self.inbox_len = len(await store.read_inbox(limit=10_000))

    def finished(self, upto: int) -> bool:
        """Everything for workflows ``0 .. upto-1`` has been sent."""
        for i in range(upto):
            wid = w.workflow_id(i)
            if w.kind(i) == "signals" and len(self.signals.get(wid, ())) < w.signal_count(i):
                return False
            if w.kind(i) in w.CANCELLED_KINDS and not self.cancels[wid]:
                return False
        return True


async def at_cancel_point(store: EventStore, index: int) -> bool:
    """Whether workflow ``index`` waits at its cancellation point: the one-hour timer of the run
    (cancel) or of its child (cancel_tree), or its step ``CANCEL_STEP`` (cancel_step)."""
    wid = w.workflow_id(index)
    parent = await store.get_workflow(wid)
    if parent is None or parent.status is not Status.RUNNING:
        return False
    kind = w.kind(index)
    if kind == "cancel_step":
        return f"step:{w.CANCEL_STEP}" in parent.waiting_on
    record: WorkflowRecord | None = parent
    if kind == "cancel_tree":
        record = await store.get_workflow(f"{wid}/child-1")
    if record is None or record.status is not Status.RUNNING:
        return False
    timer = f"timer:#{w.CANCEL_TIMER[kind]} "
    return any(entry.startswith(timer) for entry in record.waiting_on)


def _tick_client(data: Path, sender: Sender, upto: int) -> bool:
    """One sender tick through a client store (no lock); False if no engine created it yet."""

    async def go() -> bool:
        try:
            store = LmdbStore(data, role="client")
        except (DataDirectoryError, StoreFormatError):
            return False
        try:
            await sender.tick(store, upto)
        finally:
            await store.aclose()
        return True

    return anyio.run(go)


# --- the kill loop ------------------------------------------------------------------------------


@dataclass
class LoopStats:
    seed: int
    boots: int = 0
    kills: int = 0  # kills that hit a live worker
    kills_before_recovery: int = 0  # ... before its recovery sweep had finished
    lost_cancels: int = 0  # children the known bug left running (passed on by the test)
    finished_early: int = 0  # boots that finished their work before the kill came
    inbox_pending_at_kill: int = 0  # kills with signals or cancels of ours not yet applied
    reactivated: int = 0  # runs the boots' recovery sweeps scheduled for reactivation
    overdue: int = 0  # timers that came due while no worker ran
    reruns: int = 0  # step executions beyond the first (at-least-once in action)
    restarted_steps: int = 0  # StepStarted recorded again for a re-run step (expected: 0)
    signals: int = 0
    cancels: int = 0
    seconds: float = 0.0
    reference_seconds: float = 0.0
    delays: list[float] = field(default_factory=list, repr=False)


def _spawn(
    data: Path, log: Path, count: int, stderr: IO[str], stall: float = 60.0
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(data), str(log), str(count), str(stall)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def _seed() -> int:
    seed = int(os.environ.get("AION_CRASH_SEED", random.randrange(2**32)))
    print(f"recovery crash loop seed: {seed} (replay with AION_CRASH_SEED={seed})")
    return seed


def run_crash_loop(
    tmp_path: Path,
    *,
    seed: int,
    count: int,
    kills: int,
    max_delay: float,
    first_wave: int,
    final_stall: float,
    child_cancel_reason: str,
) -> tuple[LoopStats, Sender]:
    """Kill, restart, repeat; then one worker runs to the end. Returns what was sent too.

    ``final_stall``: seconds the last worker may wait for its runs to end (uninterrupted, the
    whole workload takes a few seconds). ``child_cancel_reason``: the reason the engine gives a
    child when it passes a parent's cancellation on (taken from the reference run).
    """
    rng = random.Random(seed)  # the kill delays: only they depend on the seed alone
    sender = Sender(random.Random(seed ^ 0x5EED), w.marks(tmp_path / "effects.log"))
    stats = LoopStats(seed)
    data, log = tmp_path / "data", tmp_path / "effects.log"
    started_at = time.monotonic()
    recoveries: list[dict[str, Any]] = []

    def read_outputs(out: str) -> None:
        for line in out.splitlines():
            if line.startswith("recovery "):
                recoveries.append(json.loads(line.removeprefix("recovery ")))

    with open(tmp_path / "worker.stderr", "a") as stderr:
        while stats.kills < kills:
            assert stats.boots < 3 * kills + 10, f"kills do not land (seed {seed}): {stats}"
            # Each boot starts a few more workflows than the last (the earlier ones again,
            # idempotently): every boot has new work in flight when the kill comes.
            upto = min(count, first_wave + (count - first_wave) * stats.boots // kills)
            stats.boots += 1
            proc = _spawn(data, log, upto, stderr)
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()  # blocks until the worker runs
                assert line == "started\n", f"worker said {line!r} (seed {seed})"
                # One kill in five comes within 50 ms: during the recovery sweep, the
                # restarts and the first activations.
                early = rng.random() < 0.2
                delay = rng.uniform(0.0, 0.05 if early else max_delay)
                stats.delays.append(delay)
                deadline = time.monotonic() + delay
                # Until the deliberately random moment of the kill, send what is due.
                while True:
                    _tick_client(data, sender, upto)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    time.sleep(min(left, sender.rng.uniform(0.005, 0.05)))
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    stats.kills += 1
                    stats.inbox_pending_at_kill += sender.inbox_len > 0
                else:
                    stats.finished_early += 1
                out, _ = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            read_outputs(out)
            if proc.returncode == -signal.SIGKILL:
                stats.kills_before_recovery += "recovery " not in out
            else:
                assert proc.returncode == 0, f"worker failed (seed {seed}): {out!r}"
                assert out.strip().endswith("done"), out
        # The last boot runs to the end: it starts every workflow and waits until all have
        # ended, while the rest of the signals and cancellations go out.
        stats.boots += 1
        out, stuck = _final_boot(data, log, count, stderr, sender, seed, final_stall)
        if stuck:
            read_outputs(out)
            # Only the known bug is in the way (anything else failed in _final_boot): pass
            # the lost cancellations on as the engine should have, then finish, so that
            # every other check still runs; the test reports the bug at the end.
            stats.lost_cancels = len(stuck)
            anyio.run(_pass_on_cancel, data, stuck, child_cancel_reason)
            stats.boots += 1
            out, stuck = _final_boot(data, log, count, stderr, sender, seed, final_stall)
            assert not stuck, f"cancellations lost again (seed {seed}): {stuck}"
        read_outputs(out)
    lines = out.splitlines()
    assert (lines[0], lines[-1]) == ("started", "done"), out
    assert sender.finished(count), "the final worker ended before all signals were sent"
    # One transaction per state change: no boot found anything half done to repair.
    repairs = [r for rec in recoveries for r in rec["repairs"]]
    assert not repairs, f"recovery sweeps repaired (seed {seed}): {repairs[:10]}"
    stats.reactivated = sum(r["reactivated"] for r in recoveries)
    stats.overdue = sum(r["overdue"] for r in recoveries)
    stats.signals = sum(len(s) for s in sender.signals.values())
    stats.cancels = sum(sender.cancels.values())
    assert set(sender.cancels.values()) <= {1}
    stats.seconds = time.monotonic() - started_at
    return stats, sender


def _final_boot(
    data: Path, log: Path, count: int, stderr: IO[str], sender: Sender, seed: int, stall: float
) -> tuple[str, list[str]]:
    """Run a worker on all ``count`` workflows to the end, sending what is due meanwhile.

    Returns its output, and the children stuck on the known bug if that, and only that, kept
    it from finishing (see ``test_cancel_reaches_child_after_crash``).
    """
    # A worker that waits ``stall`` seconds for its runs reports the stuck ones and exits.
    proc = _spawn(data, log, count, stderr, stall=stall)
    deadline = time.monotonic() + stall + 60
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                stuck = anyio.run(_unfinished, data)
                pytest.fail(f"the final worker did not finish (seed {seed}); open: {stuck}")
            _tick_client(data, sender, count)
            time.sleep(0.02)  # pacing the sends while polling the worker's exit
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode == 0:
        return out, []
    stuck = anyio.run(_unfinished, data)
    if stuck and all(known for *_, known in stuck):
        return out, [wid for wid, *_ in stuck if wid.endswith("/child-1")]
    pytest.fail(f"final worker failed (seed {seed}): {out!r}; open runs: {stuck}")


async def _pass_on_cancel(data: Path, children: list[str], reason: str) -> None:
    """What the engine should have done: cancel the children whose parent was cancelled."""
    store = LmdbStore(data, role="client")
    try:
        for child in children:
            now = datetime.now(UTC)
            await store.put_inbox(InboxCommand("cancel", "default", child, now, comment=reason))
    finally:
        await store.aclose()


async def _unfinished(data: Path) -> list[tuple[str, str, str, list[str], bool]]:
    """Open runs: (id, status, reason or what it waits on, its last events, whether it shows
    the known bug of test_cancel_reaches_child_after_crash)."""
    store = LmdbStore(data, role="client")
    try:
        out = []
        for r in await store.scan_active():
            events = await store.read_current_run(r.workflow_id)
            tail = [f"{e.seq}:{type(e).__name__}" for e in events[-4:]]
            out.append(
                (
                    r.workflow_id,
                    r.status.value,
                    r.reason or ",".join(r.waiting_on),
                    tail,
                    await _cancel_lost(store, r.workflow_id),
                )
            )
        return out
    finally:
        await store.aclose()


async def _cancel_lost(store: EventStore, workflow_id: str) -> bool:
    """A cancel_tree parent with a cancellation recorded whose child never heard of it and
    waits on its one-hour timer (or that child)."""
    parent_id = workflow_id.removesuffix("/child-1")
    if not parent_id.endswith("-cancel_tree"):
        return False
    child_id = f"{parent_id}/child-1"
    parent = await store.read_current_run(parent_id)
    child = await store.read_current_run(child_id)
    record = await store.get_workflow(child_id)
    return (
        any(isinstance(e, ev.WorkflowCancelRequested) for e in parent)
        and not any(isinstance(e, ev.WorkflowCancelRequested) for e in child)
        and record is not None
        and any(entry.startswith("timer:#1 ") for entry in record.waiting_on)
    )


# --- the reference: the same workload, uninterrupted, in this process ---------------------------


async def run_reference(tmp_path: Path, count: int, seed: int) -> dict[str, list[ev.Event]]:
    """Run the workload on an in-memory engine without kills; returns every history."""
    store = MemoryStore()
    log = tmp_path / "reference" / "effects.log"
    log.parent.mkdir()
    sender = Sender(random.Random(seed ^ 0xFEED), w.marks(log))
    w.open_log(log)
    try:
        async with aion.Engine(
            store, workflows=w.WORKFLOWS, inbox_interval=w.INBOX_INTERVAL
        ) as engine:
            handles = [
                await engine.start(w.TOP_LEVEL[w.kind(i)], i, workflow_id=w.workflow_id(i))
                for i in range(count)
            ]
            async with anyio.create_task_group() as tg:

                async def send() -> None:
                    while True:
                        await sender.tick(store, count)
                        await anyio.sleep(sender.rng.uniform(0.005, 0.05))

                tg.start_soon(send)
                with anyio.fail_after(60):
                    for handle in handles:
                        await w.wait_ended(handle)
                tg.cancel_scope.cancel()
        return await _histories(store)
    finally:
        w.close_log()


async def _histories(store: EventStore) -> dict[str, list[ev.Event]]:
    records = await collect_pages(lambda cursor: store.list_workflows(limit=500, cursor=cursor))
    return {r.workflow_id: list(await store.read_history(r.workflow_id)) for r in records}


# --- normalising histories ----------------------------------------------------------------------


@dataclass
class Shape:
    """A history, normalised for comparison (see the module docstring)."""

    workflow_id: str  # with run ids replaced by run labels
    status: str
    result: Any
    sequence: list[tuple[Any, ...]]
    signals: list[tuple[str, Any, str]]
    restarted: list[tuple[str, str, int, int]]  # (workflow id, run id, step, attempt)


def _run_labels(histories: dict[str, list[ev.Event]]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for history in histories.values():
        runs = [e.run_id for e in history if isinstance(e, ev.WorkflowStarted)]
        labels.update({run: f"run{n}" for n, run in enumerate(runs)})
    return labels


def _norm_id(workflow_id: str, labels: dict[str, str]) -> str:
    return "/".join(labels.get(part, part) for part in workflow_id.split("/"))


def _shape(workflow_id: str, history: list[ev.Event], labels: dict[str, str]) -> Shape:
    def label(run_id: str | None) -> str | None:
        return None if run_id is None else labels.get(run_id, "?unknown run")

    def norm(wid: str | None) -> str | None:
        return None if wid is None else _norm_id(wid, labels)

    items: list[tuple[Any, ...]] = []
    kinds: list[type[ev.Event]] = []
    signals: list[tuple[str, Any, str]] = []
    restarted: list[tuple[str, str, int, int]] = []
    started: set[tuple[str, int]] = set()
    run = ""
    for e in history:
        item: tuple[Any, ...]
        match e:
            case ev.WorkflowStarted():
                run = e.run_id
                item = (
                    e.workflow_type,
                    decode_payload(e.input),
                    norm(e.parent_workflow_id),
                    label(e.parent_run_id),
                    label(e.continued_from_run_id),
                )
            case ev.StepScheduled():
                item = (e.step_seq, e.name, decode_payload(e.args))
            case ev.StepStarted():
                if (run, e.step_seq) in started:
                    restarted.append((workflow_id, run, e.step_seq, e.attempt))
                    continue
                started.add((run, e.step_seq))
                item = (e.step_seq, e.attempt)
            case ev.StepCompleted():
                item = (e.step_seq, e.attempt, decode_payload(e.result))
            case ev.TimerScheduled():
                item = (e.timer_seq, e.name, round((e.due - e.at).total_seconds(), 6))
            case ev.TimerFired() | ev.TimerCancelled():
                item = (e.timer_seq,)
            case ev.ChildStarted():
                item = (
                    e.child_seq,
                    norm(e.child_workflow_id),
                    e.workflow_type,
                    decode_payload(e.input),
                )
            case ev.ChildCompleted():
                item = (e.child_seq, decode_payload(e.result))
            case ev.ChildFailed():
                item = (e.child_seq, e.error_type)
            case ev.SignalReceived():
                signals.append((e.name, decode_payload(e.payload), e.signal_id))
                continue
            case ev.WorkflowCancelRequested() | ev.WorkflowCancelled():
                item = (e.reason,)
            case ev.WorkflowContinuedAsNew():
                item = (label(e.new_run_id), e.workflow_type, decode_payload(e.input))
            case ev.WorkflowCompleted():
                item = (decode_payload(e.result),)
            case _:  # nothing else belongs in these histories: keep all of it, visibly
                item = (repr(e),)
        items.append((type(e).__name__, *item))
        kinds.append(type(e))
    # Concurrent completions of one kind: order them by number within each maximal run.
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and kinds[end] is kinds[start] and kinds[start] in FACTS:
            end += 1
        items[start:end] = sorted(items[start:end], key=lambda item: item[1])
        start = end
    last = history[-1]
    match last:
        case ev.WorkflowCompleted():
            status, result = "completed", decode_payload(last.result)
        case ev.WorkflowCancelled():
            status, result = "cancelled", None
        case _:
            status, result = type(last).__name__, None
    return Shape(_norm_id(workflow_id, labels), status, result, items, signals, restarted)


def _shapes(histories: dict[str, list[ev.Event]]) -> dict[str, Shape]:
    """Normalised histories by normalised workflow id."""
    labels = _run_labels(histories)
    shapes = [_shape(wid, history, labels) for wid, history in histories.items()]
    return {s.workflow_id: s for s in shapes}


def _signals_expected(shape: Shape) -> list[tuple[str, Any, str]]:
    """The signals workflow ``shape`` must have recorded: every one, in order, once."""
    index = int(shape.workflow_id.split("-")[1])
    if shape.workflow_id != w.workflow_id(index) or w.kind(index) != "signals":
        return []  # a child, or another kind
    return [("add", w.signal_payload(index, k), "") for k in range(w.signal_count(index))]


def _expected_outcomes(count: int) -> dict[str, tuple[str, Any]]:
    outcomes: dict[str, tuple[str, Any]] = {}
    for i in range(count):
        outcomes[w.workflow_id(i)] = w.expected(i)
        outcomes.update(w.expected_children(i))
    return outcomes


def _diff(ref: list[tuple[Any, ...]], got: list[tuple[Any, ...]]) -> str:
    lines = difflib.unified_diff(
        [repr(x) for x in ref], [repr(x) for x in got], "uninterrupted", "crashed", lineterm=""
    )
    return "\n".join(lines)


# --- checking the outcome -----------------------------------------------------------------------


def check_reference(tmp_path: Path, histories: dict[str, list[ev.Event]], count: int) -> None:
    """The reference itself ran every step exactly once and gave the computed outcomes."""
    shapes = _shapes(histories)
    outcomes = _expected_outcomes(count)
    assert set(shapes) == set(outcomes)
    for wid, shape in shapes.items():
        assert (shape.status, shape.result) == outcomes[wid], f"reference {wid}"
        assert shape.signals == _signals_expected(shape), f"reference {wid}: {shape.signals}"
        assert not shape.restarted, f"reference {wid}"
    effects = Counter(
        tuple(line.split()[:3])
        for line in (tmp_path / "reference" / "effects.log").read_text().splitlines()
    )
    assert set(effects.values()) == {1}, "a step ran twice without any crash"


async def check_crashed(
    tmp_path: Path, reference: dict[str, list[ev.Event]], count: int, sender: Sender
) -> tuple[int, int]:
    """Everything the module docstring promises, for the data directory of the kill loop.

    Returns the number of step re-runs and of StepStarted events recorded again.
    """
    data = tmp_path / "data"
    restarted = 0
    effects: Counter[tuple[str, str, int]] = Counter()
    per_process: Counter[tuple[str, str, int, str]] = Counter()
    for line in (tmp_path / "effects.log").read_text().splitlines():
        wid, run, seq, attempt, pid = line.split()
        assert attempt == "1", line  # no step fails, so every execution is attempt 1
        effects[(wid, run, int(seq))] += 1
        per_process[(wid, run, int(seq), pid)] += 1
    twice = [key for key, n in per_process.items() if n > 1]
    assert not twice, f"steps run twice by one process: {twice[:5]}"

    store = LmdbStore(data)  # every worker is dead: this takes over the lock
    try:
        histories = await _histories(store)
        listed = await collect_pages(lambda cursor: store.list_workflows(limit=500, cursor=cursor))
        records = {r.workflow_id: r for r in listed}
        assert await store.scan_active() == [], "open runs left"
        assert await store.due_timers(FAR_FUTURE) == [], "timer rows left behind"
        assert await store.read_inbox() == [], "inbox commands left"
    finally:
        await store.aclose()

    outcomes = _expected_outcomes(count)
    ref_shapes = _shapes(reference)
    labels = _run_labels(histories)
    assert {_norm_id(wid, labels) for wid in histories} == set(outcomes)
    recorded_steps: set[tuple[str, str, int]] = set()
    for wid, history in histories.items():
        shape = _shape(wid, history, labels)
        ref = ref_shapes[shape.workflow_id]
        where = f"workflow {wid}"
        assert [e.seq for e in history] == list(range(1, len(history) + 1)), f"{where}: seqs"
        # The state an uninterrupted execution gives, computed from the inputs.
        assert (shape.status, shape.result) == outcomes[shape.workflow_id], where
        assert records[wid].status.value == shape.status, where
        # The same history as the uninterrupted run, modulo what the docstring lists.
        assert shape.sequence == ref.sequence, f"{where}:\n{_diff(ref.sequence, shape.sequence)}"
        # Each signal sent recorded exactly once, in the order sent.
        sent = [("add", p, "") for p in sender.signals.get(wid, [])]
        assert shape.signals == sent == _signals_expected(shape), f"{where}: {shape.signals}"
        # Re-recorded StepStarted only for steps that really ran again.
        for _, run, step, _ in shape.restarted:
            assert effects[(wid, run, step)] > 1, f"{where}: step {step} restarted, ran once"
        restarted += len(shape.restarted)
        # Each run replays through the driver to its recorded outcome.
        first = history[0]
        assert isinstance(first, ev.WorkflowStarted)
        replayed = aion.testing.replay(TYPES[first.workflow_type], history, workflows=w.WORKFLOWS)
        assert replayed.status == shape.status, f"{where}: replay {replayed}"
        assert replayed.result == shape.result, where
        run = ""
        for e in history:
            if isinstance(e, ev.WorkflowStarted):
                run = e.run_id
            elif isinstance(e, ev.StepScheduled):
                recorded_steps.add((wid, run, e.step_seq))
    # At least once: every recorded step ran. Nothing ran that the history does not know of:
    # a step execution without its recorded StepScheduled would mean a lost event.
    never = recorded_steps - set(effects)
    assert not never, f"recorded steps that never ran: {sorted(never)[:5]}"
    unrecorded = set(effects) - recorded_steps
    assert not unrecorded, f"steps that ran but are not recorded: {sorted(unrecorded)[:5]}"
    reruns = sum(n - 1 for n in effects.values())

    # A final engine on the directory finds nothing to repair, nor does `aion recover`.
    async with aion.Engine(data, workflows=w.WORKFLOWS) as engine:
        report = engine.recovery
    assert report.repairs == (), report.summary()
    assert (report.runs_scanned, report.timers_overdue, report.inbox_pending) == (0, 0, 0)
    cli = subprocess.run(
        [sys.executable, "-m", "aion.cli", "recover", "--data", str(data)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "0 open runs scanned" in cli.stdout, cli.stdout
    assert "to repair (dry run): nothing" in cli.stdout, cli.stdout
    console = Path(sys.executable).with_name("aion")
    if console.exists():
        cli = subprocess.run(
            [str(console), "recover", "--data", str(data), "--json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        report_json = json.loads(cli.stdout)
        assert (report_json["repairs"], report_json["applied"]) == ([], False), cli.stdout
    return reruns, restarted


def _run(
    tmp_path: Path, *, count: int, kills: int, max_delay: float, first_wave: int, stall: float
) -> None:
    seed = _seed()
    began = time.monotonic()
    reference = anyio.run(run_reference, tmp_path, count, seed)
    check_reference(tmp_path, reference, count)
    reference_seconds = time.monotonic() - began
    stats, sender = run_crash_loop(
        tmp_path,
        seed=seed,
        count=count,
        kills=kills,
        max_delay=max_delay,
        first_wave=first_wave,
        final_stall=stall,
        child_cancel_reason=_child_cancel_reason(reference),
    )
    stats.reference_seconds = reference_seconds
    stats.reruns, stats.restarted_steps = anyio.run(
        check_crashed, tmp_path, reference, count, sender
    )
    print(f"recovery crash loop: {stats}")
    assert not stats.lost_cancels, (
        f"seed {seed}: a kill lost the cancellation of {stats.lost_cancels} children (the test "
        "passed it on to finish its other checks)"
    )


def _child_cancel_reason(reference: dict[str, list[ev.Event]]) -> str:
    """The reason the engine gives a child when it passes its parent's cancellation on."""
    for wid, history in reference.items():
        if wid.endswith("-cancel_tree/child-1"):
            for e in history:
                if isinstance(e, ev.WorkflowCancelRequested) and e.reason is not None:
                    return e.reason
    raise AssertionError("the reference has no cancelled child")


def test_recovery_crash_loop_quick(tmp_path: Path) -> None:
    """A few kills over a few dozen workflows of every kind (default suite)."""
    _run(tmp_path, count=24, kills=3, max_delay=0.6, first_wave=18, stall=10.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_recovery_crash_loop_many_kills(tmp_path: Path) -> None:
    """A hundred and fifty kills at random moments over 300 workflows of every kind."""
    _run(tmp_path, count=300, kills=150, max_delay=0.6, first_wave=60, stall=20.0)


# --- bugs found by this loop, reproduced deterministically ---------------------------------------


async def _wait_until(what: Callable[[], Any], seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not await what():
            await anyio.sleep(0.01)


def test_cancel_reaches_child_after_crash(tmp_path: Path) -> None:
    anyio.run(_cancel_reaches_child_after_crash, tmp_path)


async def _cancel_reaches_child_after_crash(tmp_path: Path) -> None:
    index = w.KINDS.index("cancel_tree")
    wid, child = w.workflow_id(index), f"{w.workflow_id(index)}/child-1"
    data = tmp_path / "data"
    w.open_log(tmp_path / "effects.log")
    try:
        async with aion.Engine(data, workflows=w.WORKFLOWS) as engine:
            await engine.start(w.cancel_tree, index, workflow_id=wid)
            store = engine.store
            await _wait_until(lambda: at_cancel_point(store, index))
        # What the parent's actor commits when the cancellation arrives; the process dies
        # before the child hears of it (the write the engine would have made, made here).
        store = LmdbStore(data)
        try:
            head = await store.head(wid)
            record = await store.get_workflow(wid)
            assert record is not None
            requested = ev.WorkflowCancelRequested(
                seq=head + 1, at=datetime.now(UTC), reason=w.cancel_reason(index)
            )
            await store.commit(Write(appends=[Append(wid, [requested], head)], workflows=[record]))
        finally:
            await store.aclose()
        async with aion.Engine(data, workflows=w.WORKFLOWS) as engine:
            with anyio.fail_after(3), pytest.raises(aion.WorkflowCancelled):
                await engine.handle(wid).result()
            assert (await engine.describe(child)).status is Status.CANCELLED
    finally:
        w.close_log()


def test_cli_module_recover_json(tmp_path: Path) -> None:
    LmdbStore(tmp_path / "data").close()
    cli = subprocess.run(
        [sys.executable, "-m", "aion.cli", "recover", "--data", str(tmp_path / "data"), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["repairs"] == []
