"""The web UI at ``/ui/``: server-rendered pages (Jinja2, autoescaped) and a little plain
JavaScript, over the same Engine methods and tenant scoping as the HTTP API.

Sign-in takes an API key once and keeps a session cookie (HttpOnly, SameSite=Strict, signed
with a secret kept beside the key file) that names the key by its id; every request checks the
key is still there and not revoked, so revoking a key ends its sessions. Every form carries the
session's CSRF token. What the key's role cannot do is not offered, and refused if posted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from aion import _validate
from aion._apikeys import ApiKey, ApiKeys, allows
from aion._secretfile import read_private, write_private
from aion.errors import AionError, InvalidArgument, WorkflowNotFound
from aion.store import Status

from ._app import path_param
from ._problems import from_error

__all__ = ["ui_routes"]

COOKIE = "aion_session"
SESSION_SECONDS = 12 * 3600
_SECRET_FILE = "ui-session.key"
_ENDED_FILE = "ui-sessions-ended.json"
_STATUSES = tuple(status.value for status in Status)
_COUNT_CAP = 100  # the overview counts runs up to this many per status (nothing loads all)
_HISTORY_PAGE = 500


class Session(msgspec.Struct, frozen=True):
    key_id: str
    tenant: str
    csrf: str
    expires: int


class Viewer(msgspec.Struct, frozen=True):
    """Who is signed in, for the templates."""

    key: ApiKey
    tenant: str
    csrf: str

    def can(self, role: str) -> bool:
        return allows(self.key.role, role)

    @property
    def all_tenants(self) -> bool:
        return self.key.tenant is None


class _Page(Exception):
    """Answer with this response instead (a redirect to sign in, an error page)."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Sessions:
    def __init__(self, secret: bytes, ended: _Ended) -> None:
        self._secret = secret
        self.ended = ended

    def issue(self, key: ApiKey, tenant: str) -> tuple[str, Session]:
        session = Session(
            key.key_id, tenant, secrets.token_urlsafe(24), int(time.time()) + SESSION_SECONDS
        )
        payload = _b64(msgspec.json.encode(session))
        return f"{payload}.{self._mac(payload)}", session

    def read(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 1 or len(cookie) > 1024:
            return None
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            session = msgspec.json.decode(_unb64(payload), type=Session)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        if session.expires <= time.time() or self.ended.has(session):
            return None
        return session

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def sign(self, text: str) -> str:
        return self._mac("flash:" + text)[:22]


class _Ended:
    """Sessions signed out before they expired: ``ui-sessions-ended.json`` beside the key
    file (owner-only; each entry kept until its session would have expired), so a copied
    cookie is dead after sign-out, across restarts and for every process serving the UI."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int] | None = None
        self._ended: dict[str, int] = {}

    @staticmethod
    def _id(session: Session) -> str:
        return hashlib.sha256(session.csrf.encode()).hexdigest()[:32]

    def _load(self) -> dict[str, int]:
        try:
            info = self._path.stat()
        except FileNotFoundError:
            return {}
        seen = (info.st_mtime_ns, info.st_size)
        if seen != self._seen:
            data = read_private(self._path, what="UI sessions file", limit=16 << 20) or b"{}"
            try:
                self._ended = msgspec.json.decode(data, type=dict[str, int])
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._ended = {}  # unreadable: sessions still expire on their own
            self._seen = seen
        return self._ended

    def has(self, session: Session) -> bool:
        return self._id(session) in self._load()

    def end(self, session: Session) -> None:
        now = int(time.time())
        ended = {k: v for k, v in self._load().items() if v > now}
        ended[self._id(session)] = session.expires
        write_private(self._path, msgspec.json.encode(ended), what="UI sessions file", replace=True)


def _secret(keys: ApiKeys) -> bytes:
    """The session secret beside the key file (made at first use, owner-only)."""
    path = Path(keys.path).parent / _SECRET_FILE
    data = read_private(path, what="UI session secret", limit=1024)
    if data is None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, secrets.token_bytes(32), what="UI session secret", replace=False)
        data = read_private(path, what="UI session secret", limit=1024)
    assert data is not None
    return data


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("aion.server", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["pretty"] = lambda value: json.dumps(
        value, indent=2, default=str, ensure_ascii=False
    )
    env.filters["path"] = lambda value: quote(str(value), safe="")
    return env


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def ui_routes(engine: Any, keys: ApiKeys) -> list[Route]:
    """The UI's routes, to mount at ``/ui``."""
    env = _templates()
    sessions = _Sessions(_secret(keys), _Ended(Path(keys.path).parent / _ENDED_FILE))

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        q = request.query_params
        message, kind = q.get("m", ""), q.get("k", "")
        # Only messages this UI signed: a link cannot put words on the page.
        if message and hmac.compare_digest(q.get("s", ""), sessions.sign(kind + message)):
            context.setdefault("problem" if kind == "error" else "flash", message)
        context.setdefault("ui", _base(request))
        html = env.get_template(name).render(request=request, **context)
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    def session_of(request: Request) -> tuple[Session, ApiKey] | None:
        session = sessions.read(request.cookies.get(COOKIE))
        key = keys.active(session.key_id) if session is not None else None
        return None if session is None or key is None else (session, key)

    def viewer(request: Request) -> Viewer:
        found = session_of(request)
        if found is None:
            raise _Page(RedirectResponse(f"{_base(request)}/login", status_code=303))
        session, key = found
        return Viewer(key, session.tenant, session.csrf)

    async def form(request: Request, who: Viewer, role: str) -> dict[str, str]:
        data = await request.form(max_files=0, max_fields=20, max_part_size=1 << 20)
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        token = fields.get("csrf", "")
        refusal = None
        if not hmac.compare_digest(token.encode(), who.csrf.encode()):
            refusal = ("Not possible", "The form has expired or was not made by this page: reload.")
        elif not who.can(role):
            refusal = (
                "Not allowed",
                f"This needs the role {role!r}; your key is {who.key.role!r}.",
            )
        if refusal is not None:
            heading, message = refusal
            page_ = render(request, "error.html", 403, who=who, heading=heading, message=message)
            raise _Page(page_)
        return fields

    def page(
        run: Callable[[Request, Viewer], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await run(request, viewer(request))
            except _Page as p:
                return p.response

        return endpoint

    def done(path: str, message: str, error: bool = False) -> RedirectResponse:
        kind = "error" if error else "done"
        query = urlencode({"m": message, "k": kind, "s": sessions.sign(kind + message)})
        return RedirectResponse(f"{path}?{query}", status_code=303)

    def not_found(request: Request, who: Viewer, workflow_id: str) -> HTMLResponse:
        message = f"No workflow {workflow_id!r} in tenant {who.tenant!r}."
        return render(request, "error.html", 404, who=who, heading="Not found", message=message)

    # --- sign in and out -----------------------------------------------------------------

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return render(request, "login.html", who=None)
        if _cross_site(request):  # another site signing a browser in with its own key
            return render(
                request, "login.html", 403, who=None, problem="Sign in from this page itself."
            )
        data = await request.form(max_files=0, max_fields=5, max_part_size=8192)
        presented = str(data.get("key", "")).strip()
        try:
            key = keys.verify(presented)
        except AionError:
            key = None
        if key is None:
            return render(
                request,
                "login.html",
                401,
                who=None,
                problem="That key is unknown, revoked or mistyped.",
            )
        tenant = key.tenant
        if tenant is None:
            try:
                tenant = _validate.identifier(str(data.get("tenant", "") or "default"), "tenant")
            except InvalidArgument as exc:
                return render(request, "login.html", 422, who=None, problem=str(exc))
        cookie, _ = sessions.issue(key, tenant)
        response = RedirectResponse(f"{_base(request)}/", status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=secure,
            path=_base(request) or "/",
        )
        return response

    async def logout(request: Request, who: Viewer) -> Response:
        await form(request, who, "viewer")
        found = session_of(request)
        if found is not None:
            sessions.ended.end(found[0])  # a copy of the cookie is dead too
        response = RedirectResponse(f"{_base(request)}/login", status_code=303)
        response.delete_cookie(COOKIE, path=_base(request) or "/")
        return response

    # --- pages ---------------------------------------------------------------------------

    async def overview(request: Request, who: Viewer) -> Response:
        counts = {}
        # The store's rows, not descriptions: a count needs no history read per run.
        for status in _STATUSES:
            page_ = await engine.store.list_workflows(
                status=status, tenant=who.tenant, limit=_COUNT_CAP
            )
            counts[status] = (len(page_.items), page_.next_cursor is not None)
        by_type = {}
        for name in engine.workflow_types:
            page_ = await engine.store.list_workflows(
                workflow_type=name, tenant=who.tenant, limit=_COUNT_CAP
            )
            by_type[name] = (len(page_.items), page_.next_cursor is not None)
        blocked = (await engine.list(status="blocked", tenant=who.tenant, limit=10)).items
        engine_view = None
        if who.all_tenants:
            snapshot = {f.name: f for f in engine.metrics.snapshot()}

            def gauge(name: str) -> Any:
                family = snapshot.get(name)
                return int(family.samples[0][1]) if family and family.samples else None

            engine_view = {
                "resident": gauge("aion_runs_resident"),
                "passivated": gauge("aion_runs_passivated"),
                "timers_pending": gauge("aion_timers_pending"),
                "timers_overdue": gauge("aion_timers_overdue"),
                "inbox": gauge("aion_inbox_depth"),
                "store_bytes": _store_bytes(engine),
                "recovery": engine.recovery.summary(),
            }
        return render(
            request,
            "overview.html",
            who=who,
            counts=counts,
            by_type=by_type,
            blocked=blocked,
            engine_view=engine_view,
            cap=_COUNT_CAP,
        )

    async def workflows(request: Request, who: Viewer) -> Response:
        q = request.query_params
        filters: dict[str, Any] = {}
        problem = ""
        try:
            if q.get("status"):
                filters["status"] = q["status"]  # the engine checks it
            if q.get("type"):
                filters["workflow_type"] = q["type"]
            if q.get("after"):
                filters["started_after"] = _datetime(q["after"], "after")
            if q.get("before"):
                filters["started_before"] = _datetime(q["before"], "before")
            if q.get("search"):
                filters["search"] = _search(q["search"])
            if q.get("parent"):
                filters["parent_workflow_id"] = q["parent"]
            if q.get("prefix"):
                filters["id_prefix"] = q["prefix"]
            page_ = await engine.list(
                tenant=who.tenant, limit=50, cursor=q.get("cursor") or None, **filters
            )
            items, next_cursor = page_.items, page_.next_cursor
        except (AionError, ValueError) as exc:
            items, next_cursor, problem = [], None, str(exc)
        jump = q.get("id", "").strip()
        if jump:
            try:
                await engine.describe(jump, tenant=who.tenant)
                to = f"{_base(request)}/workflows/{quote(jump, safe='')}"
                return RedirectResponse(to, status_code=303)
            except AionError as exc:
                problem = str(exc)
        kept = {
            k: v
            for k, v in q.items()
            if k in ("status", "type", "after", "before", "search", "parent", "prefix") and v
        }
        more = (
            f"{_base(request)}/workflows?{urlencode({**kept, 'cursor': next_cursor})}"
            if next_cursor
            else None
        )
        return render(
            request,
            "workflows.html",
            who=who,
            items=items,
            q=kept,
            more=more,
            statuses=_STATUSES,
            types=engine.workflow_types,
            problem=problem,
        )

    async def workflow(request: Request, who: Viewer) -> Response:
        workflow_id = path_param(request, "workflow_id")
        try:
            description = await engine.describe(workflow_id, tenant=who.tenant)
        except AionError:  # none, or an id no workflow can have
            return not_found(request, who, workflow_id)
        history = await engine.history(workflow_id, tenant=who.tenant, limit=_HISTORY_PAGE)
        children = await _children(engine, history, who.tenant)
        approvals = (
            await engine.pending_approvals(workflow_id=workflow_id, tenant=who.tenant)
        ).items
        waitpoints = (
            await engine.pending_waitpoints(workflow_id, tenant=who.tenant, limit=50)
        ).items
        steps, runs = _timeline(history)
        return render(
            request,
            "workflow.html",
            who=who,
            d=description,
            history=history,
            truncated=len(history) == _HISTORY_PAGE,
            steps=steps,
            runs=runs,
            children=children,
            approvals=approvals,
            waitpoints=waitpoints,
            path=quote(workflow_id, safe=""),
            since=description.history_length,
        )

    async def history_json(request: Request, who: Viewer) -> Response:
        workflow_id = path_param(request, "workflow_id")
        try:
            events = await engine.history(workflow_id, tenant=who.tenant)
        except AionError:
            return not_found(request, who, workflow_id)
        name = "".join(
            c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in workflow_id
        )
        disposition = (
            f'attachment; filename="{name}.history.json"; '
            f"filename*=UTF-8''{quote(workflow_id, safe='')}.history.json"
        )
        return Response(
            msgspec.json.encode(events),
            media_type="application/json",
            headers={**_HEADERS, "content-disposition": disposition},
        )

    async def events(request: Request, who: Viewer) -> Response:
        """Server-sent events for the run page: one ``changed`` per new history event."""
        workflow_id = path_param(request, "workflow_id")
        try:
            start = (await engine.describe(workflow_id, tenant=who.tenant)).history_length
        except AionError:
            return Response(status_code=404)
        since = request.query_params.get("since", "")
        if since.isdigit() and len(since) < 19:
            start = int(since)  # what the page showed: events recorded since refresh it
        state = request.app.state
        key_id = who.key.key_id

        async def stream() -> Any:
            import anyio  # noqa: PLC0415

            seen, delay = start, 0.05
            try:
                while not getattr(state, "closing", False):
                    if keys.active(key_id) is None:
                        return  # the key was revoked: its sessions end, streams too
                    d = await engine.describe(workflow_id, tenant=who.tenant)
                    if d.history_length != seen:
                        seen, delay = d.history_length, 0.05
                        yield f"event: changed\ndata: {seen}\n\n".encode()
                    if d.status.is_terminal and d.history_length == seen:
                        yield b"event: end\ndata: {}\n\n"
                        return
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 1.0)
            except AionError:
                return

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    async def approvals(request: Request, who: Viewer) -> Response:
        cursor = request.query_params.get("cursor") or None
        try:
            page_ = await engine.pending_approvals(tenant=who.tenant, limit=50, cursor=cursor)
        except AionError as exc:
            return render(request, "error.html", 422, who=who, message=str(exc))
        more = (
            f"{_base(request)}/approvals?{urlencode({'cursor': page_.next_cursor})}"
            if page_.next_cursor
            else None
        )
        return render(request, "approvals.html", who=who, items=page_.items, more=more)

    # --- actions -------------------------------------------------------------------------

    def action(
        role: str, run: Callable[[Viewer, str, dict[str, str]], Awaitable[str]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                who = viewer(request)
                fields = await form(request, who, role)
            except _Page as p:
                return p.response
            workflow_id = path_param(request, "workflow_id")
            back = f"{_base(request)}/workflows/{quote(workflow_id, safe='')}"
            try:
                message = await run(who, workflow_id, fields)
            except WorkflowNotFound:
                return not_found(request, who, workflow_id)
            except AionError as exc:
                return done(back, from_error(exc).detail, error=True)
            return done(back, message)

        return endpoint

    async def do_signal(who: Viewer, workflow_id: str, fields: dict[str, str]) -> str:
        name = fields.get("name", "")
        text = fields.get("payload", "").strip() or "null"
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument(f"the payload is not valid JSON: {exc}") from exc
        await engine.signal(workflow_id, name, payload, tenant=who.tenant, identity=who.key.label)
        return f"Signal {name!r} recorded."

    async def do_cancel(who: Viewer, workflow_id: str, fields: dict[str, str]) -> str:
        reason = fields.get("reason") or None
        await engine.cancel(workflow_id, reason=reason, tenant=who.tenant, identity=who.key.label)
        return "Cancellation recorded: the run's current await raises Cancelled."

    async def do_unblock(who: Viewer, workflow_id: str, fields: dict[str, str]) -> str:
        d = await engine.unblock(workflow_id, tenant=who.tenant, identity=who.key.label)
        if d.status.value == "blocked":
            raise InvalidArgument(f"the run is still blocked: {d.reason}")
        return f"Retried: the run is {d.status.value}."

    def do_decide(approve: bool) -> Callable[[Viewer, str, dict[str, str]], Awaitable[str]]:
        async def run(who: Viewer, workflow_id: str, fields: dict[str, str]) -> str:
            decide = engine.approve if approve else engine.reject
            await decide(
                workflow_id,
                user=who.key.label,
                comment=fields.get("comment") or None,
                approval_id=fields.get("approval_id") or None,
                digest=fields.get("digest") or None,
                tenant=who.tenant,
            )
            return "Approved." if approve else "Rejected."

        return run

    return [
        Route("/login", login, methods=["GET", "POST"], name="ui_login"),
        Route("/logout", page(logout), methods=["POST"]),
        Route("/", page(overview), methods=["GET"], name="ui_overview"),
        Route("/workflows", page(workflows), methods=["GET"]),
        Route("/approvals", page(approvals), methods=["GET"]),
        Route("/workflows/{workflow_id}", page(workflow), methods=["GET"]),
        Route("/workflows/{workflow_id}/history.json", page(history_json), methods=["GET"]),
        Route("/workflows/{workflow_id}/events", page(events), methods=["GET"]),
        Route("/workflows/{workflow_id}/signal", action("operator", do_signal), methods=["POST"]),
        Route("/workflows/{workflow_id}/cancel", action("operator", do_cancel), methods=["POST"]),
        Route("/workflows/{workflow_id}/unblock", action("operator", do_unblock), methods=["POST"]),
        Route(
            "/workflows/{workflow_id}/approve",
            action("approver", do_decide(True)),
            methods=["POST"],
        ),
        Route(
            "/workflows/{workflow_id}/reject",
            action("approver", do_decide(False)),
            methods=["POST"],
        ),
        Route("/static/aion.css", _css, methods=["GET"]),
        Route("/static/aion.js", _js, methods=["GET"]),
    ]


#: No framing by other sites, no sniffing, scripts and styles only from here.
_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _static(name: str, media: str) -> Callable[[Request], Awaitable[Response]]:
    from importlib.resources import files  # noqa: PLC0415

    data = (files("aion.server") / "static" / name).read_bytes()

    async def endpoint(request: Request) -> Response:
        return Response(data, media_type=media, headers={"cache-control": "max-age=3600"})

    return endpoint


_css = _static("aion.css", "text/css")
_js = _static("aion.js", "text/javascript")


def _base(request: Request) -> str:
    """Where the UI is mounted (``/ui``, or under the prefix the app is mounted at)."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _cross_site(request: Request) -> bool:
    """A request another site's page made (the browser says so)."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    here = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin != here


async def _children(engine: Any, history: list[Any], tenant: str) -> list[Any]:
    """The children the run started (from its history: no scan of the tenant's runs)."""
    ids = [e.data["child_workflow_id"] for e in history if e.type == "child.started"][:50]
    found = []
    for child_id in dict.fromkeys(ids):
        try:
            found.append(await engine.describe(child_id, tenant=tenant))
        except AionError:
            continue
    return found


def _datetime(text: str, what: str) -> datetime:
    from datetime import UTC  # noqa: PLC0415

    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgument(
            f"{what}: not a date and time ({text!r}), e.g. 2026-12-01T09:00"
        ) from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _search(text: str) -> dict[str, Any]:
    """``region=eu, priority=2``: text values, or numbers and true/false as JSON reads them."""
    found: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"search: {part.strip()!r} is not name=value")
        raw = raw.strip()
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if not isinstance(value, str | int | float | bool):
            value = raw
        found[key.strip()] = value
    return found


def _store_bytes(engine: Any) -> int | None:
    path = getattr(engine, "path", None)
    if isinstance(path, str | Path) and (Path(path) / "data.mdb").exists():
        return (Path(path) / "data.mdb").stat().st_size
    return None


def _timeline(history: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The steps (each with its attempts, durations, errors and events) and the run segments
    (the continue-as-new chain) of a history."""
    steps: dict[tuple[str, int], dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    run_id = ""
    for event in history:
        data = event.data
        if event.type == "workflow.started":
            run_id = data.get("run_id", "")
            runs.append(
                {
                    "run_id": run_id,
                    "started_at": event.recorded_at,
                    "from": data.get("continued_from_run_id"),
                }
            )
        if event.type.startswith("step.") and "step_seq" in data:
            step = steps.setdefault(
                (run_id, data["step_seq"]),
                {
                    "seq": data["step_seq"],
                    "name": data.get("name", ""),
                    "attempts": {},
                    "events": [],
                    "status": "scheduled",
                },
            )
            step["events"].append(event)
            attempt = data.get("attempt") or data.get("next_attempt")
            if event.type == "step.started":
                step["attempts"][attempt] = {
                    "n": attempt,
                    "started": event.recorded_at,
                    "ended": None,
                    "error": None,
                    "traceback": "",
                }
                step["status"] = "running"
            elif event.type in ("step.completed", "step.failed") and attempt in step["attempts"]:
                a = step["attempts"][attempt]
                a["ended"] = event.recorded_at
                a["seconds"] = (event.recorded_at - a["started"]).total_seconds()
                if event.type == "step.failed":
                    a["error"] = f"{data.get('error_type')}: {data.get('message')}"
                    a["traceback"] = data.get("traceback", "")
                    step["status"] = "retrying" if data.get("will_retry") else "failed"
                else:
                    step["status"] = "completed"
    return [dict(s, attempts=list(s["attempts"].values())) for s in steps.values()], runs
