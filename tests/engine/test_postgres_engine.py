"""An engine on PostgreSQL (``aion.Engine("postgresql://...")``): runs survive a restart, the
schema is created, versioned and guarded by one engine lock, the waitpoint key ring and payload
limit live in the database, and a writer that lost its connection takes the lock again before
it writes. The conformance and model suites (tests/store) cover the store itself."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import aion
from aion.errors import (
    DependencyMissing,
    InvalidArgument,
    PayloadError,
    StoreError,
    StoreFormatError,
    StoreLocked,
)
from aion.store import Append, Write
from tests import _postgres
from tests.store._util import started

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL backend needs aion[postgres]")


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    _postgres.require()


def double(x: int) -> int:
    return 2 * x


@aion.workflow(name="pg.flow")
async def flow(ctx: aion.Context, x: int) -> dict[str, Any]:
    doubled = await ctx.step(double, x)
    await ctx.sleep(timedelta(milliseconds=20))
    extra = await ctx.wait_signal("more")
    return {"doubled": doubled, "extra": extra}


@aion.workflow(name="pg.callback")
async def callback(ctx: aion.Context) -> Any:
    waitpoint = await ctx.waitpoint("provider")
    return await waitpoint.wait()


@aion.workflow(name="pg.echo")
async def echo(ctx: aion.Context, value: Any) -> Any:
    return value


WORKFLOWS = [flow, callback, echo]


@pytest.fixture
def url() -> Iterator[str]:
    """A URL naming a fresh schema (``?schema=``), dropped afterwards."""
    with _postgres.fresh_schema() as schema:
        yield f"{_postgres.URL}?schema={schema}"


async def test_runs_survive_a_restart_and_history_reads_back(url: str) -> None:
    async with aion.Engine(url, workflows=WORKFLOWS, inbox_interval=0.05) as engine:
        handle = await engine.start(flow, 21, workflow_id="f-1")
        await engine.signal("f-1", "more", "a")
        assert await handle.result(timeout=10) == {"doubled": 42, "extra": "a"}
        parked = await engine.start(flow, 1, workflow_id="f-2")
        history = [e.type for e in await engine.history("f-1")]
        assert parked.workflow_id == "f-2"
    async with aion.Engine(url, workflows=WORKFLOWS, inbox_interval=0.05) as engine:
        assert [e.type for e in await engine.history("f-1")] == history
        assert (await engine.describe("f-1")).status is aion.Status.COMPLETED
        await engine.signal("f-2", "more", "after the restart")
        result = await engine.handle("f-2").result(timeout=10)
        assert result == {"doubled": 2, "extra": "after the restart"}
        listed = await engine.list(status=aion.Status.COMPLETED)
        assert {d.workflow_id for d in listed.items} == {"f-1", "f-2"}


async def test_with_ownership_lock_a_second_engine_on_the_schema_is_refused(url: str) -> None:
    alone = f"{url}&ownership=lock"
    async with aion.Engine(alone, workflows=WORKFLOWS):
        with pytest.raises(StoreLocked, match="another engine holds"):
            async with aion.Engine(alone, workflows=WORKFLOWS):
                pass
        # Nor does an engine that would share the schema start beside it: modes do not mix.
        with pytest.raises(StoreLocked):
            async with aion.Engine(url, workflows=WORKFLOWS):
                pass
    async with aion.Engine(alone, workflows=WORKFLOWS):  # released with the first
        pass


async def test_by_default_a_second_engine_shares_the_schema(url: str) -> None:
    async with (
        aion.Engine(url, workflows=WORKFLOWS) as a,
        aion.Engine(url, workflows=WORKFLOWS) as b,
    ):
        assert a.store.engine_id != b.store.engine_id  # type: ignore[attr-defined]


def test_a_second_store_waits_for_the_lock_then_gives_up(url: str) -> None:
    from aion.store import PostgresStore

    with PostgresStore(url), pytest.raises(StoreLocked, match="another engine holds"):
        PostgresStore(url, lock_wait=0.05)
    with PostgresStore(url, lock_wait=0.05):  # free again once the first closed
        pass


async def test_a_client_in_another_schema_sees_nothing(url: str) -> None:
    async with aion.Engine(url, workflows=WORKFLOWS) as engine:
        await (await engine.start(echo, 1, workflow_id="mine")).result(timeout=10)
    with _postgres.fresh_schema() as other:
        async with aion.Engine(f"{_postgres.URL}?schema={other}", workflows=WORKFLOWS) as engine:
            with pytest.raises(aion.WorkflowNotFound):
                await engine.describe("mine")


async def test_tokens_and_the_payload_limit_live_in_the_database(url: str) -> None:
    async with aion.Engine(url, workflows=WORKFLOWS, max_payload_bytes=1024) as engine:
        await engine.start(callback, workflow_id="cb")
        await engine.wait_idle()
        async with aion.Client(url) as client:
            with pytest.raises(PayloadError):  # the engine's limit, read from the database
                await client.signal("cb", "x", "y" * 4096)
            with pytest.raises(aion.InvalidToken):  # checked against the shared key ring
                await client.complete_waitpoint("v1.forged." + "A" * 40, {"paid": True})
            assert await client.store.read_inbox() == []  # nothing was queued


async def test_a_token_signed_before_a_restart_completes_after_it(url: str) -> None:
    handed: list[str] = []

    def hand_out(token: str) -> str:
        handed.append(token)
        return "sent"

    @aion.workflow(name="pg.hands_out")
    async def hands_out(ctx: aion.Context) -> Any:
        wp = await ctx.waitpoint("provider")
        await ctx.step(hand_out, wp.token)
        return await wp.wait()

    async with aion.Engine(url, workflows=[hands_out]) as engine:
        await engine.start(hands_out, workflow_id="h")
        await engine.wait_idle()
    [token] = handed
    async with aion.Engine(url, workflows=[hands_out], inbox_interval=0.05) as engine:
        async with aion.Client(url) as client:
            await client.complete_waitpoint(token, {"paid": True})
        assert await engine.handle("h").result(timeout=10) == {"paid": True}


async def test_a_schema_of_a_newer_aion_is_refused(url: str) -> None:
    async with aion.Engine(url, workflows=WORKFLOWS):
        pass
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(_postgres.URL, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES (999)')
    with pytest.raises(StoreFormatError, match="newer aion"):
        async with aion.Engine(url, workflows=WORKFLOWS):
            pass


async def test_a_schema_of_an_older_aion_is_migrated(url: str) -> None:
    async with aion.Engine(url, workflows=WORKFLOWS) as engine:
        await (await engine.start(echo, 7, workflow_id="old")).result(timeout=10)
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(_postgres.URL, autocommit=True) as conn:  # back to version 1
        conn.execute(f'DROP TABLE "{schema}".partitions, "{schema}".engines')
        conn.execute(f'DELETE FROM "{schema}".schema_version WHERE version > 1')
    async with aion.Engine(url, workflows=WORKFLOWS) as engine:
        assert (await engine.describe("old")).result == 7
    with psycopg.connect(_postgres.URL, autocommit=True) as conn:
        versions = conn.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
        partitions = conn.execute(f'SELECT count(*) FROM "{schema}".partitions').fetchone()
    assert sorted(v for (v,) in versions) == [1, 2]
    assert partitions == (64,)


async def test_a_client_before_any_engine_is_told_to_start_one(url: str) -> None:
    with pytest.raises(StoreFormatError, match="start an engine"):
        async with aion.Client(url):
            pass


def test_tables_of_another_program_are_not_taken_over(url: str) -> None:
    from aion.store import PostgresStore

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(_postgres.URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".events (id int)')
    with pytest.raises(StoreFormatError, match="not made by aion"):
        PostgresStore(url)


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("mysql://x/y", {}, "postgresql:// URL"),
        (f"{_postgres.URL}?schema=Bad-Name", {}, "schema must be"),
        (f"{_postgres.URL}?schema=a&schema=b", {}, "more than once"),
        (f"{_postgres.URL}?schema=a", {"schema": "b"}, "pass one"),
        (f"{_postgres.URL}?ownership=shared", {}, "ownership must be"),
        (f"{_postgres.URL}?partitions=many", {}, "partitions='many' is not a number"),
        (f"{_postgres.URL}?partitions=0", {}, "partitions must be"),
        (f"{_postgres.URL}?partitions=8", {"partitions": 16}, "pass one"),
        (f"{_postgres.URL}?lease_ttl=-1", {}, "lease_ttl must be"),
        (f"{_postgres.URL}?lease_ttl=soon", {}, "is not a number"),
        (_postgres.URL, {"role": "owner"}, "role must be"),
        (_postgres.URL, {"durable": "yes"}, "durable must be"),
        (_postgres.URL, {"read_connections": 0}, "read_connections"),
        (_postgres.URL, {"lock_wait": 0}, "lock_wait"),
        (_postgres.URL, {"lock_wait": "1s"}, "lock_wait"),
    ],
)
def test_bad_arguments_are_refused_before_connecting(
    url: str, options: dict[str, Any], match: str
) -> None:
    from aion.store import PostgresStore

    with pytest.raises(InvalidArgument, match=match):
        PostgresStore(url, **options)


def test_an_unreachable_server_is_a_store_error() -> None:
    from aion.store import PostgresStore

    with pytest.raises(StoreError, match="cannot connect"):
        PostgresStore("postgresql://postgres:secret@127.0.0.1:1/test", connect_timeout=1)


def test_the_password_is_not_shown() -> None:
    from aion.store import PostgresStore

    with pytest.raises(StoreError) as failed:
        PostgresStore("postgresql://postgres:s3cr3t@127.0.0.1:1/test", connect_timeout=1)
    assert "s3cr3t" not in str(failed.value)


def test_without_the_driver_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "aion.store._postgres", raising=False)
    import aion.store

    with pytest.raises(DependencyMissing, match=r"aion\[postgres\]"):
        aion.store.PostgresStore  # noqa: B018


def _kill_writer(store: Any) -> None:
    """Terminate the server process of the store's writer connection (it holds the lock)."""
    with psycopg.connect(_postgres.URL, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'advisory' AND objid = %s",
            (store._lock_id,),
        ).fetchall()
    assert killed == [(True,)]


async def test_a_writer_that_lost_its_connection_takes_the_lock_again(url: str) -> None:
    from aion.store import PostgresStore

    store = PostgresStore(url)
    try:
        await store.commit(Write(appends=[Append("w", [started(1, "w")], 0)]))
        _kill_writer(store)
        # Lost before its commit, the batch wrote nothing: written again on a new connection
        # that took the engine lock again, and the caller never knows.
        result = await store.commit(Write(appends=[Append("v", [started(1, "v")], 0)]))
        assert result.heads == (1,)
        assert [e.seq for e in await store.read_history("v")] == [1]
        with pytest.raises(StoreLocked):  # the lock is held again
            PostgresStore(url)
    finally:
        await store.aclose()


async def test_a_connection_lost_during_the_commit_says_the_outcome_is_unknown(
    url: str,
) -> None:
    from aion.store import PostgresStore, WriteHook

    store = PostgresStore(url)

    class KillBeforeCommit(WriteHook):
        def before_commit(self, requests: int) -> None:
            _kill_writer(store)

    try:
        store.set_write_hook(KillBeforeCommit())
        with pytest.raises(StoreError, match="may or may not have been recorded"):
            await store.commit(Write(appends=[Append("u", [started(1, "u")], 0)]))
        store.set_write_hook(None)
        # It was not (the server died before COMMIT); the store goes on, on a new connection.
        assert await store.head("u") == 0
        result = await store.commit(Write(appends=[Append("u", [started(1, "u")], 0)]))
        assert result.heads == (1,)
    finally:
        await store.aclose()
