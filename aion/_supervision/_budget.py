"""The restart budget: how many restarts fit in a sliding window, and the wait before each.

One rule, used wherever something restarts: a supervisor's intensity over all its children, a
child's own backoff, a crashed run actor's crash loop detection.
"""

from __future__ import annotations

import random

from ._spec import Backoff

__all__ = ["RestartBudget"]

# Jitter for budgets made without an rng: one shared generator, since a Random's state is ~2.5 KB
# and a budget may exist for each of thousands of crashed actors.
_SHARED_RNG = random.Random()


class RestartBudget:
    """OTP restart intensity (at most ``max_restarts`` within ``window`` seconds) plus backoff.

    Call :meth:`record` at each restart; it answers whether the restart is still within the
    budget. Then :meth:`delay` says how long to wait before it, from the ``backoff`` policy and
    the number of earlier restarts still in the window: with the default :class:`Backoff` the
    first restart of a quiet period is immediate and a crash loop slows down.

    The window slides: a restart older than ``window`` seconds no longer counts, one exactly
    ``window`` seconds old still does (as in OTP). Times are whatever clock the caller uses; a
    clock stepping backwards does no harm beyond keeping its later-dated restarts counted longer.

    It is small (a few slots and a list of at most the restarts inside the window), so one can be
    kept per crashed run actor: make it on the first crash, :meth:`reset` it (or drop it) when an
    operator's retry should start afresh.

    Args:
        max_restarts: restarts allowed within the window; ``0`` refuses the first one.
        window: the length of the sliding window, in seconds (OTP period).
        backoff: delays between restarts; default :attr:`Backoff.NONE` (never wait).
        rng: the source of backoff jitter; seed it for reproducible delays. Default: a generator
            shared by every budget made without one.

    Raises:
        ValueError: ``max_restarts`` is negative or ``window`` is not positive.
    """

    __slots__ = ("_backoff", "_max_restarts", "_rng", "_times", "_window")

    def __init__(
        self,
        max_restarts: int,
        window: float,
        backoff: Backoff = Backoff.NONE,
        rng: random.Random | None = None,
    ) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, not {max_restarts}")
        if not window > 0:
            raise ValueError(f"window must be > 0, not {window}")
        self._max_restarts = max_restarts
        self._window = float(window)
        self._backoff = backoff
        self._rng = _SHARED_RNG if rng is None else rng
        self._times: list[float] = []  # the restarts inside the window, in the order recorded

    def __repr__(self) -> str:
        return (
            f"<RestartBudget {len(self._times)} of {self._max_restarts} within {self._window:g} s>"
        )

    @property
    def max_restarts(self) -> int:
        """Restarts allowed within the window."""
        return self._max_restarts

    @property
    def window(self) -> float:
        """The length of the sliding window, in seconds."""
        return self._window

    @property
    def count(self) -> int:
        """Restarts inside the window as of the last :meth:`record`, that one included."""
        return len(self._times)

    @property
    def recent(self) -> tuple[float, ...]:
        """The times of the restarts counted by :attr:`count`, in the order recorded."""
        return tuple(self._times)

    def record(self, now: float) -> bool:
        """Note a restart at ``now``; whether it is within the budget.

        Returns:
            ``False`` once more than ``max_restarts`` restarts (this one included) fall within
            ``window`` seconds up to ``now``: give up (escalate, park) instead of restarting.
        """
        cutoff = now - self._window  # a restart exactly `window` ago still counts (OTP)
        times = self._times
        if times and min(times) < cutoff:
            times = self._times = [t for t in times if t >= cutoff]
        times.append(now)
        return len(times) <= self._max_restarts

    def delay(self) -> float:
        """Seconds to wait before the restart last recorded.

        The backoff for the restarts recorded before it that are still inside the window (see
        :meth:`Backoff.delay`); ``0.0`` with the default :attr:`Backoff.NONE`.
        """
        return self._backoff.delay(len(self._times) - 1, self._rng)

    def reset(self) -> None:
        """Forget every restart: the next one is the first of a quiet period."""
        self._times = []
