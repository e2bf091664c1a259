"""Replay: the pure, I/O-free workflow driver and the workflow-facing API."""

from __future__ import annotations

from ._commands import Command as Command
from ._context import Context as Context
from ._definition import RetryPolicy as RetryPolicy
from ._definition import WorkflowDefinition as WorkflowDefinition
from ._definition import definition_of as definition_of
from ._definition import workflow as workflow
from ._driver import Driver as Driver
from ._driver import DurableFuture as DurableFuture
from ._driver import WorkflowInfo as WorkflowInfo

__all__ = [
    "Command",
    "Context",
    "Driver",
    "DurableFuture",
    "RetryPolicy",
    "WorkflowDefinition",
    "WorkflowInfo",
    "definition_of",
    "workflow",
]
