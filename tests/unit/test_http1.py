"""The lean HTTP/1.1 client behind HTTP checks (cutover.checks.http1), against real servers on
loopback: an aiohttp app, and a scripted raw asyncio server for the protocol's edge cases.
Where both can answer, the lean client must give the verdict and detail aiohttp gives."""

from __future__ import annotations

import asyncio
import errno
import gzip
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import BadHttpMessage

from cutover.checks.base import MeasureContext
from cutover.checks.http import BODY_LIMIT, HttpCheck
from cutover.checks.http1 import ConnectError, MalformedAnswer, fast_client
from cutover.checks.net import no_answer_reason
from cutover.core.model import Measurement, Verdict
from cutover.testing import resource_pool

PASS, FAIL = Verdict.PASS, Verdict.FAIL

#: answer(n, writer) answers request n (0-based, counted over all connections); the
#: connection stays open while it returns True.
Answerer = Callable[[int, asyncio.StreamWriter], Awaitable[bool]]


class RawServer:
    """A scripted HTTP server: counts connections, keeps every request head."""

    def __init__(self, answer: Answerer) -> None:
        self.answer = answer
        self.url = ""
        self.connections = 0
        self.ended_by_client = 0  # connections the client closed while the server listened
        self.requests: list[bytes] = []
        self.handlers: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.ended_by_client += 1
                    return
                self.requests.append(head)
                if not await self.answer(len(self.requests) - 1, writer):
                    return
        except ConnectionError:
            return  # the client went away in the middle of an answer
        except asyncio.CancelledError:
            return  # torn down (asyncio 3.11 logs a cancelled connection handler as an error)
        finally:
            writer.close()


@asynccontextmanager
async def raw_server(answer: Answerer) -> AsyncIterator[RawServer]:
    raw = RawServer(answer)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield raw
    finally:
        server.close()
        for task in raw.handlers:
            task.cancel()
        await asyncio.gather(*raw.handlers, return_exceptions=True)
        await server.wait_closed()


def replies(*answers: bytes, close: bool = False) -> Answerer:
    """Request n gets ``answers[n]`` (the last one from then on); ``close`` ends the
    connection after each answer."""

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answers[min(n, len(answers) - 1)])
        await writer.drain()
        return not close

    return answer


def ok(body: bytes = b"status: ok", *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i, chunk in enumerate(chunks):
        out += f"{len(chunk):x}".encode() + (b";ext=1" if i % 2 else b"") + b"\r\n"
        out += chunk + b"\r\n"
    return out + b"0\r\n" + trailer + b"\r\n"


@asynccontextmanager
async def http_check(url: str, **fields: Any) -> AsyncIterator[HttpCheck]:
    async with resource_pool() as resources:
        check = HttpCheck(name="health", url=url, resources=resources, **fields)
        try:
            yield check
        finally:
            await check.aclose()


async def measure(check: HttpCheck) -> Measurement:
    return await check.measure(MeasureContext())


async def fast_and_aiohttp(url: str, **fields: Any) -> tuple[Measurement, Measurement]:
    """One measurement through the lean client, one through aiohttp, of the same check."""
    async with http_check(url, **fields) as fast, http_check(url, **fields) as slow:
        assert fast._fast is not None
        slow._fast = None
        return await measure(fast), await measure(slow)


def shown(m: Measurement) -> tuple[Verdict, str]:
    """Verdict and detail, the latency left out."""
    return m.verdict, re.sub(r" in \d+ ms$", " in N ms", m.detail)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- what is sent, and who sends it --------------------------------------------------------


async def test_request_is_aiohttps_but_for_accept_encoding() -> None:
    async with raw_server(replies(ok())) as raw:
        url = raw.url + "/a b/healthz?x=1&y=%20#frag"
        fast, slow = await fast_and_aiohttp(url, headers={"X-Color": "green"})
        assert fast.verdict is PASS and slow.verdict is PASS

    def parsed(head: bytes) -> tuple[str, dict[str, str]]:
        line, *rest = head.decode().strip().split("\r\n")
        return line, dict(h.split(": ", 1) for h in rest)

    (fast_line, fast_headers), (slow_line, slow_headers) = map(parsed, raw.requests)
    assert fast_line == slow_line == "GET /a%20b/healthz?x=1&y=%20 HTTP/1.1"
    assert fast_headers.pop("Accept-Encoding") == "identity"
    assert slow_headers.pop("Accept-Encoding").startswith("gzip, deflate")
    assert fast_headers.pop("Connection") == "keep-alive"
    assert fast_headers == slow_headers
    assert fast_headers["User-Agent"] == SERVER_SOFTWARE
    assert fast_headers["Host"] == raw.url.removeprefix("http://")
    assert fast_headers["X-Color"] == "green"


async def test_users_host_header_replaces_the_urls() -> None:
    async with (
        raw_server(replies(ok())) as raw,
        http_check(
            raw.url + "/healthz", headers={"host": "checkout.internal", "Accept": "text/plain"}
        ) as check,
    ):
        assert (await measure(check)).verdict is PASS
    head = raw.requests[0].decode().lower()
    assert head.count("host:") == 1 and "host: checkout.internal\r\n" in head
    assert head.count("accept:") == 1 and "accept: text/plain\r\n" in head


@pytest.mark.parametrize(
    ("url", "headers", "fast"),
    [
        ("http://127.0.0.1:8080/healthz", {}, True),
        ("http://svc.internal/healthz", {"X-Token": "t"}, True),
        ("https://127.0.0.1:8443/healthz", {}, False),
        ("http://user:hunter2@127.0.0.1/healthz", {}, False),
        ("http://user@127.0.0.1/healthz", {}, False),
        ("http://127.0.0.1/healthz", {"accept-encoding": "gzip"}, False),
        ("http://127.0.0.1/healthz", {"Transfer-Encoding": "chunked"}, False),
        ("http://127.0.0.1/healthz", {"Expect": "100-continue"}, False),
        ("http://127.0.0.1/healthz", {"X-Evil": "a\r\nX-Injected: 1"}, False),
    ],
)
def test_which_checks_take_the_lean_path(url: str, headers: dict[str, str], fast: bool) -> None:
    client = fast_client(url, "GET", headers, read_body=False, limit=BODY_LIMIT)
    assert (client is not None) is fast
    check = HttpCheck(name="h", url=url, headers=headers, resources=resource_pool())
    assert (check._fast is not None) is fast


async def test_url_with_credentials_goes_through_aiohttp() -> None:
    async with raw_server(replies(ok())) as raw:
        url = raw.url.replace("http://", "http://user:hunter2@") + "/healthz"
        async with http_check(url) as check:
            m = await measure(check)
    assert m.verdict is PASS and "hunter2" not in m.detail
    head = raw.requests[0]
    assert b"Authorization: Basic dXNlcjpodW50ZXIy\r\n" in head  # aiohttp sends it
    assert b"Accept-Encoding: gzip" in head


async def test_https_goes_through_aiohttp() -> None:
    first_bytes: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first_bytes.append(await reader.read(3))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/healthz"
    try:
        async with http_check(url, timeout=2) as check:
            assert check._fast is None
            m = await measure(check)
    finally:
        server.close()
        await server.wait_closed()
    assert m.verdict is FAIL and m.detail.startswith(f"cannot reach {url}: ")
    assert first_bytes and first_bytes[0][:1] == b"\x16"  # a TLS handshake, not "GET"


async def test_a_check_measured_twice_at_once_sends_the_second_through_aiohttp() -> None:
    async def slow_ok(n: int, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(ok())
        return True

    async with raw_server(slow_ok) as raw, http_check(raw.url + "/healthz") as check:
        both = await asyncio.gather(measure(check), measure(check))
    assert [m.verdict for m in both] == [PASS, PASS]
    encodings = sorted(re.findall(rb"Accept-Encoding: (\w+)", b"".join(raw.requests)))
    assert encodings == [b"gzip", b"identity"]


# -- connections ---------------------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[tuple[str, set[Any]]]:
    """An aiohttp app; the set collects the client ends of the connections it served."""
    peers: set[Any] = set()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        response: web.StreamResponse = await handler(request)
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="status: ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    def to(location: str, status: int = 302) -> Callable[[web.Request], Awaitable[Any]]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": location})

        return handler

    application = web.Application(middlewares=[count])
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/broken", broken)
    application.router.add_get("/old", to("/healthz"))
    application.router.add_get("/old-broken", to("/broken", 307))
    application.router.add_get("/moved", to("/healthz", 301))
    application.router.add_get("/loop", to("/loop"))
    runner = web.AppRunner(application, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", peers
    finally:
        await runner.cleanup()


async def test_measurements_reuse_one_connection(app: tuple[str, set[Any]]) -> None:
    url, peers = app
    async with http_check(url + "/healthz", body_contains="ok") as check:
        verdicts = [(await measure(check)).verdict for _ in range(5)]
    assert verdicts == [PASS] * 5
    assert len(peers) == 1


@pytest.mark.parametrize(
    "answer",
    [
        ok(),
        ok(b"ok", "Connection: keep-alive", status="200 OK").replace(b"HTTP/1.1", b"HTTP/1.0"),
        chunked(b"status", b": ok", trailer=b"X-Checksum: 1\r\n"),
        ok(b"", status="204 No Content"),
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",  # a 304 has no body
    ],
    ids=["length", "http/1.0 keep-alive", "chunked", "204", "304"],
)
async def test_bodies_read_past_keep_the_connection(answer: bytes) -> None:
    async with (
        raw_server(replies(answer)) as raw,
        http_check(raw.url + "/healthz", expect_status=(200, 204, 304)) as check,
    ):
        verdicts = [(await measure(check)).verdict for _ in range(3)]
    assert verdicts == [PASS] * 3
    assert raw.connections == 1 and len(raw.requests) == 3


async def test_head_answer_has_no_body_whatever_its_length_says() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with (
        raw_server(replies(answer)) as raw,
        http_check(raw.url + "/healthz", method="HEAD") as check,
    ):
        verdicts = [(await measure(check)).verdict for _ in range(3)]
    assert verdicts == [PASS] * 3
    assert raw.connections == 1
    assert all(r.startswith(b"HEAD /healthz HTTP/1.1\r\n") for r in raw.requests)


async def test_connection_close_answers_are_not_reused() -> None:
    async with (
        raw_server(replies(ok(b"ok", "Connection: close"), close=True)) as raw,
        http_check(raw.url + "/healthz") as check,
    ):
        verdicts = [(await measure(check)).verdict for _ in range(3)]
    assert verdicts == [PASS] * 3
    assert raw.connections == 3


async def test_server_closing_an_idle_connection_costs_nothing() -> None:
    # answers without "Connection: close", then closes: an idle timeout on the server side
    async with (
        raw_server(replies(ok(), close=True)) as raw,
        http_check(raw.url + "/healthz") as check,
    ):
        assert (await measure(check)).verdict is PASS
        await asyncio.sleep(0.05)  # the client has seen the close
        assert (await measure(check)).verdict is PASS
    assert raw.connections == 2 and len(raw.requests) == 2


async def test_reused_connection_closed_before_the_answer_is_retried_once_on_a_new_one() -> None:
    async def drop_the_second(n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 1:
            return False  # closes on reading the request: a race with its idle timeout
        writer.write(ok())
        return True

    async with raw_server(drop_the_second) as raw, http_check(raw.url + "/healthz") as check:
        first, second = await measure(check), await measure(check)
    assert first.verdict is PASS and second.verdict is PASS, second.detail
    assert raw.connections == 2 and len(raw.requests) == 3


async def test_the_retry_is_only_once() -> None:
    async def only_the_first(n: int, writer: asyncio.StreamWriter) -> bool:
        if n:
            return False
        writer.write(ok())
        return True

    async with raw_server(only_the_first) as raw, http_check(raw.url + "/healthz") as check:
        assert (await measure(check)).verdict is PASS
        m = await measure(check)
    assert m.verdict is FAIL
    assert m.detail == f"cannot reach {raw.url}/healthz: server closed the connection"
    assert raw.connections == 2 and len(raw.requests) == 3


async def test_a_new_connection_closed_without_answer_is_retried_once_as_aiohttp_does() -> None:
    async def hang_up(n: int, writer: asyncio.StreamWriter) -> bool:
        return False

    async with raw_server(hang_up) as raw:
        fast, slow = await fast_and_aiohttp(raw.url + "/healthz")
    assert shown(fast) == shown(slow)
    assert fast.detail == f"cannot reach {raw.url}/healthz: server closed the connection"
    assert raw.connections == 2 + 2


async def test_a_connection_reset_in_the_middle_of_the_head_is_retried() -> None:
    async def reset_the_first(n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-")
            await writer.drain()
            writer.transport.abort()  # RST
            return False
        writer.write(ok())
        return True

    async with raw_server(reset_the_first) as raw, http_check(raw.url + "/healthz") as check:
        m = await measure(check)
    assert m.verdict is PASS, m.detail
    assert raw.connections == 2


async def test_unasked_for_bytes_on_an_idle_connection_are_not_taken_for_the_next_answer() -> None:
    async def answer_then_408(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())
        if n == 0:
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        return True

    async with raw_server(answer_then_408) as raw, http_check(raw.url + "/healthz") as check:
        assert (await measure(check)).verdict is PASS
        await asyncio.sleep(0.1)
        m = await measure(check)
    assert m.verdict is PASS, m.detail
    assert raw.connections == 2


async def test_aclose_closes_the_connection() -> None:
    async with raw_server(replies(ok())) as raw, resource_pool() as resources:
        check = HttpCheck(name="health", url=raw.url + "/healthz", resources=resources)
        assert (await measure(check)).verdict is PASS
        await check.aclose()
        for _ in range(100):
            if raw.ended_by_client:
                break
            await asyncio.sleep(0.01)
        assert raw.ended_by_client == 1
        await check.aclose()  # idempotent


# -- bodies --------------------------------------------------------------------------------


async def test_chunked_body_found_in_a_later_chunk() -> None:
    async def trickle(n: int, writer: asyncio.StreamWriter) -> bool:
        answer = chunked(b"x" * 3000, b"y" * 20, b"status: ", b"ready", trailer=b"X-T: 1\r\n")
        for i in range(0, len(answer), 700):  # the chunks' framing split across reads
            writer.write(answer[i : i + 700])
            await writer.drain()
            await asyncio.sleep(0.002)
        return True

    async with (
        raw_server(trickle) as raw,
        http_check(raw.url + "/healthz", body_contains="status: ready") as check,
    ):
        first, second = await measure(check), await measure(check)
    assert first.verdict is PASS and second.verdict is PASS, first.detail
    assert raw.connections == 1  # the whole chunked body and its trailer were read


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_body_past_the_limit_is_not_read_and_its_connection_is_closed(
    framing: str,
) -> None:
    body = b"x" * BODY_LIMIT + b"status: ready" + b"x" * 1000
    answer = ok(body) if framing == "length" else chunked(body[:40000], body[40000:])
    async with raw_server(replies(answer)) as raw:
        url = raw.url + "/healthz"
        async with http_check(url, body_contains="status: ready") as check:
            first, second = await measure(check), await measure(check)
        fast, slow = await fast_and_aiohttp(url, body_contains="status: ready")
    expected = f"HTTP 200 from {url} without 'status: ready' in the first 64 KiB of the body"
    assert first.verdict is FAIL and first.detail == expected
    assert second.detail == expected
    assert raw.connections >= 2 + 2  # the first measurement's connection was not kept
    assert shown(fast) == shown(slow)


async def test_big_body_not_judged_closes_once_the_status_is_known() -> None:
    answer = ok(b"x" * (BODY_LIMIT + 1))

    async def half_then_the_rest(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer[:1000])
        await writer.drain()
        await asyncio.sleep(0.2)  # the status is known long before the rest comes
        writer.write(answer[1000:])
        return True

    async with (
        raw_server(half_then_the_rest) as raw,
        http_check(raw.url + "/healthz") as check,
    ):
        assert (await measure(check)).verdict is PASS
        assert (await measure(check)).verdict is PASS
    assert raw.connections == 2


async def test_body_up_to_the_close_of_an_http10_answer() -> None:
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nstatus: ready\n"
    async with raw_server(replies(answer, close=True)) as raw:
        url = raw.url + "/healthz"
        async with http_check(url, body_contains="ready") as check:
            first, second = await measure(check), await measure(check)
        fast, slow = await fast_and_aiohttp(url, body_contains="ready")
    assert first.verdict is PASS and second.verdict is PASS, first.detail
    assert raw.connections == 2 + 2
    assert shown(fast) == shown(slow)


async def test_a_body_cut_short_fails() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstatus"
    async with raw_server(replies(answer, close=True)) as raw:
        fast, slow = await fast_and_aiohttp(raw.url + "/healthz", body_contains="ok")
    assert fast.verdict is FAIL and slow.verdict is FAIL
    assert fast.detail == (
        f"cannot reach {raw.url}/healthz: malformed HTTP answer: Not enough data to satisfy "
        "content length header (received 6 of 100 bytes)."
    )


async def test_interim_answers_are_skipped() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok()
    )
    async with raw_server(replies(answer)) as raw:
        async with http_check(raw.url + "/healthz", body_contains="ok") as check:
            m = await measure(check)
            assert (await measure(check)).verdict is PASS
        fast, slow = await fast_and_aiohttp(raw.url + "/healthz", body_contains="ok")
    assert m.verdict is PASS and m.detail.startswith(f"HTTP 200 from {raw.url}/healthz in ")
    assert raw.connections == 1 + 2
    assert shown(fast) == shown(slow)


@pytest.mark.parametrize(
    ("answer", "fields"),
    [
        (ok(), {}),
        (ok(b"boom", status="503 Service Unavailable"), {}),
        (ok(b"boom", status="503 Service Unavailable"), {"expect_status": (200, 503)}),
        (ok(b"status: ok"), {"body_contains": "ok"}),
        (ok(b"status: starting"), {"body_contains": "ok"}),
        (ok(b"").replace(b"Content-Length", b"content-length"), {}),
        (b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok", {"body_contains": "ok"}),
        (chunked(b"status", b": ok"), {"body_contains": "ok"}),
        (chunked(b"status", b": ok"), {"body_contains": "down"}),
        (ok(b"", status="204 No Content"), {"expect_status": (204,)}),
        # aiohttp decodes a gzip body: the lean client hands that answer to aiohttp
        (ok(gzip.compress(b"status: ok"), "Content-Encoding: gzip"), {"body_contains": "ok"}),
        (ok(b"", "Location: /x", status="301 Moved"), {"expect_status": (301,)}),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", {"body_contains": "ok"}),  # bare LFs
        (b"HTTP/1.0 200\r\n\r\nok", {"body_contains": "ok"}),  # no headers at all
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 2\r\n\r\nok", {}),
    ],
)
async def test_same_verdict_and_detail_as_aiohttp(answer: bytes, fields: dict[str, Any]) -> None:
    async with raw_server(replies(answer, close=True)) as raw:
        fast, slow = await fast_and_aiohttp(raw.url + "/healthz", timeout=2, **fields)
    assert shown(fast) == shown(slow)
    assert " within " not in fast.detail  # an answer was judged, not two timeouts compared


# -- redirects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fields", "verdict", "detail"),
    [
        ("/old", {}, PASS, "HTTP 200 from {url} in N ms"),
        ("/old", {"body_contains": "ok"}, PASS, "HTTP 200 from {url} in N ms"),
        ("/old-broken", {}, FAIL, "HTTP 500 from {url} (expected 200)"),
        # aiohttp follows a redirect whatever expect_status lists: a listed 301 is followed too
        ("/moved", {"expect_status": (301,)}, FAIL, "HTTP 200 from {url} (expected 301)"),
        ("/moved", {"expect_status": (200, 301)}, PASS, "HTTP 200 from {url} in N ms"),
    ],
)
async def test_redirects_are_judged_where_they_lead_as_aiohttp_does(
    app: tuple[str, set[Any]], path: str, fields: dict[str, Any], verdict: Verdict, detail: str
) -> None:
    url = app[0] + path
    fast, slow = await fast_and_aiohttp(url, **fields)
    assert shown(fast) == shown(slow) == (verdict, detail.format(url=url))


async def test_endless_redirects_fail_as_aiohttps(app: tuple[str, set[Any]]) -> None:
    fast, slow = await fast_and_aiohttp(app[0] + "/loop")
    assert fast.verdict is FAIL and shown(fast) == shown(slow)


async def test_redirect_without_location_is_the_answer() -> None:
    async with (
        raw_server(replies(ok(b"", status="301 Moved"))) as raw,
        http_check(raw.url + "/healthz", expect_status=(301,)) as check,
    ):
        m = await measure(check)
    assert m.verdict is PASS and m.detail.startswith("HTTP 301 from")
    assert len(raw.requests) == 1


# -- no answer -----------------------------------------------------------------------------


#: Malformed and edge-case answers, each judged by the lean client and by aiohttp's client
#: (body_contains="ok" or, where the body is not the point, the status alone). The close-on
#: answers end the connection right after the bytes (an answer framed by the close).
DIFFERENTIAL = {
    "bare CR in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
    "space in a header name": b"HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 2\r\n\r\nok",
    "obs-folded Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length:\r\n 2\r\n\r\nok",
    "two Content-Lengths that differ": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"
    ),
    "Content-Length not a number": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
    "chunk size not hex": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"
    ),
    "chunk size overflowing": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nok\r\n0\r\n\r\n"
    ),
    "chunk extensions": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2;name=value;flag\r\nok\r\n0;last\r\n\r\n"
    ),
    "no final chunk before the close": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
    ),
    "body longer than Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokay",
    "body shorter than Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok",
    "HTTP/1.0 body up to the close": b"HTTP/1.0 200 OK\r\n\r\nok",
    "1xx interim answers first": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ),
    "204 without a body": b"HTTP/1.1 204 No Content\r\n\r\n",
    "304 with a Content-Length but no body": (
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
    ),
    "Transfer-Encoding and Content-Length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    "huge header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n",
    "no status line": b"HTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/2 status line": b"HTTP/2 200\r\nContent-Length: 2\r\n\r\nok",
    "LF-only line ends": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "header line without a colon": b"HTTP/1.1 200 OK\r\nno colon\r\nContent-Length: 2\r\n\r\nok",
    "control character in a header name": (
        b"HTTP/1.1 200 OK\r\nX-A\x01: 1\r\nContent-Length: 2\r\n\r\nok"
    ),
    "NUL in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("judge_body", [True, False], ids=["body", "status"])
@pytest.mark.parametrize("answer", DIFFERENTIAL.values(), ids=DIFFERENTIAL.keys())
async def test_a_malformed_or_edge_answer_gets_aiohttps_verdict(
    answer: bytes, judge_body: bool
) -> None:
    fields: dict[str, Any] = {"expect_status": [200, 204, 304]}
    if judge_body:
        fields["body_contains"] = "ok"
    async with raw_server(replies(answer, close=True)) as raw:
        fast, slow = await fast_and_aiohttp(raw.url + "/healthz", **fields)
    assert fast.verdict is slow.verdict, (fast.detail, slow.detail)


async def test_half_an_answer_then_silence_times_out_and_the_next_uses_a_new_connection() -> None:
    async def stall_first(n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            await asyncio.sleep(30)
        writer.write(ok())
        return True

    async with (
        raw_server(stall_first) as raw,
        http_check(raw.url + "/healthz", timeout=0.2) as check,
    ):
        first, second = await measure(check), await measure(check)
    assert first.verdict is FAIL
    assert first.detail == f"no answer from {raw.url}/healthz within 200ms"
    assert second.verdict is PASS
    assert raw.connections == 2


async def test_a_body_still_coming_when_it_is_not_judged_does_not_hold_the_verdict() -> None:
    async def head_then_stall(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nsta")
        await asyncio.sleep(30)
        return True

    async with raw_server(head_then_stall) as raw:
        url = raw.url + "/healthz"
        async with http_check(url, timeout=0.3) as check:
            first, second = await measure(check), await measure(check)
        assert raw.connections == 2  # the first connection was mid-body: not reused
        judged = await fast_and_aiohttp(url, body_contains="ok", timeout=0.3)
    assert first.verdict is PASS and second.verdict is PASS  # as aiohttp: the status is known
    assert [shown(m) for m in judged] == [(FAIL, f"no answer from {url} within 300ms")] * 2


async def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{_free_port()}/healthz"
    fast, slow = await fast_and_aiohttp(url)
    assert fast.detail == slow.detail == f"cannot reach {url}: connection refused"
    assert fast.value is None


async def test_unresolvable_host() -> None:
    url = "http://no-such-host.invalid/healthz"
    fast, slow = await fast_and_aiohttp(url, timeout=3)
    assert fast.detail == slow.detail == f"cannot reach {url}: host name does not resolve"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectError(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), "connection refused"),
        (ConnectError(socket.gaierror(socket.EAI_NONAME, "unknown")), "host name does not resolve"),
        (ConnectError(OSError(errno.EHOSTUNREACH, "no route")), "host unreachable"),
        (
            # asyncio 3.11's several-addresses error has no errno
            ConnectError(
                OSError(
                    "Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 1), "
                    "[Errno 111] Connect call failed ('::1', 1, 0, 0)"
                )
            ),
            "connection refused",
        ),
        (
            ConnectError(OSError(errno.EACCES, "Permission denied")),
            "cannot connect (Permission denied)",
        ),
        (
            MalformedAnswer(BadHttpMessage("Bad status line:\n\n  b'x'\n  ^")),
            "malformed HTTP answer: Bad status line: b'x'",
        ),
    ],
)
def test_no_answer_reasons_of_the_lean_client(exc: BaseException, reason: str) -> None:
    assert no_answer_reason(exc) == reason
