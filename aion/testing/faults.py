"""Fault injection for tests: a store that fails, tears, loses acknowledgements or crashes on cue.

:class:`FaultyStore` wraps any :class:`~aion.store.EventStore` and numbers the writes that pass
through it (``commit``, ``append`` and ``put_inbox``, from 1). A :class:`FaultPlan` says what
happens to which write:

- **fail**: the write raises :class:`InjectedFault` before it reaches the store; nothing is
  written, and the caller knows it.
- **lose the acknowledgement**: the write commits, then its caller gets :class:`AckLost`; the
  outcome is unknown to the caller (it was in fact recorded).
- **tear**: the write raises :class:`InjectedFault` *inside* its transaction, after ``k`` of its
  own KV writes (puts and deletes) were applied; the backend must roll all of it back. Needs an
  inner store that lets the wrapper reach between the store logic and the KV:
  :class:`TearableLmdbStore` or :class:`TearableMemoryStore`.
- **crash**: the process "dies" before the write, after it (it is recorded, nobody hears), or
  inside its transaction after ``k`` KV writes. With ``crash="halt"`` (the default) nothing
  more reaches the inner store and every later call raises :class:`SimulatedCrash`, so the data
  left behind is exactly what a process death at that point leaves; ``aclose()`` then frees the
  data directory for a reopen. With ``crash="kill"`` the process sends itself SIGKILL: use it in
  a child process, for a real crash at an exact write boundary (LMDB's own crash safety is then
  what is tested).

Everything is deterministic: the same plan and the same sequence of writes inject the same
faults. :attr:`FaultyStore.injected` lists what was injected, for assertions::

    inner = TearableLmdbStore(tmp_path / "data")
    store = FaultyStore(inner, FaultPlan(fail_writes={3}, lose_ack={5}, raise_after_puts={7: 2}))
    async with aion.Engine(store, workflows=[...], clock=clock) as engine:
        ...
    await store.aclose()  # the engine does not close a store it was given
    assert [i.kind for i in store.injected] == [FaultKind.FAIL, FaultKind.LOSE_ACK, ...]

How tearing reaches inside a transaction (the protected seams relied on):

- both backends: ``KVStore._commit(prepared)`` is where a prepared write enters the backend; the
  wrapper marks the write it wants torn with a context variable that the override reads there.
- :class:`TearableMemoryStore` overrides ``MemoryStore.commit_prepared`` and, for the marked
  write only, puts counting proxies in front of the tables (``_data.tables``) while the real
  ``commit_prepared`` (with its undo log) runs.
- :class:`TearableLmdbStore` puts a proxy in front of the LMDB environment (``_env``) whose write
  transactions count ``put`` and ``delete`` calls, and overrides ``_apply_in_txn(pending)`` (the
  writer's "apply this batch in one transaction") to learn which request of the batch the store
  logic is applying: each request's ``prepared`` is temporarily replaced by a stand-in that,
  whenever the store logic reads a field of it, names that request as the one whose writes
  follow. The real ``_apply_in_txn`` runs unchanged, so its rollback and its replay of a
  poisoned batch are what is tested. Writes the writer makes through a cursor are not fault
  points: the group-commit writer defers event rows and heads to one bulk ``putmulti`` per
  batch, after every request was applied, so on LMDB a write has fewer fault points than on
  the memory store (where every KV write is one).

A store hook, ``KVStore._wrap_kv(kv, prepared)`` called wherever a prepared write meets its KV,
would replace both overrides and make every KV write a fault point on every backend.
"""

from __future__ import annotations

import contextvars
import enum
import os
import signal
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from aion.errors import InvalidArgument, StoreError
from aion.events import AnyEvent, Event
from aion.store import (
    Append,
    ApprovalRow,
    CommitResult,
    DamagedRow,
    EventStore,
    InboxCommand,
    IndexRow,
    LmdbStore,
    MemoryStore,
    Page,
    RunInfo,
    Status,
    TimerRow,
    WaitpointRow,
    WorkflowRecord,
    Write,
)
from aion.store._core import Prepared

__all__ = [
    "AckLost",
    "CrashMode",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultyStore",
    "InjectedFault",
    "Injection",
    "SimulatedCrash",
    "TearableLmdbStore",
    "TearableMemoryStore",
    "WriterHold",
]

CrashMode = Literal["halt", "kill"]


# --- errors -----------------------------------------------------------------------------------


class InjectedFault(StoreError):
    """A fault injected by :class:`FaultyStore`: the write failed and nothing of it was written.

    Raised before the write reached the store (``FaultKind.FAIL``) or from inside its transaction
    (``FaultKind.TEAR``), which the store rolled back. Retrying the write is safe.
    """

    def __init__(self, write: int, kind: FaultKind, after_puts: int | None = None) -> None:
        self.write = write
        self.kind = kind
        self.after_puts = after_puts
        if kind is FaultKind.FAIL:
            what = "failed before it reached the store"
        else:
            what = f"raised inside its transaction after {after_puts} of its KV writes"
        super().__init__(f"injected fault: write #{write} {what}; nothing of it was written")


class AckLost(StoreError):
    """The write's outcome is unknown to its caller: it may or may not have been recorded.

    Injected by :class:`FaultyStore` (``FaultKind.LOSE_ACK``): the write did commit, then the
    acknowledgement was "lost". Re-read the history tail to learn whether it was recorded before
    deciding again; blindly retrying may record it twice.
    """

    def __init__(self, write: int) -> None:
        self.write = write
        super().__init__(
            f"injected fault: the acknowledgement of write #{write} was lost; its outcome is "
            "unknown (it may have been recorded). Re-read the history tail before retrying."
        )


class SimulatedCrash(StoreError):
    """The store "crashed" (a simulated process death): it takes no more calls.

    What was recorded before the crash is on disk; close this store (``aclose``) and open the
    data directory again to continue, as after a real crash.
    """

    def __init__(self, write: int) -> None:
        self.write = write
        super().__init__(
            f"simulated crash at write #{write}: the store takes no more calls; close it and "
            "reopen the data directory"
        )


# --- the plan ---------------------------------------------------------------------------------


class FaultKind(enum.Enum):
    """What happens to a write."""

    FAIL = "fail"  #: raise before the write reaches the store
    LOSE_ACK = "lose_ack"  #: commit, then raise AckLost
    TEAR = "tear"  #: raise inside the transaction after k KV writes (rolled back)
    CRASH_BEFORE = "crash_before"  #: die before the write reaches the store
    CRASH_AFTER = "crash_after"  #: die once the write is recorded, before its caller hears
    CRASH_INSIDE = "crash_inside"  #: die inside the transaction after k KV writes


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault for one write. ``after_puts`` is ``k`` for ``TEAR`` and ``CRASH_INSIDE``."""

    kind: FaultKind
    after_puts: int = 0


#: A scripted plan: ``(write number, the write) -> fault or None``.
Decide = Callable[[int, Write], Fault | None]


@dataclass(frozen=True)
class FaultPlan:
    """Which writes (numbered from 1 through the wrapper) get which fault.

    Attributes:
        fail_writes: writes that fail before reaching the store.
        lose_ack: writes that commit, then raise :class:`AckLost`.
        raise_after_puts: ``{write: k}``: the write raises inside its transaction after ``k`` of
            its KV writes (``k`` at least the write's size means it commits untouched).
        crash_before / crash_after: the write at which the process "dies", before it reaches the
            store or once it is recorded.
        crash_inside: ``(write, k)``: the process "dies" inside that write's transaction after
            ``k`` of its KV writes.
        decide: a callable consulted for every write not named above.
    """

    fail_writes: Collection[int] = frozenset()
    lose_ack: Collection[int] = frozenset()
    raise_after_puts: Mapping[int, int] = field(default_factory=dict)
    crash_before: int | None = None
    crash_after: int | None = None
    crash_inside: tuple[int, int] | None = None
    decide: Decide | None = None

    def __post_init__(self) -> None:
        named: list[int] = [
            *self.fail_writes,
            *self.lose_ack,
            *self.raise_after_puts,
            *(n for n in (self.crash_before, self.crash_after) if n is not None),
            *(() if self.crash_inside is None else (self.crash_inside[0],)),
        ]
        twice = sorted({n for n in named if named.count(n) > 1})
        if twice:
            raise InvalidArgument(f"the fault plan names write(s) {twice} more than once")
        if any(n < 1 for n in named):
            raise InvalidArgument("writes are numbered from 1")
        if any(k < 0 for k in self.raise_after_puts.values()) or (
            self.crash_inside is not None and self.crash_inside[1] < 0
        ):
            raise InvalidArgument("a write is torn after k >= 0 of its KV writes")

    def fault_for(self, write: int, change: Write) -> Fault | None:
        """The fault for write number ``write`` (``change`` is what it writes)."""
        if write in self.fail_writes:
            return Fault(FaultKind.FAIL)
        if write in self.lose_ack:
            return Fault(FaultKind.LOSE_ACK)
        if write in self.raise_after_puts:
            return Fault(FaultKind.TEAR, self.raise_after_puts[write])
        if write == self.crash_before:
            return Fault(FaultKind.CRASH_BEFORE)
        if write == self.crash_after:
            return Fault(FaultKind.CRASH_AFTER)
        if self.crash_inside is not None and write == self.crash_inside[0]:
            return Fault(FaultKind.CRASH_INSIDE, self.crash_inside[1])
        return None if self.decide is None else self.decide(write, change)


@dataclass(frozen=True, slots=True)
class Injection:
    """A fault that was injected (or, for a tear the write was too small for, attempted).

    Attributes:
        write: the write's number.
        kind: the fault.
        workflows: the workflow ids the write appended to (in order).
        fired: False only when a tear or an inside crash found the write had at most
            ``after_puts`` KV writes, so it committed untouched; or when a lost acknowledgement's
            write failed on its own (the caller got that error, not :class:`AckLost`).
        after_puts: ``k`` for tears and inside crashes.
        puts: KV writes the store applied for the write before the fault (all of them when it
            did not fire); for tears and inside crashes.
        batch_size: requests in the LMDB transaction that carried a torn write.
    """

    write: int
    kind: FaultKind
    workflows: tuple[str, ...] = ()
    fired: bool = True
    after_puts: int | None = None
    puts: int | None = None
    batch_size: int | None = None


# --- the wrapper ------------------------------------------------------------------------------


class FaultyStore:
    """An :class:`~aion.store.EventStore` that injects faults into chosen writes of ``inner``.

    Args:
        inner: the store to delegate to. Tears and inside crashes need a
            :class:`TearableLmdbStore` or :class:`TearableMemoryStore`.
        plan: what to inject; may be replaced later (``store.plan = ...``). Default: nothing.
        crash: how a planned crash happens: ``"halt"`` (this object stops; see the module
            docstring) or ``"kill"`` (SIGKILL to this process).
        on_crash: called with the write number when a ``"halt"`` crash happens, e.g. to cancel
            the test's scope: nothing after a process death should run.

    Attributes:
        writes: writes seen so far (the number of the last one).
        appended_to: for each write, in order, the workflow ids it appends to (to find the
            number of the write a test wants to hit).
        injected: every injection, in order.
        crashed: whether a crash happened (``"halt"`` mode).
        refused: calls refused with :class:`SimulatedCrash` since the crash.
    """

    def __init__(
        self,
        inner: EventStore,
        plan: FaultPlan | None = None,
        *,
        crash: CrashMode = "halt",
        on_crash: Callable[[int], object] | None = None,
    ) -> None:
        if crash not in ("halt", "kill"):
            raise InvalidArgument(f"crash must be 'halt' or 'kill', not {crash!r}")
        self.inner = inner
        self.plan = plan or FaultPlan()
        self.crash_mode: CrashMode = crash
        self.on_crash = on_crash
        self.writes = 0
        self.appended_to: list[tuple[str, ...]] = []
        self.injected: list[Injection] = []
        self.crashed = False
        self.refused = 0
        self._crashed_at = 0

    # --- faults -----------------------------------------------------------------------------

    def crash(self) -> None:
        """Crash now (between writes), as the plan's crash does."""
        self._die(self.writes)

    def _die(self, write: int) -> None:
        if self.crash_mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.crashed:
            return
        self.crashed = True
        self._crashed_at = write
        if self.on_crash is not None:
            self.on_crash(write)

    def _alive(self) -> None:
        if self.crashed:
            self.refused += 1
            raise SimulatedCrash(self._crashed_at)

    async def commit(self, write: Write) -> CommitResult:
        self._alive()
        self.writes += 1
        n = self.writes
        workflows = tuple(a.workflow_id for a in write.appends)
        self.appended_to.append(workflows)
        fault = self.plan.fault_for(n, write)
        if fault is None:
            return self._heard(await self.inner.commit(write))
        kind = fault.kind
        if kind is FaultKind.FAIL:
            self.injected.append(Injection(n, kind, workflows))
            raise InjectedFault(n, kind)
        if kind is FaultKind.CRASH_BEFORE:
            self.injected.append(Injection(n, kind, workflows))
            self._die(n)
            raise SimulatedCrash(n)
        if kind in (FaultKind.TEAR, FaultKind.CRASH_INSIDE):
            return await self._tear(n, write, fault, workflows)
        try:
            await self.inner.commit(write)
        except BaseException:
            self.injected.append(Injection(n, kind, workflows, fired=False))
            if kind is FaultKind.CRASH_AFTER:
                self._die(n)
            raise
        self.injected.append(Injection(n, kind, workflows))
        if kind is FaultKind.LOSE_ACK:
            self._alive()
            raise AckLost(n)
        self._die(n)  # CRASH_AFTER: recorded, and nobody hears of it
        raise SimulatedCrash(n)

    async def _tear(
        self, n: int, write: Write, fault: Fault, workflows: tuple[str, ...]
    ) -> CommitResult:
        if not isinstance(self.inner, _Tearable):
            raise InvalidArgument(
                "tearing a write needs an inner store that can be torn: "
                "TearableLmdbStore or TearableMemoryStore"
            )
        crash = fault.kind is FaultKind.CRASH_INSIDE
        target = _Target(n, fault.after_puts, kill=crash and self.crash_mode == "kill")
        token = _ARMED.set(target)
        try:
            result = await self.inner.commit(write)
        except InjectedFault:
            if not target.fired:
                raise
            self.injected.append(
                Injection(
                    n, fault.kind, workflows, True, fault.after_puts, target.applied, target.batch
                )
            )
            if crash:
                self._die(n)
                raise SimulatedCrash(n) from None
            raise
        finally:
            _ARMED.reset(token)
        self.injected.append(
            Injection(
                n, fault.kind, workflows, False, fault.after_puts, target.applied, target.batch
            )
        )
        return self._heard(result)

    def _heard(self, result: CommitResult) -> CommitResult:
        self._alive()  # a write in flight when the process died: nobody hears of it
        return result

    # --- writes through the counted path ------------------------------------------------------

    async def append(
        self,
        workflow_id: str,
        events: Sequence[Event],
        expected_seq: int,
        *,
        tenant: str = "default",
    ) -> int:
        result = await self.commit(
            Write(appends=[Append(workflow_id, events, expected_seq, tenant)])
        )
        return result.heads[0]

    async def put_inbox(self, command: InboxCommand) -> str:
        result = await self.commit(Write(inbox_put=[command]))
        return result.inbox_ids[0]

    async def aclose(self) -> None:
        """Close the inner store, also after a crash (it frees the data directory)."""
        await self.inner.aclose()

    def writer_failure(self) -> BaseException | None:
        """The inner store's writer failure (``LmdbStore``), so an engine can still watch it."""
        failed: Callable[[], BaseException | None] | None = getattr(
            self.inner, "writer_failure", None
        )
        return None if failed is None else failed()

    # --- reads: delegated -----------------------------------------------------------------------

    async def read_history(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[AnyEvent]:
        self._alive()
        return await self.inner.read_history(
            workflow_id, tenant=tenant, from_seq=from_seq, to_seq=to_seq
        )

    async def read_current_run(
        self, workflow_id: str, *, tenant: str = "default"
    ) -> list[AnyEvent]:
        self._alive()
        return await self.inner.read_current_run(workflow_id, tenant=tenant)

    async def head(self, workflow_id: str, *, tenant: str = "default") -> int:
        self._alive()
        return await self.inner.head(workflow_id, tenant=tenant)

    async def run_chain(self, workflow_id: str, *, tenant: str = "default") -> list[RunInfo]:
        self._alive()
        return await self.inner.run_chain(workflow_id, tenant=tenant)

    async def get_workflow(
        self, workflow_id: str, *, tenant: str = "default"
    ) -> WorkflowRecord | None:
        self._alive()
        return await self.inner.get_workflow(workflow_id, tenant=tenant)

    async def list_workflows(
        self,
        *,
        tenant: str = "default",
        status: Status | None = None,
        workflow_type: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowRecord]:
        self._alive()
        return await self.inner.list_workflows(
            tenant=tenant,
            status=status,
            workflow_type=workflow_type,
            started_after=started_after,
            started_before=started_before,
            limit=limit,
            cursor=cursor,
        )

    async def scan_active(
        self, *, after: tuple[str, str] | None = None, limit: int = 1000
    ) -> list[WorkflowRecord]:
        self._alive()
        return await self.inner.scan_active(after=after, limit=limit)

    async def due_timers(
        self, until: datetime, *, limit: int = 1000, after: TimerRow | None = None
    ) -> list[TimerRow]:
        self._alive()
        return await self.inner.due_timers(until, limit=limit, after=after)

    async def tenants(self) -> list[str]:
        self._alive()
        return await self.inner.tenants()

    async def next_timer_due(self, after: datetime) -> datetime | None:
        self._alive()
        return await self.inner.next_timer_due(after)

    async def get_waitpoint(
        self, workflow_id: str, waitpoint_id: str, *, tenant: str = "default"
    ) -> WaitpointRow | None:
        self._alive()
        return await self.inner.get_waitpoint(workflow_id, waitpoint_id, tenant=tenant)

    async def list_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointRow]:
        self._alive()
        return await self.inner.list_waitpoints(
            workflow_id, tenant=tenant, limit=limit, cursor=cursor
        )

    async def pending_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointRow]:
        self._alive()
        return await self.inner.pending_waitpoints(
            workflow_id, tenant=tenant, limit=limit, cursor=cursor
        )

    async def get_approval(
        self, workflow_id: str, approval_id: str, *, tenant: str = "default"
    ) -> ApprovalRow | None:
        self._alive()
        return await self.inner.get_approval(workflow_id, approval_id, tenant=tenant)

    async def list_approvals(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[ApprovalRow]:
        self._alive()
        return await self.inner.list_approvals(
            workflow_id, tenant=tenant, limit=limit, cursor=cursor
        )

    async def pending_approvals(
        self, *, tenant: str = "default", limit: int = 100, cursor: str | None = None
    ) -> Page[ApprovalRow]:
        self._alive()
        return await self.inner.pending_approvals(tenant=tenant, limit=limit, cursor=cursor)

    async def scan_index(
        self,
        index: str,
        *,
        tenant: str = "default",
        prefix: str = "",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[IndexRow]:
        self._alive()
        return await self.inner.scan_index(
            index, tenant=tenant, prefix=prefix, limit=limit, cursor=cursor
        )

    async def read_inbox(self, *, limit: int = 100, after: str | None = None) -> list[InboxCommand]:
        self._alive()
        return await self.inner.read_inbox(limit=limit, after=after)

    async def inbox_pending(self, command_ids: Iterable[str]) -> set[str]:
        self._alive()
        return await self.inner.inbox_pending(command_ids)

    async def damaged_rows(self, *, full: bool = False, limit: int = 10_000) -> list[DamagedRow]:
        self._alive()
        return await self.inner.damaged_rows(full=full, limit=limit)


# --- tearing a write inside its transaction ------------------------------------------------------


class _Target:
    """The write to tear: counts its KV writes and raises (or kills) before write ``k + 1``."""

    __slots__ = ("after_puts", "applied", "batch", "fired", "kill", "write")

    def __init__(self, write: int, after_puts: int, *, kill: bool) -> None:
        self.write = write
        self.after_puts = after_puts
        self.kill = kill
        self.applied = 0
        self.fired = False
        self.batch: int | None = None

    def restart(self) -> None:
        """The transaction is applied again from the start (LMDB grew its map)."""
        self.applied = 0

    def tick(self) -> None:
        """Called before each KV write of the target (rollback writes after the fault pass)."""
        if self.fired:
            return
        if self.applied >= self.after_puts:
            self.fired = True
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(self.write, FaultKind.TEAR, self.after_puts)
        self.applied += 1


#: Set by FaultyStore around the commit of the write to tear; read where it enters the backend.
_ARMED: contextvars.ContextVar[_Target | None] = contextvars.ContextVar(
    "aion_faults_armed", default=None
)


class _Tearable:
    """Marks the backends whose writes FaultyStore can tear."""


class _CountingTable:
    """Stands in front of one MemoryStore table while the target write is applied."""

    __slots__ = ("_table", "_target")

    def __init__(self, table: Any, target: _Target) -> None:
        self._table = table
        self._target = target

    def put(self, key: bytes, value: bytes) -> bytes | None:
        self._target.tick()
        old: bytes | None = self._table.put(key, value)
        return old

    def delete(self, key: bytes) -> bytes | None:
        self._target.tick()
        old: bytes | None = self._table.delete(key)
        return old

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


class TearableMemoryStore(MemoryStore, _Tearable):
    """A :class:`~aion.store.MemoryStore` whose writes :class:`FaultyStore` can tear.

    Relies on ``MemoryStore.commit_prepared`` applying a write through the tables in
    ``_data.tables`` (and rolling it back through them too).
    """

    def reopen(self) -> TearableMemoryStore:
        store = TearableMemoryStore.__new__(TearableMemoryStore)
        store._data = self._data
        store._closed = False
        self._closed = True
        return store

    def commit_prepared(self, prepared: Prepared) -> CommitResult:
        target = _ARMED.get()
        if target is None:
            return super().commit_prepared(prepared)
        target.batch = 1
        tables = self._data.tables
        with self._data.lock:
            originals = dict(tables)
            for name, table in originals.items():
                tables[name] = _CountingTable(table, target)  # type: ignore[assignment]
            try:
                return super().commit_prepared(prepared)
            finally:
                tables.update(originals)


class _WriteTxn:
    """An LMDB write transaction that tells the target of the request being applied."""

    __slots__ = ("_txn", "current")

    def __init__(self, txn: Any) -> None:
        self._txn = txn
        self.current: _Target | None = None

    def put(self, key: bytes, value: bytes, *args: Any, **kwargs: Any) -> bool:
        if self.current is not None:
            self.current.tick()
        return bool(self._txn.put(key, value, *args, **kwargs))

    def delete(self, key: bytes, *args: Any, **kwargs: Any) -> bool:
        if self.current is not None:
            self.current.tick()
        return bool(self._txn.delete(key, *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._txn, name)


class _Stand:
    """Stands in for a request's ``Prepared`` while its batch is applied: reading any field of
    it names its request's target (None for requests not to tear) as the one writing next."""

    __slots__ = ("_batch", "_prepared", "_target")

    def __init__(self, prepared: Prepared, target: _Target | None, batch: _Batch) -> None:
        self._prepared = prepared
        self._target = target
        self._batch = batch

    def __getattr__(self, name: str) -> Any:
        txn = self._batch.txn
        if txn is not None:
            txn.current = self._target
        return getattr(self._prepared, name)


class _Batch:
    """The batch being applied that holds a write to tear (on the writer thread)."""

    __slots__ = ("txn",)

    def __init__(self) -> None:
        self.txn: _WriteTxn | None = None


class _Env:
    """Stands in front of the LMDB environment: write transactions of a batch holding a write to
    tear are wrapped; everything else passes through."""

    __slots__ = ("_env", "_store")

    def __init__(self, env: Any, store: TearableLmdbStore) -> None:
        self._env = env
        self._store = store

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        txn = self._env.begin(*args, **kwargs)
        batch = self._store._tearing
        if batch is None or not kwargs.get("write", False):
            return txn
        batch.txn = _WriteTxn(txn)
        return batch.txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


@dataclass(eq=False)
class WriterHold:
    """Holds the LMDB writer at the start of its next transaction (see
    :meth:`TearableLmdbStore.hold_writer`): requests queued meanwhile form one batch next."""

    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


class TearableLmdbStore(LmdbStore, _Tearable):
    """An :class:`~aion.store.LmdbStore` whose writes :class:`FaultyStore` can tear.

    Relies on ``LmdbStore._env`` (its write transactions' ``put``/``delete`` are what the store
    logic writes through) and ``LmdbStore._apply_in_txn(pending)`` (applies a batch of requests,
    each carrying its ``prepared`` write, in one transaction); see the module docstring.

    Attributes:
        batch_sizes: the number of requests of every transaction attempt, in order.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tearing: _Batch | None = None
        self._armed: dict[int, _Target] = {}
        self._hold: WriterHold | None = None
        self.batch_sizes: list[int] = []
        super().__init__(*args, **kwargs)
        self._env = _Env(self._env, self)  # type: ignore[assignment]

    def hold_writer(self) -> WriterHold:
        """Hold the writer at the start of its next transaction until ``release()``.

        ``hold.reached`` is set (from the writer thread) once it waits. Requests queued while it
        waits are applied together in the transaction after it: a batch made on purpose.
        """
        self._hold = WriterHold()
        return self._hold

    async def _commit(self, prepared: Prepared) -> CommitResult:
        target = _ARMED.get()
        if target is None:
            return await super()._commit(prepared)
        self._armed[id(prepared)] = target
        try:
            return await super()._commit(prepared)
        finally:
            del self._armed[id(prepared)]

    def _apply_in_txn(self, pending: list[Any]) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.reached.set()
            hold.released.wait()
        self.batch_sizes.append(len(pending))
        targets = [self._armed.get(id(request.prepared)) for request in pending]
        if not any(targets):
            super()._apply_in_txn(pending)
            return
        # Row by row (no deferred bulk writes of event rows and heads): every KV write of the
        # write to tear is then one put or delete, counted and attributed to its request.
        self._bulk_writes = False
        batch = _Batch()
        originals = [request.prepared for request in pending]
        for request, target in zip(pending, targets, strict=True):
            if target is not None:
                target.restart()
                if target.batch is None:
                    target.batch = len(pending)
            request.prepared = _Stand(request.prepared, target, batch)
        self._tearing = batch
        try:
            super()._apply_in_txn(pending)
        finally:
            self._tearing = None
            for request, prepared in zip(pending, originals, strict=True):
                request.prepared = prepared
