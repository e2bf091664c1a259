"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API answers is a :class:`Problem`: the status, a stable ``type`` (a URN per
kind, for clients to branch on), a short ``title`` and the ``detail``, which carries the same
clear message the Python API raises. :func:`from_error` is the one mapping of aion's errors to
HTTP statuses.
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from aion import errors

__all__ = ["PROBLEM_TYPE", "Problem", "ProblemBody", "from_error", "problem_response"]

PROBLEM_TYPE = "application/problem+json"


class ProblemBody(msgspec.Struct, frozen=True):
    """An RFC 9457 problem: ``type`` is ``urn:aion:problem:<kind>``."""

    type: str
    title: str
    status: int
    detail: str


class Problem(Exception):
    """Raised by a route to answer with a problem (never logged as a server error)."""

    def __init__(self, status: int, kind: str, detail: str, title: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.title = title or kind.replace("-", " ").capitalize()

    def body(self) -> ProblemBody:
        return ProblemBody(
            type=f"urn:aion:problem:{self.kind}",
            title=self.title,
            status=self.status,
            detail=self.detail,
        )


#: aion's errors → (status, kind); the first match in this order wins (subclasses first).
_MAPPING: tuple[tuple[type[BaseException], int, str], ...] = (
    (errors.WorkflowNotFound, 404, "workflow-not-found"),
    (errors.NoPendingApproval, 409, "no-pending-approval"),
    (errors.AmbiguousApproval, 409, "ambiguous-approval"),
    (errors.WaitpointClosed, 409, "waitpoint-closed"),
    (errors.WorkflowClosed, 409, "workflow-closed"),
    (errors.WorkflowBlocked, 409, "workflow-blocked"),
    (errors.InvalidToken, 403, "invalid-token"),
    (errors.PayloadError, 422, "invalid-payload"),
    (errors.InvalidArgument, 422, "invalid-argument"),
    (errors.EngineStopped, 503, "engine-stopped"),
    (errors.StoreError, 503, "store-unavailable"),
)


def from_error(error: errors.AionError) -> Problem:
    """The problem that answers ``error`` (an unexpected kind is a 500 with its message)."""
    for kind, status, name in _MAPPING:
        if isinstance(error, kind):
            return Problem(status, name, str(error))
    return Problem(500, "internal-error", str(error), title="Internal error")


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode(problem.body()),
        status_code=problem.status,
        media_type=PROBLEM_TYPE,
        headers=headers,
    )
