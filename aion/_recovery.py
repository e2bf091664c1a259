"""The startup recovery sweep: find what a crash (or an older writer) left half done, repair it.

The engine runs the sweep in ``Engine.__aenter__`` before it accepts new work; ``aion recover``
runs it as a dry run (or with ``--apply``) without starting any workflow. Every repair is
detected by a precise signature in the store and is idempotent: a second sweep finds nothing.

Shapes repaired:

- ``stranded-continue-as-new``: the latest run ended in ``WorkflowContinuedAsNew`` and no
  successor ``WorkflowStarted`` follows. The successor is started from the recorded type and
  input (its first activation happens when the engine wakes it). The last event is read for
  every open run except those whose projection row shows them parked (``RUNNING`` and waiting
  on something): that row is written with the events, and a run that continued as new waits
  on nothing.
- ``child-never-started``: a parent recorded ``ChildStarted`` for a child whose history does not
  exist. The child is started from the recorded type and input.
- ``timer-row-of-closed-run``: a timer row of a run that has finished (or does not exist).
- ``stale-timer-row``: a timer row of an earlier run of the workflow id.
- ``fired-timer-row``: a timer row whose timer the history shows fired or cancelled, or a retry
  row whose retry already started. A timer row whose run's projection row lists the timer as
  pending is live without reading the history.

So for runs parked on timers, signals, approvals or waitpoints the sweep reads no history: it is
one scan of the projection rows of open runs and one of the due-time index.

Runs with work in flight (steps, children) and runs found ``BLOCKED`` are reported for
reactivation; overdue timers are counted (the timer wheel fires them, in due order, at start);
inbox commands waiting are counted (the engine's inbox loop applies them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from aion import events as ev
from aion.errors import AionError, PartitionLost, SequenceConflict
from aion.store import (
    Append,
    DamagedRow,
    EventStore,
    Status,
    TimerRow,
    WorkflowRecord,
    Write,
    begin_run,
)
from aion.store._keys import from_micros, read_be64

__all__ = ["RecoveryError", "RecoveryReport", "Repair", "sweep"]

log = logging.getLogger("aion.recovery")

_PAGE = 1000
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


class RecoveryError(AionError):
    """The recovery sweep found something it could not repair; the engine does not start.

    The message names the workflow and what failed. Fix the cause (often: register the workflow
    type, or free disk space) and start again; nothing recorded was changed by the failed repair.
    """


@dataclass(frozen=True, slots=True)
class Repair:
    """One half-done shape found (and, unless a dry run, repaired)."""

    kind: str
    tenant: str
    workflow_id: str
    detail: str


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What the startup sweep found and did.

    Attributes:
        runs_scanned: non-terminal runs looked at.
        runs_reactivated: runs scheduled for reactivation (work in flight, or blocked).
        runs_blocked: runs found ``BLOCKED`` (they are retried: a fixed deploy resumes them).
        timers_overdue: timers that came due while no engine ran (they fire at start, late).
        inbox_pending: commands left by other processes, not yet applied.
        repairs: each half-done shape found.
        applied: whether repairs were written (False for a dry run).
        seconds: time the sweep took.
    """

    runs_scanned: int = 0
    runs_reactivated: int = 0
    runs_blocked: int = 0
    timers_overdue: int = 0
    inbox_pending: int = 0
    repairs: tuple[Repair, ...] = ()
    applied: bool = True
    seconds: float = 0.0
    reactivate: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def summary(self) -> str:
        """One paragraph for logs and the command line."""
        verb = "repaired" if self.applied else "to repair (dry run)"
        kinds: dict[str, int] = {}
        for repair in self.repairs:
            kinds[repair.kind] = kinds.get(repair.kind, 0) + 1
        how = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "nothing"
        return (
            f"recovery: {self.runs_scanned} open runs scanned, {self.runs_reactivated} "
            f"reactivated, {self.runs_blocked} blocked, {self.timers_overdue} timers overdue, "
            f"{self.inbox_pending} inbox commands pending; {verb}: {how} "
            f"({self.seconds * 1000:.0f} ms)"
        )


async def sweep(
    store: EventStore,
    *,
    now: datetime,
    apply: bool = True,
    code_version: str | None = None,
    on_repair: Callable[[Repair], None] | None = None,
    full: bool = False,
    owns: Callable[[str, str], bool] | None = None,
    check_rows: bool = True,
) -> RecoveryReport:
    """Walk the store, repair half-done shapes (unless ``apply`` is false), and report.

    Rows that cannot be decoded are quarantined first (``full``: looked for in every row, as
    ``aion recover`` does; otherwise in what an engine reads when it starts).

    ``owns(tenant, workflow_id)``: only the runs it is true of are looked at (an engine that
    shares a store drives some of its partitions; see ``aion._engine._partitions``).
    ``check_rows=False`` skips the search for undecodable rows (a takeover: the engine's
    start searched them).

    Raises:
        RecoveryError: a repair failed and a re-read shows it is still needed.
    """
    started = time.perf_counter()
    repairs: list[Repair] = []

    def found(repair: Repair) -> None:
        repairs.append(repair)
        log.warning(
            "recovery %s: %s %s/%s: %s",
            "repairs" if apply else "found",
            repair.kind,
            repair.tenant,
            repair.workflow_id,
            repair.detail,
        )
        if on_repair is not None:
            on_repair(repair)

    for damaged in await store.damaged_rows(full=full) if check_rows else ():
        if owns is None or _owned_row(damaged, owns):
            await _quarantine(store, damaged, apply, found)
    scanned = blocked = 0
    reactivate: list[tuple[str, str]] = []
    pending_timers: set[str] = set()
    after: tuple[str, str] | None = None
    while True:
        rows = await store.scan_active(after=after, limit=_PAGE)
        for record in rows:
            key = (record.tenant, record.workflow_id)
            if owns is not None and not owns(*key):
                continue
            scanned += 1
            if record.status is Status.BLOCKED:
                blocked += 1
            wake = await _check_run(store, record, apply, code_version, found)
            if wake or record.status is Status.BLOCKED or _in_flight(record):
                reactivate.append(key)
            if not wake and record.status is Status.RUNNING:
                # Untouched by a repair: the row is still current when the timers are checked.
                pending_timers.update(_pending_timers(record))
        if len(rows) < _PAGE:
            break
        after = (rows[-1].tenant, rows[-1].workflow_id)
    overdue = await _check_timers(store, now, apply, found, pending_timers, owns)
    inbox = sum(
        owns is None or owns(c.tenant, c.workflow_id) for c in await store.read_inbox(limit=100_000)
    )
    report = RecoveryReport(
        runs_scanned=scanned,
        runs_reactivated=len(reactivate),
        runs_blocked=blocked,
        timers_overdue=overdue,
        inbox_pending=inbox,
        repairs=tuple(repairs),
        applied=apply,
        seconds=time.perf_counter() - started,
        reactivate=tuple(reactivate),
    )
    log.info("%s", report.summary())
    return report


async def _quarantine(
    store: EventStore, damaged: DamagedRow, apply: bool, found: Callable[[Repair], None]
) -> None:
    """Move an undecodable row aside; a projection row or a timer row is rebuilt (the run is
    parked BLOCKED with the reason, and retried like every blocked run)."""
    tenant, workflow_id = "?", "?"
    replacement: WorkflowRecord | TimerRow | None = None
    try:
        if damaged.table == "workflows":
            tenant, workflow_id = _split(damaged.key)
            replacement = await _rebuilt_record(store, tenant, workflow_id, damaged.reason)
        elif damaged.table == "timers":
            tenant, workflow_id, timer_id = _split(damaged.key[8:], parts=3)
            record = await store.get_workflow(workflow_id, tenant=tenant)
            if record is not None and not record.status.is_terminal:
                due = from_micros(read_be64(damaged.key))
                replacement = TimerRow(due, tenant, workflow_id, timer_id, record.run_id)
        elif damaged.table in ("approvals", "waitpoints"):
            tenant, workflow_id = _split(damaged.key, parts=3)[:2]
    except (AionError, ValueError, UnicodeDecodeError):
        replacement = None  # the history is damaged too: the row goes, the report says so
    if isinstance(replacement, WorkflowRecord):
        what = "moved aside, the run's row rebuilt from its history (BLOCKED, then retried)"
    elif replacement is not None:
        what = "moved aside and rebuilt from its key"
    else:
        what = "moved aside; nothing could be rebuilt (restore it from a backup if it matters)"
    found(
        Repair(
            "quarantine",
            tenant,
            workflow_id,
            f"undecodable {damaged.table} row {damaged.key!r} ({damaged.reason}): {what}",
        )
    )
    if apply:
        await store.commit(
            Write(quarantine=[msgspec.structs.replace(damaged, replacement=replacement)])
        )


def _owned_row(damaged: DamagedRow, owns: Callable[[str, str], bool]) -> bool:
    """Whether a damaged row belongs to a run ``owns`` is true of (a row of no run: yes)."""
    try:
        if damaged.table == "timers":
            tenant, workflow_id = _split(damaged.key[8:], parts=3)[:2]
        elif damaged.table == "workflows":
            tenant, workflow_id = _split(damaged.key)
        elif damaged.table in ("approvals", "waitpoints"):
            tenant, workflow_id = _split(damaged.key, parts=3)[:2]
        else:
            return True
    except (ValueError, UnicodeDecodeError):
        return True
    return owns(tenant, workflow_id)


def _split(key: bytes, parts: int = 2) -> list[str]:
    fields = key.split(b"\x00", parts - 1)
    if len(fields) != parts:
        raise ValueError(f"key {key!r} does not hold {parts} ids")
    return [f.decode() for f in fields]


async def _rebuilt_record(
    store: EventStore, tenant: str, workflow_id: str, reason: str
) -> WorkflowRecord | None:
    """A projection row rebuilt from the history: the current run's identity, parked BLOCKED
    (a terminal run keeps its outcome)."""
    events = await store.read_history(workflow_id, tenant=tenant)
    starts = [e for e in events if isinstance(e, ev.WorkflowStarted)]
    if not starts:
        return None
    first, current = starts[0], starts[-1]
    attributes: dict[str, Any] = {}
    for event in events:
        if isinstance(event, ev.SearchAttributesUpserted):
            attributes.update(event.attributes)
    last = events[-1]
    closed = {
        ev.WorkflowCompleted: Status.COMPLETED,
        ev.WorkflowFailed: Status.FAILED,
        ev.WorkflowCancelled: Status.CANCELLED,
    }.get(type(last))
    return WorkflowRecord(
        tenant=tenant,
        workflow_id=workflow_id,
        run_id=current.run_id,
        workflow_type=current.workflow_type,
        status=closed or Status.BLOCKED,
        created_at=first.at,
        run_started_at=current.at,
        closed_at=last.at if closed else None,
        parent_workflow_id=current.parent_workflow_id,
        parent_run_id=current.parent_run_id,
        reason=""
        if closed
        else f"its projection row was damaged ({reason}); rebuilt from its history",
        search_attributes=attributes,
    )


def _in_flight(record: WorkflowRecord) -> bool:
    """Work in flight: steps or children, or a run that waits on nothing (never activated,
    e.g. a successor started by a repair)."""
    if record.status is Status.RUNNING and not record.waiting_on:
        return True
    return any(w.startswith(("step:", "child:")) for w in record.waiting_on)


async def _check_run(
    store: EventStore,
    record: WorkflowRecord,
    apply: bool,
    code_version: str | None,
    found: Callable[[Repair], None],
) -> bool:
    """Repair a stranded continue-as-new or never-started children; True if the run needs waking."""
    wake = False
    if not _parked(record):
        continued = await _check_continued(store, record, apply, code_version, found)
        if continued is None:
            return False  # no history
        wake = continued
    children = [w.partition(":")[2] for w in record.waiting_on if w.startswith("child:")]
    if children:
        wake |= await _check_children(store, record, children, apply, code_version, found)
    return wake


def _parked(record: WorkflowRecord) -> bool:
    """The projection row shows the run RUNNING and waiting on something, so its history does
    not end in a continue-as-new: no need to read it.

    The row is written in the same transaction as the events (one decision, one write). A run
    that continued as new waits on nothing: its row is ``CONTINUED_AS_NEW`` (a writer that left
    the successor for later) or names the successor's run (this engine writes both together).
    Rows that do not show the run parked (``CONTINUED_AS_NEW``, ``BLOCKED``, waiting on
    nothing) get the history read.
    """
    return record.status is Status.RUNNING and bool(record.waiting_on)


async def _check_continued(
    store: EventStore,
    record: WorkflowRecord,
    apply: bool,
    code_version: str | None,
    found: Callable[[Repair], None],
) -> bool | None:
    """Repair a stranded continue-as-new; True if repaired, None if the run has no history."""
    tenant, workflow_id = record.tenant, record.workflow_id
    head = await store.head(workflow_id, tenant=tenant)
    if head == 0:
        return None
    (last,) = await store.read_history(workflow_id, tenant=tenant, from_seq=head, to_seq=head)
    wake = False
    if isinstance(last, ev.WorkflowContinuedAsNew):
        found(
            Repair(
                "stranded-continue-as-new",
                tenant,
                workflow_id,
                f"run ended at event {head} with continue-as-new and no successor; "
                f"starting run {last.new_run_id} of {last.workflow_type!r}",
            )
        )
        if apply:
            await _start_successor(store, record, last, head, code_version)
        wake = True
    return wake


async def _start_successor(
    store: EventStore,
    record: WorkflowRecord,
    ended: ev.WorkflowContinuedAsNew,
    head: int,
    code_version: str | None,
) -> None:
    tenant, workflow_id = record.tenant, record.workflow_id
    started, successor = begin_run(
        tenant=tenant,
        workflow_id=workflow_id,
        run_id=ended.new_run_id,
        workflow_type=ended.workflow_type,
        input=ended.input,
        at=ended.at,
        seq=head + 1,
        created_at=record.created_at,
        parent_workflow_id=record.parent_workflow_id,
        parent_run_id=record.parent_run_id,
        code_version=code_version,
        continued_from_run_id=record.run_id if record.run_id != ended.new_run_id else None,
    )
    try:
        await store.commit(
            Write(appends=[Append(workflow_id, [started], head, tenant)], workflows=[successor])
        )
    except Exception as exc:
        # Benign only if a re-read shows a successor is durable (a concurrent starter won).
        if await _successor_durable(store, tenant, workflow_id, head):
            log.info(
                "recovery: a successor of %s/%s appeared meanwhile; nothing to do",
                tenant,
                workflow_id,
            )
            return
        raise RecoveryError(
            f"could not start the successor run of stranded continue-as-new workflow "
            f"{workflow_id!r} (tenant {tenant!r}): {exc}"
        ) from exc


async def _successor_durable(store: EventStore, tenant: str, workflow_id: str, head: int) -> bool:
    events = await store.read_history(workflow_id, tenant=tenant, from_seq=head + 1)
    return any(isinstance(e, ev.WorkflowStarted) for e in events)


async def _check_children(
    store: EventStore,
    record: WorkflowRecord,
    children: list[str],
    apply: bool,
    code_version: str | None,
    found: Callable[[Repair], None],
) -> bool:
    tenant = record.tenant
    missing = [c for c in children if await store.get_workflow(c, tenant=tenant) is None]
    if not missing:
        return False
    segment = await store.read_current_run(record.workflow_id, tenant=tenant)
    recorded = {e.child_workflow_id: e for e in segment if isinstance(e, ev.ChildStarted)}
    for child_id in missing:
        event = recorded.get(child_id)
        if event is None or not event.child_run_id:
            continue  # the start failed on purpose (ChildFailed follows); nothing half done
        found(
            Repair(
                "child-never-started",
                tenant,
                child_id,
                f"parent {record.workflow_id!r} recorded child #{event.child_seq} "
                f"({event.workflow_type!r}) but the child has no history; starting it",
            )
        )
        if not apply:
            continue
        started, child = begin_run(
            tenant=tenant,
            workflow_id=child_id,
            run_id=event.child_run_id,
            workflow_type=event.workflow_type,
            input=event.input,
            at=event.at,
            parent_workflow_id=record.workflow_id,
            parent_run_id=record.run_id,
            code_version=code_version,
        )
        try:
            await store.commit(
                Write(appends=[Append(child_id, [started], 0, tenant)], workflows=[child])
            )
        except SequenceConflict:
            pass  # started meanwhile: what we wanted
        except PartitionLost as exc:
            # A child named into a partition another engine drives (a shared store): the
            # parent's replay asks for it again; never worth the sweep.
            log.warning("recovery could not start child %s/%s: %s", tenant, child_id, exc)
    return True


def _pending_timers(record: WorkflowRecord) -> list[str]:
    """The timers a RUNNING run's projection row shows pending, as :func:`_timer_identity` keys.

    ``waiting_on`` names a pending timer ``"timer:#<number> due <time>"``. The row is written in
    the same transaction as the history, so it says what the history says (the timer was
    scheduled in the current run and neither fired nor was cancelled) without reading the
    history. Were a writer to leave the row stale, a timer row wrongly taken for live costs
    nothing lasting: it fires, the engine finds the timer not pending and deletes the row.
    """
    out = []
    for item in record.waiting_on:
        if item.startswith("timer:#"):
            number = item[7:].partition(" ")[0]
            if number.isdigit():
                out.append(
                    _timer_identity(record.tenant, record.workflow_id, record.run_id, number)
                )
    return out


def _timer_identity(tenant: str, workflow_id: str, run_id: str, number: str) -> str:
    return f"{tenant}\0{workflow_id}\0{run_id}\0{number}"


async def _check_timers(
    store: EventStore,
    now: datetime,
    apply: bool,
    found: Callable[[Repair], None],
    pending: set[str],
    owns: Callable[[str, str], bool] | None = None,
) -> int:
    """Delete timer rows nothing waits on; return how many live timers are overdue.

    A ``timer:`` row that ``pending`` (from the projection rows the sweep has just read) shows
    live needs no read; any other row is checked against its run's row and history.
    """
    overdue = 0
    last: TimerRow | None = None
    cache: dict[tuple[str, str], tuple[WorkflowRecord | None, list[ev.Event]]] = {}
    doomed: list[TimerRow] = []
    while True:
        rows = await store.due_timers(_FAR_FUTURE, limit=_PAGE, after=last)
        for row in rows:
            if owns is not None and not owns(row.tenant, row.workflow_id):
                continue
            kind, _, number = row.timer_id.partition(":")
            if (
                kind == "timer"
                and row.run_id
                and _timer_identity(row.tenant, row.workflow_id, row.run_id, number) in pending
            ):
                overdue += row.due <= now
                continue
            key = (row.tenant, row.workflow_id)
            if key not in cache:
                record = await store.get_workflow(row.workflow_id, tenant=row.tenant)
                segment: list[ev.Event] = []
                if record is not None and not record.status.is_terminal:
                    segment = list(await store.read_current_run(row.workflow_id, tenant=row.tenant))
                cache[key] = (record, segment)
            record, segment = cache[key]
            problem = _timer_problem(row, record, segment)
            if problem is None:
                overdue += row.due <= now
                continue
            kind, detail = problem
            found(Repair(kind, row.tenant, row.workflow_id, detail))
            doomed.append(row)
        if len(rows) < _PAGE:
            break
        last = rows[-1]
        if len(cache) > 10_000:
            cache.clear()
    if apply and doomed:
        for i in range(0, len(doomed), _PAGE):
            await store.commit(Write(timers_delete=doomed[i : i + _PAGE]))
    return overdue


def _timer_problem(
    row: TimerRow, record: WorkflowRecord | None, segment: list[ev.Event]
) -> tuple[str, str] | None:
    if record is None or record.status.is_terminal:
        state = "does not exist" if record is None else f"is {record.status.value}"
        return "timer-row-of-closed-run", f"timer {row.timer_id} of a run that {state}"
    if row.run_id and row.run_id != record.run_id:
        return "stale-timer-row", f"timer {row.timer_id} of earlier run {row.run_id}"
    kind, _, number = row.timer_id.partition(":")
    if not number.isdigit():
        return None
    seq = int(number)
    if kind == "timer":
        scheduled = done = False
        for e in segment:
            if isinstance(e, ev.TimerScheduled) and e.timer_seq == seq:
                scheduled = True
            elif isinstance(e, ev.TimerFired | ev.TimerCancelled) and e.timer_seq == seq:
                done = True
        if done or not scheduled:
            what = "fired or was cancelled" if done else "was never scheduled"
            return "fired-timer-row", f"timer {row.timer_id} {what} but its row remained"
    elif kind == "retry":
        waiting = False
        for e in segment:
            if isinstance(e, ev.StepRetryScheduled) and e.step_seq == seq:
                waiting = True
            elif (isinstance(e, ev.StepStarted | ev.StepCompleted) and e.step_seq == seq) or (
                isinstance(e, ev.StepFailed) and e.step_seq == seq and not e.will_retry
            ):
                waiting = False
        if not waiting:
            return "fired-timer-row", f"retry {row.timer_id} already ran but its row remained"
    return None
