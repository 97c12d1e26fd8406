"""The HTTP health check against a real local aiohttp server: verdicts are data, never raised."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from cutover.checks.base import MeasureContext
from cutover.checks.http import HttpCheck, HttpCheckSpec
from cutover.checks.net import HTTP_SESSION, late_by
from cutover.core.model import Verdict
from cutover.resource_pool import ResourcePool
from cutover.testing import resource_pool

PLACEHOLDERS = {"new": "green", "old": "blue", "service": "checkout"}


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="status: ok")


async def _broken(request: web.Request) -> web.Response:
    return web.Response(status=500, text="boom")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(text="late")


async def _color(request: web.Request) -> web.Response:
    color = request.match_info["color"]
    if request.headers.get("X-Color") != color:
        return web.Response(status=400, text="header did not render")
    return web.Response(text=f"color={color}")


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/broken", _broken)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/{color}/healthz", _color)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _spec(**fields: Any) -> HttpCheckSpec:
    return HttpCheckSpec.model_validate({"type": "http", "name": "health", **fields})


async def _measure(spec: HttpCheckSpec) -> Any:
    async with resource_pool() as resources:
        check = spec.build(placeholders=PLACEHOLDERS, resources=resources)
        try:
            return await check.measure(MeasureContext())
        finally:
            await check.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


async def test_expected_status_passes_with_latency(base_url: str) -> None:
    m = await _measure(_spec(url=f"{base_url}/healthz"))
    assert m.verdict is Verdict.PASS
    assert m.value is not None and 0 <= m.value < 5
    assert m.at > 1e9


async def test_wrong_status_fails_naming_status_and_url(base_url: str) -> None:
    m = await _measure(_spec(url=f"{base_url}/broken"))
    assert m.verdict is Verdict.FAIL
    assert m.detail == f"HTTP 500 from {base_url}/broken (expected 200)"


async def test_listed_status_passes(base_url: str) -> None:
    m = await _measure(_spec(url=f"{base_url}/broken", expect_status=[200, 500]))
    assert m.verdict is Verdict.PASS


async def test_body_substring(base_url: str) -> None:
    m = await _measure(_spec(url=f"{base_url}/healthz", body_contains="ok"))
    assert m.verdict is Verdict.PASS
    m = await _measure(_spec(url=f"{base_url}/healthz", body_contains="ready"))
    assert m.verdict is Verdict.FAIL
    assert "'ready'" in m.detail and f"{base_url}/healthz" in m.detail


async def test_head_request(base_url: str) -> None:
    m = await _measure(_spec(url=f"{base_url}/healthz", method="HEAD"))
    assert m.verdict is Verdict.PASS


async def test_refused_port_fails() -> None:
    url = f"http://127.0.0.1:{_free_port()}/healthz"
    m = await _measure(_spec(url=url))
    assert m.verdict is Verdict.FAIL
    assert m.detail == f"cannot reach {url}: connection refused"
    assert m.value is None


async def test_timeout_fails(base_url: str) -> None:
    m = await _measure(_spec(url=f"{base_url}/slow", timeout="200ms"))
    assert m.verdict is Verdict.FAIL
    assert m.detail == f"no answer from {base_url}/slow within 200ms"


async def test_unresolvable_host_fails() -> None:
    m = await _measure(_spec(url="http://no-such-host.invalid/healthz", timeout=2))
    assert m.verdict is Verdict.FAIL
    assert "http://no-such-host.invalid/healthz" in m.detail


async def test_credentials_in_url_never_shown() -> None:
    url = f"http://user:hunter2@127.0.0.1:{_free_port()}/healthz"
    m = await _measure(_spec(url=url))
    assert m.verdict is Verdict.FAIL
    assert "hunter2" not in m.detail


async def test_placeholders_render_in_url_and_headers(base_url: str) -> None:
    spec = _spec(url=base_url + "/{{new}}/healthz", headers={"X-Color": "{{ new }}"})
    m = await _measure(spec)
    assert m.verdict is Verdict.PASS, m.detail
    assert f"{base_url}/green/healthz" in m.detail


async def test_checks_share_the_resources_session_closed_with_them(base_url: str) -> None:
    """One session for every check on the aiohttp path (a session each cost 23 MB at 1000
    checks), with each check's own headers per request and no shared cookies; a check's close
    leaves it to the others, the resources' close closes it. (An Accept-Encoding header keeps
    a plain http:// check on aiohttp.)"""
    aiohttp_only = {"Accept-Encoding": "identity"}
    resources = resource_pool()
    first = _spec(url=f"{base_url}/healthz", headers=aiohttp_only).build(
        placeholders=PLACEHOLDERS, resources=resources
    )
    second = _spec(
        url=f"{base_url}/{{{{new}}}}/healthz", headers={"X-Color": "{{new}}", **aiohttp_only}
    ).build(placeholders=PLACEHOLDERS, resources=resources)
    assert isinstance(first, HttpCheck) and isinstance(second, HttpCheck)
    try:
        for _ in range(3):
            assert (await first.measure(MeasureContext())).verdict is Verdict.PASS
            assert (await second.measure(MeasureContext())).verdict is Verdict.PASS
        session = resources.get(HTTP_SESSION)
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        assert session.connector is not None and session.connector.limit == 0
        await first.aclose()
        assert not session.closed
        assert (await second.measure(MeasureContext())).verdict is Verdict.PASS
        await second.aclose()
        assert not session.closed
    finally:
        await resources.aclose()
    assert session.closed
    with pytest.raises(RuntimeError, match="after the resources were closed"):
        resources.get(HTTP_SESSION)


async def test_a_timeout_the_starved_loop_fired_late_is_an_error_not_a_fail(
    base_url: str, resources: ResourcePool
) -> None:
    """The daemon's own loop blocked past the timeout: that measured the daemon, not green."""
    check = _spec(url=f"{base_url}/slow", timeout="200ms").build(
        placeholders=PLACEHOLDERS, resources=resources
    )

    async def starve() -> None:
        await asyncio.sleep(0.05)
        time.sleep(1.0)  # noqa: ASYNC251 -- the blocked loop of an overloaded daemon

    try:
        m, _ = await asyncio.gather(check.measure(MeasureContext()), starve())
    finally:
        await check.aclose()
    assert m.verdict is Verdict.ERROR
    assert m.detail.startswith(f"no answer from {base_url}/slow within 200ms, but the daemon")


def test_late_by_needs_a_clear_margin() -> None:
    assert late_by(0.0, 5.0, 5.3) == 0.0  # ordinary timer jitter
    assert late_by(0.0, 5.0, 8.0) == pytest.approx(3.0)
    assert late_by(0.0, 0.2, 0.5) == 0.0  # under LATE_MIN
    assert late_by(0.0, 0.2, 1.0) == pytest.approx(0.8)


def test_unknown_placeholder_raises_at_build() -> None:
    spec = _spec(url="http://{{neww}}.checkout.internal/healthz")
    with pytest.raises(ValueError, match=r"unknown placeholder \{\{neww\}\}"):
        spec.build(placeholders=PLACEHOLDERS, resources=resource_pool())


def test_spec_defaults_and_normalisation() -> None:
    spec = _spec(url="http://x/healthz")
    assert spec.expect_status == [200]
    assert spec.method == "GET"
    assert spec.effective_timeout == 5.0
    assert _spec(url="http://x/", expect_status=204).expect_status == [204]
    assert _spec(url="http://x/", expect_status=[200, 204]).expect_status == [200, 204]
    assert _spec(url="http://x/", interval="2s").effective_timeout == 2.0


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "ftp://x/"},
        {"url": "http://x/", "expect_status": 999},
        {"url": "http://x/", "expect_status": []},
        {"url": "http://x/", "method": "POST"},
        {"url": "http://x/", "method": "HEAD", "body_contains": "ok"},
        {"url": "http://x/", "headers": {"X-A": 1}},
    ],
)
def test_spec_rejects(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _spec(**fields)
