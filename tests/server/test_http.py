"""The control plane end to end: uvicorn on a loopback port, real HTTP, a real LMDB engine.

Every route, role and error: keys and roles (401/403), tenants that never see each other
(404), strict bodies and queries (4xx, never 500), waitpoint tokens as the credential, stale
approval digests, who did it recorded in the history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import aion
from aion._apikeys import ApiKeys
from tests.engine.test_hitl_props import FORGERIES, forge
from tests.server._serving import httpx, serving


@aion.workflow
async def waits(ctx: aion.Context, label: str) -> str:
    value: str = await ctx.wait_signal("go")
    return f"{label}:{value}"


@aion.workflow
async def expense(ctx: aion.Context, amount: int) -> str:
    decision = await ctx.approval("pay", details={"amount": amount})
    return f"paid by {decision.user}"


@aion.workflow
async def callback(ctx: aion.Context) -> Any:
    wp = await ctx.waitpoint("provider")
    await ctx.step(_publish, wp.token)
    return await wp.wait()


TOKENS: dict[str, str] = {}


def _publish(token: str) -> None:
    TOKENS[aion.current_step().workflow_id] = token


WORKFLOWS = [waits, expense, callback]


@dataclass
class Api:
    base: str
    engine: aion.Engine
    keys: dict[str, str]
    http: Any

    def h(self, who: str, tenant: str | None = None) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.keys[who]}"}
        if tenant is not None:
            headers["x-aion-tenant"] = tenant
        return headers

    async def get(self, path: str, who: str = "admin", **kw: Any) -> Any:
        return await self.http.get(
            self.base + path, headers=self.h(who, kw.pop("tenant", None)), **kw
        )

    async def post(self, path: str, who: str = "admin", **kw: Any) -> Any:
        return await self.http.post(
            self.base + path,
            headers={**self.h(who, kw.pop("tenant", None)), **kw.pop("headers", {})},
            **kw,
        )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = ApiKeys(tmp_path / "api-keys.json")
    keys = {}
    for role in ("viewer", "approver", "operator", "admin"):
        keys[role], _ = store.create(role=role, tenant="acme", label=f"{role}-key")
    keys["all"], _ = store.create(role="admin", all_tenants=True, label="root")
    keys["globex"], _ = store.create(role="admin", tenant="globex", label="globex-admin")
    async with (
        aion.Engine(tmp_path, workflows=WORKFLOWS) as engine,
        serving(engine) as base,
        httpx.AsyncClient(timeout=30) as http,
    ):
        yield Api(base, engine, keys, http)


async def test_start_describe_signal_and_history_with_who_did_it(api: Api) -> None:
    r = await api.post(
        "/api/v1/workflows",
        "operator",
        json={"workflow_type": "waits", "args": ["a"], "workflow_id": "w1"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["workflow_id"] == "w1" and r.json()["run_id"]
    again = await api.post(
        "/api/v1/workflows",
        "operator",
        json={"workflow_type": "waits", "args": ["a"], "workflow_id": "w1"},
    )
    assert again.status_code == 200 and again.json() == r.json()
    d = await api.get("/api/v1/workflows/w1", "viewer")
    assert d.status_code == 200 and d.json()["status"] == "running"
    assert d.json()["tenant"] == "acme"
    s = await api.post("/api/v1/workflows/w1/signals/go", "operator", json="now")
    assert s.status_code == 202, s.text
    assert await api.engine.handle("w1", tenant="acme").result(timeout=10) == "a:now"
    h = await api.get("/api/v1/workflows/w1/history", "viewer", params={"limit": 2})
    assert h.status_code == 200
    page = h.json()
    assert [e["seq"] for e in page["items"]] == [1, 2] and page["next_cursor"] == "2"
    rest = await api.get("/api/v1/workflows/w1/history", "viewer", params={"cursor": "2"})
    events = page["items"] + rest.json()["items"]
    assert rest.json()["next_cursor"] is None
    by_type = {e["type"]: e["data"] for e in events}
    assert by_type["workflow.started"]["identity"] == "operator-key"
    assert by_type["signal.received"]["identity"] == "operator-key"
    assert by_type["signal.received"]["payload"] == "now"
    assert by_type["workflow.completed"]["result"] == "a:now"


async def test_list_filters_and_cursors(api: Api) -> None:
    for i in range(5):
        await api.engine.start(waits, str(i), workflow_id=f"l{i}", tenant="acme")
    await api.engine.signal("l0", "go", "x", tenant="acme")
    await api.engine.handle("l0", tenant="acme").result(timeout=10)
    first = await api.get("/api/v1/workflows", "viewer", params={"limit": 3})
    assert first.status_code == 200
    body = first.json()
    assert [w["workflow_id"] for w in body["items"]] == ["l4", "l3", "l2"]
    more = await api.get(
        "/api/v1/workflows", "viewer", params={"limit": 3, "cursor": body["next_cursor"]}
    )
    assert [w["workflow_id"] for w in more.json()["items"]] == ["l1", "l0"]
    done = await api.get("/api/v1/workflows", "viewer", params={"status": "completed"})
    assert [w["workflow_id"] for w in done.json()["items"]] == ["l0"]
    typed = await api.get("/api/v1/workflows", "viewer", params={"type": "expense"})
    assert typed.json() == {"items": [], "next_cursor": None}
    window = await api.get(
        "/api/v1/workflows", "viewer", params={"started_after": "2000-01-01T00:00:00Z", "limit": 1}
    )
    assert window.status_code == 200 and len(window.json()["items"]) == 1
    # A cursor of one query is refused by another (and is no way out of the tenant).
    other = await api.get(
        "/api/v1/workflows", "viewer", params={"status": "running", "cursor": body["next_cursor"]}
    )
    assert other.status_code == 422 and "not issued" in other.json()["detail"]
    foreign = await api.get("/api/v1/workflows", "globex", params={"cursor": body["next_cursor"]})
    assert foreign.status_code == 422
    for params in (
        {"status": "sleeping"},
        {"limit": "0"},
        {"limit": "many"},
        {"started_after": "yesterday"},
        {"unknown": "1"},
        {"cursor": "!!"},
    ):
        bad = await api.get("/api/v1/workflows", "viewer", params=params)
        assert bad.status_code == 422, (params, bad.text)
        assert bad.headers["content-type"] == "application/problem+json"


async def test_keys_and_roles(api: Api) -> None:
    await api.engine.start(waits, "r", workflow_id="r1", tenant="acme")
    none = await api.http.get(api.base + "/api/v1/workflows")
    assert none.status_code == 401 and none.json()["type"] == "urn:aion:problem:unauthenticated"
    for header in (
        "Bearer nope",
        "Bearer " + api.keys["viewer"][:-1] + "x",
        api.keys["viewer"],
        "Basic abc",
    ):
        r = await api.http.get(api.base + "/api/v1/workflows", headers={"authorization": header})
        assert r.status_code == 401, header
    # viewer reads, cannot write
    assert (await api.get("/api/v1/workflows/r1", "viewer")).status_code == 200
    for path, body in (
        ("/api/v1/workflows/r1/signals/go", {"json": 1}),
        ("/api/v1/workflows/r1/cancel", {"json": {}}),
        ("/api/v1/workflows/r1/unblock", {}),
        ("/api/v1/workflows", {"json": {"workflow_type": "waits", "args": ["x"]}}),
    ):
        r = await api.post(path, "viewer", **body)
        assert r.status_code == 403, (path, r.text)
        r = await api.post(path, "approver", **body)
        assert r.status_code == 403, (path, r.text)
    # nothing was recorded by the refused writes
    assert [e.type for e in await api.engine.history("r1", tenant="acme")] == ["workflow.started"]
    cancel = await api.post("/api/v1/workflows/r1/cancel", "operator", json={"reason": "test"})
    assert cancel.status_code == 202
    history = await api.engine.history("r1", tenant="acme")
    asked = next(e for e in history if e.type == "workflow.cancel_requested")
    assert asked.data == {"reason": "test", "identity": "operator-key"}


async def test_tenants_never_see_each_other(api: Api) -> None:
    await api.engine.start(waits, "acme's", workflow_id="same", tenant="acme")
    await api.engine.start(waits, "globex's", workflow_id="same", tenant="globex")
    await api.engine.start(waits, "only acme", workflow_id="acme-only", tenant="acme")
    mine = await api.get("/api/v1/workflows/same", "viewer")
    theirs = await api.get("/api/v1/workflows/same", "globex")
    assert mine.json()["tenant"] == "acme" and theirs.json()["tenant"] == "globex"
    # another tenant's workflow: 404, exactly as an id that does not exist
    hidden = await api.get("/api/v1/workflows/acme-only", "globex")
    missing = await api.get("/api/v1/workflows/no-such-id", "globex")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["detail"].replace("acme-only", "X") == missing.json()["detail"].replace(
        "no-such-id", "X"
    )
    for path in ("/history", "/waitpoints", "/history/stream"):
        assert (await api.get("/api/v1/workflows/acme-only" + path, "globex")).status_code == 404
    signal = await api.post("/api/v1/workflows/acme-only/signals/go", "globex", json="x")
    assert signal.status_code == 404
    listed = await api.get("/api/v1/workflows", "globex")
    assert [w["workflow_id"] for w in listed.json()["items"]] == ["same"]
    # a tenant-bound key cannot name another tenant; an all-tenants key names one per request
    named = await api.get("/api/v1/workflows/acme-only", "globex", tenant="acme")
    assert named.status_code == 403
    via_all = await api.get("/api/v1/workflows/acme-only", "all", tenant="acme")
    assert via_all.status_code == 200
    assert (await api.get("/api/v1/workflows/acme-only", "all")).status_code == 404  # "default"
    bad = await api.get("/api/v1/workflows", "all", tenant="t" * 300)
    assert bad.status_code == 422
    # every-tenant routes are for all-tenants keys only
    assert (await api.get("/api/v1/recovery", "admin")).status_code == 403
    assert (await api.get("/metrics", "admin")).status_code == 403
    report = await api.get("/api/v1/recovery", "all")
    assert report.status_code == 200 and "recovery:" in report.json()["summary"]


async def test_approvals_with_digest_and_roles(api: Api) -> None:
    await api.engine.start(expense, 120, workflow_id="e1", tenant="acme")
    await api.engine.wait_idle()
    page = await api.get("/api/v1/approvals", "viewer")
    assert page.status_code == 200
    (item,) = page.json()["items"]
    assert item["workflow_id"] == "e1" and item["details"] == {"amount": 120}
    path = f"/api/v1/workflows/e1/approvals/{item['approval_id']}"
    assert (await api.post(path + "/approve", "viewer", json={})).status_code == 403
    stale = await api.post(path + "/approve", "approver", json={"digest": "sha256:" + "0" * 64})
    assert (
        stale.status_code == 409 and stale.json()["type"] == "urn:aion:problem:no-pending-approval"
    )
    assert [e.type for e in await api.engine.history("e1", tenant="acme")][
        -1
    ] == "approval.requested"
    ok = await api.post(
        path + "/approve", "approver", json={"comment": "fine", "digest": item["digest"]}
    )
    assert ok.status_code == 202, ok.text
    assert await api.engine.handle("e1", tenant="acme").result(timeout=10) == "paid by approver-key"
    twice = await api.post(path + "/reject", "approver", json={"comment": "late"})
    assert twice.status_code == 409
    assert (await api.get("/api/v1/approvals", "viewer")).json()["items"] == []


async def test_waitpoint_completion_by_token_alone(api: Api) -> None:
    await api.engine.start(callback, workflow_id="cb", tenant="acme")
    await api.engine.wait_idle()
    token = TOKENS["cb"]
    listed = await api.get("/api/v1/workflows/cb/waitpoints", "viewer")
    (wp,) = listed.json()["items"]
    assert token not in listed.text and wp["fingerprint"] and wp["token_kid"]
    url = api.base + "/api/v1/waitpoints/complete"
    head = await api.engine.history("cb", tenant="acme")
    forgeries = [forge(token, how, n) for how in FORGERIES for n in (1, 7)]
    for forged in [*forgeries, "v1.nonsense", ""]:  # altered, truncated, re-signed, ...
        r = await api.http.post(url, json={"token": forged, "payload": 1})
        assert r.status_code == 403, (forged, r.text)
    assert len(await api.engine.history("cb", tenant="acme")) == len(head)  # nothing recorded
    assert (await api.http.post(url, json={"token": 5})).status_code == 422
    assert (await api.http.post(url, json={"token": token, "x": 1})).status_code == 422
    done = await api.http.post(url, json={"token": token, "payload": {"paid": True}})
    assert done.status_code == 202, done.text
    assert await api.engine.handle("cb", tenant="acme").result(timeout=10) == {"paid": True}
    again = await api.http.post(url, json={"token": token, "payload": 2})
    assert again.status_code == 409


async def test_bad_bodies_are_4xx_never_500(api: Api) -> None:
    await api.engine.start(waits, "b", workflow_id="b1", tenant="acme")
    cases: list[tuple[str, dict[str, Any], int]] = [
        (
            "/api/v1/workflows",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("/api/v1/workflows", {"json": {"workflow_type": 5}}, 422),
        ("/api/v1/workflows", {"json": {"workflow_type": "waits", "args": ["x"], "extra": 1}}, 422),
        ("/api/v1/workflows", {"json": {"workflow_type": "nope"}}, 422),
        ("/api/v1/workflows", {"json": {"workflow_type": "waits", "args": []}}, 422),
        (
            "/api/v1/workflows",
            {"json": {"workflow_type": "waits", "args": ["x"], "workflow_id": ""}},
            422,
        ),
        ("/api/v1/workflows", {"content": b"a=b", "headers": {"content-type": "text/plain"}}, 415),
        ("/api/v1/workflows/b1/cancel", {"json": {"reason": 7}}, 422),
        (
            "/api/v1/workflows/b1/signals/go",
            {"content": b"{", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("/api/v1/workflows/b1/signals/go", {"content": b"x" * ((1 << 20) + 1)}, 413),
        ("/api/v1/workflows/b1/unblock", {}, 422),  # not blocked
        ("/api/v1/workflows/nope/cancel", {"json": {}}, 404),
    ]
    for path, kw, status in cases:
        r = await api.post(path, "operator", **kw)
        assert r.status_code == status, (path, kw, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert (
            problem["status"] == status
            and problem["detail"]
            and problem["type"].startswith("urn:aion:problem:")
        )
    assert [e.type for e in await api.engine.history("b1", tenant="acme")] == ["workflow.started"]


async def test_history_stream_sends_events_then_end(api: Api) -> None:
    await api.engine.start(waits, "s", workflow_id="s1", tenant="acme")
    seen: list[str] = []
    async with api.http.stream(
        "GET", api.base + "/api/v1/workflows/s1/history/stream", headers=api.h("viewer")
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
                if line == "event: workflow.started":
                    await api.engine.signal("s1", "go", "y", tenant="acme")
                if line == "event: end":
                    break
    assert seen[0] == "workflow.started" and "signal.received" in seen
    assert seen[-2:] == ["workflow.completed", "end"]


async def test_health_readiness_openapi_and_metrics(api: Api) -> None:
    assert (await api.http.get(api.base + "/healthz")).json() == {"status": "ok"}
    assert (await api.http.get(api.base + "/readyz")).status_code == 200
    spec = (await api.http.get(api.base + "/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    assert "/api/v1/workflows/{workflow_id}/approvals/{approval_id}/approve" in spec["paths"]
    metrics = await api.get("/metrics", "all")
    assert metrics.status_code == 200
    assert "aion_workflows_started_total" in metrics.text
    assert (await api.http.get(api.base + "/metrics")).status_code == 401


async def test_what_the_router_and_the_decoder_refuse_is_a_problem(api: Api) -> None:
    await api.engine.start(waits, "d", workflow_id="d1", tenant="acme")
    deep = b"[" * 5000 + b"]" * 5000
    json_type = {"content-type": "application/json"}
    r = await api.post(
        "/api/v1/workflows/d1/signals/go", "operator", content=deep, headers=json_type
    )
    assert r.status_code == 422 and "nested" in r.json()["detail"]
    body = b'{"token": "x", "payload": ' + deep + b"}"
    r = await api.http.post(
        api.base + "/api/v1/waitpoints/complete", content=body, headers=json_type
    )
    assert r.status_code == 422
    for method, path, status in (
        ("GET", "/api/v1/nothing-here", 404),
        ("DELETE", "/api/v1/workflows", 405),
        ("GET", "/api/v1/workflows/%FF", 422),  # not UTF-8 once decoded
        ("GET", "/api/v1/workflows/d1/history/stream?cursor=abc", 422),
    ):
        r = await api.http.request(method, api.base + path, headers=api.h("viewer"))
        assert r.status_code == status, (method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert [e.type for e in await api.engine.history("d1", tenant="acme")] == ["workflow.started"]


async def test_ids_with_a_slash_are_reached_percent_encoded(api: Api) -> None:
    start = {"workflow_type": "waits", "args": ["s"], "workflow_id": "parent/child-1"}
    assert (await api.post("/api/v1/workflows", "operator", json=start)).status_code == 201
    d = await api.get("/api/v1/workflows/parent%2Fchild-1", "viewer")
    assert d.status_code == 200 and d.json()["workflow_id"] == "parent/child-1"
    s = await api.post("/api/v1/workflows/parent%2Fchild-1/signals/go", "operator", json="v")
    assert s.status_code == 202
    result = await api.engine.handle("parent/child-1", tenant="acme").result(timeout=10)
    assert result == "s:v"
    # the unencoded form is another path: not found, never another run
    assert (await api.get("/api/v1/workflows/parent/child-1", "viewer")).status_code == 404


async def test_an_unreadable_key_file_is_the_operators_problem_not_the_callers(
    api: Api, tmp_path: Path
) -> None:
    (tmp_path / "api-keys.json").chmod(0o644)  # readable by others: refused until fixed
    r = await api.get("/api/v1/workflows", "viewer")
    assert r.status_code == 503 and r.json()["type"] == "urn:aion:problem:keys-unavailable"
    assert str(tmp_path) not in r.text
    assert (await api.get("/metrics", "all")).status_code == 503
    (tmp_path / "api-keys.json").chmod(0o600)
    assert (await api.get("/api/v1/workflows", "viewer")).status_code == 200


async def test_list_by_parent_and_search_attributes(api: Api) -> None:
    await api.engine.start(waits, "x", workflow_id="plain", tenant="acme")
    r = await api.get("/api/v1/workflows", "viewer", params={"search": '{"region": "eu"}'})
    assert r.status_code == 200 and r.json()["items"] == []
    r = await api.get("/api/v1/workflows", "viewer", params={"parent": "plain"})
    assert r.status_code == 200 and r.json()["items"] == []
    for bad in ('{"region": ["eu"]}', "region=eu", "[1]", '{"a": {"b": 1}}'):
        r = await api.get("/api/v1/workflows", "viewer", params={"search": bad})
        assert r.status_code == 422, bad
