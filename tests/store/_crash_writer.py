"""Child process of tests/store/test_store_crash.py: durable appends until it is killed.

Usage: ``python _crash_writer.py DATA_DIR [REQUESTERS]``

Opens an engine-role :class:`~aion.store.LmdbStore` (durable) on ``DATA_DIR`` and runs
``REQUESTERS`` concurrent tasks. Task ``i`` owns workflow ``wf-i``: it reads the head left by
earlier (killed) processes, then loops forever committing one ``Write`` per step that appends
``1 + head % 3`` events, upserts the projection row (the new head in ``waiting_on`` and in a search
attribute) and moves the workflow's timer row from ``head-<old>`` to ``head-<new>``. After each
acknowledged commit it writes ``ACK <workflow id> <new head>`` to stdout, unbuffered: a line the
parent reads means the commit was reported recorded. A surprise (a sequence conflict) is written
as a ``CONFLICT`` line before the task fails. The parent kills the process with SIGKILL.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta

import anyio

from aion import events as ev
from aion.errors import SequenceConflict
from aion.store import Append, LmdbStore, Status, TimerRow, WorkflowRecord, Write

TENANT = "default"
RUN_ID = "run-1"
WORKFLOW_TYPE = "crash"
TIMER_BASE = datetime(2030, 1, 1, tzinfo=UTC)


def workflow_id(i: int) -> str:
    return f"wf-{i}"


def step(head: int) -> int:
    """The head after the next commit: each commit appends ``1 + head % 3`` events."""
    return head + 1 + head % 3


def payload(wf: str, seq: int) -> bytes:
    return f"{wf}:{seq}".encode()


def timer_row(wf: str, head: int) -> TimerRow:
    """The one timer row a workflow with history head ``head`` has."""
    return TimerRow(TIMER_BASE + timedelta(seconds=head), TENANT, wf, f"head-{head}", RUN_ID)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line: never interleaved, never buffered


async def requester(store: LmdbStore, wf: str) -> None:
    head = await store.head(wf, tenant=TENANT)
    record = await store.get_workflow(wf, tenant=TENANT)
    while True:
        new_head = step(head)
        now = datetime.now(UTC)
        events: list[ev.Event] = []
        for seq in range(head + 1, new_head + 1):
            if seq == 1:
                events.append(
                    ev.WorkflowStarted(
                        seq=1,
                        at=now,
                        workflow_id=wf,
                        run_id=RUN_ID,
                        workflow_type=WORKFLOW_TYPE,
                        input=b"",
                        tenant=TENANT,
                    )
                )
            else:
                events.append(
                    ev.SignalReceived(seq=seq, at=now, name="tick", payload=payload(wf, seq))
                )
        created = now if record is None else record.created_at
        record = WorkflowRecord(
            tenant=TENANT,
            workflow_id=wf,
            run_id=RUN_ID,
            workflow_type=WORKFLOW_TYPE,
            status=Status.RUNNING,
            created_at=created,
            run_started_at=created,
            waiting_on=(f"head:{new_head}",),
            search_attributes={"head": new_head},
        )
        write = Write(
            appends=[Append(wf, events, head, TENANT)],
            workflows=[record],
            timers_add=[timer_row(wf, new_head)],
            timers_delete=[timer_row(wf, head)] if head else [],
        )
        try:
            await store.commit(write)
        except SequenceConflict as exc:
            _say(f"CONFLICT {wf} {exc}")
            raise
        head = new_head
        _say(f"ACK {wf} {head}")


async def main(path: str, requesters: int) -> None:
    store = LmdbStore(path)  # durable, engine role: takes over the lock of a killed writer
    _say("READY")
    async with anyio.create_task_group() as tg:
        for i in range(requesters):
            tg.start_soon(requester, store, workflow_id(i))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50)
