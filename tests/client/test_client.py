"""``aion.Client`` from a second real process: an engine runs in a worker process
(tests/client/_engine_worker.py), and this process starts, signals, decides, completes, cancels
and reads through a Client on the same data directory.

The worker's engine looks at its inbox only every 60 s on its own: every command here is
applied because the Client rang its doorbell (the tests wait at most 10 s for any of them).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
from aion._client import Client
from aion.cli import main
from aion.store import InboxCommand
from tests import _postgres
from tests.client import _engine_worker as w

ROOT = Path(__file__).resolve().parents[2]

#: The worker's max_payload_bytes: lower than the default, so a payload between the two is
#: refused by the client only because it reads the engine's recorded limit.
LIMIT = 4096


@dataclass
class Worker:
    data: Path | str  # a data directory, or a PostgreSQL URL naming a schema
    workdir: Path
    proc: subprocess.Popen[str]


@pytest.fixture(scope="module", params=["lmdb", "postgres"])
def worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    if request.param == "postgres":
        with _postgres.fresh_schema() as schema:
            yield from _worker(tmp_path_factory, f"{_postgres.URL}?schema={schema}")
    else:
        yield from _worker(tmp_path_factory, None)


def _worker(tmp_path_factory: pytest.TempPathFactory, url: str | None) -> Iterator[Worker]:
    """The engine process: on a data directory, or (``url``) on PostgreSQL, where commands
    reach it through LISTEN/NOTIFY instead of the doorbell socket."""
    base = tmp_path_factory.mktemp("client")
    workdir = base / "work"
    data: Path | str = base / "data" if url is None else url
    workdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.client._engine_worker", str(data), str(workdir), str(LIMIT)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield Worker(data, workdir, proc)
        proc.stdin.close()  # the worker leaves `async with Engine` and exits
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


@pytest.fixture
async def client(worker: Worker) -> AsyncIterator[Client]:
    async with Client(worker.data) as c:
        yield c


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    """Poll ``check`` until it returns something truthy (no sleeps as synchronisation)."""
    with anyio.fail_after(timeout):
        while not (value := await check()):
            await anyio.sleep(0.005)
        return value


async def recorded(client: Client, workflow_id: str) -> aion.WorkflowDescription:
    """Wait until the engine has recorded the run's start."""

    async def describe() -> aion.WorkflowDescription | None:
        try:
            return await client.describe(workflow_id)
        except aion.WorkflowNotFound:
            return None

    desc: aion.WorkflowDescription = await until(describe)
    return desc


async def inbox_ids(client: Client) -> set[str]:
    return {c.command_id for c in await client.store.read_inbox(limit=10_000)}


# --- start -> result, and what the engine reports ------------------------------------------------


async def test_start_and_result(client: Client) -> None:
    handle = await client.start(w.greet, "ann", workflow_id="g-1")
    assert (handle.workflow_id, handle.tenant) == ("g-1", "default")
    assert await handle.result(timeout=10) == "hello ann"
    by_name = await client.start("client.greet", "bob", workflow_id="g-2")
    assert await by_name.result(timeout=10) == "hello bob"
    # Idempotent: the existing run, nothing queued.
    before = await inbox_ids(client)
    again = await client.start(w.greet, "someone else", workflow_id="g-1")
    assert await again.result(timeout=10) == "hello ann"
    assert await inbox_ids(client) == before
    generated = await client.start(w.greet, "cy")
    assert generated.workflow_id and await generated.result(timeout=10) == "hello cy"
    assert await client.handle("g-2").result(timeout=10) == "hello bob"


async def test_describe_list_history(client: Client) -> None:
    await (await client.start(w.greet, "dee", workflow_id="g-read")).result(timeout=10)
    desc = await client.describe("g-read")
    assert (desc.status, desc.result, desc.workflow_type) == (
        aion.Status.COMPLETED,
        "hello dee",
        "client.greet",
    )
    types = [e.type for e in await client.history("g-read")]
    assert types[0] == "workflow.started" and types[-1] == "workflow.completed"
    assert [e.seq for e in await client.history("g-read", after_seq=1)] == list(
        range(2, len(types) + 1)
    )
    listed = await client.list(
        workflow_type="client.greet", status=aion.Status.COMPLETED, limit=1000
    )
    assert "g-read" in {d.workflow_id for d in listed.items}


async def test_signals_apply_in_order(client: Client) -> None:
    handle = await client.start(w.waits, workflow_id="s-1")
    await client.signal("s-1", "go", {"carrier": "dhl"})
    assert await handle.result(timeout=10) == {"carrier": "dhl"}
    two = await client.start(w.two_signals, workflow_id="s-2")
    await client.signal("s-2", "go", 1)  # queued right after its start, before it ran
    await client.signal("s-2", "go", 2)
    assert await two.result(timeout=10) == [1, 2]


async def test_approve_and_reject(client: Client) -> None:
    approved = await client.start(w.needs_approval, 50, workflow_id="ap-1")
    rejected = await client.start(w.needs_approval, 70, workflow_id="ap-2")

    async def pending() -> dict[str, aion.PendingApproval]:
        items = (await client.pending_approvals(limit=1000)).items
        found = {p.workflow_id: p for p in items if p.workflow_id in ("ap-1", "ap-2")}
        return found if len(found) == 2 else {}

    found = await until(pending)
    assert found["ap-1"].action == "pay" and found["ap-1"].details == {"amount": 50}
    await client.approve("ap-1", user="ann", comment="ok", digest=found["ap-1"].digest)
    assert await approved.result(timeout=10) == {"by": "ann", "comment": "ok", "amount": 50}
    await client.reject("ap-2", user="rob", comment="too much")
    with pytest.raises(aion.WorkflowFailed, match=r"rob.*too much") as failed:
        await rejected.result(timeout=10)
    assert failed.value.error_type == "ApprovalRejected"


async def test_complete_a_waitpoint(client: Client, worker: Worker) -> None:
    handle = await client.start(w.callback, workflow_id="cb-1")
    token_file = worker.workdir / "tokens" / "cb-1"
    await until(lambda: anyio.to_thread.run_sync(token_file.exists))
    token = token_file.read_text()
    [waitpoint] = (await client.pending_waitpoints("cb-1")).items
    assert waitpoint.name == "provider" and token not in repr(waitpoint)
    await client.complete_waitpoint(token, {"paid": True})
    assert await handle.result(timeout=10) == {"paid": True}
    before = await inbox_ids(client)
    with pytest.raises(aion.WaitpointClosed, match="completed already"):
        await client.complete_waitpoint(token, {"paid": "twice"})
    assert await inbox_ids(client) == before


async def test_cancel(client: Client) -> None:
    handle = await client.start(w.waits, workflow_id="c-1")
    await client.cancel("c-1", reason="not needed")
    with pytest.raises(aion.WorkflowCancelled, match="not needed"):
        await handle.result(timeout=10)


async def test_an_unknown_type_is_parked_blocked_and_bad_arguments_fail_the_run(
    client: Client,
) -> None:
    unknown = await client.start("client.unknown", 1, workflow_id="u-1")

    async def blocked() -> aion.WorkflowDescription | None:
        try:
            desc = await client.describe("u-1")
        except aion.WorkflowNotFound:
            return None
        return desc if desc.status is aion.Status.BLOCKED else None

    desc: aion.WorkflowDescription = await until(blocked)
    assert "not registered" in desc.reason and desc.workflow_type == "client.unknown"
    with pytest.raises(TimeoutError):
        await unknown.result(timeout=0.05)  # it waits, like the engine's handle
    # A retry finds the same cause: unblock returns the description, still BLOCKED, promptly.
    started = time.monotonic()
    again = await client.unblock("u-1", timeout=10)
    assert again.status is aion.Status.BLOCKED and time.monotonic() - started < 5
    # By name the client cannot check the annotations: the engine records the run as failed.
    bad = await client.start("client.greet", 5, workflow_id="bad-1")
    with pytest.raises(aion.WorkflowFailed) as failed:
        await bad.result(timeout=10)
    assert failed.value.error_type == "PayloadError"
    assert (await client.describe("bad-1")).status is aion.Status.FAILED


# --- refused before anything is queued --------------------------------------------------------


async def test_refusals_queue_nothing(client: Client, worker: Worker) -> None:
    await (await client.start(w.greet, "eve", workflow_id="done")).result(timeout=10)
    await client.start(w.waits, workflow_id="open")
    await recorded(client, "open")
    forged = "v1.kid.payload.signature"
    before = await inbox_ids(client)
    refusals: list[tuple[type[Exception], str, Callable[[], Awaitable[object]]]] = [
        (aion.WorkflowNotFound, "'nope' not found", lambda: client.signal("nope", "go")),
        (
            aion.WorkflowNotFound,
            "tenant 'acme'",
            lambda: client.signal("open", "go", tenant="acme"),
        ),
        (aion.WorkflowNotFound, "not found", lambda: client.describe("nope")),
        (aion.WorkflowClosed, "has finished (completed)", lambda: client.signal("done", "go")),
        (aion.WorkflowClosed, "has finished", lambda: client.cancel("done")),
        (aion.WorkflowClosed, "has finished", lambda: client.approve("done", user="u")),
        (
            aion.PayloadError,
            f"over the limit of {LIMIT} bytes",
            lambda: client.signal("open", "go", "x" * 5000),  # under the default 2 MiB
        ),
        (
            aion.PayloadError,
            f"over the limit of {LIMIT} bytes",
            lambda: client.start("client.greet", "x" * 5000, workflow_id="big"),
        ),
        (aion.PayloadError, "argument 1", lambda: client.start(w.greet, 5, workflow_id="n")),
        (aion.InvalidArgument, "takes 1", lambda: client.start(w.greet, workflow_id="n")),
        (
            aion.InvalidArgument,
            "taken by a run of type 'client.greet'",
            lambda: client.start(w.waits, workflow_id="done"),
        ),
        (
            aion.InvalidArgument,
            "must not be empty",
            lambda: client.start(w.greet, "a", workflow_id=""),
        ),
        (aion.InvalidArgument, "signal name must not be empty", lambda: client.signal("open", "")),
        (aion.InvalidArgument, "not blocked", lambda: client.unblock("open")),
        (aion.NoPendingApproval, "no pending approval", lambda: client.approve("open", user="u")),
        (aion.InvalidToken, "is invalid", lambda: client.complete_waitpoint(forged)),
        (aion.InvalidToken, "text", lambda: client.complete_waitpoint(5)),  # type: ignore[arg-type]
    ]
    for error, message, call in refusals:
        with pytest.raises(error, match=re.escape(message)):
            await call()
    assert await inbox_ids(client) == before
    # A token of this store, re-signed: refused with the data directory's key file.
    handle = await client.start(w.callback, workflow_id="cb-forged")
    token_file = worker.workdir / "tokens" / "cb-forged"
    await until(lambda: anyio.to_thread.run_sync(token_file.exists))
    version, kid, payload, signature = token_file.read_text().split(".")
    before = await inbox_ids(client)
    with pytest.raises(aion.InvalidToken, match="signature"):
        await client.complete_waitpoint(f"{version}.{kid}.{payload}.{'A' * len(signature)}")
    assert await inbox_ids(client) == before
    await client.cancel("cb-forged")
    with pytest.raises(aion.WorkflowCancelled):
        await handle.result(timeout=10)


async def test_a_handle_of_nothing_is_not_found(client: Client) -> None:
    with pytest.raises(aion.WorkflowNotFound):
        await client.handle("ghost").result(timeout=5)


async def test_commands_apply_promptly(client: Client) -> None:
    """Each round trip (signal queued -> applied -> result seen) takes milliseconds: far below
    the worker's 60 s inbox interval (the benchmark measures it: python -m benchmarks client)."""
    took = []
    for i in range(5):
        handle = await client.start(w.waits, workflow_id=f"fast-{i}")
        await recorded(client, f"fast-{i}")
        started = time.monotonic()
        await client.signal(f"fast-{i}", "go", i)
        assert await handle.result(timeout=10) == i
        took.append(time.monotonic() - started)
    assert statistics.median(took) < 2.0, took


def test_the_cli_sends_through_the_client(
    worker: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data", str(worker.data)]
    assert main(["start", "client.greet", '["fay"]', "--id", "cli-1", *d]) == 0
    assert capsys.readouterr().out == "cli-1\n"
    assert main(["start", "client.waits", "--id", "cli-2", "--json", *d]) == 0
    out = capsys.readouterr().out
    assert '"workflow_id": "cli-2"' in out and '"queued": true' in out

    async def wait_for(workflow_id: str) -> Any:
        async with Client(worker.data) as client:
            return await client.handle(workflow_id).result(timeout=10)

    assert anyio.run(wait_for, "cli-1") == "hello fay"
    assert main(["signal", "cli-2", "go", '{"n": 1}', *d]) == 0
    assert "queued signal for cli-2" in capsys.readouterr().out
    assert anyio.run(wait_for, "cli-2") == {"n": 1}
    assert main(["start", "client.greet", '["again"]', "--id", "cli-1", *d]) == 0
    captured = capsys.readouterr()
    assert captured.out == "cli-1\n" and "exists already" in captured.err
    assert main(["start", "client.greet", '{"not": "a list"}', *d]) == 1
    assert "JSON list" in capsys.readouterr().err


# --- no engine running ---------------------------------------------------------------------------


async def test_without_an_engine_the_next_engine_applies_them_in_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with aion.Engine(data):  # the data directory, with nothing running in it
        pass
    async with Client(data) as client:
        handle = await client.start(w.two_signals, workflow_id="later")
        await client.signal("later", "go", 1)  # its start is queued: accepted, kept in order
        await client.signal("later", "go", 2)
        commands: list[InboxCommand] = await client.store.read_inbox()
        assert [(c.kind, c.workflow_id) for c in commands] == [
            ("start", "later"),
            ("signal", "later"),
            ("signal", "later"),
        ]
        with pytest.raises(TimeoutError):  # no engine: it waits, it is not "not found"
            await handle.result(timeout=0.05)
        with pytest.raises(aion.WorkflowNotFound):
            await client.describe("later")  # nothing is recorded until an engine applies it
        with pytest.raises(aion.WorkflowNotFound):
            await client.signal("never-started", "go")
    async with aion.Engine(data, workflows=w.WORKFLOWS) as engine:
        assert await engine.handle("later").result(timeout=10) == [1, 2]
        history = [e.type for e in await engine.history("later")]
        assert history.count("signal.received") == 2
        assert await engine.store.read_inbox() == []
    async with Client(data) as client:
        assert await client.handle("later").result(timeout=1) == [1, 2]
