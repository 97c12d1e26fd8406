"""Bad request bodies against the real app: every answer is a JSON 4xx, never a 5xx.

The POST endpoints take no parameters. Whatever the content type, a body other than nothing,
``{}`` or ``null`` is refused with 400; a body over ``MAX_BODY`` with 413 (declared by
Content-Length or streamed chunked); JSON nested too deeply for Python's parser with 400
(it used to be a ``RecursionError`` and a 500). The schema-driven fuzzing of every operation
is in ``tests/e2e/test_api_hardening.py``; this file covers what a schema cannot generate.

The second half runs the app behind the daemon's own listener (:mod:`cutover.api.listener`)
and speaks raw HTTP/1.1 to it: what aiohttp's parser refuses is JSON and never echoed, a head
or body that does not arrive in time is closed or 408, an idle connection is closed, and at
the connection cap a newcomer takes the place of an idle connection but never of a busy one.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cutover.api.app import MAX_BODY, make_app
from cutover.api.listener import HSTS, MAX_LINE, SERVER, ApiListener, connection_cap
from cutover.config import parse_config
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.errors import ConfigError
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from cutover.testing import resource_pool
from tests.unit.test_api import CONFIG

Client = TestClient[web.Request, web.Application]

#: One POST of each kind; none of them may reach the engine with a bad body.
POSTS = (
    "/v1/services/checkout/cutovers",
    "/v1/services/checkout/undo",
    "/v1/cutovers/co-nosuch/pause",
)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    store = SqliteStore(path=str(tmp_path / "state.db"))
    await store.open()
    metrics = Metrics()
    sup = Supervisor(
        config=parse_config(CONFIG),
        store=store,
        clock=SystemClock(),
        resources=resource_pool(),
        metrics=metrics,
    )
    async with TestClient(TestServer(make_app(supervisor=sup, store=store, metrics=metrics))) as c:
        yield c
    await sup.stop()
    await store.aclose()


async def _error(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"{", "application/json", "bad_json"),
        (b"<cutover/>", "application/xml", "bad_json"),
        (b"service=checkout", "application/x-www-form-urlencoded", "bad_json"),
        (b"\xff\xfe\x00garbage", "application/octet-stream", "bad_json"),
        (b"\xff\xfe", "application/json; charset=utf-8", "bad_json"),
        (b"[" * 30000 + b"]" * 30000, "application/json", "bad_json"),  # < MAX_BODY, too deep
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "application/json", "bad_json"),
        (b"[1]", "application/json", "unexpected_body"),
        (b'{"weight": 5}', "application/json", "unexpected_body"),
        (b'"start"', "text/plain", "unexpected_body"),
        (b"NaN", "application/json", "unexpected_body"),
        (b"1e999999", "application/json", "unexpected_body"),
    ],
)
async def test_malformed_bodies_are_json_400(
    client: Client, path: str, body: bytes, content_type: str, code: str
) -> None:
    resp = await client.post(path, data=body, headers={"Content-Type": content_type})
    assert resp.status == 400, (path, resp.status, await resp.text())
    assert (await _error(resp))["code"] == code


@pytest.mark.parametrize("path", POSTS)
async def test_a_body_over_the_limit_is_413_json(client: Client, path: str) -> None:
    resp = await client.post(
        path, data=b"{" + b" " * MAX_BODY + b"}", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    err = await _error(resp)
    assert err["code"] == "body_too_large" and str(MAX_BODY) in err["message"]


async def test_a_chunked_body_over_the_limit_is_413_json(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * (MAX_BODY // 4)

    resp = await client.post(
        "/v1/services/checkout/cutovers",
        data=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 413
    assert (await _error(resp))["code"] == "body_too_large"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/xml"),
        (b"  \n", "text/plain"),
        (b"{}", "application/json"),
        (b"null", "application/json"),
        (b"{}", "text/plain; charset=latin-1"),
    ],
)
async def test_an_empty_or_no_parameter_body_reaches_the_handler(
    client: Client, body: bytes, content_type: str
) -> None:
    """Accepted bodies get past input handling: here the preflight (the router's socket does
    not exist) answers 422, and an unknown cutover 404."""
    resp = await client.post(
        "/v1/services/checkout/cutovers", data=body, headers={"Content-Type": content_type}
    )
    assert resp.status == 422
    assert (await _error(resp))["code"] == "preflight_failed"
    resp = await client.post(
        "/v1/cutovers/co-nosuch/abort", data=body, headers={"Content-Type": content_type}
    )
    assert resp.status == 404


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PATCH", "/v1/services/checkout/cutovers", 405),
        ("DELETE", "/v1/cutovers/co-nosuch", 405),
        ("POST", "/v1/cutovers/co-nosuch/explode", 404),
        ("GET", "/v1/services/checkout/cutovers?limit=9999", 400),
        ("GET", "/v1/services/checkout/cutovers?limit=%EF%BC%95", 400),  # a fullwidth 5
        ("GET", "/v1/services/%00", 404),
        ("GET", "/v1/services/" + "x" * 4000, 404),
    ],
)
async def test_wrong_methods_paths_and_queries_are_json_4xx(
    client: Client, method: str, path: str, status: int
) -> None:
    resp = await client.request(method, path)
    assert resp.status == status, await resp.text()
    await _error(resp)


# --- behind the daemon's listener -------------------------------------------------------------

HEADER_TIMEOUT = 0.5  # and the keep-alive timeout


class Served:
    """The app behind an :class:`ApiListener` on a free loopback port."""

    def __init__(self, listener: ApiListener) -> None:
        self.listener = listener
        self.port = listener.bound_port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send raw bytes on a new connection; the answer's status, headers and body."""
        reader, writer = await self.connect()
        try:
            writer.write(request)
            await writer.drain()
            return await _read_answer(reader)
        finally:
            writer.close()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def _closed(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the daemon closes the connection (EOF); fails after ``within``."""
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), within) == b""
    return time.monotonic() - started


async def _serve(
    tmp_path: Path,
    *,
    max_connections: int = 64,
    ssl_context: ssl.SSLContext | None = None,
    timeouts: float = HEADER_TIMEOUT,
) -> AsyncIterator[Served]:
    """``timeouts``: the header and the keep-alive timeout."""
    store = SqliteStore(path=str(tmp_path / "state.db"))
    await store.open()
    metrics = Metrics()
    config = parse_config({**CONFIG, "api": {"header_timeout": timeouts}})
    sup = Supervisor(
        config=config, store=store, clock=SystemClock(), resources=resource_pool(), metrics=metrics
    )
    runner = web.AppRunner(make_app(supervisor=sup, store=store, metrics=metrics), access_log=None)
    await runner.setup()
    assert runner.server is not None
    listener = ApiListener(
        runner.server,
        host="127.0.0.1",
        port=0,
        ssl_context=ssl_context,
        max_connections=max_connections,
        header_timeout=timeouts,
        keepalive_timeout=timeouts,
    )
    await listener.start()
    try:
        yield Served(listener)
    finally:
        await listener.stop()
        await runner.cleanup()
        await sup.stop()
        await store.aclose()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path):
        yield s


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[Served]:
    """Two connections at most; no timeout closes one during a test."""
    async for s in _serve(tmp_path, max_connections=2, timeouts=60.0):
        yield s


def _json_error(body: bytes) -> dict[str, str]:
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"}, error
    return error  # type: ignore[no-any-return]


TOKEN = "s3cr3t-bearer-token-value"


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (  # a header field over the limit: aiohttp's text answer quoted its start (the token)
            b"GET /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode() * (MAX_LINE // len(TOKEN) + 1)
            + b"\r\n\r\n",
            431,
            "header_too_large",
        ),
        (
            b"GET /" + TOKEN.encode() * (MAX_LINE // len(TOKEN) + 1) + b" HTTP/1.1\r\n\r\n",
            431,
            "header_too_large",
        ),
        (b"NOT A REQUEST " + TOKEN.encode() + b"\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nBad Header: " + TOKEN.encode() + b"\r\n\r\n", 400, "bad_request"),
    ],
)
async def test_what_the_parser_refuses_is_json_and_never_echoed(
    served: Served, request_bytes: bytes, status: int, code: str
) -> None:
    got, headers, body = await served.exchange(request_bytes)
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    assert headers["server"] == SERVER
    assert _json_error(body)["code"] == code
    assert TOKEN.encode() not in body


async def test_a_405_lists_the_allowed_methods_and_no_server_version(served: Served) -> None:
    status, headers, body = await served.exchange(
        b"DELETE /v1/services/checkout HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 405 and _json_error(body)["code"] == "method_not_allowed"
    assert {m.strip() for m in headers["allow"].split(",")} == {"GET", "HEAD"}
    assert headers["server"] == SERVER
    assert "strict-transport-security" not in headers  # not under TLS


async def test_an_unfinished_head_is_closed_after_the_header_timeout(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        closed = await _closed(reader, within=10 * HEADER_TIMEOUT)
    finally:
        writer.close()
    assert closed >= HEADER_TIMEOUT * 0.9


async def test_the_next_head_on_a_kept_alive_connection_is_timed_too(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await _read_answer(reader)
        assert status == 200
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # the next one trickles
        await _closed(reader, within=10 * HEADER_TIMEOUT)
    finally:
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _read_answer(reader))[0] == 200
        assert await _closed(reader, within=10 * HEADER_TIMEOUT) >= HEADER_TIMEOUT * 0.9
    finally:
        writer.close()


async def test_a_body_that_cannot_be_decoded_is_400(served: Served) -> None:
    status, _, body = await served.exchange(
        b"POST /v1/services/checkout/cutovers HTTP/1.1\r\nHost: x\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nabcde"
    )
    assert status == 400 and _json_error(body)["code"] == "bad_body"


async def test_a_body_that_does_not_arrive_in_time_is_408(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(
            b"POST /v1/services/checkout/cutovers HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{"
        )
        status, _, body = await _read_answer(reader)
        assert status == 408 and _json_error(body)["code"] == "body_timeout"
        # what is left of the body is drained for at most the header timeout, then closed
        await _closed(reader, within=10 * HEADER_TIMEOUT)
    finally:
        writer.close()


async def test_at_the_cap_a_newcomer_takes_an_idle_connections_place(capped: Served) -> None:
    idle = [await capped.connect() for _ in range(2)]
    await asyncio.sleep(0.05)
    assert capped.listener.open_connections == 2
    status, _, _ = await capped.exchange(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    # the oldest idle one made room
    assert await asyncio.wait_for(idle[0][0].read(), 5.0) == b""
    for _, writer in idle:
        writer.close()


async def test_at_the_cap_busy_connections_hold_newcomers_back(capped: Served) -> None:
    """Two requests whose bodies are still arriving: a newcomer waits in the backlog (no
    eviction, no error). Once one of them is answered, its connection, idle now, makes room
    for the newcomer at once, not after the keep-alive timeout."""
    busy = [await capped.connect() for _ in range(2)]
    for _, writer in busy:
        writer.write(
            b"POST /v1/cutovers/co-nosuch/pause HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{"
        )
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(
        capped.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()
    busy[0][1].write(b"}")
    assert (await _read_answer(busy[0][0]))[0] == 404  # kept alive: idle now
    assert (await asyncio.wait_for(waiting, 5.0))[0] == 200
    assert await asyncio.wait_for(busy[0][0].read(), 5.0) == b""  # it made the room
    assert not busy[1][0].at_eof()  # the busy one was left alone
    for _, writer in busy:
        writer.close()


async def test_hsts_under_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async for served in _serve(tmp_path, ssl_context=server_context):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://127.0.0.1:{served.port}/healthz", ssl=client_context) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Strict-Transport-Security"] == HSTS
            assert resp.headers["Server"] == SERVER


@pytest.mark.parametrize(
    ("configured", "open_files", "reserve", "cap"),
    [
        (1024, None, 256, 1024),  # no limit: as configured
        (1024, 65536, 300, 1024),
        (1024, 1024, 256, 768),  # the engine's reserve comes first
        (1024, 200, 256, 16),  # never below MIN_CONNECTIONS
        (10, 1024, 256, 10),
    ],
)
def test_the_connection_cap_leaves_the_engine_its_reserve(
    configured: int, open_files: int | None, reserve: int, cap: int
) -> None:
    assert connection_cap(configured, open_files, reserve) == cap


async def test_a_repeated_unexpected_error_is_a_json_500_logged_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Supervisor, "get", broken)
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            resp = await client.get("/v1/cutovers/co-1")
            assert resp.status == 500
            assert (await _error(resp))["code"] == "internal"
    (line,) = logs  # the rest are counted, to be logged when the minute ends
    assert line["event"] == "unexpected error" and line["log_level"] == "error"
    assert isinstance(line["exc_info"], RuntimeError)


@pytest.mark.parametrize(
    ("api", "error"),
    [
        ({"max_connections": 0}, "api.max_connections: must be >= 1"),
        ({"max_connections": "many"}, "api.max_connections: must be an integer"),
        ({"header_timeout": 0}, "api.header_timeout: must be > 0"),
        ({"header_timeout": "10m"}, "api.header_timeout: must be <= 300"),
        ({"keepalive_timeout": "-1s"}, "api.keepalive_timeout:"),
    ],
)
def test_bad_api_limits_are_config_errors_named_by_place(api: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({**CONFIG, "api": api})
    assert any(e.startswith(error) for e in raised.value.errors), raised.value.errors


def test_api_limits_have_defaults_and_take_durations() -> None:
    defaults = parse_config(CONFIG).api
    assert (defaults.max_connections, defaults.header_timeout, defaults.keepalive_timeout) == (
        1024,
        10.0,
        15.0,
    )
    tuned = parse_config(
        {**CONFIG, "api": {"header_timeout": "2500ms", "keepalive_timeout": "1m"}}
    ).api
    assert (tuned.header_timeout, tuned.keepalive_timeout) == (2.5, 60.0)
