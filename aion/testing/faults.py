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
  inner store that takes a write hook (:class:`~aion.store.SupportsWriteHook`): LmdbStore,
  MemoryStore, or a :class:`~aion.store.ForwardingStore` over one.
- **crash**: the process "dies" before the write, after it (it is recorded, nobody hears), or
  inside its transaction after ``k`` KV writes. With ``crash="halt"`` (the default) nothing
  more reaches the inner store and every later call raises :class:`SimulatedCrash`, so the data
  left behind is exactly what a process death at that point leaves; ``aclose()`` then frees the
  data directory for a reopen. With ``crash="kill"`` the process sends itself SIGKILL: use it in
  a child process, for a real crash at an exact write boundary (LMDB's own crash safety is then
  what is tested).

Everything is deterministic: the same plan and the same sequence of writes inject the same
faults. :attr:`FaultyStore.injected` lists what was injected, for assertions::

    store = FaultyStore(LmdbStore(tmp_path / "data"), FaultPlan(fail_writes={3}, lose_ack={5},
                                                                raise_after_puts={7: 2}))
    async with aion.Engine(store, workflows=[...], clock=clock) as engine:
        ...
    await store.aclose()  # the engine does not close a store it was given
    assert [i.kind for i in store.injected] == [FaultKind.FAIL, FaultKind.LOSE_ACK, ...]

How it reaches the store: :class:`FaultyStore` is a :class:`~aion.store.ForwardingStore` (every
call goes through, or is refused after a crash, in one place), and it installs a
:class:`~aion.store.WriteHook` on the inner store. Failures and lost acknowledgements happen in
the wrapper, around the inner ``commit``; a tear or an inside crash marks its write with a
context variable, and the hook's ``begin_write`` (called in the caller's task) hands that write
a probe that counts its KV writes (``before_kv_write``) and raises before write ``k + 1``. On
LMDB the writer then applies the batch holding that write row by row, so every KV write of it
is a fault point on both backends, and its rollback and replay of the rest of the batch are
what is tested. The hook also counts the writer's transactions and can hold the writer to make
a batch on purpose (:meth:`FaultyStore.hold_writer`).
"""

from __future__ import annotations

import contextvars
import enum
import os
import signal
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aion.errors import InvalidArgument, StoreError
from aion.events import Event
from aion.store import (
    Append,
    CommitResult,
    EventStore,
    ForwardingStore,
    InboxCommand,
    LmdbStore,
    MemoryStore,
    Write,
    WriteHook,
    WriteInfo,
    WriteProbe,
)

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


class FaultyStore(ForwardingStore):
    """An :class:`~aion.store.EventStore` that injects faults into chosen writes of ``inner``.

    Args:
        inner: the store to delegate to. Tears and inside crashes need one that takes a write
            hook (:class:`~aion.store.SupportsWriteHook`: LmdbStore, MemoryStore, or a
            :class:`~aion.store.ForwardingStore` over one); this wrapper installs its hook there.
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
        super().__init__(inner)
        self.plan = plan or FaultPlan()
        self.crash_mode: CrashMode = crash
        self.on_crash = on_crash
        self.writes = 0
        self.appended_to: list[tuple[str, ...]] = []
        self.injected: list[Injection] = []
        self.crashed = False
        self.refused = 0
        self._crashed_at = 0
        self._hook = _install_hook(inner)

    # --- what a test reaches through the hook -------------------------------------------------

    def hold_writer(self) -> WriterHold:
        """Hold the inner store's writer at the start of its next transaction until
        ``release()`` (LmdbStore; see :class:`WriterHold`)."""
        return self._hooked("holding the writer").hold_writer()

    @property
    def batch_sizes(self) -> list[int]:
        """The number of writes of every transaction attempt of the inner store, in order."""
        return self._hooked("counting transactions").batch_sizes

    def _hooked(self, what: str) -> _FaultHook:
        if self._hook is None:
            raise InvalidArgument(
                f"{what} needs an inner store that takes a write hook (LmdbStore, MemoryStore "
                f"or a ForwardingStore over one), not {type(self.inner).__name__}"
            )
        return self._hook

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

    def forward(self, method: str) -> EventStore:
        """Every call but the writes below reaches ``inner`` unless the store "crashed"."""
        self._alive()
        return self.inner

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
        self._hooked("tearing a write")
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
        """The inner store's writer failure (``LmdbStore``), so an engine can still watch it
        (also after a crash)."""
        failed: Callable[[], BaseException | None] | None = getattr(
            self.inner, "writer_failure", None
        )
        return None if failed is None else failed()


# --- tearing a write inside its transaction, through the store's write hook --------------------


class _Target(WriteProbe):
    """The write to tear: counts its KV writes and raises (or kills) before write ``k + 1``."""

    __slots__ = ("after_puts", "applied", "batch", "fired", "kill", "write")

    def __init__(self, write: int, after_puts: int, *, kill: bool) -> None:
        self.write = write
        self.after_puts = after_puts
        self.kill = kill
        self.applied = 0
        self.fired = False
        self.batch: int | None = None

    def before_apply(self, batch: int) -> None:
        # Applied from the start again when LMDB retries the transaction (it grew its map, or
        # replays the batch without a failed write).
        self.applied = 0
        if self.batch is None:
            self.batch = batch

    def before_kv_write(self, op: Literal["put", "delete"], table: str, key: bytes) -> None:
        if self.fired:
            return
        if self.applied >= self.after_puts:
            self.fired = True
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(self.write, FaultKind.TEAR, self.after_puts)
        self.applied += 1


#: Set by FaultyStore around the commit of the write to tear; read by the hook's begin_write,
#: which the store calls in the same task.
_ARMED: contextvars.ContextVar[_Target | None] = contextvars.ContextVar(
    "aion_faults_armed", default=None
)


@dataclass(eq=False)
class WriterHold:
    """Holds the LMDB writer at the start of its next transaction (see
    :meth:`FaultyStore.hold_writer`): requests queued meanwhile form one batch next."""

    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


class _FaultHook(WriteHook):
    """The write hook FaultyStore installs: it hands the armed write its probe, counts the
    inner store's transactions and holds its writer on request."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self._hold: WriterHold | None = None

    def begin_write(self, write: WriteInfo) -> WriteProbe | None:
        return _ARMED.get()

    def before_transaction(self, writes: int) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.reached.set()
            hold.released.wait()
        self.batch_sizes.append(writes)

    def hold_writer(self) -> WriterHold:
        """``hold.reached`` is set (from the writer thread) once it waits. Requests queued
        while it waits are applied together in the transaction after it: a batch made on
        purpose. Only for LmdbStore: MemoryStore would hold its caller's event loop."""
        self._hold = WriterHold()
        return self._hold


def _install_hook(inner: EventStore) -> _FaultHook | None:
    """Install a :class:`_FaultHook` on ``inner`` (or adopt the one there), if it takes hooks."""
    # Not isinstance(inner, SupportsWriteHook): a ForwardingStore has the method through its
    # __getattr__, which a runtime protocol check does not see on every Python version.
    set_hook: Callable[[WriteHook | None], WriteHook | None] | None = getattr(
        inner, "set_write_hook", None
    )
    if set_hook is None:
        return None
    hook = _FaultHook()
    previous = set_hook(hook)
    if previous is None:
        return hook
    set_hook(previous)
    if isinstance(previous, _FaultHook):  # a Tearable store, or another FaultyStore over it
        return previous
    raise InvalidArgument(
        f"the inner store has a write hook installed already ({type(previous).__name__}); "
        "FaultyStore installs its own and does not replace another silently. Remove it first: "
        "inner.set_write_hook(None)"
    )


class TearableMemoryStore(MemoryStore):
    """A :class:`~aion.store.MemoryStore`, kept under its old name: every MemoryStore takes the
    write hook that tearing needs now."""


class TearableLmdbStore(LmdbStore):
    """An :class:`~aion.store.LmdbStore` with :class:`FaultyStore`'s write hook installed from
    the start, so that its writer can be held before a FaultyStore wraps it. Every LmdbStore
    can be torn now; :meth:`FaultyStore.hold_writer` and :attr:`FaultyStore.batch_sizes` do
    what the two members below do.

    Attributes:
        batch_sizes: the number of requests of every transaction attempt, in order.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._faults = _FaultHook()
        self.set_write_hook(self._faults)

    @property
    def batch_sizes(self) -> list[int]:
        return self._faults.batch_sizes

    def hold_writer(self) -> WriterHold:
        """Hold the writer at the start of its next transaction until ``release()``.

        ``hold.reached`` is set (from the writer thread) once it waits. Requests queued while it
        waits are applied together in the transaction after it: a batch made on purpose.
        """
        return self._faults.hold_writer()
