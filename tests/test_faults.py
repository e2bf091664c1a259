"""Fault injection: nothing partial is ever visible, and the engine recovers from any failed write.

Store level (``aion.testing.faults`` over MemoryStore and LmdbStore on real files, through
their write hook):

- a multi-part write (appends to two histories, one with continue-as-new, projection rows, timer
  rows added and deleted, waitpoint and approval rows, index rows) is torn after each of its KV
  writes in turn, fails before reaching the store, loses its acknowledgement, or kills the
  process inside its transaction (SIGKILL, a child process); after reopening, the store holds
  exactly the state before the write or exactly the state after it, byte for byte, in every
  table. Hypothesis varies the write's shape and the fault's position.
- group commit: a request torn halfway through a batch fails alone; the other requests of that
  batch (made one batch on purpose by holding the writer) are recorded.

Engine level (real workflows: steps, timers on ``ManualClock(auto_advance=True)``, a signal, a
child, continue-as-new; ``Engine(FaultyStore(LmdbStore(path)))``):

- a failed, torn or unacknowledged write, or a crash before, inside or after a write, at every
  write of the scenario; then a fresh engine on the same directory: every run finishes with the
  result of an uninterrupted run, its history has contiguous seqs and the same events (none
  lost, none duplicated), no timer row or open run is left, and a further reopen's recovery
  sweep finds nothing to repair. For definite failures the runs also finish in the faulty
  engine itself (a crashed actor restarts by replay).
- a real SIGKILL of an engine process at exact write boundaries.
- lost-ack reconciliation: after a lost acknowledgement at any write the caller is told
  "recorded" and no run waits for a restart (this failed before the engine re-read the tail).
- problems found here and fixed, pinned: a failed commit leaked ``SequenceConflict`` to a signal
  processed concurrently for the same run (two workers on one run); an engine stopping while a
  commit fails hit ``assert self._tg is not None``; a dead store made the engine spin.

Run as a script, this module is the child process of the SIGKILL tests (see ``_child``).
"""

from __future__ import annotations

import logging
import signal as signals
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aion
from aion import events as ev
from aion.errors import InvalidArgument, SequenceConflict
from aion.store import (
    Append,
    ApprovalRow,
    ApprovalStatus,
    EventStore,
    ForwardingStore,
    IndexRow,
    LmdbStore,
    MemoryStore,
    Status,
    TimerRow,
    WaitpointRow,
    WaitpointStatus,
    WorkflowRecord,
    Write,
    WriteHook,
)
from aion.store._core import TABLES
from aion.testing import ManualClock
from aion.testing.faults import (
    AckLost,
    Fault,
    FaultKind,
    FaultPlan,
    FaultyStore,
    InjectedFault,
    SimulatedCrash,
    TearableLmdbStore,
    TearableMemoryStore,
    WriterHold,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=UTC)
HERE = Path(__file__)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL tests are POSIX")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# === the wrapper ==================================================================================


def test_a_plan_names_each_write_once() -> None:
    with pytest.raises(InvalidArgument, match=r"\[3\]"):
        FaultPlan(fail_writes={3}, lose_ack={3})
    with pytest.raises(InvalidArgument, match="from 1"):
        FaultPlan(fail_writes={0})
    plan = FaultPlan(
        fail_writes=[1], raise_after_puts={2: 5}, decide=lambda n, w: Fault(FaultKind.LOSE_ACK)
    )
    write = Write()
    assert plan.fault_for(1, write) == Fault(FaultKind.FAIL)
    assert plan.fault_for(2, write) == Fault(FaultKind.TEAR, 5)
    assert plan.fault_for(9, write) == Fault(FaultKind.LOSE_ACK)


async def test_the_wrapper_is_an_event_store_and_says_what_it_injected() -> None:
    store = FaultyStore(MemoryStore(), FaultPlan(fail_writes={2}, lose_ack={3}))
    assert isinstance(store, EventStore)
    assert await store.append("a", [started("a")], 0) == 1
    with pytest.raises(InjectedFault, match="write #2 failed before it reached the store"):
        await store.append("b", [started("b")], 0)
    with pytest.raises(AckLost, match="outcome is unknown") as lost:
        await store.append("c", [started("c")], 0)
    assert isinstance(lost.value, aion.errors.StoreError)
    assert (await store.head("b"), await store.head("c")) == (0, 1)  # failed / recorded
    assert [(i.write, i.kind, i.workflows) for i in store.injected] == [
        (2, FaultKind.FAIL, ("b",)),
        (3, FaultKind.LOSE_ACK, ("c",)),
    ]
    assert store.writes == 3


class NoHooks(ForwardingStore):
    """A store that takes no write hook (a backend without the optional seam)."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


async def test_tearing_needs_a_store_that_takes_a_write_hook() -> None:
    store = FaultyStore(NoHooks(MemoryStore()), FaultPlan(fail_writes={1}, raise_after_puts={2: 0}))
    with pytest.raises(InjectedFault):  # failures need no hook
        await store.append("a", [started("a")], 0)
    with pytest.raises(InvalidArgument, match=r"takes a write hook.*not NoHooks"):
        await store.append("a", [started("a")], 0)
    with pytest.raises(InvalidArgument, match="takes a write hook"):
        store.hold_writer()


async def test_the_old_tearable_stores_still_work(tmp_path: Path) -> None:
    """TearableLmdbStore and TearableMemoryStore, from before every store took a write hook."""
    memory = TearableMemoryStore()
    store = FaultyStore(memory, FaultPlan(raise_after_puts={1: 1}))
    with pytest.raises(InjectedFault):
        await store.append("a", [started("a")], 0)
    assert isinstance(memory.reopen(), TearableMemoryStore)
    inner = TearableLmdbStore(tmp_path / "d")
    hold = inner.hold_writer()  # held before a FaultyStore wraps it: the wrapper adopts its hook
    store = FaultyStore(inner, FaultPlan(raise_after_puts={2: 1}))
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.append, "a", [started("a")], 0)
        await anyio.to_thread.run_sync(hold.reached.wait)
        hold.release()
    with pytest.raises(InjectedFault):
        await store.append("b", [started("b")], 0)
    assert inner.batch_sizes == store.batch_sizes == [1, 1]
    assert [i.kind for i in store.injected] == [FaultKind.TEAR]
    await store.aclose()


class Quiet(WriteHook):
    """A write hook that does nothing."""


async def test_a_foreign_write_hook_is_not_replaced_silently() -> None:
    inner = MemoryStore(write_hook=Quiet())
    refused = r"has a write hook installed already \(Quiet\).*set_write_hook\(None\)"
    with pytest.raises(InvalidArgument, match=refused):
        FaultyStore(inner)


async def test_a_halted_store_takes_no_more_calls(tmp_path: Path) -> None:
    store = FaultyStore(LmdbStore(tmp_path / "d"), FaultPlan(crash_after=1))
    with pytest.raises(SimulatedCrash, match="write #1"):
        await store.append("a", [started("a")], 0)
    with pytest.raises(SimulatedCrash):
        await store.head("a")
    await store.aclose()  # frees the directory, as a dead process does
    async with LmdbStore(tmp_path / "d") as reopened:
        assert await reopened.head("a") == 1  # recorded before the "death"


# === store level: all or nothing ==================================================================


def started(wf: str, seq: int = 1, run_id: str = "r1") -> ev.WorkflowStarted:
    return ev.WorkflowStarted(
        seq=seq,
        at=at(seq),
        workflow_id=wf,
        run_id=run_id,
        workflow_type="order",
        input=b"\x90",
        tenant="default",
    )


def signal(seq: int) -> ev.SignalReceived:
    return ev.SignalReceived(seq=seq, at=at(seq), name="go", payload=b"\xc0")


def record(wf: str, status: Status = Status.RUNNING, run_id: str = "r1") -> WorkflowRecord:
    return WorkflowRecord("default", wf, run_id, "order", status, T0, T0)


BASE_TIMERS = [TimerRow(at(100 + i), "default", "a", f"timer:{i}", "r1") for i in range(2)]
BASE_WAITPOINT = WaitpointRow("default", "a", "wp-1", "r1", "callback", at(3))
BASE_APPROVAL = ApprovalRow("default", "a", "ap-1", "r1", "ship", "digest", at(4))


def base_write() -> Write:
    """What the store holds before the write under test: rows it will update and delete."""
    return Write(
        appends=[Append("a", [started("a"), signal(2)], 0), Append("b", [started("b")], 0)],
        workflows=[record("a"), record("b")],
        timers_add=BASE_TIMERS,
        waitpoints=[BASE_WAITPOINT],
        approvals=[BASE_APPROVAL],
        index_put=[IndexRow("orders", "default", f"k{i}", b"v") for i in range(2)],
    )


@dataclass(frozen=True)
class Shape:
    """Which parts the write under test has (each part also exercises its secondary indexes)."""

    new_events: int = 3  # appended to a new workflow "c" (WorkflowStarted first: a runs row)
    more_events: int = 2  # appended to "a" (0: no append to "a")
    continue_as_new: bool = True  # "a"'s append ends with continue-as-new + the next run
    a_status: Status | None = Status.COMPLETED  # a's projection row changes status
    timers_add: int = 2
    timers_delete: int = 2
    waitpoint_update: bool = True
    waitpoint_new: bool = True
    approval_decide: bool = True
    approval_new: bool = True
    index_put: int = 2
    index_delete: bool = True


def big_write(shape: Shape) -> Write:
    appends: list[Append] = []
    records: list[WorkflowRecord] = []
    if shape.new_events:
        events: list[ev.Event] = [started("c")]
        events += [signal(2 + i) for i in range(shape.new_events - 1)]
        appends.append(Append("c", events, 0))
        records.append(record("c"))
    a_run = "r1"
    if shape.more_events or shape.continue_as_new:
        events = [signal(3 + i) for i in range(shape.more_events)]
        if shape.continue_as_new:
            seq = 3 + len(events)
            events += [
                ev.WorkflowContinuedAsNew(
                    seq=seq, at=at(seq), new_run_id="r2", workflow_type="order", input=b"\x90"
                ),
                started("a", seq + 1, run_id="r2"),
            ]
            a_run = "r2"
        appends.append(Append("a", events, 2))
    if shape.a_status is not None or a_run != "r1":
        records.append(record("a", shape.a_status or Status.RUNNING, run_id=a_run))
    wp_done = msgspec.structs.replace(BASE_WAITPOINT, status=WaitpointStatus.COMPLETED)
    wp_new = WaitpointRow("default", "c", "wp-2", "r1", "cb", at(9))
    approved = msgspec.structs.replace(BASE_APPROVAL, status=ApprovalStatus.APPROVED)
    requested = ApprovalRow("default", "c", "ap-2", "r1", "pay", "d", at(8))
    return Write(
        appends=appends,
        workflows=records,
        timers_add=[
            TimerRow(at(300 + i), "default", "c", f"timer:{i}", "r1")
            for i in range(shape.timers_add)
        ],
        timers_delete=BASE_TIMERS[: shape.timers_delete],
        waitpoints=[
            *([wp_done] if shape.waitpoint_update else []),
            *([wp_new] if shape.waitpoint_new else []),
        ],
        approvals=[
            *([approved] if shape.approval_decide else []),
            *([requested] if shape.approval_new else []),
        ],
        index_put=[
            IndexRow("orders", "default", f"k{i}", b"new") for i in range(1, 1 + shape.index_put)
        ],
        index_delete=[IndexRow("orders", "default", "k0")] if shape.index_delete else [],
    )


Dump = dict[str, list[tuple[bytes, bytes]]]


def dump(store: Any) -> Dump:
    """Every row of every table (through the backend's protected read transaction), but the
    format version that only LMDB keeps."""

    def read(kv: Any) -> Dump:
        return {t: list(kv.scan(t, b"", b"\xff" * 64)) for t in TABLES if t != "meta"}

    result: Dump = store._read(read)
    return result


async def references(shape: Shape) -> tuple[Dump, Dump, int]:
    """The store before and after the write (on a clean MemoryStore), and its KV writes."""
    store = MemoryStore()
    await store.commit(base_write())
    before = dump(store)
    counting = FaultyStore(store, FaultPlan(raise_after_puts={1: 10_000}))
    await counting.commit(big_write(shape))
    (probe,) = counting.injected
    assert not probe.fired and probe.puts is not None
    return before, dump(store), probe.puts


async def write_with_fault(
    backend: str, path: Path, shape: Shape, fault: Fault
) -> tuple[BaseException | None, Dump, FaultyStore]:
    """Base state, then the write under ``fault``; the state read back after a reopen."""
    inner: LmdbStore | MemoryStore = LmdbStore(path) if backend == "lmdb" else MemoryStore()
    await inner.commit(base_write())
    store = FaultyStore(inner, FaultPlan(decide=lambda n, w: fault))
    error: BaseException | None = None
    try:
        await store.commit(big_write(shape))
    except aion.errors.StoreError as exc:
        error = exc
    await store.aclose()
    if isinstance(inner, MemoryStore):
        return error, dump(inner.reopen()), store
    with LmdbStore(path) as reopened:
        return error, dump(reopened), store


def check_all_or_nothing(
    error: BaseException | None, after: Dump, store: FaultyStore, refs: tuple[Dump, Dump, int]
) -> None:
    before, complete, _ = refs
    (injection,) = store.injected
    kind = injection.kind
    if kind is FaultKind.LOSE_ACK:
        assert isinstance(error, AckLost)
        assert after == complete, "an unacknowledged write must still be whole"
    elif kind in (FaultKind.TEAR, FaultKind.CRASH_INSIDE) and not injection.fired:
        assert error is None  # k >= the write's size: it commits untouched
        assert after == complete
    else:
        if kind is FaultKind.TEAR:
            assert isinstance(error, InjectedFault) and injection.puts == injection.after_puts
        elif kind is FaultKind.CRASH_INSIDE:
            assert isinstance(error, SimulatedCrash)
        else:
            assert isinstance(error, InjectedFault)
        assert after == before, f"{kind}: a failed write left rows behind: {diff(before, after)}"


def diff(a: Dump, b: Dump) -> dict[str, Any]:
    return {
        t: {"gone": sorted(set(a[t]) - set(b[t])), "new": sorted(set(b[t]) - set(a[t]))}
        for t in a
        if a[t] != b[t]
    }


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
async def test_every_tear_point_of_a_multi_part_write_is_all_or_nothing(
    backend: str, tmp_path: Path
) -> None:
    shape = Shape()
    refs = await references(shape)
    k = 0
    while True:  # tear after 0, 1, 2, ... KV writes, until the write fits
        error, after, store = await write_with_fault(
            backend, tmp_path / f"d{k}", shape, Fault(FaultKind.TEAR, k)
        )
        check_all_or_nothing(error, after, store, refs)
        if not store.injected[0].fired:
            break
        k += 1
    # Every KV write is a fault point, on both backends (LmdbStore's writer writes a batch with
    # a write to tear row by row, instead of deferring event rows and heads to bulk writes).
    assert k == refs[2] > 20, (k, refs[2])


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
async def test_the_same_store_goes_on_correctly_after_a_torn_write(
    backend: str, tmp_path: Path
) -> None:
    """Nothing the torn write did survives in memory either (e.g. a writer's cache of heads)."""
    inner = LmdbStore(tmp_path / "d") if backend == "lmdb" else MemoryStore()
    await inner.commit(base_write())
    store = FaultyStore(inner, FaultPlan(raise_after_puts={1: 12}))
    with pytest.raises(InjectedFault):
        await store.commit(big_write(Shape()))  # would move "a" to head 6 and create "c"
    with pytest.raises(SequenceConflict):
        await store.append("a", [signal(7)], 6)
    assert await store.append("a", [signal(3)], 2) == 3
    assert await store.append("c", [started("c")], 0) == 1
    assert [e.seq for e in await store.read_history("a")] == [1, 2, 3]
    await store.aclose()


SHAPES = st.builds(
    Shape,
    new_events=st.integers(0, 4),
    more_events=st.integers(0, 3),
    continue_as_new=st.booleans(),
    a_status=st.sampled_from([None, Status.BLOCKED, Status.COMPLETED]),
    timers_add=st.integers(0, 2),
    timers_delete=st.integers(0, 2),
    waitpoint_update=st.booleans(),
    waitpoint_new=st.booleans(),
    approval_decide=st.booleans(),
    approval_new=st.booleans(),
    index_put=st.integers(0, 2),
    index_delete=st.booleans(),
)
KINDS = st.sampled_from(
    [FaultKind.TEAR, FaultKind.CRASH_INSIDE, FaultKind.FAIL, FaultKind.LOSE_ACK]
)


def _all_or_nothing(backend: str, shape: Shape, kind: FaultKind, data: st.DataObject) -> None:
    import tempfile

    async def run() -> None:
        refs = await references(shape)
        if refs[2] == 0:
            return  # an empty write: nothing to tear
        k = data.draw(st.integers(0, refs[2]), label="after_puts")
        with tempfile.TemporaryDirectory() as tmp:
            error, after, store = await write_with_fault(
                backend, Path(tmp) / "d", shape, Fault(kind, k)
            )
        check_all_or_nothing(error, after, store, refs)

    anyio.run(run)


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(shape=SHAPES, kind=KINDS, data=st.data())
def test_any_write_shape_and_fault_position_is_all_or_nothing(
    backend: str, shape: Shape, kind: FaultKind, data: st.DataObject
) -> None:
    _all_or_nothing(backend, shape, kind, data)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["memory", "lmdb"])
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(shape=SHAPES, kind=KINDS, data=st.data())
def test_any_write_shape_and_fault_position_is_all_or_nothing_many(
    backend: str, shape: Shape, kind: FaultKind, data: st.DataObject
) -> None:
    _all_or_nothing(backend, shape, kind, data)


async def test_a_request_torn_in_a_batch_does_not_poison_the_others(tmp_path: Path) -> None:
    path = tmp_path / "d"
    inner = LmdbStore(path)
    await inner.commit(base_write())
    others = [Write(appends=[Append(f"o{i}", [started(f"o{i}")], 0)], workflows=[record(f"o{i}")])
              for i in range(6)]  # fmt: skip
    stale = Write(appends=[Append("b", [started("b")], 0)])  # expects head 0, it is 1
    torn_at = 9  # inside the second append's events (after c's 6 KV writes)
    store = FaultyStore(inner, FaultPlan(raise_after_puts={4: torn_at}))
    outcomes: dict[str, BaseException | None] = {}

    async def commit(
        name: str,
        write: Write,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()  # the parent resumes once this task waits: after it queued
        try:
            await store.commit(write)
            outcomes[name] = None
        except aion.errors.StoreError as exc:
            outcomes[name] = exc

    hold = store.hold_writer()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(commit, "gate", Write(index_put=[IndexRow("gate", "default", "g")]))
            await anyio.to_thread.run_sync(hold.reached.wait)  # the writer holds the gate
            # Queued behind it in this order: writes 2, 3 (others), 4 (torn), 5 (stale), ...
            queue = [("o0", others[0]), ("o1", others[1]), ("torn", big_write(Shape())),
                     ("stale", stale), *((f"o{i}", others[i]) for i in range(2, 6))]  # fmt: skip
            for name, write in queue:
                await tg.start(commit, name, write)
            hold.release()
    finally:
        hold.release()
    (torn,) = store.injected
    assert torn.fired and torn.write == 4 and torn.batch_size == 8  # one batch: all but the gate
    assert store.batch_sizes[-2:] == [8, 7]  # the batch, then again without the torn one
    assert isinstance(outcomes.pop("torn"), InjectedFault)
    assert isinstance(outcomes.pop("stale"), SequenceConflict)
    assert outcomes == dict.fromkeys(["gate", *(f"o{i}" for i in range(6))])
    await store.aclose()
    expected = MemoryStore()
    await expected.commit(base_write())
    for write in [Write(index_put=[IndexRow("gate", "default", "g")]), *others]:
        await expected.commit(write)
    with LmdbStore(path) as reopened:
        assert dump(reopened) == dump(expected)


# --- a real process death inside the transaction --------------------------------------------------


def run_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HERE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,  # the caller looks at the return code: -SIGKILL is the expected one
    )


@pytest.mark.parametrize("k", [0, 7, pytest.param(20, marks=pytest.mark.slow)])
async def test_a_process_killed_inside_a_transaction_leaves_nothing_of_it(
    tmp_path: Path, k: int
) -> None:
    before, complete, _ = await references(Shape())
    child = run_child("store-kill", str(tmp_path / "d"), str(k))
    assert child.returncode == -signals.SIGKILL, child.stderr
    with LmdbStore(tmp_path / "d") as reopened:  # takes over the dead process's lock
        assert dump(reopened) == before
        await reopened.commit(big_write(Shape()))  # and the write can be made again
        assert dump(reopened) == complete


async def _store_kill(path: str, k: int) -> None:
    inner = LmdbStore(path)
    await inner.commit(base_write())
    store = FaultyStore(inner, FaultPlan(crash_inside=(1, k)), crash="kill")
    await store.commit(big_write(Shape()))
    print("committed")  # k was at least the write's size


# === engine level =================================================================================


async def double(x: int) -> int:
    return 2 * x


@aion.workflow(name="faults.kid")
async def kid(ctx: aion.Context, x: int) -> int:
    v = await ctx.step(double, x)
    await ctx.sleep(5)
    return int(v) + 1


@aion.workflow(name="faults.main")
async def main(ctx: aion.Context, n: int, generation: int = 0) -> dict[str, Any]:
    if generation == 0:
        a = await ctx.step(double, n)
        go = await ctx.wait_signal("go")
        await ctx.sleep(10)
        ctx.continue_as_new(n, int(a) + int(go) + 1)
    b = await ctx.step(double, generation)
    child = await ctx.child(kid, int(b), workflow_id=f"kid-{n}")
    await ctx.sleep(3)
    return {"n": n, "generation": generation, "b": b, "child": child}


WORKFLOWS = [main, kid]

#: The writes of one uninterrupted run of ``scenario([3])``, in order, and the histories each
#: appends to (checked by the reference run and by every test that injects a fault).
WRITES = [
    "start",
    "step 1 completed",
    "signal (and timer scheduled)",
    "timer fired, continue-as-new, successor started",
    "step completed, child started (two histories)",
    "child: step completed",
    "child: timer fired, completed",
    "child result recorded",
    "timer fired, completed",
]
WRITE_TARGETS = [("m3",)] * 4 + [("m3", "kid-3"), ("kid-3",), ("kid-3",), ("m3",), ("m3",)]


def workflow_ids(indexes: list[int]) -> list[str]:
    return [w for i in indexes for w in (f"m{i}", f"kid-{i}")]


async def start(engine: aion.Engine, i: int) -> None:
    """Start ``main(i)``; on a failure that may not have recorded it, start again (idempotent)."""
    while True:
        try:
            await engine.start(main, i, workflow_id=f"m{i}")
            return
        except (InjectedFault, AckLost):
            continue


async def send_signal(engine: aion.Engine, i: int) -> None:
    """Signal ``m{i}`` once: after an unknown outcome, look at the history before resending."""
    while True:
        history = await engine.history(f"m{i}")
        if any(h.type == "signal.received" for h in history):
            return
        try:
            await engine.signal(f"m{i}", "go", 100 + i)
            return
        except (InjectedFault, AckLost):
            continue


async def scenario(engine: aion.Engine, indexes: list[int]) -> None:
    """Start the workflows, then signal each when nothing else is happening (so no commit of
    the same run is in flight: see test_a_failed_commit_does_not_fail_a_signal_behind_it)."""
    for i in indexes:
        await start(engine, i)
    for i in indexes:
        await engine.wait_idle()
        await send_signal(engine, i)


async def settle(engine: aion.Engine, clock: ManualClock, ids: list[str]) -> bool:
    """Move the clock from deadline to deadline until every run in ``ids`` is finished (True)
    or nothing is left to happen (False)."""
    for _ in range(1000):
        await engine.wait_idle()
        if all([await finished(engine, w) for w in ids]):
            return True
        deadline = clock.next_deadline()
        if deadline is None:
            return False
        clock.set_time(max(deadline, clock.now()))
    raise AssertionError("the workflows keep going")


async def finished(engine: aion.Engine, workflow_id: str) -> bool:
    try:
        return (await engine.describe(workflow_id)).status.is_terminal
    except aion.WorkflowNotFound:
        return False


def identity(event: ev.Event) -> tuple[Any, ...]:
    """An event without what legitimately differs between runs of the same program: its
    position and time, due times (a restart's backoff moves the clock) and random run ids."""
    fields = msgspec.structs.asdict(event)
    for name in ("seq", "at", "due", "run_id", "new_run_id", "child_run_id",
                 "continued_from_run_id", "parent_run_id"):  # fmt: skip
        fields.pop(name, None)
    return (type(event).__struct_config__.tag, *sorted(fields.items()))


def identities(history: Sequence[ev.Event]) -> Iterator[tuple[Any, ...]]:
    """Each event's identity, with the number of its run (numbers restart in each run)."""
    run = 0
    for event in history:
        run += isinstance(event, ev.WorkflowStarted)
        yield (run, *identity(event))


@dataclass
class Outcome:
    results: dict[str, Any]
    events: dict[str, Counter[tuple[Any, ...]]]


async def outcome_of(path: Path, indexes: list[int]) -> Outcome:
    """Reopen ``path`` with a fresh engine, finish the scenario (a client that restarts after a
    crash re-drives it idempotently) and check what must hold of every history."""
    clock = ManualClock(T0, auto_advance=True)
    results: dict[str, Any] = {}
    events: dict[str, Counter[tuple[Any, ...]]] = {}
    async with aion.Engine(path, workflows=WORKFLOWS, clock=clock, durable=False) as engine:
        await scenario(engine, indexes)
        ids = workflow_ids(indexes)
        assert await settle(engine, clock, ids), "a run does not finish after a reopen"
        for w in ids:
            results[w] = await engine.handle(w).result(timeout=10)
            history = await engine.store.read_history(w)
            assert [e.seq for e in history] == list(range(1, len(history) + 1)), w
            events[w] = Counter(identities(history))
            twice = [e for e, n in events[w].items() if n > 1]
            assert not twice, f"{w}: events recorded twice: {twice}"
        assert await engine.store.scan_active() == []
        assert await engine.store.due_timers(FAR_FUTURE) == [], "a timer row was left behind"
        assert await engine.store.read_inbox() == []
    async with aion.Engine(path, workflows=WORKFLOWS, clock=clock, durable=False) as engine:
        report = engine.recovery
        assert report.repairs == () and report.runs_scanned == 0, report.summary()
    return Outcome(results, events)


_reference: dict[tuple[int, ...], Outcome] = {}


async def reference(tmp_path: Path, indexes: list[int]) -> Outcome:
    """The outcome of an uninterrupted run (computed once per scenario)."""
    key = tuple(indexes)
    if key not in _reference:
        path = tmp_path / "reference"
        store = FaultyStore(LmdbStore(path, durable=False))
        clock = ManualClock(T0, auto_advance=True)
        async with aion.Engine(store, workflows=WORKFLOWS, clock=clock) as engine:
            await scenario(engine, indexes)
            assert await settle(engine, clock, workflow_ids(indexes))
        await store.aclose()
        if key == (3,):
            assert store.writes == len(WRITES)
            assert store.appended_to == WRITE_TARGETS
        _reference[key] = await outcome_of(path, indexes)
    return _reference[key]


async def run_with_faults(
    path: Path, plan: FaultPlan, indexes: list[int]
) -> tuple[FaultyStore, bool]:
    """The scenario on a faulty store; whether every run finished in that engine.

    A simulated crash ends the scenario at once: nothing after a process death should run.
    """
    done = False
    with anyio.CancelScope() as scope:
        store = FaultyStore(LmdbStore(path, durable=False), plan, on_crash=lambda n: scope.cancel())
        clock = ManualClock(T0, auto_advance=True)
        try:
            async with aion.Engine(store, workflows=WORKFLOWS, clock=clock) as engine:
                await scenario(engine, indexes)
                done = await settle(engine, clock, workflow_ids(indexes))
        except* Exception:
            if not store.crashed:  # what the engine does after a "death" does not matter
                raise
    await store.aclose()
    return store, done


def at_each_write(kind: FaultKind, default: set[int], k: int = 2) -> Iterator[Any]:
    """The fault at each write of the scenario; the writes not in ``default`` run with -m slow."""
    for n, what in enumerate(WRITES, 1):
        match kind:
            case FaultKind.FAIL:
                plan = FaultPlan(fail_writes={n})
            case FaultKind.LOSE_ACK:
                plan = FaultPlan(lose_ack={n})
            case FaultKind.TEAR:
                plan = FaultPlan(raise_after_puts={n: k})
            case FaultKind.CRASH_BEFORE:
                plan = FaultPlan(crash_before=n)
            case FaultKind.CRASH_AFTER:
                plan = FaultPlan(crash_after=n)
            case _:
                plan = FaultPlan(crash_inside=(n, k))
        marks = [] if n in default else [pytest.mark.slow]
        yield pytest.param(plan, id=f"{kind.value}-{n}-{_name(what)}", marks=marks)


def _name(what: str) -> str:
    return what.split(" (", maxsplit=1)[0].replace(" ", "_")


# By default: the start, the signal, continue-as-new, a start of a child, a child's completion.
DEFINITE = [
    *at_each_write(FaultKind.FAIL, default={1, 3, 4, 5, 7}),
    *at_each_write(FaultKind.TEAR, default={4, 8}),
]


@pytest.mark.parametrize("plan", DEFINITE)
async def test_a_failed_write_is_retried_by_replay(tmp_path: Path, plan: FaultPlan) -> None:
    expected = await reference(tmp_path, [3])
    store, done = await run_with_faults(tmp_path / "d", plan, [3])
    (injection,) = store.injected
    assert injection.fired and injection.workflows == WRITE_TARGETS[injection.write - 1]
    assert done, "a definite failure must not strand a run in the live engine"
    got = await outcome_of(tmp_path / "d", [3])
    assert got.results == expected.results
    assert got.events == expected.events


@pytest.mark.parametrize("plan", list(at_each_write(FaultKind.LOSE_ACK, default={1, 5, 7})))
async def test_a_lost_acknowledgement_loses_and_duplicates_nothing(
    tmp_path: Path, plan: FaultPlan
) -> None:
    expected = await reference(tmp_path, [3])
    store, _ = await run_with_faults(tmp_path / "d", plan, [3])
    (injection,) = store.injected
    assert injection.fired and injection.workflows == WRITE_TARGETS[injection.write - 1]
    got = await outcome_of(tmp_path / "d", [3])
    assert got.results == expected.results
    assert got.events == expected.events


CRASHES = [
    *at_each_write(FaultKind.CRASH_BEFORE, default={1, 7}),
    *at_each_write(FaultKind.CRASH_AFTER, default={4, 8}),
    *at_each_write(FaultKind.CRASH_INSIDE, default={3, 5}),
]


@pytest.mark.parametrize("plan", CRASHES)
async def test_a_crash_at_any_write_recovers_on_reopen(tmp_path: Path, plan: FaultPlan) -> None:
    expected = await reference(tmp_path, [3])
    store, _ = await run_with_faults(tmp_path / "d", plan, [3])
    assert store.crashed
    assert store.appended_to == WRITE_TARGETS[: store.writes]  # the write the plan named
    got = await outcome_of(tmp_path / "d", [3])
    assert got.results == expected.results
    assert got.events == expected.events


KILLS = [("crash_inside", 5, 3), ("crash_after", 7, 0)]
# Every write has at least three KV writes (an event row, its head, the projection row; index
# rows that do not change are not rewritten), so "inside after 2" is before the last of them.
KILL_POINTS = [("crash_before", 0), ("crash_after", 0), ("crash_inside", 1), ("crash_inside", 2)]
SLOW_KILLS = [(kind, n, k) for n in range(1, len(WRITES) + 1) for kind, k in KILL_POINTS]


async def _kill_and_recover(tmp_path: Path, kind: str, n: int, k: int) -> None:
    expected = await reference(tmp_path, [3])
    child = run_child("engine-kill", str(tmp_path / "d"), kind, str(n), str(k))
    assert child.returncode == -signals.SIGKILL, child.stdout + child.stderr
    got = await outcome_of(tmp_path / "d", [3])
    assert got.results == expected.results
    assert got.events == expected.events


@pytest.mark.parametrize(("kind", "n", "k"), KILLS)
async def test_an_engine_killed_at_a_write_recovers(
    tmp_path: Path, kind: str, n: int, k: int
) -> None:
    await _kill_and_recover(tmp_path, kind, n, k)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "n", "k"), SLOW_KILLS)
async def test_an_engine_killed_at_any_write_recovers(
    tmp_path: Path, kind: str, n: int, k: int
) -> None:
    await _kill_and_recover(tmp_path, kind, n, k)


async def _engine_kill(path: str, kind: str, n: int, k: int) -> None:
    plan = {
        "crash_before": FaultPlan(crash_before=n),
        "crash_after": FaultPlan(crash_after=n),
        "crash_inside": FaultPlan(crash_inside=(n, k)),
    }[kind]
    store = FaultyStore(LmdbStore(path), plan, crash="kill")
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(store, workflows=WORKFLOWS, clock=clock) as engine:
        await scenario(engine, [3])
        await settle(engine, clock, workflow_ids([3]))
    print("finished without being killed")


# --- several workflows, several faults at once --------------------------------------------------

PLANS = st.builds(
    lambda fail, lose, tear: FaultPlan(
        fail_writes=fail, lose_ack=lose - fail, raise_after_puts={n: 1 for n in tear - fail - lose}
    ),
    st.sets(st.integers(1, 40), max_size=4),
    st.sets(st.integers(1, 40), max_size=4),
    st.sets(st.integers(1, 40), max_size=4),
)


def _several_faults(plan: FaultPlan) -> None:
    import tempfile

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            expected = await reference(Path(tmp), [0, 1, 2])
            store, _ = await run_with_faults(Path(tmp) / "d", plan, [0, 1, 2])
            got = await outcome_of(Path(tmp) / "d", [0, 1, 2])
        assert got.results == expected.results
        assert got.events == expected.events
        assert store.writes > 3 * len(WRITES) - 1

    anyio.run(run)


@settings(max_examples=2, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(plan=PLANS)
def test_several_faults_across_concurrent_workflows(plan: FaultPlan) -> None:
    _several_faults(plan)


@pytest.mark.slow
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(plan=PLANS)
def test_several_faults_across_concurrent_workflows_many(plan: FaultPlan) -> None:
    _several_faults(plan)


# === what a lost acknowledgement should do (lost-ack reconciliation) =============================


@pytest.mark.parametrize(
    "n", [pytest.param(n, id=f"{n}-{_name(w)}") for n, w in enumerate(WRITES, 1)]
)
async def test_a_lost_acknowledgement_is_reconciled_by_the_engine(tmp_path: Path, n: int) -> None:
    """The engine re-reads the history tail, finds its write recorded and carries on: callers
    are told "recorded", and no run waits for a restart.

    Without lost-ack reconciliation (aion 0ba96e0) this fails at write 1 (``engine.start``
    raises AckLost although the run started), 3 (``engine.signal`` raises AckLost although the
    signal is recorded), 5 (the child's start is recorded but its actor is never registered:
    the child runs only after a restart) and 7 (the child's completion is recorded but the
    parent is never told: it waits for a restart)."""
    store = FaultyStore(LmdbStore(tmp_path / "d", durable=False), FaultPlan(lose_ack={n}))
    clock = ManualClock(T0, auto_advance=True)
    async with aion.Engine(store, workflows=WORKFLOWS, clock=clock) as engine:
        await engine.start(main, 3, workflow_id="m3")  # no AckLost reaches the caller
        await engine.wait_idle()
        await engine.signal("m3", "go", 103)
        assert await settle(engine, clock, workflow_ids([3])), "a run is stranded"
        history = await engine.history("m3")
        assert [h.type for h in history].count("signal.received") == 1
    await store.aclose()
    assert [i.write for i in store.injected] == [n]


# === engine problems found by injecting faults ====================================================


#: Released by the test: the step of ``gated`` waits for it (one per test, made in its loop).
gates: dict[str, anyio.Event] = {}


async def wait_for_gate() -> int:
    gates["entered"].set()
    await gates["step"].wait()
    return 1


@aion.workflow(name="faults.gated")
async def gated(ctx: aion.Context) -> list[Any]:
    first = await ctx.step(wait_for_gate)
    return [first, await ctx.wait_signal("go")]


async def gated_start(engine: aion.Engine, store: FaultyStore) -> WriterHold:
    """Start ``gated``; return once its step's completion (write 2) is held in the writer."""
    gates["step"], gates["entered"] = anyio.Event(), anyio.Event()
    await engine.start(gated, workflow_id="g")
    await gates["entered"].wait()  # the step runs and waits for the gate
    hold = store.hold_writer()
    gates["step"].set()
    await anyio.to_thread.run_sync(hold.reached.wait)
    return hold


async def test_a_failed_commit_does_not_fail_a_signal_behind_it(tmp_path: Path) -> None:
    store = FaultyStore(
        LmdbStore(tmp_path / "d", durable=False), FaultPlan(raise_after_puts={2: 0})
    )
    clock = ManualClock(T0, auto_advance=True)
    outcome: list[BaseException | None] = []

    async def signal_now() -> None:
        try:
            await engine.signal("g", "go", 7)
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    async with aion.Engine(store, workflows=[gated], clock=clock) as engine:
        hold = await gated_start(engine, store)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(signal_now)
                await anyio.wait_all_tasks_blocked()  # the signal is processed meanwhile
                hold.release()
        finally:
            hold.release()
        assert store.injected[0].fired
        # A signal is recorded, or refused with an error that says why; never a store detail.
        assert outcome == [None], f"the signal was refused: {outcome[0]!r}"
        assert await engine.handle("g").result(timeout=10) == [1, 7]
    await store.aclose()


async def test_an_engine_stopping_while_a_commit_fails_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore(
        LmdbStore(tmp_path / "d", durable=False), FaultPlan(raise_after_puts={2: 0})
    )
    clock = ManualClock(T0, auto_advance=True)

    async def release_once_stopping(hold: WriterHold) -> None:
        await anyio.wait_all_tasks_blocked()  # the engine waits for its in-flight commit
        hold.release()

    engine = aion.Engine(store, workflows=[gated], clock=clock)
    async with anyio.create_task_group() as tg, engine:
        hold = await gated_start(engine, store)
        tg.start_soon(release_once_stopping, hold)
        # The engine stopped without an error; the torn write is not there, the run goes on.
    await store.aclose()
    assert store.injected[0].fired
    assert not [r.getMessage() for r in caplog.records if "AssertionError" in _text(r)]
    async with aion.Engine(tmp_path / "d", workflows=[gated], clock=clock) as engine:
        gates["step"].set()
        await engine.signal("g", "go", 7)
        assert await engine.handle("g").result(timeout=10) == [1, 7]


async def test_a_dead_store_does_not_make_the_engine_spin(tmp_path: Path) -> None:
    store = FaultyStore(LmdbStore(tmp_path / "d", durable=False), FaultPlan(crash_before=2))
    clock = ManualClock(T0)  # no auto-advance: a restart's backoff waits for the clock
    with anyio.move_on_after(30):
        async with aion.Engine(store, workflows=WORKFLOWS, clock=clock, max_restarts=3) as engine:
            await engine.start(main, 3, workflow_id="m3")
            await engine.wait_idle()  # write 2 (the step's completion) found the store dead
            assert store.crashed
            clock.advance(60)  # the run's restart comes due: it finds the store dead too
            for _ in range(300):
                await anyio.lowlevel.checkpoint()
            # A few tries, then the run waits (for the clock, or for an operator): bounded.
            assert store.refused < 30, f"{store.refused} calls to a dead store: a busy loop"
    await store.aclose()


def _text(record: logging.LogRecord) -> str:
    """A log record with its traceback, as a handler would print it."""
    return logging.Formatter().format(record)


# === the child process of the SIGKILL tests =======================================================


def _child(argv: list[str]) -> None:
    match argv:
        case ["store-kill", path, k]:
            anyio.run(_store_kill, path, int(k))
        case ["engine-kill", path, kind, n, k]:
            anyio.run(_engine_kill, path, kind, int(n), int(k))
        case _:
            raise SystemExit(f"usage: {HERE.name} store-kill DIR K | engine-kill DIR KIND N K")


if __name__ == "__main__":
    _child(sys.argv[1:])
