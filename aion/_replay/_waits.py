"""Waits for people and outside systems: approvals and waitpoints, as the driver tracks them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state import DurableFuture

__all__ = ["Approval", "ApprovalState", "Waitpoint", "WaitpointState", "approval_digest"]


@dataclass(frozen=True, slots=True)
class Approval:
    """A positive decision: what ``await ctx.approval(...)`` returns."""

    user: str
    comment: str | None
    decided_at: datetime


def approval_digest(action: str, details: bytes) -> str:
    """What an approval is bound to: the action (or step name) and its encoded details (or
    arguments). A decision recorded for one digest never applies to another."""
    h = hashlib.sha256()
    h.update(action.encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
    h.update(details)
    return "sha256:" + h.hexdigest()


@dataclass(slots=True)
class ApprovalState:
    """A pending approval of the run: requested by the code, or a step held by the policy."""

    approval_id: str
    seq: int  # approval number (0 for a held step)
    action: str  # what the code asked approval for, or the held step's name
    details: bytes
    digest: str
    timeout_at: datetime | None
    step_seq: int = 0  # > 0: the step the engine's approval policy holds
    requested_at: datetime | None = None  # the recorded time of its ApprovalRequested
    future: DurableFuture | None = None
    timer: Any = None
    closed_as: str = ""  # "timed_out" or "closed" (withdrawn by a cancellation)


@dataclass(slots=True)
class WaitpointState:
    """A waitpoint of the run and what happened to it."""

    waitpoint_id: str
    seq: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    kid: str
    token: str
    fingerprint: str
    future: DurableFuture
    completed: bool = False
    expired: bool = False
    timer: Any = None

    @property
    def pending(self) -> bool:
        return not self.completed and not self.expired


class Waitpoint:
    """What ``await ctx.waitpoint(name)`` returns: a token to hand out, and ``wait()``.

    ``token`` is an HMAC-signed string naming this waitpoint; pass it to an outside system (from
    a step), which completes the waitpoint with ``engine.complete_waitpoint(token, payload)``.
    A completion that arrives before ``wait()`` is kept.
    """

    __slots__ = ("_state",)

    def __init__(self, state: WaitpointState) -> None:
        self._state = state

    @property
    def token(self) -> str:
        return self._state.token

    @property
    def waitpoint_id(self) -> str:
        return self._state.waitpoint_id

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def expires_at(self) -> datetime | None:
        return self._state.expires_at

    def wait(self) -> DurableFuture:
        """The payload the waitpoint is completed with.

        Raises:
            WaitTimedOut: (when awaited) the waitpoint expired before it was completed.
        """
        return self._state.future

    def __repr__(self) -> str:
        return f"Waitpoint({self.name!r}, id={self.waitpoint_id!r})"
