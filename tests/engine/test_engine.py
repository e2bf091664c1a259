"""End-to-end tests of the Engine API (shared/design/API.md), through the public names only."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
import aion.errors
import aion.testing
from aion.store import LmdbStore, MemoryStore
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)

calls: list[tuple[str, int, str]] = []


def charge(order_id: str, amount: int) -> str:
    info = aion.current_step()
    calls.append((order_id, info.attempt, info.idempotency_key))
    return f"ch-{order_id}-{amount}"


@aion.workflow
async def checkout(ctx: aion.Context, order_id: str, amount: int) -> dict[str, Any]:
    charge_id = await ctx.step(charge, order_id, amount, retry=aion.RetryPolicy(max_attempts=5))
    await ctx.sleep(3600)
    decision = await ctx.wait_signal("ship", timeout=86400)
    return {"charge": charge_id, "ship": decision}


@aion.workflow(name="nightly-report")
async def report(ctx: aion.Context) -> str:
    await ctx.sleep(timedelta(days=30))
    return f"report at {ctx.now().isoformat()}"


@aion.workflow
async def failing(ctx: aion.Context, message: str) -> None:
    raise ValueError(message)


@aion.workflow
async def waiter(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


@aion.workflow
async def forever(ctx: aion.Context) -> None:
    try:
        await ctx.wait_signal("never")
    except aion.Cancelled:
        await ctx.step(charge, "cleanup", 0)
        raise


@aion.workflow
async def naughty(ctx: aion.Context) -> None:
    await asyncio.sleep(0.01)


ALL = [checkout, report, failing, waiter, forever, naughty]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0, auto_advance=True)


@pytest.fixture(params=["lmdb", "memory", "postgres"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[aion.Engine]:
    with _postgres.target(request.param, tmp_path) as target:
        async with aion.Engine(target, workflows=ALL, clock=clock) as e:
            yield e


async def wait_until(check: Callable[[], Any], timeout: float = 10) -> None:
    """Poll ``check`` (an async predicate) without sleeping on the manual clock."""
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.005)


async def waiting_for(engine: aion.Engine, wf: str, signal: str, tenant: str = "default") -> None:
    async def check() -> bool:
        desc = await engine.describe(wf, tenant=tenant)
        return signal in desc.pending.get("signals", [])

    await wait_until(check)


async def test_quickstart_flow(engine: aion.Engine) -> None:
    handle = await engine.start(checkout, "o-1", 100, workflow_id="order-o-1", tenant="acme")
    assert handle.workflow_id == "order-o-1"
    # Sent at once: with an auto-advancing clock, the one-day timeout would pass the moment
    # everything is idle. A signal that arrives before the wait is buffered.
    await engine.signal("order-o-1", "ship", {"carrier": "ups"}, tenant="acme")
    assert await handle.result(timeout=10) == {"charge": "ch-o-1-100", "ship": {"carrier": "ups"}}
    desc = await engine.describe("order-o-1", tenant="acme")
    assert desc.status is aion.Status.COMPLETED
    assert desc.result == {"charge": "ch-o-1-100", "ship": {"carrier": "ups"}}
    assert desc.workflow_type == "checkout" and desc.tenant == "acme"
    assert desc.closed_at == T0 + timedelta(hours=1)
    history = await engine.history("order-o-1", tenant="acme")
    assert desc.history_length == len(history) == history[-1].seq
    assert [h.type for h in history][:3] == ["workflow.started", "step.scheduled", "step.started"]
    completed = next(h for h in history if h.type == "step.completed")
    assert completed.data["result"] == "ch-o-1-100"
    assert history[-1].type == "workflow.completed"
    assert (await engine.history("order-o-1", after_seq=5, tenant="acme"))[0].seq == 6
    key = next(k for (o, _, k) in calls if o == "o-1")
    assert key.startswith("acme/order-o-1/") and key.endswith("/1")


async def test_thirty_day_sleep_finishes_at_once(engine: aion.Engine, clock: ManualClock) -> None:
    handle = await engine.start("nightly-report")
    assert len(handle.workflow_id) >= 16  # a generated id
    with anyio.fail_after(5):
        result = await handle.result()
    assert result == f"report at {(T0 + timedelta(days=30)).isoformat()}"
    assert clock.datetime() >= T0 + timedelta(days=30)


async def test_start_is_idempotent_by_workflow_id(engine: aion.Engine) -> None:
    first = await engine.start(waiter, workflow_id="w1")
    second = await engine.start(waiter, workflow_id="w1")
    assert first.workflow_id == second.workflow_id == "w1"
    history = await engine.history("w1")
    assert sum(1 for h in history if h.type == "workflow.started") == 1
    await waiting_for(engine, "w1", "go")
    await engine.signal("w1", "go", 7)
    assert await second.result(timeout=5) == 7


async def test_failure_and_cancellation_outcomes(engine: aion.Engine) -> None:
    with pytest.raises(aion.WorkflowFailed) as info:
        await (await engine.start(failing, "bad input", workflow_id="f1")).result(timeout=5)
    assert info.value.error_type == "ValueError" and "bad input" in str(info.value)
    assert (await engine.describe("f1")).status is aion.Status.FAILED

    handle = await engine.start(forever, workflow_id="c1")
    await waiting_for(engine, "c1", "never")
    await engine.cancel("c1", reason="user asked")
    with pytest.raises(aion.WorkflowCancelled):
        await handle.result(timeout=5)
    desc = await engine.describe("c1")
    assert desc.status is aion.Status.CANCELLED
    types = [h.type for h in await engine.history("c1")]
    assert "workflow.cancel_requested" in types and "step.completed" in types  # cleanup ran
    with pytest.raises(aion.WorkflowClosed):
        await engine.cancel("c1")
    with pytest.raises(aion.WorkflowClosed):
        await engine.signal("c1", "never")


async def test_result_timeout(engine: aion.Engine) -> None:
    handle = await engine.start(waiter, workflow_id="slow")
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.05)


async def test_unknown_ids_and_other_tenants_are_not_found(engine: aion.Engine) -> None:
    await engine.start(waiter, workflow_id="mine", tenant="acme")
    for call in (
        lambda: engine.signal("nope", "go"),
        lambda: engine.cancel("nope"),
        lambda: engine.describe("nope"),
        lambda: engine.history("nope"),
        lambda: engine.handle("nope").result(timeout=1),
        lambda: engine.describe("mine"),  # exists, but in another tenant
        lambda: engine.signal("mine", "go", tenant="globex"),
    ):
        with pytest.raises(aion.WorkflowNotFound):
            await call()
    assert (await engine.list()).items == []
    assert [d.workflow_id for d in (await engine.list(tenant="acme")).items] == ["mine"]


async def test_payload_errors_at_the_call_site(engine: aion.Engine) -> None:
    with pytest.raises(aion.PayloadError):
        await engine.start(checkout, object(), 1)
    await engine.start(waiter, workflow_id="p1")
    with pytest.raises(aion.PayloadError):
        await engine.signal("p1", "go", object())
    with pytest.raises(aion.PayloadError, match="over the limit"):
        await engine.signal("p1", "go", "x" * (3 * 1024 * 1024))


async def test_list_filters_and_pagination(engine: aion.Engine, clock: ManualClock) -> None:
    for i in range(7):
        await engine.start(waiter, workflow_id=f"w{i}")
        clock.advance(1)
    with pytest.raises(aion.WorkflowFailed):
        await (await engine.start(failing, "x", workflow_id="f")).result(timeout=5)
    seen: list[str] = []
    cursor = None
    while True:
        page = await engine.list(limit=3, cursor=cursor)
        seen += [d.workflow_id for d in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["f", "w6", "w5", "w4", "w3", "w2", "w1", "w0"]
    failed = await engine.list(status=aion.Status.FAILED)
    assert [d.workflow_id for d in failed.items] == ["f"]
    running = await engine.list(status=aion.Status.RUNNING, workflow_type="waiter")
    assert len(running.items) == 7


async def test_non_aion_await_parks_the_run_blocked(engine: aion.Engine) -> None:
    await engine.start(naughty, workflow_id="n1")

    async def blocked() -> bool:
        return (await engine.describe("n1")).status is aion.Status.BLOCKED

    await wait_until(blocked)
    desc = await engine.describe("n1")
    assert "asyncio.tasks.sleep()" in desc.reason and "not an aion operation" in desc.reason
    assert [d.workflow_id for d in (await engine.list(status=aion.Status.BLOCKED)).items] == ["n1"]


async def test_state_survives_an_engine_restart(tmp_path: Path) -> None:
    path = tmp_path / "data"
    clock = ManualClock(T0)
    async with aion.Engine(path, workflows=ALL, clock=clock) as engine:
        await engine.start(waiter, workflow_id="parked")
        await engine.start(report, workflow_id="sleeper")
        await waiting_for(engine, "parked", "go")
    clock = ManualClock(T0 + timedelta(days=31), auto_advance=True)
    async with aion.Engine(path, workflows=ALL, clock=clock) as engine:
        # The overdue 30-day timer fires at startup; the parked run takes its signal.
        assert await engine.handle("sleeper").result(timeout=5) == (
            f"report at {(T0 + timedelta(days=31)).isoformat()}"
        )
        await engine.signal("parked", "go", "after restart")
        assert await engine.handle("parked").result(timeout=5) == "after restart"
    async with aion.Engine(path, workflows=ALL, clock=clock) as engine:
        assert (await engine.describe("parked")).result == "after restart"


async def test_idle_runs_are_evicted_and_come_back_by_replay(tmp_path: Path) -> None:
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(
        tmp_path / "d", workflows=ALL, clock=clock, max_resident_runs=2
    ) as engine:
        for i in range(20):
            await engine.start(waiter, workflow_id=f"w{i}")
        for i in range(20):
            await waiting_for(engine, f"w{i}", "go")
        assert engine.resident_runs <= 2
        for i in range(20):
            await engine.signal(f"w{i}", "go", i)
        assert [await engine.handle(f"w{i}").result(timeout=5) for i in range(20)] == list(
            range(20)
        )


async def start_sleepers(engine: aion.Engine, n: int) -> None:
    """Start ``n`` 30-day sleepers r0.. and wait until each waits on its timer."""
    for i in range(n):
        await engine.start(report, workflow_id=f"r{i}")

    async def all_sleeping() -> bool:
        descs = [await engine.describe(f"r{i}") for i in range(n)]
        return all(d.pending.get("timers") for d in descs)

    await wait_until(all_sleeping)


def record_arming(engine: aion.Engine) -> list[tuple[str, str]]:
    """Every (workflow id, timer id) the engine arms on its timer wheel, in order."""
    armed: list[tuple[str, str]] = []
    timers = engine._timers
    real_hold = timers.hold

    def hold(row: Any) -> None:
        armed.append((row.workflow_id, row.timer_id))
        real_hold(row)

    timers.hold = hold  # type: ignore[method-assign]
    return armed


async def test_a_timer_that_wakes_an_evicted_run_is_not_armed_again(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    engine = aion.Engine(tmp_path / "d", workflows=ALL, clock=clock, max_resident_runs=1)
    armed = record_arming(engine)
    async with engine:
        await start_sleepers(engine, 5)
        assert engine.resident_runs <= 1  # the others were evicted
        assert sorted(armed) == [(f"r{i}", "timer:1") for i in range(5)]
        armed.clear()
        clock.advance(timedelta(days=31).total_seconds())
        for i in range(5):
            assert (await engine.handle(f"r{i}").result(timeout=5)).startswith("report at")
        # Each run woke by its timer's firing, replayed, and found the timer still pending in
        # its history; arming it again would fire it a second time.
        assert armed == []


async def test_a_stale_timer_row_of_an_earlier_run_does_not_hide_a_live_timer(
    tmp_path: Path,
) -> None:
    from aion._engine._messages import TimerDue
    from aion.store import TimerRow

    clock = ManualClock(T0)
    engine = aion.Engine(tmp_path / "d", workflows=ALL, clock=clock, max_resident_runs=1)
    armed = record_arming(engine)
    async with engine:
        await start_sleepers(engine, 2)
        assert ("default", "r0") not in engine._runtime.actors  # evicted
        armed.clear()
        # A row with the same timer id, left by a run before this one (continue-as-new numbers
        # timers from 1 again), wakes the evicted run: its own timer:1 must still be armed.
        stale = TimerRow(T0, "default", "r0", "timer:1", "an-earlier-run")
        engine._runtime.send(("default", "r0"), TimerDue(row=stale))
        await engine.wait_idle()
        assert armed == [("r0", "timer:1")]
        clock.advance(timedelta(days=31).total_seconds())
        assert (await engine.handle("r0").result(timeout=5)).startswith("report at")


async def test_a_backlog_of_overdue_timers_is_fed_to_the_workers_at_their_pace(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    async with aion.Engine(
        tmp_path / "d", workflows=ALL, clock=clock, activation_workers=2, max_resident_runs=5
    ) as engine:
        scheduler = engine._runtime.scheduler
        queued: list[int] = []
        real_schedule = scheduler.schedule

        def schedule(actor: Any) -> None:
            real_schedule(actor)
            queued.append(scheduler.backlog)

        scheduler.schedule = schedule  # type: ignore[method-assign]
        await start_sleepers(engine, 30)
        queued.clear()
        clock.advance(timedelta(days=31).total_seconds())  # all 30 timers are overdue at once
        for i in range(30):
            assert (await engine.handle(f"r{i}").result(timeout=10)).startswith("report at")
    # The wheel waited whenever 2 runs per worker were waiting: never more than 4 in the queue.
    assert queued and max(queued) <= 2 * 2


def test_an_eviction_round_looks_at_a_bounded_number_of_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from contextlib import nullcontext

    from aion._engine import _scheduler
    from aion._engine._state import Actor

    async def never(*_: Any) -> None:
        raise AssertionError("not processed in this test")

    scheduler = _scheduler.Scheduler(
        process=never,
        crashed=never,
        busy=nullcontext,
        max_resident=10,
        max_resident_bytes=2**40,
        workers=1,
    )
    for i in range(50):
        scheduler.actors[("t", f"b{i}")] = Actor(("t", f"b{i}"), busy=True)
    for i in range(5):
        scheduler.actors[("t", f"i{i}")] = Actor(("t", f"i{i}"))
    monkeypatch.setattr(_scheduler, "EVICTION_SCAN", 40)
    scheduler.evict()  # the idle runs are past the first 40: nothing this round
    assert len(scheduler.actors) == 55
    monkeypatch.setattr(_scheduler, "EVICTION_SCAN", 1024)
    scheduler.evict()
    assert len(scheduler.actors) == 50 and all(a.busy for a in scheduler.actors.values())


async def test_commands_left_in_the_inbox_by_another_process(tmp_path: Path) -> None:
    clock = ManualClock(T0, auto_advance=True)
    path = tmp_path / "d"
    async with aion.Engine(path, workflows=ALL, clock=clock, inbox_interval=0.01) as engine:
        await engine.start(waiter, workflow_id="w")
        await engine.start(forever, workflow_id="f")
        await waiting_for(engine, "f", "never")
        script = (
            "import sys, anyio\n"
            "from datetime import UTC, datetime\n"
            "from aion.store import LmdbStore, InboxCommand\n"
            "async def main():\n"
            "    store = LmdbStore(sys.argv[1], role='client')\n"
            "    now = datetime.now(UTC)\n"
            "    await store.put_inbox(InboxCommand('signal', 'default', 'w', now, name='go',\n"
            "                                       payload=bytes.fromhex('a26869')))\n"
            "    await store.put_inbox(InboxCommand('cancel', 'default', 'f', now))\n"
            "    await store.aclose()\n"
            "anyio.run(main)\n"
        )
        await anyio.run_process([sys.executable, "-c", script, str(path)], check=True)
        with pytest.raises(aion.errors.StoreLocked, match="already open in this process"):
            LmdbStore(path, role="client")
        assert await engine.handle("w").result(timeout=5) == "hi"
        with pytest.raises(aion.WorkflowCancelled):
            await engine.handle("f").result(timeout=5)
        assert await engine.store.read_inbox() == []


class FlakyCommits:
    """Wraps a store; fails the commits that record a timer firing, ``failures`` times."""

    def __init__(self, store: Any, failures: int) -> None:
        self._store = store
        self.failures = failures
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, write: Any) -> Any:
        fires = any(
            e.__struct_config__.tag == "timer.fired" for a in write.appends for e in a.events
        )
        if fires and self.failed < self.failures:
            self.failed += 1
            raise aion.errors.StoreError("injected: the disk hiccuped")
        return await self._store.commit(write)


async def test_an_engine_fault_restarts_the_run_by_replay() -> None:
    store = FlakyCommits(MemoryStore(), failures=2)
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(store, workflows=ALL, clock=clock) as engine:  # type: ignore[arg-type]
        handle = await engine.start(report, workflow_id="r")
        assert (await handle.result(timeout=5)).startswith("report at")
    assert store.failed == 2


async def test_a_crash_loop_parks_the_run_blocked() -> None:
    store = FlakyCommits(MemoryStore(), failures=1000)
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(
        store,  # type: ignore[arg-type]
        workflows=ALL,
        clock=clock,
        max_restarts=3,
    ) as engine:
        await engine.start(report, workflow_id="r")

        async def blocked() -> bool:
            return (await engine.describe("r")).status is aion.Status.BLOCKED

        await wait_until(blocked)
        desc = await engine.describe("r")
        assert "crash loop" in desc.reason and "disk hiccuped" in desc.reason
        assert store.failed == 4  # the first try and three restarts


async def test_waiting_callers_are_released_when_the_engine_stops() -> None:
    engine = aion.Engine(MemoryStore(), workflows=ALL, clock=ManualClock(T0))
    outcome: list[BaseException] = []

    async def wait_for_result() -> None:
        try:
            await engine.handle("w").result()
        except aion.AionError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg, engine:
        await engine.start(waiter, workflow_id="w")
        tg.start_soon(wait_for_result)
        await engine.wait_idle()
    assert len(outcome) == 1 and "engine stopped" in str(outcome[0])


@aion.workflow
async def fan_out(ctx: aion.Context, n: int) -> list[str]:
    first = await ctx.gather(*(ctx.step(charge, f"f{i}", i) for i in range(n)))
    await ctx.sleep(5)
    return [*first, await ctx.step(charge, "last", n)]


async def test_an_activation_with_several_steps_replays(engine: aion.Engine) -> None:
    handle = await engine.start(fan_out, 3, workflow_id="fan")
    assert await handle.result(timeout=5) == ["ch-f0-0", "ch-f1-1", "ch-f2-2", "ch-last-3"]
    history = await engine.history("fan")
    types = [h.type for h in history[1:7]]
    assert types == ["step.scheduled"] * 3 + ["step.started"] * 3  # commands first
    assert aion.testing.replay(fan_out, history).status == "completed"
