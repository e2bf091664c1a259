"""The inbox: commands other processes leave in the store, handed to their runs until applied.

Another process (the ``aion`` command, an :class:`aion.Client`) cannot reach a running engine's
actors: it puts an :class:`~aion.store.InboxCommand` in the store and rings the engine's
doorbell. The engine's inbox service reads the inbox whenever the doorbell rings (and every
``interval`` seconds in any case) and hands each command to its run as a message; the write
that applies it deletes it. A start is not a message: it begins a run, deleting the command in
the run's first write.

Every command is checked as the engine's own method checks its arguments (ARCHITECTURE.md,
invariant 17: the inbox skips no check the API makes); one that can never apply is removed
with a log line. One whose application failed is handed over again with a backoff per command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio

from aion import _validate
from aion._codec import decode_payload
from aion.errors import AionError, InvalidToken, PartitionLost
from aion.store import EventStore, InboxCommand, Status, Write

from ._messages import Message, Wake, from_inbox
from ._tasks import one_error

__all__ = ["INBOX_MAX_BACKOFF", "Inbox", "check_command", "start_queued"]

log = logging.getLogger("aion.engine")

#: The longest wait before an inbox command that has not applied yet is handed over again.
INBOX_MAX_BACKOFF = 30.0

#: Commands read per store call.
_PAGE = 500

#: Runs whose inbox commands are applied at once (a start waits for its commit).
_RUNS_AT_ONCE = 64


async def start_queued(
    store: EventStore, workflow_id: str, tenant: str, command_id: str = ""
) -> bool:
    """Whether a start of the workflow waits in the inbox (``command_id``: that start's, when
    known; otherwise the inbox is searched)."""
    if command_id:
        return bool(await store.inbox_pending([command_id]))
    after: str | None = None
    while True:
        commands = await store.read_inbox(limit=_PAGE, after=after)
        for c in commands:
            if c.kind == "start" and (c.tenant, c.workflow_id) == (tenant, workflow_id):
                return True
        if len(commands) < _PAGE:
            return False
        after = commands[-1].command_id


def check_command(command: InboxCommand, limit: int) -> None:
    """The checks of the method each inbox command stands for (the ``aion`` command and the
    Client make them before they queue; another version, or another writer, may not have).

    Raises:
        InvalidArgument, PayloadError: what the engine's method would raise.
    """
    _validate.identifier(command.workflow_id)
    _validate.identifier(command.tenant, "tenant")
    if command.kind not in {"approve", "reject"}:
        _validate.identity(command.user)  # who asked (recorded with the command's event)
    match command.kind:
        case "signal":
            name = _validate.name(command.name, "signal name")
            _validate.payload_bytes(command.payload, limit=limit, what=f"signal {name!r}")
        case "complete_waitpoint":
            _validate.payload_bytes(command.payload, limit=limit, what="completion payload")
        case "cancel":
            _validate.optional_text(command.comment, "cancel reason")
        case "approve" | "reject":
            _validate.user(command.user)
            _validate.optional_text(command.comment, "comment")
            if command.target_id:
                _validate.identifier(command.target_id, "approval_id")
            _validate.text(command.digest, "digest", limit=_validate.MAX_NAME_BYTES)
        case "start":
            _validate.identifier(command.name, "workflow type")
            _validate.payload_bytes(command.payload, limit=limit, what="workflow arguments")


class Inbox:
    """The engine's inbox service.

    Args:
        store: the engine's store (while it runs).
        verify: checks a waitpoint token as of a time; returns its claims.
        limit: the engine's ``max_payload_bytes``.
        send: hands a message to a run.
        resident: whether a run has an actor in memory.
        start: begins the run an inbox ``start`` command asks for (deleting the command);
            False when it must wait (the id is being started in this process right now).
    """

    def __init__(
        self,
        *,
        store: Callable[[], EventStore],
        verify: Callable[[str, datetime], Any],
        limit: int,
        send: Callable[[tuple[str, str], Message], None],
        resident: Callable[[tuple[str, str]], bool],
        start: Callable[[InboxCommand], Awaitable[bool]],
        owns: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._store = store
        self._verify = verify
        self._limit = limit
        self._send = send
        self._resident = resident
        self._start = start
        #: Whether this engine drives a run (a shared store: commands of other partitions
        #: are their owners' to apply).
        self._owns = owns
        self._starts: set[tuple[str, str]] = set()
        #: Commands for this engine's runs found at the last read and not handed over (or
        #: dropped) since: a metric.
        self.depth = 0

    async def run(self, interval: float, wait: Callable[[float], Awaitable[object]]) -> None:
        """Hand commands to their runs until each is applied; ``wait(interval)`` returns when
        the doorbell rings or the interval has passed.

        A command stays in the inbox until the write that applies it deletes it. One whose
        application failed (a crash of its run, a full disk) is handed over again, with a
        backoff per command; one for a BLOCKED run waits there until the run runs again (the
        run takes it itself when it is unblocked); one that can never apply is removed with a
        log line.
        """
        tries: dict[str, tuple[int, float]] = {}  # command id -> (hand-overs, next at)
        limiter = anyio.CapacityLimiter(_RUNS_AT_ONCE)
        while True:
            commands = await self.read()
            now = time.monotonic()
            # Runs with a start in this read: a command for one that does not exist yet waits
            # for it (inbox ids are ordered by each machine's clock, which may lag another's).
            self._starts = {(c.tenant, c.workflow_id) for c in commands if c.kind == "start"}
            # Each run's commands in order; runs side by side (a start waits for its commit).
            runs: dict[tuple[str, str], list[InboxCommand]] = {}
            for command in commands:
                key = (command.tenant, command.workflow_id)
                if self._owns is None or self._owns(*key):
                    runs.setdefault(key, []).append(command)
            self.depth = sum(len(run) for run in runs.values())

            if len(runs) == 1:
                await self._take(next(iter(runs.values())), tries, now, interval, limiter)
            elif runs:
                with one_error():
                    async with anyio.create_task_group() as tg:
                        for run in runs.values():
                            tg.start_soon(self._take, run, tries, now, interval, limiter)
            present = {command.command_id for command in commands}
            tries = {i: t for i, t in tries.items() if i in present}
            await wait(interval)

    async def _take(
        self,
        run: list[InboxCommand],
        tries: dict[str, tuple[int, float]],
        now: float,
        interval: float,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        """Hand one run's commands over in order (see :meth:`run`)."""
        async with limiter:
            for command in run:
                count, due = tries.get(command.command_id, (0, 0.0))
                if due <= now:
                    delay = min(max(interval, 0.05) * 2**count, INBOX_MAX_BACKOFF)
                    tries[command.command_id] = (count + 1, now + delay)
                    try:
                        applied = await self.apply(command)
                    except PartitionLost:
                        return  # its partition moved: the new owner applies it
                    if applied:
                        self.depth -= 1
                        continue
                if command.kind == "start":
                    # Not started yet: the run's later commands wait for it (a Client may
                    # signal a run it has just asked to start).
                    return

    async def read(self) -> list[InboxCommand]:
        out: list[InboxCommand] = []
        while True:
            after = out[-1].command_id if out else None
            rows = await self._store().read_inbox(limit=_PAGE, after=after)
            out += rows
            if len(rows) < _PAGE:
                return out

    def message(self, command: InboxCommand) -> Message | str:
        """The message that applies an inbox command, or why it can never apply.

        A waitpoint token is checked as of the time the command was accepted: a completion
        kept while its run was BLOCKED still applies after the token's expiry.
        """
        try:
            check_command(command, self._limit)
        except AionError as exc:  # InvalidArgument, PayloadError
            return f"{exc} (the engine's methods refuse it too)"
        waitpoint_id = ""
        if command.kind == "complete_waitpoint":
            try:
                claims = self._verify(command.token, command.created_at)
            except InvalidToken as exc:
                return str(exc)
            if (claims.tenant, claims.workflow_id) != (command.tenant, command.workflow_id):
                return "the token is for another workflow than the command names"
            waitpoint_id = claims.waitpoint_id
        message = from_inbox(command, waitpoint_id)
        return f"kind {command.kind!r} is not understood" if message is None else message

    async def apply(self, command: InboxCommand) -> bool:
        """Hand a command left by another process to its run; the write that applies it
        deletes it. One that cannot apply is logged and deleted. False when it waits in the
        inbox (a start deferred, a command kept for a BLOCKED run)."""
        store = self._store()
        key = (command.tenant, command.workflow_id)
        message: Message | str = ""
        if command.kind == "start":
            problem = _start_problem(command, self._limit)
            if problem is None:
                return await self._start(command)
        else:
            message = self.message(command)
            problem = message if isinstance(message, str) else None
        record = None
        if problem is None:
            record = await store.get_workflow(command.workflow_id, tenant=command.tenant)
            if record is None:
                if key in self._starts:
                    return False  # its start waits in the inbox too: after it
                problem = "the workflow does not exist"
            elif record.status.is_terminal:
                problem = f"the workflow has finished ({record.status.value})"
        if (
            problem is not None
            and record is not None
            and not await store.inbox_pending([command.command_id])
        ):
            return True  # applied since it was read (the run then finished): not dropped
        if problem is not None:
            log.warning(
                "inbox command %s (%s for %s/%s) dropped: %s",
                command.command_id,
                command.kind,
                *key,
                problem,
            )
            await store.commit(Write(inbox_delete=[command.command_id]))
            return True
        assert not isinstance(message, str) and record is not None
        if isinstance(message, Wake):
            await store.commit(Write(inbox_delete=[command.command_id]))
            self._send(key, Wake())
            return True
        if record.status is Status.BLOCKED and not self._resident(key):
            return False  # kept: the run takes it when it runs again
        self._send(key, message)
        return True


def _start_problem(command: InboxCommand, limit: int) -> str | None:
    """Why a start command can never apply (malformed: no version of the engine queues it)."""
    try:
        check_command(command, limit)
        args = decode_payload(command.payload)
    except Exception as exc:  # the checks' errors, or undecodable arguments
        return f"{exc} (the engine's start refuses it too)"
    if not isinstance(args, list):
        return "its arguments are not a list"
    return None


def start_args(command: InboxCommand) -> list[Any]:
    """The arguments of a start command (checked by :func:`_start_problem`)."""
    args = decode_payload(command.payload)
    assert isinstance(args, list)
    return args
