"""The recovery benchmark runs end to end at tiny sizes and reports every figure (not its speed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import recovery as recovery_benchmark
from benchmarks.__main__ import NAMES, main

TINY = {"runs": 60, "repeats": 2, "scan_repeats": 2, "batch": 25}


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    quick = dict(recovery_benchmark.QUICK)
    recovery_benchmark.QUICK.update(TINY)
    try:
        return recovery_benchmark.run(quick=True)
    finally:
        recovery_benchmark.QUICK.clear()
        recovery_benchmark.QUICK.update(quick)


def _number(value: Any) -> bool:
    """A figure: a real number >= 0."""
    return type(value) in (int, float) and value >= 0


def test_registered_with_the_runner() -> None:
    assert "recovery" in NAMES


def test_sizes_and_setup(figures: dict[str, Any]) -> None:
    assert figures["quick"] is True
    assert figures["runs"] == 60 and figures["timer_parked"] == figures["signal_parked"] == 30
    assert figures["repeats"] == 2 and len(figures["load_average"]) == 2
    setup = figures["setup"]
    assert setup["cloned_from_engine_runs"] is True and setup["durable"] is False
    for name in ("seconds", "runs_per_s", "data_mb"):
        assert _number(setup[name]) and setup[name] > 0


def test_engine_figures(figures: dict[str, Any]) -> None:
    engine = figures["engine"]
    for name in recovery_benchmark._ENGINE_MEDIANS:
        assert _number(engine[name]), name
    assert engine["sweep_s"] <= engine["aenter_s"]
    assert engine["accept_s"] >= engine["aenter_s"]
    assert engine["fire_all_s"] >= engine["first_start_s"]
    for when in ("rss_growth_at_aenter_mb", "rss_growth_after_fired_mb"):
        assert set(engine[when]) == {"VmRSS", "RssAnon", "RssFile"}
    assert len(engine["runs"]) == figures["repeats"]
    for run in engine["runs"]:
        assert "error" not in run, run
        assert run["sweep"] == {
            "runs_scanned": 60,
            "runs_reactivated": 0,
            "timers_overdue": 30,
            "repairs": 0,
        }
        checks = run["checks"]
        assert checks["ok"] is True, checks
        assert checks["sleepers_completed"] == checks["waiters_still_open"] == 30
    assert figures["checks_ok"] is True


def test_baseline_and_ratios(figures: dict[str, Any]) -> None:
    baseline = figures["baseline"]
    for name in (*recovery_benchmark._BASELINE_MEDIANS, "floor_s"):
        assert _number(baseline[name]), name
    assert baseline["floor_s"] == pytest.approx(baseline["open_s"] + baseline["scan_s"])
    for run in baseline["runs"]:
        assert "error" not in run, run
        assert run["open_runs_scanned"] == 60 and run["due_timers_scanned"] == 30
        assert run["sweep_saw"] == [60, 30, 0]
        assert len(run["scan_runs"]) == len(run["sweep_dry_run_runs"]) == 2
    ratios = figures["ratios"]
    assert ratios["aenter_vs_floor"] == pytest.approx(
        figures["engine"]["aenter_s"] / baseline["floor_s"]
    )
    for value in ratios.values():
        assert value is None or _number(value)


def test_target_not_judged_in_quick_mode(figures: dict[str, Any]) -> None:
    target = figures["target"]
    assert target["accept_new_work_s"] == 2.0
    assert target["met"] is None
    assert target["value"] == figures["engine"]["accept_s"]


def test_report_prints_and_json_is_plain(
    figures: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    recovery_benchmark.print_report(figures)
    out = capsys.readouterr().out
    assert "__aenter__" in out and "baseline" in out and "checks: ok" in out
    assert json.loads(json.dumps(figures)) == figures


def test_the_runner_prints_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(recovery_benchmark, "run", lambda quick: {"quick": quick})
    assert main(["recovery", "--json", "--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "recovery" and report["figures"] == {"quick": True}
