"""Readable text for workflows and histories (the CLI and the demo print these)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from aion._engine import StepFailure, WorkflowDescription
from aion._engine._types import PENDING_KINDS
from aion.store import Status

__all__ = [
    "describe_text",
    "history_table",
    "jsonable",
    "step_failure_line",
    "table",
    "waiting",
    "when",
]


def describe_text(desc: WorkflowDescription) -> str:
    """A readable block for one workflow."""
    lines = [
        ("workflow", desc.workflow_id),
        ("type", desc.workflow_type),
        ("tenant", desc.tenant),
        ("status", desc.status.value),
        ("run", desc.run_id),
        ("started", when(desc.started_at)),
        ("closed", when(desc.closed_at)),
        ("events", str(desc.history_length)),
        ("waiting on", waiting(desc) or "-"),
    ]
    if desc.reason:
        lines.append(("reason", desc.reason))
    if desc.detail:
        lines.append(("detail", desc.detail.rstrip()))
    if desc.status is Status.COMPLETED:
        lines.append(("result", json.dumps(jsonable(desc.result))))
    if desc.error:
        lines.append(("error", desc.error))
    failure = desc.last_step_failure
    if failure is not None:
        lines.append(("step failure", step_failure_line(failure)))
        if failure.traceback:
            lines.append(("traceback", failure.traceback.rstrip()))
    width = max(len(k) for k, _ in lines)
    indent = "\n" + " " * (width + 2)  # continuation lines of a value line up under it
    return "\n".join(f"{k.ljust(width)}  " + v.replace("\n", indent) for k, v in lines)


def step_failure_line(failure: StepFailure) -> str:
    """One line about a failed step attempt: which, when, what, and what happens next."""
    if failure.will_retry:
        then = "will retry"
    elif failure.retryable:
        then = "failed for good"
    else:
        then = "failed for good: not retryable"
    return (
        f"{failure.step_name!r} (step {failure.step_seq}) attempt {failure.attempt} at "
        f"{when(failure.failed_at)}: {failure.error_type}: {failure.message} ({then})"
    )


def history_table(events: Sequence[Any], *, tracebacks: bool = True) -> str:
    """A table of history events: seq, time, type and a short summary of the data.

    A failure's recorded traceback (``step.failed``, ``workflow.failed``) is printed under its
    row, indented, unless ``tracebacks`` is false.
    """
    rows = [(str(e.seq), when(e.recorded_at), e.type, _summary(e.data)) for e in events]
    text = table(("SEQ", "RECORDED", "EVENT", "DETAILS"), rows)
    if not tracebacks or not rows:
        return text
    lines = text.split("\n")
    out = lines[:1]
    for line, event in zip(lines[1:], events, strict=True):
        out.append(line)
        tb = event.data.get("traceback")
        if isinstance(tb, str) and tb.strip():
            out += [f"    {t}".rstrip() for t in tb.rstrip().split("\n")]
    return "\n".join(out)


def when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def waiting(desc: WorkflowDescription) -> str:
    return ", ".join(
        f"{PENDING_KINDS.get(kind, kind)} {name}"
        for kind, names in desc.pending.items()
        for name in names
    )


def _summary(data: dict[str, Any]) -> str:
    parts = []
    for key, value in data.items():
        if value in (None, "", b"", {}, []) or key in ("tenant", "workflow_id", "run_id"):
            continue
        if key == "traceback":  # shown in full under the row, not cut to 40 characters
            continue
        text = json.dumps(jsonable(value))
        parts.append(f"{key}={text if len(text) <= 40 else text[:37] + '...'}")
    return " ".join(parts)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def jsonable(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=repr)
