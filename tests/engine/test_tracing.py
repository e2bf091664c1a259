"""OpenTelemetry spans (docs/observability.md): a start, each activation and each executed step
attempt, in the caller's trace, which the history keeps across restarts; replay emits none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aion
from aion.testing import ManualClock

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="tracing needs aion[tracing]")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from aion import _tracing  # noqa: E402

EXPORTER = InMemorySpanExporter()
PROVIDER = sdk_trace.TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
ATTEMPTS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _provider() -> Iterator[None]:
    """The engine's spans go to an in-memory exporter for this module's tests only (the
    process's global provider is left alone: OpenTelemetry lets it be set once)."""
    EXPORTER.clear()
    _tracing.use_tracer_provider(PROVIDER)
    try:
        yield
    finally:
        _tracing.use_tracer_provider(None)


def flaky(key: str) -> str:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    with PROVIDER.get_tracer("user-code").start_as_current_span("inside the step"):
        if ATTEMPTS[key] == 1:
            raise ConnectionError("first attempt fails")
    return f"{key} ok"


def plain(x: int) -> int:
    return x + 1


@aion.workflow
async def traced(ctx: aion.Context, key: str) -> str:
    first = await ctx.step(flaky, key, retry=aion.RetryPolicy(initial_interval=0.01))
    second = await ctx.step(plain, 1)
    go: str = await ctx.wait_signal("go")
    return f"{first} {second} {go}"


def _spans(prefix: str) -> list[Any]:
    return [s for s in EXPORTER.get_finished_spans() if s.name.startswith(prefix)]


async def test_spans_join_the_callers_trace_and_survive_a_restart(tmp_path: Path) -> None:
    tracer = PROVIDER.get_tracer("the caller")
    clock = ManualClock(auto_advance=True)  # the retry's timer fires once all is idle
    async with aion.Engine(tmp_path, workflows=[traced], clock=clock) as engine:
        with tracer.start_as_current_span("handle request") as request:
            await engine.start(traced, "a", workflow_id="t1")
        await engine.wait_idle()
    trace_id = request.get_span_context().trace_id
    (start,) = _spans("aion.start")
    assert start.name == "aion.start traced" and start.context.trace_id == trace_id
    steps = _spans("aion.step")
    assert [(s.name, s.attributes["aion.attempt"]) for s in steps] == [
        ("aion.step flaky", 1),
        ("aion.step flaky", 2),
        ("aion.step plain", 1),
    ]
    assert all(s.context.trace_id == trace_id for s in steps)
    assert all(s.parent.span_id == start.context.span_id for s in steps)  # type: ignore[union-attr]
    failed = steps[0]
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.events[0].name == "exception"
    inner = _spans("inside the step")
    assert {s.parent.span_id for s in inner} == {s.context.span_id for s in steps[:2]}  # type: ignore[union-attr]
    assert _spans("aion.activation") and all(
        s.context.trace_id == trace_id for s in _spans("aion.activation")
    )
    EXPORTER.clear()
    # A new engine replays the run: no step runs again, no span is repeated; the signal's
    # activation is in the same trace (the history kept its context).
    async with aion.Engine(tmp_path, workflows=[traced]) as engine:
        await engine.signal("t1", "go", "now")
        assert await engine.handle("t1").result(timeout=10) == "a ok 2 now"
        history = await engine.history("t1")
    assert _spans("aion.step") == [] and _spans("aion.start") == []
    activations = _spans("aion.activation")
    assert activations and all(s.context.trace_id == trace_id for s in activations)
    assert history[0].data["trace"].split("-")[1] == f"{trace_id:032x}"


async def test_a_start_without_a_current_span_begins_a_trace(tmp_path: Path) -> None:
    clock = ManualClock(auto_advance=True)
    async with aion.Engine(tmp_path, workflows=[traced], clock=clock) as engine:
        await engine.start(traced, "b", workflow_id="t2")
        await engine.wait_idle()
        await engine.signal("t2", "go", "x")
        await engine.handle("t2").result(timeout=10)
    (start,) = _spans("aion.start")
    assert start.parent is None
    assert {s.context.trace_id for s in _spans("aion.")} == {start.context.trace_id}


async def test_a_start_over_http_joins_the_trace_of_its_traceparent(tmp_path: Path) -> None:
    serving_module = pytest.importorskip("tests.server._serving")
    from aion._apikeys import ApiKeys

    key, _ = ApiKeys(tmp_path / "api-keys.json").create(role="operator", tenant="default")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    header = f"00-{trace_id}-00f067aa0ba902b7-01"
    async with (
        aion.Engine(tmp_path, workflows=[traced], clock=ManualClock(auto_advance=True)) as engine,
        serving_module.serving(engine) as base,
        serving_module.httpx.AsyncClient() as http,
    ):
        r = await http.post(
            base + "/api/v1/workflows",
            json={"workflow_type": "traced", "args": ["h"], "workflow_id": "t3"},
            headers={"authorization": f"Bearer {key}", "traceparent": header},
        )
        assert r.status_code == 201, r.text
        await engine.wait_idle()
    (start,) = _spans("aion.start")
    assert f"{start.context.trace_id:032x}" == trace_id
    assert {f"{s.context.trace_id:032x}" for s in _spans("aion.")} == {trace_id}
