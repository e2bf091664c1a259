"""The OpenAPI 3.1 document, built from the route table and the msgspec types (so the spec is
what the code does), served at ``GET /api/openapi.json``."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aion._engine._types import WorkflowDescription

from ._problems import PROBLEM_TYPE, ProblemBody

__all__ = ["openapi", "openapi_route"]

_REF = "#/components/schemas/{name}"
#: One server-sent event (OpenAPI 3.1: the schema of a ``text/event-stream`` is per event):
#: ``event`` the history event's type (or ``end``), ``data`` its JSON, ``id`` its ``seq``.
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
    },
}
_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Malformed JSON",
    401: "No valid API key",
    403: "Not allowed (role, tenant binding or token)",
    404: "Not found in the key's tenant",
    409: "Conflicts with the run's state",
    413: "Body too large",
    415: "Not JSON",
    422: "Invalid argument, body or query",
    503: "Not ready",
}


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("aion")
    except Exception:
        return "0"


@functools.cache
def openapi() -> dict[str, Any]:
    """The document (built once per process)."""
    from ._app import OPERATIONS  # noqa: PLC0415 (the table imports this module's user)

    types: list[Any] = [ProblemBody, WorkflowDescription]
    for op in OPERATIONS:
        for kind in (op.body, op.answer):
            if kind is not None and not isinstance(kind, str):
                types.append(kind)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        item: dict[str, Any] = {
            "operationId": op.name,
            "summary": op.summary,
            "tags": list(op.tags),
            "parameters": _parameters(op, components),
            "responses": _responses(op, by_type),
        }
        if op.role is not None:
            item["security"] = [{"apiKey": []}]
            item["description"] = f"Needs a key with the role {op.role!r} or above."
        else:
            item["security"] = []
        if op.body is not None:
            item["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": by_type[op.body]}},
            }
        elif op.any_body:
            item["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": {}}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = item
    paths["/api/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["operations"],
            "security": [],
            "responses": {"200": {"description": "OK", "content": {"application/json": {}}}},
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (all-tenants key)",
            "tags": ["operations"],
            "security": [{"apiKey": []}],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _problem_response(401),
                "403": _problem_response(403),
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aion control plane",
            "version": _version(),
            "description": "Workflows, approvals and waitpoints of an embedded aion engine.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `aion api-key create`",
                }
            },
        },
    }


def _parameters(op: Any, components: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    if op.role is not None:
        params.append(
            {
                "name": "X-Aion-Tenant",
                "in": "header",
                "required": False,
                "description": "The tenant, for an all-tenants key (default: 'default')",
                "schema": {"type": "string"},
            }
        )
    if op.query is not None:
        (schema,), query_components = msgspec.json.schema_components([op.query], ref_template=_REF)
        if "$ref" in schema:
            schema = query_components[schema["$ref"].rsplit("/", 1)[-1]]
        for name, given in schema.get("properties", {}).items():
            prop = dict(given)
            if prop.get("default", 0) is None:
                del prop["default"]
            params.append({"name": name, "in": "query", "required": False, "schema": prop})
    return params


def _problem_response(status: int) -> dict[str, Any]:
    return {
        "description": _STATUS_TEXT.get(status, "Error"),
        "content": {PROBLEM_TYPE: {"schema": {"$ref": _REF.format(name="ProblemBody")}}},
    }


def _responses(op: Any, by_type: dict[Any, Any]) -> dict[str, Any]:
    answer = op.answer
    ok: dict[str, Any] = {"description": _STATUS_TEXT.get(op.status, "OK")}
    if answer == "text/event-stream":
        ok["content"] = {"text/event-stream": {"schema": _SSE_EVENT}}
    elif answer == "WorkflowDescription":
        ok["content"] = {"application/json": {"schema": by_type[WorkflowDescription]}}
    elif answer is not None:
        ok["content"] = {"application/json": {"schema": by_type[answer]}}
    responses: dict[str, Any] = {str(op.status): ok}
    if op.name == "start_workflow":
        responses["200"] = {**ok, "description": "It existed already (same type)"}
    for status in sorted(error_statuses(op)):
        responses[str(status)] = _problem_response(status)
    return responses


def error_statuses(op: Any) -> set[int]:
    """Every error status a route can answer: what any keyed route, any route with a body and
    any route on one workflow can answer, and the route's own (``op.errors``)."""
    statuses = set(op.errors)
    if op.role is not None:
        statuses |= {401, 403, 422, 503}  # key, role or tenant binding, tenant header, engine
    if "{workflow_id}" in op.path:
        statuses |= {404, 422, 503}
    if op.body is not None or op.any_body:
        statuses |= {400, 413, 415, 422, 503}
    return statuses


def openapi_route() -> Route:
    async def endpoint(request: Request) -> Response:
        return Response(msgspec.json.encode(openapi()), media_type="application/json")

    return Route("/api/openapi.json", endpoint, methods=["GET"], name="openapi")
