"""Crash tests with real processes: SIGKILL a durable group-commit writer, reopen, check.

A child process (tests/store/_crash_writer.py) runs 50 concurrent requesters appending to their
own workflows through one LmdbStore and reports every acknowledged commit on its stdout. The
parent reads those acks on a thread as they come, kills the child with SIGKILL after a random
delay, reopens the same data directory (taking over the dead child's lock) and checks that:

- every acknowledged commit is there, and at most the one commit each requester had in flight
  beyond it (nothing lost, nothing invented);
- each history is contiguous from 1, every event decodes and holds the payload written for its
  seq (nothing torn or duplicated);
- the projection row, the run chain and the timer row agree with the history head: they were
  written in the same transaction as the events;
- the child saw no sequence conflict and died of the SIGKILL, not of an error.

Then it starts the next child on the same directory, which continues every history.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import anyio
import pytest

from aion import events as ev
from aion.store import LmdbStore, RunInfo, Status

from ._crash_writer import (
    RUN_ID,
    TIMER_BASE,
    WORKFLOW_TYPE,
    payload,
    step,
    timer_row,
    workflow_id,
)

HELPER = Path(__file__).with_name("_crash_writer.py")
REQUESTERS = 50
#: How long a child may take to start and acknowledge its first commit (a loaded CI machine).
START_TIMEOUT = 60.0


class Child:
    """A writer process, with a thread that collects its acks as they arrive."""

    def __init__(self, data: Path, stderr: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), str(data), str(REQUESTERS)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        self.acks: dict[str, list[int]] = {}
        self.unexpected: list[bytes] = []
        self.first_ack = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"ACK":
                self.acks.setdefault(parts[1].decode(), []).append(int(parts[2]))
                self.first_ack.set()
            elif parts != [b"READY"]:
                self.unexpected.append(line)
        self.first_ack.set()  # EOF: wake the parent whatever happened

    def kill(self) -> int:
        """SIGKILL the child, wait for it, read the rest of its output; its return code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait()
        self._reader.join()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


async def check_store(data: Path, known: dict[str, int], acks: dict[str, list[int]]) -> None:
    """Reopen ``data`` and check every workflow; update ``known`` to the heads found."""
    with LmdbStore(data) as store:  # the killed child's lock must be free to take
        timers = await store.due_timers(TIMER_BASE.replace(year=2100), limit=10_000)
        assert len(timers) == len({t.workflow_id for t in timers}), "a timer row was left behind"
        timer_of = {t.workflow_id: t for t in timers}
        for i in range(REQUESTERS):
            wf = workflow_id(i)
            # Acks of one requester follow each other, from where the last process left off.
            head = known.get(wf, 0)
            for acked in acks.get(wf, []):
                assert acked == step(head), f"{wf}: ack of head {acked} after head {head}"
                head = acked
            stored = await store.head(wf)
            assert stored in (head, step(head)), (
                f"{wf}: stored head {stored}, last acknowledged {head}: "
                + ("an acknowledged commit was lost" if stored < head else "a phantom commit")
            )
            known[wf] = stored
            history = await store.read_history(wf)
            assert [e.seq for e in history] == list(range(1, stored + 1)), f"{wf}: not contiguous"
            record = await store.get_workflow(wf)
            if stored == 0:
                assert record is None and wf not in timer_of
                continue
            first, rest = history[0], history[1:]
            assert isinstance(first, ev.WorkflowStarted) and first.workflow_id == wf
            for event in rest:
                assert isinstance(event, ev.SignalReceived), f"{wf}: {event!r}"
                assert event.payload == payload(wf, event.seq), f"{wf}: torn event {event!r}"
            # The projection row and the timer row moved with the events, in one transaction.
            assert record is not None, f"{wf}: history without a projection row"
            assert record.status is Status.RUNNING
            assert record.search_attributes == {"head": stored}, f"{wf}: row behind history"
            assert record.waiting_on == (f"head:{stored}",)
            assert record.created_at == first.at, f"{wf}: created_at changed"
            assert timer_of.get(wf) == timer_row(wf, stored), f"{wf}: timer row out of step"
            assert await store.run_chain(wf) == [
                RunInfo(RUN_ID, 1, WORKFLOW_TYPE, first.at, last_seq=stored)
            ]


def crash_loop(data: Path, kills: int, max_delay: float, seed: int) -> dict[str, int]:
    """Start, kill and check a writer ``kills`` times on ``data``; returns the final heads."""
    rng = random.Random(seed)
    known: dict[str, int] = {}
    stderr_path = data.parent / "writer.stderr"
    for n in range(kills):
        with stderr_path.open("wb") as stderr:
            child = Child(data, stderr)
            try:
                if not child.first_ack.wait(START_TIMEOUT):
                    raise AssertionError("the writer acknowledged nothing in time")
                # The one sleep: a random moment to kill the writer, mid-batch or between.
                time.sleep(rng.uniform(0.0, max_delay))
            finally:
                code = child.kill()
        context = f"kill {n + 1}/{kills} (seed {seed})"
        err = stderr_path.read_text(errors="replace")
        assert code == -signal.SIGKILL, f"{context}: the writer exited {code} by itself:\n{err}"
        assert not child.unexpected, f"{context}: unexpected output {child.unexpected}\n{err}"
        assert child.acks, f"{context}: no acknowledged commit"
        try:
            anyio.run(check_store, data, known, child.acks)
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
    return known


def test_killed_writer_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    heads = crash_loop(tmp_path / "data", kills=3, max_delay=0.15, seed=seed)
    assert sum(heads.values()) > 0


@pytest.mark.slow
def test_killed_writer_loses_no_acknowledged_commit_many_times(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    heads = crash_loop(tmp_path / "data", kills=40, max_delay=0.5, seed=seed)
    assert sum(heads.values()) > 0
