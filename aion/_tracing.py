"""OpenTelemetry spans of starts, activations and step attempts (docs/observability.md).

Only the OpenTelemetry *API* is used (``pip install "aion[tracing]"``); the service configures
a tracer provider and exporters as for any OpenTelemetry setup. Without the API, or until a
provider is set, every function here is a cheap no-op.

A run's trace context is recorded in its history (``WorkflowStarted.trace``, a W3C
``traceparent``), so the spans of its activations and steps join the caller's trace after a
restart too, on whichever engine drives the run. Spans are made only for work done now: replay
makes none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

try:  # the API is optional
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.trace import Status, StatusCode

    _AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _AVAILABLE = False

__all__ = [
    "activation_span",
    "enabled",
    "extracted",
    "start_span",
    "step_span",
    "use_tracer_provider",
]

_TRACER_NAME = "aion"
#: A provider of the engine's own instead of OpenTelemetry's global one (tests).
_provider: Any = None


def use_tracer_provider(provider: Any) -> None:
    """Make aion's spans with ``provider`` instead of the global one (None: the global one
    again). OpenTelemetry lets a process set its global provider once; tests use this."""
    global _provider
    _provider = provider


def enabled() -> bool:
    """Whether spans are recorded: the API is installed and a tracer provider is set."""
    if not _AVAILABLE:
        return False
    if _provider is not None:
        return True
    return not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider)


def _tracer() -> Any:
    return (_provider or _trace.get_tracer_provider()).get_tracer(_TRACER_NAME)


def _parent(traceparent: str) -> Any:
    if not traceparent:
        return None
    return _propagate.extract({"traceparent": traceparent})


def _traceparent() -> str:
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return carrier.get("traceparent", "")


@contextlib.contextmanager
def start_span(workflow_type: str, workflow_id: str, tenant: str) -> Iterator[str]:
    """Around a start: a span ``aion.start <type>`` (a child of the caller's current span);
    yields the ``traceparent`` to record with the run ("" when tracing is off)."""
    if not enabled():
        yield ""
        return
    attributes = {"aion.workflow_type": workflow_type, "aion.workflow_id": workflow_id}
    attributes["aion.tenant"] = tenant
    with _tracer().start_as_current_span(f"aion.start {workflow_type}", attributes=attributes):
        yield _traceparent()


@contextlib.contextmanager
def activation_span(traceparent: str, workflow_type: str, key: tuple[str, str]) -> Iterator[None]:
    """Around one activation of a run (a processing round), in the run's trace."""
    if not enabled():
        yield
        return
    attributes = {"aion.workflow_type": workflow_type, "aion.workflow_id": key[1]}
    attributes["aion.tenant"] = key[0]
    with _tracer().start_as_current_span(
        f"aion.activation {workflow_type}", context=_parent(traceparent), attributes=attributes
    ):
        yield


@contextlib.contextmanager
def step_span(traceparent: str, name: str, attributes: Mapping[str, Any]) -> Iterator[Any]:
    """Around one executed step attempt, in the run's trace; current while the step runs (so
    the step's own spans nest under it). Yields a callable that marks the attempt failed."""
    if not enabled():
        yield _no_failure
        return
    with _tracer().start_as_current_span(
        f"aion.step {name}",
        context=_parent(traceparent),
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:

        def failed(error: BaseException) -> None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

        yield failed


def _no_failure(error: BaseException) -> None:
    return None


@contextlib.contextmanager
def extracted(headers: Mapping[str, str]) -> Iterator[None]:
    """Make the trace context of incoming HTTP headers (``traceparent``) current."""
    if not enabled() or "traceparent" not in headers:
        yield
        return
    from opentelemetry import context as _context  # noqa: PLC0415

    token = _context.attach(_propagate.extract(dict(headers)))
    try:
        yield
    finally:
        _context.detach(token)
