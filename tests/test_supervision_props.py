"""Property test: random schedules of child exits against a pure model of OTP semantics.

The model says, for each exit, who is stopped and restarted and in which order, and when the
supervisor gives up; the real supervisor (driven by a ManualClock) must produce the same log of
starts, stops and exits, the same report and the same escalation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from aion._supervision import (
    Backoff,
    ChildState,
    Restart,
    Strategy,
    Supervisor,
    SupervisorEscalation,
)
from aion.testing import ManualClock

from .test_supervision import EPOCH, Probe, settle

Event = tuple[str, str]


@dataclass
class Model:
    """OTP supervision with immediate restarts, as plain bookkeeping."""

    order: list[str]
    restart: dict[str, Restart]
    strategy: Strategy
    max_restarts: int
    max_seconds: float
    running: list[str] = field(default_factory=list)
    stopped: set[str] = field(default_factory=set)  # transient children that returned
    pending: set[str] = field(default_factory=set)
    restarts: dict[str, int] = field(default_factory=dict)
    fail_starts: dict[str, int] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    log: list[Event] = field(default_factory=list)
    escalated_by: str | None = None

    def __post_init__(self) -> None:
        self.running = list(self.order)
        self.restarts = dict.fromkeys(self.order, 0)

    def exit(self, child: str, now: float, *, crash: bool) -> None:
        self.log.append(("crash" if crash else "exit", child))
        self.running.remove(child)
        self._exited(child, now, crash=crash)
        while self.pending and self.escalated_by is None:
            self._restart_pending(now)

    def shutdown(self) -> None:
        self._stop([c for c in self.order if c in self.running])

    def _exited(self, child: str, now: float, *, crash: bool) -> None:
        kind = self.restart[child]
        if kind is Restart.TEMPORARY:
            self.order.remove(child)
            return
        if kind is Restart.TRANSIENT and not crash:
            self.stopped.add(child)
            return
        self.times = [t for t in self.times if t >= now - self.max_seconds] + [now]
        if len(self.times) > self.max_restarts:
            self._stop([c for c in self.order if c in self.running])
            self.pending.clear()
            self.escalated_by = child
            return
        members = self.order
        if self.strategy is Strategy.REST_FOR_ONE:
            members = members[members.index(child) :]
        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [child]
        else:
            group = [c for c in members if c == child or c in self.running or c in self.pending]
        self._stop([c for c in group if c in self.running])
        for sibling in group:
            if sibling != child and self.restart[sibling] is Restart.TEMPORARY:
                self.order.remove(sibling)
        self.pending.update(c for c in group if c in self.order)

    def _stop(self, children: list[str]) -> None:
        for child in reversed(children):
            self.log.append(("stop", child))
            self.running.remove(child)

    def _restart_pending(self, now: float) -> None:
        for child in [c for c in self.order if c in self.pending]:
            self.pending.discard(child)
            self.restarts[child] += 1
            self.log.append(("start", child))
            if self.fail_starts.get(child, 0):
                self.fail_starts[child] -= 1
                # A failed restart is another crash; it may reschedule the rest of the batch.
                self._exited(child, now, crash=True)
                return
            self.running.append(child)
            self.running.sort(key=self.order.index)

    def report(self) -> dict[str, tuple[ChildState, int]]:
        def state(child: str) -> ChildState:
            if self.escalated_by is not None or child in self.stopped:
                return ChildState.STOPPED
            return ChildState.RUNNING

        return {c: (state(c), self.restarts[c]) for c in self.order}


Step = tuple[float, int, str]

steps = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.5, 1.0, 2.5]),
        st.integers(0, 9),
        st.sampled_from(["exit", "crash", "crash", "crash_and_fail_restart"]),
    ),
    max_size=25,
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Model, list[Step]]:
    count = draw(st.integers(1, 5))
    ids = [f"c{i}" for i in range(count)]
    kinds = draw(st.lists(st.sampled_from(Restart), min_size=count, max_size=count))
    model = Model(
        order=ids,
        restart=dict(zip(ids, kinds, strict=True)),
        strategy=draw(st.sampled_from(Strategy)),
        max_restarts=draw(st.integers(0, 4)),
        max_seconds=draw(st.sampled_from([1.0, 2.5, 5.0])),
    )
    return model, draw(steps)


async def check(model: Model, schedule: list[Step]) -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    sup = Supervisor(
        [probe.spec(c, model.restart[c]) for c in model.order],
        strategy=model.strategy,
        max_restarts=model.max_restarts,
        max_seconds=model.max_seconds,
        backoff=Backoff.NONE,
        clock=clock,
    )
    model.log = [("start", c) for c in model.order]
    failure: list[BaseException] = []

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            try:
                await sup.run()
            except SupervisorEscalation as exc:
                failure.append(exc)

        tg.start_soon(run)
        await settle()
        for dt, pick, action in schedule:
            if model.escalated_by is not None or not model.running:
                break
            clock.advance(dt)
            child = model.running[pick % len(model.running)]
            if action == "crash_and_fail_restart":
                probe.fail_starts[child] = model.fail_starts[child] = 1
            if action == "exit":
                probe.exit(child)
            else:
                probe.crash(child)
            model.exit(child, clock.now(), crash=action != "exit")
            await settle()
            assert probe.log == model.log
            assert {r.id: (r.state, r.restarts) for r in sup.report()} == model.report()
        if model.escalated_by is None:
            await sup.shutdown()
            model.shutdown()

    assert probe.log == model.log
    # Visible with --hypothesis-show-statistics: the schedules reach the interesting cases.
    event(f"{model.strategy.name}, {'escalated' if model.escalated_by else 'shut down'}")
    if any(action == "start" for action, _ in model.log[len(model.restart) :]):
        event("restarted something")
    if model.escalated_by is None:
        assert failure == []
    else:
        assert len(failure) == 1
        assert isinstance(failure[0], SupervisorEscalation)
        assert failure[0].child_id == model.escalated_by


@pytest.mark.timeout(60)
@given(scenarios())
async def test_supervisor_follows_the_model(scenario: tuple[Model, list[Step]]) -> None:
    await check(*scenario)


@pytest.mark.slow
@settings(max_examples=2_000, deadline=None)
@given(scenarios())
async def test_supervisor_follows_the_model_long(scenario: tuple[Model, list[Step]]) -> None:
    await check(*scenario)
