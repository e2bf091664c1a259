"""One validation for every entry point (issue 12, items 2, 4, 5, 11 and 13).

Each test reproduces a defect through the public API or the ``aion`` command, as a user or an
attacker would: a bad argument is refused at the call with an :class:`aion.AionError` whose
message says what is wrong, and nothing is recorded or queued; the histories stay readable.

- Item 2: the command line and the inbox make the engine's checks (empty or huge signal names,
  empty users, payloads over the limit); a command left in the inbox that fails them is removed
  with a WARNING, never applied.
- Item 4: retry policies, sleeps and timeouts the engine could not compute a time from are
  refused when built or called (in workflow code: the call raises, the workflow may catch it);
  ``start(workflow_id="")`` is refused.
- Item 5: wrong-typed text fields are refused at the call, and the store refuses to write any
  event or inbox command its decoder would refuse.
- Item 11: a default child id too long for the store is refused inside the parent workflow,
  not in the write of whichever request made the parent run.
- Item 13: raw Python errors (``TypeError``, ``ValueError``, ``UnicodeEncodeError``,
  ``RecursionError``) become aion errors, in the engine and on the command line; a full disk
  is reported as ``StoreFull``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import lmdb
import msgspec
import pytest

import aion
from aion import _validate
from aion import events as ev
from aion._codec import MAX_PAYLOAD_DEPTH, encode_payload
from aion.cli import main
from aion.errors import StoreError, StoreFull
from aion.store import Append, InboxCommand, LmdbStore, MemoryStore, Status, Write
from aion.store import _lmdb as lmdb_store
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def noop() -> None:
    return None


@aion.workflow
async def waiter(ctx: aion.Context) -> Any:
    return await ctx.wait_signal("go")


@aion.workflow
async def quick(ctx: aion.Context) -> str:
    return "done"


@aion.workflow
async def parked(ctx: aion.Context, blob: str = "") -> Any:
    return await ctx.wait_signal("go")


@aion.workflow
async def expense(ctx: aion.Context) -> str:
    approval = await ctx.approval("pay")
    return approval.user


@aion.workflow
async def refusals(ctx: aion.Context) -> list[str]:
    """Every call below is refused at the call, inside the workflow, which catches it."""
    attempts: list[Any] = [
        lambda: ctx.sleep(math.nan),
        lambda: ctx.sleep(math.inf),
        lambda: ctx.sleep(1e12),  # 31,700 years: past the year 9999
        lambda: ctx.sleep("5"),
        lambda: ctx.sleep_until(datetime(2030, 1, 1)),  # naive
        lambda: ctx.sleep_until("2030-01-01T00:00:00Z"),
        lambda: ctx.wait_signal("x", timeout=math.nan),
        lambda: ctx.wait_signal(5),  # type: ignore[arg-type]
        lambda: ctx.wait_signal("x\ud800"),
        lambda: ctx.approval("pay", timeout=math.inf),
        lambda: ctx.approval("pay", timeout=1e15),
        lambda: ctx.step(noop, timeout=math.nan),
        lambda: ctx.step(noop, name=5),  # type: ignore[arg-type]
        lambda: ctx.step(noop, retry=3),  # type: ignore[arg-type]
        lambda: ctx.patched(5),  # type: ignore[arg-type]
        lambda: ctx.patched("p\udc80"),
        lambda: ctx.child(quick, workflow_id=""),
        lambda: ctx.child(quick, workflow_id="c" * 201),
        lambda: ctx.child("t" * 300),
        lambda: ctx.upsert_search_attributes(k=object()),  # type: ignore[arg-type]
        lambda: ctx.upsert_search_attributes(k=2**70),
    ]
    out: list[str] = []
    for attempt in attempts:
        try:
            attempt()
        except aion.InvalidArgument as exc:
            assert str(exc)
            out.append("refused")
        else:
            out.append("accepted")
    for timeout in (math.nan, math.inf, "1"):
        try:
            await ctx.waitpoint("w", timeout=timeout)  # type: ignore[arg-type]
        except aion.InvalidArgument:
            out.append("refused")
    return out


ALL = [waiter, quick, expense, refusals]


@pytest.fixture(params=["lmdb", "memory", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[aion.Engine]:
    with _postgres.target(request.param, tmp_path) as target:
        async with aion.Engine(
            target, workflows=ALL, clock=ManualClock(T0, auto_advance=True), inbox_interval=0.01
        ) as e:
            yield e


async def history_types(engine: aion.Engine, workflow_id: str, **kw: Any) -> list[str]:
    return [e.type for e in await engine.history(workflow_id, **kw)]


# --- item 4: construction and call time -------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"initial_interval": math.nan},
        {"initial_interval": math.inf},
        {"initial_interval": -1},
        {"initial_interval": "1"},
        {"max_interval": math.nan},
        {"max_interval": -1},
        {"backoff": math.nan},
        {"backoff": math.inf},
        {"backoff": 0.5},
        {"backoff": 10**400},
        {"max_attempts": 0},
        {"max_attempts": 2.5},
        {"max_attempts": True},
        {"non_retryable": (5,)},
        {"non_retryable": "ValueError"},
    ],
)
def test_a_retry_policy_the_engine_cannot_compute_a_wait_from_is_refused(
    options: dict[str, Any],
) -> None:
    with pytest.raises(aion.InvalidArgument, match="RetryPolicy"):
        aion.RetryPolicy(**options)


def test_an_overflowing_backoff_is_capped_not_a_crash() -> None:
    policy = aion.RetryPolicy(backoff=1e308, max_interval=math.inf)
    assert policy.interval(1) == 1.0
    assert policy.interval(2) == policy.interval(5000) == _validate.MAX_SECONDS
    assert aion.RetryPolicy(non_retryable=ValueError).non_retryable == (ValueError,)


attempts: list[int] = []


def flaky() -> str:
    attempts.append(aion.current_step().attempt)
    if len(attempts) < 3:
        raise ConnectionError("down")
    return "up"


@aion.workflow
async def overflowing(ctx: aion.Context) -> str:
    policy = aion.RetryPolicy(max_attempts=3, backoff=1e308, max_interval=math.inf)
    result: str = await ctx.step(flaky, retry=policy)
    return result


async def test_a_step_failing_under_an_overflowing_policy_retries_once_per_attempt(
    tmp_path: Path,
) -> None:
    """It made the engine crash on every restart, after the step's side effect."""
    attempts.clear()
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(tmp_path / "d", workflows=[overflowing], clock=clock) as engine:
        handle = await engine.start(overflowing, workflow_id="o")
        assert await handle.result(timeout=10) == "up"
        assert attempts == [1, 2, 3]
        assert (await engine.describe("o")).status is Status.COMPLETED


async def test_bad_sleeps_and_timeouts_raise_in_the_workflow_and_record_nothing(
    engine: aion.Engine,
) -> None:
    handle = await engine.start(refusals, workflow_id="r")
    outcome = await handle.result(timeout=10)
    assert outcome == ["refused"] * len(outcome) and len(outcome) == 24
    assert await history_types(engine, "r") == ["workflow.started", "workflow.completed"]


async def test_an_empty_workflow_id_is_refused_and_none_makes_one(engine: aion.Engine) -> None:
    with pytest.raises(aion.InvalidArgument, match="workflow id must not be empty"):
        await engine.start(quick, workflow_id="")
    assert (await engine.list()).items == []
    handle = await engine.start(quick)
    assert len(handle.workflow_id) == 32
    assert await handle.result(timeout=5) == "done"


async def test_result_timeouts_are_checked(engine: aion.Engine) -> None:
    await engine.start(waiter, workflow_id="w")
    for bad in (math.nan, math.inf, -1, "1", 1e12):
        with pytest.raises(aion.InvalidArgument, match=r"result\(timeout=\.\.\.\)"):
            await engine.handle("w").result(timeout=bad)  # type: ignore[arg-type]


# --- item 5: nothing the decoder refuses is written ---------------------------------------------


async def test_wrong_typed_text_is_refused_and_the_history_stays_readable(
    engine: aion.Engine,
) -> None:
    await engine.start(waiter, workflow_id="w")
    with pytest.raises(aion.InvalidArgument, match="signal name must be a str, not int"):
        await engine.signal("w", 5, "x")  # type: ignore[arg-type]
    with pytest.raises(aion.InvalidArgument, match="cancel reason must be a str, not int"):
        await engine.cancel("w", reason=5)  # type: ignore[arg-type]
    with pytest.raises(aion.InvalidArgument, match="cancel reason must be a str, not object"):
        await engine.cancel("w", reason=object())  # type: ignore[arg-type]
    assert await history_types(engine, "w") == ["workflow.started"]
    await engine.cancel("w", reason="done with it")
    with pytest.raises(aion.WorkflowCancelled, match="done with it"):
        await engine.handle("w").result(timeout=5)


@pytest.mark.parametrize("kind", ["lmdb", "memory"])
async def test_the_store_refuses_to_write_what_its_decoder_refuses(
    kind: str, tmp_path: Path
) -> None:
    store: Any = LmdbStore(tmp_path / "s") if kind == "lmdb" else MemoryStore()
    try:
        started = ev.WorkflowStarted(
            seq=1, at=T0, workflow_id="w", run_id="r", workflow_type="t", input=b"",
            tenant="default", code_version=5,  # type: ignore[arg-type]
        )  # fmt: skip
        with pytest.raises(aion.InvalidArgument, match=r"field 'code_version' holds int 5"):
            await store.commit(Write(appends=[Append("w", [started], 0)]))
        good = msgspec_replace(started, code_version=None)
        bad = ev.SignalReceived(seq=2, at=T0, name=5, payload=b"")  # type: ignore[arg-type]
        with pytest.raises(aion.InvalidArgument, match=r"SignalReceived \(event 2\).*'name'"):
            await store.commit(Write(appends=[Append("w", [good, bad], 0)]))
        assert await store.head("w") == 0  # nothing of the write
        command = InboxCommand("signal", "default", "w", T0, name=5)  # type: ignore[arg-type]
        with pytest.raises(aion.InvalidArgument, match="InboxCommand cannot be recorded"):
            await store.commit(Write(inbox_put=[command]))
        assert await store.read_inbox() == []
    finally:
        await store.aclose()


def msgspec_replace(struct: Any, **changes: Any) -> Any:
    return msgspec.structs.replace(struct, **changes)


async def test_an_engine_with_a_wrong_typed_code_version_records_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    with pytest.raises(aion.InvalidArgument, match="code_version"):
        async with aion.Engine(store, workflows=ALL, code_version=5) as engine:  # type: ignore[arg-type]
            await engine.start(quick, workflow_id="q")
    async with aion.Engine(store, workflows=ALL) as engine:
        assert (await engine.list()).items == []


# --- item 11: errors of one activation stay with it -----------------------------------------------


@aion.workflow
async def parent(ctx: aion.Context) -> str:
    await ctx.wait_signal("go")
    try:
        await ctx.child(quick)
    except aion.InvalidArgument as exc:
        return f"refused: {exc}"
    return "started"


async def test_a_default_child_id_too_long_is_refused_inside_the_parent(tmp_path: Path) -> None:
    parent_id = "p" * 195  # legal; its default child id would be 203 bytes
    async with aion.Engine(
        tmp_path / "d", workflows=[parent, quick, waiter], clock=ManualClock(T0)
    ) as engine:
        await engine.start(parent, workflow_id=parent_id)
        await engine.start(waiter, workflow_id="bystander")
        await engine.signal(parent_id, "go")  # the signal's caller sees no error about a child
        outcome = await engine.handle(parent_id).result(timeout=5)
        assert outcome.startswith("refused: ctx.child() without workflow_id=")
        assert "203 bytes" in outcome and "workflow_id=" in outcome
        await engine.signal("bystander", "go", 1)
        assert await engine.handle("bystander").result(timeout=5) == 1
        assert [d.status for d in (await engine.list()).items] == [Status.COMPLETED] * 2


async def test_a_bad_cancel_reason_is_the_callers_error_not_the_runs(engine: aion.Engine) -> None:
    await engine.start(waiter, workflow_id="w")
    with pytest.raises(aion.InvalidArgument):
        await engine.cancel("w", reason=object())  # type: ignore[arg-type]
    assert (await engine.describe("w")).status is Status.RUNNING
    await engine.signal("w", "go", "fine")
    assert await engine.handle("w").result(timeout=5) == "fine"


# --- item 13: aion errors, never raw Python errors ------------------------------------------------


async def test_malformed_reads_raise_invalid_argument(engine: aion.Engine) -> None:
    await engine.start(waiter, workflow_id="w")
    calls: list[Any] = [
        lambda: engine.history("w", after_seq="1"),
        lambda: engine.history("w", after_seq=-1),
        lambda: engine.history("w", after_seq=2**64),
        lambda: engine.history("w", after_seq=True),
        lambda: engine.list(cursor=5),
        lambda: engine.list(cursor="\ud800"),
        lambda: engine.list(limit=0),
        lambda: engine.list(limit=10**9),
        lambda: engine.list(status="nope"),
        lambda: engine.list(workflow_type=""),
        lambda: engine.pending_approvals(limit="10"),
        lambda: engine.pending_waitpoints("w", cursor=b"x"),
        lambda: engine.describe("w\ud800"),
        lambda: engine.describe("w", tenant=""),
        lambda: engine.unblock("\udcff"),
        lambda: engine.signal("w", "x" * 100_000),
        lambda: engine.signal("w", ""),
        lambda: engine.approve("w", user=""),
        lambda: engine.approve("w", user="ann", comment=7),
        lambda: engine.reject("w", user="ann", comment="c" * (_validate.MAX_TEXT_BYTES + 1)),
    ]
    for call in calls:
        with pytest.raises(aion.InvalidArgument) as caught:
            await call()
        assert str(caught.value)
    assert await history_types(engine, "w") == ["workflow.started"]


async def test_self_referencing_and_deeply_nested_payloads_raise_payload_error(
    engine: aion.Engine,
) -> None:
    await engine.start(waiter, workflow_id="w")
    cycle: list[Any] = []
    cycle.append(cycle)
    deep: Any = 1
    for _ in range(MAX_PAYLOAD_DEPTH + 1):
        deep = {"x": deep}
    for payload in (cycle, deep, "\ud800", 2**70):
        with pytest.raises(aion.PayloadError) as caught:
            await engine.signal("w", "go", payload)
        assert "signal 'go'" in str(caught.value)
    with pytest.raises(aion.PayloadError):
        await engine.start(parked, deep, workflow_id="q")
    assert await history_types(engine, "w") == ["workflow.started"]


@aion.workflow
async def raises_undecodable(ctx: aion.Context) -> None:
    raise ValueError("bytes that were not UTF-8: \udc80")


def undecodable_step() -> None:
    raise ValueError("bytes that were not UTF-8: \udc80")


@aion.workflow
async def step_raises_undecodable(ctx: aion.Context) -> str:
    try:
        await ctx.step(undecodable_step, retry=aion.RetryPolicy(max_attempts=1))
    except aion.StepError as exc:
        return exc.error_message
    return "no error"


async def test_a_failure_message_with_a_lone_surrogate_is_recorded(engine: aion.Engine) -> None:
    """It made start() raise InvalidArgument about the run's own failure, recording nothing."""
    handle = await engine.start(raises_undecodable, workflow_id="f")
    with pytest.raises(aion.WorkflowFailed, match=r"not UTF-8: \\udc80"):
        await handle.result(timeout=5)
    assert (await history_types(engine, "f"))[-1] == "workflow.failed"


async def test_a_step_failure_message_with_a_lone_surrogate_is_recorded(tmp_path: Path) -> None:
    """A step error whose message holds a lone surrogate is recorded (escaped), not a crash loop."""
    async with aion.Engine(
        MemoryStore(), workflows=[step_raises_undecodable], clock=ManualClock(T0, auto_advance=True)
    ) as engine:
        await engine.start(step_raises_undecodable, workflow_id="s")
        with anyio.fail_after(5):
            await engine.wait_idle()
        description = await engine.describe("s")
        assert description.status is Status.COMPLETED, description.reason
        assert description.result == "bytes that were not UTF-8: \\udc80"


def test_a_payload_at_the_depth_limit_encodes_and_reads_back() -> None:
    value: Any = 1
    for _ in range(MAX_PAYLOAD_DEPTH - 1):
        value = [value]
    data = encode_payload(value)
    assert _validate.payload_bytes(data, limit=len(data)) == data


def test_a_full_disk_is_reported_as_store_full(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """LMDB reports the short write of a full disk as EIO: with no space left, it is
    StoreFull; with space left, an I/O error stays one."""
    error = lmdb.Error("mdb_txn_commit: Input/output error")

    class Stat:
        f_frsize = 4096
        f_bavail = 1

    monkeypatch.setattr(os, "statvfs", lambda path: Stat())
    assert isinstance(lmdb_store._store_error(tmp_path, error), StoreFull)
    Stat.f_bavail = 1 << 30
    found = lmdb_store._store_error(tmp_path, error)
    assert type(found) is StoreError and "Input/output error" in str(found)
    assert isinstance(lmdb_store._store_error(tmp_path, lmdb.Error("No space left")), StoreFull)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


async def test_a_full_tmpfs_is_store_full_and_writes_go_on_after_space_is_freed(
    small_tmpfs: Path,
) -> None:
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * 600_000)
    clock = ManualClock(T0)
    async with aion.Engine(small_tmpfs / "data", workflows=[parked], clock=clock) as engine:
        started = 0
        with pytest.raises(StoreFull, match="is full; nothing from this write was recorded"):
            for i in range(1000):
                await engine.start(parked, "x" * 50_000, workflow_id=f"w{i}")
                started += 1
        assert started > 0
        filler.unlink()
        await engine.start(parked, workflow_id="after")
        await engine.signal("after", "go", 1)
        assert await engine.handle("after").result(timeout=5) == 1
        for i in range(started):
            assert (await engine.describe(f"w{i}")).status is Status.RUNNING


# --- item 2 and 13 on the command line ------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
async def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    async with aion.Engine(path, workflows=ALL, clock=ManualClock(T0)) as engine:
        await engine.start(waiter, workflow_id="w")
        await engine.start(expense, workflow_id="e")
    return path


async def inbox(path: Path) -> list[InboxCommand]:
    store = LmdbStore(path, role="client")
    try:
        return await store.read_inbox()
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["signal", "w", ""], "signal name must not be empty"),
        (["signal", "w", "n" * 100_000], "over the limit of 256"),
        (["signal", "w", "go", json.dumps("x" * 3_000_000)], "over the limit of 2097152 bytes"),
        (["signal", "w", "go", "[" * 100_000 + "]" * 100_000], "nested more than 128 levels"),
        (["signal", "w", "go", "[" * 200 + "]" * 200], "nested more than 128 levels"),
        (["signal", "w", "go", '"\\ud800"'], "cannot be encoded"),
        (["signal", "w", "go", "1" * 5000], "not valid JSON"),
        (["signal", "w\udcff", "go"], "lone surrogate"),
        (["signal", "w", "go", "--tenant", ""], "tenant must not be empty"),
        (["cancel", "w", "--reason", "r" * 70_000], "over the limit of 65536"),
        (["approve", "e", "--user", ""], "names the person who made it"),
        (["approve", "e", "--user", "   "], "names the person who made it"),
        (["reject", "e", "--user", "ann", "--comment", ""], "a rejection says why"),
        (["approve", "e", "--user", "u" * 300], "over the limit of 256"),
        (["approve", "e", "--user", "ann", "--approval-id", ""], "approval_id must not be empty"),
        (["list", "--limit", "0"], "limit must be from 1 to 10000"),
        (["list", "--cursor", "\udcff"], "is not a cursor"),
        (["describe", "w\udcff"], "lone surrogate"),
    ],
)
async def test_the_command_line_refuses_what_the_engine_refuses_before_queuing(
    data: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv, "--data", str(data))
    assert code == 1, (out, err)
    assert message in err and err.startswith("aion: ")
    assert await inbox(data) == []


async def test_keys_rotate_refuses_a_grace_that_is_no_duration(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for grace in ("nan", "inf", "-5", "1e300"):
        code, _, err = run(capsys, "keys", "rotate", "--data", str(data), "--grace", grace)
        assert code == 1 and "--grace" in err, (grace, err)
    code, out, _ = run(capsys, "keys", "rotate", "--data", str(data), "--grace", "60")
    assert code == 0 and "new current waitpoint key" in out


def test_replay_with_a_module_that_cannot_be_imported_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_app.py").write_text("import no_such_module_for_aion\n")
    for app in ("no_such_app_for_aion", "broken_app"):
        code, _, err = run(capsys, "replay", "--app", app, "--data", str(tmp_path / "d"))
        assert code == 1
        assert f"--app {app!r} cannot be imported (ModuleNotFoundError" in err


# --- item 2: the inbox makes the same checks ------------------------------------------------------


async def test_inbox_commands_that_fail_the_checks_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Left by another writer (an older ``aion``, a script): never applied."""
    caplog.set_level(logging.WARNING, logger="aion.engine")
    clock = ManualClock(T0)
    bad = [
        InboxCommand("signal", "default", "w", T0, name="", payload=encode_payload(1)),
        InboxCommand("signal", "default", "w", T0, name="n" * 300, payload=encode_payload(1)),
        InboxCommand("signal", "default", "w", T0, name="go", payload=encode_payload("x" * 2000)),
        InboxCommand("signal", "default", "w", T0, name="go", payload=b"\x91" * 200 + b"\x01"),
        InboxCommand("signal", "default", "w", T0, name="go", payload=b"\xc1"),
        InboxCommand("cancel", "default", "w", T0, comment="c" * 70_000),
        InboxCommand("approve", "default", "e", T0, user=""),
        InboxCommand("reject", "default", "e", T0, user="ann", comment="c" * 70_000),
    ]
    good = InboxCommand("signal", "default", "w", T0, name="go", payload=encode_payload(7))
    async with aion.Engine(
        tmp_path / "d", workflows=ALL, clock=clock, inbox_interval=0.01, max_payload_bytes=1000
    ) as engine:
        await engine.start(waiter, workflow_id="w")
        await engine.start(expense, workflow_id="e")
        for command in [*bad, good]:
            await engine.store.put_inbox(command)
        assert await engine.handle("w").result(timeout=10) == 7
        for _ in range(500):  # the last dropped ones may still be on their way out
            if not await engine.store.read_inbox():
                break
            await anyio.sleep(0.01)
        assert await engine.store.read_inbox() == []
        assert await history_types(engine, "w") == [
            "workflow.started", "signal.received", "workflow.completed",
        ]  # fmt: skip
        assert (await engine.describe("e")).status is Status.RUNNING
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == len(bad), [r.getMessage() for r in dropped]
    assert all(r.levelno == logging.WARNING for r in dropped)
