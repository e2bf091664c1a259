"""The scale-out benchmark runs end to end at tiny sizes on PostgreSQL (not its speed)."""

from __future__ import annotations

from typing import Any

from benchmarks import scaleout
from tests import _postgres


def test_scaleout_quick_reports_every_figure() -> None:
    _postgres.require()
    figures: dict[str, Any] = scaleout.run(quick=True)
    assert figures["quick"] is True and "skipped" not in figures
    rows = figures["processes"]["1"]
    assert set(rows) == {str(c) for c in scaleout.QUICK["concurrency"]}
    for row in rows.values():
        assert "error" not in row, row
        assert row["workflows_per_s"] >= 0 and len(row["runs"]) == scaleout.QUICK["repeats"]
    for count in scaleout.QUICK["processes"]:
        row = figures["processes"][str(count)]
        assert "error" not in row, row
        assert row["workflows_per_s"] > 0 and len(row["per_process"][0]) == count
    takeover = figures["takeover"]
    assert takeover["lease_ttl_s"] == scaleout.QUICK["lease_ttl"]
    assert 0 < takeover["from_kill_s"] < 30
    assert figures["target"]["met"] is None  # never judged on quick sizes
