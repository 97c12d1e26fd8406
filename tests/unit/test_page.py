"""The status page's route: one open, self-contained document under a strict CSP.

What the page draws is tested in real Chromium (tests/e2e/test_status_page.py).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cutover.api.page import add_routes, render_page


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = web.Application()
    add_routes(app)
    async with TestClient(TestServer(app)) as c:
        yield c


def _sha(source: str) -> str:
    return base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


async def test_get_root_serves_the_page_with_its_script_and_style_inline(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    html = await resp.text()
    assert "<!-- status." not in html  # both slots filled
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert "/v1/services" in script and ".stage" in style
    # the CSP admits exactly this script and this style, and no other origin
    csp = resp.headers["Content-Security-Policy"]
    assert f"script-src 'sha256-{_sha(script)}';" in csp
    assert f"style-src 'sha256-{_sha(style)}';" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert not re.search(r"(src|href)=\"?https?:", html)  # no external resources


async def test_only_the_page_is_served(client: TestClient) -> None:  # type: ignore[type-arg]
    for path in ("/static/status.js", "/status.html", "/page.py", "/..%2fapp.py"):
        assert (await client.get(path)).status == 404, path
    assert (await client.head("/")).status == 200
    assert (await client.post("/")).status == 405


def test_the_script_never_parses_api_strings_as_html() -> None:
    body, _ = render_page()
    script = body.decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
