"""Generated workflow programs: replay determinism and crash recovery, by Hypothesis.

One generic workflow (``program_wf``) interprets a *program*: a list of operations (a step, a
durable sleep, a signal wait with or without timeout, a failing step with or without a retry,
a gather of steps and sleeps, a child running its own program, a step nobody awaits,
continue-as-new with the rest of the program, and captures of ``ctx.now()``, ``ctx.random()``
and ``ctx.uuid4()``). Hypothesis generates programs, schedules of signals and the interleaving
of everything that can happen, and checks:

(a) replaying a recorded history issues the same commands, yields the same now/random/uuid
    values and the same outcome, and issues nothing new; the random values are those of the
    run's identity; a run's outcome is its last event;
(b) a run interrupted at a generated point and recovered ends like an uninterrupted one: with
    the driver alone (replay a prefix of the history into a fresh driver, then continue live:
    the same events, values and outcome), and with a real engine on an LMDB store stopped at a
    generated moment and restarted (the same histories, event for event and time for time,
    and the same results; only run ids, and the random values drawn from them, differ);
(c) the engine ends where a pure model of it (the driver and the engine's recorder, driven by
    the simulator below) ends.

The simulator (:class:`World`) records with the engine's own recorder, one round per message as
the run actors do, and carries out the rounds' effects itself, but it chooses freely, by a
Hypothesis draw, which step finishes next, which child reports and whether time moves first;
time jumps to the next timer or signal.

Times are made tie-free by construction: every timed thing (sleep, signal timeout, retry
interval, signal arrival) lasts a multiple of 10 s plus its own power of two of microseconds,
so no two timers or signals ever fall due at the same instant, and the order of everything
is the same in every execution.
"""

from __future__ import annotations

import contextlib
import heapq
import tempfile
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, assert_never

import anyio
import anyio.lowlevel
import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aion
import aion.testing
from aion import events as ev
from aion._clock import from_timestamp
from aion._codec import DEFAULT_MAX_PAYLOAD_BYTES, decode_payload, encode_payload
from aion._engine._config import RuntimeConfig
from aion._engine._messages import ChildDone, Message, StepDone, TimerDue
from aion._engine._messages import Signal as SignalMessage
from aion._engine._recorder import Recorder
from aion._engine._round import (
    CancelChild,
    CheckChild,
    DispatchStep,
    Effect,
    HoldTimer,
    Mail,
    ReleaseTimer,
    Round,
    RunClosed,
    RunStart,
)
from aion._engine._state import Actor
from aion._replay import Driver, definition_of
from aion._replay import _commands as c
from aion.errors import StepError, WaitTimedOut
from aion.store import MemoryStore, TimerRow, WorkflowRecord

T0 = datetime(2026, 3, 1, tzinfo=UTC)
ROOT = "root"
NAMES = ("a", "b")
MAX_BITS = 22  # 2**21 us < 2.1 s: all bits together stay under one 10 s unit

# --- the interpreted workflow ----------------------------------------------------------------


async def compute(x: int) -> int:
    return x * 3 + 1


class Boom(Exception):
    pass


async def explode(x: int) -> int:
    raise Boom(f"boom {x}")


# Values captured by the workflow code as it runs (live or replaying), while a test listens.
_SINK: list[tuple[str, str, str, Any]] | None = None


def _capture(ctx: aion.Context, kind: str, value: Any) -> Any:
    if _SINK is not None:
        _SINK.append((ctx.info.workflow_id, ctx.info.run_id, kind, value))
    return value


def seconds(tens: int, bit: int) -> float:
    """``tens`` x 10 s plus 2**bit microseconds: no two timed things ever coincide."""
    return tens * 10 + (1 << bit) / 1_000_000


def _leaf(ctx: aion.Context, op: list[Any]) -> Any:
    if op[0] == "step":
        return ctx.step(compute, op[1])
    assert op[0] == "sleep", op
    return ctx.sleep(seconds(op[1], op[2]))


async def _run_op(ctx: aion.Context, op: list[Any]) -> Any:
    match op[0]:
        case "step":
            return await ctx.step(compute, op[1])
        case "sleep":
            await ctx.sleep(seconds(op[1], op[2]))
            return None
        case "fail":  # ["fail", x, retried, bit]
            retry = (
                aion.RetryPolicy(max_attempts=2, initial_interval=seconds(1, op[3]), backoff=1.0)
                if op[2]
                else aion.RetryPolicy(max_attempts=1)
            )
            try:
                await ctx.step(explode, op[1], retry=retry)
            except StepError as exc:
                return [exc.error_type, exc.attempts]
            raise AssertionError("explode() returned")
        case "signal":  # ["signal", name, timeout tens or None, bit]
            timeout = None if op[2] is None else seconds(op[2], op[3])
            try:
                return await ctx.wait_signal(op[1], timeout=timeout)
            except WaitTimedOut:
                return "timed out"
        case "gather":
            return await ctx.gather(*[_leaf(ctx, item) for item in op[1]])
        case "child":
            return await ctx.child(program_wf, op[1])
        case "detach":  # a step nobody awaits
            ctx.step(compute, op[1])
            return None
        case "random":
            return _capture(ctx, "random", ctx.random().random())
        case "uuid":
            return _capture(ctx, "uuid", str(ctx.uuid4()))
        case "now":
            return _capture(ctx, "now", ctx.now().isoformat())
    raise AssertionError(f"unknown op {op!r}")


@aion.workflow(name="gen.program")
async def program_wf(ctx: aion.Context, program: list[Any]) -> list[Any]:
    trace: list[Any] = []
    for i, op in enumerate(program):
        if op[0] == "can":  # the rest of the program runs in a fresh run
            ctx.continue_as_new(program[i + 1 :])
        trace.append([op[0], await _run_op(ctx, op)])
    return trace


@aion.workflow(name="gen.probe")
async def probe_wf(ctx: aion.Context, kinds: list[str]) -> list[Any]:
    """The random values a run of this identity draws, in order (see ``expected_randoms``)."""
    return [ctx.random().random() if k == "random" else str(ctx.uuid4()) for k in kinds]


DEFINITION = definition_of(program_wf)


def expected_randoms(started: ev.WorkflowStarted, kinds: list[str]) -> list[Any]:
    """What ctx.random()/uuid4() must give, in order, for the run that ``started`` began."""
    driver = Driver(definition_of(probe_wf))
    driver.apply(
        ev.WorkflowStarted(
            seq=1,
            at=started.at,
            workflow_id=started.workflow_id,
            run_id=started.run_id,
            workflow_type=started.workflow_type,
            input=encode_payload([kinds]),
            tenant=started.tenant,
        )
    )
    assert isinstance(driver.outcome, c.CompleteWorkflow)
    return list(decode_payload(driver.outcome.result))


def segments(history: list[ev.Event]) -> list[list[ev.Event]]:
    """The run segments of a history (continue-as-new starts one)."""
    out: list[list[ev.Event]] = []
    for event in history:
        if isinstance(event, ev.WorkflowStarted) or not out:
            out.append([])
        out[-1].append(event)
    return out


def sent_signals(history: list[ev.Event]) -> int:
    """How many signals were sent: those recorded, less the copies continue-as-new handed to
    the successor (what a run received and never consumed)."""
    global _SINK
    received = sum(isinstance(e, ev.SignalReceived) for e in history)
    sink, _SINK = _SINK, None  # this replay captures nothing
    try:
        for segment in segments(history)[:-1]:
            driver = Driver(DEFINITION)
            driver.replay(segment)
            received -= len(driver.unconsumed_signals())
    finally:
        _SINK = sink
    return received


def check_randoms(history: list[ev.Event]) -> None:
    """The random values in a completed run's result are those of its identity."""
    for segment in segments(history):
        started, last = segment[0], segment[-1]
        if not isinstance(last, ev.WorkflowCompleted):
            continue
        assert isinstance(started, ev.WorkflowStarted)
        drawn = [e for e in decode_payload(last.result) if e[0] in ("random", "uuid")]
        assert [e[1] for e in drawn] == expected_randoms(started, [e[0] for e in drawn])


# --- generating programs and schedules -------------------------------------------------------


def _number(program: list[Any], bits: list[int]) -> list[Any]:
    """A copy of ``program`` in which every timed operation has its own bit."""
    out: list[Any] = []
    for op in program:
        kind = op[0]
        if kind in ("sleep", "fail", "signal"):
            op = [*op[:-1], bits.pop(0)]
        elif kind == "gather":
            op = ["gather", _number(op[1], bits)]
        elif kind == "child":
            op = ["child", _number(op[1], bits)]
        out.append(list(op))
    return out


def _programs(min_ops: int) -> st.SearchStrategy[list[Any]]:
    step = st.builds(lambda x: ["step", x], st.integers(0, 99))
    sleep = st.builds(lambda t: ["sleep", t, -1], st.integers(1, 3))
    fail = st.builds(lambda x, r: ["fail", x, r, -1], st.integers(0, 9), st.booleans())
    value = st.sampled_from(["random", "uuid", "now"]).map(lambda k: [k])
    names = st.sampled_from(NAMES)
    timed_signal = st.builds(lambda n, t: ["signal", n, t, -1], names, st.integers(1, 4))
    signal = st.builds(lambda n, t: ["signal", n, t, -1], names, st.none() | st.integers(1, 4))
    gather = st.builds(lambda xs: ["gather", xs], st.lists(step | sleep, min_size=1, max_size=3))
    detach = st.builds(lambda x: ["detach", x], st.integers(0, 99))
    can = st.just(["can"])
    child_op = step | sleep | fail | value | timed_signal | detach | can  # no signals for it
    child = st.builds(lambda p: ["child", p], st.lists(child_op, min_size=1, max_size=3))
    op = step | sleep | fail | value | signal | gather | child | detach | can
    return st.lists(op, min_size=min_ops, max_size=5)


@dataclass(frozen=True)
class Signal:
    when: datetime
    name: str
    payload: int


@dataclass(frozen=True)
class Scenario:
    program: list[Any]
    signals: list[Signal]


@st.composite
def scenarios(draw: st.DrawFn, min_ops: int = 1, racing: bool = True) -> Scenario:
    """A program and its signals. ``racing=False`` keeps a step nobody awaits only where its
    run ends in the same activation (last, or before continue-as-new): elsewhere it finishes
    at the same instant as other work, in an order no execution promises to repeat."""
    raw = draw(_programs(min_ops))
    if not racing:
        raw = _calm(raw)
    timed = _count_timed(raw)
    wanted = draw(st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 8)), max_size=3))
    bits = list(range(timed + len(wanted)))
    assert len(bits) <= MAX_BITS
    program = _number(raw, bits)
    signals = sorted(
        (
            Signal(T0 + timedelta(seconds=seconds(tens, bits.pop(0))), name, i)
            for i, (name, tens) in enumerate(wanted)
        ),
        key=lambda s: s.when,
    )
    return Scenario(program, [Signal(s.when, s.name, i) for i, s in enumerate(signals)])


def _calm(program: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i, op in enumerate(program):
        if op[0] == "detach" and i + 1 < len(program) and program[i + 1][0] != "can":
            continue
        out.append(["child", _calm(op[1])] if op[0] == "child" else op)
    return out or [["step", 0]]


def _count_timed(program: list[Any]) -> int:
    n = 0
    for op in program:
        if op[0] in ("sleep", "fail", "signal"):
            n += 1
        elif op[0] in ("gather", "child"):
            n += _count_timed(op[1])
    return n


# --- the simulator: the driver and the engine's recorder, scheduled by Hypothesis ---------------

TENANT = "default"


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> tuple[Any, Exception | None]:
    """Run a step coroutine that never suspends (compute/explode) to its end: (value, error)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value, None
    except Exception as exc:
        return None, exc
    raise AssertionError("a step suspended")


@dataclass
class SimRun:
    """One workflow id of the simulation: its actor (the current run, as the recorder keeps
    it) and its history across runs (the events of its rounds, in commit order)."""

    actor: Actor
    history: list[ev.Event] = field(default_factory=list)

    @property
    def workflow_id(self) -> str:
        return self.actor.key[1]

    @property
    def record(self) -> WorkflowRecord:
        assert self.actor.record is not None
        return self.actor.record

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def done(self) -> bool:
        return self.record.status.is_terminal


def _row_key(row: TimerRow) -> tuple[Any, ...]:
    """A timer row's identity in a store (its run id is not part of it)."""
    return (row.due, row.tenant, row.workflow_id, row.timer_id)


class World:
    """Runs a root workflow and its children with the driver and the engine's own
    :class:`Recorder` (no store, no event loop); ``choose(n)`` picks what happens next among
    ``n`` possibilities: a step in flight finishes, a finished child reports, or (the last
    one) time moves to the next timer, retry or signal.

    The recorder decides every event, row and effect, one round per message as the run actors
    do. The world plays the rest of the engine: a round's events go to the histories and its
    timer rows to a table (as a store applies a write), and its effects become the world's own
    schedule: a dispatched step is in flight, a held timer is timed, a closed child reports to
    its parent. Mail for a closed run records nothing, as with the run actors.

    ``choose=lambda n: 0`` is the engine's order under a manual clock: everything that can
    happen at an instant happens before time moves.
    """

    def __init__(self, scenario: Scenario, choose: Callable[[int], int]) -> None:
        self.now = T0
        self.choose = choose
        self.runs: dict[str, SimRun] = {}
        self.steps: list[tuple[SimRun, str, DispatchStep]] = []  # in flight (with the run id)
        self.timed: list[tuple[datetime, int, TimerRow | Signal]] = []  # heap: (due, n, what)
        self.reports: list[tuple[SimRun, ChildDone]] = []  # (parent, what it is told)
        self.rows: dict[tuple[Any, ...], TimerRow] = {}  # the timer rows a store would hold
        self.captures: list[tuple[str, str, str, Any]] = []
        self._n = 0
        self._run_ids = 0
        self.recorder = Recorder(
            RuntimeConfig(max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES),
            now=lambda: self.now,
            definition={DEFINITION.name: DEFINITION}.get,
            new_driver=Driver,
            new_run_id=self._new_run_id,
        )
        for s in scenario.signals:
            self._at(s.when, s)
        start = RunStart(
            tenant=TENANT,
            workflow_id=ROOT,
            workflow_type=DEFINITION.name,
            input=encode_payload([scenario.program]),
            run_id=self._new_run_id(),
        )
        with self._capturing():
            actor, rnd, blocked = self.recorder.begin(start)
        assert blocked is None, blocked
        self.root = self.runs[ROOT] = SimRun(actor)
        self._commit(self.root, rnd)

    def _new_run_id(self) -> str:
        """Run ids in the order runs start: the same in every simulation of a scenario."""
        self._run_ids += 1
        return f"run{self._run_ids}"

    @contextlib.contextmanager
    def _capturing(self) -> Iterator[None]:
        """The workflow code runs inside the recorder: what it captures is the world's."""
        global _SINK
        _SINK = self.captures
        try:
            yield
        finally:
            _SINK = None

    # recording: the recorder's rounds, committed and carried out

    def _deliver(self, run: SimRun, message: Message) -> None:
        """One round of ``run`` for ``message`` (mail for a closed run records nothing)."""
        if not run.actor.running:
            return
        rnd = Round()
        with self._capturing():
            self.recorder.handle(run.actor, rnd, message)  # raises Blocked: the code diverged
        self._commit(run, rnd)

    def _commit(self, run: SimRun, rnd: Round) -> None:
        """Record ``rnd`` and the children it starts, then carry out the effects: the run's
        own first, then its children's (as the run actors do after a commit)."""
        for who, effects in self._write(run, rnd):
            self._carry_out(who, effects)
        held = {what for _, _, what in self.timed if isinstance(what, TimerRow)}
        rows = set(self.rows.values())
        assert held == rows, f"timers held and rows kept differ: {held ^ rows}"

    def _write(self, run: SimRun, rnd: Round) -> list[tuple[SimRun, list[Effect]]]:
        run.history += rnd.events
        for row in rnd.timers_delete:  # as a store applies a write: deletes, then adds
            self.rows.pop(_row_key(row), None)
        for row in rnd.timers_add:
            assert row not in rnd.timers_delete, "a store would keep this row"
            self.rows[_row_key(row)] = row
        done = [(run, rnd.effects)]
        for child in rnd.children:
            workflow_id = child.actor.key[1]
            assert workflow_id not in self.runs, f"child id {workflow_id!r} is taken"
            assert child.actor.driver is not None, f"child {workflow_id!r} started BLOCKED"
            assert child.append.events == child.round.events and child.append.expected_seq == 0
            self.runs[workflow_id] = SimRun(child.actor)
            done += self._write(self.runs[workflow_id], child.round)
        return done

    def _carry_out(self, run: SimRun, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case DispatchStep():
                    self.steps.append((run, run.run_id, effect))
                case HoldTimer(row=row):
                    self._at(row.due, row)
                case ReleaseTimer(row=row):
                    kept = [t for t in self.timed if t[2] != row]
                    assert len(kept) == len(self.timed) - 1, f"released {row}, never held"
                    self.timed = kept
                    heapq.heapify(self.timed)
                case RunClosed(record=record, outcome=outcome):
                    assert record.workflow_id == run.workflow_id and record.status.is_terminal
                    if record.parent_workflow_id is not None:
                        parent = self.runs[record.parent_workflow_id]
                        done = ChildDone(child_id=record.workflow_id, outcome=outcome)
                        self.reports.append((parent, done))
                case CheckChild() | CancelChild() | Mail():
                    raise AssertionError(f"{effect!r}: no program here asks for it")
                case _:
                    assert_never(effect)

    def _at(self, when: datetime, what: TimerRow | Signal) -> None:
        self._n += 1
        heapq.heappush(self.timed, (when, self._n, what))

    # what can happen

    def run(self) -> World:
        for _ in range(1000):
            options = len(self.steps) + len(self.reports) + (1 if self.timed else 0)
            if not options:
                return self
            choice = self.choose(options)
            if choice < len(self.steps):
                self._finish_step(*self.steps.pop(choice))
            elif choice < len(self.steps) + len(self.reports):
                self._deliver(*self.reports.pop(choice - len(self.steps)))
            else:
                self._advance()
        raise AssertionError("the simulation does not end")

    def _finish_step(self, run: SimRun, run_id: str, dispatch: DispatchStep) -> None:
        command = dispatch.command
        value, error = _run_coroutine(command.fn(*command.args, **command.kwargs))
        done = StepDone(
            seq=command.seq, attempt=dispatch.attempt, run_id=run_id, value=value, error=error
        )
        self._deliver(run, done)  # of a closed or continued run: nothing is recorded

    def _advance(self) -> None:
        when, _, what = heapq.heappop(self.timed)
        assert not self.timed or self.timed[0][0] > when, "two timed things coincide"
        assert when >= self.now
        self.now = when
        if isinstance(what, TimerRow):
            run = self.runs[what.workflow_id]
            # The recorder releases the timers of a run that closes or continues as new.
            assert run.actor.running and what.run_id == run.run_id, (what, run.record)
            self._deliver(run, TimerDue(row=what))
        else:  # a closed workflow takes no signals
            payload = encode_payload(what.payload)
            self._deliver(self.root, SignalMessage(name=what.name, payload=payload))


def replay_with_captures(history: list[ev.Event]) -> tuple[Driver, list[Any]]:
    global _SINK
    sink: list[Any] = []
    driver = Driver(DEFINITION)
    _SINK = sink
    try:
        driver.replay(history)
    finally:
        _SINK = None
    return driver, sink


def continue_from(history: list[ev.Event], cut: int) -> tuple[Driver, list[Any]]:
    """Replay ``history[:cut]`` into a fresh driver, then feed the rest live: every command
    the code issues must be exactly the next recorded command event."""
    global _SINK
    sink: list[Any] = []
    driver = Driver(DEFINITION)
    _SINK = sink
    try:
        driver.replay(history[:cut])
        issued = deque(driver.take_commands())
        for event in history[cut:]:
            if not c.is_command_event(event):
                issued.extend(driver.apply(event))
                continue
            assert issued, f"history has {event}, the code issued nothing more"
            command = issued.popleft()
            extra: dict[str, Any] = {}
            if isinstance(event, ev.ChildStarted):
                extra["child_run_id"] = event.child_run_id
            if isinstance(event, ev.WorkflowContinuedAsNew):
                extra["new_run_id"] = event.new_run_id
            assert c.to_event(command, event.seq, event.at, **extra) == event
        assert not issued, f"the code issued unrecorded commands: {list(issued)}"
    finally:
        _SINK = None
    return driver, sink


def check_outcome(outcome: c.Command | None, last: ev.Event) -> None:
    """The driver's outcome is what the segment's last event records (or none yet)."""
    match last:
        case ev.WorkflowCompleted():
            assert outcome == c.CompleteWorkflow(last.result)
        case ev.WorkflowFailed():
            assert isinstance(outcome, c.FailWorkflow), outcome
            assert (outcome.error_type, outcome.message) == (last.error_type, last.message)
        case ev.WorkflowContinuedAsNew():
            assert outcome == c.ContinueAsNew(last.workflow_type, last.input)
        case _:
            assert outcome is None, (outcome, last)


def check_world(world: World, cuts: Callable[[int], int]) -> None:
    for run in world.runs.values():
        history = run.history
        assert [e.seq for e in history] == list(range(1, len(history) + 1))
        check_randoms(history)
        for segment in segments(history):
            started = segment[0]
            assert isinstance(started, ev.WorkflowStarted)
            live = [x for x in world.captures if x[:2] == (run.workflow_id, started.run_id)]
            # (a) the recorded run replays: same commands (matched one by one), same values,
            # same outcome, nothing new.
            driver, captured = replay_with_captures(segment)
            assert driver.take_commands() == []
            check_outcome(driver.outcome, segment[-1])
            assert captured == live
            # (b) interrupted at a point: replay a prefix, continue live (and all live).
            points = [k for k in range(len(segment) + 1) if k in (0, len(segment))
                      or not c.is_command_event(segment[k])]  # fmt: skip
            for cut in {0, points[cuts(len(points))]}:
                driver, captured = continue_from(segment, cut)
                check_outcome(driver.outcome, segment[-1])
                assert captured == live
        assert run.done == isinstance(history[-1], ev.WorkflowCompleted | ev.WorkflowFailed)


def _sim_property(scenario: Scenario, data: st.DataObject) -> None:
    world = World(scenario, lambda n: data.draw(st.integers(0, n - 1), label="next"))
    world.run()
    ended = "ended" if world.root.done else "waits"
    hypothesis.event(f"workflows: {len(world.runs)}, root {ended}")
    check_world(world, lambda n: data.draw(st.integers(0, n - 1), label="cut"))


FAST = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEAVY = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(FAST, max_examples=100)
@given(scenario=scenarios(), data=st.data())
def test_generated_programs_replay_and_resume_in_the_driver(
    scenario: Scenario, data: st.DataObject
) -> None:
    _sim_property(scenario, data)


@pytest.mark.slow
@HEAVY
@given(scenario=scenarios(min_ops=3), data=st.data())
def test_generated_programs_replay_and_resume_in_the_driver_heavy(
    scenario: Scenario, data: st.DataObject
) -> None:
    _sim_property(scenario, data)


# --- the real engine: manual clock, uninterrupted vs stopped-and-restarted ---------------------


@dataclass
class Crash:
    action: int  # stop after the start and this many clock moves / signal deliveries
    checkpoints: int  # ... and after letting the engine run this many scheduling rounds
    signal_in_flight: bool  # when the action is a signal: stop while it is being delivered


@dataclass
class Execution:
    histories: dict[str, list[ev.Event]]
    actions: int
    crashed: bool = False


def _engine(target: Any, clock: aion.testing.ManualClock) -> aion.Engine:
    return aion.Engine(
        target,
        workflows=[program_wf],
        clock=clock,
        durable=False,  # the process survives its "crash": unsynced commits are not lost
        activation_workers=4,
        max_concurrent_steps=4,
    )


async def _root_closed(engine: aion.Engine) -> bool:
    return (await engine.describe(ROOT)).status.is_terminal


async def _drive(
    engine: aion.Engine,
    clock: aion.testing.ManualClock,
    signals: list[Signal],
    crash: Crash | None,
    done: int,
    tg: anyio.abc.TaskGroup,
) -> tuple[int, bool]:
    """Move time (to the next timer or signal) and deliver signals until the root closes or
    nothing can happen any more. Returns (actions taken, whether it stopped for the crash)."""
    actions = done
    if crash is not None and crash.action == actions:  # right after the start
        for _ in range(crash.checkpoints):
            await anyio.lowlevel.checkpoint()
        return actions, True
    pending = signals[sent_signals(await engine.store.read_history(ROOT)) :]
    while True:
        await engine.wait_idle()
        if await _root_closed(engine):
            return actions, False
        deadline = clock.next_deadline()
        if pending and (deadline is None or pending[0].when.timestamp() < deadline):
            signal = pending.pop(0)
            clock.set_time(signal.when.timestamp())
            actions += 1
            if crash is not None and crash.action == actions and crash.signal_in_flight:
                tg.start_soon(_send_in_flight, engine, signal)
                for _ in range(crash.checkpoints):
                    await anyio.lowlevel.checkpoint()
                return actions, True
            await _send(engine, signal)
        elif deadline is not None:
            clock.set_time(deadline)
            actions += 1
        else:
            return actions, False  # it waits for a signal nobody sends
        assert actions < 500, "the workflow does not settle"
        if crash is not None and crash.action == actions:
            for _ in range(crash.checkpoints):
                await anyio.lowlevel.checkpoint()
            return actions, True


async def _send(engine: aion.Engine, signal: Signal) -> None:
    with contextlib.suppress(aion.WorkflowClosed):  # it ended first
        await engine.signal(ROOT, signal.name, signal.payload)


async def _send_in_flight(engine: aion.Engine, signal: Signal) -> None:
    # The engine stops under it: recorded or not, the restart reads which from the history.
    with contextlib.suppress(aion.AionError):
        await _send(engine, signal)


async def _histories(engine: aion.Engine) -> dict[str, list[ev.Event]]:
    out: dict[str, list[ev.Event]] = {}
    cursor = None
    while True:
        page = await engine.store.list_workflows(limit=100, cursor=cursor)
        for record in page.items:
            out[record.workflow_id] = await engine.store.read_history(record.workflow_id)
        cursor = page.next_cursor
        if cursor is None:
            return out


async def execute(scenario: Scenario, target: Any, crash: Crash | None) -> Execution:
    """Run the scenario on an engine; with ``crash``, stop the engine at that moment and
    start a new one on the same store (``target`` is a directory then)."""
    clock = aion.testing.ManualClock(T0)
    actions, crashed = 0, False
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            async with _engine(target, clock) as engine:
                await engine.start(program_wf, scenario.program, workflow_id=ROOT)
                actions, crashed = await _drive(engine, clock, scenario.signals, crash, 0, tg)
                if not crashed:
                    return Execution(await _histories(engine), actions)
            tg.cancel_scope.cancel()  # a signal left in flight by the crash
        # Restart on the same data, at the same moment, and carry on.
        clock = aion.testing.ManualClock(from_timestamp(clock.now()))
        async with anyio.create_task_group() as tg, _engine(target, clock) as engine:
            await engine.start(program_wf, scenario.program, workflow_id=ROOT)  # idempotent
            actions, _ = await _drive(engine, clock, scenario.signals, None, actions, tg)
            return Execution(await _histories(engine), actions, crashed=True)


_RUN_IDS = {"run_id", "child_run_id", "new_run_id", "parent_run_id", "continued_from_run_id"}


def _mask(trace: Any) -> Any:
    """A trace with its random values (which depend on run ids) blanked out."""
    out = []
    for kind, value in trace:
        if kind in ("random", "uuid"):
            value = "*"
        elif kind == "child":
            value = _mask(value)
        out.append([kind, value])
    return out


def _rename(text: str | None, names: dict[str, str]) -> str | None:
    for run_id, name in names.items():
        text = text.replace(run_id, name) if text else text
    return text


def comparable(histories: dict[str, list[ev.Event]]) -> dict[str, list[Any]]:
    """The histories with run ids (and the values drawn from them) taken out.

    Run ids are random; a workflow id that contains one (a child's default id may) gets the
    run's place instead: the k-th run of the workflow named W is ``W#k``.
    """
    names: dict[str, str] = {}
    order = [ROOT]
    for workflow_id in order:  # from the root down, in the order children were started
        name = _rename(workflow_id, names)
        for k, segment in enumerate(segments(histories[workflow_id])):
            names[segment[0].run_id] = f"{name}#{k}"  # type: ignore[attr-defined]
        order += [
            e.child_workflow_id for e in histories[workflow_id] if isinstance(e, ev.ChildStarted)
        ]
    assert sorted(order) == sorted(histories), "a workflow nobody started, or one twice"
    out: dict[str, list[Any]] = {}
    for workflow_id, history in histories.items():
        events = out[str(_rename(workflow_id, names))] = []
        for event in history:
            fields: dict[str, Any] = {}
            for field_name in event.__struct_fields__:
                if field_name in _RUN_IDS:
                    continue
                value = getattr(event, field_name)
                if field_name == "result" and isinstance(
                    event, ev.WorkflowCompleted | ev.ChildCompleted
                ):
                    value = _mask(decode_payload(value))
                elif field_name.endswith("workflow_id"):
                    value = _rename(value, names)
                fields[field_name] = value
            events.append((str(event.__struct_config__.tag), fields))
    return out


def final(history: list[ev.Event]) -> tuple[str, Any]:
    """How a history ends: its outcome (random values blanked) or "waiting"."""
    match history[-1]:
        case ev.WorkflowCompleted() as done:
            return "completed", _mask(decode_payload(done.result))
        case ev.WorkflowFailed() as failed:
            return "failed", (failed.error_type, failed.message)
    return "waiting", None


_OUTCOMES = (
    ev.WorkflowCompleted,
    ev.WorkflowFailed,
    ev.WorkflowCancelled,
    ev.WorkflowContinuedAsNew,
)


def check_recorded(execution: Execution) -> None:
    """(a) for engine-recorded histories: replay gives the recorded outcome, nothing new."""
    for workflow_id, history in execution.histories.items():
        assert [e.seq for e in history] == list(range(1, len(history) + 1)), workflow_id
        for segment in segments(history):
            ends = [i for i, e in enumerate(segment) if isinstance(e, _OUTCOMES)]
            assert ends in ([], [len(segment) - 1]), f"{workflow_id}: the outcome is not last"
        tags = [e.__struct_config__.tag for e in history]
        assert "workflow.blocked" not in tags, (workflow_id, history)
        replayed = aion.testing.replay(program_wf, history)
        assert replayed.pending_commands == (), (workflow_id, replayed)
        last = history[-1]
        if isinstance(last, ev.WorkflowCompleted):
            assert replayed.status == "completed"
            assert replayed.result == decode_payload(last.result)
        elif isinstance(last, ev.WorkflowFailed):
            assert replayed.status == "failed"
            assert replayed.error == f"{last.error_type}: {last.message}"
        else:
            assert replayed.status == "running", (workflow_id, replayed)
        check_randoms(history)


async def _engine_property(scenario: Scenario, data: st.DataObject) -> None:
    global _SINK
    sink: list[Any] = []
    _SINK = sink
    try:
        reference = await execute(scenario, MemoryStore(), None)
    finally:
        _SINK = None
    check_recorded(reference)
    # (a) the values captured live are those captured on replay.
    for workflow_id, history in reference.histories.items():
        for segment in segments(history):
            _, captured = replay_with_captures(segment)
            run_id = segment[0].run_id  # type: ignore[attr-defined]
            assert captured == [x for x in sink if x[:2] == (workflow_id, run_id)]
    # The engine ends where the pure model ends (everything at an instant before time moves).
    model = World(scenario, lambda n: 0).run()
    assert final(reference.histories[ROOT]) == final(model.root.history)
    # (b) stop the engine at a generated moment, restart it on the same directory.
    crash = Crash(
        action=data.draw(st.integers(0, reference.actions), label="crash after"),
        checkpoints=data.draw(st.integers(0, 30), label="checkpoints"),
        signal_in_flight=data.draw(st.booleans(), label="signal in flight"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        recovered = await execute(scenario, Path(tmp) / "data", crash)
    hypothesis.event(f"workflows: {len(reference.histories)}, restarted: {recovered.crashed}")
    check_recorded(recovered)
    expected, got = comparable(reference.histories), comparable(recovered.histories)
    assert set(got) == set(expected)
    for name, events in expected.items():
        assert got[name] == events, name


@FAST
@given(scenario=scenarios(racing=False), data=st.data())
def test_generated_programs_on_the_engine_recover_from_a_stop(
    scenario: Scenario, data: st.DataObject
) -> None:
    anyio.run(_engine_property, scenario, data)


@pytest.mark.slow
@settings(HEAVY, max_examples=500)
@given(scenario=scenarios(min_ops=2, racing=False), data=st.data())
def test_generated_programs_on_the_engine_recover_from_a_stop_heavy(
    scenario: Scenario, data: st.DataObject
) -> None:
    anyio.run(_engine_property, scenario, data)
