"""The web UI over plain HTTP (no browser): sessions, sign-in from other sites, odd ids and
payloads, forged messages, and mounting under a prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jinja2", reason="the web UI needs the extra aion[server]")

import aion
from aion._apikeys import ApiKeys
from tests.server._serving import httpx, serving


@aion.workflow
async def waits(ctx: aion.Context) -> str:
    value: str = await ctx.wait_signal("go")
    return value


@dataclass
class Ui:
    base: str
    engine: aion.Engine
    keys: dict[str, str]


@pytest.fixture
async def ui(tmp_path: Path) -> AsyncIterator[Ui]:
    store = ApiKeys(tmp_path / "api-keys.json")
    keys = {"operator": store.create(role="operator", tenant="default", label="op")[0]}
    async with aion.Engine(tmp_path, workflows=[waits]) as engine, serving(engine) as base:
        yield Ui(base, engine, keys)


async def _session(ui: Ui, http: Any, who: str = "operator") -> str:
    r = await http.post(ui.base + "/ui/login", data={"key": ui.keys[who]})
    assert r.status_code == 303, r.text
    page = await http.get(ui.base + "/ui/")
    assert page.status_code == 200
    csrf: str = page.text.split('name="csrf" value="')[1].split('"')[0]
    return csrf


async def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(ui: Ui) -> None:
    async with httpx.AsyncClient() as http:
        csrf = await _session(ui, http)
        copied = dict(http.cookies)
        r = await http.post(ui.base + "/ui/logout", data={"csrf": csrf})
        assert r.status_code == 303
    async with httpx.AsyncClient(cookies=copied) as replay:
        r = await replay.get(ui.base + "/ui/workflows", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith("/ui/login")


async def test_another_site_cannot_sign_a_browser_in(ui: Ui) -> None:
    async with httpx.AsyncClient() as http:
        for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
            r = await http.post(
                ui.base + "/ui/login", data={"key": ui.keys["operator"]}, headers=headers
            )
            assert r.status_code == 403 and "aion_session" not in r.cookies


async def test_odd_ids_and_payloads_get_pages_not_errors(ui: Ui) -> None:
    await ui.engine.start(waits, workflow_id="订单-1")
    await ui.engine.start(waits, workflow_id="w")
    async with httpx.AsyncClient() as http:
        csrf = await _session(ui, http)
        for path in ("/ui/workflows/%00", "/ui/workflows/" + "x" * 2000):
            for tail in ("", "/history.json", "/events"):
                r = await http.get(ui.base + path + tail)
                assert r.status_code == 404, (path[:30], tail, r.status_code)
        r = await http.get(ui.base + "/ui/workflows/%E8%AE%A2%E5%8D%95-1/history.json")
        assert r.status_code == 200 and "UTF-8''" in r.headers["content-disposition"]
        deep = "[" * 100_000
        r = await http.post(
            ui.base + "/ui/workflows/w/signal", data={"csrf": csrf, "name": "go", "payload": deep}
        )
        assert r.status_code == 303
        page = await http.get(ui.base + r.headers["location"])
        assert "not valid JSON" in page.text
    assert [e.type for e in await ui.engine.history("w")] == ["workflow.started"]


async def test_a_link_cannot_put_words_on_the_page(ui: Ui) -> None:
    async with httpx.AsyncClient() as http:
        await _session(ui, http)
        forged = "Your session expired. Paste your key at https://evil.example"
        for query in ({"m": forged, "k": "error", "s": "x"}, {"error": forged, "done": forged}):
            page = await http.get(ui.base + "/ui/", params=query)
            assert "evil.example" not in page.text


async def test_mounted_under_a_prefix_every_link_and_redirect_follows(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    key, _ = ApiKeys(tmp_path / "api-keys.json").create(role="viewer", tenant="default")
    async with aion.Engine(tmp_path, workflows=[waits]) as engine:
        await engine.start(waits, workflow_id="m1")
        outer = Starlette(routes=[Mount("/aion", app=engine.asgi_app())])

        class Host:  # serving() takes an engine: give it one whose app is the outer one
            def asgi_app(self) -> Any:
                return outer

        async with serving(Host()) as base, httpx.AsyncClient() as http:
            r = await http.get(base + "/aion/ui/")
            assert r.status_code == 303 and r.headers["location"] == "/aion/ui/login"
            r = await http.post(base + "/aion/ui/login", data={"key": key})
            assert r.status_code == 303 and r.headers["location"] == "/aion/ui/"
            page = await http.get(base + "/aion/ui/workflows")
            assert page.status_code == 200
            assert 'href="/aion/ui/workflows/m1"' in page.text
            assert 'href="/ui/' not in page.text
