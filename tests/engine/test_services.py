"""The engine's services run under its supervision tree: a fault restarts the service; a fault
that persists stops the engine with an AionError naming the cause. Never a silent hang."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
from aion.store import ForwardingStore, InboxCommand, LmdbStore, MemoryStore, _lmdb
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def work(x: int) -> int:
    return x * 2


@aion.workflow
async def sleepy(ctx: aion.Context, x: int) -> int:
    await ctx.sleep(60)
    return await ctx.step(work, x)


@aion.workflow
async def waits(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


class Boom(RuntimeError):
    pass


def faulty(times: int | None, what: str) -> Callable[..., Any]:
    """A replacement that raises ``times`` times (None: always), then calls the original."""
    calls = [0]

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        async def fail_or_call(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if times is None or calls[0] <= times:
                raise Boom(f"{what} fault #{calls[0]}")
            return await original(*args, **kwargs)

        return fail_or_call

    return wrap


def engine_on(store: Any, **kwargs: Any) -> aion.Engine:
    return aion.Engine(
        store,
        workflows=[sleepy, waits],
        clock=ManualClock(T0, auto_advance=True),
        inbox_interval=0.01,
        **kwargs,
    )


# Each service and how to break it: (service id, patch(engine, times)).
def break_wheel(engine: aion.Engine, times: int | None) -> None:
    timers = engine._timers
    timers._fire = faulty(times, "timer wheel")(timers._fire)  # type: ignore[method-assign]


def break_executor(engine: aion.Engine, times: int | None) -> None:
    ex = engine._executor
    ex._execute = faulty(times, "step executor")(ex._execute)  # type: ignore[method-assign]


def break_actors(engine: aion.Engine, times: int | None) -> None:
    sc = engine._runtime.scheduler
    sc._process = faulty(times, "actor")(sc._process)  # type: ignore[method-assign]
    sc._crashed = faulty(None, "crash handler")(sc._crashed)  # type: ignore[method-assign]


SERVICES = {
    "timer-wheel": break_wheel,
    "step-executor": break_executor,
    "run-actors": break_actors,
}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_a_persistent_fault_stops_the_engine_with_the_cause(service: str) -> None:
    store = MemoryStore()
    engine = engine_on(store)
    waited: list[BaseException] = []
    SERVICES[service](engine, None)
    with pytest.raises(aion.AionError) as stopped:
        async with engine:
            handle = await engine.start(sleepy, 21, workflow_id="w")
            with anyio.fail_after(10):  # a hang fails the test instead of stalling it
                try:
                    await handle.result()
                except aion.AionError as exc:  # released with the cause, not left waiting
                    waited.append(exc)
                await engine.wait_stopped()  # the body is cancelled: `async with` raises
            pytest.fail("the body went on after the engine stopped")
    assert waited and waited[0] is stopped.value
    error = stopped.value
    assert f"child '{service}'" in str(error)
    assert "Boom" in str(error)
    assert "Recorded history is intact" in str(error)
    assert engine.failure is error
    # Nothing recorded was lost: the next engine finishes the run.
    async with engine_on(store) as again:
        assert await again.handle("w").result(timeout=10) == 42


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_a_passing_fault_restarts_only_that_service(service: str) -> None:
    engine = engine_on(MemoryStore())
    SERVICES[service](engine, 1)
    async with engine:
        handle = await engine.start(sleepy, 5, workflow_id="w")
        with anyio.fail_after(10):
            assert await handle.result() == 10
        assert engine.failure is None
        report = {r.id: r.restarts for r in engine._root.report()}  # type: ignore[union-attr]
        assert report[service] == 1
        assert sum(report.values()) == 1


async def test_an_inbox_that_cannot_be_read_stops_the_engine(tmp_path: Path) -> None:
    store = MemoryStore()
    with pytest.raises(aion.AionError, match="child 'inbox'") as stopped:
        async with engine_on(store) as engine:
            store.read_inbox = faulty(None, "inbox")(store.read_inbox)  # type: ignore[method-assign]
            with anyio.fail_after(10):
                await engine.wait_stopped()
    assert "inbox fault" in str(stopped.value)


async def test_an_inbox_fault_that_passes_loses_no_command() -> None:
    store = MemoryStore()
    async with engine_on(store) as engine:
        handle = await engine.start(waits, workflow_id="w")
        await engine.wait_idle()
        read = store.read_inbox
        store.read_inbox = faulty(2, "inbox")(read)  # type: ignore[method-assign]
        await store.commit(
            aion.store.Write(
                inbox_put=[InboxCommand("signal", "default", "w", T0, name="go", payload=b"\x01")]
            )
        )
        with anyio.fail_after(10):
            assert await handle.result() == 1
        assert engine.failure is None


async def test_a_dead_store_writer_stops_the_engine(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "data")
    engine = engine_on(store, waitpoint_key=b"k" * 32)
    with pytest.raises(aion.AionError, match="child 'store-writer'") as stopped:
        async with engine:
            handle = await engine.start(waits, workflow_id="w")
            # The writer thread dies on a request it cannot handle (an engine bug, say).
            store._queue.put(_lmdb._Request(None, None))  # type: ignore[arg-type]
            with anyio.fail_after(10):
                with pytest.raises(aion.AionError):
                    await handle.result()
    assert "store writer failed" in str(stopped.value)
    await store.aclose()
    async with engine_on(LmdbStore(tmp_path / "data"), waitpoint_key=b"k" * 32) as again:
        assert (await again.describe("w")).status is aion.Status.RUNNING


class BuggyStore(ForwardingStore):
    """A store that fails activations of run ``w`` while ``broken``: an engine bug seen from
    outside (the engine fails on this run, every time it tries)."""

    broken = False

    async def read_current_run(self, workflow_id: str, *, tenant: str = "default") -> Any:
        if self.broken and workflow_id == "w":
            raise Boom("engine bug while activating")
        return await self.inner.read_current_run(workflow_id, tenant=tenant)


async def test_a_run_in_an_engine_crash_loop_is_blocked_with_its_traceback_and_unblocked() -> None:
    store = MemoryStore()
    buggy = BuggyStore(store)
    engine = engine_on(buggy, max_restarts=2, max_resident_runs=1)
    async with engine:
        handle = await engine.start(waits, workflow_id="w")
        await engine.start(waits, workflow_id="other")  # w is evicted: a signal activates it
        await engine.wait_idle()
        assert engine.resident_runs == 1
        buggy.broken = True
        with anyio.fail_after(10):
            await engine.signal("w", "go", 1)  # acknowledged once the run is parked: kept
        buggy.broken = False  # the fix is deployed (a parked run is not retried on its own)
        blocked = await engine.describe("w")
        assert blocked.status is aion.Status.BLOCKED
        assert blocked.reason == "crash loop: Boom: engine bug while activating"
        assert "aion unblock w" in blocked.detail
        assert "Traceback" in blocked.detail and "read_current_run" in blocked.detail
        with pytest.raises(aion.errors.InvalidArgument, match="not blocked"):
            await _unblock_running(engine)
        after = await engine.unblock("w")  # the kept signal is applied
        assert after.status is not aion.Status.BLOCKED and after.reason == ""
        assert after.detail == ""
        with anyio.fail_after(10):
            assert await handle.result() == 1
    kinds = [e.type for e in await _history(store, "w")]
    assert kinds.count("workflow.blocked") == 1 and kinds.count("workflow.unblocked") == 1


async def _unblock_running(engine: aion.Engine) -> None:
    await engine.start(waits, workflow_id="running")
    await engine.unblock("running")


async def _history(store: MemoryStore, workflow_id: str) -> list[aion.HistoryEvent]:
    async with engine_on(store) as engine:
        return await engine.history(workflow_id)
