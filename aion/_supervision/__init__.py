"""OTP-style supervision: supervisors that start, restart and stop child tasks.

Generic: it knows nothing of workflows. The engine builds its supervision tree (store writer,
timer wheel, step executor, run-actor supervisor) from these parts. See ``docs/supervision.md``.
"""

from __future__ import annotations

from ._budget import RestartBudget as RestartBudget
from ._dynamic import DynamicSupervisor as DynamicSupervisor
from ._errors import ChildNotFound as ChildNotFound
from ._errors import ChildStartError as ChildStartError
from ._errors import DuplicateChild as DuplicateChild
from ._errors import SupervisorEscalation as SupervisorEscalation
from ._errors import SupervisorNotRunning as SupervisorNotRunning
from ._spec import Backoff as Backoff
from ._spec import ChildContext as ChildContext
from ._spec import ChildReport as ChildReport
from ._spec import ChildSpec as ChildSpec
from ._spec import ChildState as ChildState
from ._spec import Restart as Restart
from ._spec import Shutdown as Shutdown
from ._spec import Strategy as Strategy
from ._supervisor import Supervisor as Supervisor

__all__ = [
    "Backoff",
    "ChildContext",
    "ChildNotFound",
    "ChildReport",
    "ChildSpec",
    "ChildStartError",
    "ChildState",
    "DuplicateChild",
    "DynamicSupervisor",
    "Restart",
    "RestartBudget",
    "Shutdown",
    "Strategy",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorNotRunning",
]
