"""Helpers for testing code that uses aion.

- :class:`ManualClock`: time that moves only when told to (or jumps to the next timer).
- :func:`replay`: replay a recorded history against the current code.
- :func:`run_workflow` / :func:`check_determinism`: run a workflow under a scripted schedule of
  signals on an in-memory engine and check that its history replays.
- ``aion.testing.strategies``: Hypothesis strategies (signal schedules).
- A pytest plugin (``aion_engine`` fixture), registered automatically on install.

See docs/testing.md for a complete example.
"""

from __future__ import annotations

from aion import _public
from aion._clock import ManualClock as ManualClock

from ._harness import RunOutcome as RunOutcome
from ._harness import SignalAt as SignalAt
from ._harness import check_determinism as check_determinism
from ._harness import run_workflow as run_workflow
from ._replay import ReplayResult as ReplayResult
from ._replay import replay as replay

__all__ = [
    "ManualClock",
    "ReplayResult",
    "RunOutcome",
    "SignalAt",
    "check_determinism",
    "replay",
    "run_workflow",
]

# Tracebacks and reprs name the public path (``aion.testing.ManualClock``).
_public.publish(globals(), __all__, __name__)
