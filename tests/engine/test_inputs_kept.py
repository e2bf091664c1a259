"""Nothing an operator or an outside system sends is lost (issue 11, items 1-7 and 14).

Signals, waitpoint completions and cancellations for a ``BLOCKED`` run are kept durably and
applied in arrival order once it runs again; decisions are refused with ``WorkflowBlocked``.
Unconsumed signals follow ``continue_as_new``. Inbox commands whose application fails are
retried. Id conflicts and unregistered child types are clear errors or recoverable blocks, never
a handle to nothing or a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
import aion.errors
from aion.store import InboxCommand, LmdbStore, MemoryStore, WriteHook, WriteInfo
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BLOCK = {"on": False}


def broken() -> bool:
    return BLOCK["on"]


@aion.workflow
async def gate(ctx: aion.Context) -> list[Any]:
    """Waits for ``go``; parks BLOCKED after it while ``BLOCK`` is on; then collects ``more``."""
    await ctx.wait_signal("go")
    if broken():
        await asyncio.sleep(0)  # not an aion operation: the run is parked BLOCKED
    got = [await ctx.wait_signal("more"), await ctx.wait_signal("more")]
    return got


@aion.workflow
async def gate_waitpoint(ctx: aion.Context) -> list[Any]:
    wp = await ctx.waitpoint("provider")
    TOKENS[ctx.info.workflow_id] = wp.token
    await ctx.wait_signal("go")
    if broken():
        await asyncio.sleep(0)
    return [await wp.wait(), await ctx.wait_signal("more")]


@aion.workflow
async def gate_cancel(ctx: aion.Context) -> str:
    await ctx.wait_signal("go")
    if broken():
        await asyncio.sleep(0)
    try:
        await ctx.wait_signal("never")
    except aion.Cancelled:
        return "cleaned up"
    return "not cancelled"


@aion.workflow
async def gate_approval(ctx: aion.Context) -> str:
    decision = ctx.approval("pay")
    await ctx.wait_signal("go")
    if broken():
        await asyncio.sleep(0)
    approval: aion.Approval = await decision
    return approval.user


TOKENS: dict[str, str] = {}


@aion.workflow
async def relay(ctx: aion.Context, generation: int) -> list[Any]:
    """Continues as new once ``next`` arrives; the successor reads what was sent before."""
    if generation == 0:
        await ctx.wait_signal("next")
        ctx.continue_as_new(1)
    return [
        await ctx.wait_signal("stop", timeout=60),
        await ctx.wait_signal("other", timeout=60),
        await ctx.wait_signal("stop", timeout=60),
    ]


@aion.workflow
async def kid(ctx: aion.Context) -> str:
    return "kid done"


@aion.workflow
async def parent_of_taken(ctx: aion.Context) -> str:
    try:
        return await ctx.child(kid, workflow_id="taken")
    except aion.AionError as exc:
        return f"refused: {exc}"


@aion.workflow
async def parent_later(ctx: aion.Context) -> str:
    await ctx.wait_signal("go")
    try:
        return await ctx.child(kid, workflow_id="taken")
    except aion.AionError as exc:
        return f"refused: {exc}"


@aion.workflow(name="unregistered-kid")
async def unregistered_kid(ctx: aion.Context) -> str:
    return "late kid"


@aion.workflow
async def parent_of_unregistered(ctx: aion.Context) -> str:
    result: str = await ctx.child("unregistered-kid", workflow_id="late")
    return result


@aion.workflow
async def other_type(ctx: aion.Context) -> str:
    return await ctx.wait_signal("go")


ALL = [
    gate,
    gate_waitpoint,
    gate_cancel,
    gate_approval,
    relay,
    kid,
    parent_of_taken,
    parent_later,
    parent_of_unregistered,
    other_type,
]


@pytest.fixture(autouse=True)
def _reset() -> Any:
    BLOCK["on"] = False
    TOKENS.clear()
    yield
    BLOCK["on"] = False


@pytest.fixture(params=["lmdb", "memory", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    with _postgres.target(request.param, tmp_path) as made:
        yield made


@pytest.fixture
async def engine(target: Any) -> AsyncIterator[aion.Engine]:
    async with aion.Engine(target, workflows=ALL, clock=ManualClock(T0)) as e:
        yield e


async def wait_until(check: Callable[[], Any], timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.005)


async def block(engine: aion.Engine, workflow_id: str) -> None:
    """Send ``go`` with the code broken: the run parks BLOCKED."""
    BLOCK["on"] = True
    await engine.signal(workflow_id, "go")
    await engine.wait_idle()
    desc = await engine.describe(workflow_id)
    assert desc.status is aion.Status.BLOCKED, desc


def kinds(history: list[aion.HistoryEvent]) -> list[str]:
    return [h.type for h in history]


# --- item 1: commands for a BLOCKED run are kept, in order ---------------------------------------


async def test_signals_to_a_blocked_run_are_kept_and_applied_in_order(
    engine: aion.Engine,
) -> None:
    await engine.start(gate, workflow_id="g")
    await block(engine, "g")
    await engine.signal("g", "more", 1)  # returns: kept durably
    await engine.signal("g", "more", 2)
    BLOCK["on"] = False  # "the fix is deployed"
    await engine.unblock("g")
    assert await engine.handle("g").result(timeout=5) == [1, 2]
    received = [h.data for h in await engine.history("g") if h.type == "signal.received"]
    assert [(d["name"], d["payload"]) for d in received] == [("go", None), ("more", 1), ("more", 2)]


async def test_a_signal_arriving_while_another_is_kept_does_not_retry_the_run() -> None:
    # Found by a CI run on PostgreSQL: a signal that reached a BLOCKED run while the run was
    # writing an earlier one to the inbox was taken for a retry (only a Wake is one), and the
    # run replayed without an unblock. Here the second signal is sent from inside that write.
    store = MemoryStore()
    later: list[asyncio.Task[None]] = []

    class SecondSignalDuringTheKeep(WriteHook):
        armed = False

        def begin_write(self, info: WriteInfo) -> None:
            if self.armed and not info.appends:  # the write that keeps "more 1"
                self.armed = False
                later.append(asyncio.get_running_loop().create_task(e.signal("g", "more", 2)))

    hook = SecondSignalDuringTheKeep()
    store.set_write_hook(hook)
    async with aion.Engine(store, workflows=ALL, clock=ManualClock(T0)) as e:
        await e.start(gate, workflow_id="g")
        await block(e, "g")
        hook.armed = True
        await e.signal("g", "more", 1)
        [second] = later
        await second  # kept too
        await e.wait_idle()
        assert (await e.describe("g")).status is aion.Status.BLOCKED  # not retried by mail
        BLOCK["on"] = False
        await e.unblock("g")
        assert await e.handle("g").result(timeout=5) == [1, 2]


async def test_kept_signals_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with aion.Engine(data, workflows=ALL, clock=ManualClock(T0)) as e:
        await e.start(gate, workflow_id="g")
        await block(e, "g")
        await e.signal("g", "more", "a")
        await e.signal("g", "more", "b")
    BLOCK["on"] = False
    async with aion.Engine(data, workflows=ALL, clock=ManualClock(T0)) as e:
        # A restart retries blocked runs: the fixed code replays and takes the kept signals.
        assert await e.handle("g").result(timeout=5) == ["a", "b"]


async def test_a_waitpoint_completion_for_a_blocked_run_is_kept(engine: aion.Engine) -> None:
    await engine.start(gate_waitpoint, workflow_id="w")
    await engine.wait_idle()
    await block(engine, "w")
    await engine.complete_waitpoint(TOKENS["w"], {"paid": True})
    await engine.signal("w", "more", "after")
    BLOCK["on"] = False
    await engine.unblock("w")
    assert await engine.handle("w").result(timeout=5) == [{"paid": True}, "after"]
    with pytest.raises(aion.WaitpointClosed):
        await engine.complete_waitpoint(TOKENS["w"], "again")


async def test_a_cancellation_for_a_blocked_run_is_kept(engine: aion.Engine) -> None:
    await engine.start(gate_cancel, workflow_id="c")
    await block(engine, "c")
    await engine.cancel("c", reason="operator")
    BLOCK["on"] = False
    await engine.unblock("c")
    assert await engine.handle("c").result(timeout=5) == "cleaned up"


async def test_a_decision_for_a_blocked_run_is_refused(engine: aion.Engine) -> None:
    await engine.start(gate_approval, workflow_id="a")
    await engine.wait_idle()
    await block(engine, "a")
    with pytest.raises(aion.WorkflowBlocked) as caught:
        await engine.approve("a", user="alice")
    assert "'a'" in str(caught.value) and "BLOCKED" in str(caught.value)
    assert caught.value.workflow_id == "a"
    BLOCK["on"] = False
    await engine.unblock("a")
    await engine.approve("a", user="bob")
    assert await engine.handle("a").result(timeout=5) == "bob"


async def test_a_failed_unblock_keeps_what_was_held(engine: aion.Engine) -> None:
    await engine.start(gate, workflow_id="g")
    await block(engine, "g")
    await engine.signal("g", "more", 1)
    await engine.unblock("g")  # still broken: blocked again, the signal still kept
    assert (await engine.describe("g")).status is aion.Status.BLOCKED
    await engine.signal("g", "more", 2)
    BLOCK["on"] = False
    await engine.unblock("g")
    assert await engine.handle("g").result(timeout=5) == [1, 2]


# --- item 3: one blocked marker per blocking -----------------------------------------------------


async def test_requests_to_a_blocked_run_do_not_grow_its_history(
    engine: aion.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    await engine.start(gate, workflow_id="g")
    with caplog.at_level(logging.ERROR, logger="aion"):
        await block(engine, "g")
        length = (await engine.describe("g")).history_length
        for n in range(50):
            await engine.signal("g", "more", n)
        await engine.unblock("g")  # still broken: the same cause, no second marker
        await engine.wait_idle()
    history = await engine.history("g")
    assert len(history) == length
    assert kinds(history).count("workflow.blocked") == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]


# --- item 2: unconsumed signals follow continue-as-new -------------------------------------------


async def test_unconsumed_signals_follow_continue_as_new(engine: aion.Engine) -> None:
    await engine.start(relay, 0, workflow_id="r")
    await engine.signal("r", "stop", "first")  # received, not consumed by generation 0
    await engine.signal("r", "other", "between")
    await engine.signal("r", "stop", "second")
    await engine.signal("r", "next")  # generation 0 continues as new
    assert await engine.handle("r").result(timeout=5) == ["first", "between", "second"]
    history = await engine.history("r")
    starts = [i for i, h in enumerate(history) if h.type == "workflow.started"]
    assert len(starts) == 2
    successor = history[starts[-1] :]
    received = [
        (h.data["name"], h.data["payload"]) for h in successor if h.type == "signal.received"
    ]
    assert received == [("stop", "first"), ("other", "between"), ("stop", "second")]


# --- item 4: inbox commands whose application fails are retried ----------------------------------


class FailInboxOnce:
    """A store whose first commit that applies an inbox command fails (nothing written)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, write: Any) -> Any:
        if write.inbox_delete and not self.failures and write.appends:
            self.failures += 1
            raise aion.errors.StoreFull("injected: no room for this write")
        return await self._store.commit(write)


async def test_an_inbox_command_that_fails_once_is_retried(tmp_path: Path) -> None:
    store = FailInboxOnce(LmdbStore(tmp_path / "data"))
    try:
        async with aion.Engine(
            store, workflows=ALL, clock=ManualClock(T0), inbox_interval=0.01
        ) as e:
            await e.start(other_type, workflow_id="o")
            await e.wait_idle()
            await store.put_inbox(
                InboxCommand("signal", "default", "o", T0, name="go", payload=b"\xa2ok")
            )
            assert await e.handle("o").result(timeout=5) == "ok"
            assert store.failures == 1
            with anyio.fail_after(5):
                while await store.read_inbox():
                    await anyio.sleep(0.01)
    finally:
        await store.aclose()


async def test_an_inbox_command_for_an_unknown_run_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    async with aion.Engine(data, workflows=ALL, clock=ManualClock(T0), inbox_interval=0.01) as e:
        await e.store.put_inbox(InboxCommand("signal", "default", "ghost", T0, name="go"))
        with anyio.fail_after(5):
            while await e.store.read_inbox():
                await anyio.sleep(0.01)
    assert any("ghost" in r.getMessage() for r in caplog.records)


# --- item 5: a child id that exists already ------------------------------------------------------


async def test_a_child_whose_id_exists_in_the_store_is_a_clear_error(engine: aion.Engine) -> None:
    await engine.start(kid, workflow_id="taken")
    assert await engine.handle("taken").result(timeout=5) == "kid done"  # closed: not resident
    handle = await engine.start(parent_of_taken, workflow_id="p")
    result = await handle.result(timeout=5)
    assert result.startswith("refused:") and "'taken'" in result, result
    assert (await engine.describe("p")).status is aion.Status.COMPLETED


async def test_a_child_whose_id_exists_started_later_in_the_run(engine: aion.Engine) -> None:
    await engine.start(parent_later, workflow_id="p")
    await engine.start(kid, workflow_id="taken")
    await engine.handle("taken").result(timeout=5)
    await engine.signal("p", "go")  # the signal is recorded; the child start is refused
    result = await engine.handle("p").result(timeout=5)
    assert result.startswith("refused:") and "'taken'" in result, result


# --- item 6: an unregistered child type parks the parent, recoverably ----------------------------


async def test_an_unregistered_child_type_blocks_the_parent_until_registered(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with aion.Engine(data, workflows=ALL, clock=ManualClock(T0)) as e:
        await e.start(parent_of_unregistered, workflow_id="p")
        await e.wait_idle()
        desc = await e.describe("p")
        assert desc.status is aion.Status.BLOCKED
        assert "unregistered-kid" in desc.reason
    async with aion.Engine(data, workflows=[*ALL, unregistered_kid], clock=ManualClock(T0)) as e:
        assert await e.handle("p").result(timeout=5) == "late kid"


# --- item 7: start with an existing id and another type ------------------------------------------


async def test_start_with_an_existing_id_and_another_type_is_refused(
    engine: aion.Engine,
) -> None:
    first = await engine.start(other_type, workflow_id="x")
    again = await engine.start(other_type, workflow_id="x")  # same type: idempotent
    assert again.workflow_id == first.workflow_id
    with pytest.raises(aion.InvalidArgument) as caught:
        await engine.start(kid, workflow_id="x")  # resident
    assert "other_type" in str(caught.value) and "kid" in str(caught.value)
    await engine.wait_idle()
    await engine.signal("x", "go", "done")
    await engine.handle("x").result(timeout=5)  # finished: no longer resident
    with pytest.raises(aion.InvalidArgument):
        await engine.start(kid, workflow_id="x")
    assert (await engine.describe("x")).workflow_type == "other_type"


# --- item 14: describe() of a BLOCKED run --------------------------------------------------------


async def test_describe_of_a_blocked_run_shows_what_it_waits_on_now(engine: aion.Engine) -> None:
    await engine.start(gate, workflow_id="g")
    await engine.wait_idle()
    assert (await engine.describe("g")).pending == {"signals": ["go"]}
    await block(engine, "g")  # "go" was received: the run no longer waits on it
    assert (await engine.describe("g")).pending.get("signals", []) != ["go"]
