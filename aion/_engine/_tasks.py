"""Small helpers for the engine's supervised services and task groups."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import anyio

__all__ = ["Started", "leaves", "one_error"]


class Started:
    """A task status that tells ``_supervise`` (not only ``TaskGroup.start``) about the start."""

    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started

    def started(self, value: object = None) -> None:
        self._on_started()


@contextlib.contextmanager
def one_error() -> Iterator[None]:
    """A service's task group failed: report its first error, not the group (the supervisor
    and the embedding service see what went wrong)."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = [e for e in leaves(group) if isinstance(e, Exception)]
        if errors:
            raise errors[0] from group
        raise


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in a group, cancellations left out."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += leaves(exc)
        elif not isinstance(exc, anyio.get_cancelled_exc_class()):
            out.append(exc)
    return out
