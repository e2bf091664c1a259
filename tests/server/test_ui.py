"""The web UI in a real browser (Playwright driving Debian's Chromium) against uvicorn on a
loopback port and a real LMDB engine: sign in, find a run by filter, open it, approve its
pending approval and see it complete; signal a run with a JSON payload; a viewer sees no
actions and a forged POST is refused; another tenant's run is not found. Screenshots of each
page go to docs/ui/ (docs/ui.md shows them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import aion
from aion._apikeys import ApiKeys
from tests.server._serving import httpx, serving

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("AION_CHROMIUM", "/usr/bin/chromium")


def _missing() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return 'the UI tests need Playwright (pip install -e ".[test]")'
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return f"the UI tests need Chromium ({CHROMIUM}; apt-get install chromium)"
    return None


if (_why := _missing()) is not None:
    if os.environ.get("AION_REQUIRE_CHROMIUM") == "1":  # CI: nothing may skip
        raise RuntimeError(_why)
    pytest.skip(_why, allow_module_level=True)
import playwright.async_api as playwright_api  # noqa: E402

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"


@aion.workflow
async def expense(ctx: aion.Context, amount: int, who: str) -> str:
    ctx.upsert_search_attributes(team="travel")
    decision = await ctx.approval("pay expense", details={"amount": amount, "employee": who})
    await ctx.step(_pay, amount)
    return f"paid {amount} to {who}, approved by {decision.user}"


def _pay(amount: int) -> int:
    return amount


@aion.workflow
async def shipment(ctx: aion.Context, order: str) -> dict[str, Any]:
    carrier: dict[str, Any] = await ctx.wait_signal("carrier")
    return {"order": order, "carrier": carrier}


@dataclass
class Site:
    base: str
    engine: aion.Engine
    keys: dict[str, str]
    browser: Any


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    store = ApiKeys(tmp_path / "api-keys.json")
    keys = {
        "operator": store.create(role="operator", tenant="acme", label="olga")[0],
        "approver": store.create(role="approver", tenant="acme", label="grace")[0],
        "viewer": store.create(role="viewer", tenant="acme", label="victor")[0],
        "globex": store.create(role="admin", tenant="globex", label="gus")[0],
        "root": store.create(role="admin", all_tenants=True, label="oncall")[0],
    }
    async with (
        aion.Engine(tmp_path, workflows=[expense, shipment]) as engine,
        serving(engine) as base,
        playwright_api.async_playwright() as p,
    ):
        browser = await p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=["--no-sandbox", "--disable-background-networking"],
        )
        try:
            yield Site(base, engine, keys, browser)
        finally:
            await browser.close()


async def _signed_in(site: Site, who: str, tenant: str | None = None) -> Any:
    context = await site.browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # every action asks first: say yes
    await page.goto(site.base + "/ui/")
    assert page.url.endswith("/ui/login")
    await page.fill("#key", site.keys[who])
    if tenant:
        await page.fill("#tenant", tenant)
    await page.click("button[type=submit]")
    await page.wait_for_url(site.base + "/ui/")
    return page


async def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_find_a_run_approve_it_and_see_it_complete(site: Site) -> None:
    for i in range(3):
        await site.engine.start(shipment, f"o-{i}", workflow_id=f"ship-{i}", tenant="acme")
    await site.engine.start(expense, 420, "ada", workflow_id="expense-42", tenant="acme")
    await site.engine.wait_idle()
    page = await _signed_in(site, "approver")
    await _shot(page, "overview")
    assert "olga" not in await page.content()  # the header names who is signed in: grace
    assert "grace" in await page.inner_text("header")
    await page.click("text=Workflows")
    await page.select_option("select[name=type]", "expense")
    await page.fill("input[name=search]", "team=travel")
    await page.click("form.filters button[type=submit]")
    rows = page.locator("table.list tbody tr, table.list tr:has(td)")
    await page.wait_for_selector("text=expense-42")
    assert await rows.count() == 1
    await _shot(page, "workflows")
    await page.click("text=expense-42")
    await page.wait_for_selector("#approvals")
    assert "420" in await page.inner_text("#approvals")
    await _shot(page, "workflow")
    await page.fill("#approvals input[name=comment]", "within budget")
    await page.click("#approvals button.good")
    await page.wait_for_selector(".flash.ok")
    assert "Approved" in await page.inner_text(".flash.ok")
    result = await site.engine.handle("expense-42", tenant="acme").result(timeout=10)
    assert result == "paid 420 to ada, approved by grace"
    await page.goto(page.url.split("?")[0])
    await page.wait_for_selector("#status.completed")
    assert "approved by grace" in await page.inner_text("#result")
    await page.click("details.events summary")  # the step's events, JSON one click away
    assert "step.completed" in await page.inner_text("details.events")
    await page.goto(site.base + "/ui/approvals")
    assert "Nothing waits" in await page.inner_text("main")
    await _shot(page, "approvals")


async def test_signal_a_run_with_a_json_payload(site: Site) -> None:
    await site.engine.start(shipment, "o-9", workflow_id="ship-9", tenant="acme")
    await site.engine.wait_idle()
    page = await _signed_in(site, "operator")
    await page.goto(site.base + "/ui/workflows/ship-9")
    await page.fill("#actions input[name=name]", "carrier")
    await page.fill("#actions textarea[name=payload]", '{"name": "ups", "days": ')  # broken
    await page.click("#actions form:first-of-type button[type=submit]")
    await page.wait_for_selector(".json-error:not([hidden])")
    assert [e.type for e in await site.engine.history("ship-9", tenant="acme")][-1] != (
        "signal.received"
    )  # nothing was sent
    await page.fill("#actions textarea[name=payload]", '{"name": "ups", "days": 2}')
    await page.click("#actions form:first-of-type button[type=submit]")
    await page.wait_for_selector(".flash.ok")
    result = await site.engine.handle("ship-9", tenant="acme").result(timeout=10)
    assert result == {"order": "o-9", "carrier": {"name": "ups", "days": 2}}
    history = await site.engine.history("ship-9", tenant="acme")
    signal = next(e for e in history if e.type == "signal.received")
    assert signal.data["identity"] == "olga"


async def test_a_viewer_sees_no_actions_and_a_forged_post_is_refused(site: Site) -> None:
    await site.engine.start(expense, 7, "bo", workflow_id="expense-7", tenant="acme")
    await site.engine.wait_idle()
    page = await _signed_in(site, "viewer")
    await page.goto(site.base + "/ui/workflows/expense-7")
    await page.wait_for_selector("#approvals")
    assert await page.locator("#actions").count() == 0
    assert await page.locator("#approvals form").count() == 0
    # The viewer's own session posting the approve form by hand: refused, nothing recorded.
    csrf = await page.locator("header input[name=csrf]").get_attribute("value")
    approval = (await site.engine.pending_approvals(tenant="acme")).items[0]
    response = await page.request.post(
        site.base + "/ui/workflows/expense-7/approve",
        form={"csrf": csrf, "approval_id": approval.approval_id, "digest": approval.digest},
    )
    assert response.status == 403
    # Another site's form (no CSRF token of this session): refused too.
    response = await page.request.post(
        site.base + "/ui/workflows/expense-7/cancel", form={"reason": "x"}
    )
    assert response.status == 403
    types = [e.type for e in await site.engine.history("expense-7", tenant="acme")]
    assert "approval.decided" not in types and "workflow.cancel_requested" not in types


async def test_another_tenants_run_is_not_found(site: Site) -> None:
    await site.engine.start(shipment, "secret", workflow_id="acme-only", tenant="acme")
    page = await _signed_in(site, "globex")
    response = await page.goto(site.base + "/ui/workflows/acme-only")
    assert response.status == 404
    assert "No workflow" in await page.inner_text("main")
    await page.goto(site.base + "/ui/workflows")
    assert "acme-only" not in await page.content()
    # The all-tenants key names the tenant at sign-in.
    page = await _signed_in(site, "root", tenant="acme")
    response = await page.goto(site.base + "/ui/workflows/acme-only")
    assert response.status == 200


async def test_no_request_leaves_the_site_and_a_phone_can_read_it(site: Site) -> None:
    await site.engine.start(expense, 99, "cy", workflow_id="expense-99", tenant="acme")
    await site.engine.wait_idle()
    elsewhere: list[str] = []
    context = await site.browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())

    async def watch(route: Any) -> None:
        if not route.request.url.startswith(site.base):
            elsewhere.append(route.request.url)
            await route.abort()
        else:
            await route.continue_()

    await page.route("**/*", watch)
    await page.goto(site.base + "/ui/login")
    await _shot(page, "login")
    await page.fill("#key", site.keys["approver"])
    await page.click("button[type=submit]")
    await page.wait_for_url(site.base + "/ui/")
    for path in ("/ui/", "/ui/workflows", "/ui/approvals", "/ui/workflows/expense-99"):
        await page.goto(site.base + path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, (path, width)  # no sideways scrolling of the page
    await _shot(page, "phone")
    # Keyboard only: tab to the comment field and approve with Enter.
    await page.focus("#approvals input[name=comment]")
    await page.keyboard.type("ok from the phone")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await page.wait_for_selector(".flash.ok")
    assert elsewhere == []


async def test_signed_out_and_revoked_sessions_go_back_to_sign_in(
    site: Site, tmp_path: Path
) -> None:
    page = await _signed_in(site, "viewer")
    await page.click("text=Sign out")
    await page.wait_for_url(site.base + "/ui/login")
    await page.goto(site.base + "/ui/workflows")
    assert page.url.endswith("/ui/login")
    page = await _signed_in(site, "operator")
    store = ApiKeys(tmp_path / "api-keys.json")
    (olga,) = [k for k in store.list() if k.label == "olga"]
    store.revoke(olga.key_id)
    await page.goto(site.base + "/ui/workflows")
    assert page.url.endswith("/ui/login")
    made_up = {"aion_session": "e30.AAAA"}  # a made-up session cookie is no session
    async with httpx.AsyncClient(cookies=made_up) as http:
        r = await http.get(site.base + "/ui/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
