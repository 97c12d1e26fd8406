"""End to end: the status page at ``GET /`` in real headless Chromium, from a real daemon.

Debian's ``/usr/bin/chromium`` driven by Playwright (no browser download). The page is loaded
from the daemon while a cutover holds at stage 2 and after a rollback, and the DOM the page's
script drew is asserted; screenshots go to ``artifacts/`` for a person to look at.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from demo.stack import require_binary
from tests.e2e.conftest import E2E

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
THREE = [
    {"weight": 10, "hold": "1s"},
    {"weight": 50, "hold": "30s"},
    {"weight": 100, "hold": "1s"},
]
# Chromium's own services would try the (closed) network; the page needs none of them.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium, with a fresh profile in a temp dir that Playwright makes and removes."""
    chromium = require_binary("chromium")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """The page at ``url`` and a list that collects its console errors and script errors."""
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page, errors


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def test_page_mid_cutover_shows_stage_routers_checks_and_timeline(
    e2e: E2E, browser: Browser
) -> None:
    # Given a cutover holding at stage 2 of 3
    c = await e2e.holding_at(THREE, stage=1)
    await asyncio.sleep(2.0)  # some hold time and a few check measurements to draw

    # When on-call opens the status page
    page, errors = await open_page(browser, e2e.url + "/")
    svc = page.locator('section[data-service="checkout"]')

    # Then it shows the service, its live color and the running cutover at stage 2 of 3
    await expect(svc.locator("h2")).to_have_text("checkout")
    await expect(svc.locator(".service-head .chip")).to_have_text("live blue")
    await expect(svc.locator(".summary .state")).to_have_text("running")
    await expect(svc.locator(".summary")).to_contain_text(c["id"])
    await expect(svc.locator(".stage-text")).to_contain_text("stage 2 of 3: 50 % green, hold")
    await expect(svc.locator(".stage")).to_have_count(3)
    await expect(svc.locator(".stage.done")).to_have_count(1)
    current = svc.locator('.stage.current[role="progressbar"]')
    await expect(current).to_have_count(1)
    assert 0 < int(await current.get_attribute("aria-valuenow") or 0) < 100
    # and the router with its desired and observed share, as HAProxy reads it
    edge = svc.locator('tr[data-router="edge"]')
    await expect(edge.locator(".desired")).to_have_text("50 %")
    await expect(edge.locator(".observed")).to_have_text("50 %")
    await expect(edge).to_contain_text("haproxy")
    # and the health check: verdict, value, what it was judged against, and a sparkline
    health = svc.locator('tr[data-check="new-health"]')
    await expect(health.locator(".pill")).to_have_text("pass")
    await expect(health.locator(".detail")).to_contain_text("HTTP 200")
    await expect(health.locator(".failures")).to_have_text("0 / 2")
    await expect(health.locator("svg.spark polyline")).to_have_count(1)
    assert await health.locator("svg.spark rect.tick.v-pass").count() >= 2
    # and the event timeline
    kinds = await svc.locator(".timeline .ev-kind").all_text_contents()
    assert kinds[:1] == ["started"] and "stage_applied" in kinds, kinds
    assert kinds.count("stage_started") == 2, kinds
    await expect(svc.locator(".banner")).to_have_count(0)

    # the hold bar moves on its own as the page polls
    before = int(await current.get_attribute("aria-valuenow") or 0)
    await expect(current).not_to_have_attribute("aria-valuenow", str(before), timeout=8000)
    await screenshot(page, "status-page-mid-cutover.png")
    assert errors == []


async def test_page_after_a_rollback_shows_the_red_banner_with_the_reason(
    e2e: E2E, browser: Browser
) -> None:
    # Given a cutover at stage 2 whose new color then fails its health check
    c = await e2e.holding_at(THREE, stage=1)
    page, errors = await open_page(browser, e2e.url + "/")
    svc = page.locator('section[data-service="checkout"]')
    await expect(svc.locator(".summary .state")).to_have_text("running")
    for name in ("green1", "green2"):
        await e2e.stack.apps[name].set_health(False)
    c = await e2e.wait_for(c["id"], state="rolled_back", within=15)

    # Then the open page turns red by itself, naming the check and its value
    banner = svc.locator(".banner.bad")
    await expect(banner).to_contain_text("Rolled back", timeout=5000)
    await expect(banner).to_contain_text("new-health")
    await expect(banner).to_contain_text("HTTP 500")
    assert (await banner.text_content() or "").endswith(c["reason"])
    await expect(svc.locator(".summary .state")).to_have_text("rolled_back")
    await expect(svc.locator(".stage-text")).to_have_text(
        "rolled back from stage 2 of 3: 50 % green"
    )
    await expect(svc.locator('tr[data-router="edge"] .desired')).to_have_text("0 %")
    await expect(svc.locator('tr[data-check="new-health"] .pill')).to_have_text("fail")
    kinds = await svc.locator(".timeline .ev-kind").all_text_contents()
    assert kinds[-2:] == ["rollback_started", "rolled_back"], kinds
    await screenshot(page, "status-page-rolled-back.png")
    assert errors == []


async def test_with_tokens_the_page_asks_for_a_viewer_token_and_keeps_it(
    e2e: E2E, browser: Browser
) -> None:
    # Given a daemon with a viewer token configured
    token = "viewer-" + "x" * 32
    config = yaml.safe_load(e2e.write_config(stages=THREE).read_text())
    config["api"]["tokens"] = [
        {"name": "oncall", "role": "viewer", "sha256": hashlib.sha256(token.encode()).hexdigest()}
    ]
    e2e.config_path.write_text(yaml.safe_dump(config))
    await e2e.start_daemon()

    # When the page is opened, it asks for a token instead of showing data
    page, errors = await open_page(browser, e2e.url + "/")
    login = page.locator("form#login")
    await expect(login).to_be_visible()
    await expect(login).to_contain_text("needs a viewer token")
    await expect(page.locator("section.service")).to_have_count(0)

    # a wrong token is refused and asked for again
    await page.fill("#token", "not-the-token")
    await page.click("form#login button")
    await expect(login).to_contain_text("refused")
    await expect(login).to_be_visible()

    # the right one shows the services, and survives a reload (sessionStorage)
    await page.fill("#token", token)
    await page.click("form#login button")
    await expect(page.locator('section[data-service="checkout"] h2')).to_have_text("checkout")
    await expect(login).to_be_hidden()
    await page.reload()
    await expect(page.locator('section[data-service="checkout"] .muted')).to_have_text(
        "no cutover yet"
    )
    await expect(login).to_be_hidden()
    stored = await page.evaluate("sessionStorage.getItem('cutover.viewer-token')")
    assert stored == token
    # the 401s the page provoked on purpose are the only console errors
    assert all("401" in e for e in errors), errors
