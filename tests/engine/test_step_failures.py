"""Failed steps: their own errors kept as they are, ``timeout=``, tracebacks, and the log line.

Tests marked "needs the actor" read the traceback the actor records in ``step.failed`` (it
calls ``format_failure``); the rest pass on the executor and the views alone.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import aion
from aion._engine._steps import format_failure
from aion.testing import ManualClock
from tests import _postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)

attempts: dict[str, int] = {}


def bank_call(order: str) -> str:
    # The step's own TimeoutError (an outside system did not answer): not the engine's timeout=.
    raise TimeoutError(f"the bank did not answer for {order}")


async def hang(order: str) -> str:
    await anyio.Event().wait()  # never set: only timeout= ends this attempt
    return order


def flaky(order: str) -> str:
    attempts[order] = attempts.get(order, 0) + 1
    if attempts[order] == 1:
        raise ConnectionError(f"reset by peer while charging {order}")
    return f"charged {order}"


def explode(order: str) -> str:
    raise ValueError(f"no such order {order}")


@aion.workflow
async def own_timeout(ctx: aion.Context, order: str, limit: float | None) -> str:
    result: str = await ctx.step(
        bank_call, order, timeout=limit, retry=aion.RetryPolicy(max_attempts=1)
    )
    return result


@aion.workflow
async def hanging(ctx: aion.Context, order: str) -> str:
    result: str = await ctx.step(
        hang, order, timeout=0.05, retry=aion.RetryPolicy(max_attempts=2, initial_interval=5)
    )
    return result


@aion.workflow
async def retried(ctx: aion.Context, order: str) -> str:
    result: str = await ctx.step(
        flaky, order, retry=aion.RetryPolicy(max_attempts=3, initial_interval=10)
    )
    return result


@aion.workflow
async def doomed(ctx: aion.Context, order: str) -> str:
    result: str = await ctx.step(explode, order, retry=aion.RetryPolicy(max_attempts=2))
    return result


ALL = [own_timeout, hanging, retried, doomed]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0, auto_advance=True)


@pytest.fixture(params=["lmdb", "memory", "postgres"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[aion.Engine]:
    with _postgres.target(request.param, tmp_path) as target:
        async with aion.Engine(target, workflows=ALL, clock=clock) as e:
            yield e


async def failures(engine: aion.Engine, workflow_id: str) -> list[dict[str, Any]]:
    return [h.data for h in await engine.history(workflow_id) if h.type == "step.failed"]


# --- 9: a step's own TimeoutError, and timeout= ----------------------------------------------


@pytest.mark.parametrize("limit", [None, 60.0])
async def test_a_steps_own_timeout_error_keeps_its_type_and_message(
    engine: aion.Engine, limit: float | None
) -> None:
    handle = await engine.start(own_timeout, "o-1", limit, workflow_id="own")
    with pytest.raises(aion.WorkflowFailed) as caught:
        await handle.result(timeout=10)
    assert caught.value.error_type == "TimeoutError"
    assert "the bank did not answer for o-1" in str(caught.value)
    [failed] = await failures(engine, "own")
    assert failed["error_type"] == "TimeoutError"
    assert failed["message"] == "the bank did not answer for o-1"  # not "timed out after ..."


async def test_a_step_over_its_timeout_fails_with_timed_out_and_is_retried(
    engine: aion.Engine,
) -> None:
    handle = await engine.start(hanging, "o-2", workflow_id="hang")
    with pytest.raises(aion.WorkflowFailed) as caught:
        await handle.result(timeout=10)
    assert caught.value.error_type == "TimeoutError"
    history = await engine.history("hang")
    kinds = [h.type for h in history if h.type.startswith("step.")]
    assert kinds == [
        "step.scheduled",
        "step.started",
        "step.failed",
        "step.retry_scheduled",
        "step.started",
        "step.failed",
    ]
    first, second = await failures(engine, "hang")
    for number, failed in enumerate((first, second), start=1):
        assert failed["attempt"] == number
        assert failed["error_type"] == "TimeoutError"
        assert failed["message"] == "step 'hang' timed out after 0.05s"
        assert failed["retryable"] is True
    assert first["will_retry"] is True and second["will_retry"] is False
    retry = next(h for h in history if h.type == "step.retry_scheduled")
    first_failed_at = next(h.recorded_at for h in history if h.type == "step.failed")
    assert retry.data["due"] == first_failed_at + timedelta(seconds=5)


# --- 10: the traceback, describe() and the log line ------------------------------------------


def test_format_failure_starts_at_the_steps_code_and_keeps_the_end() -> None:
    def inner() -> None:
        raise ValueError("the innermost error")

    def outer(depth: int) -> None:
        if depth == 0:
            inner()
        outer(depth - 1)

    try:
        outer(400)
    except ValueError as exc:
        error = exc
    text = format_failure(error)
    assert text.startswith("Traceback (most recent call last):")
    assert text.rstrip().endswith("ValueError: the innermost error")
    assert 'raise ValueError("the innermost error")' in text
    small = format_failure(error, limit=300)
    assert len(small.encode()) <= 300
    assert small.startswith("[... ") and "bytes of the traceback left out" in small
    assert small.rstrip().endswith("ValueError: the innermost error")


def test_format_failure_caps_bytes_not_characters() -> None:
    error = RuntimeError("é" * 9000 + " the end")
    text = format_failure(error)
    assert len(text.encode("utf-8")) <= 8192
    assert text.rstrip().endswith("the end")


def test_format_failure_survives_a_broken_str() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    text = format_failure(Broken())
    assert "Broken" in text


async def test_describe_shows_the_last_step_failure_while_the_step_waits_to_retry(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)  # no auto-advance: the retry waits until the test moves time
    attempts.pop("o-3", None)
    async with aion.Engine(tmp_path / "data", workflows=ALL, clock=clock) as engine:
        handle = await engine.start(retried, "o-3", workflow_id="retry")
        await engine.wait_idle()
        desc = await engine.describe("retry")
        assert desc.status is aion.Status.RUNNING
        failure = desc.last_step_failure
        assert failure is not None
        assert failure.step_name == flaky.__qualname__
        assert (failure.step_seq, failure.attempt) == (1, 1)
        assert failure.error_type == "ConnectionError"
        assert failure.message == "reset by peer while charging o-3"
        assert failure.retryable and failure.will_retry
        assert failure.failed_at == T0
        listed = (await engine.list()).items
        assert [d.last_step_failure for d in listed] == [None]  # list() reads no histories
        clock.advance(10)
        assert await handle.result(timeout=10) == "charged o-3"
        after = await engine.describe("retry")
        # A failure the step's next attempt made good is history, not a current problem.
        assert after.last_step_failure is None


async def test_describe_of_a_run_with_no_failed_step_has_none(engine: aion.Engine) -> None:
    attempts["o-4"] = 1  # flaky succeeds at once
    handle = await engine.start(retried, "o-4", workflow_id="fine")
    assert await handle.result(timeout=10) == "charged o-4"
    assert (await engine.describe("fine")).last_step_failure is None


async def test_step_failed_records_the_steps_traceback(engine: aion.Engine) -> None:
    """Needs the actor to record ``traceback=format_failure(error)``."""
    handle = await engine.start(doomed, "o-5", workflow_id="doomed")
    with pytest.raises(aion.WorkflowFailed):
        await handle.result(timeout=10)
    for failed in await failures(engine, "doomed"):
        tb = failed["traceback"]
        assert tb.startswith("Traceback (most recent call last):")
        assert "in explode" in tb and 'raise ValueError(f"no such order {order}")' in tb
        assert tb.rstrip().endswith("ValueError: no such order o-5")
        assert "_steps.py" not in tb and "anyio" not in tb  # starts at the step's own code
    desc = await engine.describe("doomed")
    assert desc.status is aion.Status.FAILED
    failure = desc.last_step_failure
    assert failure is not None
    assert (failure.attempt, failure.will_retry, failure.retryable) == (2, False, True)
    assert "in explode" in failure.traceback


async def test_a_timed_out_step_records_a_traceback(engine: aion.Engine) -> None:
    """Needs the actor to record ``traceback=format_failure(error)``."""
    handle = await engine.start(hanging, "o-6", workflow_id="hang-tb")
    with pytest.raises(aion.WorkflowFailed):
        await handle.result(timeout=10)
    expected = "TimeoutError: step 'hang' timed out after 0.05s"
    for failed in await failures(engine, "hang-tb"):
        assert failed["traceback"].rstrip().endswith(expected)


async def test_each_failed_attempt_is_logged_once_at_warning(
    engine: aion.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aion")
    handle = await engine.start(doomed, "o-7", workflow_id="logged")
    with pytest.raises(aion.WorkflowFailed):
        await handle.result(timeout=10)
    lines = [
        r
        for r in caplog.records
        if r.name == "aion.engine" and "logged" in r.getMessage() and "explode" in r.getMessage()
    ]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING]
    assert [r.getMessage() for r in lines] == [
        f"step 'explode' (attempt {n}) of workflow default/logged failed: "
        "ValueError: no such order o-7"
        for n in (1, 2)
    ]
