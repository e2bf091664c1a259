"""Property (issue 11): every input the engine acknowledges as accepted is applied exactly once,
in order, whatever happens to its run in between.

Hypothesis interleaves signals (through the engine and through the inbox), waitpoint
completions (both ways), approvals and a cancellation with runs that block (their code is
broken, then fixed and unblocked), continue as new, get evicted (one resident run at most)
and engines that stop and start again on the same store. At the end every run is fixed, told
to stop, and what its code consumed must be exactly what was accepted, in the order accepted
(per source: an inbox command arrives when the engine takes it out of the inbox, so one left
there may be overtaken by a later call on the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aion
from aion._codec import encode_payload
from aion.store import InboxCommand, MemoryStore
from aion.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BROKEN = {"on": False}
TOKENS: dict[str, str] = {}  # the current waitpoint token of the completion sink


def hazard() -> bool:
    return BROKEN["on"]


@aion.workflow
async def signal_sink(ctx: aion.Context, seen: list[Any]) -> list[Any]:
    while True:
        value = await ctx.wait_signal("s")
        if value == "stop":
            return seen
        seen.append(value)
        if hazard():
            await asyncio.sleep(0)  # broken code: the run parks BLOCKED here
        if len(seen) % 3 == 0:
            ctx.continue_as_new(seen)


@aion.workflow
async def completion_sink(ctx: aion.Context, seen: list[Any]) -> list[Any]:
    while True:
        wp = await ctx.waitpoint("callback")
        TOKENS[ctx.info.run_id] = wp.token
        TOKENS["current"] = wp.token
        value = await wp.wait()
        if value == "stop":
            return seen
        seen.append(value)
        if hazard():
            await asyncio.sleep(0)
        if len(seen) % 2 == 0:
            ctx.continue_as_new(seen)


@aion.workflow
async def approval_sink(ctx: aion.Context, seen: list[str]) -> list[str]:
    while True:
        decision = await ctx.approval("ok")
        if decision.user == "stop":
            return seen
        seen.append(decision.user)
        if hazard():
            await asyncio.sleep(0)
        if len(seen) % 2 == 0:
            ctx.continue_as_new(seen)


@aion.workflow
async def cancellee(ctx: aion.Context) -> str:
    await ctx.wait_signal("never")
    return "not cancelled"


WORKFLOWS = [signal_sink, completion_sink, approval_sink, cancellee]
RUNS = {"sig": signal_sink, "wp": completion_sink, "ap": approval_sink, "victim": cancellee}

OPS = st.sampled_from(
    [
        ("signal", "engine"),
        ("signal", "inbox"),
        ("complete", "engine"),
        ("complete", "inbox"),
        ("approve", "engine"),
        ("cancel", "engine"),
        ("cancel", "inbox"),
        ("break", ""),
        ("break", ""),
        ("fix", "engine"),
        ("fix", "inbox"),
        ("settle", ""),
        ("restart", ""),
    ]
)


@dataclass
class Accepted:
    signals: dict[str, list[int]] = field(default_factory=lambda: {"engine": [], "inbox": []})
    completions: dict[str, list[int]] = field(default_factory=lambda: {"engine": [], "inbox": []})
    approvals: list[str] = field(default_factory=list)
    cancels: int = 0
    breaks: int = 0
    blocked: int = 0
    used_tokens: set[str] = field(default_factory=set)


def in_order(consumed: list[Any], sources: dict[str, list[int]]) -> None:
    """Exactly once each, and each source's items in the order they were accepted."""
    assert sorted(consumed) == sorted(v for items in sources.values() for v in items), (
        consumed,
        sources,
    )
    for items in sources.values():
        mine = set(items)
        assert [v for v in consumed if v in mine] == items, (consumed, sources)


def engine(store: MemoryStore) -> aion.Engine:
    return aion.Engine(
        store,
        workflows=WORKFLOWS,
        clock=ManualClock(T0),
        max_resident_runs=1,
        inbox_interval=0.001,
    )


async def leave(store: MemoryStore, kind: str, workflow_id: str, **fields: Any) -> None:
    await store.put_inbox(InboxCommand(kind, "default", workflow_id, T0, **fields))


async def unblock_all(e: aion.Engine, via: str, store: MemoryStore, acc: Accepted) -> None:
    for workflow_id in RUNS:
        if (await e.describe(workflow_id)).status is aion.Status.BLOCKED:
            acc.blocked += 1
            if via == "engine":
                await e.unblock(workflow_id)
            else:
                await leave(store, "unblock", workflow_id)


async def apply(op: tuple[str, str], e: aion.Engine, store: MemoryStore, acc: Accepted) -> None:
    kind, via = op
    n = sum(len(v) for v in acc.signals.values()) + sum(len(v) for v in acc.completions.values())
    if kind == "signal":
        if via == "engine":
            await e.signal("sig", "s", n)
        else:
            await leave(store, "signal", "sig", name="s", payload=encode_payload(n))
        acc.signals[via].append(n)
    elif kind == "complete":
        token = TOKENS.get("current")
        if token is None or token in acc.used_tokens:
            return  # no waitpoint to complete yet (the last completion is not applied)
        acc.used_tokens.add(token)
        if via == "engine":
            try:
                await e.complete_waitpoint(token, n)
            except (aion.WaitpointClosed, aion.InvalidToken):
                return  # refused: not accepted
        else:
            await leave(store, "complete_waitpoint", "wp", payload=encode_payload(n), token=token)
        acc.completions[via].append(n)
    elif kind == "approve":
        user = f"u{len(acc.approvals)}"
        try:
            await e.approve("ap", user=user)
        except (aion.NoPendingApproval, aion.WorkflowBlocked):
            return  # refused at the call: nothing recorded
        acc.approvals.append(user)
    elif kind == "cancel":
        if via == "engine":
            with contextlib.suppress(aion.WorkflowClosed):
                await e.cancel("victim", reason="test")
                acc.cancels += 1
        else:
            await leave(store, "cancel", "victim", comment="test")
            acc.cancels += 1
    elif kind == "break":
        BROKEN["on"] = True
        acc.breaks += 1
    elif kind == "fix":
        BROKEN["on"] = False
        await unblock_all(e, via, store, acc)
    elif kind == "settle":
        await e.wait_idle()


async def inbox_drained(store: MemoryStore) -> None:
    with anyio.fail_after(10):
        while await store.read_inbox():
            await anyio.sleep(0.005)


async def scenario(ops: list[tuple[str, str]]) -> None:
    BROKEN["on"] = False
    TOKENS.clear()
    store = MemoryStore()
    acc = Accepted()
    e = engine(store)
    await e.__aenter__()
    try:
        for name, workflow in RUNS.items():
            await e.start(workflow, *([[]] if name != "victim" else []), workflow_id=name)
        await e.wait_idle()
        for op in ops:
            if op[0] == "restart":
                await e.__aexit__(None, None, None)
                e = engine(store)
                await e.__aenter__()
            else:
                await apply(op, e, store, acc)
        # Everything is fixed and told to stop; then what each run consumed is compared.
        BROKEN["on"] = False
        await e.wait_idle()
        await unblock_all(e, "engine", store, acc)
        await inbox_drained(store)
        await e.wait_idle()
        await unblock_all(e, "engine", store, acc)  # blocked again by a command applied late
        await e.wait_idle()
        with anyio.fail_after(10):
            await e.signal("sig", "s", "stop")
            consumed = await e.handle("sig").result()
            in_order(consumed, acc.signals)
            token = TOKENS["current"]
            await e.complete_waitpoint(token, "stop")
            in_order(await e.handle("wp").result(), acc.completions)
            await e.approve("ap", user="stop")
            assert await e.handle("ap").result() == acc.approvals
            history = await e.history("victim")
            requested = [h for h in history if h.type == "workflow.cancel_requested"]
            if acc.cancels:
                assert len(requested) == 1
                assert (await e.describe("victim")).status is aion.Status.CANCELLED
            else:
                assert requested == []
        hypothesis.event(f"runs found blocked: {min(acc.blocked, 3)}+")
        hypothesis.event(f"signals accepted: {min(sum(map(len, acc.signals.values())), 5)}+")
        hypothesis.event(f"completions: {min(sum(map(len, acc.completions.values())), 3)}+")
        hypothesis.event(f"approvals: {min(len(acc.approvals), 3)}+")
    finally:
        await e.__aexit__(None, None, None)
        BROKEN["on"] = False


@settings(max_examples=100)
@given(st.lists(OPS, max_size=25))
def test_every_accepted_input_is_applied_once_in_order(ops: list[tuple[str, str]]) -> None:
    anyio.run(scenario, ops)


@pytest.mark.slow
@settings(max_examples=1500)
@given(st.lists(OPS, max_size=60))
def test_every_accepted_input_is_applied_once_in_order_long(ops: list[tuple[str, str]]) -> None:
    anyio.run(scenario, ops)
