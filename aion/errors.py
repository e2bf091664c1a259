"""The aion error hierarchy.

Every error aion raises on purpose derives from :class:`AionError`. Each class says when it is
raised and what to do about it. Errors that refine a standard error also derive from it (a
:class:`StoreError` is an ``OSError``), so generic handlers keep working. Errors with typed
arguments build their own message from them and keep them as attributes; all of them pickle.

The hierarchy (a standard base in parentheses; a test checks this drawing against the code)::

    AionError(Exception)
        PayloadError(ValueError)
        InvalidArgument(ValueError)
        DependencyMissing(ImportError)
        StoreError(OSError)
            SequenceConflict
            StoreLocked
            StoreFormatError
            StoreFull
            StoreClosed
            PartitionLost
            CorruptRecord
            DataDirectoryError
        WorkflowNotFound(LookupError)
        WorkflowClosed
        WorkflowBlocked
        EngineStopped
        WorkflowFailed
        WorkflowCancelled
        StepError
        WaitTimedOut(TimeoutError)
        NondeterminismError
            ActivationFailed
        ApprovalRejected
        NoPendingApproval(LookupError)
        AmbiguousApproval
        InvalidToken(ValueError)
        WaitpointClosed
    Cancelled(BaseException)
"""

from __future__ import annotations

from typing import Any

__all__ = [
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


class AionError(Exception):
    """Root of every error aion raises on purpose. Catch it to handle any aion failure."""


def _rebuild(cls: type[AionError], args: tuple[Any, ...], kwargs: dict[str, Any]) -> AionError:
    """Unpickle an error with typed arguments: call its constructor as it was called."""
    return cls(*args, **kwargs)


# --- payloads -----------------------------------------------------------------------------


class PayloadError(AionError, ValueError):
    """A value could not be encoded, could not be decoded, or exceeds the payload size limit.

    Raised at the call site (``engine.start``, ``ctx.step``, ``engine.signal`` ...), never later
    inside the engine. Pass values msgspec can encode (builtins, datetimes, UUIDs, Structs,
    dataclasses), or raise the limit with ``Engine(..., max_payload_bytes=...)``.
    """


class InvalidArgument(AionError, ValueError):
    """An argument is malformed: an empty id, an id with a NUL character, a cursor not issued
    for this query (pass ``next_cursor`` exactly as returned), a non-contiguous event sequence.
    The message says which and why; nothing was written.
    """


class DependencyMissing(AionError, ImportError):
    """A feature needs an optional dependency that is not installed (the PostgreSQL backend
    needs ``pip install "aion[postgres]"``). The message names the extra to install."""


# --- store ------------------------------------------------------------------------------


class StoreError(AionError, OSError):
    """The event store failed. The message names the data directory and the operation."""


class SequenceConflict(StoreError):
    """An append expected a history head that is no longer current; nothing was written.

    Another writer appended first. Re-read the history tail and decide again.
    """

    def __init__(self, workflow_id: str, expected_seq: int, actual_seq: int, tenant: str) -> None:
        self.workflow_id = workflow_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq
        self.tenant = tenant
        super().__init__(
            f"append to workflow {workflow_id!r} (tenant {tenant!r}) expected head seq "
            f"{expected_seq}, but the stored head is {actual_seq}; nothing was written. "
            "Re-read the history tail and retry."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.workflow_id, self.expected_seq, self.actual_seq, self.tenant)
        return (type(self), args, self.__dict__)


class StoreLocked(StoreError):
    """Another engine already owns this data directory.

    Only one engine may run on a data directory at a time. Stop the other engine, or open the
    store as a client (``LmdbStore(path, role="client")``, as the ``aion`` CLI does) to read and
    to leave commands.
    """


class StoreFormatError(StoreError):
    """The store on disk has a format this version of aion cannot read, is not a store, or is
    damaged: its data file is shorter than its pages, or missing or empty beside the files of a
    store ("damaged or missing store: restore from backup"). Nothing was opened or written."""


class StoreFull(StoreError):
    """The store could not grow: the disk is full or the map reached its configured maximum.

    Nothing from the failed write was recorded; free disk space (or raise ``max_map_size``) and
    retry. Everything recorded before stays intact.
    """


class StoreClosed(StoreError):
    """The store was used after it was closed."""


class PartitionLost(StoreError):
    """This engine no longer owns the partition of the workflow it wrote to: another engine
    took it over (its lease had run out) and holds a newer fencing number. Nothing of the write
    was recorded; the workflow is driven by the new owner now."""


class CorruptRecord(StoreError):
    """A stored record could not be decoded. The message names the table and the key.

    Other records stay readable. Restore the data directory from a backup, or remove the workflow
    named in the message, and report the file if aion wrote it.
    """

    def __init__(self, table: str, key: bytes, reason: str) -> None:
        self.table = table
        self.key = key
        self.reason = reason
        super().__init__(f"corrupt record in table {table!r} at key {key!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.table, self.key, self.reason), self.__dict__)


class DataDirectoryError(StoreError):
    """The data directory cannot be created, read or written (permissions, a file in the way)."""


# --- workflows ------------------------------------------------------------------------------


class WorkflowNotFound(AionError, LookupError):
    """No workflow with this id exists in this tenant. Check the id and the ``tenant=`` argument."""

    def __init__(self, workflow_id: str, tenant: str = "default") -> None:
        self.workflow_id = workflow_id
        self.tenant = tenant
        super().__init__(f"workflow {workflow_id!r} not found in tenant {tenant!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id, self.tenant), self.__dict__)


class WorkflowClosed(AionError):
    """The workflow has finished, so it can take no more signals, decisions or cancellations.

    ``status`` is how it finished (``"completed"``, ``"failed"``, ``"cancelled"``; empty when
    not known), ``what`` what it takes no more (empty: nothing said).
    """

    def __init__(self, workflow_id: str, status: str = "", what: str = "") -> None:
        self.workflow_id = workflow_id
        self.status = status
        self.what = what
        super().__init__(
            f"workflow {workflow_id!r} has finished"
            + (f" ({status})" if status else "")
            + (f"; it takes no more {what}" if what else "")
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id, self.status, self.what), self.__dict__)


class WorkflowBlocked(AionError):
    """The run is parked ``BLOCKED`` (its code diverged from its history, or the engine failed
    on it repeatedly), and this request needs a running run: a decision on an approval, which
    must be taken against what the run waits on now.

    Signals, waitpoint completions and cancellations are never refused this way: they are kept
    durably and applied in arrival order once the run runs again. Fix the cause (``reason``),
    then ``engine.unblock(workflow_id)`` / ``aion unblock ID`` or restart the engine, and decide
    again.
    """

    def __init__(self, workflow_id: str, reason: str, what: str = "this request") -> None:
        self.workflow_id = workflow_id
        self.reason = reason
        self.what = what
        super().__init__(
            f"workflow {workflow_id!r} is BLOCKED ({reason}); {what} was not recorded. Fix the "
            f"cause, then `aion unblock {workflow_id}` (or restart the engine), and send it again."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id, self.reason, self.what), self.__dict__)


class EngineStopped(AionError):
    """The engine is not running (not entered with ``async with``, already left, or stopped
    because a service failed for good). Nothing was recorded by the call that raised it.

    Recorded history is intact: start an engine on the data directory (after fixing the cause
    the message names) and call again.
    """


class WorkflowFailed(AionError):
    """The workflow ended by raising. ``error_type`` and ``message`` describe the original error."""

    def __init__(self, workflow_id: str, error_type: str, message: str) -> None:
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.error_message = message
        super().__init__(f"workflow {workflow_id!r} failed: {error_type}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.workflow_id, self.error_type, self.error_message)
        return (type(self), args, self.__dict__)


class WorkflowCancelled(AionError):
    """The workflow was cancelled (``engine.cancel``) before it finished."""


class Cancelled(BaseException):
    """Raised inside a workflow at its current await when the run is cancelled.

    Derives from ``BaseException`` so ``except Exception`` does not swallow it. Catch it only to
    clean up (cleanup may still run steps), then let it propagate.
    """


class StepError(AionError):
    """A step failed for good (a non-retryable error, or its attempts ran out).

    Raised inside the workflow at ``await ctx.step(...)``, the same way live and on replay.
    ``error_type`` and ``error_message`` describe the step's last error. If the workflow does not
    catch it, the run fails with that error type and message.
    """

    def __init__(self, step_name: str, error_type: str, message: str, attempts: int) -> None:
        self.step_name = step_name
        self.error_type = error_type
        self.error_message = message
        self.attempts = attempts
        super().__init__(
            f"step {step_name!r} failed after {attempts} attempt(s): {error_type}: {message}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.step_name, self.error_type, self.error_message, self.attempts)
        return (type(self), args, self.__dict__)


class WaitTimedOut(AionError, TimeoutError):
    """A wait inside a workflow (signal, approval, waitpoint) reached its timeout."""


class NondeterminismError(AionError):
    """Replaying a workflow's history, the code did something other than what was recorded.

    The message names the workflow, the history position, what history recorded there and what
    the code does now, and what to do. The run is parked ``BLOCKED``. Restore the old code path
    (guard new code with ``ctx.patched()``), then restart the engine (or ``aion unblock ID``);
    the run resumes from where it stopped.

    Args:
        workflow_id: the run's workflow id ("" when the history did not say yet).
        position: the history position (event number) where the run diverged.
        recorded: what history recorded there, e.g. ``step 'charge_card' (#2)``.
        now: what the code does now, e.g. ``calls step 'reserve_stock' (#2)``.
        detail: a sentence that says what diverged better than "history has <recorded>, the
            code now <now>", and replaces it in the message.
        workflow_type: the workflow's type name (shown beside the id).
        remedy: what to do, when it is not the default (restore the code, ``ctx.patched()``).
    """

    #: What to do about a divergence (the end of the message, unless ``remedy`` says otherwise).
    REMEDY = (
        "Did the workflow code change? Use ctx.patched() for new code paths, or restore the old "
        "code, then restart the engine."
    )

    def __init__(
        self,
        workflow_id: str,
        position: int | str,
        recorded: str,
        now: str,
        *,
        detail: str = "",
        workflow_type: str = "",
        remedy: str = "",
    ) -> None:
        self.workflow_id = workflow_id
        self.position = position
        self.recorded = recorded
        self.now = now
        self.detail = detail
        self.workflow_type = workflow_type
        self.remedy = remedy
        super().__init__(self._message())

    def _message(self) -> str:
        what = self.detail or f"history has {self.recorded}, the code now {self.now}"
        return (
            f"workflow {self._who()} diverged at event {self.position}: {what}. "
            f"{self.remedy or self.REMEDY}"
        )

    def _who(self) -> str:
        if not self.workflow_id:  # the history did not start the run: only its type is known
            return repr(self.workflow_type)
        if not self.workflow_type:
            return repr(self.workflow_id)
        return f"{self.workflow_id!r} ({self.workflow_type})"

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.workflow_id, self.position, self.recorded, self.now)
        kwargs = {"detail": self.detail, "workflow_type": self.workflow_type, "remedy": self.remedy}
        return (_rebuild, (type(self), args, kwargs), self.__dict__)


class ActivationFailed(NondeterminismError):
    """An activation of the workflow's code ended in a way that is neither a result nor a
    failure, so the engine parks the run ``BLOCKED`` instead of recording an outcome:

    - the code raised a ``BaseException`` that is not an ``Exception`` and not
      :class:`Cancelled` (``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit``,
      ``GeneratorExit``, ``BaseException`` itself): a bug or a misuse, not the run's outcome;
    - the code awaited something that is not an aion operation (``asyncio.sleep``, a socket):
      there is no event loop inside a workflow, only the driver;
    - the code held the event loop longer than ``Engine(activation_limit=...)`` while its
      history was replayed, or repeatedly while it ran (blocking calls, long computations).

    The message names the workflow, what the code did (the exception, the awaited call or the
    time held) and the code location. The other runs keep running. Fix the code (move blocking
    work into a step), then ``aion unblock ID`` or restart the engine; the run resumes by
    replay. A subclass of :class:`NondeterminismError` because it is handled the same way
    (``recorded`` is empty: nothing recorded is involved).

    Args:
        workflow_id: the run's workflow id ("" when the history did not say yet).
        position: the history position of the event the activation ran after.
        now: what the code did, e.g. ``raised SystemExit: boom at app.py:12 in order``.
        remedy: what to do before unblocking, e.g. ``Fix the code (...)``.
        workflow_type: the workflow's type name (shown beside the id).
    """

    def __init__(
        self,
        workflow_id: str,
        position: int | str,
        now: str,
        remedy: str,
        *,
        workflow_type: str = "",
    ) -> None:
        super().__init__(workflow_id, position, "", now, workflow_type=workflow_type, remedy=remedy)

    def _message(self) -> str:
        return (
            f"workflow {self._who()} {self.now}. {self.remedy}, then "
            f"`aion unblock {self.workflow_id or 'ID'}` (or restart the engine)."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.workflow_id, self.position, self.now, self.remedy)
        kwargs = {"workflow_type": self.workflow_type}
        return (_rebuild, (type(self), args, kwargs), self.__dict__)


# --- people and outside systems --------------------------------------------------------------


class ApprovalRejected(AionError):
    """A person rejected the approval the workflow waited for. The message names them."""


class NoPendingApproval(AionError, LookupError):
    """There is no pending approval to decide (none requested, or it was decided already)."""


class AmbiguousApproval(AionError):
    """Several approvals are pending on this workflow; pass ``approval_id=`` to pick one."""


class InvalidToken(AionError, ValueError):
    """A waitpoint token is forged, malformed, truncated, signed with an unknown key or expired."""


class WaitpointClosed(AionError):
    """The waitpoint was completed already (tokens are one-shot), or its run has finished."""
