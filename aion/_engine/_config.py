"""What the run-actor system is given: a frozen configuration and a small services interface.

The actors know nothing of :class:`aion.Engine`. The engine builds a :class:`RuntimeConfig`
from its options and hands the runtime an object with the :class:`Services` below; a test can
hand it any other such object.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aion._replay import WorkflowDefinition
from aion._replay._watch import ActivationWatch
from aion.store import EventStore, InboxCommand, TimerRow, WorkflowRecord

from ._messages import Message, Outcome
from ._policy import ApprovalPolicy
from ._steps import StepJob

__all__ = ["RuntimeConfig", "Services"]


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """The engine's options that the run actors read (checked by the engine)."""

    max_payload_bytes: int
    code_version: str | None = None
    approval_policy: ApprovalPolicy | None = None
    #: A run whose actor crashes more than this many times within ``restart_window`` seconds
    #: is parked BLOCKED.
    max_restarts: int = 5
    restart_window: float = 60.0
    max_resident_runs: int = 10_000
    max_resident_bytes: int = 64 * 2**20
    activation_workers: int = 256


class Services(Protocol):
    """What the run actors use of the world around them."""

    @property
    def store(self) -> EventStore:
        """The store (raises :class:`aion.EngineStopped` when there is none)."""

    def now(self) -> datetime:
        """The clock's time (UTC)."""

    def monotonic(self) -> float:
        """The clock's time in seconds, for restart windows."""

    async def sleep(self, seconds: float) -> None:
        """Sleep on the clock."""

    def busy(self) -> AbstractContextManager[object]:
        """Held while a run is processed (a manual clock does not auto-advance meanwhile)."""

    def definition(self, workflow_type: str) -> WorkflowDefinition | None:
        """The registered workflow definition of this type, if any."""

    def sign_waitpoint(
        self,
        tenant: str,
        workflow_id: str,
        waitpoint_id: str,
        created_at: datetime,
        expires_at: datetime | None,
        kid: str | None,
    ) -> tuple[str, str]:
        """(key id, token) of a waitpoint; ``kid``: the key that signed it first (replay)."""

    @property
    def activation_watch(self) -> ActivationWatch | None:
        """Where drivers publish their activations for the watchdog (None: no watchdog)."""

    def hold_timer(self, row: TimerRow) -> None:
        """Fire ``row`` when it comes due (a ``TimerDue`` message to its run)."""

    def release_timer(self, row: TimerRow) -> None:
        """Forget ``row`` (cancelled, or its run closed)."""

    def submit_step(self, job: StepJob) -> None:
        """Run a step attempt; ``job.done`` is called with its outcome."""

    def run_closed(self, record: WorkflowRecord, outcome: Outcome) -> None:
        """A run closed (recorded): wake whoever waits for its result."""

    def inbox_message(self, command: InboxCommand) -> Message | str:
        """The message that applies an inbox command, or why it can never apply."""

    def spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``work`` in the background; False when the engine is stopping (not run)."""

    def drives(self, key: tuple[str, str]) -> bool:
        """Whether this engine drives the run (not another engine sharing the store)."""

    def same_partition(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        """Whether two runs are driven together (always, unless the store is shared)."""
