"""What a driver is running now, published for a watchdog on another thread.

Python cannot pre-empt workflow code: a coroutine that loops on the CPU or calls ``time.sleep``
holds the event loop, and every other run waits. Drivers publish each activation of workflow
code here (who, since when); the engine's watchdog thread reads it to report code that holds
the loop, and writes back the code location it saw. The drivers themselves time each activation
and park a run that exceeds the limit (see :class:`~aion.errors.ActivationFailed`).

Nothing here starts a thread or does I/O: the replay layer stays pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._definition import WorkflowDefinition
    from ._state import WorkflowInfo

__all__ = ["LIVE_OVERRUNS", "Activation", "ActivationWatch", "Running"]

#: A run is parked once this many of its live activations exceeded the limit (one driver's
#: lifetime). One activation past the limit while its history is replayed parks it at once:
#: the replay runs code that ran live before, so the overrun has happened twice.
LIVE_OVERRUNS = 3


class Running(Protocol):
    """What a watchdog reads of the driver running an activation (a :class:`~._driver.Driver`;
    a protocol, so that this module need not import the driver, which imports it)."""

    @property
    def info(self) -> WorkflowInfo | None:
        """The run's identity (None until its history has started it)."""

    @property
    def definition(self) -> WorkflowDefinition:
        """The workflow the run runs."""

    @property
    def in_replay(self) -> bool:
        """True while the run's history is replayed."""


#: One activation in progress: (the driver running workflow code, since when in
#: ``time.monotonic()`` seconds, its ordinal). A plain tuple: made on every activation.
Activation = tuple[Running, float, int]


class ActivationWatch:
    """The slot drivers of one engine publish their activations in.

    Written on the event loop's thread, read by the watchdog thread. Each field is replaced by
    one assignment of an immutable value, so a reader sees a consistent (possibly just
    outdated) value without a lock.

    Args:
        limit: seconds an activation may hold the event loop; None: no limit (and no reports).
    """

    __slots__ = ("current", "limit", "ordinal", "seen")

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        #: The activation in progress, or None between activations.
        self.current: Activation | None = None
        #: (ordinal, code location) the watchdog last saw an activation at.
        self.seen: tuple[int, str] | None = None
        #: Activations begun so far (the driver sets ``current`` and this inline: it is on the
        #: path of every event).
        self.ordinal = 0

    def seen_at(self, ordinal: int) -> str | None:
        """Where the watchdog saw activation ``ordinal`` running, if it looked."""
        seen = self.seen
        return seen[1] if seen is not None and seen[0] == ordinal else None
