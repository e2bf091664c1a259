"""A tiny synchronous engine for driver tests: runs commands in-process and records history.

It mimics what the real actor records: one resolution event, then the commands the code issued
in response, each with the next sequence number.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aion import events as ev
from aion._codec import encode_payload
from aion._replay import Driver, definition_of
from aion._replay import _commands as c

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Sim:
    """Runs one workflow to completion (or until it waits on something nobody sends)."""

    def __init__(
        self,
        workflow: Any,
        *args: Any,
        workflow_id: str = "wf",
        run_id: str = "r1",
        child_results: Callable[[str, bytes], bytes] | None = None,
    ) -> None:
        self.definition = definition_of(workflow)
        self.driver = Driver(self.definition)
        self.history: list[ev.Event] = []
        self.time = T0
        self.pending_steps: list[c.ScheduleStep] = []
        self.timers: list[tuple[datetime, int]] = []
        self.children: list[c.StartChild] = []
        self.child_results = child_results
        self.step_calls: list[str] = []
        self._record_and_apply(
            ev.WorkflowStarted(
                seq=1,
                at=self.time,
                workflow_id=workflow_id,
                run_id=run_id,
                workflow_type=self.definition.name,
                input=self.definition.encode_input(args, limit=1 << 20),
                tenant="default",
            )
        )

    @property
    def seq(self) -> int:
        return len(self.history)

    def _record_and_apply(self, event: ev.Event) -> None:
        self.history.append(event)
        commands = self.driver.apply(event)
        for command in commands:
            extra: dict[str, Any] = {}
            if isinstance(command, c.StartChild):
                extra["child_run_id"] = f"run-of-{command.workflow_id}"
            if isinstance(command, c.ContinueAsNew):
                extra["new_run_id"] = "r2"
            self.history.append(c.to_event(command, self.seq + 1, self.time, **extra))
            match command:
                case c.ScheduleStep():
                    self.pending_steps.append(command)
                case c.StartTimer():
                    heapq.heappush(self.timers, (command.due, command.seq))
                case c.CancelTimer():
                    self.timers = [t for t in self.timers if t[1] != command.seq]
                    heapq.heapify(self.timers)
                case c.StartChild():
                    self.children.append(command)

    def signal(self, name: str, payload: Any = None) -> None:
        self._record_and_apply(
            ev.SignalReceived(
                seq=self.seq + 1, at=self.time, name=name, payload=encode_payload(payload)
            )
        )

    def cancel(self, reason: str = "stop") -> None:
        self._record_and_apply(
            ev.WorkflowCancelRequested(seq=self.seq + 1, at=self.time, reason=reason)
        )

    def run_one_step(self) -> bool:
        if not self.pending_steps:
            return False
        cmd = self.pending_steps.pop(0)
        attempt = 1
        while True:
            self._record_and_apply(
                ev.StepStarted(seq=self.seq + 1, at=self.time, step_seq=cmd.seq, attempt=attempt)
            )
            self.step_calls.append(cmd.name)
            try:
                result = cmd.fn(*cmd.args, **cmd.kwargs)
            except Exception as exc:
                retry = cmd.retry.retryable(exc) and attempt < cmd.retry.max_attempts
                self._record_and_apply(
                    ev.StepFailed(
                        seq=self.seq + 1,
                        at=self.time,
                        step_seq=cmd.seq,
                        attempt=attempt,
                        error_type=type(exc).__name__,
                        message=str(exc),
                        retryable=cmd.retry.retryable(exc),
                        will_retry=retry,
                    )
                )
                if not retry:
                    return True
                attempt += 1
                continue
            self._record_and_apply(
                ev.StepCompleted(
                    seq=self.seq + 1,
                    at=self.time,
                    step_seq=cmd.seq,
                    attempt=attempt,
                    result=encode_payload(result),
                )
            )
            return True

    def fire_next_timer(self) -> bool:
        if not self.timers:
            return False
        due, seq = heapq.heappop(self.timers)
        self.time = max(self.time, due)
        self._record_and_apply(ev.TimerFired(seq=self.seq + 1, at=self.time, timer_seq=seq))
        return True

    def finish_child(self) -> bool:
        if not self.children or self.child_results is None:
            return False
        cmd = self.children.pop(0)
        self._record_and_apply(
            ev.ChildCompleted(
                seq=self.seq + 1,
                at=self.time,
                child_seq=cmd.seq,
                result=self.child_results(cmd.workflow_type, cmd.input),
            )
        )
        return True

    def run(self, signals: Sequence[tuple[str, Any]] = ()) -> Sim:
        """Run steps, children and timers until the workflow ends or nothing is left."""
        queue = list(signals)
        while self.driver.outcome is None:
            if self.run_one_step() or self.finish_child():
                continue
            if queue and queue[0][0] in self.driver.pending().get("signals", []):
                self.signal(*queue.pop(0))
                continue
            if self.fire_next_timer():
                continue
            if not queue:
                break
            self.signal(*queue.pop(0))
        return self

    def advance(self, seconds: float) -> None:
        self.time += timedelta(seconds=seconds)


def replay(workflow: Any, history: Sequence[ev.Event]) -> Driver:
    driver = Driver(definition_of(workflow))
    driver.replay(history)
    return driver
