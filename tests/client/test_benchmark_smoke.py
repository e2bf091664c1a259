"""The client benchmark (benchmarks/client.py) runs end to end at tiny sizes and reports every
figure (not its speed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import client as client_benchmark
from benchmarks.__main__ import NAMES, main

TINY = {"round_trips": 3, "polling_round_trips": 1}


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    quick = dict(client_benchmark.QUICK)
    client_benchmark.QUICK.update(TINY)
    try:
        return client_benchmark.run(quick=True)
    finally:
        client_benchmark.QUICK.clear()
        client_benchmark.QUICK.update(quick)


def test_registered_with_the_runner() -> None:
    assert "client" in NAMES


def test_every_figure(figures: dict[str, Any]) -> None:
    assert figures["errors"] == []
    assert figures["quick"] is True and figures["round_trips"] == 3
    assert len(figures["load_average"]) == 2
    summaries = [*figures["client"].values(), *figures["engine"].values()]
    assert len(summaries) == 6
    for summary in summaries:
        assert 0 <= summary["min_ms"] <= summary["median_ms"] <= summary["p90_ms"]
        assert summary["p90_ms"] <= summary["max_ms"]
    assert figures["client"]["signal"]["n"] == figures["engine"]["start"]["n"] == 3
    assert figures["client"]["signal_without_doorbell"]["n"] == 1
    # Queued comes before applied: signal() returns before the outcome is seen.
    assert figures["client"]["signal_queued"]["median_ms"] <= figures["client"]["signal"]["max_ms"]
    target = figures["target"]
    assert target["client_signal_median_ms"] == 100.0 and target["met"] is None  # quick
    assert target["value"] == figures["client"]["signal"]["median_ms"]


def test_percentile() -> None:
    assert client_benchmark.percentile([], 90) == 0.0
    assert client_benchmark.percentile([5.0], 90) == 5.0
    assert client_benchmark.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert client_benchmark.percentile(list(map(float, range(11))), 90) == pytest.approx(9.0)


def test_report_prints_and_json_is_plain(
    figures: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    client_benchmark.print_report(figures)
    out = capsys.readouterr().out
    assert "signal -> applied" in out and "engine (baseline)" in out and "no doorbell" in out
    assert json.loads(json.dumps(figures)) == figures


def test_the_runner_prints_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(client_benchmark, "run", lambda quick: {"quick": quick})
    assert main(["client", "--json", "--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "client" and report["figures"] == {"quick": True}
