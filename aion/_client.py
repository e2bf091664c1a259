"""``aion.Client``: start, steer and read workflows from a process that runs no engine.

A client opens the data directory as a client-role store (no lock: it works while an engine
runs in another process), reads everything straight from the store, and leaves what it sends in
the store's inbox: the running engine applies it within milliseconds (a doorbell socket wakes
it), or the next engine to start does. Every request is checked first, with the engine's own
validation and rules (``aion._validate``, ``aion._control``), against what the store can tell:
a request the engine would refuse is refused here with the engine's error, and nothing is
queued. See docs/client.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from aion import _control, _validate
from aion._codec import DEFAULT_MAX_PAYLOAD_BYTES, encode_payload
from aion._doorbell import ring
from aion._engine import (
    HistoryEvent,
    PendingApproval,
    Reader,
    WaitpointInfo,
    WorkflowDescription,
    WorkflowHandle,
)
from aion._engine._datadir import data_dir, read_payload_limit
from aion._engine._inbox import start_queued
from aion._ids import new_workflow_id
from aion._replay import WorkflowDefinition, definition_of
from aion._tokens import KEY_FILE_NAME, KeyRing, TokenClaims, load_or_create, peek_claims
from aion.errors import (
    AionError,
    DataDirectoryError,
    InvalidToken,
    WorkflowNotFound,
)
from aion.store import (
    EventStore,
    InboxCommand,
    LmdbStore,
    Page,
    Status,
    WorkflowRecord,
)
from aion.store._postgres_import import is_postgres_url, postgres_store

__all__ = ["Client"]

#: The largest ``max_payload_bytes`` an engine accepts.
_MAX_LIMIT = 2**30

#: ``result()`` looks at the store this often: first after 1 ms, then 1.5 times longer each
#: time, up to 50 ms (a look is one small read: ~20 us).
_POLL_FIRST = 0.001
_POLL_GROWTH = 1.5
_POLL_MAX = 0.05

#: After the engine took an ``unblock``, how long ``unblock()`` waits for the run to move on
#: before it reports the run as still BLOCKED for the same cause.
_UNBLOCK_SETTLE = 1.0


@dataclass(frozen=True)
class Queued:
    """A command durably queued: its id in the inbox, the workflow's record when it was
    queued (None for a start), and whether a running engine's doorbell was rung."""

    command_id: str
    record: WorkflowRecord | None
    rung: bool


class Client:
    """Start, signal, decide, complete and read workflows while an engine runs elsewhere.

    ``async with aion.Client("./aion-data", tenant="acme") as client:`` opens the data
    directory as a client (``LmdbStore(path, role="client")``: no engine lock, so it works while
    an engine runs in another process, from any number of processes). LMDB allows one handle
    per directory and process: open one client per process and share it among tasks. Given a
    store object instead of a path (``engine.store`` in the engine's own process, a
    ``MemoryStore``), the client uses it and leaves it open. Given a PostgreSQL URL
    (``"postgresql://user@host/db"``), it opens a ``PostgresStore(url, role="client")``; the
    engine takes the inbox at its next poll (``inbox_interval``).

    Methods mirror the :class:`aion.Engine` methods of the same name, with the same checks, the
    same errors and messages, raised before anything is queued wherever the store can tell.
    Reads (``describe``, ``history``, ``list``, ``pending_approvals``, ``pending_waitpoints``)
    read the store. Requests (``start``, ``signal``, ``cancel``, ``approve``, ``reject``,
    ``complete_waitpoint``, ``unblock``) return once the request is durably queued in the
    store's inbox: a running engine applies it promptly (it is woken at once), otherwise the
    next engine to start does. Requests for one workflow are applied in arrival order.

    Args:
        target: the data directory, or a store object (not closed by the client).
        tenant: the tenant of every call that does not pass ``tenant=``.

    Raises:
        InvalidArgument: ``tenant`` is malformed.
    """

    def __init__(
        self, target: str | os.PathLike[str] | EventStore, *, tenant: str = "default"
    ) -> None:
        self.tenant = _validate.identifier(tenant, "tenant")
        self._target = target
        self._store: EventStore | None = None
        self._owns_store = False
        directory = data_dir(target)
        self._directory = None if directory is None else Path(directory)
        self._definitions: dict[str, WorkflowDefinition] = {}
        #: (payload limit, key ring) of a store that keeps them (PostgreSQL), read on open.
        self._kept: tuple[int | None, KeyRing | None] | None = None
        self._reader = Reader(lambda: self.store, self._definitions.get)

    def __repr__(self) -> str:
        return f"Client({self._target!r}, tenant={self.tenant!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def store(self) -> EventStore:
        """The store the client reads and queues in (while it is open)."""
        if self._store is None:
            raise AionError("the client is not open: use it as `async with aion.Client(...)`")
        return self._store

    async def __aenter__(self) -> Client:
        target = self._target
        if is_postgres_url(target):
            store_class = postgres_store()
            store = self._store = await anyio.to_thread.run_sync(
                lambda: store_class(target, role="client")
            )
            self._owns_store = True
            self._kept = await anyio.to_thread.run_sync(_kept_by, store)
        elif isinstance(target, str | os.PathLike):
            self._store = await anyio.to_thread.run_sync(lambda: LmdbStore(target, role="client"))
            self._owns_store = True
        else:
            self._store = target
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        store, self._store = self._store, None
        if store is not None and self._owns_store:
            self._owns_store = False
            with anyio.CancelScope(shield=True):
                await store.aclose()

    # --- starting -----------------------------------------------------------------------------

    async def start(
        self,
        workflow: Any,
        *args: Any,
        workflow_id: str | None = None,
        tenant: str | None = None,
        identity: str | None = None,
    ) -> WorkflowHandle:
        """Start a workflow, or return a handle to the existing one with this ``workflow_id``.

        ``identity`` (who asks, at most 256 bytes) is recorded in the run's history, as by
        :meth:`aion.Engine.start`; likewise for ``signal``, ``cancel`` and ``unblock``.

        ``workflow`` is a workflow function (``@aion.workflow``; its arguments are checked
        against its annotations here) or the name of a registered workflow type (the engine
        that applies the start checks them). Returns once the start is durably queued; the
        handle's ``result()`` waits for the run, whether or not the engine has started it yet.

        A type that the engine does not have is recorded and parked ``BLOCKED`` until an engine
        with that type runs it; arguments that do not fit the workflow are recorded as a
        ``FAILED`` run (``result()`` raises :class:`aion.WorkflowFailed` saying why).

        Raises:
            PayloadError: the arguments cannot be encoded, exceed the payload limit, or do not
                match the workflow's parameter annotations (nothing is queued).
            InvalidArgument: malformed id, tenant or type name (``""`` too: pass None for a
                generated id), wrong number of arguments, or an id taken by a run of another
                workflow type.
        """
        _, handle = await self._start(workflow, args, workflow_id, tenant, identity)
        return handle

    async def _start(
        self,
        workflow: Any,
        args: tuple[Any, ...],
        workflow_id: str | None,
        tenant: str | None,
        identity: str | None = None,
    ) -> tuple[Queued | None, WorkflowHandle]:
        tenant = self._tenant(tenant)
        who = _validate.identity(identity)
        workflow_id = (
            new_workflow_id() if workflow_id is None else _validate.identifier(workflow_id)
        )
        limit = self._payload_limit()
        if isinstance(workflow, str):
            name = _validate.identifier(workflow, "workflow type")
            encoded = encode_payload(list(args), limit=limit, what=f"input of workflow {name!r}")
        else:
            definition = definition_of(workflow)
            name = definition.name
            encoded = definition.encode_input(args, limit=limit)
            self._definitions.setdefault(name, definition)  # results convert to its type
        record = await self.store.get_workflow(workflow_id, tenant=tenant)
        if record is not None:
            _control.check_same_type(record, name)
            return None, self._handle(workflow_id, tenant)
        command = InboxCommand(
            "start", tenant, workflow_id, _now(), name=name, payload=encoded, user=who
        )
        queued = await self._queue(command, None)
        return queued, self._handle(workflow_id, tenant, queued.command_id)

    def handle(self, workflow_id: str, *, tenant: str | None = None) -> WorkflowHandle:
        """A handle to an existing workflow (whether it exists is not checked until used).

        Raises:
            InvalidArgument: the id or tenant is malformed.
        """
        workflow_id, tenant = self._key(workflow_id, tenant)
        return self._handle(workflow_id, tenant)

    def _handle(self, workflow_id: str, tenant: str, command_id: str = "") -> WorkflowHandle:
        async def result(workflow_id: str, tenant: str, timeout: float | None) -> Any:
            return await self._result(workflow_id, tenant, timeout, command_id)

        return WorkflowHandle(workflow_id, tenant, result)

    async def _result(
        self, workflow_id: str, tenant: str, timeout: float | None, command_id: str
    ) -> Any:
        """Wait for the run's outcome by looking at the store, first after 1 ms, backing off
        to 50 ms. While its start waits in the inbox, the run is on its way, not missing."""
        timeout = _validate.optional_seconds(timeout, "result(timeout=...)")
        delay = _POLL_FIRST
        with anyio.fail_after(timeout) if timeout is not None else nullcontext():
            while True:
                record = await self.store.get_workflow(workflow_id, tenant=tenant)
                if record is None and not await self._start_queued(workflow_id, tenant, command_id):
                    # Applied in between? The start's write deletes the command.
                    record = await self.store.get_workflow(workflow_id, tenant=tenant)
                    if record is None:
                        raise WorkflowNotFound(workflow_id, tenant)
                if record is not None and record.status.is_terminal:
                    return await self._reader.outcome(record)
                await anyio.sleep(delay)
                delay = min(delay * _POLL_GROWTH, _POLL_MAX)

    async def _open_or_starting(self, workflow_id: str, tenant: str) -> WorkflowRecord | None:
        """The record of a workflow that takes signals and cancellations, or None when its
        start is still queued (what is queued after it applies after it, in order).

        Raises:
            WorkflowNotFound: no such workflow, and no start of it queued.
            WorkflowClosed: it has finished.
        """
        record = await self.store.get_workflow(workflow_id, tenant=tenant)
        if record is None and not await self._start_queued(workflow_id, tenant, ""):
            record = await self._reader.record(workflow_id, tenant)  # started meanwhile?
        if record is not None:
            _control.check_open(record)
        return record

    async def _start_queued(self, workflow_id: str, tenant: str, command_id: str) -> bool:
        return await start_queued(self.store, workflow_id, tenant, command_id)

    # --- steering -----------------------------------------------------------------------------

    async def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        tenant: str | None = None,
        identity: str | None = None,
    ) -> None:
        """Send signal ``name`` with ``payload``; returns once it is durably queued (applied in
        arrival order; a BLOCKED run takes it once it runs again; a workflow whose start is
        still queued gets it right after its start).

        Raises:
            WorkflowNotFound: no such workflow in this tenant (and no start of it queued).
            WorkflowClosed: the workflow has finished.
            PayloadError: the payload cannot be encoded or is too large.
            InvalidArgument: the id, tenant or name is malformed (names: non-empty text of at
                most 256 UTF-8 bytes).
        """
        await self._signal(workflow_id, name, payload, tenant=tenant, identity=identity)

    async def _signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any,
        *,
        tenant: str | None,
        identity: str | None = None,
    ) -> Queued:
        workflow_id, tenant = self._key(workflow_id, tenant)
        name = _validate.name(name, "signal name")
        who = _validate.identity(identity)
        encoded = self._encode(payload, f"signal {name!r}")
        record = await self._open_or_starting(workflow_id, tenant)
        command = InboxCommand(
            "signal", tenant, workflow_id, _now(), name=name, payload=encoded, user=who
        )
        return await self._queue(command, record)

    async def cancel(
        self,
        workflow_id: str,
        *,
        reason: str | None = None,
        tenant: str | None = None,
        identity: str | None = None,
    ) -> None:
        """Ask the workflow to cancel: its current await raises ``aion.Cancelled``. Returns
        once the request is durably queued (also for a workflow whose start is still queued).

        Raises:
            WorkflowNotFound: no such workflow in this tenant (and no start of it queued).
            WorkflowClosed: the workflow has finished.
            InvalidArgument: the id or tenant is malformed, or ``reason`` is not text (of at
                most 64 KiB).
        """
        await self._cancel(workflow_id, reason=reason, tenant=tenant, identity=identity)

    async def _cancel(
        self,
        workflow_id: str,
        *,
        reason: str | None,
        tenant: str | None,
        identity: str | None = None,
    ) -> Queued:
        workflow_id, tenant = self._key(workflow_id, tenant)
        reason = _validate.optional_text(reason, "cancel reason")
        who = _validate.identity(identity)
        record = await self._open_or_starting(workflow_id, tenant)
        command = InboxCommand("cancel", tenant, workflow_id, _now(), comment=reason, user=who)
        return await self._queue(command, record)

    async def unblock(
        self,
        workflow_id: str,
        *,
        tenant: str | None = None,
        timeout: float | None = 10.0,
        identity: str | None = None,
    ) -> WorkflowDescription:
        """Retry a ``BLOCKED`` run now: replay it and go on (after the cause was fixed).

        Queues the retry, then waits for the running engine to make it, and returns the run's
        description afterwards: ``RUNNING`` (or finished) if it went on, ``BLOCKED`` with the
        new reason if another cause stopped it. It returns the description as it stands
        (``BLOCKED``) without waiting longer when no engine is listening (the next engine to
        start retries the run), when the engine took the retry and the run is still blocked for
        the same cause a second later, or after ``timeout`` seconds.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: the run is not blocked (or the id or ``timeout`` is malformed).
        """
        _, _, description = await self._unblock(
            workflow_id, tenant=tenant, timeout=timeout, identity=identity
        )
        return description

    async def _unblock(
        self,
        workflow_id: str,
        *,
        tenant: str | None,
        timeout: float | None,
        identity: str | None = None,
    ) -> tuple[Queued, bool, WorkflowDescription]:
        """The retry queued, whether an engine took it, and the run's description after."""
        workflow_id, tenant = self._key(workflow_id, tenant)
        timeout = _validate.optional_seconds(timeout, "unblock(timeout=...)")
        who = _validate.identity(identity)
        record = await self._reader.record(workflow_id, tenant)
        _control.check_blocked(record)
        head = await self.store.head(workflow_id, tenant=tenant)
        command = InboxCommand("unblock", tenant, workflow_id, _now(), user=who)
        queued = await self._queue(command, record)
        taken = False
        if queued.rung:
            with anyio.move_on_after(timeout) if timeout is not None else nullcontext():
                taken = await self._wait_taken(queued.command_id)
                with anyio.move_on_after(_UNBLOCK_SETTLE):
                    await self._wait_moved_on(workflow_id, tenant, record, head)
        return queued, taken, await self._reader.describe(workflow_id, tenant=tenant)

    async def _wait_taken(self, command_id: str) -> bool:
        delay = _POLL_FIRST
        while await self.store.inbox_pending([command_id]):
            await anyio.sleep(delay)
            delay = min(delay * _POLL_GROWTH, _POLL_MAX)
        return True

    async def _wait_moved_on(
        self, workflow_id: str, tenant: str, before: WorkflowRecord, head: int
    ) -> None:
        delay = _POLL_FIRST
        while True:
            record = await self.store.get_workflow(workflow_id, tenant=tenant)
            if record is None or record.status is not Status.BLOCKED:
                return
            if record.reason != before.reason:
                return
            if await self.store.head(workflow_id, tenant=tenant) != head:
                return
            await anyio.sleep(delay)
            delay = min(delay * _POLL_GROWTH, _POLL_MAX)

    # --- people and outside systems -----------------------------------------------------------

    async def approve(
        self,
        workflow_id: str,
        *,
        user: str,
        comment: str | None = None,
        approval_id: str | None = None,
        digest: str | None = None,
        tenant: str | None = None,
    ) -> None:
        """Approve the run's pending approval; returns once the decision is durably queued.

        The approval is chosen here, from the store (the only pending one, or ``approval_id``),
        and the decision names it: it applies to exactly that approval, or not at all (the
        engine drops a decision that lost a race with another one, with a WARNING in its log).

        Args:
            approval_id: which approval (needed when several are pending).
            digest: if given, the decision applies only if the pending approval is for exactly
                this (``PendingApproval.digest``): what you approve is what you saw.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            WorkflowClosed: the workflow has finished.
            WorkflowBlocked: the run is parked BLOCKED: decide once it runs again.
            NoPendingApproval: nothing (or not that approval, or not with that digest) is
                pending.
            AmbiguousApproval: several approvals are pending and no ``approval_id`` was given.
        """
        await self._decide("approve", workflow_id, user, comment, approval_id, digest, tenant)

    async def reject(
        self,
        workflow_id: str,
        *,
        user: str,
        comment: str | None = None,
        approval_id: str | None = None,
        digest: str | None = None,
        tenant: str | None = None,
    ) -> None:
        """Reject the run's pending approval: the workflow's ``await`` raises
        ``aion.ApprovalRejected`` naming ``user`` and ``comment``. Same errors as
        :meth:`approve`."""
        await self._decide("reject", workflow_id, user, comment, approval_id, digest, tenant)

    async def _decide(
        self,
        kind: str,
        workflow_id: str,
        user: str,
        comment: str | None,
        approval_id: str | None,
        digest: str | None,
        tenant: str | None,
        *,
        pick: str = _control.PICK_APPROVAL,
    ) -> Queued:
        workflow_id, tenant = self._key(workflow_id, tenant)
        user = _validate.user(user)
        comment = _validate.optional_text(comment, "comment")
        approval_id = _validate.optional_identifier(approval_id, "approval_id")
        digest = _validate.optional_text(digest, "digest", limit=_validate.MAX_NAME_BYTES)
        record = await self._reader.record(workflow_id, tenant)
        _control.check_decidable(record)
        pending = await _control.pending_approvals(self.store, workflow_id, tenant)
        # The timeout is left to the engine, whose clock decides it.
        chosen = _control.choose_approval(
            workflow_id, pending, approval_id, digest, None, pick=pick
        )
        command = InboxCommand(
            kind,
            tenant,
            workflow_id,
            _now(),
            user=user,
            comment=comment,
            target_id=chosen.approval_id,
            digest=digest or "",
        )
        return await self._queue(command, record)

    async def complete_waitpoint(self, token: str, payload: Any = None) -> None:
        """Complete the waitpoint ``token`` names with ``payload``; returns once the completion
        is durably queued.

        The token is verified here with the data directory's key file (``waitpoint-keys.json``)
        when there is one; the engine verifies it again when it applies the completion.

        Raises:
            InvalidToken: the token is forged, malformed, truncated, re-signed, signed with an
                unknown or retired key, expired, or names no waitpoint of this store.
            WaitpointClosed: the waitpoint was completed already (tokens are one-shot), or its
                run has finished.
            PayloadError: the payload cannot be encoded or is too large.
        """
        await self._complete_waitpoint(token, payload)

    async def _complete_waitpoint(self, token: str, payload: Any) -> Queued:
        claims = self._claims(token)
        store = self.store
        row = await store.get_waitpoint(
            claims.workflow_id, claims.waitpoint_id, tenant=claims.tenant
        )
        row = _control.check_waitpoint_row(row, claims)
        encoded = self._encode(payload, f"completion of waitpoint {row.name!r}")
        record = await self._reader.record(claims.workflow_id, claims.tenant)
        _control.check_completable(record)
        command = InboxCommand(
            "complete_waitpoint",
            claims.tenant,
            claims.workflow_id,
            _now(),
            payload=encoded,
            token=token,
        )
        return await self._queue(command, record)

    def _claims(self, token: object) -> TokenClaims:
        if not isinstance(token, str):
            raise InvalidToken(f"a waitpoint token is text, not {type(token).__name__}")
        if self._kept is not None and self._kept[1] is not None:  # the store's ring
            return self._kept[1].verify(token, now=_now())
        directory = self._directory
        if directory is not None and (directory / KEY_FILE_NAME).exists():
            now = _now()
            return load_or_create(directory, now=now, require_existing=True).verify(token, now=now)
        # No key file here (a store without a directory): the engine verifies the signature.
        claims = peek_claims(token)
        if claims is None:
            raise InvalidToken("the token is malformed (it names no waitpoint); nothing was queued")
        return claims

    # --- reading ------------------------------------------------------------------------------

    async def describe(self, workflow_id: str, *, tenant: str | None = None) -> WorkflowDescription:
        """Status, times, result or error, history length and what the run waits on.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
        """
        workflow_id, tenant = self._key(workflow_id, tenant)
        return await self._reader.describe(workflow_id, tenant=tenant)

    async def history(
        self,
        workflow_id: str,
        *,
        after_seq: int = 0,
        tenant: str | None = None,
        limit: int | None = None,
    ) -> list[HistoryEvent]:
        """The recorded events after ``after_seq``, in order (at most ``limit``: a page; pass
        the last one's ``seq`` as ``after_seq`` for the next).

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: the id or tenant is malformed, ``after_seq`` is not an int >= 0,
                or ``limit`` is not 1 to 10,000.
        """
        workflow_id, tenant = self._key(workflow_id, tenant)
        after_seq = _validate.after_seq(after_seq)
        if limit is not None:
            limit = _validate.page_limit(limit)
        return await self._reader.history(
            workflow_id, after_seq=after_seq, tenant=tenant, limit=limit
        )

    async def list(
        self,
        *,
        status: Status | None = None,
        workflow_type: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        parent_workflow_id: str | None = None,
        search: Mapping[str, Any] | None = None,
        id_prefix: str | None = None,
        tenant: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowDescription]:
        """Workflows of ``tenant``, newest first, keyset-paginated (pass ``next_cursor`` back).

        Raises:
            InvalidArgument: a filter, ``limit`` (1 to 10,000) or ``cursor`` is malformed, or
                the cursor was made for another query.
        """
        return await self._reader.list(
            status=status,
            workflow_type=workflow_type,
            started_after=started_after,
            started_before=started_before,
            parent_workflow_id=parent_workflow_id,
            search=search,
            id_prefix=id_prefix,
            tenant=self._tenant(tenant),
            limit=limit,
            cursor=cursor,
        )

    async def pending_approvals(
        self,
        *,
        tenant: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        workflow_id: str | None = None,
    ) -> Page[PendingApproval]:
        """Approvals waiting for a person across the tenant's runs, oldest first (keyset
        pagination: pass ``next_cursor`` back); with ``workflow_id``, that run's, all on one
        page.

        Raises:
            WorkflowNotFound: ``workflow_id`` names no workflow of this tenant.
            InvalidArgument: the tenant, ``limit`` (1 to 10,000) or ``cursor`` is malformed, or
                the cursor was made for another query.
        """
        tenant = self._tenant(tenant)
        limit = _validate.page_limit(limit)
        cursor = _validate.cursor(cursor)
        if workflow_id is not None:  # one run's: all of them, on one page
            workflow_id = _validate.identifier(workflow_id)
            return Page(await self._reader.run_approvals(workflow_id, tenant), None)
        return await self._reader.pending_approvals(tenant=tenant, limit=limit, cursor=cursor)

    async def pending_waitpoints(
        self,
        workflow_id: str,
        *,
        tenant: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WaitpointInfo]:
        """The workflow's pending waitpoints by id (keyset pagination). Items show a fingerprint
        of the token, never the token.

        Raises:
            WorkflowNotFound: no such workflow in this tenant.
            InvalidArgument: the id, tenant, ``limit`` (1 to 10,000) or ``cursor`` is
                malformed, or the cursor was made for another query.
        """
        workflow_id, tenant = self._key(workflow_id, tenant)
        limit = _validate.page_limit(limit)
        cursor = _validate.cursor(cursor)
        return await self._reader.pending_waitpoints(
            workflow_id, tenant=tenant, limit=limit, cursor=cursor
        )

    # --- helpers ------------------------------------------------------------------------------

    def _tenant(self, tenant: object) -> str:
        return self.tenant if tenant is None else _validate.identifier(tenant, "tenant")

    def _key(self, workflow_id: object, tenant: object) -> tuple[str, str]:
        return _validate.identifier(workflow_id), self._tenant(tenant)

    async def _queue(self, command: InboxCommand, record: WorkflowRecord | None) -> Queued:
        """Leave ``command`` in the inbox (durably), then wake the engine."""
        command_id = await self.store.put_inbox(command)
        rung = ring(self._directory, self.store)
        return Queued(command_id, record, rung)

    def _payload_limit(self) -> int:
        """The ``max_payload_bytes`` of the engine that last started on the data directory (it
        records it there), else the default."""
        if self._kept is not None:  # read from the store when the client opened
            limit = self._kept[0]
        else:
            limit = None if self._directory is None else read_payload_limit(self._directory)
        if limit is None or not 1 <= limit <= _MAX_LIMIT:
            return DEFAULT_MAX_PAYLOAD_BYTES  # no engine has run here yet, or unreadable
        return limit

    def _encode(self, value: Any, what: str) -> bytes:
        return encode_payload(value, limit=self._payload_limit(), what=what)


def _now() -> datetime:
    return datetime.now(UTC)


def _kept_by(store: Any) -> tuple[int | None, KeyRing | None]:
    """The payload limit and waitpoint key ring a store keeps (None where no engine has
    recorded one yet: then the engine checks)."""
    try:
        ring: KeyRing | None = store.load_or_create_key_ring(now=_now(), require_existing=True)
    except DataDirectoryError:
        ring = None
    limit: int | None = store.payload_limit()
    return limit, ring
