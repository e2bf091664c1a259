"""The EventStore protocol, and the base class that implements it over a KV transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from aion.events import AnyEvent, Event, SearchValue

from . import _keys, _prepare, _queries
from ._cursors import CursorKey
from ._prepare import Prepared
from ._records import (
    ApprovalRow,
    CommitResult,
    DamagedRow,
    InboxCommand,
    IndexRow,
    Page,
    RunInfo,
    Status,
    TimerRow,
    WaitpointRow,
    WorkflowRecord,
    Write,
)
from ._rows import KV, approval_key, get_row, head_of, waitpoint_key

__all__ = ["EventStore", "KVStore"]

R = TypeVar("R")


@runtime_checkable
class EventStore(Protocol):
    """Durable storage for workflow histories and the rows kept beside them.

    Every method is tenant-scoped (``tenant="default"`` unless given); a workflow of another
    tenant does not exist for the call. Writes are atomic: :meth:`commit` makes all of a
    :class:`Write` visible or none of it, even across a crash.

    Optional: a backend may also take a :class:`~aion.store.WriteHook` through
    ``set_write_hook`` (:class:`~aion.store.SupportsWriteHook`), called at every boundary of
    its writes, for fault-injection tests. LmdbStore and MemoryStore do.
    """

    async def commit(self, write: Write) -> CommitResult:
        """Apply ``write`` atomically.

        Raises:
            SequenceConflict: an append's ``expected_seq`` is not the stored head (nothing
                written).
            InvalidArgument: the write is malformed (nothing written).
            StoreFull: the store could not grow (nothing written).
        """
        ...

    async def append(
        self, workflow_id: str, events: Sequence[Event], expected_seq: int, *, tenant: str = ...
    ) -> int:
        """Append events to one history; returns the new head. See :meth:`commit`."""
        ...

    async def read_history(
        self, workflow_id: str, *, tenant: str = ..., from_seq: int = 1, to_seq: int | None = None
    ) -> list[AnyEvent]:
        """Events ``from_seq``..``to_seq`` (inclusive) of the whole history, across runs."""
        ...

    async def read_current_run(self, workflow_id: str, *, tenant: str = ...) -> list[AnyEvent]:
        """The current run's segment: from its ``WorkflowStarted`` to the head."""
        ...

    async def head(self, workflow_id: str, *, tenant: str = ...) -> int:
        """The last seq of the history (0 if the workflow does not exist)."""
        ...

    async def run_chain(self, workflow_id: str, *, tenant: str = ...) -> list[RunInfo]:
        """Every run of the workflow id, oldest first (continue-as-new adds one)."""
        ...

    async def read_workflow(
        self, workflow_id: str, *, tenant: str = ...
    ) -> tuple[WorkflowRecord | None, list[AnyEvent]]:
        """The projection row and the current run's events, read from one snapshot (one
        read where a backend's reads cost a round trip): ``(None, [])`` if the workflow does
        not exist in ``tenant``."""
        ...

    async def heads(self, workflows: Sequence[tuple[str, str]]) -> list[int]:
        """The history heads of ``(tenant, workflow id)`` pairs, in order, from one snapshot
        (0 for a workflow that does not exist)."""
        ...

    async def get_workflow(self, workflow_id: str, *, tenant: str = ...) -> WorkflowRecord | None:
        """The projection row, or ``None`` if the workflow does not exist in ``tenant``."""
        ...

    async def list_workflows(
        self,
        *,
        tenant: str = ...,
        status: Status | None = None,
        workflow_type: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        parent_workflow_id: str | None = None,
        search: Mapping[str, SearchValue] | None = None,
        id_prefix: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowRecord]:
        """Workflows newest first (by first start), keyset-paginated with an opaque cursor.

        ``started_after`` is inclusive, ``started_before`` exclusive. ``parent_workflow_id``:
        only children of that workflow; ``search``: only runs whose search attributes hold
        each of these values (same type and value); ``id_prefix``: only ids that start so.
        """
        ...

    async def scan_active(
        self, *, after: tuple[str, str] | None = None, limit: int = 1000
    ) -> list[WorkflowRecord]:
        """Non-terminal workflows of all tenants, ordered by (tenant, workflow id), after
        ``after``: what the startup recovery sweep walks."""
        ...

    async def due_timers(
        self, until: datetime, *, limit: int = 1000, after: TimerRow | None = None
    ) -> list[TimerRow]:
        """Timers due at or before ``until`` (all tenants), in due order, after ``after``."""
        ...

    async def tenants(self) -> list[str]:
        """Every tenant that has at least one workflow, sorted."""
        ...

    async def next_timer_due(self, after: datetime) -> datetime | None:
        """Due time of the earliest timer due strictly after ``after`` (all tenants)."""
        ...

    async def get_waitpoint(
        self, workflow_id: str, waitpoint_id: str, *, tenant: str = ...
    ) -> WaitpointRow | None: ...

    async def list_waitpoints(
        self, workflow_id: str, *, tenant: str = ..., limit: int = 100, cursor: str | None = None
    ) -> Page[WaitpointRow]: ...

    async def pending_waitpoints(
        self, workflow_id: str, *, tenant: str = ..., limit: int = 100, cursor: str | None = None
    ) -> Page[WaitpointRow]:
        """The workflow's pending waitpoints in creation order (``-w2`` before ``-w10``);
        ``next_cursor`` only when more pending ones follow."""
        ...

    async def get_approval(
        self, workflow_id: str, approval_id: str, *, tenant: str = ...
    ) -> ApprovalRow | None: ...

    async def list_approvals(
        self, workflow_id: str, *, tenant: str = ..., limit: int = 100, cursor: str | None = None
    ) -> Page[ApprovalRow]: ...

    async def pending_approvals(
        self, *, tenant: str = ..., limit: int = 100, cursor: str | None = None
    ) -> Page[ApprovalRow]:
        """Pending approvals of a tenant across all runs, oldest request first."""
        ...

    async def scan_index(
        self,
        index: str,
        *,
        tenant: str = ...,
        prefix: str = "",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[IndexRow]:
        """Rows of a generic secondary index, ascending by key."""
        ...

    async def put_inbox(self, command: InboxCommand) -> str:
        """Leave a command for the engine; returns its id. Allowed for client-role stores."""
        ...

    async def read_inbox(self, *, limit: int = 100, after: str | None = None) -> list[InboxCommand]:
        """Commands waiting in the inbox, oldest first (after the command id ``after``)."""
        ...

    async def inbox_pending(self, command_ids: Iterable[str]) -> set[str]:
        """Which of ``command_ids`` are still waiting in the inbox."""
        ...

    async def damaged_rows(self, *, full: bool = False, limit: int = 10_000) -> list[DamagedRow]:
        """Rows that cannot be decoded (``full``: in every table of rows; otherwise in what an
        engine reads when it starts). Scans skip them; ``Write(quarantine=...)`` moves them
        aside."""
        ...

    async def aclose(self) -> None:
        """Finish pending writes and close. Idempotent."""
        ...


class KVStore:
    """Implements every read of :class:`EventStore` over ``_read`` and writes over ``_commit``.

    Subclasses supply a read transaction (``_read``, or ``_aread`` for reads that wait) and an
    atomic commit of prepared writes.
    """

    def _read(self, fn: Callable[[KV], R]) -> R:
        raise NotImplementedError

    async def _aread(self, fn: Callable[[KV], R]) -> R:
        """``fn`` over a read transaction. Inline by default (LMDB and memory reads do not
        wait on anything); a backend whose reads wait on a server runs them elsewhere."""
        return self._read(fn)

    async def _commit(self, prepared: Prepared) -> CommitResult:
        raise NotImplementedError

    def _new_inbox_id(self) -> str:
        raise NotImplementedError

    def _cursor_key(self) -> CursorKey:
        """The key that signs and verifies this store's cursors (see ``_cursors``)."""
        raise NotImplementedError

    async def commit(self, write: Write) -> CommitResult:
        return await self._commit(_prepare.prepare(write, self._new_inbox_id))

    async def append(
        self,
        workflow_id: str,
        events: Sequence[Event],
        expected_seq: int,
        *,
        tenant: str = "default",
    ) -> int:
        # What commit(Write(appends=[Append(...)])) does, without building the Write.
        prepared = _prepare.prepare_append(tenant, workflow_id, events, expected_seq)
        del events  # encoded now: do not hold the caller's events while the write is in flight
        result = await self._commit(prepared)
        return result.heads[0]

    async def read_history(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[AnyEvent]:
        return await self._aread(
            lambda kv: _queries.read_history(kv, tenant, workflow_id, from_seq, to_seq)
        )

    async def read_current_run(
        self, workflow_id: str, *, tenant: str = "default"
    ) -> list[AnyEvent]:
        return await self._aread(lambda kv: _queries.read_current_run(kv, tenant, workflow_id))

    async def head(self, workflow_id: str, *, tenant: str = "default") -> int:
        key = _keys.workflow_key(tenant, workflow_id)
        return await self._aread(lambda kv: head_of(kv, key))

    async def run_chain(self, workflow_id: str, *, tenant: str = "default") -> list[RunInfo]:
        return await self._aread(lambda kv: _queries.run_chain(kv, tenant, workflow_id))

    async def get_workflow(
        self, workflow_id: str, *, tenant: str = "default"
    ) -> WorkflowRecord | None:
        return await self._aread(lambda kv: _queries.get_workflow(kv, tenant, workflow_id))

    async def read_workflow(
        self, workflow_id: str, *, tenant: str = "default"
    ) -> tuple[WorkflowRecord | None, list[AnyEvent]]:
        return await self._aread(lambda kv: _queries.workflow_and_run(kv, tenant, workflow_id))

    async def heads(self, workflows: Sequence[tuple[str, str]]) -> list[int]:
        pairs = list(workflows)
        return await self._aread(lambda kv: _queries.heads(kv, pairs))

    async def list_workflows(
        self,
        *,
        tenant: str = "default",
        status: Status | None = None,
        workflow_type: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        parent_workflow_id: str | None = None,
        search: Mapping[str, SearchValue] | None = None,
        id_prefix: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowRecord]:
        return await self._aread(
            lambda kv: _queries.list_workflows(
                kv,
                tenant,
                cursors=self._cursor_key(),
                status=status,
                workflow_type=workflow_type,
                started_after=started_after,
                started_before=started_before,
                parent_workflow_id=parent_workflow_id,
                search=search,
                id_prefix=id_prefix,
                limit=limit,
                cursor=cursor,
            )
        )

    async def scan_active(
        self, *, after: tuple[str, str] | None = None, limit: int = 1000
    ) -> list[WorkflowRecord]:
        return await self._aread(lambda kv: _queries.scan_active(kv, after, limit))

    async def due_timers(
        self, until: datetime, *, limit: int = 1000, after: TimerRow | None = None
    ) -> list[TimerRow]:
        return await self._aread(lambda kv: _queries.due_timers(kv, until, limit, after))

    async def tenants(self) -> list[str]:
        return await self._aread(_queries.tenants)

    async def next_timer_due(self, after: datetime) -> datetime | None:
        return await self._aread(lambda kv: _queries.next_timer_due(kv, after))

    async def get_waitpoint(
        self, workflow_id: str, waitpoint_id: str, *, tenant: str = "default"
    ) -> WaitpointRow | None:
        key = waitpoint_key(tenant, workflow_id, waitpoint_id)
        return await self._aread(lambda kv: get_row(kv, "waitpoints", key, WaitpointRow))

    async def list_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointRow]:
        cursors = self._cursor_key()
        return await self._aread(
            lambda kv: _queries.list_children(
                kv, "waitpoints", WaitpointRow, tenant, workflow_id, limit, cursor, cursors
            )
        )

    async def pending_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointRow]:
        cursors = self._cursor_key()
        return await self._aread(
            lambda kv: _queries.pending_waitpoints(kv, tenant, workflow_id, limit, cursor, cursors)
        )

    async def get_approval(
        self, workflow_id: str, approval_id: str, *, tenant: str = "default"
    ) -> ApprovalRow | None:
        key = approval_key(tenant, workflow_id, approval_id)
        return await self._aread(lambda kv: get_row(kv, "approvals", key, ApprovalRow))

    async def list_approvals(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[ApprovalRow]:
        cursors = self._cursor_key()
        return await self._aread(
            lambda kv: _queries.list_children(
                kv, "approvals", ApprovalRow, tenant, workflow_id, limit, cursor, cursors
            )
        )

    async def pending_approvals(
        self, *, tenant: str = "default", limit: int = 100, cursor: str | None = None
    ) -> Page[ApprovalRow]:
        cursors = self._cursor_key()
        return await self._aread(
            lambda kv: _queries.pending_approvals(kv, tenant, limit, cursor, cursors)
        )

    async def scan_index(
        self,
        index: str,
        *,
        tenant: str = "default",
        prefix: str = "",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[IndexRow]:
        cursors = self._cursor_key()
        return await self._aread(
            lambda kv: _queries.scan_index(kv, index, tenant, prefix, limit, cursor, cursors)
        )

    async def put_inbox(self, command: InboxCommand) -> str:
        result = await self.commit(Write(inbox_put=[command]))
        return result.inbox_ids[0]

    async def read_inbox(self, *, limit: int = 100, after: str | None = None) -> list[InboxCommand]:
        return await self._aread(lambda kv: _queries.read_inbox(kv, limit, after))

    async def inbox_pending(self, command_ids: Iterable[str]) -> set[str]:
        ids = list(command_ids)
        return await self._aread(lambda kv: _queries.inbox_pending(kv, ids))

    async def damaged_rows(self, *, full: bool = False, limit: int = 10_000) -> list[DamagedRow]:
        return await self._aread(lambda kv: _queries.damaged_rows(kv, full=full, limit=limit))
