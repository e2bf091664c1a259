"""The HTTP benchmark runs end to end at tiny sizes (not its speed)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="the HTTP benchmark needs the extra aion[server]")
pytest.importorskip("httpx", reason="the HTTP benchmark's client is httpx")

from benchmarks import http


def test_http_quick_reports_every_figure() -> None:
    figures: dict[str, Any] = http.run(quick=True)
    assert figures["quick"] is True and "skipped" not in figures
    assert figures["runs_stored"] == http.QUICK["runs"]
    for side in ("http", "in_process"):
        (only,) = figures[side]
        for what in ("signal", "list_page"):
            assert only[what]["n"] > 0 and only[what]["p50_ms"] > 0
    assert set(figures["targets"]) == set(http.TARGETS)
