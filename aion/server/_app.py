"""The control plane's ASGI application: routes over the Engine's public methods.

One table (:data:`OPERATIONS`) says, for every route, its method and path, the role it needs,
its query, body and answer types and its summary; the router and the OpenAPI document are both
built from it, so they cannot disagree. Each request is authenticated by an API key
(``Authorization: Bearer ...``), scoped to the key's tenant (an all-tenants key names one with
``X-Aion-Tenant``), checked against the route's role, decoded strictly (unknown fields, wrong
types and oversized bodies are 4xx problems) and then handed to the engine, which checks its
arguments as for any caller. A workflow of another tenant is simply not found in the key's
tenant: 404, as for an id that does not exist.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from aion import _tracing, _validate
from aion._apikeys import ApiKey, ApiKeys, allows
from aion.errors import AionError, WorkflowNotFound

from . import _bodies as b
from ._problems import Problem, from_error, problem_response

__all__ = ["OPERATIONS", "Call", "Operation", "create_app"]

log = logging.getLogger("aion.server")

#: Largest request body by default (``create_app(max_body_bytes=...)``).
DEFAULT_MAX_BODY_BYTES = 1 << 20
TENANT_HEADER = "x-aion-tenant"
_JSON = "application/json"
_SSE_POLL_FIRST = 0.02
_SSE_POLL_MAX = 0.5
_SSE_HEARTBEAT = 15.0
#: Stands for an encoded "/" (``%2F``) inside a path segment while routing: workflow ids may
#: hold "/" (a child's default id does), sent percent-encoded in their segment.
_SLASH = "\ue000"


@dataclass
class Call:
    """One request as a route sees it: who asks, for which tenant, with what."""

    request: Request
    engine: Any
    key: ApiKey | None
    tenant: str
    query: Any = None
    body: Any = None

    @property
    def identity(self) -> str:
        """Recorded in the history with every write: the key's label."""
        return self.key.label if self.key is not None else ""

    def path(self, name: str) -> str:
        return path_param(self.request, name)


@dataclass(frozen=True)
class Operation:
    """A route: ``role`` None needs no key (health, the waitpoint completion, the spec)."""

    method: str
    path: str
    name: str
    summary: str
    role: str | None
    run: Callable[[Call], Awaitable[Any]]
    status: int = 200
    query: type[msgspec.Struct] | None = None
    body: type[msgspec.Struct] | None = None
    #: ``True``: the body is any JSON value (a signal's payload), decoded as is.
    any_body: bool = False
    answer: Any = None
    errors: tuple[int, ...] = ()
    all_tenants: bool = False  # the route covers every tenant: a tenant-bound key may not
    tags: tuple[str, ...] = ("workflows",)


# --- the routes ------------------------------------------------------------------------------


async def _list(call: Call) -> b.WorkflowPage:
    q: b.ListQuery = call.query
    search = None
    if q.search is not None:
        try:
            search = msgspec.json.decode(q.search, type=dict[str, str | int | float | bool])
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            raise Problem(
                422,
                "invalid-query",
                f"search must be a JSON object of text, number or boolean values, e.g. "
                f'{{"region": "eu"}}: {exc}',
            ) from exc
    page = await call.engine.list(
        status=q.status,  # its value: the engine takes and checks it
        workflow_type=q.type,
        started_after=q.started_after,
        started_before=q.started_before,
        parent_workflow_id=q.parent,
        search=search,
        id_prefix=q.prefix,
        tenant=call.tenant,
        limit=q.limit,
        cursor=q.cursor,
    )
    return b.WorkflowPage(items=list(page.items), next_cursor=page.next_cursor)


async def _start(call: Call) -> Response:
    body: b.StartBody = call.body
    existed = False
    if body.workflow_id is not None:
        with contextlib.suppress(AionError):
            await call.engine.describe(body.workflow_id, tenant=call.tenant)
            existed = True
    with _tracing.extracted(call.request.headers):  # the caller's trace, if it sent one
        handle = await call.engine.start(
            body.workflow_type,
            *body.args,
            workflow_id=body.workflow_id,
            tenant=call.tenant,
            identity=call.identity,
        )
    run_id: str | None = None
    with contextlib.suppress(WorkflowNotFound):
        run_id = (await call.engine.describe(handle.workflow_id, tenant=call.tenant)).run_id
    answer = b.Started(workflow_id=handle.workflow_id, run_id=run_id)
    return _json(answer, 200 if existed else 201)


async def _describe(call: Call) -> Any:
    return await call.engine.describe(call.path("workflow_id"), tenant=call.tenant)


async def _history(call: Call) -> b.HistoryPage:
    q: b.HistoryQuery = call.query
    after = _validate.after_seq(q.after_seq)
    if q.cursor is not None:
        after = _history_cursor(q.cursor)
    limit = _validate.page_limit(q.limit)
    page = await call.engine.history(
        call.path("workflow_id"), after_seq=after, tenant=call.tenant, limit=limit
    )
    # A full page may have more after it (then the next page may be empty).
    full = len(page) == limit
    return b.HistoryPage(items=page, next_cursor=str(page[-1].seq) if full else None)


def _history_cursor(cursor: str) -> int:
    if not cursor.isdigit() or len(cursor) > 19:
        raise Problem(422, "invalid-argument", "this cursor was not issued by the history route")
    return int(cursor)


async def _history_stream(call: Call) -> Response:
    """Server-sent events: every event after ``after_seq`` (or the ``Last-Event-ID``), then new
    ones as they are recorded; an ``end`` event once the run has finished."""
    q: b.StreamQuery = call.query
    workflow_id = call.path("workflow_id")
    after = _validate.after_seq(q.after_seq)
    last = call.request.headers.get("last-event-id")
    if last is not None and last.isdigit() and len(last) < 19:
        after = int(last)
    await call.engine.describe(workflow_id, tenant=call.tenant)  # 404 before the stream opens

    state = call.request.app.state

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in tail():
                yield chunk
        except AionError as exc:  # the engine stopped under the stream: the client reconnects
            log.info("history stream of %s ended: %s", workflow_id, exc)

    async def tail() -> AsyncIterator[bytes]:
        nonlocal after
        delay = _SSE_POLL_FIRST
        quiet_since = time.monotonic()
        while not getattr(state, "closing", False):  # the server stops: the client reconnects
            batch = await call.engine.history(workflow_id, after_seq=after, tenant=call.tenant)
            for event in batch:
                yield (
                    f"id: {event.seq}\nevent: {event.type}\ndata: ".encode()
                    + msgspec.json.encode(event)
                    + b"\n\n"
                )
                after = event.seq
            if batch:
                delay, quiet_since = _SSE_POLL_FIRST, time.monotonic()
                continue
            description = await call.engine.describe(workflow_id, tenant=call.tenant)
            if description.status.is_terminal and description.history_length <= after:
                yield b"event: end\ndata: {}\n\n"
                return
            if time.monotonic() - quiet_since > _SSE_HEARTBEAT:
                quiet_since = time.monotonic()
                yield b": still running\n\n"
            await anyio.sleep(delay)
            delay = min(delay * 2, _SSE_POLL_MAX)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def _signal(call: Call) -> Response:
    await call.engine.signal(
        call.path("workflow_id"),
        call.path("name"),
        call.body,
        tenant=call.tenant,
        identity=call.identity,
    )
    return Response(status_code=202)


async def _cancel(call: Call) -> Response:
    body: b.CancelBody = call.body
    await call.engine.cancel(
        call.path("workflow_id"), reason=body.reason, tenant=call.tenant, identity=call.identity
    )
    return Response(status_code=202)


async def _unblock(call: Call) -> Response:
    description = await call.engine.unblock(
        call.path("workflow_id"), tenant=call.tenant, identity=call.identity
    )
    return _json(description, 202)


async def _approvals(call: Call) -> b.ApprovalPage:
    q: b.PageQuery = call.query
    page = await call.engine.pending_approvals(tenant=call.tenant, limit=q.limit, cursor=q.cursor)
    return b.ApprovalPage(items=list(page.items), next_cursor=page.next_cursor)


async def _decide(call: Call, approve: bool) -> Response:
    body: b.DecisionBody = call.body
    decide = call.engine.approve if approve else call.engine.reject
    await decide(
        call.path("workflow_id"),
        user=call.identity or "api",
        comment=body.comment,
        approval_id=call.path("approval_id"),
        digest=body.digest,
        tenant=call.tenant,
    )
    return Response(status_code=202)


async def _approve(call: Call) -> Response:
    return await _decide(call, True)


async def _reject(call: Call) -> Response:
    return await _decide(call, False)


async def _waitpoints(call: Call) -> b.WaitpointPage:
    q: b.PageQuery = call.query
    page = await call.engine.pending_waitpoints(
        call.path("workflow_id"), tenant=call.tenant, limit=q.limit, cursor=q.cursor
    )
    return b.WaitpointPage(items=list(page.items), next_cursor=page.next_cursor)


async def _complete(call: Call) -> Response:
    body: b.CompleteBody = call.body
    await call.engine.complete_waitpoint(body.token, body.payload)
    return Response(status_code=202)


async def _recovery(call: Call) -> b.RecoveryBody:
    report = call.engine.recovery
    return b.RecoveryBody(
        runs_scanned=report.runs_scanned,
        runs_reactivated=report.runs_reactivated,
        runs_blocked=report.runs_blocked,
        timers_overdue=report.timers_overdue,
        inbox_pending=report.inbox_pending,
        repairs=[
            {"kind": r.kind, "tenant": r.tenant, "workflow_id": r.workflow_id, "detail": r.detail}
            for r in report.repairs
        ],
        applied=report.applied,
        seconds=report.seconds,
        summary=report.summary(),
    )


async def _healthz(call: Call) -> dict[str, str]:
    return {"status": "ok"}


async def _readyz(call: Call) -> Response:
    if getattr(call.engine, "running", False):
        return _json({"status": "ready"}, 200)
    failure = getattr(call.engine, "failure", None)
    detail = f"the engine stopped: {failure}" if failure else "the engine is not running"
    raise Problem(503, "not-ready", detail)


_ID = "{workflow_id}"
_READ = (401, 404, 422)
_WRITE = (401, 403, 404, 409, 413, 415, 422)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/api/v1/workflows",
        "list_workflows",
        "List the tenant's workflows, newest first (keyset cursors)",
        "viewer",
        _list,
        query=b.ListQuery,
        answer=b.WorkflowPage,
        errors=(401, 422),
    ),
    Operation(
        "POST",
        "/api/v1/workflows",
        "start_workflow",
        "Start a workflow (201), or find the existing one with this id (200)",
        "operator",
        _start,
        status=201,
        body=b.StartBody,
        answer=b.Started,
        errors=_WRITE,
    ),
    Operation(
        "GET",
        f"/api/v1/workflows/{_ID}",
        "describe_workflow",
        "Describe a workflow",
        "viewer",
        _describe,
        answer="WorkflowDescription",
        errors=_READ,
    ),
    Operation(
        "GET",
        f"/api/v1/workflows/{_ID}/history",
        "workflow_history",
        "A page of the workflow's history",
        "viewer",
        _history,
        query=b.HistoryQuery,
        answer=b.HistoryPage,
        errors=_READ,
    ),
    Operation(
        "GET",
        f"/api/v1/workflows/{_ID}/history/stream",
        "workflow_history_stream",
        "The history as server-sent events, then new events as they are recorded",
        "viewer",
        _history_stream,
        query=b.StreamQuery,
        answer="text/event-stream",
        errors=_READ,
    ),
    Operation(
        "POST",
        f"/api/v1/workflows/{_ID}/signals/{{name}}",
        "signal_workflow",
        "Send a signal; the body is its JSON payload (empty: null)",
        "operator",
        _signal,
        status=202,
        any_body=True,
        errors=_WRITE,
    ),
    Operation(
        "POST",
        f"/api/v1/workflows/{_ID}/cancel",
        "cancel_workflow",
        "Ask the workflow to cancel",
        "operator",
        _cancel,
        status=202,
        body=b.CancelBody,
        errors=_WRITE,
    ),
    Operation(
        "POST",
        f"/api/v1/workflows/{_ID}/unblock",
        "unblock_workflow",
        "Retry a BLOCKED run now; answers its description afterwards",
        "operator",
        _unblock,
        status=202,
        answer="WorkflowDescription",
        errors=_WRITE,
    ),
    Operation(
        "GET",
        "/api/v1/approvals",
        "pending_approvals",
        "Approvals waiting for a person, oldest first",
        "viewer",
        _approvals,
        query=b.PageQuery,
        answer=b.ApprovalPage,
        errors=(401, 422),
        tags=("approvals",),
    ),
    Operation(
        "POST",
        f"/api/v1/workflows/{_ID}/approvals/{{approval_id}}/approve",
        "approve",
        "Approve a pending approval (with the digest you saw: exactly that request)",
        "approver",
        _approve,
        status=202,
        body=b.DecisionBody,
        errors=_WRITE,
        tags=("approvals",),
    ),
    Operation(
        "POST",
        f"/api/v1/workflows/{_ID}/approvals/{{approval_id}}/reject",
        "reject",
        "Reject a pending approval",
        "approver",
        _reject,
        status=202,
        body=b.DecisionBody,
        errors=_WRITE,
        tags=("approvals",),
    ),
    Operation(
        "GET",
        f"/api/v1/workflows/{_ID}/waitpoints",
        "pending_waitpoints",
        "The workflow's waitpoints (a token fingerprint, never the token)",
        "viewer",
        _waitpoints,
        query=b.PageQuery,
        answer=b.WaitpointPage,
        errors=_READ,
        tags=("waitpoints",),
    ),
    Operation(
        "POST",
        "/api/v1/waitpoints/complete",
        "complete_waitpoint",
        "Complete a waitpoint; the token is the credential (no API key)",
        None,
        _complete,
        status=202,
        body=b.CompleteBody,
        errors=(403, 409, 413, 415, 422),
        tags=("waitpoints",),
    ),
    Operation(
        "GET",
        "/api/v1/recovery",
        "recovery_report",
        "What the recovery sweep of the engine's start found and did (all-tenants keys)",
        "viewer",
        _recovery,
        answer=b.RecoveryBody,
        errors=(401, 403),
        all_tenants=True,
        tags=("operations",),
    ),
    Operation(
        "GET",
        "/healthz",
        "healthz",
        "The process answers",
        None,
        _healthz,
        answer=dict[str, str],
        tags=("operations",),
    ),
    Operation(
        "GET",
        "/readyz",
        "readyz",
        "The engine has recovered and runs (503 otherwise)",
        None,
        _readyz,
        answer=dict[str, str],
        errors=(503,),
        tags=("operations",),
    ),
)


# --- the machinery ---------------------------------------------------------------------------


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type=_JSON)


def _authenticate(request: Request, keys: ApiKeys) -> ApiKey:
    header = request.headers.get("authorization")
    if header is None:
        raise Problem(
            401,
            "unauthenticated",
            "this route needs an API key: send the header "
            "'Authorization: Bearer <key>' (create one with `aion api-key create`)",
        )
    scheme, _, presented = header.partition(" ")
    try:
        key = keys.verify(presented.strip()) if scheme.lower() == "bearer" else None
    except AionError as exc:  # the key file is unreadable: the operator's to fix, not the caller's
        log.error("API keys cannot be checked: %s", exc)
        raise Problem(
            503, "keys-unavailable", "API keys cannot be checked now; the server's log says why"
        ) from exc
    if key is None:
        raise Problem(401, "unauthenticated", "the API key is unknown, revoked or malformed")
    return key


def _tenant(request: Request, key: ApiKey | None, operation: Operation) -> str:
    named = request.headers.get(TENANT_HEADER)
    if key is None or key.tenant is None:
        if named is None:
            return "default"
        try:
            return _validate.identifier(named, "tenant")
        except AionError as exc:
            raise Problem(422, "invalid-argument", f"header X-Aion-Tenant: {exc}") from exc
    if operation.all_tenants:
        raise Problem(
            403,
            "forbidden",
            f"{operation.path} covers every tenant: use an all-tenants key",
        )
    if named is not None and named != key.tenant:
        raise Problem(
            403,
            "forbidden",
            f"this key is bound to tenant {key.tenant!r}; it cannot name another tenant",
        )
    return key.tenant


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large", f"the request body is over the limit of {limit} bytes")


def _decode_body(operation: Operation, raw: bytes, request: Request) -> Any:
    if operation.any_body:
        if not raw.strip():
            return None
        return _decode_json(raw, Any)
    assert operation.body is not None
    media = request.headers.get("content-type", _JSON).split(";")[0].strip().lower()
    if raw.strip() and media not in (_JSON, "") and not media.endswith("+json"):
        raise Problem(415, "unsupported-media-type", f"send JSON ({_JSON}), not {media}")
    return _decode_json(raw if raw.strip() else b"{}", operation.body)


def _decode_json(raw: bytes, kind: Any) -> Any:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise Problem(422, "invalid-body", f"the request body does not fit: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise Problem(400, "malformed-json", f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise Problem(
            422,
            "invalid-body",
            "the request body is nested too deeply (JSON of 128 levels at most)",
        ) from exc


def _decode_query(operation: Operation, request: Request) -> Any:
    assert operation.query is not None
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in params:
            raise Problem(422, "invalid-query", f"query parameter {name!r} given twice")
        params[name] = value
    try:
        return msgspec.convert(params, operation.query, strict=False)
    except msgspec.ValidationError as exc:
        raise Problem(422, "invalid-query", f"the query does not fit: {exc}") from exc


def _endpoint(
    operation: Operation, engine: Any, keys: ApiKeys, max_body: int
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            key = _authenticate(request, keys) if operation.role is not None else None
            if (
                key is not None
                and operation.role is not None
                and not allows(key.role, operation.role)
            ):
                raise Problem(
                    403,
                    "forbidden",
                    f"this route needs the role {operation.role!r} (or above); the key is "
                    f"{key.role!r}",
                )
            call = Call(request, engine, key, _tenant(request, key, operation))
            if operation.query is not None:
                call.query = _decode_query(operation, request)
            if operation.body is not None or operation.any_body:
                raw = await _read_body(request, max_body)
                call.body = _decode_body(operation, raw, request)
            answer = await operation.run(call)
        except Problem as problem:
            return problem_response(problem)
        except AionError as error:
            mapped = from_error(error)
            if mapped.status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, error)
            return problem_response(mapped)
        if isinstance(answer, Response):
            return answer
        return _json(answer, operation.status)

    return endpoint


def create_app(
    engine: Any,
    *,
    api_keys: ApiKeys | str | Any = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    metrics: bool = True,
    ui: bool = True,
) -> Starlette:
    """The control plane for ``engine`` as a Starlette application (mount it anywhere).

    Args:
        engine: a running :class:`aion.Engine` (entered with ``async with``).
        api_keys: the key store (an :class:`aion._apikeys.ApiKeys`, or the path of its file);
            default: ``api-keys.json`` in the engine's data directory.
        max_body_bytes: the largest request body (413 beyond).
        metrics: serve ``GET /metrics`` (Prometheus text; needs an all-tenants key).
        ui: serve the web UI at ``/ui/`` (docs/ui.md).
    """
    from ._openapi import openapi_route  # noqa: PLC0415

    keys = _keys(engine, api_keys)
    if (
        isinstance(max_body_bytes, bool)
        or not isinstance(max_body_bytes, int)
        or max_body_bytes < 1
    ):
        from aion.errors import InvalidArgument  # noqa: PLC0415

        raise InvalidArgument(f"max_body_bytes must be a positive int, not {max_body_bytes!r}")
    routes: list[BaseRoute] = [
        Route(
            op.path, _endpoint(op, engine, keys, max_body_bytes), methods=[op.method], name=op.name
        )
        for op in OPERATIONS
    ]
    routes.append(openapi_route())
    if metrics:
        from ._metrics import metrics_route  # noqa: PLC0415

        routes.append(metrics_route(engine, keys))
    if ui:
        from ._ui import ui_routes  # noqa: PLC0415

        routes += [
            Route("/ui", _to_ui, methods=["GET"]),
            Mount("/ui", routes=ui_routes(engine, keys)),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Segments)],
        exception_handlers={HTTPException: _router_problem},
    )
    app.state.engine = engine
    app.state.api_keys = keys
    #: Set when the server stops: open history streams end (clients resume with Last-Event-ID).
    app.state.closing = False
    return app


def path_param(request: Request, name: str) -> str:
    """A path parameter as sent: an encoded "/" inside its segment is a "/" (see _Segments)."""
    value: str = request.path_params[name]
    return value.replace(_SLASH, "/")


class _Segments:
    """Route on the path's segments as sent: a segment is percent-decoded on its own, so an
    encoded "/" stays inside it (Starlette routes on the decoded path, where it would split
    the segment). A path that is not UTF-8 once decoded is refused (422), not mangled."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%" in raw:
            try:
                segments = [unquote_to_bytes(s).decode("utf-8") for s in raw.split(b"/")]
            except UnicodeDecodeError:
                problem = Problem(422, "invalid-path", "the path is not UTF-8 once decoded")
                await problem_response(problem)(scope, receive, send)
                return
            if any(_SLASH in s for s in segments):
                problem = Problem(422, "invalid-path", "the path holds U+E000, which ids never do")
                await problem_response(problem)(scope, receive, send)
                return
            path = "/".join(s.replace("/", _SLASH) for s in segments)
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)


async def _to_ui(request: Request) -> Response:
    return RedirectResponse(request.url.path + "/", status_code=307)


async def _router_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    problem = Problem(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}")
    return problem_response(problem, headers=dict(exc.headers or {}))


def _keys(engine: Any, given: Any) -> ApiKeys:
    if isinstance(given, ApiKeys):
        return given
    if given is not None:
        return ApiKeys(given)
    return ApiKeys.for_target(getattr(engine, "path", None) or "")
