"""aion's storage layer: the EventStore protocol and its backends.

Public so that backends may be added later: a backend implements :class:`EventStore` and passes
the conformance suite in ``tests/store/``. :class:`ForwardingStore` is the base for wrappers of
a store; :class:`WriteHook` the seam at every boundary of a write, for fault injection
(``aion.testing.faults``).
"""

from __future__ import annotations

from ._forwarding import ForwardingStore as ForwardingStore
from ._hooks import SupportsWriteHook as SupportsWriteHook
from ._hooks import WriteHook as WriteHook
from ._hooks import WriteInfo as WriteInfo
from ._hooks import WriteProbe as WriteProbe
from ._lmdb import LmdbStore as LmdbStore
from ._memory import MemoryStore as MemoryStore
from ._protocol import EventStore as EventStore
from ._records import Append as Append
from ._records import ApprovalRow as ApprovalRow
from ._records import ApprovalStatus as ApprovalStatus
from ._records import CommitResult as CommitResult
from ._records import DamagedRow as DamagedRow
from ._records import InboxCommand as InboxCommand
from ._records import IndexRow as IndexRow
from ._records import Page as Page
from ._records import RunInfo as RunInfo
from ._records import Status as Status
from ._records import TimerRow as TimerRow
from ._records import WaitpointRow as WaitpointRow
from ._records import WaitpointStatus as WaitpointStatus
from ._records import WorkflowRecord as WorkflowRecord
from ._records import Write as Write
from ._records import begin_run as begin_run
from ._records import collect_pages as collect_pages

__all__ = [
    "Append",
    "ApprovalRow",
    "ApprovalStatus",
    "CommitResult",
    "DamagedRow",
    "EventStore",
    "ForwardingStore",
    "InboxCommand",
    "IndexRow",
    "LmdbStore",
    "PostgresStore",
    "MemoryStore",
    "Page",
    "collect_pages",
    "RunInfo",
    "Status",
    "SupportsWriteHook",
    "TimerRow",
    "WaitpointRow",
    "WaitpointStatus",
    "WorkflowRecord",
    "Write",
    "WriteHook",
    "WriteInfo",
    "WriteProbe",
    "begin_run",
]


def __getattr__(name: str) -> object:
    # PostgresStore needs the optional driver (pip install "aion[postgres]"): imported on use.
    if name == "PostgresStore":
        from ._postgres_import import postgres_store  # noqa: PLC0415

        return postgres_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
