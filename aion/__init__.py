"""aion: an embedded durable-workflow engine for Python."""

from __future__ import annotations

from . import _public
from ._client import Client as Client
from ._engine import ApprovalPolicy as ApprovalPolicy
from ._engine import ApprovalRule as ApprovalRule
from ._engine import Engine as Engine
from ._engine import HistoryEvent as HistoryEvent
from ._engine import PendingApproval as PendingApproval
from ._engine import StepFailure as StepFailure
from ._engine import StepInfo as StepInfo
from ._engine import WaitpointInfo as WaitpointInfo
from ._engine import WorkflowDescription as WorkflowDescription
from ._engine import WorkflowHandle as WorkflowHandle
from ._engine import current_step as current_step
from ._recovery import RecoveryReport as RecoveryReport
from ._recovery import Repair as Repair
from ._replay import Approval as Approval
from ._replay import Context as Context
from ._replay import RetryPolicy as RetryPolicy
from ._replay import Waitpoint as Waitpoint
from ._replay import WorkflowInfo as WorkflowInfo
from ._replay import workflow as workflow
from ._tokens import KeyRing as KeyRing
from .errors import AionError as AionError
from .errors import AmbiguousApproval as AmbiguousApproval
from .errors import ApprovalRejected as ApprovalRejected
from .errors import Cancelled as Cancelled
from .errors import EngineStopped as EngineStopped
from .errors import InvalidArgument as InvalidArgument
from .errors import InvalidToken as InvalidToken
from .errors import NondeterminismError as NondeterminismError
from .errors import NoPendingApproval as NoPendingApproval
from .errors import PayloadError as PayloadError
from .errors import StepError as StepError
from .errors import StoreLocked as StoreLocked
from .errors import WaitpointClosed as WaitpointClosed
from .errors import WaitTimedOut as WaitTimedOut
from .errors import WorkflowBlocked as WorkflowBlocked
from .errors import WorkflowCancelled as WorkflowCancelled
from .errors import WorkflowClosed as WorkflowClosed
from .errors import WorkflowFailed as WorkflowFailed
from .errors import WorkflowNotFound as WorkflowNotFound
from .store import Page as Page
from .store import Status as Status

__version__ = "0.1.0.dev0"

__all__ = [
    "AionError",
    "AmbiguousApproval",
    "Approval",
    "ApprovalPolicy",
    "ApprovalRejected",
    "ApprovalRule",
    "Cancelled",
    "Client",
    "Context",
    "Engine",
    "EngineStopped",
    "HistoryEvent",
    "InvalidArgument",
    "InvalidToken",
    "KeyRing",
    "NoPendingApproval",
    "NondeterminismError",
    "Page",
    "PayloadError",
    "PendingApproval",
    "RecoveryReport",
    "Repair",
    "RetryPolicy",
    "Status",
    "StepError",
    "StepFailure",
    "StepInfo",
    "StoreLocked",
    "WaitTimedOut",
    "Waitpoint",
    "WaitpointClosed",
    "WaitpointInfo",
    "WorkflowBlocked",
    "WorkflowCancelled",
    "WorkflowClosed",
    "WorkflowDescription",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFound",
    "current_step",
    "workflow",
]

# Tracebacks and reprs name the public path (``aion.WorkflowNotFound``), not the private module.
_public.publish(globals(), __all__, __name__)
