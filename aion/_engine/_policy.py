"""Approval policies: steps that wait for a person before they run at all."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from aion.errors import InvalidArgument

__all__ = ["ApprovalPolicy", "ApprovalRule"]


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """Hold steps whose name matches ``pattern`` (a glob such as ``"payments.*"``) for approval.

    Args:
        pattern: glob over step names (``ctx.step(..., name="payments.transfer")``).
        tenant: only runs of this tenant (a glob; ``None``: every tenant).
        workflow_type: only runs of this workflow type (a glob; ``None``: every type).
    """

    pattern: str
    tenant: str | None = None
    workflow_type: str | None = None
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        globs = (self.pattern, self.tenant or "*", self.workflow_type or "*")
        for glob in globs:
            if not isinstance(glob, str) or not glob:
                raise InvalidArgument(f"an approval rule's patterns are non-empty strings: {self}")
        compiled = tuple(re.compile(fnmatch.translate(g)) for g in globs)
        object.__setattr__(self, "_compiled", compiled)

    def applies(self, step_name: str, tenant: str, workflow_type: str) -> bool:
        name, ten, wf = self._compiled
        return bool(name.match(step_name) and ten.match(tenant) and wf.match(workflow_type))


class ApprovalPolicy:
    """Which steps need a person's approval before they run (``Engine(approval_policy=...)``).

    A held step does not run, does not count an attempt, and neither retries nor fails while
    it waits; ``engine.approve`` lets it start, ``engine.reject`` fails it with
    ``aion.ApprovalRejected`` at the workflow's ``await``. A policy applies when a step is
    scheduled: changing the policy never changes steps already held or already running.
    """

    def __init__(self, rules: Iterable[ApprovalRule | str] = ()) -> None:
        self.rules: tuple[ApprovalRule, ...] = tuple(
            r if isinstance(r, ApprovalRule) else ApprovalRule(r) for r in rules
        )
        self._cache: dict[tuple[str, str, str], bool] = {}

    def requires(self, step_name: str, tenant: str, workflow_type: str) -> bool:
        """Whether a step of this name, tenant and workflow type waits for approval."""
        if not self.rules:
            return False
        key = (step_name, tenant, workflow_type)
        hit = self._cache.get(key)
        if hit is None:
            hit = any(rule.applies(*key) for rule in self.rules)
            if len(self._cache) < 10_000:
                self._cache[key] = hit
        return hit

    def __repr__(self) -> str:
        return f"ApprovalPolicy({list(self.rules)!r})"
