"""Supervisors: strategies, restart types, intensity, backoff, start failure, shutdown, nesting,
dynamic children, reporting.

Timing is driven by a ManualClock; tests synchronise on "every task is blocked"
(``aion._loop.wait_all_tasks_blocked``) and on events, never on real sleeps.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio
import pytest

from aion._loop import wait_all_tasks_blocked
from aion._supervision import (
    Backoff,
    ChildContext,
    ChildNotFound,
    ChildReport,
    ChildSpec,
    ChildStartError,
    ChildState,
    DuplicateChild,
    DynamicSupervisor,
    Restart,
    Shutdown,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    SupervisorNotRunning,
)
from aion.errors import AionError
from aion.testing import ManualClock

# A broken supervisor tends to hang rather than fail: fail fast instead (a watchdog, not a wait).
pytestmark = pytest.mark.timeout(20)

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
T0 = EPOCH.timestamp()


class Crash(Exception):
    """What test children raise."""


class Probe:
    """Children driven by the test: each records its starts and stops, and exits on command.

    ``log`` gets ``("start", id)`` when a start function begins, ``("stop", id)`` when a child is
    cancelled, ``("graceful", id)`` when it returns because shutdown was requested, and
    ``("exit", id)`` / ``("crash", id)`` when the test makes it return / raise.
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self._commands: dict[str, tuple[anyio.Event, list[str]]] = {}
        self.fail_starts: dict[str, int] = {}  # id -> how many upcoming starts raise

    def spec(
        self,
        child_id: str,
        restart: Restart = Restart.PERMANENT,
        shutdown: Shutdown = Shutdown.CANCEL,
        *,
        graceful: bool = False,
    ) -> ChildSpec:
        """A controllable child; ``graceful`` ones return when asked to stop."""

        async def start(ctx: ChildContext) -> None:
            self.log.append(("start", child_id))
            if self.fail_starts.get(child_id, 0) > 0:
                self.fail_starts[child_id] -= 1
                raise Crash(f"{child_id} cannot start")
            event, action = self._commands[child_id] = (anyio.Event(), [])
            ctx.started()
            try:
                async with anyio.create_task_group() as tg:
                    if graceful:

                        async def on_request() -> None:
                            await ctx.wait_shutdown_requested()
                            action.append("graceful")
                            event.set()

                        tg.start_soon(on_request)
                    await event.wait()
                    tg.cancel_scope.cancel()
            except anyio.get_cancelled_exc_class():
                self.log.append(("stop", child_id))
                raise
            self.log.append((action[0], child_id))
            if action[0] == "crash":
                raise Crash(f"{child_id} crashed")

        return ChildSpec(child_id, start, restart, shutdown)

    def crash(self, child_id: str) -> None:
        self._command(child_id, "crash")

    def exit(self, child_id: str) -> None:
        self._command(child_id, "exit")

    def _command(self, child_id: str, action: str) -> None:
        event, actions = self._commands[child_id]
        assert not event.is_set(), f"{child_id} is not running"
        actions.append(action)
        event.set()

    def take(self) -> list[tuple[str, str]]:
        """The log so far, cleared."""
        log, self.log = self.log, []
        return log


async def settle() -> None:
    """Let every other task run until all of them wait on something.

    Then the supervisor has acted on everything that happened. (anyio's own
    ``wait_all_tasks_blocked`` polls every 0.1 s of real time; aion's yields to the loop.)
    """
    await wait_all_tasks_blocked()


@asynccontextmanager
async def running(sup: Supervisor) -> AsyncIterator[Supervisor]:
    """Run ``sup`` (started) for the block; shut it down afterwards."""
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        yield sup
        await sup.shutdown()


async def run_expecting_failure(
    sup: Supervisor, drive: Callable[[], Awaitable[None]]
) -> BaseException:
    """Run ``sup`` with ``drive()`` alongside; return what ``run`` raised."""
    failure: BaseException | None = None
    async with anyio.create_task_group() as tg:

        async def runner() -> None:
            nonlocal failure
            try:
                await sup.run()
            except Exception as exc:
                failure = exc
            tg.cancel_scope.cancel()

        tg.start_soon(runner)
        await settle()
        await drive()
        await anyio.sleep_forever()
    assert failure is not None, "the supervisor did not fail"
    return failure


def states(sup: Supervisor) -> dict[str, tuple[ChildState, int]]:
    return {row.id: (row.state, row.restarts) for row in sup.report()}


def make(
    probe: Probe,
    ids: str = "abc",
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    *,
    clock: ManualClock | None = None,
    **options: object,
) -> Supervisor:
    return Supervisor(
        [probe.spec(i) for i in ids],
        strategy=strategy,
        clock=clock or ManualClock(EPOCH),
        backoff=Backoff.NONE,
        **options,  # type: ignore[arg-type]
    )


# --- start and stop order -------------------------------------------------------------------


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    probe = Probe()
    async with running(make(probe)) as sup:
        assert probe.take() == [("start", "a"), ("start", "b"), ("start", "c")]
        assert states(sup) == {i: (ChildState.RUNNING, 0) for i in "abc"}
    assert probe.take() == [("stop", "c"), ("stop", "b"), ("stop", "a")]
    assert states(sup) == {i: (ChildState.STOPPED, 0) for i in "abc"}


async def test_each_start_completes_before_the_next_begins() -> None:
    log: list[str] = []
    release = anyio.Event()

    async def slow(ctx: ChildContext) -> None:
        log.append("slow: init")
        await release.wait()
        log.append("slow: started")
        ctx.started()
        await anyio.sleep_forever()

    async def fast(ctx: ChildContext) -> None:
        log.append("fast: started")
        ctx.started()
        await anyio.sleep_forever()

    sup = Supervisor([ChildSpec("slow", slow), ChildSpec("fast", fast)], clock=ManualClock(EPOCH))
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run)
        await settle()
        assert log == ["slow: init"]
        assert states(sup)["slow"] == (ChildState.STARTING, 0)
        release.set()
        await settle()
        assert log == ["slow: init", "slow: started", "fast: started"]
        await sup.shutdown()


async def test_a_child_that_returns_before_started_counts_as_started() -> None:
    calls: list[str] = []

    async def once(ctx: ChildContext) -> None:
        calls.append("once")

    async def after(ctx: ChildContext) -> None:
        calls.append("after")
        ctx.started()
        await anyio.sleep_forever()

    sup = Supervisor(
        [ChildSpec("once", once, Restart.TRANSIENT), ChildSpec("after", after)],
        clock=ManualClock(EPOCH),
    )
    async with running(sup):
        await settle()
        assert calls == ["once", "after"]
        assert states(sup) == {"once": (ChildState.STOPPED, 0), "after": (ChildState.RUNNING, 0)}


async def test_started_twice_is_an_error() -> None:
    errors: list[BaseException] = []

    async def twice(ctx: ChildContext) -> None:
        ctx.started()
        try:
            ctx.started()
        except RuntimeError as exc:
            errors.append(exc)
        await anyio.sleep_forever()

    async with running(Supervisor([ChildSpec("t", twice)], clock=ManualClock(EPOCH))):
        pass
    assert len(errors) == 1 and "twice" in str(errors[0])


# --- start failure -----------------------------------------------------------------------------


async def test_start_failure_stops_started_children_in_reverse_and_names_the_child() -> None:
    probe = Probe()
    probe.fail_starts["c"] = 1
    sup = make(probe, "abcd")
    with pytest.raises(ChildStartError) as info:
        await sup.run()
    assert info.value.child_id == "c" and info.value.supervisor == "supervisor"
    assert "'c'" in str(info.value)
    assert isinstance(info.value.__cause__, Crash)
    assert probe.take() == [
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
        ("stop", "b"),
        ("stop", "a"),
    ]
    assert sup.report()[2].last_error is info.value.__cause__


async def test_start_failure_reaches_the_task_group_start_caller() -> None:
    probe = Probe()
    probe.fail_starts["a"] = 1
    with pytest.RaisesGroup(pytest.RaisesExc(ChildStartError, match="could not start child 'a'")):
        async with anyio.create_task_group() as tg:
            await tg.start(make(probe).run)
    assert probe.take() == [("start", "a")]


async def test_a_failed_restart_counts_as_a_crash() -> None:
    probe = Probe()
    sup = make(probe, "ab", max_restarts=2)

    async def drive() -> None:
        probe.take()
        probe.fail_starts["a"] = 5
        probe.crash("a")

    failure = await run_expecting_failure(sup, drive)
    assert isinstance(failure, SupervisorEscalation)
    assert failure.child_id == "a" and failure.restarts == 3
    assert str(failure.__cause__) == "a cannot start"
    # crash, two failed restarts, and the third restart is refused: b is stopped.
    assert probe.take() == [
        ("crash", "a"),
        ("start", "a"),
        ("start", "a"),
        ("stop", "b"),
    ]


# --- strategies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.ONE_FOR_ONE, [("crash", "b"), ("start", "b")]),
        (
            Strategy.ONE_FOR_ALL,
            [
                ("crash", "b"),
                ("stop", "d"),
                ("stop", "c"),
                ("stop", "a"),
                ("start", "a"),
                ("start", "b"),
                ("start", "c"),
                ("start", "d"),
            ],
        ),
        (
            Strategy.REST_FOR_ONE,
            [
                ("crash", "b"),
                ("stop", "d"),
                ("stop", "c"),
                ("start", "b"),
                ("start", "c"),
                ("start", "d"),
            ],
        ),
    ],
)
async def test_strategy_decides_who_restarts(
    strategy: Strategy, expected: list[tuple[str, str]]
) -> None:
    probe = Probe()
    async with running(make(probe, "abcd", strategy)) as sup:
        probe.take()
        probe.crash("b")
        await settle()
        assert probe.take() == expected
        restarted = {child for action, child in expected if action == "start"}
        assert states(sup) == {i: (ChildState.RUNNING, 1 if i in restarted else 0) for i in "abcd"}
        assert sup.report()[1].last_error is not None
        assert all(row.last_error is None for row in sup.report() if row.id != "b")


async def test_one_for_one_crash_leaves_siblings_untouched() -> None:
    probe = Probe()
    async with running(make(probe)) as sup:
        probe.take()
        for _ in range(3):
            probe.crash("a")
            await settle()
        assert probe.take() == [("crash", "a"), ("start", "a")] * 3
        assert states(sup)["b"] == (ChildState.RUNNING, 0)


@pytest.mark.parametrize(
    ("restart", "action", "restarted"),
    [
        (Restart.PERMANENT, "exit", True),
        (Restart.PERMANENT, "crash", True),
        (Restart.TRANSIENT, "exit", False),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TEMPORARY, "exit", False),
        (Restart.TEMPORARY, "crash", False),
    ],
)
async def test_restart_type_decides_whether_an_exit_restarts(
    restart: Restart, action: str, restarted: bool
) -> None:
    probe = Probe()
    sup = Supervisor(
        [probe.spec("x", restart), probe.spec("y")], clock=ManualClock(EPOCH), backoff=Backoff.NONE
    )
    async with running(sup):
        probe.take()
        getattr(probe, action)("x")
        await settle()
        log = probe.take()
        assert log == [(action, "x"), ("start", "x")] if restarted else [(action, "x")]
        rows = {row.id: row for row in sup.report()}
        if restarted:
            assert (rows["x"].state, rows["x"].restarts) == (ChildState.RUNNING, 1)
        elif restart is Restart.TEMPORARY:
            assert "x" not in rows  # temporary children are forgotten once they exit
        else:
            assert (rows["x"].state, rows["x"].restarts) == (ChildState.STOPPED, 0)
        assert rows["y"].state is ChildState.RUNNING
    # Only running children are stopped at shutdown.
    assert probe.take() == ([("stop", "y"), ("stop", "x")] if restarted else [("stop", "y")])


async def test_group_restart_drops_temporary_and_skips_finished_transient_siblings() -> None:
    probe = Probe()
    sup = Supervisor(
        [
            probe.spec("a"),
            probe.spec("temp", Restart.TEMPORARY),
            probe.spec("done", Restart.TRANSIENT),
            probe.spec("b", Restart.TRANSIENT),
        ],
        strategy=Strategy.ONE_FOR_ALL,
        clock=ManualClock(EPOCH),
        backoff=Backoff.NONE,
    )
    async with running(sup):
        probe.exit("done")
        await settle()
        probe.take()
        probe.crash("a")
        await settle()
        assert probe.take() == [
            ("crash", "a"),
            ("stop", "b"),
            ("stop", "temp"),
            ("start", "a"),
            ("start", "b"),
        ]
        assert states(sup) == {
            "a": (ChildState.RUNNING, 1),
            "done": (ChildState.STOPPED, 0),
            "b": (ChildState.RUNNING, 1),
        }


# --- intensity -------------------------------------------------------------------------------


async def test_exactly_max_restarts_within_the_window_is_allowed() -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    async with running(make(probe, "ab", clock=clock, max_restarts=3, max_seconds=10)) as sup:
        for _ in range(3):
            probe.crash("a")
            await settle()
            clock.advance(1)
        assert states(sup) == {"a": (ChildState.RUNNING, 3), "b": (ChildState.RUNNING, 0)}


async def test_one_restart_past_the_limit_stops_children_and_escalates() -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    sup = make(probe, "abc", clock=clock, max_restarts=3, max_seconds=10, name="workers")

    async def drive() -> None:
        for _ in range(3):
            probe.crash("b")
            await settle()
            clock.advance(1)
        probe.take()
        probe.crash("b")

    failure = await run_expecting_failure(sup, drive)
    assert isinstance(failure, SupervisorEscalation) and isinstance(failure, AionError)
    assert (failure.supervisor, failure.child_id, failure.restarts) == ("workers", "b", 4)
    assert isinstance(failure.__cause__, Crash) and failure.reason is failure.__cause__
    assert "'workers'" in str(failure) and "'b'" in str(failure) and "Crash" in str(failure)
    assert probe.take() == [("crash", "b"), ("stop", "c"), ("stop", "a")]
    assert states(sup) == {
        "a": (ChildState.STOPPED, 0),
        "b": (ChildState.STOPPED, 3),
        "c": (ChildState.STOPPED, 0),
    }


@pytest.mark.parametrize(
    ("last_crash_at", "escalates"),
    [
        (10.0, True),  # the crash at 0 is exactly max_seconds old: still inside the window
        (10.5, False),  # ... and here it has left it
    ],
)
async def test_the_window_slides(last_crash_at: float, escalates: bool) -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    sup = make(probe, "a", clock=clock, max_restarts=3, max_seconds=10)
    outcome: list[BaseException | None] = []

    async def drive() -> None:
        await settle()
        for at in (0.0, 1.0, 2.0, last_crash_at):
            clock.set_time(T0 + at)
            probe.crash("a")
            await settle()
        outcome.append(None)
        await sup.shutdown()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        try:
            await sup.run()
        except SupervisorEscalation as exc:
            outcome.append(exc)
            tg.cancel_scope.cancel()
    assert isinstance(outcome[0], SupervisorEscalation) is escalates


async def test_max_restarts_zero_escalates_on_the_first_restart() -> None:
    probe = Probe()
    sup = make(probe, "a", max_restarts=0)

    async def drive() -> None:
        probe.exit("a")  # a permanent child's normal exit also asks for a restart

    failure = await run_expecting_failure(sup, drive)
    assert isinstance(failure, SupervisorEscalation)
    assert failure.reason is None and failure.__cause__ is None
    assert "returned" in str(failure)


async def test_exits_that_do_not_restart_do_not_count() -> None:
    probe = Probe()
    sup = Supervisor(
        [probe.spec(f"t{i}", Restart.TEMPORARY) for i in range(5)],
        max_restarts=0,
        clock=ManualClock(EPOCH),
    )
    async with running(sup):
        for i in range(5):
            probe.crash(f"t{i}")
        await settle()
        assert sup.report() == []


# --- backoff -------------------------------------------------------------------------------------


def test_backoff_delays_grow_cap_and_jitter_deterministically() -> None:
    backoff = Backoff(initial=1.0, maximum=5.0, multiplier=2.0, jitter=0.5)
    assert backoff.delay(0, random.Random(1)) == 0.0
    rng_a, rng_b = random.Random(42), random.Random(42)
    delays = [backoff.delay(n, rng_a) for n in range(1, 8)]
    assert delays == [backoff.delay(n, rng_b) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        base = min(5.0, 2.0 ** (n - 1))
        assert 0.5 * base <= delay <= min(5.0, 1.5 * base)
    no_jitter = Backoff(initial=1.0, maximum=5.0, multiplier=2.0, jitter=0.0)
    assert [no_jitter.delay(n, rng_a) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert Backoff.NONE.delay(9, rng_a) == 0.0
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=2.0)
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(multiplier=0.5)
    with pytest.raises(ValueError, match="maximum"):
        Backoff(initial=2.0, maximum=1.0)


async def test_repeated_restarts_back_off_with_seeded_jitter() -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    backoff = Backoff(initial=1.0, maximum=3.0, multiplier=2.0, jitter=0.5)
    expected_rng = random.Random(7)
    sup = Supervisor(
        [probe.spec("a"), probe.spec("b")],
        clock=clock,
        backoff=backoff,
        rng=random.Random(7),
        max_restarts=10,
        max_seconds=100,
    )
    async with running(sup):
        probe.take()
        probe.crash("a")
        await settle()
        assert probe.take() == [("crash", "a"), ("start", "a")]  # first restart: immediate
        for n in (1, 2, 3):
            delay = backoff.delay(n, expected_rng)
            probe.crash("a")
            await settle()
            assert probe.take() == [("crash", "a")]
            assert states(sup)["a"] == (ChildState.RESTARTING, n)
            crashed_at = clock.now()
            clock.set_time(crashed_at + delay * 0.999)
            await settle()
            assert probe.take() == []
            clock.set_time(crashed_at + delay)
            await settle()
            assert probe.take() == [("start", "a")]
        # b was never disturbed by a's backoff.
        assert states(sup)["b"] == (ChildState.RUNNING, 0)


async def test_crash_loop_backs_off_on_an_auto_advancing_clock() -> None:
    clock = ManualClock(EPOCH, auto_advance=True)
    backoff = Backoff(initial=1.0, maximum=4.0, multiplier=2.0, jitter=0.25)
    expected_rng = random.Random(3)
    expected_end = T0
    for n in (1, 2, 3):  # restart 1 is immediate, restarts 2-4 wait, restart 5 is refused
        expected_end += backoff.delay(n, expected_rng)

    async def crashing(ctx: ChildContext) -> None:
        ctx.started()
        raise Crash("boom")

    sup = Supervisor(
        [ChildSpec("c", crashing)],
        clock=clock,
        backoff=backoff,
        rng=random.Random(3),
        max_restarts=4,
        max_seconds=60,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run_auto_advance)
        with pytest.raises(SupervisorEscalation) as info:
            await sup.run()
        tg.cancel_scope.cancel()
    assert info.value.restarts == 5
    assert clock.now() == expected_end
    assert sup.report()[0].restarts == 4


async def test_backoff_window_resets_after_a_quiet_period() -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    sup = Supervisor(
        [probe.spec("a")],
        clock=clock,
        backoff=Backoff(initial=1.0, maximum=1.0, jitter=0.0),
        max_restarts=10,
        max_seconds=5,
    )
    async with running(sup):
        probe.crash("a")
        await settle()  # immediate
        probe.crash("a")
        await settle()
        assert states(sup)["a"][0] is ChildState.RESTARTING
        clock.advance(1)
        await settle()
        assert states(sup)["a"] == (ChildState.RUNNING, 2)
        clock.advance(10)  # both restarts leave the window
        probe.take()
        probe.crash("a")
        await settle()
        assert probe.take() == [("crash", "a"), ("start", "a")]


async def test_shutdown_does_not_wait_for_a_pending_backoff() -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    sup = Supervisor(
        [probe.spec("a"), probe.spec("b")],
        clock=clock,
        backoff=Backoff(initial=60.0, maximum=60.0, jitter=0.0),
        max_restarts=10,
    )
    async with running(sup):
        probe.crash("a")
        await settle()
        probe.crash("a")
        await settle()
        assert states(sup)["a"][0] is ChildState.RESTARTING
        probe.take()
    assert probe.take() == [("stop", "b")]
    assert clock.now() == T0


# --- shutdown policies ---------------------------------------------------------------------


async def test_graceful_child_stops_when_asked_without_cancellation() -> None:
    probe = Probe()
    sup = Supervisor(
        [probe.spec("a", shutdown=Shutdown.after(5), graceful=True), probe.spec("b")],
        clock=ManualClock(EPOCH),
    )
    async with running(sup):
        probe.take()
    assert probe.take() == [("stop", "b"), ("graceful", "a")]


async def test_child_ignoring_the_request_is_cancelled_after_its_timeout() -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    sup = Supervisor([probe.spec("a"), probe.spec("slow", shutdown=Shutdown.after(5))], clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        probe.take()
        tg.start_soon(sup.shutdown)
        await settle()
        assert states(sup)["slow"][0] is ChildState.STOPPING
        assert probe.take() == []  # asked, not cancelled; "a" waits its turn
        clock.set_time(T0 + 4.9)
        await settle()
        assert probe.take() == []
        clock.set_time(T0 + 5)
        await settle()
        assert probe.take() == [("stop", "slow"), ("stop", "a")]


async def test_infinity_waits_as_long_as_the_child_takes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(EPOCH)
    finish = anyio.Event()
    log: list[str] = []

    async def flusher(ctx: ChildContext) -> None:
        ctx.started()
        await ctx.wait_shutdown_requested()
        log.append("asked")
        await finish.wait()
        log.append("flushed")

    sup = Supervisor([ChildSpec("f", flusher, shutdown=Shutdown.INFINITY)], clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        tg.start_soon(sup.shutdown)
        try:
            await settle()
            clock.advance(10_000)
            await settle()
            assert log == ["asked"]
            assert states(sup)["f"][0] is ChildState.STOPPING
            # Never cancelled, but not waited for silently either.
            waiting = [r for r in caplog.records if "still waiting for child 'f'" in r.message]
            assert len(waiting) == 1 and waiting[0].levelno == logging.WARNING
        finally:
            finish.set()
    assert log == ["asked", "flushed"]


async def test_unresponsive_child_is_reported_and_does_not_hold_up_its_siblings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    release = anyio.Event()

    async def stubborn(ctx: ChildContext) -> None:
        ctx.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await release.wait()

    sup = Supervisor(
        [probe.spec("a"), ChildSpec("stubborn", stubborn), probe.spec("c")],
        clock=clock,
        kill_grace=2,
    )
    done = anyio.Event()
    caplog.set_level(logging.DEBUG, logger="aion.supervision")
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        probe.take()

        async def stop() -> None:
            await sup.shutdown()
            done.set()

        tg.start_soon(stop)
        try:
            await settle()
            assert probe.take() == [("stop", "c")]
            assert states(sup)["stubborn"][0] is ChildState.STOPPING
            clock.advance(2)
            await settle()
            # Reported, and the shutdown went on with the others.
            assert states(sup)["stubborn"][0] is ChildState.UNRESPONSIVE
            assert probe.take() == [("stop", "a")]
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1
            assert errors[0].child_id == "stubborn"  # type: ignore[attr-defined]
            assert "ignores cancellation" in errors[0].getMessage()
            assert not done.is_set()
        finally:
            release.set()  # on failure too: a shielded child would hang the test
    assert done.is_set()
    assert states(sup)["stubborn"][0] is ChildState.STOPPED
    assert any("finally stopped" in r.getMessage() for r in caplog.records)


async def test_child_raising_while_stopping_is_logged_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def messy(ctx: ChildContext) -> None:
        ctx.started()
        await ctx.wait_shutdown_requested()
        raise Crash("cleanup failed")

    sup = Supervisor([ChildSpec("m", messy, shutdown=Shutdown.after(1))], clock=ManualClock(EPOCH))
    async with running(sup):
        pass
    assert str(sup.report()[0].last_error) == "cleanup failed"
    assert any("raised while stopping" in r.getMessage() for r in caplog.records)


# --- nesting -------------------------------------------------------------------------------------


async def test_escalation_through_two_levels() -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    inner = Supervisor([probe.spec("w")], name="inner", max_restarts=0, clock=clock)
    middle = Supervisor(
        [probe.spec("m1"), inner.child_spec()], name="middle", max_restarts=0, clock=clock
    )
    root = Supervisor(
        [probe.spec("r1"), middle.child_spec()], name="root", max_restarts=0, clock=clock
    )

    async def drive() -> None:
        probe.take()
        probe.crash("w")

    failure = await run_expecting_failure(root, drive)
    assert isinstance(failure, SupervisorEscalation)
    assert (failure.supervisor, failure.child_id) == ("root", "middle")
    middle_failure = failure.__cause__
    assert isinstance(middle_failure, SupervisorEscalation)
    assert (middle_failure.supervisor, middle_failure.child_id) == ("middle", "inner")
    inner_failure = middle_failure.__cause__
    assert isinstance(inner_failure, SupervisorEscalation)
    assert (inner_failure.supervisor, inner_failure.child_id) == ("inner", "w")
    assert isinstance(inner_failure.__cause__, Crash)
    # Each level stopped its remaining children before passing the failure up.
    assert probe.take() == [("crash", "w"), ("stop", "m1"), ("stop", "r1")]


async def test_parent_restarts_an_escalating_child_supervisor() -> None:
    probe = Probe()
    clock = ManualClock(EPOCH)
    inner = Supervisor(
        [probe.spec("w1"), probe.spec("w2")], name="inner", max_restarts=0, clock=clock
    )
    root = Supervisor(
        [probe.spec("r1"), inner.child_spec()], name="root", max_restarts=1, clock=clock
    )
    async with running(root):
        probe.take()
        probe.crash("w2")
        await settle()
        # inner gave up (stopping w1), root restarted inner, which started its children anew.
        assert probe.take() == [("crash", "w2"), ("stop", "w1"), ("start", "w1"), ("start", "w2")]
        assert states(root) == {"r1": (ChildState.RUNNING, 0), "inner": (ChildState.RUNNING, 1)}
        assert isinstance(root.report()[1].last_error, SupervisorEscalation)
        assert states(inner) == {"w1": (ChildState.RUNNING, 0), "w2": (ChildState.RUNNING, 0)}
    # Root shutdown asks inner, which stops its own children in reverse, before r1 stops.
    assert probe.take() == [("stop", "w2"), ("stop", "w1"), ("stop", "r1")]


async def test_nested_start_failure_names_both_levels() -> None:
    probe = Probe()
    probe.fail_starts["w"] = 1
    inner = Supervisor([probe.spec("w")], name="inner")
    root = Supervisor([probe.spec("r1"), inner.child_spec()], name="root")
    with pytest.raises(ChildStartError) as info:
        await root.run()
    assert info.value.child_id == "inner"
    assert isinstance(info.value.__cause__, ChildStartError)
    assert info.value.__cause__.child_id == "w"
    assert probe.take() == [("start", "r1"), ("start", "w"), ("stop", "r1")]


# --- dynamic children --------------------------------------------------------------------------


async def test_start_and_terminate_children_at_run_time() -> None:
    probe = Probe()
    async with running(make(probe, "a", Strategy.REST_FOR_ONE)) as sup:
        await sup.start_child(probe.spec("d1"))
        await sup.start_child(probe.spec("d2"))
        assert [row.id for row in sup.report()] == ["a", "d1", "d2"]
        probe.take()
        probe.crash("a")  # dynamic children come after the static ones in the order
        await settle()
        assert probe.take() == [
            ("crash", "a"),
            ("stop", "d2"),
            ("stop", "d1"),
            ("start", "a"),
            ("start", "d1"),
            ("start", "d2"),
        ]
        await sup.terminate_child("d1")
        assert probe.take() == [("stop", "d1")]
        assert [row.id for row in sup.report()] == ["a", "d2"]
        with pytest.raises(DuplicateChild):
            await sup.start_child(probe.spec("a"))
        with pytest.raises(ChildNotFound):
            await sup.terminate_child("d1")
        probe.fail_starts["bad"] = 1
        with pytest.raises(ChildStartError) as info:
            await sup.start_child(probe.spec("bad"))
        assert info.value.child_id == "bad" and isinstance(info.value.__cause__, Crash)
        assert [row.id for row in sup.report()] == ["a", "d2"]
    with pytest.raises(SupervisorNotRunning):
        await sup.start_child(probe.spec("late"))


async def test_dynamic_children_are_forgotten_once_they_stop_for_good() -> None:
    probe = Probe()
    async with running(DynamicSupervisor(clock=ManualClock(EPOCH))) as sup:
        for i in range(3):
            await sup.start_child(probe.spec(f"t{i}", Restart.TRANSIENT))
        probe.exit("t0")
        probe.crash("t1")
        await settle()
        assert states(sup) == {"t1": (ChildState.RUNNING, 1), "t2": (ChildState.RUNNING, 0)}


@pytest.mark.parametrize("count", [2_000, pytest.param(10_000, marks=pytest.mark.slow)])
async def test_dynamic_shutdown_stops_many_children_concurrently(count: int) -> None:
    clock = ManualClock(EPOCH)
    stopped = 0

    async def deaf(ctx: ChildContext) -> None:
        nonlocal stopped
        ctx.started()
        try:
            await anyio.sleep_forever()  # never listens for the shutdown request
        finally:
            stopped += 1

    sup = DynamicSupervisor(clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        for i in range(count):
            await sup.start_child(ChildSpec(f"actor-{i}", deaf, shutdown=Shutdown.after(5)))
        assert len(sup.report()) == count
        tg.start_soon(sup.shutdown)
        await settle()
        assert stopped == 0
        # One 5 s timeout for all of them, not one after another.
        assert clock.next_deadline() == T0 + 5
        clock.advance(5)
        await settle()
        assert stopped == count
    assert clock.now() == T0 + 5
    assert {row.state for row in sup.report()} == {ChildState.STOPPED}


async def test_dynamic_supervisor_gives_up_past_its_intensity() -> None:
    probe = Probe()
    sup = DynamicSupervisor(clock=ManualClock(EPOCH), max_restarts=1, backoff=Backoff.NONE)

    async def drive() -> None:
        for i in range(3):
            await sup.start_child(probe.spec(f"a{i}"))
        probe.crash("a0")
        await settle()
        probe.take()
        probe.crash("a1")

    failure = await run_expecting_failure(sup, drive)
    assert isinstance(failure, SupervisorEscalation) and failure.child_id == "a1"
    assert sorted(probe.take()) == [("crash", "a1"), ("stop", "a0"), ("stop", "a2")]


# --- control and observability -----------------------------------------------------------------


async def test_graceful_dynamic_children_stop_together_without_waiting() -> None:
    clock = ManualClock(EPOCH)
    sup = DynamicSupervisor(clock=clock)
    async with running(sup):
        for i in range(500):
            spec_ = Probe().spec(f"g{i}", shutdown=Shutdown.after(30), graceful=True)
            await sup.start_child(spec_)
    # Everyone listened: no timeout ran out, no time passed.
    assert clock.now() == T0
    assert sup.report()[0].state is ChildState.STOPPED


async def test_children_see_their_id_and_restart_count() -> None:
    seen: list[tuple[str, int]] = []

    async def flaky(ctx: ChildContext) -> None:
        seen.append((ctx.id, ctx.restarts))
        ctx.started()
        if ctx.restarts < 2:
            raise Crash("again")
        await anyio.sleep_forever()

    sup = Supervisor([ChildSpec("f", flaky)], clock=ManualClock(EPOCH), backoff=Backoff.NONE)
    async with running(sup):
        await settle()
    assert seen == [("f", 0), ("f", 1), ("f", 2)]


async def test_a_caller_waiting_on_a_request_is_answered_when_the_supervisor_dies() -> None:
    release = anyio.Event()

    async def slow_start(ctx: ChildContext) -> None:
        await release.wait()
        ctx.started()

    sup = DynamicSupervisor(clock=ManualClock(EPOCH))
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        run_scope = anyio.CancelScope()

        async def run() -> None:
            with run_scope:
                await sup.run()

        async def call(child_id: str) -> None:
            try:
                await sup.start_child(ChildSpec(child_id, slow_start))
            except SupervisorNotRunning as exc:
                errors.append(exc)

        tg.start_soon(run)
        await settle()
        tg.start_soon(call, "first")  # being started when the supervisor is cancelled
        tg.start_soon(call, "second")  # still queued
        await settle()
        run_scope.cancel()
    assert [type(e) for e in errors] == [SupervisorNotRunning, SupervisorNotRunning]


async def test_requests_after_a_shutdown_request_are_refused() -> None:
    probe = Probe()
    async with running(make(probe, "a")) as sup:
        sup.request_shutdown()
        with pytest.raises(SupervisorNotRunning):
            await sup.start_child(probe.spec("late"))
        with pytest.raises(SupervisorNotRunning):
            await sup.terminate_child("a")


async def test_shutdown_can_be_requested_by_a_child() -> None:
    sup: Supervisor

    async def quitter(ctx: ChildContext) -> None:
        ctx.started()
        sup.request_shutdown()
        await anyio.sleep_forever()

    sup = Supervisor([ChildSpec("q", quitter)], clock=ManualClock(EPOCH))
    await sup.run()  # returns: the child asked for the shutdown
    assert states(sup) == {"q": (ChildState.STOPPED, 0)}


async def test_a_supervisor_can_run_again_after_shutdown() -> None:
    probe = Probe()
    sup = make(probe, "a")
    async with running(sup):
        probe.crash("a")
        await settle()
        assert states(sup) == {"a": (ChildState.RUNNING, 1)}
    async with running(sup):
        assert states(sup) == {"a": (ChildState.RUNNING, 0)}
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run()


async def test_restart_and_escalation_are_logged_with_the_child_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aion.supervision")
    probe = Probe()
    sup = make(probe, "ab", max_restarts=1, name="svc")

    async def drive() -> None:
        probe.crash("a")
        await settle()
        probe.crash("a")

    await run_expecting_failure(sup, drive)
    records = [r for r in caplog.records if r.name == "aion.supervision"]
    restart = [r for r in records if "restarting" in r.getMessage()]
    assert len(restart) == 1 and restart[0].levelno == logging.WARNING
    assert restart[0].child_id == "a"  # type: ignore[attr-defined]
    assert "'svc'" in restart[0].getMessage() and "abnormal" in restart[0].getMessage()
    crashes = [r for r in records if r.levelno == logging.WARNING and "crashed" in r.getMessage()]
    assert len(crashes) == 2 and all(r.exc_info for r in crashes)
    escalation = [r for r in records if r.levelno == logging.ERROR]
    assert len(escalation) == 1 and escalation[0].child_id == "a"  # type: ignore[attr-defined]
    assert "escalating" in escalation[0].getMessage()


async def test_shutdown_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aion.supervision")
    async with running(make(Probe(), "ab", name="svc")):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "aion.supervision"]
    assert "supervisor 'svc': shutting down 2 children" in messages
    assert "supervisor 'svc': stopping child 'b' (shutdown)" in messages
    assert messages[-1] == "supervisor 'svc': shut down"


def test_report_rows_are_frozen() -> None:
    row = ChildReport("a", ChildState.RUNNING, Restart.PERMANENT, 0, None)
    with pytest.raises(AttributeError):
        row.restarts = 1  # type: ignore[misc]


def test_configuration_is_validated() -> None:
    async def noop(ctx: ChildContext) -> None:
        ctx.started()

    with pytest.raises(DuplicateChild):
        Supervisor([ChildSpec("a", noop), ChildSpec("a", noop)])
    with pytest.raises(ValueError, match="max_restarts"):
        Supervisor(max_restarts=-1)
    with pytest.raises(ValueError, match="max_seconds"):
        Supervisor(max_seconds=0)
    with pytest.raises(ValueError, match="shutdown timeout"):
        Shutdown.after(-1)
    assert Shutdown.CANCEL.timeout == 0 and Shutdown.INFINITY.timeout is None
