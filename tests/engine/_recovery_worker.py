"""The worker process of the recovery crash loop (tests/engine/test_recovery_crash_loop.py).

Run as ``python _recovery_worker.py DATADIR SIDE_EFFECT_LOG COUNT [STALL]``. It prints
``started``, opens a real engine on ``DATADIR`` (LMDB store, durable commits, system clock; the
recovery sweep runs first, and the worker prints ``recovery {json}`` with what it found), starts
workflows ``0 .. COUNT-1`` by fixed ids (idempotently: after a restart the existing ones are
kept), waits until every one of them has ended and prints ``done``. The test process kills it
with SIGKILL at random moments, restarts it on the same directory, and meanwhile sends the
signals and cancellations through the store's inbox, as ``aion signal`` and ``aion cancel`` do.
If a run is parked BLOCKED the worker prints ``blocked ...`` and exits with status 3; if the
runs do not end within ``STALL`` seconds (default 60) it prints ``stalled ...`` and exits with
status 4.

The workload mixes six kinds of workflow (``kind(index)``):

- ``timers``: durable sleeps, two concurrent ones, and a signal wait that times out;
- ``fanout``: two or three children in parallel, their results combined by a step;
- ``counter``: continues as new two to four times carrying a value; its second run starts a
  child (whose id carries the run id);
- ``cancel``: works, then waits on a one-hour timer; the test cancels it there, and it runs a
  cleanup (step, sleep, step) before it ends cancelled;
- ``cancel_tree``: waits on a child that waits on a one-hour timer; the test cancels the
  parent, the engine passes the cancellation to the child, both clean up and end cancelled;
- ``signals``: folds three to five signals sent from outside, in order, into a value;
- ``cancel_step``: is cancelled while a step runs; the step ends only once the test has seen
  the cancellation recorded (a mark file), then a cleanup step runs and the run ends cancelled.

Every step execution appends one line ``workflow_id run_id step_seq attempt pid`` to the side
effect log (O_APPEND, fsync'd) and then pauses briefly, so that kills often land between a side
effect and its record. All values are deterministic functions of the inputs; the module is
imported by the test too, which computes the expected outcomes with :func:`expected`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio

import aion

LONG = 3600.0  # the cancellation point: a timer that never fires during a test
STEP_PAUSE = 0.02  # after the side effect, before the step returns
INBOX_INTERVAL = 0.05  # how often the engine picks up the test's inbox commands
KINDS = ("timers", "fanout", "counter", "cancel", "cancel_tree", "signals", "cancel_step")
#: The timer each cancellable kind (or, for cancel_tree, its child) waits on to be cancelled.
CANCEL_TIMER = {"cancel": 2, "cancel_tree": 1}
CANCEL_STEP = "cancel_step.work"  # the step a cancel_step run is cancelled in
CANCELLED_KINDS = ("cancel", "cancel_tree", "cancel_step")  # the test cancels these
MARK_WAIT = 30.0  # how long that step waits for the test's mark
_LOG_FD: int | None = None
_MARKS: Path | None = None


def kind(index: int) -> str:
    return KINDS[index % len(KINDS)]


def workflow_id(index: int) -> str:
    return f"rc-{index:04d}-{kind(index)}"


def delay(index: int, k: int) -> float:
    """A short durable sleep, 0.05 to 0.5 s, so that timers come due across kills."""
    return 0.05 * (1 + (index * 7 + k * 13) % 10)


def fanout_width(index: int) -> int:
    return 2 + (index // len(KINDS)) % 2


def generations(index: int) -> int:
    return 2 + (index // len(KINDS)) % 3


def signal_count(index: int) -> int:
    return 3 + (index // len(KINDS)) % 3


def signal_payload(index: int, k: int) -> int:
    return index * 100 + k * 7 + 1


def cancel_reason(index: int) -> str:
    return f"the test cancels {workflow_id(index)}"


def mix(*values: int) -> int:
    """A deterministic, order-sensitive combination of integers (the steps' results)."""
    h = 1_469_598
    for v in values:
        h = (h * 1_000_003 + v) % 2_147_483_647
    return h


# --- the step ---------------------------------------------------------------------------------


def open_log(path: str | os.PathLike[str]) -> None:
    """Open the side-effect log; the cancellation marks live next to it (:func:`marks`)."""
    global _LOG_FD, _MARKS
    _LOG_FD = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _MARKS = marks(path)


def marks(log_path: str | os.PathLike[str]) -> Path:
    """The directory where the test marks cancel_step runs whose cancellation is recorded."""
    return Path(log_path).parent / "marks"


def close_log() -> None:
    global _LOG_FD
    if _LOG_FD is not None:
        os.close(_LOG_FD)
        _LOG_FD = None


def _log_effect() -> aion.StepInfo:
    info = aion.current_step()
    line = f"{info.workflow_id} {info.run_id} {info.step_seq} {info.attempt} {os.getpid()}\n"
    fd = _LOG_FD
    if fd is None:
        raise RuntimeError("the side-effect log is not open")
    os.write(fd, line.encode())
    os.fsync(fd)
    return info


def effect(*values: int) -> int:
    """The step: a logged side effect and a deterministic result."""
    _log_effect()
    time.sleep(STEP_PAUSE)
    return mix(*values)


def work_until_cancelled(index: int) -> int:
    """A step that is still running when its run is cancelled: it ends only once the test has
    seen the cancellation recorded and left a mark (a re-run after a kill finds the mark)."""
    info = _log_effect()
    assert _MARKS is not None
    mark = _MARKS / info.workflow_id
    deadline = time.monotonic() + MARK_WAIT
    while not mark.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no cancellation mark for {info.workflow_id}")
        time.sleep(0.01)
    return mix(index, 7)


# --- the workflows ----------------------------------------------------------------------------


@aion.workflow(name="rc.timers")
async def timers(ctx: aion.Context, index: int) -> dict[str, Any]:
    a = await ctx.step(effect, index, 1, name="timers.first")
    await ctx.sleep(delay(index, 1))
    await ctx.gather(ctx.sleep(delay(index, 2)), ctx.sleep(delay(index, 3)))
    try:
        await ctx.wait_signal("never", timeout=delay(index, 4))
        timed_out = False
    except aion.WaitTimedOut:
        timed_out = True
    b = await ctx.step(effect, index, a, name="timers.second")
    await ctx.sleep(delay(index, 5))
    return {"index": index, "values": [a, b], "timed_out": timed_out}


@aion.workflow(name="rc.leaf")
async def leaf(ctx: aion.Context, index: int, k: int) -> int:
    a = await ctx.step(effect, index, k, name="leaf.first")
    await ctx.sleep(delay(index, 10 + k))
    return int(await ctx.step(effect, a, k, name="leaf.second"))


@aion.workflow(name="rc.fanout")
async def fanout(ctx: aion.Context, index: int) -> dict[str, Any]:
    width = fanout_width(index)
    results = await ctx.gather(*(ctx.child(leaf, index, k) for k in range(width)))
    total = await ctx.step(effect, *results, name="fanout.combine")
    return {"index": index, "children": results, "total": total}


@aion.workflow(name="rc.counter")
async def counter(
    ctx: aion.Context, index: int, generation: int = 0, carried: int = 0
) -> dict[str, Any]:
    value = await ctx.step(effect, index, generation, carried, name="counter.step")
    await ctx.sleep(delay(index, 20 + generation))
    if generation == 1:
        value = mix(value, await ctx.child(leaf, index, 9))
    if generation + 1 < generations(index):
        ctx.continue_as_new(index, generation + 1, value)
    return {"index": index, "generations": generation + 1, "value": value}


@aion.workflow(name="rc.cancel")
async def cancellable(ctx: aion.Context, index: int) -> str:
    await ctx.step(effect, index, 1, name="cancel.work")
    await ctx.sleep(delay(index, 30))
    try:
        await ctx.sleep(LONG)  # timer 2: the test cancels the run here
    except aion.Cancelled:
        await ctx.step(effect, index, 2, name="cancel.cleanup_first")
        await ctx.sleep(delay(index, 31))
        await ctx.step(effect, index, 3, name="cancel.cleanup_second")
        raise
    return "not cancelled"


@aion.workflow(name="rc.sleeper")
async def sleeper(ctx: aion.Context, index: int) -> int:
    await ctx.step(effect, index, 4, name="sleeper.work")
    try:
        await ctx.sleep(LONG)  # timer 1: the cancellation of the parent reaches it here
    except aion.Cancelled:
        await ctx.step(effect, index, 5, name="sleeper.cleanup")
        raise
    return 0


@aion.workflow(name="rc.cancel_tree")
async def cancel_tree(ctx: aion.Context, index: int) -> str:
    child = ctx.child(sleeper, index)
    try:
        await child
    except aion.Cancelled:
        # The engine passes the cancellation on to the child: wait until it has ended.
        with contextlib.suppress(aion.WorkflowCancelled):
            await child
        await ctx.step(effect, index, 6, name="tree.cleanup")
        raise
    return "not cancelled"


@aion.workflow(name="rc.signals")
async def signals(ctx: aion.Context, index: int) -> dict[str, Any]:
    total = index
    got: list[int] = []
    for k in range(signal_count(index)):
        value = int(await ctx.wait_signal("add"))
        got.append(value)
        total = await ctx.step(effect, total, value, name="signals.fold")
        if k % 2 == 0:
            await ctx.sleep(delay(index, 40 + k))
    return {"index": index, "signals": got, "total": total}


@aion.workflow(name="rc.cancel_step")
async def cancel_step(ctx: aion.Context, index: int) -> str:
    work = ctx.step(work_until_cancelled, index, name=CANCEL_STEP)
    try:
        await work  # the test cancels the run while this step runs
    except aion.Cancelled:
        value = await work  # the step still ends, and its result is recorded
        await ctx.step(effect, index, value, name="cancel_step.cleanup")
        raise
    return "not cancelled"


WORKFLOWS = [timers, leaf, fanout, counter, cancellable, sleeper, cancel_tree, signals, cancel_step]
TOP_LEVEL = {
    "timers": timers,
    "fanout": fanout,
    "counter": counter,
    "cancel": cancellable,
    "cancel_tree": cancel_tree,
    "signals": signals,
    "cancel_step": cancel_step,
}


# --- what an uninterrupted execution gives, computed from the inputs ---------------------------


def _leaf(index: int, k: int) -> int:
    return mix(mix(index, k), k)


def expected(index: int) -> tuple[str, Any]:
    """(status, result) that workflow ``index`` ends with."""
    match kind(index):
        case "timers":
            a = mix(index, 1)
            return "completed", {"index": index, "values": [a, mix(index, a)], "timed_out": True}
        case "fanout":
            results = [_leaf(index, k) for k in range(fanout_width(index))]
            return "completed", {"index": index, "children": results, "total": mix(*results)}
        case "counter":
            value = 0
            for generation in range(generations(index)):
                value = mix(index, generation, value)
                if generation == 1:
                    value = mix(value, _leaf(index, 9))
            return "completed", {
                "index": index,
                "generations": generations(index),
                "value": value,
            }
        case "signals":
            got = [signal_payload(index, k) for k in range(signal_count(index))]
            total = index
            for value in got:
                total = mix(total, value)
            return "completed", {"index": index, "signals": got, "total": total}
        case _:  # cancel, cancel_tree, cancel_step
            return "cancelled", None


def expected_children(index: int) -> dict[str, tuple[str, Any]]:
    """Children of workflow ``index``: normalised id (``run1`` for the second run's id) ->
    (status, result)."""
    wid = workflow_id(index)
    match kind(index):
        case "fanout":
            return {
                f"{wid}/child-{k + 1}": ("completed", _leaf(index, k))
                for k in range(fanout_width(index))
            }
        case "counter":
            return {f"{wid}/run1/child-1": ("completed", _leaf(index, 9))}
        case "cancel_tree":
            return {f"{wid}/child-1": ("cancelled", None)}
    return {}


# --- the worker process -------------------------------------------------------------------------


async def _fail_on_blocked(engine: aion.Engine) -> None:
    """A run parked BLOCKED never finishes: say so and exit at once instead of hanging."""
    while True:
        page = await engine.list(status=aion.Status.BLOCKED)
        if page.items:
            for d in page.items:
                print(f"blocked {d.workflow_id}: {d.reason}", flush=True)
            os._exit(3)
        await anyio.sleep(0.1)


async def wait_ended(handle: aion.WorkflowHandle) -> None:
    """Wait until the run has ended; a cancelled run is an expected ending here."""
    with contextlib.suppress(aion.WorkflowCancelled):
        await handle.result()


async def main(datadir: str, log_path: str, count: int, stall: float = 60.0) -> None:
    open_log(log_path)
    print("started", flush=True)
    async with aion.Engine(datadir, workflows=WORKFLOWS, inbox_interval=INBOX_INTERVAL) as engine:
        report = engine.recovery
        summary = {
            "repairs": [f"{r.kind} {r.workflow_id}: {r.detail}" for r in report.repairs],
            "reactivated": report.runs_reactivated,
            "overdue": report.timers_overdue,
            "inbox": report.inbox_pending,
        }
        print(f"recovery {json.dumps(summary)}", flush=True)
        handles = [
            await engine.start(TOP_LEVEL[kind(i)], i, workflow_id=workflow_id(i))
            for i in range(count)
        ]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_fail_on_blocked, engine)
            with anyio.move_on_after(stall) as waiting:
                for handle in handles:
                    await wait_ended(handle)
            if waiting.cancelled_caught:  # a run that never ends: say which, at once
                stuck = [(r.workflow_id, r.waiting_on) for r in await engine.store.scan_active()]
                print(f"stalled {stuck[:20]}", flush=True)
                os._exit(4)
            tg.cancel_scope.cancel()
    close_log()
    print("done", flush=True)


if __name__ == "__main__":
    stall = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), stall)
