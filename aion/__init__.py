"""aion: an embedded durable-workflow engine for Python."""

from __future__ import annotations

from .errors import AionError as AionError
from .errors import AmbiguousApproval as AmbiguousApproval
from .errors import ApprovalRejected as ApprovalRejected
from .errors import Cancelled as Cancelled
from .errors import InvalidToken as InvalidToken
from .errors import NondeterminismError as NondeterminismError
from .errors import NoPendingApproval as NoPendingApproval
from .errors import PayloadError as PayloadError
from .errors import WaitpointClosed as WaitpointClosed
from .errors import WaitTimedOut as WaitTimedOut
from .errors import WorkflowCancelled as WorkflowCancelled
from .errors import WorkflowClosed as WorkflowClosed
from .errors import WorkflowFailed as WorkflowFailed
from .errors import WorkflowNotFound as WorkflowNotFound
from .store import Status as Status

__version__ = "0.1.0.dev0"

__all__ = [
    "AionError",
    "AmbiguousApproval",
    "ApprovalRejected",
    "Cancelled",
    "InvalidToken",
    "NoPendingApproval",
    "NondeterminismError",
    "PayloadError",
    "Status",
    "WaitTimedOut",
    "WaitpointClosed",
    "WorkflowCancelled",
    "WorkflowClosed",
    "WorkflowFailed",
    "WorkflowNotFound",
]
