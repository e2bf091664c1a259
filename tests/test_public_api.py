"""Pins the public names: the contract of shared/design/API.md that exists so far."""

from __future__ import annotations

import aion
import aion.errors
import aion.store
import aion.testing

EXPECTED_AION = {
    "AionError",
    "AmbiguousApproval",
    "ApprovalRejected",
    "Cancelled",
    "EngineStopped",
    "InvalidArgument",
    "InvalidToken",
    "NoPendingApproval",
    "NondeterminismError",
    "PayloadError",
    "Status",
    "StoreLocked",
    "WaitTimedOut",
    "WaitpointClosed",
    "WorkflowBlocked",
    "WorkflowCancelled",
    "WorkflowClosed",
    "WorkflowFailed",
    "WorkflowNotFound",
}


def test_top_level_names() -> None:
    assert set(aion.__all__) >= EXPECTED_AION
    for name in aion.__all__:
        assert getattr(aion, name) is not None


def test_every_error_derives_from_aion_error_except_cancelled() -> None:
    for name in aion.errors.__all__:
        cls = getattr(aion.errors, name)
        if name == "Cancelled":
            assert issubclass(cls, BaseException) and not issubclass(cls, Exception)
        else:
            assert issubclass(cls, aion.AionError), name
        assert cls.__doc__, f"{name} needs a docstring saying when it is raised"


def test_store_names() -> None:
    for name in ("EventStore", "LmdbStore", "MemoryStore", "Write", "Append", "Page"):
        assert name in aion.store.__all__
    assert isinstance(aion.store.MemoryStore(), aion.store.EventStore)


def test_status_members() -> None:
    assert {s.name for s in aion.Status} == {
        "RUNNING",
        "BLOCKED",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "CONTINUED_AS_NEW",
    }
    assert aion.testing.ManualClock is not None
