"""Errors raised by supervisors. Each says when it is raised and what to do about it."""

from __future__ import annotations

from aion.errors import AionError

__all__ = [
    "ChildNotFound",
    "ChildStartError",
    "DuplicateChild",
    "SupervisorEscalation",
    "SupervisorNotRunning",
]


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "it returned (a normal exit)"
    return f"it raised {type(error).__name__}: {error}"


class SupervisorEscalation(AionError):
    """A supervisor exceeded its restart intensity, stopped its children and gave up.

    Raised out of :meth:`Supervisor.run`, so the parent supervisor sees an abnormal exit of the
    supervisor child (and applies its own strategy and intensity), and a root supervisor's
    caller sees the failure. ``__cause__`` is the last child's exception. Fix what makes the
    child crash; raise ``max_restarts``/``max_seconds`` only if the crashes are expected.

    Attributes:
        supervisor: the name of the supervisor that gave up.
        child_id: the child whose exit went past the limit.
        reason: the exception of that exit (``None`` if a permanent child returned).
        restarts: restarts counted inside the window, including the refused one.
        max_restarts: the supervisor's limit.
        max_seconds: the supervisor's window.
    """

    def __init__(
        self,
        supervisor: str,
        child_id: str,
        reason: BaseException | None,
        *,
        restarts: int,
        max_restarts: int,
        max_seconds: float,
    ) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.reason = reason
        self.restarts = restarts
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child_id!r} exited and {_describe(reason)};"
            f" restarting it would make {restarts} restarts within {max_seconds:g} s (the limit"
            f" is {max_restarts}). Its children were stopped and the failure passed to its"
            " parent. Fix the cause of the crashes (see __cause__), or raise max_restarts /"
            " max_seconds if they are expected."
        )


class ChildStartError(AionError):
    """A child raised before it called ``ctx.started()``.

    Raised by :meth:`Supervisor.run` for one of the initial children (the children started
    before it were stopped again, in reverse order) and by :meth:`Supervisor.start_child`.
    ``__cause__`` is the child's exception.

    Attributes:
        supervisor: the supervisor's name.
        child_id: the child that failed to start.
    """

    def __init__(self, supervisor: str, child_id: str, reason: BaseException) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        super().__init__(
            f"supervisor {supervisor!r} could not start child {child_id!r}: {_describe(reason)}"
            " before calling ctx.started(). See __cause__ for the child's traceback."
        )


class ChildNotFound(AionError, LookupError):
    """:meth:`Supervisor.terminate_child` named no current child.

    The child may have stopped for good already (temporary and dynamic children are removed
    when they do). Check :meth:`Supervisor.report`.
    """

    def __init__(self, supervisor: str, child_id: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        super().__init__(f"supervisor {supervisor!r} has no child {child_id!r}")


class DuplicateChild(AionError, ValueError):
    """A child spec reuses the id of a current child; ids must be unique within a supervisor."""

    def __init__(self, supervisor: str, child_id: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        super().__init__(
            f"supervisor {supervisor!r} already has a child {child_id!r}; give each child a"
            " unique id"
        )


class SupervisorNotRunning(AionError, RuntimeError):
    """A request (``start_child``, ``terminate_child``) reached a supervisor that is not running.

    It was never started, has shut down, or is shutting down or escalating. Start it with
    :meth:`Supervisor.run` first; after a shutdown, run it again.
    """

    def __init__(self, supervisor: str) -> None:
        self.supervisor = supervisor
        super().__init__(f"supervisor {supervisor!r} is not running")
