"""The store against a model: a Hypothesis state machine over MemoryStore and LmdbStore.

The model is a few dicts (histories, projection rows, timer rows). Every rule drives the real
store through its public async API and predicts the outcome from the model: the new heads, or
exactly which error, in which case nothing may change. After every step the invariants compare
everything the store can tell (histories, heads, run chains, current runs, projection rows,
list indexes, the timer index) with the model. The machine closes and reopens the store
(LmdbStore: a new ``LmdbStore`` on the same directory; MemoryStore: ``reopen()``), races
concurrent writes through the group-commit writer, and uses two tenants whose workflow ids
collide, with ids and type names that are prefixes of one another.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aion import events as ev
from aion.errors import AionError, InvalidArgument, SequenceConflict
from aion.store import (
    Append,
    EventStore,
    LmdbStore,
    MemoryStore,
    RunInfo,
    Status,
    TimerRow,
    WorkflowRecord,
    Write,
)
from tests import _postgres

R = TypeVar("R")

# --- the universe ------------------------------------------------------------------------------

#: Two tenants with the same workflow ids: each must see only its own rows.
TENANTS = ("default", "acme")
#: "order" is a key prefix of the others: key ranges must not bleed into each other.
WORKFLOW_IDS = ("order", "order-1", "order-2")
PAIRS = tuple((t, w) for t in TENANTS for w in WORKFLOW_IDS)
#: "Check" is a prefix of "Checkout": the by-type index must not mix them.
TYPES = ("Check", "Checkout", "Refund")
TIMER_IDS = ("t1", "t10", "t2")
T0 = datetime(2026, 3, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)

#: A small pool of instants, so equal creation and due times (ties in the key order) are common.
times = st.integers(0, 24).map(lambda s: T0 + timedelta(seconds=s))
#: Occasionally a sub-second instant: the key encoding is exact to the microsecond.
fine_times = st.one_of(
    times, st.integers(0, 24_000_000).map(lambda us: T0 + timedelta(microseconds=us))
)
pairs = st.sampled_from(PAIRS)
statuses = st.sampled_from(list(Status))
EVENT_KINDS = ("started", "signal", "step", "timer", "continued", "completed")
#: (kind, token, recorded at): turned into real events once the first seq is known.
event_specs = st.lists(
    st.tuples(st.sampled_from(EVENT_KINDS), st.integers(0, 3), fine_times),
    min_size=1,
    max_size=4,
)
search_attributes = st.dictionaries(
    st.sampled_from(("customer", "amount", "vip")),
    st.one_of(st.text(max_size=3), st.integers(-5, 5), st.booleans()),
    max_size=2,
)

Spec = tuple[str, int, datetime]
Key = tuple[str, str]


def make_events(tenant: str, workflow_id: str, first_seq: int, specs: Sequence[Spec]) -> list[Any]:
    """Real events with seqs ``first_seq, first_seq + 1, ...`` from generated specs."""
    out: list[Any] = []
    for offset, (kind, token, at) in enumerate(specs):
        seq = first_seq + offset
        if kind == "started":
            out.append(
                ev.WorkflowStarted(
                    seq=seq,
                    at=at,
                    workflow_id=workflow_id,
                    run_id=f"run-{token}",
                    workflow_type=TYPES[token % len(TYPES)],
                    input=msgspec.msgpack.encode([token]),
                    tenant=tenant,
                )
            )
        elif kind == "signal":
            out.append(ev.SignalReceived(seq=seq, at=at, name=f"s{token}", payload=bytes([token])))
        elif kind == "step":
            out.append(ev.StepCompleted(seq=seq, at=at, step_seq=token, attempt=1, result=b"\xc0"))
        elif kind == "timer":
            out.append(ev.TimerScheduled(seq=seq, at=at, timer_seq=token, due=at))
        elif kind == "continued":
            out.append(
                ev.WorkflowContinuedAsNew(
                    seq=seq, at=at, new_run_id=f"run-{token}", workflow_type="Check", input=b""
                )
            )
        else:
            out.append(ev.WorkflowCompleted(seq=seq, at=at, result=bytes([token])))
    return out


def timer_sort_key(row: TimerRow) -> tuple[datetime, bytes, bytes, bytes]:
    """The order of the due-time index (due, then tenant, workflow and timer id as bytes)."""
    return (row.due, row.tenant.encode(), row.workflow_id.encode(), row.timer_id.encode())


def timer_identity(row: TimerRow) -> tuple[datetime, str, str, str]:
    return (row.due, row.tenant, row.workflow_id, row.timer_id)


# --- the model ---------------------------------------------------------------------------------


class Model:
    """What the store should hold, as plain Python values."""

    def __init__(self) -> None:
        self.histories: dict[Key, list[Any]] = {}
        self.records: dict[Key, WorkflowRecord] = {}
        self.timers: dict[tuple[datetime, str, str, str], TimerRow] = {}

    def head(self, key: Key) -> int:
        return len(self.histories.get(key, ()))

    def predict(self, write: Write) -> type[AionError] | None:
        """The error ``write`` must raise (nothing written then), or None if it commits."""
        for append in write.appends:
            if append.expected_seq != self.head((append.tenant, append.workflow_id)):
                return SequenceConflict
        created: dict[Key, datetime] = {k: r.created_at for k, r in self.records.items()}
        for record in write.workflows:
            key = (record.tenant, record.workflow_id)
            if created.setdefault(key, record.created_at) != record.created_at:
                return InvalidArgument
        return None

    def apply(self, write: Write) -> tuple[int, ...]:
        heads = []
        for append in write.appends:
            history = self.histories.setdefault((append.tenant, append.workflow_id), [])
            history.extend(append.events)
            heads.append(len(history))
        for record in write.workflows:
            self.records[(record.tenant, record.workflow_id)] = record
        for row in write.timers_delete:
            self.timers.pop(timer_identity(row), None)
        for row in write.timers_add:
            self.timers[timer_identity(row)] = row
        return tuple(heads)

    def run_chain(self, key: Key) -> list[RunInfo]:
        history = self.histories.get(key, [])
        starts = [e for e in history if isinstance(e, ev.WorkflowStarted)]
        return [
            RunInfo(
                run_id=s.run_id,
                first_seq=s.seq,
                workflow_type=s.workflow_type,
                started_at=s.at,
                last_seq=starts[i + 1].seq - 1 if i + 1 < len(starts) else len(history),
            )
            for i, s in enumerate(starts)
        ]

    def current_run(self, key: Key) -> list[Any]:
        chain = self.run_chain(key)
        return self.histories[key][chain[-1].first_seq - 1 :] if chain else []

    def list_workflows(
        self,
        tenant: str,
        status: Status | None = None,
        workflow_type: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
    ) -> list[WorkflowRecord]:
        rows = [
            r
            for (t, _), r in self.records.items()
            if t == tenant
            and (status is None or r.status is status)
            and (workflow_type is None or r.workflow_type == workflow_type)
            and (started_after is None or r.created_at >= started_after)
            and (started_before is None or r.created_at < started_before)
        ]
        # Newest first; equal creation times by workflow id (as bytes), descending.
        return sorted(rows, key=lambda r: (r.created_at, r.workflow_id.encode()), reverse=True)

    def due(self, until: datetime) -> list[TimerRow]:
        return sorted((r for r in self.timers.values() if r.due <= until), key=timer_sort_key)

    def next_due(self, after: datetime) -> datetime | None:
        return min((r.due for r in self.timers.values() if r.due > after), default=None)

    def active(self) -> list[WorkflowRecord]:
        """Non-terminal rows of every tenant, by (tenant, workflow id) as key bytes."""
        rows = [r for r in self.records.values() if not r.status.is_terminal]
        return sorted(rows, key=lambda r: (r.tenant.encode(), r.workflow_id.encode()))

    def tenants(self) -> list[str]:
        return sorted({t for t, _ in self.records}, key=str.encode)


# --- the machine -------------------------------------------------------------------------------


class StoreMachine(RuleBasedStateMachine):
    """Rules and invariants shared by every backend; subclasses open and reopen the store."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self.store: EventStore = self.open_store()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)  # teardown() will not run
            raise

    # Backend hooks.

    def open_store(self) -> EventStore:
        raise NotImplementedError

    def reopen_store(self) -> EventStore:
        raise NotImplementedError

    def close_store(self) -> None:
        self.run(self.store.aclose)

    def teardown(self) -> None:
        try:
            self.close_store()
        finally:
            self._portal_cm.__exit__(None, None, None)

    # Helpers.

    def run(self, fn: Callable[[], Awaitable[R]]) -> R:
        """Run an async function on the machine's event loop (one loop for the whole example)."""
        return self._portal.call(fn)

    def commit(self, write: Write) -> None:
        """Commit ``write`` and check the outcome the model predicts."""
        expected = self.model.predict(write)
        if expected is None:
            result = self.run(lambda: self.store.commit(write))
            assert result.heads == self.model.apply(write)
        else:
            with pytest.raises(expected):
                self.run(lambda: self.store.commit(write))

    def record_for(
        self,
        key: Key,
        status: Status,
        workflow_type: str,
        created_at: datetime,
        waiting_on: tuple[str, ...] = (),
        attributes: dict[str, Any] | None = None,
    ) -> WorkflowRecord:
        """A projection row; ``created_at`` is kept from the model when the row exists."""
        existing = self.model.records.get(key)
        created = existing.created_at if existing is not None else created_at
        return WorkflowRecord(
            tenant=key[0],
            workflow_id=key[1],
            run_id=f"run-{self.model.head(key)}",
            workflow_type=workflow_type,
            status=status,
            created_at=created,
            run_started_at=created + timedelta(seconds=self.model.head(key)),
            closed_at=created + timedelta(minutes=1) if status.is_terminal else None,
            waiting_on=waiting_on,
            search_attributes=attributes or {},
        )

    # --- appends ---------------------------------------------------------------------------

    @rule(key=pairs, specs=event_specs)
    def append(self, key: Key, specs: list[Spec]) -> None:
        tenant, wf = key
        head = self.model.head(key)
        events = make_events(tenant, wf, head + 1, specs)
        new_head = self.run(lambda: self.store.append(wf, events, head, tenant=tenant))
        assert new_head == head + len(events)
        self.model.histories.setdefault(key, []).extend(events)

    @rule(key=pairs, specs=event_specs, delta=st.sampled_from((-3, -1, 1, 2, 7)))
    def append_stale(self, key: Key, specs: list[Spec], delta: int) -> None:
        tenant, wf = key
        head = self.model.head(key)
        expected = head + delta if head + delta >= 0 else head + 1
        events = make_events(tenant, wf, expected + 1, specs)
        with pytest.raises(SequenceConflict) as info:
            self.run(lambda: self.store.append(wf, events, expected, tenant=tenant))
        assert (info.value.workflow_id, info.value.tenant) == (wf, tenant)
        assert (info.value.expected_seq, info.value.actual_seq) == (expected, head)

    @rule(data=st.data())
    def multi_write(self, data: st.DataObject) -> None:
        """One Write over several histories, rows and timers; one stale append voids it all."""
        keys = data.draw(st.lists(pairs, min_size=2, max_size=3, unique=True), "keys")
        appends = []
        for tenant, wf in keys:
            head = self.model.head((tenant, wf))
            stale = data.draw(st.sampled_from((False, False, True)), "stale")
            expected = head + 1 if stale else head
            specs = data.draw(event_specs, "specs")
            events = make_events(tenant, wf, expected + 1, specs)
            appends.append(Append(wf, events, expected, tenant))
        records = [
            self.record_for(
                key, data.draw(statuses), data.draw(st.sampled_from(TYPES)), data.draw(times)
            )
            for key in data.draw(st.lists(st.sampled_from(keys), unique=True), "records")
        ]
        timers = [
            TimerRow(due, tenant, wf, timer_id, "run-x")
            for (tenant, wf), due, timer_id in data.draw(
                st.lists(st.tuples(st.sampled_from(keys), times, st.sampled_from(TIMER_IDS)))
            )
        ]
        self.commit(Write(appends=appends, workflows=records, timers_add=timers))

    @rule(data=st.data())
    def concurrent_writes(self, data: st.DataObject) -> None:
        """Writes submitted together (one group-commit batch or a few): each stands alone.

        Several writes may expect the same head of one history: exactly one of them can win,
        and a write that loses on one history writes nothing on its others either.
        """
        plans = data.draw(
            st.lists(
                st.lists(
                    st.tuples(pairs, st.sampled_from((0, 0, 0, 1)), event_specs),
                    min_size=1,
                    max_size=2,
                    unique_by=lambda p: p[0],
                ),
                min_size=2,
                max_size=6,
            ),
            "plans",
        )
        writes = []
        for plan in plans:
            appends = []
            for (tenant, wf), delta, specs in plan:
                expected = self.model.head((tenant, wf)) + delta
                appends.append(
                    Append(wf, make_events(tenant, wf, expected + 1, specs), expected, tenant)
                )
            writes.append(Write(appends=appends))
        outcomes: list[Any] = [None] * len(writes)

        async def submit_all() -> None:
            async def one(i: int) -> None:
                try:
                    outcomes[i] = await self.store.commit(writes[i])
                except SequenceConflict as exc:
                    outcomes[i] = exc

            async with anyio.create_task_group() as tg:
                for i in range(len(writes)):
                    tg.start_soon(one, i)

        self.run(submit_all)
        # The committed writes must apply in some serial order, each onto the heads it expected.
        committed = [
            (w, o) for w, o in zip(writes, outcomes, strict=True) if not isinstance(o, Exception)
        ]
        reached: dict[Key, set[int]] = {key: {self.model.head(key)} for key in PAIRS}
        while committed:
            for i, (write, result) in enumerate(committed):
                if self.model.predict(write) is None:
                    assert result.heads == self.model.apply(write)
                    for append in write.appends:
                        key = (append.tenant, append.workflow_id)
                        reached[key].add(self.model.head(key))
                    del committed[i]
                    break
            else:
                raise AssertionError(f"committed writes fit no serial order: {committed}")
        # A refused write met a head that some serial prefix really produced.
        for outcome in outcomes:
            if isinstance(outcome, SequenceConflict):
                key = (outcome.tenant, outcome.workflow_id)
                assert outcome.actual_seq != outcome.expected_seq
                assert outcome.actual_seq in reached[key], (outcome, reached[key])

    @rule(key=pairs, specs=event_specs)
    def malformed_appends(self, key: Key, specs: list[Spec]) -> None:
        """Malformed writes fail at the caller and write nothing."""
        tenant, wf = key
        head = self.model.head(key)
        events = make_events(tenant, wf, head + 1, specs)
        one = Append(wf, events[:1], head, tenant)
        twice = Write(appends=[one, one])
        with pytest.raises(InvalidArgument):
            self.run(lambda: self.store.commit(twice))
        gap = make_events(tenant, wf, head + 2, specs)
        with pytest.raises(InvalidArgument):
            self.run(lambda: self.store.append(wf, gap, head, tenant=tenant))

    # --- projection rows -----------------------------------------------------------------------

    @rule(
        key=pairs,
        status=statuses,
        workflow_type=st.sampled_from(TYPES),
        created_at=times,
        waiting_on=st.lists(st.sampled_from(("timer:1", "signal:go")), max_size=2).map(tuple),
        attributes=search_attributes,
        specs=st.none() | event_specs,
    )
    def upsert_workflow(
        self,
        key: Key,
        status: Status,
        workflow_type: str,
        created_at: datetime,
        waiting_on: tuple[str, ...],
        attributes: dict[str, Any],
        specs: list[Spec] | None,
    ) -> None:
        """A status change, with or without events in the same write."""
        record = self.record_for(key, status, workflow_type, created_at, waiting_on, attributes)
        appends = []
        if specs is not None:
            head = self.model.head(key)
            appends.append(Append(key[1], make_events(*key, head + 1, specs), head, key[0]))
        self.commit(Write(appends=appends, workflows=[record]))

    @precondition(lambda self: bool(self.model.records))
    @rule(data=st.data(), shift=st.integers(1, 30), specs=event_specs)
    def upsert_changes_created_at(self, data: st.DataObject, shift: int, specs: list[Spec]) -> None:
        """created_at is immutable: the write fails whole, its append included."""
        key = data.draw(st.sampled_from(sorted(self.model.records)), "key")
        old = self.model.records[key]
        moved = msgspec.structs.replace(
            old, created_at=old.created_at + timedelta(microseconds=shift), status=Status.FAILED
        )
        other = data.draw(pairs, "other")
        head = self.model.head(other)
        append = Append(other[1], make_events(*other, head + 1, specs), head, other[0])
        write = Write(appends=[append], workflows=[moved])
        assert self.model.predict(write) is InvalidArgument
        self.commit(write)

    @rule(
        tenant=st.sampled_from(TENANTS),
        status=st.none() | statuses,
        workflow_type=st.none() | st.sampled_from(TYPES),
        started_after=st.none() | times,
        started_before=st.none() | times,
        limit=st.integers(1, 4),
    )
    def list_workflows(
        self,
        tenant: str,
        status: Status | None,
        workflow_type: str | None,
        started_after: datetime | None,
        started_before: datetime | None,
        limit: int,
    ) -> None:
        """Page through a filtered list: the pages concatenate to the model's list."""

        async def all_pages() -> list[list[WorkflowRecord]]:
            pages: list[list[WorkflowRecord]] = []
            cursor = None
            while True:
                page = await self.store.list_workflows(
                    tenant=tenant,
                    status=status,
                    workflow_type=workflow_type,
                    started_after=started_after,
                    started_before=started_before,
                    limit=limit,
                    cursor=cursor,
                )
                pages.append(page.items)
                assert len(pages) <= len(self.model.records) // limit + 2, "paging does not end"
                if page.next_cursor is None:
                    return pages
                # A cursor carries its query: it is refused by another tenant's list.
                other = TENANTS[1 - TENANTS.index(tenant)]
                with pytest.raises(InvalidArgument):
                    await self.store.list_workflows(tenant=other, cursor=page.next_cursor)
                cursor = page.next_cursor

        pages = self.run(all_pages)
        want = self.model.list_workflows(
            tenant, status, workflow_type, started_after, started_before
        )
        assert [r for page in pages for r in page] == want
        assert all(len(page) == limit for page in pages[:-1])
        assert len(pages[-1]) <= limit

    # --- timers --------------------------------------------------------------------------------

    @rule(
        rows=st.lists(
            st.builds(
                TimerRow,
                due=fine_times,
                tenant=st.sampled_from(TENANTS),
                workflow_id=st.sampled_from(WORKFLOW_IDS),
                timer_id=st.sampled_from(TIMER_IDS),
                run_id=st.sampled_from(("run-0", "run-1")),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def add_timers(self, rows: list[TimerRow]) -> None:
        self.commit(Write(timers_add=rows))

    @precondition(lambda self: bool(self.model.timers))
    @rule(data=st.data(), reschedule=st.none() | fine_times)
    def delete_timer(self, data: st.DataObject, reschedule: datetime | None) -> None:
        """Delete (fire or cancel) a timer, optionally adding its successor in the same write."""
        row = data.draw(st.sampled_from(sorted(self.model.timers.values(), key=timer_sort_key)))
        added = [] if reschedule is None else [msgspec.structs.replace(row, due=reschedule)]
        self.commit(Write(timers_delete=[row], timers_add=added))

    @rule(
        due=fine_times, tenant=st.sampled_from(TENANTS), workflow_id=st.sampled_from(WORKFLOW_IDS)
    )
    def delete_missing_timer(self, due: datetime, tenant: str, workflow_id: str) -> None:
        """Deleting a row that is not there is a no-op, not an error."""
        self.commit(Write(timers_delete=[TimerRow(due, tenant, workflow_id, "absent")]))

    @rule(until=fine_times, limit=st.integers(1, 3))
    def due_timers(self, until: datetime, limit: int) -> None:
        """Page through due timers with ``after``: the model's rows due by ``until``, in order."""

        async def all_due() -> list[TimerRow]:
            rows: list[TimerRow] = []
            after = None
            for _ in range(len(self.model.timers) // limit + 2):
                batch = await self.store.due_timers(until, limit=limit, after=after)
                assert len(batch) <= limit
                rows.extend(batch)
                if len(batch) < limit:
                    return rows
                after = batch[-1]
            raise AssertionError("due_timers paging does not end")

        assert self.run(all_due) == self.model.due(until)
        assert self.run(lambda: self.store.next_timer_due(until)) == self.model.next_due(until)

    # --- reads and reopening -----------------------------------------------------------------

    @rule(key=pairs, lo=st.integers(-1, 12), span=st.none() | st.integers(-1, 6))
    def read_range(self, key: Key, lo: int, span: int | None) -> None:
        to_seq = None if span is None else lo + span
        got = self.run(
            lambda: self.store.read_history(key[1], tenant=key[0], from_seq=lo, to_seq=to_seq)
        )
        history = self.model.histories.get(key, [])
        want = [e for e in history if e.seq >= lo and (to_seq is None or e.seq <= to_seq)]
        assert got == want

    @rule()
    def reopen(self) -> None:
        self.store = self.reopen_store()

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        model = self.model

        async def check() -> None:
            store = self.store
            for key in PAIRS:
                tenant, wf = key
                history = model.histories.get(key, [])
                assert await store.head(wf, tenant=tenant) == len(history)
                assert await store.read_history(wf, tenant=tenant) == history
                assert await store.run_chain(wf, tenant=tenant) == model.run_chain(key)
                assert await store.read_current_run(wf, tenant=tenant) == model.current_run(key)
                assert await store.get_workflow(wf, tenant=tenant) == model.records.get(key)
            for tenant in TENANTS:
                queries: list[dict[str, Any]] = [{}]
                queries += [{"status": s} for s in Status]
                queries += [{"workflow_type": t} for t in TYPES]
                for query in queries:
                    page = await store.list_workflows(tenant=tenant, limit=1000, **query)
                    assert page.items == model.list_workflows(tenant, **query), query
                    assert page.next_cursor is None
            assert await store.due_timers(FAR_FUTURE) == model.due(FAR_FUTURE)
            assert await store.tenants() == model.tenants()
            # The recovery sweep's index of non-terminal runs, walked in pages of two.
            active: list[WorkflowRecord] = []
            after = None
            while batch := await store.scan_active(after=after, limit=2):
                active.extend(batch)
                after = (batch[-1].tenant, batch[-1].workflow_id)
            assert active == model.active()

        self.run(check)


class MemoryMachine(StoreMachine):
    def open_store(self) -> EventStore:
        return MemoryStore()

    def reopen_store(self) -> EventStore:
        assert isinstance(self.store, MemoryStore)
        return self.store.reopen()


class LmdbMachine(StoreMachine):
    #: A small map, so that examples also exercise growing it inside a batch (it does, often).
    MAP_SIZE: ClassVar[int] = 64 * 1024
    #: Where the examples' data directories go (the test's tmp_path).
    BASE: ClassVar[Path | None] = None

    def open_store(self) -> EventStore:
        self.path = Path(tempfile.mkdtemp(prefix="model-", dir=self.BASE))
        return LmdbStore(self.path / "data", map_size=self.MAP_SIZE)

    def reopen_store(self) -> EventStore:
        assert isinstance(self.store, LmdbStore)
        self.store.close()
        return LmdbStore(self.path / "data", map_size=self.MAP_SIZE)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)


class PostgresMachine(StoreMachine):
    """PostgresStore on the test's schema (``SCHEMA``), emptied at the start of each example
    (making a schema per example took most of the test's time); reopening closes the store
    and opens it again."""

    SCHEMA: ClassVar[str] = ""

    def open_store(self) -> EventStore:
        from aion.store import PostgresStore
        from aion.store._rows import TABLES

        _postgres.truncate(self.SCHEMA, [t for t in TABLES if t != "meta"])
        store: EventStore = PostgresStore(_postgres.URL, schema=self.SCHEMA)
        return store

    def reopen_store(self) -> EventStore:
        from aion.store import PostgresStore

        self.run(self.store.aclose)
        store: EventStore = PostgresStore(_postgres.URL, schema=self.SCHEMA)
        return store


MACHINES = [
    pytest.param(MemoryMachine, id="memory"),
    pytest.param(LmdbMachine, id="lmdb"),
    pytest.param(PostgresMachine, id="postgres"),
]

QUICK = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
THOROUGH = settings(
    max_examples=400,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@contextmanager
def _in(machine: type[StoreMachine], tmp_path: Path) -> Iterator[type[StoreMachine]]:
    """``machine`` set up for this test: where its data goes."""
    if issubclass(machine, PostgresMachine):
        with _postgres.fresh_schema() as schema:
            yield type(machine.__name__, (machine,), {"SCHEMA": schema})
    elif issubclass(machine, LmdbMachine):
        yield type(machine.__name__, (machine,), {"BASE": tmp_path})
    else:
        yield machine


@pytest.mark.parametrize("machine", MACHINES)
def test_store_matches_model(machine: type[StoreMachine], tmp_path: Path) -> None:
    # On PostgreSQL every step's checks read through round trips (~2 s an example): fewer
    # examples here, the thorough run in the slow suite.
    chosen = settings(QUICK, max_examples=10) if machine is PostgresMachine else QUICK
    with _in(machine, tmp_path) as prepared:
        run_state_machine_as_test(prepared, settings=chosen)


#: On PostgreSQL each example takes seconds (the checks' reads are round trips): fewer
#: examples, as many steps.
POSTGRES_THOROUGH = settings(THOROUGH, max_examples=80)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("machine", MACHINES)
def test_store_matches_model_thoroughly(machine: type[StoreMachine], tmp_path: Path) -> None:
    chosen = POSTGRES_THOROUGH if machine is PostgresMachine else THOROUGH
    with _in(machine, tmp_path) as prepared:
        run_state_machine_as_test(prepared, settings=chosen)


# --- cancellation ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
async def test_a_cancelled_caller_learns_whether_its_write_landed(
    backend: str, tmp_path: Path
) -> None:
    """A commit made by a caller that is being cancelled either returns (and is recorded) or
    raises the cancellation (and wrote nothing): never "cancelled" for a recorded write, or the
    caller's idea of the head goes stale. LmdbStore shields the wait for exactly this reason."""
    store: EventStore = MemoryStore() if backend == "memory" else LmdbStore(tmp_path / "data")
    events = make_events("default", "wf", 1, [("signal", 0, T0)])
    returned = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.append("wf", events, 0)
        returned = True
    try:
        assert await store.head("wf") == (1 if returned else 0)
    finally:
        await store.aclose()
