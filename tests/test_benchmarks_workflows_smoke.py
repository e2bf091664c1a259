"""The workflows benchmark runs end to end at tiny sizes and reports every figure (not its speed).

Quick mode never runs the DBOS baseline, so this needs no ``bench`` extra installed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import workflows as wf_benchmark
from benchmarks.__main__ import NAMES


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    return wf_benchmark.run(quick=True)


def _number(value: Any) -> bool:
    """A figure: a real number >= 0 (tiny quick windows on a loaded machine may count zero)."""
    return type(value) in (int, float) and value >= 0


def test_registered_with_the_runner() -> None:
    assert "workflows" in NAMES


def test_throughput_figures(figures: dict[str, Any]) -> None:
    tp = figures["throughput"]
    assert figures["quick"] is True and tp["durable"] is True
    levels = wf_benchmark.QUICK["concurrency"]
    keys = [str(c) for c in levels] + [f"{wf_benchmark.QUICK['sync_step_concurrency']}_sync_step"]
    assert list(tp["aion"]) == keys
    for key, level in tp["aion"].items():
        assert "error" not in level, level
        assert _number(level["workflows_per_s"]) and _number(level["cpu_ms_per_workflow"])
        assert len(level["runs"]) == wf_benchmark.QUICK["repeats"]
        if level["workflows_per_s"]:
            assert 0 <= level["latency_p50_ms"] <= level["latency_p99_ms"]
        assert level["step"] == ("sync (worker thread)" if key.endswith("sync_step") else "async")
    assert "skipped" in tp["dbos"] and "quick" in tp["dbos"]["skipped"]
    assert tp["ratio_vs_dbos"] is None and tp["ratio_vs_dbos_best_run"] is None
    assert tp["best_ratio_vs_dbos"] is None


def test_replay_figures(figures: dict[str, Any]) -> None:
    rp = figures["replay"]
    assert rp["events"] == 3 * wf_benchmark.QUICK["replay_steps"] + 2
    assert rp["result_ok"] is True
    for name in (
        "driver_events_per_s",
        "driver_events_per_s_best",
        "driver_events_per_cpu_s",
        "activation_events_per_s",
    ):
        assert _number(rp[name]) and rp[name] > 0
    testing = rp["testing_replay"]
    assert "skipped" in testing or _number(testing["events_per_s"])
    assert rp["temporal_reference_events_per_s"] == list(wf_benchmark.TEMPORAL_REPLAY_REFERENCE)


def test_memory_figures(figures: dict[str, Any]) -> None:
    mem = figures["memory"]
    count = wf_benchmark.QUICK["parked"]
    assert mem["aion"]["runs"] == count and mem["aion"]["engine_options"] == "defaults"
    assert mem["aion_tuned"]["runs"] == wf_benchmark.QUICK["tuned_parked"]
    for side in ("asyncio_tasks", "anyio_tasks"):
        assert mem[side]["runs"] == wf_benchmark.QUICK["baseline_parked"]
    for side in ("aion", "aion_tuned", "asyncio_tasks", "anyio_tasks"):
        assert "error" not in mem[side], mem[side]
        assert isinstance(mem[side]["anon_delta_mb"], int | float)
    aion_mem = mem["aion"]
    assert aion_mem["sample_waiting_on_signal"] is True
    assert [c["runs"] for c in aion_mem["checkpoints"]] == [
        *wf_benchmark.QUICK["parked_checkpoints"],
        count,
    ]
    assert isinstance(aion_mem["bytes_per_further_run"], int | float)
    # Every run was woken and finished: none is left in memory.
    assert aion_mem["after_finish"]["resident_runs"] == 0
    assert (
        mem["aion_tuned"]["checkpoints"][-1]["resident_runs"]
        <= (wf_benchmark.QUICK["max_resident_runs"])
    )
    assert isinstance(mem["aion_bytes_per_run"], int | float)


def test_latency_floor(figures: dict[str, Any]) -> None:
    floor = figures["throughput"]["latency_floor"]
    assert 0 < floor["p50_ms"] <= floor["p99_ms"]


def test_signal_latency_figures(figures: dict[str, Any]) -> None:
    lat = figures["signal_latency"]
    assert lat["runs"] == wf_benchmark.QUICK["latency_runs"]
    assert 0 <= lat["evicted_when_signalled"] <= lat["runs"]
    ms = lat["signal_to_step_start_ms"]
    assert 0 < ms["p50"] <= ms["p99"] <= ms["max"]


def test_targets_are_not_judged_in_quick_mode(figures: dict[str, Any]) -> None:
    targets = figures["targets"]
    assert set(targets) == set(wf_benchmark.TARGETS)
    assert all(t["met"] is None for t in targets.values())


def test_figures_are_json_and_print(figures: dict[str, Any], capsys: Any) -> None:
    json.dumps(figures)
    wf_benchmark.print_report(figures)
    out = capsys.readouterr().out
    assert "throughput" in out and "replay" in out and "memory" in out
