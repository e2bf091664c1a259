"""``aion.Client`` in the engine's own process, on the engine's store object (a MemoryStore, or
``engine.store``): the in-process doorbell wakes the engine; and the client's checks are the
engine's, message for message."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
from aion._client import Client
from aion.store import LmdbStore, MemoryStore
from tests.client import _engine_worker as w

#: Long: only the doorbell makes the engine read its inbox during these tests.
INTERVAL = 60.0


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    with anyio.fail_after(timeout):
        while not (value := await check()):
            await anyio.sleep(0.005)
        return value


async def test_a_client_on_the_engines_memory_store(tmp_path: Path) -> None:
    w.WORKDIR[:] = [tmp_path]
    store = MemoryStore()
    async with (
        aion.Engine(store, workflows=w.WORKFLOWS, inbox_interval=INTERVAL) as engine,
        Client(store) as client,
    ):
        started = time.monotonic()
        assert await (await client.start(w.greet, "ann")).result(timeout=10) == "hello ann"
        waits = await client.start(w.waits, workflow_id="s")
        await client.signal("s", "go", [1, 2])  # right after its start: kept in order
        assert await waits.result(timeout=10) == [1, 2]
        approval = await client.start(w.needs_approval, 5, workflow_id="a")

        async def pending() -> list[aion.PendingApproval]:
            return (await client.pending_approvals()).items

        await until(pending)
        await client.approve("a", user="ann")
        assert (await approval.result(timeout=10))["by"] == "ann"
        callback = await client.start(w.callback, workflow_id="cb")
        token_file = tmp_path / "tokens" / "cb"
        await until(lambda: anyio.to_thread.run_sync(token_file.exists))
        # No key file here: the client reads the waitpoint, the engine verifies the token.
        await client.complete_waitpoint(token_file.read_text(), "called back")
        assert await callback.result(timeout=10) == "called back"
        assert time.monotonic() - started < INTERVAL / 2  # every command rang the bell
        assert (await engine.describe("cb")).status is aion.Status.COMPLETED
        assert await store.read_inbox() == []


async def test_a_client_on_an_engines_lmdb_store(tmp_path: Path) -> None:
    async with (
        aion.Engine(tmp_path / "d", workflows=w.WORKFLOWS, inbox_interval=INTERVAL) as engine,
        Client(engine.store) as client,
    ):
        handle = await client.start("client.greet", "bob", workflow_id="g")
        assert await handle.result(timeout=10) == "hello bob"
        # A second handle on the same directory in this process is refused by LMDB.
        with pytest.raises(aion.StoreLocked, match="already open in this process"):
            async with Client(tmp_path / "d"):
                pass
    assert isinstance(engine, aion.Engine)


async def test_the_tenant_of_the_client() -> None:
    store = MemoryStore()
    async with (
        aion.Engine(store, workflows=w.WORKFLOWS, inbox_interval=INTERVAL),
        Client(store, tenant="acme") as client,
    ):
        handle = await client.start(w.greet, "cy", workflow_id="t")
        assert handle.tenant == "acme"
        assert await handle.result(timeout=10) == "hello cy"
        assert (await client.describe("t")).tenant == "acme"
        with pytest.raises(aion.WorkflowNotFound, match="'default'"):
            await client.describe("t", tenant="default")
        assert [d.workflow_id for d in (await client.list()).items] == ["t"]
        assert (await client.list(tenant="default")).items == []


async def test_a_client_must_be_open() -> None:
    client = Client(MemoryStore())
    with pytest.raises(aion.AionError, match="async with"):
        await client.describe("x")
    with pytest.raises(aion.InvalidArgument, match="tenant must not be empty"):
        Client(MemoryStore(), tenant="")
    assert "tenant='default'" in repr(client)


async def test_a_directory_without_a_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(aion.errors.StoreFormatError):
        async with Client(tmp_path):
            pass


async def test_the_store_is_closed_only_if_the_client_opened_it(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "d") as store:  # an engine-role store, as the engine has
        async with Client(store) as client:
            with pytest.raises(aion.WorkflowNotFound):
                await client.describe("x")
        assert await store.get_workflow("x") is None  # still open


Call = Callable[[Any], Awaitable[object]]

#: Calls both the engine and the client refuse with InvalidArgument or PayloadError before
#: they read or queue anything; the messages must be the same.
SAME: list[tuple[str, Call]] = [
    ("empty id", lambda api: api.signal("", "go")),
    ("id type", lambda api: api.signal(5, "go")),
    ("empty tenant", lambda api: api.describe("x", tenant="")),
    ("signal name", lambda api: api.signal("x", "")),
    ("payload type", lambda api: api.signal("x", "go", object())),
    ("payload depth", lambda api: api.signal("x", "go", _deep())),
    ("reason", lambda api: api.cancel("x", reason=5)),
    ("user", lambda api: api.approve("x", user=" ")),
    ("comment", lambda api: api.reject("x", user="u", comment=5)),
    ("approval id", lambda api: api.approve("x", user="u", approval_id="")),
    ("digest", lambda api: api.approve("x", user="u", digest="d" * 300)),
    ("after_seq", lambda api: api.history("x", after_seq=-1)),
    ("limit", lambda api: api.list(limit=0)),
    ("cursor", lambda api: api.list(cursor="nope")),
    ("status", lambda api: api.list(status="bogus")),
    ("workflow_type", lambda api: api.list(workflow_type="")),
    ("waitpoint limit", lambda api: api.pending_waitpoints("x", limit=10**9)),
    ("approvals cursor", lambda api: api.pending_approvals(cursor=5)),
    ("arity", lambda api: api.start(w.greet, workflow_id="n")),
    ("annotation", lambda api: api.start(w.greet, 5, workflow_id="n")),
    ("start id", lambda api: api.start(w.greet, "a", workflow_id="")),
    ("not a workflow", lambda api: api.start(print, workflow_id="n")),
    ("result timeout", lambda api: api.handle("x").result(timeout=-1)),
]


def _deep() -> list[Any]:
    value: list[Any] = []
    for _ in range(200):
        value = [value]
    return value


@pytest.mark.parametrize(("what", "call"), SAME, ids=[what for what, _ in SAME])
async def test_the_same_refusal_as_the_engine(what: str, call: Call) -> None:
    store = MemoryStore()
    async with (
        aion.Engine(store, workflows=w.WORKFLOWS, inbox_interval=INTERVAL) as engine,
        Client(store) as client,
    ):
        errors = []
        for api in (engine, client):
            with pytest.raises((aion.InvalidArgument, aion.PayloadError)) as caught:
                await call(api)
            errors.append((type(caught.value), str(caught.value)))
        assert errors[0] == errors[1], what
        assert await store.read_inbox() == []


async def test_the_same_refusals_of_requests_as_the_engine() -> None:
    store = MemoryStore()
    async with (
        aion.Engine(store, workflows=w.WORKFLOWS, inbox_interval=INTERVAL) as engine,
        Client(store) as client,
    ):
        await (await engine.start(w.greet, "x", workflow_id="done")).result()
        await engine.start(w.waits, workflow_id="open")
        await engine.start(w.needs_approval, 1, workflow_id="one")
        await engine.wait_idle()
        calls: list[Call] = [
            lambda api: api.signal("nope", "go"),
            lambda api: api.signal("done", "go"),
            lambda api: api.cancel("done"),
            lambda api: api.approve("open", user="u"),
            lambda api: api.approve("one", user="u", approval_id="other"),
            lambda api: api.approve("one", user="u", digest="not-it"),
            lambda api: api.unblock("open"),
            lambda api: api.unblock("nope"),
            lambda api: api.start(w.waits, workflow_id="done"),
            lambda api: api.describe("nope"),
            lambda api: api.history("nope"),
            lambda api: api.pending_waitpoints("nope"),
            lambda api: api.handle("nope").result(timeout=5),
        ]
        for i, call in enumerate(calls):
            errors = []
            for api in (engine, client):
                with pytest.raises(aion.AionError) as caught:
                    await call(api)
                errors.append((type(caught.value), str(caught.value)))
            assert errors[0] == errors[1], i
        assert await store.read_inbox() == []


async def test_a_decision_waits_for_the_next_engine_and_names_its_approval() -> None:
    store = MemoryStore()
    async with aion.Engine(store, workflows=w.WORKFLOWS, inbox_interval=INTERVAL) as engine:
        await engine.start(w.needs_approval, 1, workflow_id="one")
        await engine.wait_idle()
    async with Client(store) as client:  # no engine runs now
        [pending] = (await client.pending_approvals()).items
        await client.approve("one", user="ann", digest=pending.digest)
        [command] = await store.read_inbox()
        assert (command.kind, command.target_id, command.digest) == (
            "approve",
            pending.approval_id,
            pending.digest,
        )
        # The choice was made against the store, not left to chance at the engine.
        assert command.user == "ann" and command.comment is None
    async with aion.Engine(store, workflows=w.WORKFLOWS, inbox_interval=INTERVAL) as engine:
        assert (await engine.handle("one").result(timeout=10))["by"] == "ann"
        assert await store.read_inbox() == []
