"""The engine: run actors, the step executor, and the public ``Engine`` API."""

from __future__ import annotations

from ._datadir import PAYLOAD_LIMIT_FILE as PAYLOAD_LIMIT_FILE
from ._engine import Engine as Engine
from ._engine import events_of as events_of
from ._policy import ApprovalPolicy as ApprovalPolicy
from ._policy import ApprovalRule as ApprovalRule
from ._steps import current_step as current_step
from ._types import HistoryEvent as HistoryEvent
from ._types import PendingApproval as PendingApproval
from ._types import StepFailure as StepFailure
from ._types import StepInfo as StepInfo
from ._types import WaitpointInfo as WaitpointInfo
from ._types import WorkflowDescription as WorkflowDescription
from ._types import WorkflowHandle as WorkflowHandle
from ._views import Reader as Reader
from ._views import history_event as history_event
from ._views import pending_approval as pending_approval
from ._views import refuse_completion as refuse_completion
from ._views import waitpoint_info as waitpoint_info

__all__ = [
    "PAYLOAD_LIMIT_FILE",
    "ApprovalPolicy",
    "ApprovalRule",
    "Engine",
    "HistoryEvent",
    "PendingApproval",
    "WaitpointInfo",
    "Reader",
    "StepFailure",
    "StepInfo",
    "WorkflowDescription",
    "WorkflowHandle",
    "current_step",
    "events_of",
    "history_event",
    "pending_approval",
    "refuse_completion",
    "waitpoint_info",
]
