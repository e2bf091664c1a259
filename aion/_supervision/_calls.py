"""What the supervisor's control loop receives from outside: requests, answered by an event.

Together with a child instance's exit notice (:class:`~._children.Instance`), these are all the
messages in a supervisor's inbox; the loop handles them one at a time, as an OTP supervisor
process handles its mailbox.
"""

from __future__ import annotations

import anyio

from ._spec import ChildSpec

__all__ = ["Call", "StartChild", "TerminateChild"]


class Call:
    """A request from outside the loop, answered through ``reply``."""

    __slots__ = ("error", "reply")

    def __init__(self) -> None:
        self.reply = anyio.Event()
        self.error: BaseException | None = None


class StartChild(Call):
    """``Supervisor.start_child``: add ``spec`` and start it; ``child_error`` if it failed."""

    __slots__ = ("child_error", "spec")

    def __init__(self, spec: ChildSpec) -> None:
        super().__init__()
        self.spec = spec
        self.child_error: Exception | None = None


class TerminateChild(Call):
    """``Supervisor.terminate_child``: stop the child ``child_id`` and remove it."""

    __slots__ = ("child_id",)

    def __init__(self, child_id: str) -> None:
        super().__init__()
        self.child_id = child_id
