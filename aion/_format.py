"""Readable text for workflows and histories (the CLI and the demo print these)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from aion._engine import WorkflowDescription
from aion._engine._types import PENDING_KINDS
from aion.store import Status

__all__ = ["describe_text", "history_table", "jsonable", "table", "waiting", "when"]


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
        lines.append(("detail", desc.detail.rstrip().replace("\n", "\n" + " " * 12)))
    if desc.status is Status.COMPLETED:
        lines.append(("result", json.dumps(jsonable(desc.result))))
    if desc.error:
        lines.append(("error", desc.error))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def history_table(events: Sequence[Any]) -> str:
    """A table of history events: seq, time, type and a short summary of the data."""
    rows = [(str(e.seq), when(e.recorded_at), e.type, _summary(e.data)) for e in events]
    return table(("SEQ", "RECORDED", "EVENT", "DETAILS"), rows)


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
