"""Commit observers: what a store tells the engine's metrics about each transaction it commits.

A store that takes one (``set_commit_observer`` on LmdbStore, MemoryStore and PostgresStore)
calls it once per committed transaction, never for one that aborted. The engine installs
:meth:`aion._engine._metrics.Metrics.observe_commit`; the store knows nothing of metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["CommitObserver", "notify"]

log = logging.getLogger("aion.store")

CommitObserver = Callable[[int, float, "float | None"], None]
"""``observer(writes, seconds, commit_seconds)``: a transaction of ``writes`` writes
(requests) committed; ``seconds`` from its start through its commit; ``commit_seconds`` the
commit alone (LMDB: ``txn.commit()``, with its fsync when durable; PostgreSQL: the round trip
that sends the rows and COMMIT together), or None where there is no such step (MemoryStore).

Called on the thread that committed (LmdbStore's and PostgresStore's writer thread, MemoryStore's
caller), after the commit and before the writers are told. It must be quick; what it raises is
logged and ignored (a metric never fails a write)."""


def notify(
    observer: CommitObserver | None, writes: int, seconds: float, commit_seconds: float | None
) -> None:
    """Tell ``observer`` (if any) of a committed transaction; never raises."""
    if observer is None:
        return
    try:
        observer(writes, seconds, commit_seconds)
    except Exception:
        log.exception("the store's commit observer failed (ignored)")
