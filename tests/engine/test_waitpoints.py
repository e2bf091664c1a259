"""Waitpoints end to end: ``ctx.waitpoint``, signed tokens, ``engine.complete_waitpoint`` and
``engine.pending_waitpoints``, the key file and its rotation, through the public names only."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import aion
import aion.errors
from aion.cli import main as cli
from aion.store import MemoryStore, collect_pages
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY_FILE = "waitpoint-keys.json"

# Tokens the workflows hand out through a step, by workflow id (the "outside system").
outbox: dict[str, list[str]] = {}


def send_token(token: str) -> None:
    outbox.setdefault(aion.current_step().workflow_id, []).append(token)


@aion.workflow
async def callback(ctx: aion.Context) -> Any:
    wp = await ctx.waitpoint("provider")
    await ctx.step(send_token, wp.token)
    return await wp.wait()


@aion.workflow
async def early_callback(ctx: aion.Context) -> Any:
    wp = await ctx.waitpoint("provider")
    await ctx.step(send_token, wp.token)
    go = await ctx.wait_signal("go")
    return [go, await wp.wait()]


@aion.workflow
async def callback_then_wait(ctx: aion.Context) -> Any:
    wp = await ctx.waitpoint("provider")
    await ctx.step(send_token, wp.token)
    payload = await wp.wait()
    return [payload, await ctx.wait_signal("finish")]


@aion.workflow
async def expiring(ctx: aion.Context, timeout: float) -> Any:
    wp = await ctx.waitpoint("provider", timeout=timeout)
    await ctx.step(send_token, wp.token)
    try:
        payload = await wp.wait()
    except aion.WaitTimedOut:
        payload = f"expired at {ctx.now().isoformat()}"
    return [payload, await ctx.wait_signal("finish")]


@aion.workflow
async def many_waitpoints(ctx: aion.Context, n: int) -> list[Any]:
    wps = [await ctx.waitpoint(f"wp-{i}") for i in range(n)]
    for wp in wps:
        await ctx.step(send_token, wp.token)
    return list(await ctx.gather(*(wp.wait() for wp in wps)))


@aion.workflow
async def hands_out_and_ends(ctx: aion.Context) -> str:
    wp = await ctx.waitpoint("provider")
    await ctx.step(send_token, wp.token)
    return "done without waiting"


@aion.workflow
async def resends_after_signal(ctx: aion.Context) -> Any:
    wp = await ctx.waitpoint("provider")
    await ctx.step(send_token, wp.token)
    await ctx.wait_signal("again")
    await ctx.step(send_token, wp.token)  # runs live after a restart: the replayed token
    return await wp.wait()


@aion.workflow
async def renews(ctx: aion.Context, n: int) -> Any:
    wp = await ctx.waitpoint(f"round-{n}")
    await ctx.step(send_token, wp.token)
    if n == 0:
        await ctx.wait_signal("next")
        ctx.continue_as_new(n + 1)
    return await wp.wait()


@aion.workflow
async def cancellable(ctx: aion.Context) -> Any:
    wp = await ctx.waitpoint("provider")
    await ctx.step(send_token, wp.token)
    return await wp.wait()


ALL = [
    renews,
    cancellable,
    callback,
    early_callback,
    callback_then_wait,
    expiring,
    many_waitpoints,
    hands_out_and_ends,
    resends_after_signal,
]

# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clear_outbox() -> None:
    outbox.clear()


@pytest.fixture
def clock() -> ManualClock:
    # Moved by hand: with auto-advance, wait_idle() could return before the clock jumps.
    return ManualClock(T0)


@pytest.fixture(params=["lmdb", "memory", "postgres"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[aion.Engine]:
    with _postgres.target(request.param, tmp_path) as target:
        async with aion.Engine(target, workflows=ALL, clock=clock) as e:
            yield e


@pytest.fixture
async def mem_engine(clock: ManualClock) -> AsyncIterator[aion.Engine]:
    async with aion.Engine(MemoryStore(), workflows=ALL, clock=clock) as e:
        yield e


async def started_and_idle(
    engine: aion.Engine, workflow: Any, *args: Any, workflow_id: str, tenant: str = "default"
) -> aion.WorkflowHandle:
    handle = await engine.start(workflow, *args, workflow_id=workflow_id, tenant=tenant)
    await engine.wait_idle()
    return handle


async def all_waitpoints(
    engine: aion.Engine, wf: str, tenant: str = "default"
) -> list[aion.WaitpointInfo]:
    return await collect_pages(
        lambda cursor: engine.pending_waitpoints(wf, tenant=tenant, limit=100, cursor=cursor)
    )


async def noted_failure(engine: aion.Engine, wf: str) -> aion.WaitpointInfo:
    """The run's one pending waitpoint, once a failed validation is noted on it.

    The engine notes failed validations in the background; wait_idle() does not cover the
    store read that starts it (on a store that reads in threads), so poll, with a deadline.
    """
    with anyio.fail_after(5):
        while True:
            [info] = await all_waitpoints(engine, wf)
            if info.last_failed_validation_at is not None:
                return info
            await anyio.sleep(0.005)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def forgeries(token: str) -> dict[str, str]:
    """Ways an attacker could try to use or bend a real token."""
    version, kid, payload, signature = token.split(".")
    claims = msgspec.msgpack.decode(unb64(payload))
    retargeted = b64(msgspec.msgpack.encode([claims[0], "someone-else", *claims[2:]]))
    moved_time = b64(msgspec.msgpack.encode([*claims[:3], claims[3] + 1, claims[4]]))
    new_expiry = b64(msgspec.msgpack.encode([*claims[:4], (claims[4] or claims[3]) + 10**9]))
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    resigned = aion.KeyRing.from_secret(b"k" * 32, kid).sign(
        claims[0],
        claims[1],
        claims[2],
        datetime.fromtimestamp(claims[3] / 1e6, UTC),
        None if claims[4] is None else datetime.fromtimestamp(claims[4] / 1e6, UTC),
    )
    forged = {
        "truncated": token[:-1],
        "cut in half": token[: len(token) // 2],
        "bad signature": f"{version}.{kid}.{payload}.{flipped}",
        "other workflow": f"{version}.{kid}.{retargeted}.{signature}",
        "creation time moved": f"{version}.{kid}.{moved_time}.{signature}",
        "expiry changed": f"{version}.{kid}.{new_expiry}.{signature}",
        "re-signed with another key": resigned,
        "unknown key id": f"{version}.zz{kid}.{payload}.{signature}",
        "other version": f"v2.{kid}.{payload}.{signature}",
        "padded": f"{token}=",
        "extra part": f"{token}.x",
        "empty": "",
        "garbage": "not a token at all",
    }
    assert token not in forged.values()
    return forged


# --- completing ---------------------------------------------------------------------------------


async def test_a_token_handed_out_by_a_step_completes_the_wait(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, callback, workflow_id="cb")
    [token] = outbox["cb"]
    assert token.startswith("v1.") and token.count(".") == 3
    desc = await engine.describe("cb")
    assert desc.status is aion.Status.RUNNING and desc.pending["waitpoints"] == ["provider"]
    await engine.complete_waitpoint(token, {"status": "paid", "amount": 42})
    assert await handle.result(timeout=5) == {"status": "paid", "amount": 42}
    types = [h.type for h in await engine.history("cb")]
    assert types.count("waitpoint.created") == 1 and types.count("waitpoint.completed") == 1
    completed = next(h for h in await engine.history("cb") if h.type == "waitpoint.completed")
    assert completed.data["payload"] == {"status": "paid", "amount": 42}
    assert await all_waitpoints(engine, "cb") == []


async def test_a_completion_before_wait_is_kept(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, early_callback, workflow_id="e")
    [token] = outbox["e"]
    await engine.complete_waitpoint(token, "early")  # the code is still waiting on "go"
    await engine.wait_idle()
    assert (await engine.describe("e")).status is aion.Status.RUNNING
    assert await all_waitpoints(engine, "e") == []
    await engine.signal("e", "go", "now")
    assert await handle.result(timeout=5) == ["now", "early"]
    types = [h.type for h in await engine.history("e")]
    assert types.index("waitpoint.completed") < types.index("signal.received")


async def test_a_completion_without_payload(mem_engine: aion.Engine) -> None:
    handle = await started_and_idle(mem_engine, callback, workflow_id="n")
    await mem_engine.complete_waitpoint(outbox["n"][0])
    assert await handle.result(timeout=5) is None


async def test_a_token_completes_once(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, callback_then_wait, workflow_id="o")
    [token] = outbox["o"]
    await engine.complete_waitpoint(token, 1)
    with pytest.raises(aion.WaitpointClosed):
        await engine.complete_waitpoint(token, 2)
    types = [h.type for h in await engine.history("o")]
    assert types.count("waitpoint.completed") == 1
    await engine.signal("o", "finish", "f")
    assert await handle.result(timeout=5) == [1, "f"]
    with pytest.raises(aion.WaitpointClosed):  # and the run has finished
        await engine.complete_waitpoint(token, 3)


async def test_concurrent_completions_record_one(mem_engine: aion.Engine) -> None:
    handle = await started_and_idle(mem_engine, callback_then_wait, workflow_id="c")
    [token] = outbox["c"]
    outcome: list[str] = []

    async def complete(payload: int) -> None:
        try:
            await mem_engine.complete_waitpoint(token, payload)
            outcome.append("won")
        except aion.WaitpointClosed:
            outcome.append("closed")

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(complete, i)
    assert sorted(outcome) == ["closed", "closed", "won"]
    history = await mem_engine.history("c")
    assert [h.type for h in history].count("waitpoint.completed") == 1
    await mem_engine.signal("c", "finish", None)
    await handle.result(timeout=5)


async def test_completing_after_the_run_finished(engine: aion.Engine) -> None:
    handle = await engine.start(hands_out_and_ends, workflow_id="gone")
    assert await handle.result(timeout=5) == "done without waiting"
    with pytest.raises(aion.WaitpointClosed):
        await engine.complete_waitpoint(outbox["gone"][0], "late")
    assert "waitpoint.completed" not in [h.type for h in await engine.history("gone")]


# --- forged tokens ------------------------------------------------------------------------------


async def test_forged_tokens_are_refused_and_record_nothing(
    engine: aion.Engine, clock: ManualClock
) -> None:
    handle = await started_and_idle(engine, callback, workflow_id="f")
    [token] = outbox["f"]
    before = await engine.history("f")
    [info] = await all_waitpoints(engine, "f")
    assert info.last_failed_validation_at is None
    clock.advance(30)
    for what, forged in forgeries(token).items():
        with pytest.raises(aion.InvalidToken) as exc_info:
            await engine.complete_waitpoint(forged, {"evil": what})
        message = str(exc_info.value)
        if forged:  # errors never repeat the token
            assert forged not in message, what
        assert token not in message, what
    with pytest.raises(aion.InvalidToken):
        await engine.complete_waitpoint(123, None)  # type: ignore[arg-type]
    await engine.wait_idle()
    assert await engine.history("f") == before
    info = await noted_failure(engine, "f")
    assert info.last_failed_validation_at == T0 + timedelta(seconds=30)
    assert info.status == "pending" and info.completed_at is None
    await engine.complete_waitpoint(token, "genuine")
    assert await handle.result(timeout=5) == "genuine"


async def test_an_expired_token_is_invalid(engine: aion.Engine, clock: ManualClock) -> None:
    handle = await started_and_idle(engine, expiring, 60.0, workflow_id="x")
    [token] = outbox["x"]
    clock.advance(60)  # the timeout passes: wait() raises WaitTimedOut
    await engine.wait_idle()
    assert await all_waitpoints(engine, "x") == []
    before = await engine.history("x")
    with pytest.raises(aion.InvalidToken, match="expired"):
        await engine.complete_waitpoint(token, "too late")
    await engine.wait_idle()
    assert await engine.history("x") == before
    await engine.signal("x", "finish", 0)
    expected = f"expired at {(T0 + timedelta(seconds=60)).isoformat()}"
    assert await handle.result(timeout=5) == [expected, 0]


async def test_a_token_completes_before_its_timeout(mem_engine: aion.Engine) -> None:
    clock = ManualClock(T0)
    async with aion.Engine(MemoryStore(), workflows=ALL, clock=clock) as engine:
        handle = await started_and_idle(engine, expiring, 60.0, workflow_id="x")
        [info] = await all_waitpoints(engine, "x")
        assert info.expires_at == T0 + timedelta(seconds=60)
        clock.advance(59)
        await engine.complete_waitpoint(outbox["x"][0], "in time")
        clock.advance(60)
        await engine.wait_idle()
        await engine.signal("x", "finish", 1)
        assert await handle.result(timeout=5) == ["in time", 1]
        assert "timer.fired" not in [h.type for h in await engine.history("x")]


async def test_waitpoint_arguments_are_checked(mem_engine: aion.Engine) -> None:
    @aion.workflow(name="bad-waitpoints")
    async def bad(ctx: aion.Context) -> list[str]:
        seen = []
        for name, timeout in (("", None), ("x", 0), ("x", -1)):
            try:
                await ctx.waitpoint(name, timeout=timeout)
            except aion.AionError as exc:
                seen.append(type(exc).__name__)
        return seen

    handle = await mem_engine.start(bad, workflow_id="bad")
    assert await handle.result(timeout=5) == ["InvalidArgument"] * 3


# --- listing ------------------------------------------------------------------------------------


async def test_pending_waitpoints_show_a_fingerprint_never_the_token(engine: aion.Engine) -> None:
    await started_and_idle(engine, many_waitpoints, 3, workflow_id="m")
    tokens = outbox["m"]
    assert len(set(tokens)) == 3
    page = await engine.pending_waitpoints("m")
    assert [w.name for w in page.items] == ["wp-0", "wp-1", "wp-2"]
    assert [w.fingerprint for w in page.items] == [fingerprint(t) for t in tokens]
    for w in page.items:
        assert w.workflow_id == "m" and w.status == "pending" and w.tenant == "default"
        assert w.created_at == T0 and w.expires_at is None
    shown = repr(page) + json.dumps(msgspec.to_builtins(page.items)) + str(page.items)
    desc = await engine.describe("m")
    shown += repr(desc) + json.dumps(msgspec.to_builtins(desc))
    for token in tokens:
        assert token not in shown
        assert token.split(".")[3] not in shown  # not even the signature


async def test_pending_waitpoints_pages(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, many_waitpoints, 7, workflow_id="m")
    tokens = outbox["m"]
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await engine.pending_waitpoints("m", limit=2, cursor=cursor)
        pages.append([w.name for w in page.items])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [n for p in pages for n in p] == [f"wp-{i}" for i in range(7)]
    assert all(len(p) <= 2 for p in pages) and all(pages[:-1])

    # Completions between page reads: never a repeat, never a skip of what stays pending.
    await engine.complete_waitpoint(tokens[0], 0)
    await engine.complete_waitpoint(tokens[3], 3)
    page = await engine.pending_waitpoints("m", limit=2)
    seen = [w.name for w in page.items]
    assert seen == ["wp-1", "wp-2"]
    await engine.complete_waitpoint(tokens[1], 1)  # seen already (the cursor's own row)
    await engine.complete_waitpoint(tokens[5], 5)  # not seen yet
    cursor = page.next_cursor
    while cursor is not None:
        page = await engine.pending_waitpoints("m", limit=2, cursor=cursor)
        seen += [w.name for w in page.items]
        cursor = page.next_cursor
    assert seen == ["wp-1", "wp-2", "wp-4", "wp-6"]
    for i in (2, 4, 6):
        await engine.complete_waitpoint(tokens[i], i)
    assert await handle.result(timeout=5) == list(range(7))


async def test_pending_waitpoints_of_unknown_workflows(engine: aion.Engine) -> None:
    with pytest.raises(aion.WorkflowNotFound):
        await engine.pending_waitpoints("nope")
    await started_and_idle(engine, callback, workflow_id="cb", tenant="acme")
    with pytest.raises(aion.WorkflowNotFound):
        await engine.pending_waitpoints("cb")  # another tenant's
    with pytest.raises(aion.errors.InvalidArgument):
        await engine.pending_waitpoints("cb", tenant="acme", limit=0)
    assert len(await all_waitpoints(engine, "cb", "acme")) == 1


async def test_a_finished_runs_waitpoints_are_not_pending(mem_engine: aion.Engine) -> None:
    await mem_engine.start(hands_out_and_ends, workflow_id="gone")
    await mem_engine.handle("gone").result(timeout=5)
    assert await all_waitpoints(mem_engine, "gone") == []


async def test_continue_as_new_closes_the_old_runs_waitpoints(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, renews, 0, workflow_id="cn")
    await engine.signal("cn", "next")
    await engine.wait_idle()
    old, new = outbox["cn"]
    assert [w.name for w in await all_waitpoints(engine, "cn")] == ["round-1"]
    with pytest.raises(aion.WaitpointClosed):
        await engine.complete_waitpoint(old, "for the old run")
    await engine.complete_waitpoint(new, "for the new run")
    assert await handle.result(timeout=5) == "for the new run"


async def test_a_cancelled_runs_tokens_are_closed(engine: aion.Engine) -> None:
    handle = await started_and_idle(engine, cancellable, workflow_id="x")
    await engine.cancel("x")
    with pytest.raises(aion.WorkflowCancelled):
        await handle.result(timeout=5)
    with pytest.raises(aion.WaitpointClosed):
        await engine.complete_waitpoint(outbox["x"][0], "late")
    assert await all_waitpoints(engine, "x") == []


async def test_a_waitpoint_expires_while_no_engine_runs(tmp_path: Path) -> None:
    path = tmp_path / "data"
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(T0)) as engine:
        await started_and_idle(engine, expiring, 60.0, workflow_id="x")
    later = ManualClock(T0 + timedelta(hours=1))
    async with aion.Engine(path, workflows=ALL, clock=later) as engine:
        await engine.wait_idle()  # the overdue timer fired at startup
        assert await all_waitpoints(engine, "x") == []
        with pytest.raises(aion.InvalidToken, match="expired"):
            await engine.complete_waitpoint(outbox["x"][0], "late")
        await engine.signal("x", "finish", 1)
        expected = f"expired at {(T0 + timedelta(hours=1)).isoformat()}"
        assert await engine.handle("x").result(timeout=5) == [expected, 1]


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lmdb", "memory"])
async def test_the_token_survives_an_engine_restart(tmp_path: Path, kind: str) -> None:
    path: Any = tmp_path / "data" if kind == "lmdb" else MemoryStore()
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(T0)) as engine:
        await started_and_idle(engine, resends_after_signal, workflow_id="r")
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(T0)) as engine:
        await engine.signal("r", "again")
        await engine.wait_idle()
        first, again = outbox["r"]
        assert again == first  # replay signed the same token with the recorded key
        [info] = await all_waitpoints(engine, "r")
        assert info.fingerprint == fingerprint(first)
        await engine.complete_waitpoint(first, "after restart")
        assert await engine.handle("r").result(timeout=5) == "after restart"


async def test_the_token_survives_eviction(tmp_path: Path) -> None:
    async with aion.Engine(
        tmp_path / "d", workflows=ALL, clock=ManualClock(T0), max_resident_runs=1
    ) as engine:
        await started_and_idle(engine, resends_after_signal, workflow_id="r")
        for i in range(3):
            await started_and_idle(engine, callback, workflow_id=f"other{i}")
        await engine.signal("r", "again")
        await engine.wait_idle()
        first, again = outbox["r"]
        assert again == first
        await engine.complete_waitpoint(first, "ok")
        assert await engine.handle("r").result(timeout=5) == "ok"


async def test_the_key_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "data"
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(T0)) as engine:
        await started_and_idle(engine, callback, workflow_id="cb")
    key_file = path / KEY_FILE
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert outbox["cb"][0] not in key_file.read_text()


async def test_a_required_key_must_be_given(tmp_path: Path) -> None:
    path = tmp_path / "data"
    engine = aion.Engine(path, workflows=ALL, clock=ManualClock(T0), require_waitpoint_key=True)
    with pytest.raises(aion.AionError, match="waitpoint") as info:
        async with engine:
            pass
    assert KEY_FILE in str(info.value)
    assert not (path / KEY_FILE).exists()  # refused, not created

    secret = b"x" * 32
    async with aion.Engine(
        path,
        workflows=ALL,
        clock=ManualClock(T0),
        require_waitpoint_key=True,
        waitpoint_key=secret,
    ) as engine:
        await started_and_idle(engine, callback, workflow_id="cb")
        [token] = outbox["cb"]
        # Signed with the given key: anyone holding it can check the token.
        claims = aion.KeyRing.from_secret(secret).verify(token, now=T0)
        assert (claims.workflow_id, claims.tenant) == ("cb", "default")
    async with aion.Engine(
        path, workflows=ALL, clock=ManualClock(T0), waitpoint_key=secret
    ) as engine:
        await engine.complete_waitpoint(token, "same key")
        assert await engine.handle("cb").result(timeout=5) == "same key"


async def test_a_required_key_refuses_an_in_memory_store_without_one() -> None:
    engine = aion.Engine(MemoryStore(), clock=ManualClock(T0), require_waitpoint_key=True)
    with pytest.raises(aion.AionError, match="waitpoint_key"):
        async with engine:
            pass
    async with aion.Engine(
        MemoryStore(), clock=ManualClock(T0), require_waitpoint_key=True, waitpoint_key=b"y" * 32
    ):
        pass


async def test_a_short_key_is_refused() -> None:
    with pytest.raises(aion.errors.InvalidArgument, match="32"):
        aion.Engine(MemoryStore(), waitpoint_key=b"short")


async def test_a_token_of_another_engine_is_invalid(tmp_path: Path) -> None:
    async with aion.Engine(tmp_path / "a", workflows=ALL, clock=ManualClock(T0)) as engine:
        await started_and_idle(engine, callback, workflow_id="cb")
    async with aion.Engine(tmp_path / "b", workflows=ALL, clock=ManualClock(T0)) as engine:
        await started_and_idle(engine, callback, workflow_id="cb")
        foreign, own = outbox["cb"]
        assert foreign != own
        with pytest.raises(aion.InvalidToken):
            await engine.complete_waitpoint(foreign, "from elsewhere")
        await engine.complete_waitpoint(own, "own")
        assert await engine.handle("cb").result(timeout=5) == "own"


async def test_a_token_from_before_a_key_rotation_still_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "data"
    now = datetime.now(UTC)
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(now)) as engine:
        await started_and_idle(engine, callback, workflow_id="old1")
        await started_and_idle(engine, callback, workflow_id="old2")
        await started_and_idle(engine, resends_after_signal, workflow_id="rs")
    old_kid = outbox["old1"][0].split(".")[1]
    assert cli(["keys", "rotate", "--data", str(path), "--grace", "3600"]) == 0
    assert "new current waitpoint key" in capsys.readouterr().out
    assert stat.S_IMODE((path / KEY_FILE).stat().st_mode) == 0o600

    async with aion.Engine(path, workflows=ALL, clock=ManualClock(now)) as engine:
        await engine.complete_waitpoint(outbox["old1"][0], "old key, in grace")
        assert await engine.handle("old1").result(timeout=5) == "old key, in grace"
        await started_and_idle(engine, callback, workflow_id="new")
        new_kid = outbox["new"][0].split(".")[1]
        assert new_kid != old_kid  # new waitpoints are signed with the new key
        # Replay hands out the token it handed out first: signed with the old key.
        await engine.signal("rs", "again")
        await engine.wait_idle()
        first, again = outbox["rs"]
        assert again == first and first.split(".")[1] == old_kid
    # Past the grace period the retired key no longer verifies; the new one does.
    later = ManualClock(now + timedelta(hours=2))
    async with aion.Engine(path, workflows=ALL, clock=later) as engine:
        with pytest.raises(aion.InvalidToken, match="grace"):
            await engine.complete_waitpoint(outbox["old2"][0], "too late")
        await engine.complete_waitpoint(outbox["new"][0], "new key")
        assert await engine.handle("new").result(timeout=5) == "new key"


def test_rotating_without_a_key_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["keys", "rotate", "--data", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aion: ") and KEY_FILE in err


# --- tenancy --------------------------------------------------------------------------------------


async def test_tenants_never_see_or_change_each_others_waitpoints(engine: aion.Engine) -> None:
    acme = await started_and_idle(engine, callback, workflow_id="same", tenant="acme")
    globex = await started_and_idle(engine, callback, workflow_id="same", tenant="globex")
    acme_token, globex_token = outbox["same"]
    assert acme_token != globex_token
    [a] = await all_waitpoints(engine, "same", "acme")
    [g] = await all_waitpoints(engine, "same", "globex")
    assert (a.tenant, a.fingerprint) == ("acme", fingerprint(acme_token))
    assert (g.tenant, g.fingerprint) == ("globex", fingerprint(globex_token))
    with pytest.raises(aion.WorkflowNotFound):
        await engine.pending_waitpoints("same")  # the default tenant has no such workflow

    # A token re-pointed at the other tenant does not verify.
    version, kid, payload, signature = acme_token.split(".")
    claims = msgspec.msgpack.decode(unb64(payload))
    moved = b64(msgspec.msgpack.encode(["globex", *claims[1:]]))
    with pytest.raises(aion.InvalidToken):
        await engine.complete_waitpoint(f"{version}.{kid}.{moved}.{signature}", "moved")

    await engine.complete_waitpoint(acme_token, "for acme")
    assert await acme.result(timeout=5) == "for acme"
    assert await all_waitpoints(engine, "same", "globex") == [g]
    assert (await engine.describe("same", tenant="globex")).status is aion.Status.RUNNING
    globex_types = [h.type for h in await engine.history("same", tenant="globex")]
    assert "waitpoint.completed" not in globex_types
    await engine.complete_waitpoint(globex_token, "for globex")
    assert await globex.result(timeout=5) == "for globex"


# --- races ----------------------------------------------------------------------------------------


class HoldsOneRead:
    """Wraps a store; once armed, the next ``get_waitpoint`` reads its row, then waits for
    ``release`` before handing it back (a slow reader, made deterministic)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.armed = False
        self.read: Any = None
        self.release: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def arm(self) -> None:
        self.armed, self.read, self.release = True, anyio.Event(), anyio.Event()

    async def get_waitpoint(self, *args: Any, **kwargs: Any) -> Any:
        row = await self._store.get_waitpoint(*args, **kwargs)
        if self.armed:
            self.armed = False
            self.read.set()
            await self.release.wait()
        return row


async def test_a_failed_validation_never_undoes_a_completion(clock: ManualClock) -> None:
    store = HoldsOneRead(MemoryStore())
    async with aion.Engine(store, workflows=ALL, clock=clock) as engine:
        handle = await started_and_idle(engine, callback, workflow_id="r")
        [token] = outbox["r"]
        store.arm()
        with pytest.raises(aion.InvalidToken):
            await engine.complete_waitpoint(forgeries(token)["bad signature"], "evil")
        await store.read.wait()  # the failed attempt's bookkeeping has read the pending row
        await engine.complete_waitpoint(token, "genuine")
        assert await handle.result(timeout=5) == "genuine"
        store.release.set()
        await engine.wait_idle()
        history = await engine.history("r")
        assert [h.type for h in history].count("waitpoint.completed") == 1
        assert await all_waitpoints(engine, "r") == []  # completed: not pending
