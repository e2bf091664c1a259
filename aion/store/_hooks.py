"""Write hooks: a supported seam at every boundary of a store's write, for fault-injection tests.

A :class:`WriteHook` installed on a store (``LmdbStore(path, write_hook=...)``,
``MemoryStore(write_hook=...)`` or ``store.set_write_hook(...)``) is called at each boundary of
every write. Raising from a call is the fault, and the boundary decides what is left:

- :meth:`WriteHook.begin_write`, in the caller before the write is queued: the write fails and
  nothing of it is written.
- :meth:`WriteHook.before_transaction`, before each transaction attempt (on LmdbStore's writer
  thread, which it may hold to make a batch): the writer's own failure (see the method).
- :meth:`WriteProbe.before_apply`, :meth:`WriteProbe.before_kv_write` (before each put or
  delete of the write's rows) and :meth:`WriteProbe.before_commit` (after its last row), inside
  the transaction: the write fails alone. Its rows are rolled back; the other writes of its
  batch go in.
- :meth:`WriteHook.before_commit`, after every row of the transaction, before the commit and
  its fsync: the transaction aborts and none of it is written (a failed sync, a full disk).
- :meth:`WriteProbe.after_commit`, committed but the caller not told yet: a lost
  acknowledgement (the write is recorded; its caller gets the exception).

``begin_write`` returns a :class:`WriteProbe` for the writes the hook wants to follow into
their transaction, or None: only followed writes pay for the per-row calls. A store without a
hook pays a ``None`` check per write and per transaction. ``aion.testing.faults`` builds its
failures, tears and crashes on these calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._prepare import Prepared
    from ._rows import KV

__all__ = ["SupportsWriteHook", "WriteHook", "WriteInfo", "WriteProbe"]


@dataclass(frozen=True, slots=True)
class WriteInfo:
    """What a hook learns of a write when it begins.

    Attributes:
        appends: ``(tenant, workflow id)`` of each history the write appends to, in order.
    """

    appends: tuple[tuple[str, str], ...]


class WriteProbe(Protocol):
    """Follows one write through its transaction (returned by :meth:`WriteHook.begin_write`).

    Every method may raise to inject a fault; the defaults do nothing (subclass and override
    what you need). On LmdbStore the calls inside the transaction come from the writer thread,
    and a write that shares its transaction with others fails alone: the writer rolls the
    transaction back and applies the others again without it. While a write with a probe is in
    its batch, LmdbStore writes every row with its own put (no bulk writes), so that each of
    the write's rows is one :meth:`before_kv_write`.
    """

    def before_apply(self, batch: int) -> None:
        """The write is about to be applied, in a transaction of ``batch`` writes (1 on
        MemoryStore). Called again when the transaction is retried from its start (LmdbStore
        grew its map, or drops a failed write of the batch). Its head check passed."""
        return

    def before_kv_write(self, op: Literal["put", "delete"], table: str, key: bytes) -> None:
        """Before each put or delete of one of the write's rows. Raising fails the write: the
        rows it put already are rolled back."""
        return

    def before_commit(self) -> None:
        """After all of the write's rows were put, inside the transaction. Raising fails the
        write; nothing of it is written."""
        return

    def after_commit(self) -> None:
        """The write is committed (and synced, for a durable store); its caller has not been
        told. Raising is a lost acknowledgement: the write is recorded, and its caller gets
        the exception instead of the result."""
        return


class WriteHook(Protocol):
    """Called at the boundaries of every write of the store it is installed on.

    The defaults do nothing (subclass and override what you need). :meth:`begin_write` runs in
    the caller's task; on LmdbStore the other calls (and the probes') run on the writer thread,
    one at a time, while later writes may begin in their callers. On MemoryStore every call
    runs in the caller.
    """

    def begin_write(self, write: WriteInfo) -> WriteProbe | None:
        """A write begins: called in the caller's task (its context variables are visible)
        before the write is queued. Raising fails it before anything of it is written.

        Returns:
            A probe to follow this write through its transaction, or None to leave it alone.
        """
        return None

    def before_transaction(self, writes: int) -> None:
        """Before each attempt at a transaction of ``writes`` writes.

        On LmdbStore it runs on the writer thread before the transaction begins, and may block
        to hold the writer (requests queued meanwhile form the next batch). Raising there is
        the writer thread's own failure: the writes in flight and every later one fail with
        :class:`~aion.errors.StoreError`, and ``writer_failure()`` reports it (a writer crash).
        On MemoryStore it runs in the caller, and raising fails the write (nothing written).
        """
        return

    def before_commit(self, writes: int) -> None:
        """After the rows of every write of the transaction were put, before the commit (and
        its fsync). Raising aborts the transaction: none of it is written.

        On LmdbStore an ``lmdb.Error`` raised here takes the path of a failed commit (every
        write of the transaction fails; one that says "No space left on device" is
        :class:`~aion.errors.StoreFull`), an ``lmdb.MapFullError`` the path of a full map (the
        map grows and the transaction is retried, or every write fails with ``StoreFull`` at
        ``max_map_size``); any other exception is the writer's own failure, as in
        :meth:`before_transaction`. On MemoryStore the write fails with the exception.
        """
        return


@runtime_checkable
class SupportsWriteHook(Protocol):
    """A store that takes a :class:`WriteHook` (LmdbStore, MemoryStore, and a
    :class:`~aion.store.ForwardingStore` over one of them)."""

    def set_write_hook(self, hook: WriteHook | None) -> WriteHook | None:
        """Install ``hook`` (None: remove it); returns the hook it replaces."""
        ...


def write_info(prepared: Prepared) -> WriteInfo:
    """The :class:`WriteInfo` of a prepared write (only built when a hook is installed)."""
    return WriteInfo(tuple((a.tenant, a.workflow_id) for a in prepared.appends))


class ProbedKV:
    """A KV that calls ``probe.before_kv_write`` before each put and delete of one write."""

    __slots__ = ("_kv", "_probe")

    def __init__(self, kv: KV, probe: WriteProbe) -> None:
        self._kv = kv
        self._probe = probe

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._kv.get(table, key)

    def get_many(self, table: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._kv.get_many(table, keys)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._probe.before_kv_write("put", table, key)
        self._kv.put(table, key, value)

    def delete(self, table: str, key: bytes) -> None:
        self._probe.before_kv_write("delete", table, key)
        self._kv.delete(table, key)

    def scan(
        self, table: str, lo: bytes, hi: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        return self._kv.scan(table, lo, hi, reverse=reverse)

    def values(self, table: str, start: bytes, count: int) -> list[bytes]:
        return self._kv.values(table, start, count)
