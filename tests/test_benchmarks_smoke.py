"""The store benchmark runs end to end at tiny sizes and reports every figure (not its speed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import store as store_benchmark
from benchmarks.__main__ import main


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    return store_benchmark.run(quick=True)


def _number(value: Any) -> bool:
    """A figure: a real number >= 0 (tiny quick windows on a loaded machine may count zero)."""
    return type(value) in (int, float) and value >= 0


def test_durable_appends_figures(figures: dict[str, Any]) -> None:
    appends = figures["durable_appends"]
    assert figures["quick"] is True
    assert len(figures["load_average"]) == 2
    baseline = appends["baseline"]["appends_per_s"]
    assert _number(baseline)
    assert "sync=True" in appends["baseline"]["name"]
    levels = appends["levels"]
    assert [level["requesters"] for level in levels] == [1, 100, 1000]
    for level in levels:
        assert _number(level["appends_per_s"])
        assert _number(level["baseline_per_s"]) and _number(level["minimal_group_commit_per_s"])
        assert len(level["runs"]) == len(level["baseline_runs"]) == appends["repeats"]
        for ratio, run, base in zip(
            level["ratio_runs"], level["runs"], level["baseline_runs"], strict=False
        ):
            assert ratio == pytest.approx(run / base)
        assert 0 <= level["latency_ms_p50"] <= level["latency_ms_p99"]
        assert level["appends_per_commit"] is None or level["appends_per_commit"] > 0
    target = appends["target"]
    assert target["requesters"] == 1000 and target["min_ratio"] == 20
    assert target["met"] == (target["ratio"] >= 20)


def test_history_read_figures(figures: dict[str, Any]) -> None:
    reads = figures["history_read"]
    assert reads["events"] == store_benchmark.QUICK["history_events"]
    assert len(reads["store_runs"]) == reads["repeats"] == len(reads["ceiling"]["runs"])
    for value in (
        reads["store_events_per_s"],
        reads["ceiling"]["events_per_s"],
        reads["scan_only_events_per_s"],
        reads["event_bytes_mean"],
    ):
        assert _number(value)
    assert reads["fraction_of_ceiling"] == pytest.approx(
        reads["store_events_per_s"] / reads["ceiling"]["events_per_s"]
    )
    assert reads["target"]["met"] == (reads["store_events_per_s"] >= 1_000_000)


def test_figures_are_json_and_print(
    figures: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    json.dumps(figures)
    store_benchmark.print_report(figures)
    out = capsys.readouterr().out
    assert "durable appends" in out and "history read" in out


def test_command_line_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "--json", "--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "store"
    assert set(report["machine"]) >= {"python", "platform", "cpus", "processor"}
    assert set(report["figures"]) == {"quick", "load_average", "durable_appends", "history_read"}


def test_scaling_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scaling", "--quick"]) == 0
    assert "restart: reopen" in capsys.readouterr().out
