"""aion's storage layer: the EventStore protocol and its backends.

Public so that backends may be added later: a backend implements :class:`EventStore` and passes
the conformance suite in ``tests/store/``.
"""

from __future__ import annotations

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
    "InboxCommand",
    "IndexRow",
    "LmdbStore",
    "MemoryStore",
    "Page",
    "collect_pages",
    "RunInfo",
    "Status",
    "TimerRow",
    "WaitpointRow",
    "WaitpointStatus",
    "WorkflowRecord",
    "Write",
    "begin_run",
]
