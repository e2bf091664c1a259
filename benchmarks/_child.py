"""Measurements in a fresh interpreter: each benchmark module runs its modes as
``python -m benchmarks.NAME MODE JSON-ARGS``; the figures come back as one marked JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARK = "@@BENCH@@"

Mode = Callable[[dict[str, Any]], dict[str, Any]]


def run_child(module: str, mode: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``mode`` of ``module`` in a fresh interpreter and return its figures (or an
    ``error`` naming what it raised)."""
    env = dict(os.environ)
    # The repository root last, and a neutral working directory: a PYTHONPATH given by the
    # caller (e.g. a patched copy of aion to compare) takes precedence.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    command = [sys.executable, "-m", module, mode, json.dumps(args)]
    try:
        proc = subprocess.run(
            command,
            check=False,
            cwd=tempfile.gettempdir(),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{mode} did not finish within {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK) :])
            return result
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    # The exception lines of a traceback (of every member of an exception group), first.
    raised = [line.strip(" |") for line in lines if _names_an_exception(line)]
    return {
        "error": f"{mode} exited with {proc.returncode}: " + " | ".join(raised[:5] or lines[-5:]),
        "output_tail": lines[-60:],
    }


def child_main(modes: dict[str, Mode], argv: list[str]) -> int:
    """The child's side: run one mode and print its figures as the marked line."""
    mode, raw = argv[0], argv[1]
    result = modes[mode](json.loads(raw))
    sys.stdout.write(MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def _names_an_exception(line: str) -> bool:
    name = line.strip(" |").partition(":")[0].rpartition(".")[2]
    return name.isidentifier() and name.endswith(("Error", "Exception", "Group", "Exit"))
