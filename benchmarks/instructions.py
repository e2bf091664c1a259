"""Instruction counts per workflow, per replayed event and per signal: a stable measure.

Wall-clock figures on these shared 2-core machines vary by 20-50% from run to run; the number of
user-space instructions a piece of work executes does not (for the same inputs). Each figure
here is counted by ``valgrind --tool=callgrind`` (all threads of the process in one count:
callgrind's default ``--separate-threads=no``; kernel time, such as fsync, is not counted).

**Method: the difference of two runs.** Callgrind cannot be switched on and off from Python, so
each case runs twice in a fresh interpreter under callgrind, once with ``n1`` and once with
``n2`` operations, and the figure is ``(Ir(n2) - Ir(n1)) / (n2 - n1)``: interpreter start-up,
imports, opening the engine and everything else done once cancels out. Every case is repeated
(``repeats``) and its spread ``(max - min) / mean`` is reported: it shows the figure is stable
(expect well under 1%). Children run with ``PYTHONHASHSEED=0`` on a copy of the ``aion``
package taken when the benchmark starts (edits made meanwhile do not mix into the figures; its
digest is reported); each case is run once natively first (not counted) so bytecode caches are
written before any counted run.

**Data on tmpfs.** The engines' data directories go to ``/dev/shm`` when it exists. The engine
is unchanged (durable, it calls fsync on every commit; fsync is kernel time, never counted), but
fsync then returns at once. On a disk each fsync under valgrind took 30-130 ms, so the runs lasted
minutes, and the engine's timed background work (store check every 0.25 s, inbox poll every
0.5 s, the watchdog thread: ~0.5M instructions per second under callgrind) was 5-10% of a
figure and made it vary by 1-5% between repeats with the disk's speed. On tmpfs the runs are
CPU-bound and that share is small (a few thousand instructions per workflow).

The cases (default ``aion.Engine(data_dir)``: durable LMDB, fsync on every commit, unless said):

* ``trivial`` -- per workflow, one at a time: ``start`` -> one async step -> ``result``
  (``bench-trivial`` from ``benchmarks/workflows.py``);
* ``trivial_50`` -- the same with 50 requesters in flight (group commits);
* ``trivial_sync`` -- per workflow with a sync step (run in a worker thread), one at a time;
* ``replay_event`` -- per event replayed by a fresh ``aion._replay.Driver`` over a recorded
  ``bench-many-steps`` history (already decoded events; the history is built once per child);
* ``activation_event`` -- per event of a reactivation: read the run from the store, decode,
  replay;
* ``parked_start`` -- per start of a run that then parks on a signal (``bench-parked``), one at
  a time;
* ``signal_evicted`` -- per signal delivered to an evicted parked run, through its completion
  (the run returns the payload): activation by replay, the signal recorded, the run completed.
  Every child parks the same number of runs first (not durable: the set-up is not measured),
  then reopens the engine with ``max_resident_runs`` small and signals ``n`` of them.

Run: ``python -m benchmarks instructions [--json] [--quick]`` (under valgrind the full run takes
several minutes; ``--quick`` uses tiny sizes and one repeat: a smoke test, its figures mean
nothing). Environment:

* ``AION_ICOUNT_SOURCE=DIR`` -- measure the ``aion`` package of another source tree (e.g. a
  worktree of an older commit); the benchmark code itself always comes from this repository;
* ``AION_ICOUNT_BASELINE=DIR`` -- also measure that tree in the same run and report the ratios
  (this tree / baseline);
* ``AION_ICOUNT_JOBS`` -- callgrind children run at once (default 2: counts do not depend on
  it);
* ``AION_ICOUNT_DATA_DIR`` -- where the engines' data directories go (default ``/dev/shm``,
  else the temp directory);
* ``AION_ICOUNT_CASES=trivial,parked_start`` -- measure only these cases.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from benchmarks._child import MARK, ROOT, Mode, child_main
from benchmarks._common import scratch

SIGNAL_SETUP_RUNS = 320  # parked runs every signal_evicted child starts (>= the largest n)


@dataclass(frozen=True)
class Case:
    """One figure: a child ``mode`` run with ``args`` plus ``n`` (the operations counted)."""

    key: str
    what: str
    unit: str
    mode: str
    sizes: tuple[int, int]
    args: dict[str, Any] = field(default_factory=dict)


def _cases(quick: bool) -> list[Case]:
    def sizes(full: tuple[int, int], small: tuple[int, int]) -> tuple[int, int]:
        return small if quick else full

    steps = 20 if quick else 1000
    setup = 6 if quick else SIGNAL_SETUP_RUNS
    return [
        Case(
            "trivial",
            "start -> one async step -> result, one at a time",
            "workflow",
            "workflows",
            sizes((20, 520), (1, 3)),
            {"workflow": "trivial", "concurrency": 1},
        ),
        Case(
            "trivial_50",
            "the same, 50 requesters in flight" if not quick else "the same, 5 in flight",
            "workflow",
            "workflows",
            sizes((100, 1100), (5, 15)),
            {"workflow": "trivial", "concurrency": 5 if quick else 50},
        ),
        Case(
            "trivial_sync",
            "start -> one sync step (worker thread) -> result, one at a time",
            "workflow",
            "workflows",
            sizes((20, 520), (1, 3)),
            {"workflow": "trivial_sync", "concurrency": 1},
        ),
        Case(
            "replay_event",
            f"Driver replay of a {3 * steps + 2}-event bench-many-steps history (decoded)",
            "event",
            "replay",
            sizes((1, 11), (1, 2)),
            {"steps": steps, "from_store": False},
        ),
        Case(
            "activation_event",
            "read the same history from the store, decode and replay it",
            "event",
            "replay",
            sizes((1, 11), (1, 2)),
            {"steps": steps, "from_store": True},
        ),
        Case(
            "parked_start",
            "start of a run that parks on a signal, one at a time",
            "start",
            "parked",
            sizes((20, 520), (1, 3)),
        ),
        Case(
            "signal_evicted",
            "signal to an evicted parked run, through its completion, one at a time",
            "signal",
            "signal",
            sizes((20, 320), (2, 6)),
            {"setup_runs": setup, "max_resident_runs": 2 if quick else 10},
        ),
    ]


# --- the parent: callgrind runs and the difference ---------------------------------------------


def _total_ir(out_file: str) -> int:
    """Instructions in a callgrind output: summed over every file it wrote (one per thread
    only with ``--separate-threads=yes``, which is not the default)."""
    total = 0
    files = sorted(glob.glob(out_file + "*"))
    for name in files:
        summary = None
        with open(name) as f:
            for line in f:
                if line.startswith(("totals:", "summary:")):
                    summary = int(line.split()[1])
                    if line.startswith("totals:"):
                        break
        if summary is None:
            raise RuntimeError(f"no totals line in callgrind output {name}")
        total += summary
    if not files:
        raise RuntimeError(f"callgrind wrote no output at {out_file}")
    return total


@contextmanager
def _snapshot(source: Path) -> Iterator[tuple[list[str], str]]:
    """``PYTHONPATH`` entries for children, and a digest of the code: a copy of ``source``'s
    ``aion`` package taken now (edits made to the tree while the benchmark runs do not reach
    it), alone in a directory so ``benchmarks`` still comes from this repository."""
    package = source / "aion"
    if not (package / "__init__.py").is_file():
        raise ValueError(f"{source} has no aion package (aion/__init__.py)")
    shim = Path(tempfile.mkdtemp(prefix="aion-icount-src-"))
    try:
        shutil.copytree(package, shim / "aion", ignore=shutil.ignore_patterns("__pycache__"))
        digest = hashlib.sha256()
        for file in sorted((shim / "aion").rglob("*.py")):
            digest.update(file.relative_to(shim).as_posix().encode() + b"\0")
            digest.update(file.read_bytes())
        yield [str(shim), str(ROOT)], digest.hexdigest()[:16]
    finally:
        shutil.rmtree(shim, ignore_errors=True)


def _data_dir() -> str | None:
    """Where children put their engines' data: tmpfs when there is one (see the docstring)."""
    chosen = os.environ.get("AION_ICOUNT_DATA_DIR")
    if chosen:
        return chosen
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _child(
    mode: str, args: dict[str, Any], path: list[str], callgrind: bool, timeout: float
) -> dict[str, Any]:
    """Run one child (under callgrind or not); its figures plus ``ir`` when counted."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*path, env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"  # the same str hashes, so the same dict layouts, every run
    data_dir = _data_dir()
    if data_dir:
        env["AION_BENCH_DIR"] = data_dir
    command = [sys.executable, "-m", "benchmarks.instructions", mode, json.dumps(args)]
    out_dir = tempfile.mkdtemp(prefix="aion-icount-cg-")
    out_file = os.path.join(out_dir, "callgrind.out")
    if callgrind:
        valgrind = shutil.which("valgrind") or "valgrind"
        command = [valgrind, "--tool=callgrind", "-q", f"--callgrind-out-file={out_file}", *command]
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
        result: dict[str, Any] | None = None
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(MARK):
                result = json.loads(line[len(MARK) :])
                break
        if result is None or proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            raise RuntimeError(f"{mode} {args} exited with {proc.returncode}: " + " | ".join(tail))
        if callgrind:
            result["ir"] = _total_ir(out_file)
        return result
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _figure(
    case: Case, counted: dict[tuple[int, int], dict[str, Any]], repeats: int
) -> dict[str, Any]:
    n1, n2 = case.sizes
    per_op: list[float] = []
    fixed: list[float] = []
    for r in range(repeats):
        low, high = counted[(r, n1)], counted[(r, n2)]
        scale = high.get("scale", 1)
        if low.get("scale", 1) != scale:
            raise RuntimeError(f"{case.key}: the two runs did different work per operation")
        per = (high["ir"] - low["ir"]) / ((n2 - n1) * scale)
        per_op.append(per)
        fixed.append(low["ir"] - per * n1 * scale)
    mean = sum(per_op) / len(per_op)
    child = {k: v for k, v in counted[(0, n2)].items() if k != "ir"}
    return {
        "what": case.what,
        "unit": case.unit,
        "n": [n1, n2],
        "per_op": mean,
        "repeats": per_op,
        "spread_pct": (max(per_op) - min(per_op)) / mean * 100 if mean and repeats > 1 else None,
        # What the difference cancelled: start-up, imports, opening and closing the engine.
        "fixed_ir": sum(fixed) / len(fixed),
        "child": child,
    }


def _measure_tree(source: Path, cases: list[Case], repeats: int, jobs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with _snapshot(source) as (path, digest):
        # Natively first (not counted): writes the bytecode caches, and fails fast.
        for case in cases:
            _child(case.mode, {**case.args, "n": case.sizes[0]}, path, callgrind=False, timeout=600)
        # Repeat after repeat, so the repeats of one case are minutes apart.
        runs = [(c, r, n) for r in range(repeats) for c in cases for n in c.sizes]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(_child, c.mode, {**c.args, "n": n}, path, callgrind=True, timeout=1800)
                for c, _, n in runs
            ]
            results = [f.result() for f in futures]
        counted: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
        for (case, r, n), result in zip(runs, results, strict=True):
            if not result.pop("aion_file").startswith(path[0]):
                raise RuntimeError(f"{case.key} did not import aion from the snapshot of {source}")
            counted.setdefault(case.key, {})[(r, n)] = result
    return {
        "source": str(source),
        "aion_digest": digest,
        "cases": {c.key: _figure(c, counted[c.key], repeats) for c in cases},
        "elapsed_s": time.perf_counter() - t0,
    }


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).resolve() if value else None


def run(quick: bool) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"quick": quick, "skipped": "valgrind is not installed (apt-get install valgrind)"}
    t0 = time.perf_counter()
    cases = _cases(quick)
    repeats = 1 if quick else 2
    jobs = max(1, int(os.environ.get("AION_ICOUNT_JOBS") or 2))
    only = [k for k in os.environ.get("AION_ICOUNT_CASES", "").split(",") if k]
    if only:
        unknown = set(only) - {c.key for c in cases}
        if unknown:
            raise ValueError(f"AION_ICOUNT_CASES names no case {sorted(unknown)}")
        cases = [c for c in cases if c.key in only]
    tree = _measure_tree(_env_path("AION_ICOUNT_SOURCE") or ROOT, cases, repeats, jobs)
    baseline_source = _env_path("AION_ICOUNT_BASELINE")
    baseline = ratios = None
    if baseline_source is not None:
        baseline = _measure_tree(baseline_source, cases, repeats, jobs)
        ratios = {
            key: figure["per_op"] / baseline["cases"][key]["per_op"]
            for key, figure in tree["cases"].items()
        }
    return {
        "quick": quick,
        "note": "quick sizes: a smoke test, the figures mean nothing" if quick else None,
        "tool": "valgrind --tool=callgrind: user-space instructions (Ir), all threads",
        "method": "(Ir(n2) - Ir(n1)) / (n2 - n1), each in a fresh interpreter",
        "repeats": repeats,
        "jobs": jobs,
        "data_dir": _data_dir() or tempfile.gettempdir(),
        "tree": tree,
        "baseline": baseline,
        "ratio_vs_baseline": ratios,
        "elapsed_s": time.perf_counter() - t0,
    }


def _pct(value: float | None) -> str:
    return f"{value:>6.2f}%" if value is not None else f"{'-':>7}"


def print_report(figures: dict[str, Any]) -> None:
    if "skipped" in figures:
        print(f"instructions: skipped: {figures['skipped']}")
        return
    tree, baseline = figures["tree"], figures["baseline"]
    ratios = figures["ratio_vs_baseline"] or {}
    print(
        f"instructions (callgrind Ir, all threads; difference of two runs; "
        f"{figures['repeats']} repeat(s))"
        + (" -- QUICK: the figures mean nothing" * figures["quick"])
    )
    print(
        f"  this tree: {tree['source']} (aion {tree['aion_digest']})"
        + (f"; baseline: {baseline['source']} (aion {baseline['aion_digest']})" if baseline else "")
    )
    header = f"  {'figure':<18} {'per':<9} {'Ir':>12} {'spread':>7}"
    if baseline:
        header += f" {'baseline Ir':>12} {'spread':>7} {'ratio':>6}"
    print(header)
    for key, f in tree["cases"].items():
        line = f"  {key:<18} {f['unit']:<9} {f['per_op']:>12,.0f} {_pct(f['spread_pct'])}"
        if baseline:
            b = baseline["cases"][key]
            line += f" {b['per_op']:>12,.0f} {_pct(b['spread_pct'])} {ratios[key]:>6.3f}"
        print(line)
    for key, f in tree["cases"].items():
        print(f"  {key}: {f['what']}; n = {f['n'][0]} and {f['n'][1]}")
    took = f"{tree['elapsed_s']:.0f} s"
    if baseline:
        took += f", baseline {baseline['elapsed_s']:.0f} s"
    print(f"  took {took}")


# --- the children ------------------------------------------------------------------------------


def _aion_file() -> str:
    import aion

    return os.path.realpath(aion.__file__ or "")


def _workflows(args: dict[str, Any]) -> dict[str, Any]:
    """``n`` one-step workflows by ``concurrency`` requesters, each start -> result."""
    import aion
    from benchmarks import workflows as wf

    n, concurrency = args["n"], args["concurrency"]
    workflow = wf.trivial_sync if args["workflow"] == "trivial_sync" else wf.trivial

    async def main() -> None:
        with scratch("icount") as data:
            async with aion.Engine(data, workflows=[wf.trivial, wf.trivial_sync]) as engine:
                next_x = 0

                async def requester() -> None:
                    nonlocal next_x
                    while next_x < n:
                        x = next_x
                        next_x += 1
                        handle = await engine.start(workflow, x)
                        if await handle.result() != x + 1:
                            raise AssertionError(f"wrong result for {x}")

                async with anyio.create_task_group() as tg:
                    for _ in range(concurrency):
                        tg.start_soon(requester)

    anyio.run(main)
    return {"workflows": n, "concurrency": concurrency, "aion_file": _aion_file()}


def _replay(args: dict[str, Any]) -> dict[str, Any]:
    """``n`` replays of a ``bench-many-steps`` history of ``steps`` steps (built first)."""
    import aion
    from aion._replay import Driver, definition_of
    from benchmarks import workflows as wf

    n, steps, from_store = args["n"], args["steps"], args["from_store"]
    size = 0

    async def main() -> None:
        nonlocal size
        with scratch("icount") as data:
            async with aion.Engine(data, workflows=[wf.many_steps], durable=False) as engine:
                handle = await engine.start(wf.many_steps, steps, workflow_id="replay-me")
                if await handle.result() != sum(range(steps)):
                    raise AssertionError("wrong result")
                events = await engine.store.read_current_run("replay-me")
                size = len(events)
                definition = definition_of(wf.many_steps)
                for _ in range(n):
                    if from_store:
                        events = await engine.store.read_current_run("replay-me")
                    driver = Driver(definition)
                    driver.replay(events)
                    if driver.outcome is None:
                        raise AssertionError("the replay did not reach the recorded outcome")

    anyio.run(main)
    return {"replays": n, "events": size, "scale": size, "aion_file": _aion_file()}


def _parked(args: dict[str, Any]) -> dict[str, Any]:
    """``n`` runs started one at a time, each parking on a signal."""
    import aion
    from benchmarks import workflows as wf

    n = args["n"]

    async def main() -> bool:
        with scratch("icount") as data:
            async with aion.Engine(data, workflows=[wf.parked]) as engine:
                for i in range(n):
                    await engine.start(wf.parked, workflow_id=f"p{i:06d}")
                last = await engine.describe(f"p{n - 1:06d}")
                return "go" in last.pending.get("signals", [])

    waiting = anyio.run(main)
    return {"starts": n, "last_waiting_on_signal": waiting, "aion_file": _aion_file()}


def _resident(engine: Any, workflow_id: str) -> bool | None:
    runtime = getattr(engine, "_runtime", None) or getattr(engine, "runtime", None)
    actors = getattr(runtime, "actors", None)
    return None if actors is None else ("default", workflow_id) in actors


def _signal(args: dict[str, Any]) -> dict[str, Any]:
    """``setup_runs`` parked runs (not durable, the same in every child), then ``n`` of them
    signalled one at a time after a reopen, each evicted, each awaited to completion."""
    import aion
    from benchmarks import workflows as wf

    n, setup, resident = args["n"], args["setup_runs"], args["max_resident_runs"]
    if n > setup:
        raise ValueError(f"n={n} is more than the {setup} parked runs")
    ids = [f"p{i:06d}" for i in range(setup)]
    evicted = 0

    async def main() -> None:
        nonlocal evicted
        with scratch("icount") as data:
            async with aion.Engine(data, workflows=[wf.parked], durable=False) as engine:
                for wid in ids:
                    await engine.start(wf.parked, workflow_id=wid)
            async with aion.Engine(
                data, workflows=[wf.parked], max_resident_runs=resident
            ) as engine:
                # Parked runs started last fill the resident set: every signalled run is evicted.
                for i in range(resident):
                    await engine.start(wf.parked, workflow_id=f"filler{i}")
                for i, wid in enumerate(ids[:n]):
                    if _resident(engine, wid) is False:
                        evicted += 1
                    await engine.signal(wid, "go", i)
                    if await engine.handle(wid).result(timeout=300) != i:
                        raise AssertionError(f"wrong result for {wid}")

    anyio.run(main)
    return {"signals": n, "evicted_when_signalled": evicted, "aion_file": _aion_file()}


_MODES: dict[str, Mode] = {
    "workflows": _workflows,
    "replay": _replay,
    "parked": _parked,
    "signal": _signal,
}


if __name__ == "__main__":
    sys.exit(child_main(_MODES, sys.argv[1:]))
