"""Crash test with real processes: SIGKILL an engine while people and providers answer it.

The worker (``_hitl_worker.py``) runs a real engine (LMDB, durable commits, system clock, the
default key file) with expense workflows that wait for approvals (one of them a payment step
held by the approval policy) and for a payment provider's callback on a signed waitpoint. Each
boot, once every run is parked, this process plays the people and the provider: it leaves
decisions (``approve``/``reject``, sometimes twice, sometimes contradicting each other) in the
store's inbox as the CLI does, and has waitpoints completed (valid, duplicated and forged
tokens): through the inbox too (``callbacks="inbox"``), or by the worker calling
``engine.complete_waitpoint`` as a provider's webhook would, reporting each acknowledgement
(``callbacks="api"``). Then it kills the worker with SIGKILL at a random moment (seeded): while
approvals are pending, and while the engine is recording what it took from the inbox or what
the provider sent. After every kill, from the store:

- histories are contiguous; each approval was requested exactly once, and each pending one is
  listed exactly once by ``pending_approvals``, agreeing with the history;
- a command gone from the inbox was applied exactly once: its approval carries exactly one
  decision, made by one of the commands that are gone, never by one still waiting; the same
  for waitpoint completions, and an acknowledged callback is recorded exactly once; a forged
  token never completes anything, a valid one is never refused as invalid;
- the payment step held for approval has not run unless its approval was granted.

A last boot decides and completes the rest through the engine's API and waits for every run to
end: no run is lost, each result agrees with the recorded decisions, and every history replays.

Set ``AION_CRASH_SEED`` to replay a particular sequence. The last test shows without processes,
by failing one commit, a bug these kills can hit: a caller refused as "too late" before the
winner's decision or completion was recorded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
import aion.testing
from aion import events as ev
from aion._codec import decode_payload, encode_payload
from aion.errors import StoreError
from aion.store import (
    ApprovalStatus,
    CommitResult,
    InboxCommand,
    LmdbStore,
    MemoryStore,
    Status,
    WaitpointStatus,
    Write,
    collect_pages,
)

from . import _hitl_worker as w

WORKER = Path(w.__file__)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")


@dataclass
class Sent:
    """A decision or completion made by this process: a command left in the inbox, or a
    provider callback (``kind="callback"``) the worker makes through the engine's API."""

    command_id: str  # "" for a callback through the API
    kind: str  # approve, reject, complete_waitpoint (inbox), callback (API)
    workflow_id: str
    target: str  # approval id, or waitpoint id
    user: str = ""
    n: int = 0  # the completion's payload is {"n": n}
    forged: bool = False
    boot: int = 0
    outcome: str = ""  # of a callback: "ack", the error's name, "" if the kill came first


@dataclass
class Stats:
    seed: int
    boots: int = 0
    kills: int = 0
    sent: int = 0
    duplicates: int = 0
    forged: int = 0
    pending_at_kill: int = 0  # approvals pending when the kills came, summed
    cut_mid_inbox: int = 0  # kills that left some of that boot's commands applied, some not
    acked: int = 0  # provider callbacks acknowledged before a kill
    cut_mid_callbacks: int = 0  # kills that came while the boot's callbacks were in flight
    premature_refusals: int = 0  # "completed already", yet the completion was lost: must be 0
    seconds: float = 0.0
    transfers_rerun: int = 0
    delays: list[float] = field(default_factory=list)


class Harness:
    """Boots, feeds, kills and checks the worker on one data directory."""

    def __init__(self, tmp: Path, count: int, seed: int, callbacks: str) -> None:
        self.callbacks = callbacks  # "api": the provider calls complete_waitpoint; "inbox"
        self.data = tmp / "data"
        self.work = tmp
        self.count = count
        self.rng = random.Random(seed)
        self.stats = Stats(seed)
        self.sent: list[Sent] = []
        self.numbers = iter(range(1, 10**9))
        self.started = 0  # workflows 0 .. started-1 exist
        self.stderr = open(tmp / "worker.stderr", "a")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        self.stderr.close()

    def spawn(self, mode: str, count: int) -> subprocess.Popen[str]:
        self.stats.boots += 1
        self.started = max(self.started, count)
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(self.data), str(self.work), str(count), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    # --- playing the people and the provider ---------------------------------------------------

    async def leave_commands(self) -> tuple[int, list[dict[str, Any]]]:
        """Decide some pending approvals through the inbox, and complete some waitpoints:
        through the inbox too, or (``callbacks="api"``) by a plan of provider callbacks for the
        worker. Returns how many approvals were pending, and the plan."""
        plan: list[dict[str, Any]] = []
        rng = self.rng
        store = LmdbStore(self.data, role="client")
        boot = self.stats.boots
        try:
            pending = await collect_pages(lambda c: store.pending_approvals(limit=7, cursor=c))
            for approval in pending:
                if rng.random() < 0.25:
                    continue  # nobody looked at this one yet
                copies = 2 if rng.random() < 0.2 else 1
                self.stats.duplicates += copies - 1
                for _ in range(copies):
                    kind = "reject" if rng.random() < 0.25 else "approve"
                    await self._put(
                        store,
                        Sent("", kind, approval.workflow_id, approval.approval_id, boot=boot),
                    )
            for i in range(self.started):
                wid = w.workflow_id(i)
                token_file = self.work / "tokens" / wid
                if not token_file.exists() or rng.random() < 0.3:
                    continue
                rows = (await store.list_waitpoints(wid)).items
                if not rows or rows[0].status is not WaitpointStatus.PENDING:
                    continue
                token = token_file.read_text()
                copies = 2 if rng.random() < 0.2 else 1
                self.stats.duplicates += copies - 1
                for _ in range(copies):
                    forged = rng.random() < 0.2
                    self.stats.forged += forged
                    text = _forge(token, rng) if forged else token
                    if self.callbacks == "inbox":
                        sent = Sent(
                            "", "complete_waitpoint", wid, rows[0].waitpoint_id, forged=forged
                        )
                        sent.boot = boot
                        await self._put(store, sent, text)
                    else:
                        sent = Sent("", "callback", wid, rows[0].waitpoint_id, forged=forged)
                        sent.boot, sent.n = boot, next(self.numbers)
                        self.sent.append(sent)
                        plan.append({"n": sent.n, "token": text})
            return len(pending), plan
        finally:
            await store.aclose()

    async def _put(self, store: LmdbStore, sent: Sent, token: str = "") -> None:
        n = next(self.numbers)
        sent.n = n
        sent.user = f"u{n}"
        if sent.kind == "complete_waitpoint":
            command = InboxCommand(
                "complete_waitpoint",
                "default",
                sent.workflow_id,
                datetime.now(UTC),
                payload=encode_payload({"n": n}),
                token=token,
            )
        else:
            command = InboxCommand(
                sent.kind,
                "default",
                sent.workflow_id,
                datetime.now(UTC),
                user=sent.user,
                comment=f"c{n}",
                target_id=sent.target,
            )
        sent.command_id = await store.put_inbox(command)
        self.sent.append(sent)
        self.stats.sent += 1

    # --- the loop ------------------------------------------------------------------------------

    def crash_loop(self, kills: int, max_delay: float, first_wave: int) -> None:
        # Each boot starts a few more workflows than the last, so that every kill finds
        # approvals pending and callbacks to make.
        while self.stats.kills < kills:
            upto = first_wave + (self.count - first_wave) * self.stats.kills // kills
            proc = self.spawn("serve", upto)
            try:
                assert proc.stdout is not None
                for expected in ("started\n", "idle\n"):
                    line = proc.stdout.readline()  # blocks until the worker gets there
                    assert line == expected, f"worker said {line!r} (seed {self.stats.seed})"
                pending, plan = anyio.run(self.leave_commands)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(plan) + "\n")
                proc.stdin.flush()
                # The deliberately random moment of the kill: often while the engine is still
                # taking the commands from the inbox and recording them, or while the
                # provider's callbacks are being recorded.
                roll = self.rng.random()
                if roll < 0.3:
                    delay = 0.0  # before the engine has read what was left for it
                elif roll < 0.6:
                    delay = self.rng.uniform(0.0, 0.015)  # while it records what it read
                else:
                    delay = self.rng.uniform(0.0, max_delay)
                self.stats.delays.append(round(delay, 3))
                time.sleep(delay)
                assert proc.poll() is None, f"the worker died on its own (seed {self.stats.seed})"
                os.kill(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate(timeout=30)
                self._acknowledged(out)
                self.stats.kills += 1
                self.stats.pending_at_kill += pending
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            anyio.run(self.verify, False)

    def _acknowledged(self, out: str) -> None:
        """What the provider heard back before the kill."""
        callbacks = {s.n: s for s in self.sent if s.kind == "callback"}
        for line in out.splitlines():
            word, _, rest = line.partition(" ")
            if word == "ack":
                callbacks[int(rest)].outcome = "ack"
                self.stats.acked += 1
            elif word == "refused":
                n, error = rest.split()
                callbacks[int(n)].outcome = error

    def finish(self) -> None:
        proc = self.spawn("finish", self.count)
        try:
            out, _ = proc.communicate("", timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the final worker did not finish (seed {self.stats.seed})")
        assert proc.returncode == 0, f"final worker failed (seed {self.stats.seed}): {out!r}"
        assert out.splitlines() == ["started", "done"], out
        anyio.run(self.verify, True)

    # --- checking ------------------------------------------------------------------------------

    async def verify(self, final: bool) -> None:
        store = LmdbStore(self.data, role="client")  # the worker is dead or done
        try:
            left = {c.command_id for c in await store.read_inbox(limit=100_000)}
            gone = [s for s in self.sent if s.command_id and s.command_id not in left]
            boot = self.stats.boots
            this_boot = [s for s in self.sent if s.boot == boot]
            commands = [s for s in this_boot if s.command_id]
            if (
                not final
                and any(s.command_id in left for s in commands)
                and any(s.command_id not in left for s in commands)
            ):
                self.stats.cut_mid_inbox += 1
            callbacks = [s for s in this_boot if s.kind == "callback"]
            if not final and any(not s.outcome for s in callbacks):
                self.stats.cut_mid_callbacks += 1
            transfers = Counter(
                line.split()[0] for line in _read(self.work / "transfers.log").splitlines() if line
            )
            pending = await collect_pages(lambda c: store.pending_approvals(limit=3, cursor=c))
            listed = Counter(p.approval_id for p in pending)
            assert all(n == 1 for n in listed.values()), f"listed twice: {listed}"
            expected_pending: set[str] = set()
            for i in range(self.started):
                wid = w.workflow_id(i)
                record = await store.get_workflow(wid)
                assert record is not None, f"run {wid} lost"
                history = await store.read_history(wid)
                expected_pending |= self._check_run(
                    i, record.status, history, gone, transfers, final
                )
                rows = {r.approval_id: r for r in (await store.list_approvals(wid)).items}
                for approval_id in expected_pending & set(rows):
                    assert rows[approval_id].status is ApprovalStatus.PENDING
                if final:
                    await self._check_end(i, record.status, history, transfers)
            assert set(listed) == expected_pending, "pending_approvals disagrees with history"
            if final:
                assert not left, f"commands never applied: {left}"
        finally:
            await store.aclose()

    def _check_run(
        self,
        index: int,
        status: Status,
        history: Sequence[ev.Event],
        gone: list[Sent],
        transfers: Counter[str],
        final: bool,
    ) -> set[str]:
        """Checks after every kill; returns the ids of the run's pending approvals.

        In the last boot the finisher decides and completes through the API, racing the
        commands still in the inbox: one of them wins, the other is refused (and gone).
        """
        wid = w.workflow_id(index)
        where = f"{wid} (seed {self.stats.seed})"
        assert [e.seq for e in history] == list(range(1, len(history) + 1)), where
        requested = [e for e in history if isinstance(e, ev.ApprovalRequested)]
        decided = [e for e in history if isinstance(e, ev.ApprovalDecided)]
        ids = Counter(e.approval_id for e in requested)
        assert all(n == 1 for n in ids.values()), f"{where}: requested twice {ids}"
        assert Counter(e.action for e in requested) <= Counter(
            ["manager", "finance", "legal", "payments.transfer"]
        ), f"{where}: {requested}"
        decisions = {e.approval_id: e for e in decided}
        assert len(decisions) == len(decided), f"{where}: decided twice {decided}"
        assert set(decisions) <= set(ids), where
        for approval_id in ids:
            mine = [s for s in gone if s.kind in ("approve", "reject") and s.target == approval_id]
            decision = decisions.get(approval_id)
            if decision is None:
                # Acknowledged (gone from the inbox) means applied.
                assert not mine or status.is_terminal, f"{where}: {mine} gone, not applied"
                continue
            if decision.user == "finisher":
                assert final and not [s for s in mine if s.boot < self.stats.boots], (
                    f"{where}: {mine} gone but the finisher decided {approval_id}"
                )
                continue
            winner = next((s for s in mine if s.user == decision.user), None)
            assert winner is not None, f"{where}: {decision} was made by no command that is gone"
            assert decision.approved == (winner.kind == "approve"), f"{where}: {decision}"
        completed = [e for e in history if isinstance(e, ev.WaitpointCompleted)]
        assert len(completed) <= 1, f"{where}: completed twice {completed}"
        created = [e.waitpoint_id for e in history if isinstance(e, ev.WaitpointCreated)]
        assert set(e.waitpoint_id for e in completed) <= set(created), where
        # What counts as acknowledged: an inbox command gone from the store, or a provider
        # callback whose complete_waitpoint returned.
        mine = [s for s in self.sent if s.kind in ("complete_waitpoint", "callback")]
        mine = [s for s in mine if s.workflow_id == wid]
        acked = [
            s
            for s in mine
            if not s.forged and (s.outcome == "ack" if s.kind == "callback" else s in gone)
        ]
        for s in mine:
            if s.kind == "callback" and s.outcome == "InvalidToken":
                assert s.forged, f"{where}: a valid token was refused: {s}"
            if s.kind == "callback" and s.outcome == "WaitpointClosed" and not completed:
                # Told "completed already" by a completion that the kill then undid.
                self.stats.premature_refusals += 1
            if s.forged:
                assert s.outcome in ("", "InvalidToken"), f"{where}: forged accepted: {s}"
        assert len([s for s in acked if s.kind == "callback"]) <= 1, f"{where}: two acks {acked}"
        if completed:
            payload = decode_payload(completed[0].payload)
            if payload != {"by": "finisher"}:
                winner = next((s for s in mine if not s.forged and s.n == payload.get("n")), None)
                assert winner is not None, f"{where}: {payload} came from no valid callback"
                if winner.kind == "complete_waitpoint":
                    assert winner in gone, f"{where}: applied but still in the inbox: {winner}"
                others = [s for s in acked if s is not winner and s.kind == "callback"]
                assert not others, f"{where}: acknowledged, not applied: {others}"
            else:
                earlier = [s for s in acked if s.boot < self.stats.boots]
                assert final and not earlier, f"{where}: {earlier} acknowledged, not applied"
        else:
            assert not acked or status.is_terminal, f"{where}: {acked} acknowledged, not applied"
        held = next((e for e in requested if e.step_seq), None)
        if held is not None:
            assert w.pays(index)
            decision = decisions.get(held.approval_id)
            if decision is None or not decision.approved:
                assert transfers[wid] == 0, f"{where}: the held payment ran"
                assert not [
                    e
                    for e in history
                    if isinstance(e, ev.StepStarted) and e.step_seq == held.step_seq
                ], where
        else:
            assert transfers[wid] == 0, f"{where}: the payment ran without an approval"
        open_run = not status.is_terminal
        return {a for a in ids if a not in decisions and open_run}

    async def _check_end(
        self, index: int, status: Status, history: Sequence[ev.Event], transfers: Counter[str]
    ) -> None:
        wid = w.workflow_id(index)
        where = f"{wid} (seed {self.stats.seed})"
        requests = {e.action: e for e in history if isinstance(e, ev.ApprovalRequested)}
        decisions = {e.approval_id: e for e in history if isinstance(e, ev.ApprovalDecided)}

        def answer(action: str) -> list[Any]:
            decision = decisions[requests[action].approval_id]
            return ["approved", decision.user] if decision.approved else ["rejected"]

        held = requests.get("payments.transfer")
        replayed = aion.testing.replay(w.expense, history)
        if held is not None and not decisions[held.approval_id].approved:
            assert status is Status.FAILED, where
            last = history[-1]
            assert isinstance(last, ev.WorkflowFailed) and last.error_type == "ApprovalRejected"
            assert decisions[held.approval_id].user in last.message, last
            assert replayed.status == "failed"
            assert transfers[wid] == 0
            return
        assert status is Status.COMPLETED, f"{where}: {status}"
        last = history[-1]
        assert isinstance(last, ev.WorkflowCompleted), where
        (completion,) = [e for e in history if isinstance(e, ev.WaitpointCompleted)]
        expected = {
            "manager": answer("manager"),
            "finance": answer("finance"),
            "legal": answer("legal"),
            "callback": decode_payload(completion.payload),
            "paid": f"paid {index}" if w.pays(index) else None,
        }
        assert decode_payload(last.result) == expected, where
        assert (replayed.status, replayed.result) == ("completed", expected), where
        if w.pays(index):
            assert transfers[wid] >= 1, f"{where}: approved payment never ran"
            self.stats.transfers_rerun += transfers[wid] - 1


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _forge(token: str, rng: random.Random) -> str:
    """The token with one character of its signature changed, or cut short."""
    if rng.random() < 0.5:
        return token[: rng.randrange(len(token))]
    head, _, signature = token.rpartition(".")
    i = rng.randrange(len(signature))
    return f"{head}.{signature[:i]}{'A' if signature[i] != 'A' else 'B'}{signature[i + 1 :]}"


def run(
    tmp_path: Path, *, count: int, kills: int, max_delay: float, callbacks: str, first_wave: int
) -> Stats:
    seed = int(os.environ.get("AION_CRASH_SEED", random.randrange(2**32)))
    harness = Harness(tmp_path, count, seed, callbacks)
    started = time.monotonic()
    try:
        harness.crash_loop(kills, max_delay, first_wave)
        harness.finish()
    finally:
        harness.close()
    harness.stats.seconds = round(time.monotonic() - started, 1)
    return harness.stats


CALLBACKS = pytest.mark.parametrize("callbacks", ["api", "inbox"])


@CALLBACKS
def test_hitl_crash_quick(tmp_path: Path, callbacks: str) -> None:
    """A few kills over a handful of expense workflows (default suite)."""
    stats = run(tmp_path, count=8, kills=4, max_delay=0.08, callbacks=callbacks, first_wave=5)
    print(f"hitl crash (quick, callbacks via {callbacks}): {stats}")
    assert stats.pending_at_kill > 0
    assert stats.premature_refusals == 0, "a caller was refused for a completion never recorded"


@pytest.mark.slow
@CALLBACKS
def test_hitl_crash_many_kills(tmp_path: Path, callbacks: str) -> None:
    """Two dozen workflows, thirty kills at random moments."""
    stats = run(tmp_path, count=40, kills=30, max_delay=0.12, callbacks=callbacks, first_wave=8)
    print(f"hitl crash (slow, callbacks via {callbacks}): {stats}")
    assert stats.pending_at_kill > 0
    assert stats.premature_refusals == 0, "a caller was refused for a completion never recorded"
    assert stats.cut_mid_inbox > 0, "no kill landed while the inbox was being applied"
    if callbacks == "api":
        assert stats.cut_mid_callbacks > 0, "no kill landed while callbacks were in flight"


# --- the same without processes: a commit that fails --------------------------------------------

TOKEN: dict[str, str] = {}


def _keep(token: str) -> None:
    TOKEN["t"] = token


@aion.workflow(name="hitl.crash.race")
async def race(ctx: aion.Context) -> list[Any]:
    provider = await ctx.waitpoint("provider")
    await ctx.step(_keep, provider.token)
    approval = await ctx.approval("pay")
    return [await provider.wait(), approval.user]


class _LosesOneDecision(MemoryStore):
    """Fails the next write that records a decision or a completion (as a crash would)."""

    armed = False

    async def commit(self, write: Write) -> CommitResult:
        decisive = (ev.WaitpointCompleted, ev.ApprovalDecided)
        if self.armed and any(isinstance(e, decisive) for a in write.appends for e in a.events):
            self.armed = False
            raise StoreError("the disk went away")
        return await super().commit(write)


@pytest.mark.parametrize("what", ["completion", "decision"])
async def test_a_refusal_waits_for_the_winner_to_be_recorded(what: str) -> None:
    store = _LosesOneDecision()
    async with aion.Engine(store, workflows=[race]) as engine:
        await engine.start(race, workflow_id="r-1")
        await engine.wait_idle()
        outcomes: dict[int, BaseException | None] = {}

        async def call(i: int) -> None:
            try:
                if what == "completion":
                    await engine.complete_waitpoint(TOKEN["t"], i)
                else:
                    await engine.approve("r-1", user=f"person-{i}")
            except aion.AionError as exc:
                outcomes[i] = exc
            else:
                outcomes[i] = None

        store.armed = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 1)
            tg.start_soon(call, 2)
        await engine.wait_idle()
        history = [h.type for h in await engine.history("r-1")]
        recorded = history.count(
            "waitpoint.completed" if what == "completion" else "approval.decided"
        )
        refused = [
            e
            for e in outcomes.values()
            if isinstance(e, (aion.WaitpointClosed, aion.NoPendingApproval))
        ]
        # Someone may only be told "too late" once the winner's decision is durable.
        assert not refused or recorded == 1, (outcomes, history)
