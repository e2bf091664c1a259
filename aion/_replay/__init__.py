"""Replay: the pure, I/O-free workflow driver and the workflow-facing API."""

from __future__ import annotations

from ._commands import Command as Command
from ._context import Context as Context
from ._definition import RetryPolicy as RetryPolicy
from ._definition import WorkflowDefinition as WorkflowDefinition
from ._definition import definition_of as definition_of
from ._definition import workflow as workflow
from ._driver import Driver as Driver
from ._state import DurableFuture as DurableFuture
from ._state import WorkflowInfo as WorkflowInfo
from ._waits import Approval as Approval
from ._waits import ApprovalState as ApprovalState
from ._waits import Waitpoint as Waitpoint
from ._waits import WaitpointState as WaitpointState
from ._waits import approval_digest as approval_digest

__all__ = [
    "Approval",
    "ApprovalState",
    "Command",
    "Context",
    "Driver",
    "DurableFuture",
    "RetryPolicy",
    "Waitpoint",
    "WaitpointState",
    "WorkflowDefinition",
    "WorkflowInfo",
    "approval_digest",
    "definition_of",
    "workflow",
]
