"""The worker process of the human-in-the-loop crash test (tests/engine/test_hitl_crash.py).

Run as ``python _hitl_worker.py DATADIR WORKDIR COUNT MODE``. It opens a real engine on
``DATADIR`` (LMDB store, durable commits, system clock, the embedded default key ring in
``DATADIR/waitpoint-keys.json``, an approval policy that holds ``payments.*`` steps) and prints
``started``. It starts the expense workflows ``0 .. COUNT-1`` by fixed ids (idempotently: after
a restart the existing ones are kept), then:

- ``serve``: waits until every run is parked (waiting on a person or on a callback), prints
  ``idle`` and keeps running: the engine applies what the test leaves in the store's inbox.
  It then reads one line from stdin: a JSON list of callbacks ``{"n", "token"}``, which it
  delivers concurrently with ``engine.complete_waitpoint(token, {"n": n})`` as the payment
  provider would, printing ``ack N`` when a call returns and ``refused N ErrorName`` when it
  raises. The test kills the process with SIGKILL at a random moment;
- ``finish``: decides every pending approval and completes every pending waitpoint itself
  (through the engine's API), round after round, until every run has ended, then prints
  ``done``. A round that finds nothing to do while runs are still open prints ``stalled ...``
  and exits with status 4.

The steps write their side effects under ``WORKDIR``: ``tokens/<workflow id>`` holds the token
handed out to the "payment provider" (written atomically), ``transfers.log`` gets one line
``<workflow id> <pid>`` per execution of the held payment step (O_APPEND, fsync'd).

The module is imported by the test too, so that both sides agree on the workflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

import aion
from aion.store import collect_pages

POLICY = [aion.ApprovalRule("payments.*")]
_WORKDIR: Path | None = None


def workflow_id(index: int) -> str:
    return f"exp-{index:03d}"


def pays(index: int) -> bool:
    """Whether the run ends with the payment step that the policy holds for approval."""
    return index % 2 == 0


def hand_out(workflow_id: str, token: str) -> str:
    """Send the token to the payment provider: here, a file the test reads."""
    assert _WORKDIR is not None, "steps run in the worker only"
    folder = _WORKDIR / "tokens"
    folder.mkdir(exist_ok=True)
    temp = folder / f".{workflow_id}.{os.getpid()}"
    temp.write_text(token)
    os.replace(temp, folder / workflow_id)
    return "sent"


def transfer(index: int) -> str:
    assert _WORKDIR is not None, "steps run in the worker only"
    fd = os.open(_WORKDIR / "transfers.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{workflow_id(index)} {os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return f"paid {index}"


async def ask(ctx: aion.Context, action: str, details: Any) -> list[Any]:
    try:
        approval = await ctx.approval(action, details=details)
    except aion.ApprovalRejected:
        return ["rejected"]
    return ["approved", approval.user]


@aion.workflow(name="hitl.crash.expense")
async def expense(ctx: aion.Context, index: int) -> dict[str, Any]:
    manager = await ask(ctx, "manager", {"index": index})
    provider = await ctx.waitpoint("provider")
    await ctx.step(hand_out, ctx.info.workflow_id, provider.token)
    finance, legal, callback = await ctx.gather(
        ask(ctx, "finance", {"index": index}),
        ask(ctx, "legal", None),
        provider.wait(),
    )
    # A rejection of the held payment is not caught: the run fails with ApprovalRejected.
    paid = await ctx.step(transfer, index, name="payments.transfer") if pays(index) else None
    return {
        "manager": manager,
        "finance": finance,
        "legal": legal,
        "callback": callback,
        "paid": paid,
    }


WORKFLOWS = [expense]


async def _open_runs(engine: aion.Engine, count: int) -> list[str]:
    ids = [workflow_id(i) for i in range(count)]
    return [wid for wid in ids if not (await engine.describe(wid)).status.is_terminal]


async def _pending_approvals(engine: aion.Engine) -> list[aion.PendingApproval]:
    return await collect_pages(lambda cursor: engine.pending_approvals(limit=50, cursor=cursor))


async def _finish(engine: aion.Engine, count: int, workdir: Path) -> None:
    """Approve and complete whatever waits, until every run has ended."""
    while open_ids := await _open_runs(engine, count):
        waiting = False
        for approval in await _pending_approvals(engine):
            waiting = True
            # A decision left in the inbox earlier may win the race: then this one is refused.
            with contextlib.suppress(aion.NoPendingApproval, aion.WorkflowClosed):
                await engine.approve(
                    approval.workflow_id, user="finisher", approval_id=approval.approval_id
                )
        for wid in open_ids:
            token_file = workdir / "tokens" / wid
            if token_file.exists() and (await engine.pending_waitpoints(wid)).items:
                waiting = True
                with contextlib.suppress(aion.WaitpointClosed):
                    await engine.complete_waitpoint(token_file.read_text(), {"by": "finisher"})
        await engine.wait_idle()
        if not waiting:  # open runs that wait for no person and no callback: they are lost
            stuck = [(wid, (await engine.describe(wid)).pending) for wid in open_ids]
            print(f"stalled {stuck[:5]}", flush=True)
            os._exit(4)


async def _deliver(engine: aion.Engine, n: int, token: str) -> None:
    """The payment provider calls back; its acknowledgement is the call returning."""
    try:
        await engine.complete_waitpoint(token, {"n": n})
    except (aion.WaitpointClosed, aion.InvalidToken) as exc:
        print(f"refused {n} {type(exc).__name__}", flush=True)
    else:
        print(f"ack {n}", flush=True)


async def main(datadir: str, workdir: str, count: int, mode: str) -> None:
    global _WORKDIR
    _WORKDIR = Path(workdir)
    print("started", flush=True)
    async with aion.Engine(
        datadir, workflows=WORKFLOWS, approval_policy=POLICY, inbox_interval=0.01
    ) as engine:
        for i in range(count):
            await engine.start(expense, i, workflow_id=workflow_id(i))
        await engine.wait_idle()
        if mode == "serve":
            print("idle", flush=True)
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            async with anyio.create_task_group() as tg:
                for callback in json.loads(line or "[]"):
                    tg.start_soon(_deliver, engine, callback["n"], callback["token"])
            await anyio.sleep_forever()
        await _finish(engine, count, _WORKDIR)
    print("done", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
