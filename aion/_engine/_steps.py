"""The step executor: a fixed pool of worker tasks (no task spawn per step).

Sync steps run in worker threads bounded by a capacity limiter; async steps run on the event
loop. A running step can read :func:`current_step` for its idempotency key and attempt.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from aion._loop import WorkQueue

from ._types import StepInfo

__all__ = ["StepExecutor", "StepJob", "current_step"]

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


class StepExecutor:
    """Runs steps with bounded concurrency; hands each outcome to the job's ``done`` callback."""

    def __init__(
        self,
        *,
        workers: int,
        threads: int,
        busy: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self._queue: WorkQueue[StepJob] = WorkQueue()
        self._workers = workers
        self._limiter = anyio.CapacityLimiter(threads)
        self._busy = busy or nullcontext
        self._pending = 0
        self._running: set[StepJob] = set()  # identity: a job is one dispatch of an attempt

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
                value, error = await self._execute(job)
            self._running.discard(job)
            self._pending -= 1
            job.done(job, value, error)

    async def _execute(self, job: StepJob) -> tuple[Any, BaseException | None]:
        token = _CURRENT.set(job.info)
        try:
            with anyio.fail_after(job.timeout) if job.timeout else nullcontext():
                if inspect.iscoroutinefunction(job.fn):
                    return await job.fn(*job.args, **job.kwargs), None
                call = functools.partial(job.fn, *job.args, **job.kwargs)
                ctx = contextvars.copy_context()
                result = await anyio.to_thread.run_sync(
                    ctx.run, call, limiter=self._limiter, abandon_on_cancel=True
                )
                if inspect.isawaitable(result):  # a sync callable returning an awaitable
                    result = await _await(result)
                return result, None
        except TimeoutError:
            return None, TimeoutError(f"step {job.info.name!r} timed out after {job.timeout}s")
        except Exception as exc:
            return None, exc
        finally:
            _CURRENT.reset(token)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
