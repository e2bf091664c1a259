"""``aion.Context``: what workflow code calls. Every method is deterministic under replay."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from aion import _validate
from aion.errors import InvalidArgument

from ._definition import RetryPolicy

if TYPE_CHECKING:
    from aion.events import SearchValue

    from ._operations import Operations
    from ._state import DurableFuture, WorkflowInfo
    from ._waits import Waitpoint

__all__ = ["Context"]

T = TypeVar("T")


# The checks below refuse at the call (in the workflow, which may catch InvalidArgument, with
# nothing recorded) only what could never have been recorded or run: a wrong type, text that is
# not valid Unicode, NaN, a time past the year 9999. Histories recorded by earlier versions
# replay as they did.


def _delay(ctx: Context, value: float | timedelta, what: str, *, negative: bool = False) -> float:
    """Seconds of workflow time from now; the time they reach must be a datetime."""
    seconds = _validate.seconds(value, what, negative=negative, limit=math.inf)
    if seconds > 0:
        try:
            ctx.now() + timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidArgument(
                f"{what} of {_validate.shown(value)} seconds reaches past the last time a "
                "timer can have (the year 9999); pass a shorter duration"
            ) from None
    return seconds


class Context:
    """The workflow's handle on aion: durable operations and deterministic values.

    Workflow code receives it as its first argument. It must not be shared with other tasks or
    used after the workflow returns.
    """

    __slots__ = ("_driver",)

    def __init__(self, driver: Operations) -> None:
        self._driver = driver

    @property
    def info(self) -> WorkflowInfo:
        """``workflow_id``, ``run_id``, ``workflow_type``, ``tenant``, ``started_at``."""
        assert self._driver.info is not None
        return self._driver.info

    def step(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        compensate: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> DurableFuture:
        """Run ``fn(*args, **kwargs)`` once as a step and record its result.

        Sync functions run in worker threads, async ones on the event loop. On replay the
        recorded result (or error) is returned without running ``fn``. A step may run more than
        once if the process dies between its side effect and its record; it receives a stable
        idempotency key (``aion.current_step().idempotency_key``) to pass to outside systems.

        Args:
            name: the recorded name (default: ``fn.__qualname__``); replay matches on it.
            retry: how failures are retried (default ``RetryPolicy()``: 3 attempts).
            timeout: seconds (or a timedelta) one attempt may take.
            compensate: a function to run (as a step, with the same arguments) when
                :meth:`compensate` is called later, e.g. to undo this step in a saga.

        Raises:
            PayloadError: the arguments cannot be encoded or are too large (at the call).
            StepError: (when awaited) the step failed for good.
        """
        if name is not None:
            _validate.text(name, "ctx.step(name=...)", limit=None)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgument(
                f"ctx.step(retry=...) takes an aion.RetryPolicy, not {type(retry).__name__}"
            )
        seconds = None
        if isinstance(timeout, float) and timeout == math.inf:
            seconds = timeout  # no limit, as it always meant: a step timeout is not a timer
        elif timeout is not None:  # (a negative one, as before, times out at once)
            seconds = _validate.seconds(
                timeout, "ctx.step(timeout=...)", negative=True, limit=math.inf
            )
        future = self._driver.schedule_step(
            fn, args, kwargs, name=name, retry=retry, timeout=seconds
        )
        if compensate is not None:
            driver = self._driver

            def remember(f: DurableFuture) -> None:
                if f.error is None:
                    driver._compensations.append((compensate, args, kwargs))

            future.callbacks.append(remember)
        return future

    async def compensate(self) -> None:
        """Run the compensations of completed steps, most recent first, each as a step."""
        while self._driver._compensations:
            fn, args, kwargs = self._driver._compensations.pop()
            await self.step(fn, *args, **kwargs)

    def sleep(self, delay: float | timedelta) -> DurableFuture:
        """A durable timer: resumes after ``delay`` (seconds or timedelta) of workflow time."""
        seconds = _delay(self, delay, "ctx.sleep's delay", negative=True)
        if seconds <= 0:
            return self._driver.gather(())
        return self._driver.start_timer(seconds)

    def sleep_until(self, when: datetime) -> DurableFuture:
        """A durable timer that fires at ``when`` (an aware datetime)."""
        _validate.aware_datetime(when, "ctx.sleep_until's time")
        seconds = (when - self.now()).total_seconds()
        if seconds <= 0:
            return self._driver.gather(())
        return self.sleep(seconds)

    def wait_signal(self, name: str, *, timeout: float | timedelta | None = None) -> DurableFuture:
        """The payload of the next signal ``name`` (earlier signals are buffered, in order).

        Raises:
            WaitTimedOut: (when awaited) no such signal arrived within ``timeout``.
        """
        _validate.text(name, "ctx.wait_signal's name", limit=None)
        seconds = None
        if timeout is not None:
            seconds = _delay(self, timeout, "ctx.wait_signal's timeout", negative=True)
        return self._driver.wait_signal(name, seconds)

    def approval(
        self,
        action: str,
        *,
        details: Any = None,
        timeout: float | timedelta | None = None,
    ) -> DurableFuture:
        """Park until a person approves or rejects ``action`` (``engine.approve``/``reject``).

        The approval gets a stable id and is bound to a digest of ``action`` and ``details``:
        a decision applies to exactly this request.

        Returns:
            (when awaited) ``aion.Approval(user, comment, decided_at)``.

        Raises:
            PayloadError: ``details`` cannot be encoded or are too large (at the call).
            ApprovalRejected: (when awaited) a person rejected it; the message names them and
                their comment.
            WaitTimedOut: (when awaited) nobody decided within ``timeout``.
        """
        if isinstance(action, str):
            _validate.text(action, "ctx.approval's action", limit=None)
        seconds = None
        if timeout is not None:
            seconds = _delay(self, timeout, "ctx.approval's timeout", negative=True)
        return self._driver.request_approval(action, details, seconds)

    async def waitpoint(self, name: str, *, timeout: float | timedelta | None = None) -> Waitpoint:
        """Create a durable waitpoint that an outside system completes with its token.

        Hand ``wp.token`` out from a step (e.g. as a callback URL parameter); the outside system
        calls ``engine.complete_waitpoint(token, payload)``. ``await wp.wait()`` returns the
        payload; a completion that arrives before ``wait()`` is kept. The token expires with
        the waitpoint (after ``timeout``).

        Raises:
            WaitTimedOut: (from ``wp.wait()``) the waitpoint expired before it was completed.
        """
        if isinstance(name, str):
            _validate.text(name, "ctx.waitpoint's name", limit=None)
        seconds = None
        if timeout is not None:
            seconds = _delay(self, timeout, "ctx.waitpoint's timeout", negative=True)
        return self._driver.create_waitpoint(name, seconds)

    def child(self, workflow: Any, *args: Any, workflow_id: str | None = None) -> DurableFuture:
        """Start a child workflow and (when awaited) return its result.

        Raises:
            PayloadError: (at the call) an argument does not match the child's annotations,
                cannot be encoded, or is too large; no child is started.
            WorkflowFailed / WorkflowCancelled: (when awaited) the child failed or was cancelled.
        """
        if workflow_id is not None:
            _validate.identifier(workflow_id, "ctx.child(workflow_id=...)")
        return self._driver.start_child(workflow, args, workflow_id)

    def gather(self, *awaitables: Awaitable[Any]) -> DurableFuture:
        """Await several durable operations (or coroutines using them) concurrently.

        Results come in argument order; the first error (in event order) is raised.
        """
        return self._driver.gather(awaitables)

    def continue_as_new(self, *args: Any) -> NoReturn:
        """End this run and start a fresh run of the same workflow id with ``args``.

        Raises:
            PayloadError: an argument does not match the workflow's annotations, cannot be
                encoded, or is too large; the run goes on.
        """
        self._driver.continue_as_new(args)

    def now(self) -> datetime:
        """The workflow's current time (UTC): the recorded time of the event being processed."""
        assert self._driver.time is not None
        return self._driver.time

    def random(self) -> random.Random:
        """A ``random.Random`` seeded from the run's identity: the same values on replay."""
        return self._driver.rng

    def uuid4(self) -> uuid.UUID:
        """A random-looking UUID that is the same on every replay."""
        return uuid.UUID(int=self._driver.rng.getrandbits(128), version=4)

    def patched(self, change_id: str) -> bool:
        """``True`` for runs that reach this point with the new code, ``False`` on replay of a
        history recorded before the change. Guard new code paths with it."""
        _validate.text(change_id, "ctx.patched's change id", limit=None)
        return self._driver.patched(change_id)

    def upsert_search_attributes(self, **attributes: SearchValue) -> None:
        """Record search attributes for this run (shown by describe and list)."""
        for key, value in attributes.items():
            _validate.search_value(key, value)
        self._driver.upsert_search_attributes(attributes)

    @property
    def cancel_requested(self) -> bool:
        """Whether cancellation was requested (``aion.Cancelled`` is raised at the await)."""
        return self._driver.cancel_requested
