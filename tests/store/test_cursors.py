"""Pagination cursors cannot be forged (issue 12, item 1; ARCHITECTURE.md invariant 20).

Every paged read of the store, for two tenants whose workflow ids collide: a cursor that is not
exactly one the store issued for this query and tenant (forged, truncated, bit-flipped, of
another query or tenant, of the unsigned format of earlier versions, signed for a key outside
the query's range) raises ``InvalidArgument`` with one message, and never returns a row.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aion.errors import DataDirectoryError, InvalidArgument
from aion.store import (
    ApprovalRow,
    EventStore,
    IndexRow,
    LmdbStore,
    MemoryStore,
    Page,
    Status,
    WaitpointRow,
    WaitpointStatus,
    Write,
)
from aion.store._cursors import CURSOR_KEY_FILE, CursorKey, load_or_create_key

from ._util import at, record

TENANTS = ("A", "B")
REFUSED = "not issued for this query"

Fetch = Callable[[EventStore, str, "str | None"], Awaitable[Page[Any]]]

#: Every paged read of the store, as (name, fetch(store, tenant, cursor)), two rows a page.
QUERIES: list[tuple[str, Fetch]] = [
    ("list_workflows", lambda s, t, c: s.list_workflows(tenant=t, limit=2, cursor=c)),
    (
        "list_workflows status",
        lambda s, t, c: s.list_workflows(tenant=t, status=Status.RUNNING, limit=2, cursor=c),
    ),
    (
        "list_workflows type",
        lambda s, t, c: s.list_workflows(tenant=t, workflow_type="even", limit=2, cursor=c),
    ),
    (
        "list_workflows started",
        lambda s, t, c: s.list_workflows(
            tenant=t, started_after=at(1), started_before=at(6), limit=2, cursor=c
        ),
    ),
    ("list_waitpoints", lambda s, t, c: s.list_waitpoints("wf", tenant=t, limit=2, cursor=c)),
    (
        "pending_waitpoints",
        lambda s, t, c: s.pending_waitpoints("wf", tenant=t, limit=2, cursor=c),
    ),
    ("list_approvals", lambda s, t, c: s.list_approvals("wf", tenant=t, limit=2, cursor=c)),
    ("pending_approvals", lambda s, t, c: s.pending_approvals(tenant=t, limit=2, cursor=c)),
    ("scan_index", lambda s, t, c: s.scan_index("idx", tenant=t, limit=2, cursor=c)),
    (
        "scan_index prefix",
        lambda s, t, c: s.scan_index("idx", tenant=t, prefix="k", limit=2, cursor=c),
    ),
]
NAMES = [name for name, _ in QUERIES]


def populate_write() -> Write:
    """The same ids in both tenants: a cursor reaching outside its tenant would show it."""
    workflows, waitpoints, approvals, index = [], [], [], []
    for tenant in TENANTS:
        for i in range(8):
            workflows.append(
                record(
                    f"w{i}",
                    tenant=tenant,
                    created=i,
                    status=Status.RUNNING if i % 4 else Status.COMPLETED,
                    workflow_type="even" if i % 2 == 0 else "odd",
                )
            )
            waitpoints.append(WaitpointRow(tenant, "wf", f"r-w{i + 1}", "r", "cb", at(i)))
            approvals.append(ApprovalRow(tenant, "wf", f"ap{i}", "r", "pay", "d", at(i)))
            index.append(IndexRow("idx", tenant, f"k{i}", tenant.encode()))
        waitpoints.append(
            WaitpointRow(tenant, "wf", "r-w99", "r", "cb", at(9), status=WaitpointStatus.COMPLETED)
        )
    return Write(workflows=workflows, waitpoints=waitpoints, approvals=approvals, index_put=index)


def tenant_of(item: Any) -> str:
    return str(item.tenant)


async def all_pages(store: EventStore, fetch: Fetch, tenant: str) -> list[Page[Any]]:
    pages = [await fetch(store, tenant, None)]
    while pages[-1].next_cursor is not None:
        pages.append(await fetch(store, tenant, pages[-1].next_cursor))
    return pages


async def refused(store: EventStore, fetch: Fetch, tenant: str, cursor: Any) -> None:
    with pytest.raises(InvalidArgument, match=REFUSED):
        page = await fetch(store, tenant, cursor)
        pytest.fail(f"a bad cursor returned {page.items!r}")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


@pytest.fixture
async def filled(store: EventStore) -> EventStore:
    await store.commit(populate_write())
    return store


# --- pages of valid cursors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
async def test_every_paged_call_pages_inside_its_tenant(filled: EventStore, name: str) -> None:
    fetch = dict(QUERIES)[name]
    for tenant in TENANTS:
        pages = await all_pages(filled, fetch, tenant)
        assert len(pages) >= 2, "each query must page, or its cursors are not tested"
        items = [item for page in pages for item in page.items]
        assert items and {tenant_of(item) for item in items} == {tenant}
        assert len(items) == len({msgspec.msgpack.encode(item) for item in items})


# --- forged, altered and swapped cursors ---------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
async def test_a_cursor_of_the_other_tenant_is_refused(filled: EventStore, name: str) -> None:
    fetch = dict(QUERIES)[name]
    for tenant, other in (("A", "B"), ("B", "A")):
        for page in (await all_pages(filled, fetch, other))[:-1]:
            await refused(filled, fetch, tenant, page.next_cursor)


async def test_a_cursor_of_another_query_is_refused(filled: EventStore) -> None:
    cursors = {
        (name, tenant): (await fetch(filled, tenant, None)).next_cursor
        for name, fetch in QUERIES
        for tenant in TENANTS
    }
    for name, fetch in QUERIES:
        for tenant in TENANTS:
            for (source, source_tenant), cursor in cursors.items():
                if (source, source_tenant) != (name, tenant):
                    await refused(filled, fetch, tenant, cursor)


@pytest.mark.parametrize("name", NAMES)
async def test_truncated_extended_and_bit_flipped_cursors_are_refused(
    filled: EventStore, name: str
) -> None:
    fetch = dict(QUERIES)[name]
    cursor = (await fetch(filled, "B", None)).next_cursor
    assert cursor is not None
    for n in range(len(cursor)):
        await refused(filled, fetch, "B", cursor[:n])
    for extra in ("A", "=", "==", " ", "\n", "é", "\udc80"):
        await refused(filled, fetch, "B", cursor + extra)
    raw = unb64(cursor)
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        await refused(filled, fetch, "B", b64(bytes(flipped)))
    # The same bytes, written differently: padding, the standard alphabet, spare bits.
    await refused(filled, fetch, "B", base64.urlsafe_b64encode(raw).decode() + "==")
    standard = base64.b64encode(raw).decode().rstrip("=")
    if standard != cursor:  # it has a '+' or '/' where the cursor has '-' or '_'
        await refused(filled, fetch, "B", standard)
    if len(raw) % 3:  # the last character has spare bits: set one
        last = cursor[-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        spare = alphabet[alphabet.index(last) | 1]
        assert unb64(cursor[:-1] + spare) == raw
        await refused(filled, fetch, "B", cursor[:-1] + spare)


async def test_the_unsigned_cursors_of_earlier_versions_are_refused(filled: EventStore) -> None:
    """The attack of the issue: ``[1, query, last_key]`` with a last key in tenant A's range,
    presented to tenant B, read A's pending approvals (details included)."""
    forged = {
        "pending_approvals": (["approvals_pending", "B"], b"A\x00"),
        "list_waitpoints": (["waitpoints", "B", "wf"], b"A\x00wf\x00"),
        "list_approvals": (["approvals", "B", "wf"], b"A\x00wf\x00"),
        "pending_waitpoints": (["waitpoints_pending", "B", "wf"], b"r-w1"),
        "list_workflows": (["workflows", "B", None, None, None, None], b"B\x00\xff"),
        "scan_index": (["index", "idx", "B", ""], b"idx\x00A\x00"),
    }
    fetches = dict(QUERIES)
    for name, (query, last_key) in forged.items():
        cursor = b64(msgspec.msgpack.encode([1, query, last_key]))
        await refused(filled, fetches[name], "B", cursor)
    # And a cursor exactly as an earlier version issued it for this very query.
    page = await filled.pending_approvals(tenant="B", limit=2)
    old = b64(msgspec.msgpack.encode([1, ["approvals_pending", "B"], b"B\x00"]))
    assert old != page.next_cursor
    await refused(filled, fetches["pending_approvals"], "B", old)


async def test_a_cursor_signed_with_another_key_is_refused(filled: EventStore) -> None:
    stranger = CursorKey.generate()
    cursor = stranger.sign(["approvals_pending", "B"], b"B\x00")
    await refused(filled, dict(QUERIES)["pending_approvals"], "B", cursor)


async def test_a_signed_cursor_outside_the_query_range_is_refused(filled: EventStore) -> None:
    """The range check stands on its own: even a cursor signed with the store's key (a leaked
    key, a bug) cannot move a page outside the key range of its query and tenant."""
    key = filled._cursor_key()  # type: ignore[attr-defined]
    cases: list[tuple[str, list[Any], bytes]] = [
        ("pending_approvals", ["approvals_pending", "B"], b"A\x00"),
        ("pending_approvals", ["approvals_pending", "B"], b"C\x00"),
        ("list_approvals", ["approvals", "B", "wf"], b"A\x00wf\x00ap0"),
        ("list_waitpoints", ["waitpoints", "B", "wf"], b"B\x00wg\x00"),
        ("pending_waitpoints", ["waitpoints_pending", "B", "wf"], b"A\x00wf\x00r-w1"),
        ("list_workflows", ["workflows", "B", None, None, None, None], b"A\x00\xff"),
        ("list_workflows", ["workflows", "B", None, None, None, None], b"C"),
        ("scan_index", ["index", "idx", "B", ""], b"idx\x00A\x00k1"),
        ("scan_index prefix", ["index", "idx", "B", "k"], b"idx\x00B\x00j"),
    ]
    fetches = dict(QUERIES)
    for name, query, last_key in cases:
        await refused(filled, fetches[name], "B", key.sign(query, last_key))
    # In range, the same signing is a valid cursor (so the cases above fail on the range).
    page = await filled.pending_approvals(
        tenant="B", limit=2, cursor=key.sign(["approvals_pending", "B"], b"B\x00")
    )
    assert [r.approval_id for r in page.items] == ["ap0", "ap1"]


@pytest.mark.parametrize("cursor", [5, b"abc", ["abc"], 1.5, True])
async def test_a_cursor_that_is_not_text_is_refused(filled: EventStore, cursor: Any) -> None:
    for _, fetch in QUERIES:
        with pytest.raises(InvalidArgument, match="cursor must be a str"):
            await fetch(filled, "A", cursor)


async def test_garbage_and_huge_cursors_are_refused(filled: EventStore) -> None:
    fetch = dict(QUERIES)["pending_approvals"]
    for cursor in ("", "garbage!!", "====", "A" * 100_000, "\x00", "\udcff" * 10):
        await refused(filled, fetch, "A", cursor)


# --- Hypothesis: any change to a valid cursor is refused -----------------------------------------


class _Stores:
    """Both backends filled once (the Hypothesis test runs many examples over them)."""

    def __init__(self, directory: Path) -> None:
        self.stores: dict[str, EventStore] = {
            "memory": MemoryStore(),
            "lmdb": LmdbStore(directory / "data"),
        }
        for store in self.stores.values():
            anyio.run(store.commit, populate_write())
        self.first: dict[tuple[str, str, str], Page[Any]] = {}
        self.second: dict[tuple[str, str, str], Page[Any]] = {}
        for backend, store in self.stores.items():
            for name, fetch in QUERIES:
                for tenant in TENANTS:
                    first = anyio.run(fetch, store, tenant, None)
                    self.first[backend, name, tenant] = first
                    self.second[backend, name, tenant] = anyio.run(
                        fetch, store, tenant, first.next_cursor
                    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Stores]:
    filled = _Stores(tmp_path_factory.mktemp("cursors"))
    yield filled
    for store in filled.stores.values():
        anyio.run(store.aclose)


_POSITION = st.integers(min_value=0, max_value=2_000)
_MUTATION = st.one_of(
    st.tuples(st.just("delete"), _POSITION, st.just("")),
    st.tuples(st.just("insert"), _POSITION, st.characters()),
    st.tuples(st.just("replace"), _POSITION, st.characters()),
    st.tuples(st.just("truncate"), _POSITION, st.just("")),
    st.tuples(st.just("append"), _POSITION, st.text(max_size=8)),
    st.tuples(st.just("flip"), _POSITION, st.just("")),
    st.tuples(st.just("swapcase"), _POSITION, st.just("")),
)


def mutate(cursor: str, mutation: tuple[str, int, str]) -> str:
    kind, position, text = mutation
    i = position % (len(cursor) + 1)
    match kind:
        case "delete":
            return cursor[:i] + cursor[i + 1 :]
        case "insert":
            return cursor[:i] + text + cursor[i:]
        case "replace":
            return cursor[:i] + text + cursor[i + 1 :]
        case "truncate":
            return cursor[:i]
        case "append":
            return cursor + text
        case "flip":
            try:
                raw = bytearray(unb64(cursor))
            except ValueError:  # an earlier mutation made it undecodable: flip nothing
                return cursor
            if not raw:
                return cursor
            bit = position % (len(raw) * 8)
            raw[bit // 8] ^= 1 << (bit % 8)
            return b64(bytes(raw))
        case "swapcase":
            return cursor[:i] + cursor[i : i + 1].swapcase() + cursor[i + 1 :]
    raise AssertionError(kind)


@given(
    backend=st.sampled_from(["memory", "lmdb"]),
    source=st.sampled_from(NAMES),
    source_tenant=st.sampled_from(TENANTS),
    target=st.sampled_from(NAMES),
    tenant=st.sampled_from(TENANTS),
    mutations=st.lists(_MUTATION, max_size=3),
)
def test_a_changed_cursor_is_refused_an_unchanged_one_returns_the_same_page(
    stores: _Stores,
    backend: str,
    source: str,
    source_tenant: str,
    target: str,
    tenant: str,
    mutations: list[tuple[str, int, str]],
) -> None:
    original = stores.first[backend, source, source_tenant].next_cursor
    assert original is not None
    cursor = original
    for mutation in mutations:
        cursor = mutate(cursor, mutation)
    store = stores.stores[backend]
    fetch = dict(QUERIES)[target]
    if cursor == original and (source, source_tenant) == (target, tenant):
        page = anyio.run(fetch, store, tenant, cursor)
        assert page == stores.second[backend, target, tenant]
    else:
        with pytest.raises(InvalidArgument, match=REFUSED):
            anyio.run(fetch, store, tenant, cursor)


# --- the key ------------------------------------------------------------------------------------


def test_the_engine_makes_the_key_file_on_open_owner_only(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "data"):
        pass
    path = tmp_path / "data" / CURSOR_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(bytes.fromhex(text.strip())) == 32 and text.endswith("\n")
    assert text.strip() not in repr(load_or_create_key(tmp_path / "data"))


async def test_engine_and_client_accept_each_others_cursors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with LmdbStore(data) as engine_store:
        await engine_store.commit(populate_write())
        from_engine = (await engine_store.pending_approvals(tenant="A", limit=2)).next_cursor
    async with LmdbStore(data, role="client") as client:
        page = await client.pending_approvals(tenant="A", limit=2, cursor=from_engine)
        assert [r.approval_id for r in page.items] == ["ap2", "ap3"]
        from_client = page.next_cursor
        await refused(client, dict(QUERIES)["pending_approvals"], "B", from_engine)
    async with LmdbStore(data) as engine_store:
        page = await engine_store.pending_approvals(tenant="A", limit=2, cursor=from_client)
        assert [r.approval_id for r in page.items] == ["ap4", "ap5"]


async def test_a_client_makes_the_key_of_a_store_that_has_none(tmp_path: Path) -> None:
    """A store created before cursor keys existed: the first process that needs the key makes
    it, and the engine opening the directory later uses that one."""
    data = tmp_path / "data"
    async with LmdbStore(data) as engine_store:
        await engine_store.commit(populate_write())
    (data / CURSOR_KEY_FILE).unlink()
    async with LmdbStore(data, role="client") as client:
        cursor = (await client.list_workflows(tenant="B", limit=2)).next_cursor
    assert stat.S_IMODE((data / CURSOR_KEY_FILE).stat().st_mode) == 0o600
    async with LmdbStore(data) as engine_store:
        page = await engine_store.list_workflows(tenant="B", limit=2, cursor=cursor)
        assert [r.workflow_id for r in page.items] == ["w5", "w4"]


async def test_a_new_key_refuses_the_old_cursors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with LmdbStore(data) as engine_store:
        await engine_store.commit(populate_write())
        cursor = (await engine_store.pending_approvals(tenant="A", limit=2)).next_cursor
    (data / CURSOR_KEY_FILE).unlink()
    async with LmdbStore(data) as engine_store:
        await refused(engine_store, dict(QUERIES)["pending_approvals"], "A", cursor)
        assert len((await engine_store.pending_approvals(tenant="A")).items) == 8


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LmdbStore(data):
        pass
    os.chmod(data / CURSOR_KEY_FILE, 0o644)
    with pytest.raises(DataDirectoryError, match=f"chmod 600 {data / CURSOR_KEY_FILE}"):
        LmdbStore(data)
    with LmdbStore(data, role="client") as client, pytest.raises(DataDirectoryError):
        anyio.run(lambda: client.pending_approvals(tenant="A"))


@pytest.mark.parametrize("content", [b"", b"zz" * 32 + b"\n", b"ab" * 16 + b"\n", b"\xff" * 70])
def test_a_damaged_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    data = tmp_path / "data"
    with LmdbStore(data):
        pass
    (data / CURSOR_KEY_FILE).write_bytes(content)
    with pytest.raises(DataDirectoryError, match="does not hold a key"):
        LmdbStore(data)


def test_the_key_file_is_never_overwritten(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path)
    content = (tmp_path / CURSOR_KEY_FILE).read_bytes()
    second = load_or_create_key(tmp_path)
    assert (tmp_path / CURSOR_KEY_FILE).read_bytes() == content
    assert first.sign(["q"], b"k") == second.sign(["q"], b"k")
    assert [p.name for p in tmp_path.iterdir()] == [CURSOR_KEY_FILE]  # no temp file left


async def test_a_memory_store_keeps_its_key_across_reopen() -> None:
    store = MemoryStore()
    await store.commit(populate_write())
    cursor = (await store.pending_approvals(tenant="A", limit=2)).next_cursor
    reopened = store.reopen()
    page = await reopened.pending_approvals(tenant="A", limit=2, cursor=cursor)
    assert [r.approval_id for r in page.items] == ["ap2", "ap3"]
    other = MemoryStore()
    await other.commit(populate_write())
    await refused(other, dict(QUERIES)["pending_approvals"], "A", cursor)
