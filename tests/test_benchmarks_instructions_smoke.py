"""The instruction-count benchmark runs end to end under callgrind at tiny sizes and reports a
positive count for every case (the quick figures themselves mean nothing).

It starts 14 interpreters under valgrind (each ~10-20 s; ~3 minutes in all): marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import instructions
from benchmarks.__main__ import NAMES

ROOT = Path(__file__).resolve().parent.parent


def test_registered_with_the_runner() -> None:
    assert "instructions" in NAMES


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    shutil.which("valgrind") is None,
    reason="valgrind is not installed: the benchmark counts instructions with callgrind",
)
def test_quick_run_reports_positive_counts() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AION_ICOUNT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "instructions", "--json", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    figures = report["figures"]
    assert figures["quick"] is True and "mean nothing" in figures["note"]
    assert figures["baseline"] is None and figures["ratio_vs_baseline"] is None
    tree = figures["tree"]
    assert tree["source"] == str(ROOT)
    keys = [c.key for c in instructions._cases(quick=True)]
    assert list(tree["cases"]) == keys
    for key, case in tree["cases"].items():
        assert case["per_op"] > 0, (key, case)
        assert case["fixed_ir"] > 0, (key, case)
        assert len(case["repeats"]) == figures["repeats"] == 1
    assert tree["cases"]["signal_evicted"]["child"]["evicted_when_signalled"] > 0
    assert tree["cases"]["replay_event"]["child"]["events"] > 0
