"""Property tests: people and outside systems in the loop, in any order, across restarts.

One workflow type (``expense``) runs under the same workflow id in two tenants. It creates two
waitpoints and hands their tokens out through a step, asks a manager, then asks finance and
legal concurrently (``ctx.gather``) while it waits for the provider's callback, then runs a step
that the engine's approval policy holds in tenant ``acme`` only, then waits for the receipt.
Approvals and waitpoints may have timeouts.

Hypothesis generates a sequence of operations against it: approvals and rejections (by id or
not, with the right, a wrong or no digest, with another tenant's id), duplicate deliveries of
decisions already acknowledged, concurrent decisions, waitpoint completions with valid tokens,
forged ones (altered signature or claims, truncated, re-signed with another key ring, another
version) and duplicate ones, concurrent completions, clock advances past the timeouts, restarts
(the ``async with Engine`` is left and a new engine opens on the same MemoryStore or LMDB
directory, with the same key: the same key bytes, or the store's own key ring) and restarts
while a decision or completion is in flight. After every operation:

- the outcome is the one the state before it predicts, and every error raised is one of the
  documented ones (``NoPendingApproval``, ``AmbiguousApproval``, ``WorkflowClosed``,
  ``InvalidToken``, ``WaitpointClosed``); a call that raised recorded nothing;
- each approval is requested once and decided at most once, never after it timed out and never
  after its ``timeout_at``; the approval rows and ``pending_approvals`` agree with the history;
- each waitpoint is completed at most once; rows and ``pending_waitpoints`` agree with the
  history, and show a fingerprint, never the token;
- every acknowledged decision and completion is in its own tenant's history exactly once, and
  the history holds nothing else (a call interrupted by a restart may or may not have landed);
- a forged token records the time of the failed validation on the waitpoint it names;
- a held step has not run (nor started an attempt) unless its approval was granted.

At the end every open wait is decided or completed, timers run out, and each run ends with the
result its recorded decisions imply; its history replays with ``aion.testing.replay``.

Targeted tests at the end of the file pin behaviours the properties do not cover.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import aion
import aion.testing
from aion import events as ev
from aion._codec import decode_payload
from aion._tokens import fingerprint, peek_claims
from aion.store import (
    ApprovalRow,
    ApprovalStatus,
    MemoryStore,
    WaitpointRow,
    WaitpointStatus,
    collect_pages,
)
from aion.testing import ManualClock

WF = "expense-1"
TENANTS = ("acme", "globex")
KEY = bytes(range(32))  # the same key bytes for every engine of a scenario
ROGUE = b"r" * 32  # what a forger signs with
START = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = [aion.ApprovalRule("payments.*", tenant="acme")]
DOCUMENTED = (
    aion.NoPendingApproval,
    aion.AmbiguousApproval,
    aion.WorkflowClosed,
    aion.InvalidToken,
    aion.WaitpointClosed,
)
WRONG_DIGEST = "sha256:" + "0" * 64
WAITPOINTS = ("receipt", "provider")

# Side effects of the steps, per (tenant, workflow id): reset for every example.
TOKENS: dict[tuple[str, str, str], str] = {}
TRANSFERS: Counter[tuple[str, str]] = Counter()


def hand_out(tenant: str, workflow_id: str, name: str, token: str) -> str:
    """The step that sends a waitpoint's token to the outside system (here: a dict)."""
    TOKENS[(tenant, workflow_id, name)] = token
    return f"sent {name}"


def transfer(amount: int) -> str:
    """The payment: held for approval by the policy in tenant acme."""
    info = aion.current_step()
    TRANSFERS[(info.tenant, info.workflow_id)] += 1
    return f"paid {amount}"


async def ask(
    ctx: aion.Context, action: str, details: Any, timeout: float | None
) -> list[str | None]:
    try:
        approval = await ctx.approval(action, details=details, timeout=timeout)
    except aion.ApprovalRejected as exc:
        return ["rejected", str(exc)]
    except aion.WaitTimedOut:
        return ["timed_out"]
    return ["approved", approval.user, approval.comment]


async def callback(wp: aion.Waitpoint) -> list[Any]:
    try:
        return ["completed", await wp.wait()]
    except aion.WaitTimedOut:
        return ["expired"]


@aion.workflow(name="hitl.expense")
async def expense(ctx: aion.Context, timeouts: dict[str, float | None]) -> dict[str, Any]:
    tenant, wid = ctx.info.tenant, ctx.info.workflow_id
    receipt = await ctx.waitpoint("receipt", timeout=timeouts["receipt"])
    await ctx.step(hand_out, tenant, wid, "receipt", receipt.token)
    manager = await ask(ctx, "manager", {"amount": 120}, timeouts["manager"])
    provider = await ctx.waitpoint("provider", timeout=timeouts["provider"])
    await ctx.step(hand_out, tenant, wid, "provider", provider.token)
    finance, legal, paid = await ctx.gather(
        ask(ctx, "finance", {"budget": "travel"}, timeouts["finance"]),
        ask(ctx, "legal", None, timeouts["legal"]),
        callback(provider),
    )
    # Held by the policy in acme; a rejection is not caught: the run fails with it.
    transferred = await ctx.step(transfer, 120, name="payments.transfer")
    return {
        "manager": manager,
        "finance": finance,
        "legal": legal,
        "provider": paid,
        "transfer": transferred,
        "receipt": await callback(receipt),
    }


ACTIONS = ("manager", "finance", "legal", "payments.transfer")


# --- forging tokens --------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _us(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _at(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


FORGERIES = ("signature", "claims", "expiry", "truncated", "resigned", "rogue_kid", "version")


def forge(token: str, how: str, n: int) -> str:
    """A token that must not verify: ``token`` altered, truncated or re-signed."""
    version, kid, payload, signature = token.split(".")
    claims = msgspec.msgpack.decode(_unb64(payload))
    match how:
        case "signature":  # one character of the signature changed
            i = n % len(signature)
            swap = "A" if signature[i] != "A" else "B"
            return ".".join((version, kid, payload, signature[:i] + swap + signature[i + 1 :]))
        case "claims":  # another waitpoint id, the signature kept
            claims[2] = claims[2][:-1] + ("2" if claims[2][-1] != "2" else "1")
            return ".".join((version, kid, _b64(msgspec.msgpack.encode(claims)), signature))
        case "expiry":  # the expiry lifted, the signature kept
            claims[4] = None if claims[4] is not None else claims[3] + 10**12
            return ".".join((version, kid, _b64(msgspec.msgpack.encode(claims)), signature))
        case "truncated":
            return token[: n % len(token)]
        case "resigned" | "rogue_kid":  # signed properly, with a key that is not ours
            ring = aion.KeyRing.from_secret(ROGUE, kid=kid if how == "resigned" else "rogue")
            expires = None if claims[4] is None else _at(claims[4])
            return ring.sign(claims[0], claims[1], claims[2], _at(claims[3]), expires)
        case _:
            return ".".join(("v2", kid, payload, signature))


# --- the scenario ------------------------------------------------------------------------------


@dataclass
class Call:
    """One decision or completion made by the test; ``user``/``payload`` identify it."""

    n: int
    kind: str  # "decide" or "complete"
    tenant: str
    target: str  # the approval or waitpoint id it is meant for
    approved: bool = False
    user: str = ""
    comment: str | None = None
    outcome: str = "pending"  # "acked", an error type name, or "maybe" (interrupted)


@dataclass
class View:
    """One tenant's state while the engine is idle."""

    open: bool
    pending: list[aion.PendingApproval]
    waitpoints: dict[str, WaitpointRow]
    history: list[ev.Event]


@dataclass
class Scenario:
    backend: str
    key_file: bool
    resident: int
    timeouts: dict[str, dict[str, float | None]]
    tmp: str
    clock: ManualClock = field(default_factory=lambda: ManualClock(START))
    store: Any = None
    engine: Any = None
    cm: Any = None
    calls: list[Call] = field(default_factory=list)
    counter: Any = field(default_factory=lambda: itertools.count(1))
    restarts: int = 0
    forged: int = 0
    stats: Counter[str] = field(default_factory=Counter)
    landed: set[int] = field(default_factory=set)  # interrupted calls that were recorded
    # Failed validations: (token, when, whether the engine was stopping), not yet looked at;
    # and the time each waitpoint must show as its last failed validation (None: unknown,
    # a note made while the engine stopped may or may not have been written).
    failed: list[tuple[str, datetime, bool]] = field(default_factory=list)
    failed_at: dict[tuple[str, str, str], datetime | None] = field(default_factory=dict)
    stopping: bool = False

    # --- engines -------------------------------------------------------------------------------

    async def open(self) -> None:
        if self.backend == "memory":
            if self.store is None:
                self.store = MemoryStore()
            where: Any = self.store
        else:
            where = Path(self.tmp) / "data"
        self.cm = aion.Engine(
            where,
            workflows=[expense],
            clock=self.clock,
            durable=False,
            approval_policy=POLICY,
            waitpoint_key=None if self.key_file else KEY,
            max_resident_runs=self.resident,
            activation_workers=4,
            max_concurrent_steps=4,
            step_threads=4,
        )
        self.engine = await self.cm.__aenter__()

    async def close(self) -> None:
        cm, self.cm = self.cm, None
        await cm.__aexit__(None, None, None)

    async def restart(self) -> None:
        await self.close()
        self.restarts += 1
        await self.open()
        await self.idle()

    async def idle(self) -> None:
        """Wait until nothing happens (including the write that notes a failed validation)."""
        await self.engine.wait_idle()

    # --- looking -------------------------------------------------------------------------------

    async def view(self, tenant: str) -> View:
        engine = self.engine
        desc = await engine.describe(WF, tenant=tenant)
        pending: list[aion.PendingApproval] = []
        cursor = None
        while True:  # two per page: the pagination is part of what is checked
            page = await engine.pending_approvals(tenant=tenant, limit=2, cursor=cursor)
            pending += [p for p in page.items if p.workflow_id == WF]
            cursor = page.next_cursor
            if cursor is None:
                break
        rows = await collect_pages(
            lambda c: engine.store.list_waitpoints(WF, tenant=tenant, cursor=c)
        )
        history = await engine.store.read_history(WF, tenant=tenant)
        return View(
            not desc.status.is_terminal, pending, {r.waitpoint_id: r for r in rows}, history
        )

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def token(self, tenant: str, wp: int) -> str | None:
        return TOKENS.get((tenant, WF, WAITPOINTS[wp % 2]))

    def waitpoint_id(self, tenant: str, wp: int) -> str | None:
        token = self.token(tenant, wp)
        claims = peek_claims(token) if token else None
        return claims.waitpoint_id if claims else None

    # --- calls ---------------------------------------------------------------------------------

    def new_call(self, kind: str, tenant: str, target: str, **kw: Any) -> Call:
        call = Call(next(self.counter), kind, tenant, target, **kw)
        if kind == "decide":
            call.user = f"u{call.n}"
            call.comment = None if call.n % 3 == 0 else f"c{call.n}"
        self.calls.append(call)
        return call

    async def decide(
        self, call: Call, approval_id: str | None, digest: str | None
    ) -> BaseException | None:
        method = self.engine.approve if call.approved else self.engine.reject
        return await self._attempt(
            call,
            lambda: method(
                WF,
                user=call.user,
                comment=call.comment,
                approval_id=approval_id,
                digest=digest,
                tenant=call.tenant,
            ),
        )

    async def complete(self, call: Call, token: str) -> BaseException | None:
        error = await self._attempt(
            call, lambda: self.engine.complete_waitpoint(token, {"n": call.n})
        )
        if isinstance(error, aion.InvalidToken):
            self.failed.append((token, self.now(), self.stopping))
        return error

    async def _attempt(self, call: Call, fn: Callable[[], Awaitable[None]]) -> BaseException | None:
        try:
            with anyio.fail_after(30):  # a call must never hang, even across a restart
                await fn()
        except DOCUMENTED as exc:
            call.outcome = type(exc).__name__
            self.stats[call.outcome] += 1
            return exc
        except aion.AionError as exc:
            # Only a call cut off by the engine stopping: it may or may not have landed.
            assert self.stopping and type(exc) is aion.EngineStopped, f"undocumented error {exc!r}"
            assert "stopped" in str(exc) or "not running" in str(exc), exc
            call.outcome = "maybe"
            self.stats["interrupted"] += 1
            return exc
        call.outcome = "acked"
        self.stats[f"{call.kind} acked"] += 1
        return None


# --- predictions -------------------------------------------------------------------------------


def predict_decision(view: View, approval_id: str | None, digest: str | None) -> str:
    if not view.open:
        return "WorkflowClosed"
    if approval_id is None:
        if not view.pending:
            return "NoPendingApproval"
        if len(view.pending) > 1:
            return "AmbiguousApproval"
        target: aion.PendingApproval | None = view.pending[0]
    else:
        target = next((p for p in view.pending if p.approval_id == approval_id), None)
    if target is None or (digest is not None and digest != target.digest):
        return "NoPendingApproval"
    return "acked"


def predict_completion(row: WaitpointRow | None, now: datetime) -> str:
    assert row is not None
    if row.expires_at is not None and now >= row.expires_at:
        return "InvalidToken"
    if row.status is not WaitpointStatus.PENDING:
        return "WaitpointClosed"
    return "acked"


# --- operations --------------------------------------------------------------------------------

tenant_ix = st.integers(0, 1)
pick = st.integers(0, 7)

decide_op = st.tuples(
    st.just("decide"),
    tenant_ix,
    st.none() | pick,  # None: no approval id
    st.booleans(),  # approve or reject
    st.sampled_from(["none", "right", "wrong"]),  # the digest passed
)
foreign_op = st.tuples(st.just("foreign"), tenant_ix, pick, st.booleans())
duplicate_op = st.tuples(st.just("duplicate"), pick, st.booleans())
concurrent_op = st.tuples(
    st.just("concurrent"),
    st.tuples(tenant_ix, pick, st.booleans()),
    st.tuples(tenant_ix, pick, st.booleans()),
)
complete_op = st.tuples(
    st.just("complete"),
    tenant_ix,
    st.integers(0, 1),
    st.sampled_from(("valid", "valid", "valid", *FORGERIES)),
    st.integers(0, 200),
)
complete_twice_op = st.tuples(st.just("complete_twice"), tenant_ix, st.integers(0, 1))
advance_op = st.tuples(st.just("advance"), st.sampled_from([30, 120, 400, 1500]))
restart_op = st.tuples(st.just("restart"))
interrupted_op = st.tuples(
    st.just("interrupted"),
    st.one_of(
        st.tuples(st.just("decide"), tenant_ix, pick, st.booleans()),
        st.tuples(st.just("complete"), tenant_ix, st.integers(0, 1)),
    ),
    st.integers(0, 12),  # turns of the event loop the shutdown gets before the call starts
)

# Weighted: decisions and completions are what the properties are about.
_OPS = {
    "decide": decide_op,
    "foreign": foreign_op,
    "duplicate": duplicate_op,
    "concurrent": concurrent_op,
    "complete": complete_op,
    "complete_twice": complete_twice_op,
    "advance": advance_op,
    "restart": restart_op,
    "interrupted": interrupted_op,
}
_WEIGHTS = {
    "decide": 5,
    "complete": 4,
    "duplicate": 2,
    "concurrent": 2,
    "advance": 2,
    "restart": 2,
    "interrupted": 3,
}
operation = st.sampled_from([kind for kind in _OPS for _ in range(_WEIGHTS.get(kind, 1))]).flatmap(
    lambda kind: _OPS[kind]
)
operations = st.lists(operation, min_size=3, max_size=30)

timeout_choices = st.fixed_dictionaries(
    {
        "manager": st.sampled_from([None, 100.0]),
        "finance": st.sampled_from([None, 300.0]),
        "legal": st.sampled_from([None, None, 1000.0]),
        "provider": st.sampled_from([None, 500.0]),
        "receipt": st.sampled_from([None, 2000.0]),
    }
)
scenarios = st.fixed_dictionaries(
    {
        "key_file": st.booleans(),
        "resident": st.sampled_from([1, 10_000]),
        "timeouts": st.fixed_dictionaries({t: timeout_choices for t in TENANTS}),
    }
)


async def apply(s: Scenario, op: tuple[Any, ...]) -> None:
    kind = op[0]
    engine = s.engine
    if kind == "advance":
        s.clock.advance(op[1])
        await s.idle()
        return
    if kind == "restart":
        await s.restart()
        return
    views = {t: await s.view(t) for t in TENANTS}
    before = {t: len(v.history) for t, v in views.items()}
    recorded = True  # whether a call of this operation may have recorded something
    match op:
        case ("decide", t, p, approved, digest_mode):
            tenant = TENANTS[t]
            view = views[tenant]
            approval_id = None
            target = view.pending[(p or 0) % len(view.pending)] if view.pending else None
            if p is not None:
                approval_id = target.approval_id if target else "00000000-a9"
            elif len(view.pending) != 1:
                target = None
            digest = {
                "none": None,
                "right": target.digest if target else WRONG_DIGEST,
                "wrong": WRONG_DIGEST,
            }[digest_mode]
            call = s.new_call(
                "decide", tenant, target.approval_id if target else "?", approved=approved
            )
            await s.decide(call, approval_id, digest)
            expected = predict_decision(view, approval_id, digest)
            assert call.outcome == expected, (op, call, view.pending)
            recorded = call.outcome == "acked"
        case ("foreign", t, p, approved):
            tenant, other = TENANTS[t], TENANTS[1 - t]
            theirs = views[other].pending
            approval_id = theirs[p % len(theirs)].approval_id if theirs else "00000000-a1"
            call = s.new_call("decide", tenant, approval_id, approved=approved)
            await s.decide(call, approval_id, None)
            # Another tenant's approval is not this tenant's business: never pending here.
            assert call.outcome == ("NoPendingApproval" if views[tenant].open else "WorkflowClosed")
            recorded = False
        case ("duplicate", k, flip):
            done = [c for c in s.calls if c.kind == "decide" and c.outcome == "acked"]
            if not done:
                return
            first = done[k % len(done)]
            call = s.new_call("decide", first.tenant, first.target, approved=first.approved ^ flip)
            await s.decide(call, first.target, None)
            view = views[first.tenant]
            assert call.outcome == ("NoPendingApproval" if view.open else "WorkflowClosed")
            recorded = False
        case ("concurrent", a, b):
            await concurrent_decisions(s, views, a, b)
        case ("complete", t, wp, how, n):
            tenant = TENANTS[t]
            token = s.token(tenant, wp)
            if token is None:
                return  # not handed out yet
            wp_id = s.waitpoint_id(tenant, wp)
            assert wp_id is not None
            call = s.new_call("complete", tenant, wp_id)
            if how == "valid":
                await s.complete(call, token)
                assert call.outcome == predict_completion(views[tenant].waitpoints[wp_id], s.now())
                recorded = call.outcome == "acked"
            else:
                forged = forge(token, how, n)
                assert forged != token
                await s.complete(call, forged)
                assert call.outcome == "InvalidToken", (how, call)
                s.forged += 1
                recorded = False
        case ("complete_twice", t, wp):
            tenant = TENANTS[t]
            token = s.token(tenant, wp)
            if token is None:
                return
            wp_id = s.waitpoint_id(tenant, wp)
            assert wp_id is not None
            calls = [s.new_call("complete", tenant, wp_id) for _ in range(2)]
            async with anyio.create_task_group() as tg:
                for call in calls:
                    tg.start_soon(s.complete, call, token)
            expected = predict_completion(views[tenant].waitpoints[wp_id], s.now())
            outcomes = sorted(c.outcome for c in calls)
            if expected == "acked":  # exactly one wins, the other learns it lost
                assert outcomes in (["WaitpointClosed", "acked"], ["InvalidToken", "acked"]), calls
            else:
                assert outcomes == [expected, expected], (expected, calls)
        case ("interrupted", sub, lead):
            await interrupted(s, views, sub, lead)
        case _:
            raise AssertionError(f"unknown operation {op!r}")
    engine = s.engine  # a new one, if the operation restarted it
    await s.idle()
    await settle_notes(s)
    if not recorded:
        for t in TENANTS:
            history = await engine.store.read_history(WF, tenant=t)
            assert len(history) == before[t], f"{op} was refused but recorded something in {t}"


async def concurrent_decisions(
    s: Scenario, views: dict[str, View], a: tuple[int, int, bool], b: tuple[int, int, bool]
) -> None:
    chosen: list[tuple[Call, aion.PendingApproval]] = []
    for t, p, approved in (a, b):
        tenant = TENANTS[t]
        pending = views[tenant].pending
        if not pending:
            continue
        target = pending[p % len(pending)]
        chosen.append((s.new_call("decide", tenant, target.approval_id, approved=approved), target))
    if not chosen:
        return
    async with anyio.create_task_group() as tg:
        for call, target in chosen:
            tg.start_soon(s.decide, call, target.approval_id, target.digest)
    same = len(chosen) == 2 and {(c.tenant, c.target) for c, _ in chosen} == {
        (chosen[0][0].tenant, chosen[0][0].target)
    }
    outcomes = sorted(c.outcome for c, _ in chosen)
    if same:  # two people decide one approval at once: exactly one wins
        assert outcomes in (["NoPendingApproval", "acked"], ["WorkflowClosed", "acked"]), chosen
    else:  # different approvals (or tenants) do not interfere
        assert outcomes == ["acked"] * len(chosen), chosen


async def interrupted(s: Scenario, views: dict[str, View], sub: tuple[Any, ...], lead: int) -> None:
    """Stop the engine while a decision or completion is in flight: the call starts ``lead``
    turns of the event loop after the shutdown did (the later, the less of the engine runs)."""
    call: Call | None = None
    go: Callable[[], Awaitable[Any]] | None = None
    match sub:
        case ("decide", t, p, approved):
            tenant = TENANTS[t]
            pending = views[tenant].pending
            if pending:
                target = pending[p % len(pending)]
                call = s.new_call("decide", tenant, target.approval_id, approved=approved)
                decision = call

                def go() -> Awaitable[Any]:
                    return s.decide(decision, target.approval_id, None)

        case ("complete", t, wp):
            tenant = TENANTS[t]
            token = s.token(tenant, wp)
            wp_id = s.waitpoint_id(tenant, wp)
            if token is not None and wp_id is not None:
                call = s.new_call("complete", tenant, wp_id)
                completion = call

                def go() -> Awaitable[Any]:
                    return s.complete(completion, token)

    async def later() -> None:
        for _ in range(lead):
            await asyncio.sleep(0)  # one turn of the loop: no time passes
        if go is not None:
            await go()

    # Not a task group: the engine's own task group must be left from the task that entered it.
    task = asyncio.ensure_future(later())
    s.stopping = True
    await s.close()
    await task
    s.stopping = False
    s.restarts += 1
    await s.open()
    await s.idle()
    await settle_notes(s)
    if call is not None:
        assert call.outcome in ("acked", "maybe", *(e.__name__ for e in DOCUMENTED)), call


async def settle_notes(s: Scenario) -> None:
    """Each failed validation is kept on the waitpoint its token names (if it names one that
    exists): the latest one, whatever happens to the waitpoint after."""
    for token, at, stopping in s.failed:
        claims = peek_claims(token)
        if claims is None:
            continue
        key = (claims.tenant, claims.workflow_id, claims.waitpoint_id)
        row = await s.engine.store.get_waitpoint(key[1], key[2], tenant=key[0])
        if row is None:
            continue
        if stopping:  # the engine stopped meanwhile: the note may or may not have been written
            s.failed_at[key] = None
        else:
            s.failed_at[key] = at
            s.stats["noted"] += 1
    s.failed.clear()


# --- invariants --------------------------------------------------------------------------------


async def check(s: Scenario) -> None:
    for tenant in TENANTS:
        await check_tenant(s, tenant)


async def check_tenant(s: Scenario, tenant: str) -> None:
    """The invariants of the module docstring, for one tenant's run, while the engine idles."""
    engine = s.engine
    view = await s.view(tenant)
    history = view.history
    assert [e.seq for e in history] == list(range(1, len(history) + 1)), "seqs"
    requested = [e for e in history if isinstance(e, ev.ApprovalRequested)]
    decided = [e for e in history if isinstance(e, ev.ApprovalDecided)]
    req = {e.approval_id: e for e in requested}
    assert len(req) == len(requested), f"an approval requested twice: {requested}"
    assert {e.action for e in requested} <= set(ACTIONS)
    ids = Counter(e.approval_id for e in decided)
    assert all(n == 1 for n in ids.values()), f"an approval decided twice: {decided}"
    rows: dict[str, ApprovalRow] = {
        r.approval_id: r
        for r in await collect_pages(
            lambda c: engine.store.list_approvals(WF, tenant=tenant, cursor=c)
        )
    }
    assert set(rows) == set(req), (rows, req)
    by_id = {e.approval_id: e for e in decided}
    for approval_id, request in req.items():
        row = rows[approval_id]
        decision = by_id.get(approval_id)
        if decision is not None:
            assert decision.digest == request.digest
            if request.timeout_at is not None:
                assert decision.at < request.timeout_at, "decided after its timeout"
            status = ApprovalStatus.APPROVED if decision.approved else ApprovalStatus.REJECTED
            assert (row.status, row.decided_by) == (status, decision.user), row
        else:
            assert row.status in (
                ApprovalStatus.PENDING,
                ApprovalStatus.TIMED_OUT,
                ApprovalStatus.CLOSED,
            ), row
            if row.status is ApprovalStatus.TIMED_OUT:
                assert request.timeout_at is not None and s.now() >= request.timeout_at
            if row.status is ApprovalStatus.PENDING:
                assert view.open
    pending_ids = [p.approval_id for p in view.pending]
    assert sorted(pending_ids) == sorted(
        i for i, r in rows.items() if r.status is ApprovalStatus.PENDING
    ), "pending_approvals disagrees with the rows"
    assert len(set(pending_ids)) == len(pending_ids), "an approval listed twice"
    # Waitpoints.
    created = [e for e in history if isinstance(e, ev.WaitpointCreated)]
    completed = [e for e in history if isinstance(e, ev.WaitpointCompleted)]
    assert len({e.waitpoint_id for e in created}) == len(created)
    done = Counter(e.waitpoint_id for e in completed)
    assert all(n == 1 for n in done.values()), f"a waitpoint completed twice: {completed}"
    assert set(done) <= {e.waitpoint_id for e in created}
    assert set(view.waitpoints) == {e.waitpoint_id for e in created}
    for wp_id, wp_row in view.waitpoints.items():
        assert (wp_row.status is WaitpointStatus.COMPLETED) == (wp_id in done), wp_row
        key = (tenant, WF, wp_id)
        if key not in s.failed_at or s.failed_at[key] is not None:
            assert wp_row.last_failed_validation_at == s.failed_at.get(key), (wp_row, s.failed_at)
    listed = await collect_pages(
        lambda c: engine.pending_waitpoints(WF, tenant=tenant, limit=1, cursor=c)
    )
    assert sorted(i.waitpoint_id for i in listed) == sorted(
        i for i, r in view.waitpoints.items() if r.status is WaitpointStatus.PENDING
    )
    for name in WAITPOINTS:
        token = TOKENS.get((tenant, WF, name))
        if token is not None:
            info = next((i for i in listed if i.name == name), None)
            if info is not None:
                assert info.fingerprint == fingerprint(token)
                assert token not in repr(info)
    # Every decision and completion in the history is one the test made, in this tenant,
    # and every acknowledged one is there exactly once.
    calls = {c.n: c for c in s.calls}
    for e in decided:
        call = calls[int(e.user[1:])] if e.user.startswith("u") else None
        assert call is not None, f"a decision nobody made: {e}"
        assert call.outcome in ("acked", "maybe"), (e, call)
        if call.outcome == "maybe":
            s.landed.add(call.n)
        assert (call.tenant, call.target) == (tenant, e.approval_id), (e, call)
        assert (call.approved, call.comment) == (e.approved, e.comment), (e, call)
    for completion in completed:
        call = calls[decode_payload(completion.payload)["n"]]
        assert call.outcome in ("acked", "maybe"), (completion, call)
        if call.outcome == "maybe":
            s.landed.add(call.n)
        assert (call.kind, call.tenant, call.target) == (
            "complete",
            tenant,
            completion.waitpoint_id,
        )
    users = Counter(e.user for e in decided)
    payloads = Counter(decode_payload(e.payload)["n"] for e in completed)
    for call in s.calls:
        if call.tenant == tenant and call.outcome == "acked":
            if call.kind == "decide":
                assert users[call.user] == 1, f"acknowledged but not recorded once: {call}"
            else:
                assert payloads[call.n] == 1, f"acknowledged but not recorded once: {call}"
    # The held step: no attempt and no execution until it is approved.
    held = next((e for e in requested if e.step_seq), None)
    if tenant == "acme" and held is not None:
        decision = by_id.get(held.approval_id)
        started = [
            e for e in history if isinstance(e, ev.StepStarted) and e.step_seq == held.step_seq
        ]
        if decision is None or not decision.approved:
            assert started == [] and TRANSFERS[(tenant, WF)] == 0
        else:
            assert [e.attempt for e in started] == [1]
    if tenant == "globex":
        assert held is None, "the policy holds steps of acme only"


def expected_answer(
    action: str,
    request: ev.ApprovalRequested | None,
    decision: ev.ApprovalDecided | None,
) -> list[Any]:
    assert request is not None, f"{action} was never requested"
    if decision is None:
        return ["timed_out"]
    if decision.approved:
        return ["approved", decision.user, decision.comment]
    comment = f": {decision.comment}" if decision.comment else " (no comment)"
    return ["rejected", f"{action!r} was rejected by {decision.user}{comment}"]


async def finish(s: Scenario) -> None:
    """Decide what is pending, complete what waits, let timers run out: every run ends."""
    for _ in range(30):
        views = {t: await s.view(t) for t in TENANTS}
        if not any(v.open for v in views.values()):
            return
        progressed = False
        for tenant, view in views.items():
            for p in view.pending:
                call = s.new_call("decide", tenant, p.approval_id, approved=True)
                await s.decide(call, p.approval_id, p.digest)
                assert call.outcome == "acked", call
                progressed = True
            for wp in range(2):
                wp_id = s.waitpoint_id(tenant, wp)
                token = s.token(tenant, wp)
                if token is None or wp_id not in view.waitpoints:
                    continue  # handed out since the view was taken: next round
                if predict_completion(view.waitpoints[wp_id], s.now()) == "acked":
                    call = s.new_call("complete", tenant, wp_id)
                    await s.complete(call, token)
                    assert call.outcome == "acked", call
                    progressed = True
        if not progressed:
            s.clock.advance(5000)
        await s.idle()
        await check(s)
    raise AssertionError("the runs did not end")


async def check_results(s: Scenario) -> None:
    for tenant in TENANTS:
        await check_result(s, tenant)


async def check_result(s: Scenario, tenant: str) -> None:
    """The run ended with what its recorded decisions and completions imply, and replays."""
    desc = await s.engine.describe(WF, tenant=tenant)
    history = await s.engine.store.read_history(WF, tenant=tenant)
    requests = {e.action: e for e in history if isinstance(e, ev.ApprovalRequested)}
    decisions = {e.approval_id: e for e in history if isinstance(e, ev.ApprovalDecided)}
    completions = {e.waitpoint_id: e for e in history if isinstance(e, ev.WaitpointCompleted)}
    created = {e.name: e.waitpoint_id for e in history if isinstance(e, ev.WaitpointCreated)}

    def answer(action: str) -> list[Any]:
        request = requests.get(action)
        return expected_answer(
            action, request, decisions.get(request.approval_id) if request else None
        )

    def arrived(name: str) -> list[Any]:
        done = completions.get(created[name])
        return ["completed", decode_payload(done.payload)] if done else ["expired"]

    transfer_request = requests.get("payments.transfer")
    transfer_decision = decisions.get(transfer_request.approval_id) if transfer_request else None
    if transfer_decision is not None and not transfer_decision.approved:
        assert tenant == "acme"
        assert desc.status is aion.Status.FAILED, desc
        assert desc.error is not None and "ApprovalRejected" in desc.error
        reason = expected_answer("payments.transfer", transfer_request, transfer_decision)[1]
        assert reason in desc.error, (reason, desc.error)  # names the reviewer and the comment
        assert TRANSFERS[(tenant, WF)] == 0
    else:
        assert desc.status is aion.Status.COMPLETED, desc
        assert desc.result == {
            "manager": answer("manager"),
            "finance": answer("finance"),
            "legal": answer("legal"),
            "provider": arrived("provider"),
            "transfer": "paid 120",
            "receipt": arrived("receipt"),
        }
        assert TRANSFERS[(tenant, WF)] >= 1
    replayed = aion.testing.replay(expense, await s.engine.history(WF, tenant=tenant))
    assert replayed.status == desc.status.value
    assert replayed.pending_commands == ()
    if desc.status is aion.Status.COMPLETED:
        assert replayed.result == desc.result


async def run_scenario(config: dict[str, Any], ops: list[tuple[Any, ...]]) -> Scenario:
    TOKENS.clear()
    TRANSFERS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        s = Scenario(tmp=tmp, **config)
        await s.open()
        try:
            for tenant in TENANTS:
                await s.engine.start(expense, s.timeouts[tenant], workflow_id=WF, tenant=tenant)
            await s.idle()
            await check(s)
            for op in ops:
                if currently_in_test_context():
                    note(f"op {op}")
                await apply(s, op)
                await check(s)
            await finish(s)
            await check_results(s)
        finally:
            if s.cm is not None:
                await s.close()
    return s


BACKENDS = pytest.mark.parametrize(
    ("backend", "examples"), [("memory", 150), ("lmdb", 40)], ids=["memory", "lmdb"]
)


@BACKENDS
def test_any_interleaving_decides_each_approval_once(backend: str, examples: int) -> None:
    """Default suite: a few dozen interleavings per store backend."""
    run_property(backend, examples)


@pytest.mark.slow
@BACKENDS
def test_any_interleaving_decides_each_approval_once_long(backend: str, examples: int) -> None:
    """Six times as many interleavings."""
    run_property(backend, examples * 6)


def run_property(backend: str, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(config=scenarios, ops=operations)
    def interleaving(config: dict[str, Any], ops: list[tuple[Any, ...]]) -> None:
        anyio.run(run_scenario, {**config, "backend": backend}, ops)

    interleaving()


# --- targeted tests ------------------------------------------------------------------------------


@aion.workflow(name="hitl.timed")
async def timed(ctx: aion.Context) -> str:
    try:
        approval = await ctx.approval("refund", details={"amount": 5}, timeout=60)
    except aion.WaitTimedOut:
        return "timed out"
    return f"approved by {approval.user}"


async def test_a_decision_before_the_timeout_wins_and_cancels_the_timer() -> None:
    clock = ManualClock(START)
    async with aion.Engine(MemoryStore(), workflows=[timed], clock=clock) as engine:
        handle = await engine.start(timed, workflow_id="t-1")
        await engine.wait_idle()
        clock.advance(59)
        await engine.wait_idle()
        await engine.approve("t-1", user="ann")
        assert await handle.result() == "approved by ann"
        clock.advance(3600)
        await engine.wait_idle()
        types = [h.type for h in await engine.history("t-1")]
        assert types.count("approval.decided") == 1 and "timer.fired" not in types


async def test_a_decision_after_the_timeout_is_refused_once_the_timer_fired() -> None:
    clock = ManualClock(START)
    async with aion.Engine(MemoryStore(), workflows=[timed], clock=clock) as engine:
        handle = await engine.start(timed, workflow_id="t-1")
        await engine.wait_idle()
        clock.advance(61)
        await engine.wait_idle()
        with pytest.raises(aion.WorkflowClosed):
            await engine.approve("t-1", user="ann")
        assert await handle.result() == "timed out"


async def test_a_decision_after_timeout_at_is_refused_even_before_the_timer_fires() -> None:
    clock = ManualClock(START)
    async with aion.Engine(MemoryStore(), workflows=[timed], clock=clock) as engine:
        handle = await engine.start(timed, workflow_id="t-1")
        await engine.wait_idle()
        # Time passes the deadline; the approve call reaches the run before the timer does
        # (with a real clock: a busy event loop, a timer wheel that lags by a few ms).
        clock.advance(120)
        with pytest.raises(aion.NoPendingApproval):
            await engine.approve("t-1", user="ann")
        assert await handle.result() == "timed out"
        history = await engine.store.read_history("t-1")
        assert not [e for e in history if isinstance(e, ev.ApprovalDecided)]


@aion.workflow(name="hitl.callbacks")
async def callbacks(ctx: aion.Context) -> list[Any]:
    first = await ctx.waitpoint("first", timeout=100)
    second = await ctx.waitpoint("second", timeout=100)
    await ctx.step(hand_out, ctx.info.tenant, ctx.info.workflow_id, "first", first.token)
    await ctx.step(hand_out, ctx.info.tenant, ctx.info.workflow_id, "second", second.token)
    return [await callback(first), await callback(second)]


async def test_the_last_failed_validation_is_kept_after_completion_and_expiry() -> None:
    """Operators see that someone tried a forged token, even once the waitpoint is done.

    (On 80c7cd9 the actor rebuilt the row from its own state and dropped the time.)
    """
    TOKENS.clear()
    clock = ManualClock(START)
    async with aion.Engine(MemoryStore(), workflows=[callbacks], clock=clock) as engine:
        await engine.start(callbacks, workflow_id="cb-1")
        await engine.wait_idle()
        tokens = [TOKENS[("default", "cb-1", name)] for name in ("first", "second")]
        for token in tokens:
            with pytest.raises(aion.InvalidToken):
                await engine.complete_waitpoint(forge(token, "signature", 5), "forged")
        failed_at = engine.now()
        await engine.wait_idle()
        clock.advance(10)
        await engine.complete_waitpoint(tokens[0], "paid")
        clock.advance(200)  # the second expires
        await engine.wait_idle()
        rows = await engine.store.list_waitpoints("cb-1")
        assert [(r.status, r.last_failed_validation_at) for r in rows.items] == [
            (WaitpointStatus.COMPLETED, failed_at),
            (WaitpointStatus.EXPIRED, failed_at),
        ]
