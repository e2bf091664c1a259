"""ForwardingStore: an EventStore that forwards every call to an inner store.

The base for wrappers that change a few calls and pass the rest through (``aion.testing.faults``
builds its faulty store on it). Every method of :class:`~aion.store.EventStore` is forwarded
through :meth:`ForwardingStore.forward`, one place to check, count or refuse calls; any other
attribute (a backend's extras, e.g. ``LmdbStore.writer_failure`` or ``set_write_hook``) is read
from the inner store as it is.

The protocol's methods are written out below with their types, for mypy. A method added to the
protocol later and not written out here is still forwarded: the loop at the end of this module
adds a forward for every protocol method the class lacks, and mypy asks for the typed one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aion.events import AnyEvent, Event, SearchValue

from ._protocol import EventStore
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

__all__ = ["ForwardingStore"]


class ForwardingStore:
    """An :class:`~aion.store.EventStore` that forwards every call to ``inner``.

    Subclass it and override the calls you change; to act on every call at once, override
    :meth:`forward`.

    Args:
        inner: the store that takes the calls.
    """

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner

    def forward(self, method: str) -> EventStore:
        """The store that takes a call of ``method`` (an :class:`~aion.store.EventStore`
        method): ``inner``. Override it to check, count or refuse every forwarded call."""
        return self.inner

    if not TYPE_CHECKING:  # hidden from mypy, which would take every attribute for present

        def __getattr__(self, name: str) -> Any:
            # Only reached for what this class does not define: a backend's extras.
            if name == "inner":  # not set yet (a copy being made): do not recurse
                raise AttributeError(name)
            return getattr(self.inner, name)

    async def commit(self, write: Write) -> CommitResult:
        return await self.forward("commit").commit(write)

    async def append(
        self,
        workflow_id: str,
        events: Sequence[Event],
        expected_seq: int,
        *,
        tenant: str = "default",
    ) -> int:
        store = self.forward("append")
        return await store.append(workflow_id, events, expected_seq, tenant=tenant)

    async def read_history(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[AnyEvent]:
        store = self.forward("read_history")
        return await store.read_history(
            workflow_id, tenant=tenant, from_seq=from_seq, to_seq=to_seq
        )

    async def read_current_run(
        self, workflow_id: str, *, tenant: str = "default"
    ) -> list[AnyEvent]:
        return await self.forward("read_current_run").read_current_run(workflow_id, tenant=tenant)

    async def head(self, workflow_id: str, *, tenant: str = "default") -> int:
        return await self.forward("head").head(workflow_id, tenant=tenant)

    async def run_chain(self, workflow_id: str, *, tenant: str = "default") -> list[RunInfo]:
        return await self.forward("run_chain").run_chain(workflow_id, tenant=tenant)

    async def read_workflow(
        self, workflow_id: str, *, tenant: str = "default"
    ) -> tuple[WorkflowRecord | None, list[AnyEvent]]:
        return await self.forward("read_workflow").read_workflow(workflow_id, tenant=tenant)

    async def heads(self, workflows: Sequence[tuple[str, str]]) -> list[int]:
        return await self.forward("heads").heads(workflows)

    async def get_workflow(
        self, workflow_id: str, *, tenant: str = "default"
    ) -> WorkflowRecord | None:
        return await self.forward("get_workflow").get_workflow(workflow_id, tenant=tenant)

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
        return await self.forward("list_workflows").list_workflows(
            tenant=tenant,
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

    async def scan_active(
        self, *, after: tuple[str, str] | None = None, limit: int = 1000
    ) -> list[WorkflowRecord]:
        return await self.forward("scan_active").scan_active(after=after, limit=limit)

    async def due_timers(
        self, until: datetime, *, limit: int = 1000, after: TimerRow | None = None
    ) -> list[TimerRow]:
        return await self.forward("due_timers").due_timers(until, limit=limit, after=after)

    async def tenants(self) -> list[str]:
        return await self.forward("tenants").tenants()

    async def next_timer_due(self, after: datetime) -> datetime | None:
        return await self.forward("next_timer_due").next_timer_due(after)

    async def get_waitpoint(
        self, workflow_id: str, waitpoint_id: str, *, tenant: str = "default"
    ) -> WaitpointRow | None:
        store = self.forward("get_waitpoint")
        return await store.get_waitpoint(workflow_id, waitpoint_id, tenant=tenant)

    async def list_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointRow]:
        store = self.forward("list_waitpoints")
        return await store.list_waitpoints(workflow_id, tenant=tenant, limit=limit, cursor=cursor)

    async def pending_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointRow]:
        store = self.forward("pending_waitpoints")
        return await store.pending_waitpoints(
            workflow_id, tenant=tenant, limit=limit, cursor=cursor
        )

    async def get_approval(
        self, workflow_id: str, approval_id: str, *, tenant: str = "default"
    ) -> ApprovalRow | None:
        store = self.forward("get_approval")
        return await store.get_approval(workflow_id, approval_id, tenant=tenant)

    async def list_approvals(
        self,
        workflow_id: str,
        *,
        tenant: str = "default",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[ApprovalRow]:
        store = self.forward("list_approvals")
        return await store.list_approvals(workflow_id, tenant=tenant, limit=limit, cursor=cursor)

    async def pending_approvals(
        self, *, tenant: str = "default", limit: int = 100, cursor: str | None = None
    ) -> Page[ApprovalRow]:
        store = self.forward("pending_approvals")
        return await store.pending_approvals(tenant=tenant, limit=limit, cursor=cursor)

    async def scan_index(
        self,
        index: str,
        *,
        tenant: str = "default",
        prefix: str = "",
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[IndexRow]:
        store = self.forward("scan_index")
        return await store.scan_index(
            index, tenant=tenant, prefix=prefix, limit=limit, cursor=cursor
        )

    async def put_inbox(self, command: InboxCommand) -> str:
        return await self.forward("put_inbox").put_inbox(command)

    async def read_inbox(self, *, limit: int = 100, after: str | None = None) -> list[InboxCommand]:
        return await self.forward("read_inbox").read_inbox(limit=limit, after=after)

    async def inbox_pending(self, command_ids: Iterable[str]) -> set[str]:
        return await self.forward("inbox_pending").inbox_pending(command_ids)

    async def damaged_rows(self, *, full: bool = False, limit: int = 10_000) -> list[DamagedRow]:
        return await self.forward("damaged_rows").damaged_rows(full=full, limit=limit)

    async def aclose(self) -> None:
        await self.forward("aclose").aclose()


def protocol_methods() -> list[str]:
    """The names of :class:`~aion.store.EventStore`'s methods."""
    return sorted(
        name
        for name, member in vars(EventStore).items()
        if not name.startswith("_") and inspect.isfunction(member)
    )


def _forwarder(name: str, is_async: bool) -> Callable[..., Any]:
    if is_async:

        async def forward_async(self: ForwardingStore, *args: Any, **kwargs: Any) -> Any:
            return await getattr(self.forward(name), name)(*args, **kwargs)

        forward_async.__name__ = forward_async.__qualname__ = name
        return forward_async

    def forward_sync(self: ForwardingStore, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.forward(name), name)(*args, **kwargs)

    forward_sync.__name__ = forward_sync.__qualname__ = name
    return forward_sync


def _implements_the_protocol(store: ForwardingStore) -> EventStore:
    return store  # mypy checks here that every protocol method is written out above


for _name in protocol_methods():
    if _name not in vars(ForwardingStore):
        _method = vars(EventStore)[_name]
        setattr(ForwardingStore, _name, _forwarder(_name, inspect.iscoroutinefunction(_method)))
