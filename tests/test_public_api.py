"""Pins the public names: the contract of shared/design/API.md that exists so far."""

from __future__ import annotations

import dataclasses
import enum
import pickle
import traceback
import typing
from datetime import UTC, datetime

import msgspec
import pytest

import aion
import aion.errors
import aion.store
import aion.testing

# Exactly the public names: adding one (or dropping one) is a decision, made here too.
AION_ALL = [
    "AionError",
    "AmbiguousApproval",
    "Approval",
    "ApprovalPolicy",
    "ApprovalRejected",
    "ApprovalRule",
    "Cancelled",
    "Client",
    "Context",
    "Engine",
    "EngineStopped",
    "HistoryEvent",
    "InvalidArgument",
    "InvalidToken",
    "KeyRing",
    "NoPendingApproval",
    "NondeterminismError",
    "Page",
    "PayloadError",
    "PendingApproval",
    "RecoveryReport",
    "Repair",
    "RetryPolicy",
    "Status",
    "StepError",
    "StepFailure",
    "StepInfo",
    "StoreLocked",
    "WaitTimedOut",
    "Waitpoint",
    "WaitpointClosed",
    "WaitpointInfo",
    "WorkflowBlocked",
    "WorkflowCancelled",
    "WorkflowClosed",
    "WorkflowDescription",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFound",
    "current_step",
    "workflow",
]

TESTING_ALL = [
    "ManualClock",
    "ReplayResult",
    "RunOutcome",
    "SignalAt",
    "check_determinism",
    "replay",
    "run_workflow",
]

STORE_ALL = [
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
    "MemoryStore",
    "Page",
    "PostgresStore",
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
    "collect_pages",
]

ERRORS_ALL = [
    "ActivationFailed",
    "AionError",
    "AmbiguousApproval",
    "ApprovalRejected",
    "Cancelled",
    "CorruptRecord",
    "DataDirectoryError",
    "DependencyMissing",
    "EngineStopped",
    "InvalidArgument",
    "InvalidToken",
    "NoPendingApproval",
    "NondeterminismError",
    "PartitionLost",
    "PayloadError",
    "SequenceConflict",
    "StepError",
    "StoreClosed",
    "StoreError",
    "StoreFormatError",
    "StoreFull",
    "StoreLocked",
    "WaitTimedOut",
    "WaitpointClosed",
    "WorkflowBlocked",
    "WorkflowCancelled",
    "WorkflowClosed",
    "WorkflowFailed",
    "WorkflowNotFound",
]


def test_top_level_names() -> None:
    assert sorted(aion.__all__) == AION_ALL
    assert aion.__all__ == sorted(aion.__all__)
    for name in aion.__all__:
        assert getattr(aion, name) is not None


def test_testing_store_and_errors_names() -> None:
    assert sorted(aion.testing.__all__) == TESTING_ALL
    assert aion.testing.__all__ == sorted(aion.testing.__all__)
    assert sorted(aion.store.__all__) == STORE_ALL
    assert aion.errors.__all__ == ERRORS_ALL
    for module in (aion.testing, aion.store, aion.errors):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


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


# --- public classes report the public package --------------------------------------------


def _classes(module: object) -> list[type]:
    names: list[str] = module.__all__  # type: ignore[attr-defined]
    return [obj for name in names if isinstance(obj := getattr(module, name), type)]


@pytest.mark.parametrize("cls", _classes(aion), ids=lambda cls: cls.__name__)
def test_public_classes_report_aion_as_their_module(cls: type) -> None:
    assert cls.__module__ == "aion"
    assert getattr(aion, cls.__qualname__) is cls
    # Pickle finds a class by module and qualified name: the public path must lead back to it.
    assert pickle.loads(pickle.dumps(cls)) is cls


@pytest.mark.parametrize("cls", _classes(aion.testing), ids=lambda cls: cls.__name__)
def test_testing_classes_report_aion_testing_as_their_module(cls: type) -> None:
    assert cls.__module__ == "aion.testing"
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_a_traceback_names_the_public_path() -> None:
    try:
        raise aion.WorkflowNotFound("order-7", "acme")
    except aion.WorkflowNotFound as exc:
        text = "".join(traceback.format_exception(exc))
    assert "aion.WorkflowNotFound: workflow 'order-7' not found in tenant 'acme'" in text
    assert "aion.errors.WorkflowNotFound" not in text


@pytest.mark.parametrize("cls", _classes(aion), ids=lambda cls: cls.__name__)
def test_annotations_still_resolve_after_the_move(cls: type) -> None:
    """``typing.get_type_hints`` and msgspec look string annotations up in the module a class
    reports: they must not find names missing from ``aion``'s namespace."""
    if issubclass(cls, msgspec.Struct) or dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)  # raises NameError for a name it cannot find
        assert all(not isinstance(tp, str) for tp in hints.values()), hints


T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

INSTANCES: list[object] = [
    aion.Status.RUNNING,
    aion.Approval("ada", "ok", T0),
    aion.RetryPolicy(max_attempts=3),
    aion.WorkflowInfo("order-7", "run-1", "order", "default", T0),
    aion.Page(items=[1, 2], next_cursor="c"),
    aion.StepInfo("order-7", "run-1", 2, "charge", 1, "key"),
    aion.HistoryEvent(1, "workflow.started", T0, {"input": [1]}),
    aion.Repair("orphan", "default", "order-7", "detail"),
]


@pytest.mark.parametrize("value", INSTANCES, ids=lambda v: type(v).__name__)
def test_public_values_pickle_by_their_public_path(value: object) -> None:
    assert pickle.loads(pickle.dumps(value)) == value
    if isinstance(value, enum.Enum):
        assert pickle.loads(pickle.dumps(value)) is value


def test_a_public_struct_decodes_by_its_annotations() -> None:
    """msgspec resolves the annotations of a class whose ``__module__`` is now ``aion``."""
    approval = msgspec.convert(
        {"user": "ada", "comment": None, "decided_at": "2024-01-02T03:04:05Z"}, aion.Approval
    )
    assert approval == aion.Approval("ada", None, T0)
    info = msgspec.json.decode(msgspec.json.encode(INSTANCES[5]), type=aion.StepInfo)
    assert info == INSTANCES[5]
