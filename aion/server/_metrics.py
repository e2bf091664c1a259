"""``GET /metrics``: the engine's instruments in the Prometheus text format, rendered by
prometheus-client from :meth:`aion.Engine.metrics`'s snapshot at scrape time (a registry per
app: several engines in one process do not mix)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aion._apikeys import ApiKeys
from aion.errors import AionError

from ._problems import Problem, problem_response

__all__ = ["metrics_route"]


class _Collector:
    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for family in self._engine.metrics.snapshot():
            labels = list(family.label_names)
            if family.kind == "counter":
                name = family.name.removesuffix("_total")
                counter = CounterMetricFamily(name, family.help, labels=labels)
                for values, value in family.samples:
                    counter.add_metric(list(values), value)
                yield counter
            elif family.kind == "gauge":
                gauge = GaugeMetricFamily(family.name, family.help, labels=labels)
                for values, value in family.samples:
                    gauge.add_metric(list(values), value)
                yield gauge
            else:
                histogram = HistogramMetricFamily(family.name, family.help, labels=labels)
                for values, bounds, cumulative, total, _count in family.samples:
                    buckets = [
                        (_bound(bound), float(n))
                        for bound, n in zip(bounds, cumulative, strict=True)
                    ]
                    histogram.add_metric(list(values), buckets, total)
                yield histogram


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def metrics_route(engine: Any, keys: ApiKeys) -> Route:
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415
    from prometheus_client.exposition import CONTENT_TYPE_LATEST  # noqa: PLC0415

    from ._app import _authenticate  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(engine))

    async def endpoint(request: Request) -> Response:
        try:
            key = _authenticate(request, keys)
            if key.tenant is not None:
                raise Problem(
                    403, "forbidden", "/metrics covers every tenant: use an all-tenants key"
                )
        except Problem as problem:
            return problem_response(problem)
        try:
            text = generate_latest(registry)
        except AionError as exc:  # the engine stopped under the scrape
            return problem_response(Problem(503, "not-ready", str(exc)))
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", endpoint, methods=["GET"], name="metrics")
