"""The step executor: a fixed pool of worker tasks (no task spawn per step).

Sync steps run on daemon threads of the executor's own (:mod:`._threads`), bounded by a
capacity limiter: one that never returns does not keep the process from exiting. Async steps
run on the event loop. A running step can read :func:`current_step` for its idempotency key and
attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from aion import _tracing
from aion._loop import WorkQueue

from ._metrics import Metrics
from ._threads import DaemonThreads
from ._types import StepInfo

__all__ = ["StepExecutor", "StepJob", "current_step", "format_failure"]

log = logging.getLogger("aion.engine")

#: Frames of the executor and of its thread hand-off that lead into a step: left out of a
#: recorded traceback, which starts at the step's own code.
_PLUMBING = (
    str(Path(__file__)),
    str(Path(__file__).with_name("_threads.py")),
    str(Path(anyio.__file__).parent) + os.sep,
)

#: At most this many frames are formatted (the innermost ones): bounds the work for deep stacks.
_MAX_FRAMES = 100

_CURRENT: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "aion_current_step", default=None
)


def current_step() -> StepInfo:
    """The step running in this context (thread or task).

    Raises:
        RuntimeError: called outside a step.
    """
    info = _CURRENT.get()
    if info is None:
        raise RuntimeError("aion.current_step() is only available inside a running step")
    return info


@dataclass(slots=True, eq=False)
class StepJob:
    info: StepInfo
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timeout: float | None
    done: Callable[[StepJob, Any, BaseException | None], None]
    workflow_type: str = ""  # for the metrics' labels
    trace: str = ""  # the run's traceparent: the parent of the attempt's span


class StepExecutor:
    """Runs steps with bounded concurrency; hands each outcome to the job's ``done`` callback.

    ``metrics``: each executed attempt is counted there, with its wall time.
    """

    def __init__(
        self,
        *,
        workers: int,
        threads: int,
        busy: Callable[[], AbstractContextManager[object]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._queue: WorkQueue[StepJob] = WorkQueue()
        self._workers = workers
        self._limiter = anyio.CapacityLimiter(threads)
        self._threads = DaemonThreads()
        self._busy = busy or nullcontext
        self._pending = 0
        self._running: set[StepJob] = set()  # identity: a job is one dispatch of an attempt
        self._metrics = metrics

    async def run(self, tg: TaskGroup) -> None:
        """Start the worker tasks in ``tg``. Steps that were executing when earlier workers
        stopped (the service failed and is restarted) are queued again: at-least-once."""
        for job in self._running:
            self._pending -= 1
            self.submit(job)
        self._running.clear()
        for _ in range(self._workers):
            tg.start_soon(self._worker)

    @property
    def idle(self) -> bool:
        """No step queued or running."""
        return self._pending == 0

    def submit(self, job: StepJob) -> None:
        """Queue a step; never blocks."""
        self._pending += 1
        self._queue.put_nowait(job)

    async def _worker(self) -> None:
        queue = self._queue
        while True:
            job = await queue.get()
            self._running.add(job)
            with self._busy():
                started = time.perf_counter()
                value, error = await self._execute(job)
                if self._metrics is not None:
                    elapsed = time.perf_counter() - started
                    self._metrics.step_attempt(job.workflow_type, job.info.name, elapsed)
            self._running.discard(job)
            self._pending -= 1
            if error is not None:
                _log_failure(job.info, error)
            job.done(job, value, error)

    async def _execute(self, job: StepJob) -> tuple[Any, BaseException | None]:
        if not _tracing.enabled():
            return await self._execute_attempt(job)
        info = job.info
        attributes = {
            "aion.workflow_id": info.workflow_id,
            "aion.run_id": info.run_id,
            "aion.step_seq": info.step_seq,
            "aion.attempt": info.attempt,
            "aion.tenant": info.tenant,
        }
        with _tracing.step_span(job.trace, info.name, attributes) as failed:
            value, error = await self._execute_attempt(job)
            if error is not None:
                failed(error)
            return value, error

    async def _execute_attempt(self, job: StepJob) -> tuple[Any, BaseException | None]:
        token = _CURRENT.set(job.info)
        try:
            if not job.timeout:  # no cancel scope: entering one costs ~2.5 us
                return await self._call(job)
            # A cancel scope of our own, not fail_after: only its expiry is the step's
            # timeout=; a TimeoutError the step's code raises is that code's own error.
            with anyio.CancelScope(deadline=anyio.current_time() + job.timeout):
                return await self._call(job)
            # Reached only when the deadline cancelled the step (the scope swallowed that).
            return None, TimeoutError(f"step {job.info.name!r} timed out after {job.timeout}s")
        except Exception as exc:
            return None, exc
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()) and _cancelling():
                raise  # the engine is stopping: the attempt is abandoned, not failed
            # The step's own (SystemExit, KeyboardInterrupt, GeneratorExit, a CancelledError
            # nobody asked for ...): a failed attempt, never the executor's failure.
            return None, exc
        finally:
            _CURRENT.reset(token)

    async def _call(self, job: StepJob) -> tuple[Any, BaseException | None]:
        if inspect.iscoroutinefunction(job.fn):
            return await job.fn(*job.args, **job.kwargs), None
        call = functools.partial(job.fn, *job.args, **job.kwargs)
        run = functools.partial(contextvars.copy_context().run, call)
        # Cancelled (the step's timeout, the engine stopping), the wait is abandoned and the
        # limiter's slot freed at once; the thread runs the call to its end and drops it.
        async with self._limiter:
            result, error = await self._threads.run(run)
        if error is not None:
            # The step's own, also a BaseException (SystemExit, KeyboardInterrupt ...): a
            # failed attempt, never the engine's failure.
            return None, error
        if inspect.isawaitable(result):  # a sync callable returning an awaitable
            result = await _await(result)
        return result, None


def _cancelling() -> bool:
    """Whether this task was asked to stop (a cancellation from outside the step)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def format_failure(error: BaseException, limit: int = 8192) -> str:
    """The traceback of a failed step attempt, as recorded in ``StepFailed.traceback``.

    The frames of the executor and of anyio that lead into the step are left out, so the text
    starts at the step's own code. At most ``limit`` bytes of UTF-8: a longer traceback keeps
    its end (the innermost frames and the error line) behind a line saying what was left out.
    """
    tb = _skip_plumbing(error.__traceback__)
    try:
        text = "".join(traceback.format_exception(type(error), error, tb, limit=-_MAX_FRAMES))
    except Exception:  # a broken __str__ or __repr__ must not cost the record
        text = f"{type(error).__name__}: <the traceback could not be formatted>\n"
    data = text.encode("utf-8", "replace")  # no lone surrogates reach the encoder
    if len(data) <= limit:
        return data.decode("utf-8")
    marker = "[... {} bytes of the traceback left out ...]\n"
    keep = max(limit - len(marker.format(len(data))), 0)
    tail = data[len(data) - keep :].decode("utf-8", "ignore")  # no split character
    newline = tail.find("\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]  # start at a whole line
    cut = len(data) - len(tail.encode("utf-8"))
    return marker.format(cut) + tail


def _skip_plumbing(tb: TracebackType | None) -> TracebackType | None:
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PLUMBING):
        tb = tb.tb_next
    return first if tb is None else tb  # nothing but plumbing: keep it all


def _log_failure(info: StepInfo, error: BaseException) -> None:
    # One line per failed attempt; the traceback is in the history (step.failed).
    log.warning(
        "step %r (attempt %d) of workflow %s/%s failed: %s: %s",
        info.name,
        info.attempt,
        info.tenant,
        info.workflow_id,
        type(error).__name__,
        error,
    )
