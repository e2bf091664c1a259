"""Approvals end to end: ``ctx.approval``, ``engine.approve/reject``, ``pending_approvals`` and
the engine's approval policy, through the public names only (shared/design/API.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
import aion.errors
from aion.store import MemoryStore, collect_pages
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# --- workflows ----------------------------------------------------------------------------------


@aion.workflow
async def expense(ctx: aion.Context, amount: int) -> aion.Approval:
    approval = await ctx.approval("pay", details={"amount": amount})
    assert isinstance(approval, aion.Approval)
    return approval


@aion.workflow
async def expense_handled(ctx: aion.Context, amount: int) -> str:
    try:
        await ctx.approval("pay", details={"amount": amount})
    except aion.ApprovalRejected as exc:
        return f"rejected: {exc}"
    return "approved"


@aion.workflow
async def expense_with_timeout(ctx: aion.Context) -> Any:
    try:
        await ctx.approval("pay", timeout=3600)
    except aion.WaitTimedOut as exc:
        timed_out = f"timed out at {ctx.now().isoformat()}: {type(exc).__name__}"
    else:
        timed_out = "approved"
    # Stays open, so that a late decision finds a running workflow without the approval.
    return [timed_out, await ctx.wait_signal("finish")]


@aion.workflow
async def decide_then_wait(ctx: aion.Context) -> Any:
    try:
        approval = await ctx.approval("pay")
        outcome = ["approved", approval.user]
    except aion.ApprovalRejected:
        outcome = ["rejected"]
    return [*outcome, await ctx.wait_signal("finish")]


@aion.workflow
async def same_action_twice(ctx: aion.Context) -> list[str]:
    async def one(amount: int) -> str:
        try:
            await ctx.approval("pay", details={"amount": amount})
        except aion.ApprovalRejected:
            return "rejected"
        return "approved"

    return list(await ctx.gather(one(1), one(1_000_000)))


@aion.workflow
async def two_approvals(ctx: aion.Context) -> list[str]:
    first, second = await ctx.gather(ctx.approval("first"), ctx.approval("second"))
    return [first.user, second.user]


@aion.workflow
async def idle(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


@aion.workflow
async def ends_with_pending(ctx: aion.Context) -> Any:
    ctx.approval("never-decided")  # requested, never awaited
    return await ctx.wait_signal("end")


@aion.workflow
async def renews(ctx: aion.Context, n: int) -> None:
    ctx.approval(f"round-{n}")
    await ctx.wait_signal("next")
    ctx.continue_as_new(n + 1)


@aion.workflow
async def cancelled_while_waiting(ctx: aion.Context) -> str:
    await ctx.approval("pay")
    return "approved"


@aion.workflow
async def cleans_up_after_cancel(ctx: aion.Context) -> Any:
    try:
        await ctx.approval("pay")
    except aion.Cancelled:
        return ["cancelled", await ctx.wait_signal("cleaned")]
    return ["approved"]


transfers: list[tuple[str, str, int, int]] = []


def transfer(account: str, amount: int) -> str:
    info = aion.current_step()
    transfers.append((info.workflow_id, account, amount, info.attempt))
    return f"tx-{account}-{amount}"


failures: list[tuple[str, int]] = []


def flaky_transfer(account: str) -> str:
    info = aion.current_step()
    failures.append((info.workflow_id, info.attempt))
    raise ConnectionError(f"bank unreachable for {account}")


@aion.workflow
async def pay(ctx: aion.Context, account: str, amount: int) -> str:
    return str(await ctx.step(transfer, account, amount, name="payments.transfer"))


@aion.workflow
async def pay_other(ctx: aion.Context, account: str, amount: int) -> str:
    return str(await ctx.step(transfer, account, amount, name="payments.transfer"))


@aion.workflow
async def pay_handled(ctx: aion.Context, account: str, amount: int) -> str:
    try:
        return str(await ctx.step(transfer, account, amount, name="payments.transfer"))
    except aion.ApprovalRejected as exc:
        return f"rejected: {exc}"


@aion.workflow
async def refund(ctx: aion.Context, account: str, amount: int) -> str:
    # Neither "payments.*" nor "payments_*" is "refunds.issue".
    a = await ctx.step(transfer, account, amount, name="refunds.issue")
    b = await ctx.step(transfer, account, amount, name="paymentsXtransfer")
    return f"{a} {b}"


@aion.workflow
async def pay_twice(ctx: aion.Context) -> list[str]:
    return list(
        await ctx.gather(
            ctx.step(transfer, "a", 1, name="payments.transfer"),
            ctx.step(transfer, "b", 2, name="payments.transfer"),
        )
    )


@aion.workflow
async def pays_through_a_child(ctx: aion.Context) -> str:
    return str(await ctx.child(pay, "c", 5))


gate: dict[str, Any] = {"block": False, "started": None}


async def gated_transfer(account: str) -> str:
    info = aion.current_step()
    transfers.append((info.workflow_id, account, 0, info.attempt))
    if gate["block"]:
        gate["started"].set()
        await anyio.sleep_forever()
    return f"tx-{account}"


@aion.workflow
async def gated_pay(ctx: aion.Context, account: str) -> str:
    return str(await ctx.step(gated_transfer, account, name="payments.gated"))


@aion.workflow
async def pay_flaky(ctx: aion.Context, account: str) -> str:
    retry = aion.RetryPolicy(max_attempts=3, initial_interval=10, backoff=1)
    return str(await ctx.step(flaky_transfer, account, name="payments.flaky", retry=retry))


ALL = [
    expense,
    expense_handled,
    expense_with_timeout,
    two_approvals,
    same_action_twice,
    decide_then_wait,
    idle,
    ends_with_pending,
    renews,
    cancelled_while_waiting,
    cleans_up_after_cancel,
    pay,
    pay_other,
    pay_handled,
    refund,
    pay_flaky,
    gated_pay,
    pay_twice,
    pays_through_a_child,
]

# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0, auto_advance=True)


@pytest.fixture(params=["lmdb", "memory", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "postgres":
        with _postgres.store() as store:
            yield store
        return
    yield tmp_path / "data" if request.param == "lmdb" else MemoryStore()


@pytest.fixture
async def engine(target: Any, clock: ManualClock) -> AsyncIterator[aion.Engine]:
    async with aion.Engine(target, workflows=ALL, clock=clock) as e:
        yield e


@pytest.fixture
async def mem_engine(clock: ManualClock) -> AsyncIterator[aion.Engine]:
    """An in-memory engine, for tests whose point is not the store."""
    async with aion.Engine(MemoryStore(), workflows=ALL, clock=clock) as e:
        yield e


async def all_pending(engine: aion.Engine, tenant: str = "default") -> list[aion.PendingApproval]:
    return await collect_pages(
        lambda cursor: engine.pending_approvals(tenant=tenant, limit=100, cursor=cursor)
    )


async def event_types(engine: aion.Engine, wf: str, tenant: str = "default") -> list[str]:
    return [h.type for h in await engine.history(wf, tenant=tenant)]


async def started_and_idle(
    engine: aion.Engine, workflow: Any, *args: Any, workflow_id: str, tenant: str = "default"
) -> aion.WorkflowHandle:
    handle = await engine.start(workflow, *args, workflow_id=workflow_id, tenant=tenant)
    await engine.wait_idle()
    return handle


# --- deciding -----------------------------------------------------------------------------------


async def test_approve_returns_the_approval(engine: aion.Engine, clock: ManualClock) -> None:
    handle = await started_and_idle(engine, expense, 120, workflow_id="e1")
    [pending] = await all_pending(engine)
    assert pending.workflow_id == "e1" and pending.action == "pay"
    assert pending.details == {"amount": 120} and pending.step is False
    assert pending.digest.startswith("sha256:") and pending.requested_at == T0
    assert pending.timeout_at is None and pending.tenant == "default"
    desc = await engine.describe("e1")
    assert desc.status is aion.Status.RUNNING
    assert desc.pending["approvals"] == [f"pay ({pending.approval_id})"]

    clock.advance(90)
    await engine.approve("e1", user="alice", comment="within budget")
    result = await handle.result(timeout=5)
    assert result == aion.Approval("alice", "within budget", T0 + timedelta(seconds=90))
    assert await all_pending(engine) == []
    types = await event_types(engine, "e1")
    assert types == [
        "workflow.started",
        "approval.requested",
        "approval.decided",
        "workflow.completed",
    ]
    decided = (await engine.history("e1"))[2].data
    assert decided["user"] == "alice" and decided["approved"] is True
    assert decided["approval_id"] == pending.approval_id and decided["digest"] == pending.digest


async def test_approve_without_a_comment(mem_engine: aion.Engine) -> None:
    handle = await started_and_idle(mem_engine, expense, 1, workflow_id="e")
    await mem_engine.approve("e", user="bob")
    assert await handle.result(timeout=5) == aion.Approval("bob", None, T0)


async def test_an_unhandled_rejection_fails_the_run(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, expense, 5000, workflow_id="e2")
    await engine.reject("e2", user="bob", comment="over the limit")
    with pytest.raises(aion.WorkflowFailed) as info:
        await handle.result(timeout=5)
    assert info.value.error_type == "ApprovalRejected"
    assert "bob" in info.value.error_message and "over the limit" in info.value.error_message
    desc = await engine.describe("e2")
    assert desc.status is aion.Status.FAILED
    assert desc.error is not None and "bob" in desc.error and "over the limit" in desc.error
    assert await all_pending(engine) == []


async def test_a_handled_rejection_is_an_approval_rejected(mem_engine: aion.Engine) -> None:
    handle = await started_and_idle(mem_engine, expense_handled, 7, workflow_id="h")
    await mem_engine.reject("h", user="carol", comment="no receipt")
    result = await handle.result(timeout=5)
    assert result.startswith("rejected: ")
    assert "carol" in result and "no receipt" in result


async def test_a_timed_out_approval_raises_wait_timed_out(target: Any) -> None:
    clock = ManualClock(T0)
    async with aion.Engine(target, workflows=ALL, clock=clock) as engine:
        await timed_out_approval(engine, clock)


async def timed_out_approval(engine: aion.Engine, clock: ManualClock) -> None:
    handle = await started_and_idle(engine, expense_with_timeout, workflow_id="t")
    clock.advance(3600)
    await engine.wait_idle()
    desc = await engine.describe("t")
    assert desc.status is aion.Status.RUNNING and desc.pending.get("approvals", []) == []
    assert await all_pending(engine) == []
    with pytest.raises(aion.NoPendingApproval):
        await engine.approve("t", user="late")
    types = await event_types(engine, "t")
    assert "approval.decided" not in types
    await engine.signal("t", "finish", "done")
    expected = f"timed out at {(T0 + timedelta(hours=1)).isoformat()}: WaitTimedOut"
    assert await handle.result(timeout=5) == [expected, "done"]


async def test_a_decision_before_the_timeout_cancels_it(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with aion.Engine(MemoryStore(), workflows=ALL, clock=clock) as engine:
        handle = await started_and_idle(engine, expense_with_timeout, workflow_id="t")
        [pending] = await all_pending(engine)
        assert pending.timeout_at == T0 + timedelta(hours=1)
        clock.advance(1800)
        await engine.approve("t", user="quick")
        clock.advance(3600)  # past the old timeout: nothing fires
        await engine.wait_idle()
        await engine.signal("t", "finish", "ok")
        assert await handle.result(timeout=5) == ["approved", "ok"]
        types = await event_types(engine, "t")
        assert "timer.fired" not in types


async def test_an_approval_times_out_while_no_engine_runs(tmp_path: Path) -> None:
    path = tmp_path / "data"
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(T0)) as engine:
        await started_and_idle(engine, expense_with_timeout, workflow_id="t")
        assert len(await all_pending(engine)) == 1
    later = ManualClock(T0 + timedelta(hours=2))
    async with aion.Engine(path, workflows=ALL, clock=later) as engine:
        await engine.wait_idle()  # the overdue timer fired at startup
        assert await all_pending(engine) == []
        with pytest.raises(aion.NoPendingApproval):
            await engine.approve("t", user="late")
        await engine.signal("t", "finish", 0)
        expected = f"timed out at {(T0 + timedelta(hours=2)).isoformat()}: WaitTimedOut"
        assert await engine.handle("t").result(timeout=5) == [expected, 0]


async def test_an_evicted_runs_approval_times_out(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with aion.Engine(
        tmp_path / "d", workflows=ALL, clock=clock, max_resident_runs=1
    ) as engine:
        await started_and_idle(engine, expense_with_timeout, workflow_id="t")
        for i in range(3):
            await started_and_idle(engine, idle, workflow_id=f"o{i}")
        clock.advance(3600)
        await engine.wait_idle()
        assert await all_pending(engine) == []
        assert (await engine.describe("t")).pending.get("approvals", []) == []


async def test_a_decision_racing_the_timeout_has_one_outcome() -> None:
    for i in range(2):  # the timer fires first, then the decision arrives first
        clock = ManualClock(T0)
        async with aion.Engine(MemoryStore(), workflows=ALL, clock=clock) as engine:
            handle = await started_and_idle(engine, expense_with_timeout, workflow_id="t")
            outcome: list[str] = []

            async def approve(outcome: list[str] = outcome) -> None:
                try:
                    await engine.approve("t", user="u")
                    outcome.append("approved")
                except aion.NoPendingApproval:
                    outcome.append("too late")

            async with anyio.create_task_group() as tg:
                if i % 2:
                    clock.advance(3600)
                tg.start_soon(approve)
                if not i % 2:
                    clock.advance(3600)
            await engine.wait_idle()
            await engine.signal("t", "finish", None)
            result = await handle.result(timeout=5)
            types = await event_types(engine, "t")
            if outcome == ["approved"]:
                assert result[0] == "approved" and "timer.fired" not in types
            else:
                assert outcome == ["too late"] and result[0].startswith("timed out")
                assert "approval.decided" not in types
            assert await all_pending(engine) == []


# --- errors ---------------------------------------------------------------------------------------


async def test_deciding_an_unknown_or_finished_workflow(engine: aion.Engine) -> None:
    with pytest.raises(aion.WorkflowNotFound):
        await engine.approve("nope", user="u")
    with pytest.raises(aion.WorkflowNotFound):
        await engine.reject("nope", user="u", comment="c")
    handle = await started_and_idle(engine, expense, 1, workflow_id="done")
    await engine.approve("done", user="u")
    await handle.result(timeout=5)
    with pytest.raises(aion.WorkflowClosed):
        await engine.approve("done", user="u")
    with pytest.raises(aion.WorkflowClosed):
        await engine.reject("done", user="u", comment="too late")


async def test_nothing_pending(mem_engine: aion.Engine) -> None:
    await started_and_idle(mem_engine, idle, workflow_id="i")
    with pytest.raises(aion.NoPendingApproval, match="'i'"):
        await mem_engine.approve("i", user="u")
    with pytest.raises(aion.NoPendingApproval):
        await mem_engine.reject("i", user="u", approval_id="made-up")
    assert await event_types(mem_engine, "i") == ["workflow.started"]


async def test_several_pending_need_an_id(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, two_approvals, workflow_id="two")
    pending = await all_pending(engine)
    assert [p.action for p in pending] == ["first", "second"]
    assert len({p.approval_id for p in pending}) == 2
    with pytest.raises(aion.AmbiguousApproval) as info:
        await engine.approve("two", user="u")
    assert pending[0].approval_id in str(info.value) and pending[1].approval_id in str(info.value)
    assert "approval.decided" not in await event_types(engine, "two")

    await engine.approve("two", user="second-user", approval_id=pending[1].approval_id)
    with pytest.raises(aion.NoPendingApproval):  # decided already
        await engine.approve("two", user="again", approval_id=pending[1].approval_id)
    with pytest.raises(aion.NoPendingApproval):
        await engine.reject("two", user="again", comment="x", approval_id=pending[1].approval_id)
    # One left: no id needed now.
    await engine.approve("two", user="first-user")
    assert await handle.result(timeout=5) == ["first-user", "second-user"]
    assert (await event_types(engine, "two")).count("approval.decided") == 2


async def test_a_decision_applies_only_to_what_was_seen(mem_engine: aion.Engine) -> None:
    engine = mem_engine
    handle = await started_and_idle(engine, expense, 10, workflow_id="d")
    [pending] = await all_pending(engine)
    before = await engine.history("d")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(aion.NoPendingApproval, match="nothing was recorded"):
        await engine.approve("d", user="u", digest=wrong)
    with pytest.raises(aion.NoPendingApproval):
        await engine.reject("d", user="u", comment="c", digest=wrong)
    assert await engine.history("d") == before
    assert await all_pending(engine) == [pending]
    await engine.approve("d", user="u", digest=pending.digest)
    assert (await handle.result(timeout=5)).user == "u"


async def test_a_digest_covers_the_details(mem_engine: aion.Engine) -> None:
    handle = await started_and_idle(mem_engine, same_action_twice, workflow_id="s")
    small, large = await all_pending(mem_engine)
    assert (small.action, small.details) == ("pay", {"amount": 1})
    assert (large.action, large.details) == ("pay", {"amount": 1_000_000})
    assert small.digest != large.digest
    with pytest.raises(aion.NoPendingApproval):  # the small one's digest on the large one
        await mem_engine.approve("s", user="u", approval_id=large.approval_id, digest=small.digest)
    await mem_engine.approve("s", user="u", approval_id=small.approval_id, digest=small.digest)
    await mem_engine.reject(
        "s", user="u", comment="too much", approval_id=large.approval_id, digest=large.digest
    )
    assert await handle.result(timeout=5) == ["approved", "rejected"]


@pytest.mark.parametrize("user", ["", "   "])
async def test_a_decision_names_a_person(mem_engine: aion.Engine, user: str) -> None:
    await started_and_idle(mem_engine, expense, 1, workflow_id="u")
    with pytest.raises(aion.errors.InvalidArgument):
        await mem_engine.approve("u", user=user)
    with pytest.raises(aion.errors.InvalidArgument):
        await mem_engine.reject("u", user=user, comment="c")
    assert "approval.decided" not in await event_types(mem_engine, "u")
    assert len(await all_pending(mem_engine)) == 1


async def test_approval_arguments_are_checked_at_the_call(mem_engine: aion.Engine) -> None:
    @aion.workflow(name="bad-approvals")
    async def bad(ctx: aion.Context) -> list[str]:
        seen = []
        calls: list[Callable[[], object]] = [
            lambda: ctx.approval(""),
            lambda: ctx.approval("x", timeout=0),
            lambda: ctx.approval("x", details=object()),
        ]
        for call in calls:
            try:
                call()
            except aion.AionError as exc:
                seen.append(type(exc).__name__)
        return seen

    handle = await mem_engine.start(bad, workflow_id="bad")
    assert await handle.result(timeout=5) == ["InvalidArgument", "InvalidArgument", "PayloadError"]


async def race(engine: aion.Engine, wf: str, kinds: list[str]) -> list[tuple[str, str]]:
    """Send the decisions ``kinds`` at once; (kind, "won" or the loser's error type name)."""
    outcome: list[tuple[str, str]] = []

    async def decide(kind: str) -> None:
        try:
            if kind == "approve":
                await engine.approve(wf, user="approver")
            else:
                await engine.reject(wf, user="rejecter", comment="no")
        except aion.AionError as exc:
            outcome.append((kind, type(exc).__name__))
        else:
            outcome.append((kind, "won"))

    async with anyio.create_task_group() as tg:
        for kind in kinds:
            tg.start_soon(decide, kind)
    return outcome


async def test_concurrent_decisions_one_wins(engine: aion.Engine) -> None:
    for i in range(4):
        wf = f"c{i}"
        handle = await started_and_idle(engine, decide_then_wait, workflow_id=wf)
        # Alternate who goes first, so each side wins some.
        kinds = ["approve", "reject"] if i % 2 else ["reject", "approve"]
        outcome = await race(engine, wf, kinds)
        assert sorted(o for _, o in outcome) == ["NoPendingApproval", "won"], outcome
        winner = next(k for k, o in outcome if o == "won")
        history = await engine.history(wf)
        decided = [h for h in history if h.type == "approval.decided"]
        assert len(decided) == 1 and decided[0].data["approved"] == (winner == "approve")
        await engine.signal(wf, "finish", i)
        result = await handle.result(timeout=5)
        assert result[0] == ("approved" if winner == "approve" else "rejected")


async def test_the_loser_of_a_race_that_ends_the_run_gets_no_pending_approval(
    mem_engine: aion.Engine,
) -> None:
    handle = await started_and_idle(mem_engine, expense_handled, 1, workflow_id="c")
    outcome = await race(mem_engine, "c", ["approve", "reject"])
    await handle.result(timeout=5)
    assert (await event_types(mem_engine, "c")).count("approval.decided") == 1
    assert sorted(o for _, o in outcome) == ["NoPendingApproval", "won"], outcome


async def test_concurrent_decisions_on_an_evicted_run(tmp_path: Path) -> None:
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(
        tmp_path / "d", workflows=ALL, clock=clock, max_resident_runs=1
    ) as engine:
        handle = await started_and_idle(engine, decide_then_wait, workflow_id="c")
        for i in range(3):
            await started_and_idle(engine, idle, workflow_id=f"other{i}")
        results: list[str] = []

        async def decide(approved: bool) -> None:
            try:
                if approved:
                    await engine.approve("c", user="a")
                else:
                    await engine.reject("c", user="r", comment="no")
                results.append("won")
            except aion.NoPendingApproval:
                results.append("lost")

        async with anyio.create_task_group() as tg:
            tg.start_soon(decide, True)
            tg.start_soon(decide, False)
            tg.start_soon(decide, True)
        assert sorted(results) == ["lost", "lost", "won"]
        await engine.signal("c", "finish", None)
        await handle.result(timeout=5)
        assert (await event_types(engine, "c")).count("approval.decided") == 1


# --- listing --------------------------------------------------------------------------------------


async def test_pending_approvals_pages_across_runs(engine: aion.Engine, clock: ManualClock) -> None:
    for i in range(7):
        await engine.start(expense, i, workflow_id=f"r{i}")
        await engine.wait_idle()
        clock.advance(1)
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await engine.pending_approvals(limit=2, cursor=cursor)
        pages.append([p.workflow_id for p in page.items])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == [["r0", "r1"], ["r2", "r3"], ["r4", "r5"], ["r6"]]  # oldest first
    assert all(isinstance(p, aion.PendingApproval) for p in page.items)


async def test_pending_approvals_pages_stay_exact_under_decisions(
    engine: aion.Engine, clock: ManualClock
) -> None:
    for i in range(7):
        await engine.start(expense, i, workflow_id=f"r{i}")
        await engine.wait_idle()
        clock.advance(1)
    seen: list[str] = []
    page = await engine.pending_approvals(limit=2)
    seen += [p.workflow_id for p in page.items]
    assert seen == ["r0", "r1"]
    # Between page reads: decide one already seen (the cursor's own row), one not yet seen,
    # and request a new one.
    await engine.approve("r1", user="u")
    await engine.approve("r4", user="u")
    await started_and_idle(engine, expense, 99, workflow_id="r7")
    cursor = page.next_cursor
    while cursor is not None:
        page = await engine.pending_approvals(limit=2, cursor=cursor)
        seen += [p.workflow_id for p in page.items]
        cursor = page.next_cursor
    assert seen == ["r0", "r1", "r2", "r3", "r5", "r6", "r7"]


async def test_pending_approvals_arguments(mem_engine: aion.Engine) -> None:
    await started_and_idle(mem_engine, expense, 1, workflow_id="a")
    await started_and_idle(mem_engine, expense, 2, workflow_id="b")
    page = await mem_engine.pending_approvals(limit=1)
    assert page.next_cursor is not None
    with pytest.raises(aion.errors.InvalidArgument):
        await mem_engine.pending_approvals(limit=0)
    with pytest.raises(aion.errors.InvalidArgument):  # the cursor carries its tenant
        await mem_engine.pending_approvals(tenant="acme", cursor=page.next_cursor)
    with pytest.raises(aion.errors.InvalidArgument):
        await mem_engine.pending_approvals(cursor="not-a-cursor")


async def test_a_finished_run_leaves_the_pending_list(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, ends_with_pending, workflow_id="f")
    assert [p.action for p in await all_pending(engine)] == ["never-decided"]
    assert (await engine.describe("f")).pending["approvals"]
    await engine.signal("f", "end", 1)
    assert await handle.result(timeout=5) == 1
    assert await all_pending(engine) == []
    with pytest.raises(aion.WorkflowClosed):
        await engine.approve("f", user="u")


async def test_continue_as_new_leaves_only_the_new_runs_approvals(engine: aion.Engine) -> None:
    await started_and_idle(engine, renews, 0, workflow_id="cn")
    [first] = await all_pending(engine)
    assert first.action == "round-0"
    await engine.signal("cn", "next")
    await engine.wait_idle()
    [second] = await all_pending(engine)
    assert second.action == "round-1" and second.run_id != first.run_id
    assert second.approval_id != first.approval_id
    desc = await engine.describe("cn")
    assert desc.pending["approvals"] == [f"round-1 ({second.approval_id})"]
    with pytest.raises(aion.NoPendingApproval):
        await engine.approve("cn", user="u", approval_id=first.approval_id)
    await engine.approve("cn", user="u")
    assert await all_pending(engine) == []


async def test_a_cancelled_run_leaves_the_pending_list(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, cancelled_while_waiting, workflow_id="x")
    assert len(await all_pending(engine)) == 1
    await engine.cancel("x", reason="no longer needed")
    with pytest.raises(aion.WorkflowCancelled):
        await handle.result(timeout=5)
    assert await all_pending(engine) == []
    with pytest.raises(aion.WorkflowClosed):
        await engine.approve("x", user="u")


async def test_cancelling_withdraws_the_approval(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, cleans_up_after_cancel, workflow_id="w")
    await engine.cancel("w")
    await engine.wait_idle()
    # The run still runs (it cleans up), but nobody can decide the withdrawn approval.
    assert await all_pending(engine) == []
    assert (await engine.describe("w")).pending.get("approvals", []) == []
    with pytest.raises(aion.NoPendingApproval):
        await engine.approve("w", user="u")
    await engine.signal("w", "cleaned", True)
    result = await handle.result(timeout=5)
    assert result == ["cancelled", True]
    assert "approval.decided" not in await event_types(engine, "w")


# --- the approval policy ------------------------------------------------------------------------


@pytest.fixture
async def policy_engine(target: Any, clock: ManualClock) -> AsyncIterator[aion.Engine]:
    transfers.clear()
    failures.clear()
    async with aion.Engine(target, workflows=ALL, clock=clock, approval_policy=["payments.*"]) as e:
        yield e


async def test_a_held_step_runs_once_after_approval(policy_engine: aion.Engine) -> None:
    engine = policy_engine
    handle = await started_and_idle(engine, pay, "acct-1", 250, workflow_id="p")
    assert transfers == []  # held: it did not run
    [pending] = await all_pending(engine)
    assert pending.step is True and pending.action == "payments.transfer"
    assert pending.details == [["acct-1", 250], {}]
    assert pending.workflow_id == "p" and pending.timeout_at is None
    types = await event_types(engine, "p")
    assert "step.started" not in types and types.count("approval.requested") == 1
    desc = await engine.describe("p")
    assert desc.pending["approvals"] == [f"payments.transfer ({pending.approval_id})"]

    await engine.approve("p", user="treasurer")
    assert await handle.result(timeout=5) == "tx-acct-1-250"
    assert transfers == [("p", "acct-1", 250, 1)]  # once, as attempt 1
    types = await event_types(engine, "p")
    assert types.count("step.started") == 1
    assert types.index("approval.decided") < types.index("step.started")
    assert await all_pending(engine) == []


async def test_a_rejected_held_step_never_runs(policy_engine: aion.Engine) -> None:
    engine = policy_engine
    handled = await started_and_idle(engine, pay_handled, "a", 1, workflow_id="h")
    unhandled = await started_and_idle(engine, pay, "b", 2, workflow_id="u")
    await engine.reject("h", user="cfo", comment="fraud suspected")
    await engine.reject("u", user="cfo", comment="duplicate")
    result = await handled.result(timeout=5)
    assert result.startswith("rejected: ") and "cfo" in result and "fraud suspected" in result
    with pytest.raises(aion.WorkflowFailed) as info:
        await unhandled.result(timeout=5)
    assert info.value.error_type == "ApprovalRejected" and "duplicate" in str(info.value)
    assert transfers == []
    for wf in ("h", "u"):
        types = await event_types(engine, wf)
        assert "step.started" not in types and "step.completed" not in types


async def test_a_held_step_neither_retries_nor_fails(
    policy_engine: aion.Engine, clock: ManualClock
) -> None:
    engine = policy_engine
    handle = await started_and_idle(engine, pay_flaky, "a", workflow_id="f")
    clock.advance(3600)  # retry intervals pass: a held step is not retried
    await engine.wait_idle()
    assert failures == []
    types = await event_types(engine, "f")
    assert not {"step.started", "step.failed", "step.retry_scheduled"} & set(types)
    assert (await engine.describe("f")).status is aion.Status.RUNNING
    await engine.approve("f", user="u")
    with pytest.raises(aion.WorkflowFailed, match="bank unreachable"):
        await handle.result(timeout=5)
    # The retry policy applies from approval on, counting from attempt 1.
    assert failures == [("f", 1), ("f", 2), ("f", 3)]
    assert (await event_types(engine, "f")).count("approval.requested") == 1


async def test_cancelling_a_held_step_never_runs_it(policy_engine: aion.Engine) -> None:
    handle = await started_and_idle(policy_engine, pay, "a", 1, workflow_id="x")
    await policy_engine.cancel("x")
    with pytest.raises(aion.WorkflowCancelled):
        await handle.result(timeout=5)
    assert transfers == [] and await all_pending(policy_engine) == []
    assert "step.started" not in await event_types(policy_engine, "x")


async def test_two_held_steps_are_decided_one_by_one(policy_engine: aion.Engine) -> None:
    handle = await started_and_idle(policy_engine, pay_twice, workflow_id="two")
    pending = await all_pending(policy_engine)
    assert [p.details for p in pending] == [[["a", 1], {}], [["b", 2], {}]]
    assert all(p.step for p in pending)
    with pytest.raises(aion.AmbiguousApproval):
        await policy_engine.approve("two", user="u")
    await policy_engine.approve("two", user="u", approval_id=pending[1].approval_id)
    await policy_engine.wait_idle()
    assert transfers == [("two", "b", 2, 1)]
    await policy_engine.approve("two", user="u", approval_id=pending[0].approval_id)
    assert await handle.result(timeout=5) == ["tx-a-1", "tx-b-2"]
    assert sorted(transfers) == [("two", "a", 1, 1), ("two", "b", 2, 1)]


async def test_a_childs_steps_are_held_too(policy_engine: aion.Engine) -> None:
    handle = await started_and_idle(policy_engine, pays_through_a_child, workflow_id="parent")
    [pending] = await all_pending(policy_engine)
    assert pending.workflow_id == "parent/child-1" and pending.step
    await policy_engine.approve("parent/child-1", user="u")
    assert await handle.result(timeout=5) == "tx-c-5"


async def test_a_held_step_stays_held_when_the_policy_goes(tmp_path: Path) -> None:
    """A policy applies when a step is scheduled: a step held before a restart without the
    policy still waits for its decision, and is not requested again."""
    transfers.clear()
    path = tmp_path / "data"
    async with aion.Engine(
        path, workflows=ALL, clock=ManualClock(T0), approval_policy=["payments.*"]
    ) as engine:
        await started_and_idle(engine, pay, "a", 1, workflow_id="p")
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(T0)) as engine:
        await engine.wait_idle()
        assert transfers == []
        [pending] = await all_pending(engine)
        assert pending.step
        await engine.approve("p", user="u")
        assert await engine.handle("p").result(timeout=5) == "tx-a-1"
        assert (await event_types(engine, "p")).count("approval.requested") == 1
    assert transfers == [("p", "a", 1, 1)]


async def test_unmatched_steps_are_not_held(policy_engine: aion.Engine) -> None:
    handle = await policy_engine.start(refund, "a", 3, workflow_id="r")
    assert await handle.result(timeout=5) == "tx-a-3 tx-a-3"
    assert await all_pending(policy_engine) == []
    assert "approval.requested" not in await event_types(policy_engine, "r")


async def test_policy_rules_by_tenant_and_workflow_type(clock: ManualClock) -> None:
    transfers.clear()
    policy = [
        aion.ApprovalRule("payments.*", tenant="acme"),
        aion.ApprovalRule("payments.transfer", workflow_type="pay_other"),
    ]
    async with aion.Engine(
        MemoryStore(), workflows=ALL, clock=clock, approval_policy=policy
    ) as engine:
        held_tenant = await started_and_idle(engine, pay, "a", 1, workflow_id="p", tenant="acme")
        free = await engine.start(pay, "b", 2, workflow_id="p", tenant="globex")
        held_type = await started_and_idle(engine, pay_other, "c", 3, workflow_id="q")
        free_type = await engine.start(pay, "d", 4, workflow_id="p")
        assert await free.result(timeout=5) == "tx-b-2"
        assert await free_type.result(timeout=5) == "tx-d-4"
        assert [p.workflow_id for p in await all_pending(engine, "acme")] == ["p"]
        assert [p.workflow_id for p in await all_pending(engine)] == ["q"]
        assert await all_pending(engine, "globex") == []
        assert sorted(t[1] for t in transfers) == ["b", "d"]
        await engine.approve("p", user="u", tenant="acme")
        await engine.approve("q", user="u")
        assert await held_tenant.result(timeout=5) == "tx-a-1"
        assert await held_type.result(timeout=5) == "tx-c-3"
        assert sorted(t[1] for t in transfers) == ["a", "b", "c", "d"]


async def test_a_restart_never_requests_the_same_approval_twice(tmp_path: Path) -> None:
    transfers.clear()
    path = tmp_path / "data"
    for _ in range(3):
        async with aion.Engine(
            path, workflows=ALL, clock=ManualClock(T0), approval_policy=["payments.*"]
        ) as engine:
            await engine.start(pay, "a", 1, workflow_id="p")  # idempotent after the first
            await engine.start(expense, 1, workflow_id="e")
            await engine.wait_idle()
            assert len(await all_pending(engine)) == 2
    async with aion.Engine(
        path, workflows=ALL, clock=ManualClock(T0), approval_policy=["payments.*"]
    ) as engine:
        await engine.wait_idle()
        for wf in ("p", "e"):
            assert (await event_types(engine, wf)).count("approval.requested") == 1
        await engine.approve("p", user="u")
        await engine.approve("e", user="u")
        assert await engine.handle("p").result(timeout=5) == "tx-a-1"
        assert (await engine.handle("e").result(timeout=5)).user == "u"
    assert transfers == [("p", "a", 1, 1)]


async def test_an_approved_step_in_flight_is_not_held_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """Approved, then the engine stops while the step runs: the next engine runs the step again
    (at least once, same attempt) without asking for approval again."""
    transfers.clear()
    gate["block"], gate["started"] = True, anyio.Event()
    path = tmp_path / "data"
    async with aion.Engine(
        path, workflows=ALL, clock=ManualClock(T0), approval_policy=["payments.*"]
    ) as engine:
        await started_and_idle(engine, gated_pay, "a", workflow_id="p")
        await engine.approve("p", user="u")
        with anyio.fail_after(5):
            await gate["started"].wait()
        assert transfers == [("p", "a", 0, 1)]  # running, and never finishing here
    gate["block"] = False
    async with aion.Engine(
        path, workflows=ALL, clock=ManualClock(T0), approval_policy=["payments.*"]
    ) as engine:
        assert await engine.handle("p").result(timeout=5) == "tx-a"
        types = await event_types(engine, "p")
        assert types.count("approval.requested") == 1 and types.count("approval.decided") == 1
        assert await all_pending(engine) == []
    assert transfers == [("p", "a", 0, 1), ("p", "a", 0, 1)]


async def test_eviction_never_requests_the_same_approval_twice(tmp_path: Path) -> None:
    transfers.clear()
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(
        tmp_path / "d",
        workflows=ALL,
        clock=clock,
        approval_policy=["payments.*"],
        max_resident_runs=1,
    ) as engine:
        handle = await started_and_idle(engine, pay, "a", 1, workflow_id="p")
        for round_ in range(3):
            for i in range(2):
                await started_and_idle(engine, idle, workflow_id=f"o{round_}-{i}")
            # Reactivates "p" by replay without deciding anything.
            with pytest.raises(aion.NoPendingApproval):
                await engine.approve("p", user="u", digest="sha256:" + "1" * 64)
            await engine.wait_idle()
        assert (await event_types(engine, "p")).count("approval.requested") == 1
        assert len(await all_pending(engine)) == 1
        await engine.approve("p", user="u")
        assert await handle.result(timeout=5) == "tx-a-1"
        types = await event_types(engine, "p")
        assert types.count("approval.requested") == 1 and types.count("step.started") == 1
    assert transfers == [("p", "a", 1, 1)]


async def test_a_policy_is_checked_at_construction() -> None:
    with pytest.raises(aion.errors.InvalidArgument):
        aion.ApprovalRule("")
    with pytest.raises(aion.errors.InvalidArgument):
        aion.Engine(MemoryStore(), approval_policy=[""])


# --- tenancy --------------------------------------------------------------------------------------


async def test_tenants_never_see_or_change_each_others_approvals(engine: aion.Engine) -> None:
    acme = await started_and_idle(engine, expense, 1, workflow_id="same", tenant="acme")
    globex = await started_and_idle(engine, expense, 2, workflow_id="same", tenant="globex")
    [a] = await all_pending(engine, "acme")
    [g] = await all_pending(engine, "globex")
    assert (a.tenant, a.details) == ("acme", {"amount": 1})
    assert (g.tenant, g.details) == ("globex", {"amount": 2})
    assert await all_pending(engine) == []  # the default tenant has none

    with pytest.raises(aion.WorkflowNotFound):
        await engine.approve("same", user="u")  # not in the default tenant
    with pytest.raises(aion.WorkflowNotFound):
        await engine.approve("same", user="u", tenant="initech")
    with pytest.raises(aion.NoPendingApproval):  # another tenant's approval id
        await engine.approve("same", user="u", approval_id=g.approval_id, tenant="acme")

    await engine.approve("same", user="acme-boss", tenant="acme")
    assert (await acme.result(timeout=5)).user == "acme-boss"
    assert await all_pending(engine, "acme") == []
    assert await all_pending(engine, "globex") == [g]
    desc = await engine.describe("same", tenant="globex")
    assert desc.status is aion.Status.RUNNING and desc.pending["approvals"]
    listed = {
        t: [(d.workflow_id, d.status) for d in (await engine.list(tenant=t)).items]
        for t in ("acme", "globex", "default")
    }
    assert listed == {
        "acme": [("same", aion.Status.COMPLETED)],
        "globex": [("same", aion.Status.RUNNING)],
        "default": [],
    }
    assert "approval.decided" not in await event_types(engine, "same", "globex")

    await engine.reject("same", user="globex-boss", comment="no", tenant="globex")
    with pytest.raises(aion.WorkflowFailed, match="globex-boss"):
        await globex.result(timeout=5)
    acme_history = await engine.history("same", tenant="acme")
    assert [h.data["user"] for h in acme_history if h.type == "approval.decided"] == ["acme-boss"]
