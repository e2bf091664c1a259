"""The in-memory state of one run actor (its mailbox and, while resident, its replay driver)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aion._replay import Driver
from aion._supervision import RestartBudget
from aion.store import WorkflowRecord

from ._messages import Message

__all__ = ["Actor", "Key"]

Key = tuple[str, str]  # (tenant, workflow id)


@dataclass(slots=True, eq=False)
class Actor:
    """A run with work, or resident for the next one. Not a task: a worker processes it."""

    key: Key
    mailbox: deque[Message] = field(default_factory=deque)
    driver: Driver | None = None
    record: WorkflowRecord | None = None
    head: int = 0  # the sequence number of its last event (recorded or in this round)
    queued: bool = False  # in the ready queue
    busy: bool = False  # a worker is processing it
    steps_in_flight: int = 0
    restarts: RestartBudget | None = None  # made at its first crash
    blocked: bool = False
    since: int = 1  # the sequence number of its current run's WorkflowStarted
    charged: int = 0  # the bytes it is counted for in the resident set's budget
    trace: str = ""  # its run's traceparent (WorkflowStarted.trace): its spans' parent

    def drop_driver(self) -> None:
        """Forget the replay driver (the run restarts by replay, is parked or leaves memory),
        taking its reference cycles apart so that its memory is freed now."""
        driver, self.driver = self.driver, None
        if driver is not None:
            driver.discard()

    @property
    def idle(self) -> bool:
        """Nothing to do and nothing under way: the run may be evicted. A run being processed
        is busy even with an empty mailbox: its write may be in flight, and the steps it
        dispatches after the commit belong to this actor (an evicted copy would replay and
        dispatch them again)."""
        return not (self.mailbox or self.steps_in_flight or self.queued or self.busy)

    @property
    def running(self) -> bool:
        """Its current run (after continue-as-new: the successor) is open."""
        return self.driver is not None and self.driver.outcome is None

    @property
    def finished(self) -> bool:
        """The run closed and its close is recorded (a crash drops the driver instead)."""
        return (
            self.driver is not None and self.record is not None and self.record.status.is_terminal
        )
