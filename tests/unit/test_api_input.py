"""Bad request bodies against the real app: every answer is a JSON 4xx, never a 5xx.

The POST endpoints take no parameters. Whatever the content type, a body other than nothing,
``{}`` or ``null`` is refused with 400; a body over ``MAX_BODY`` with 413 (declared by
Content-Length or streamed chunked); JSON nested too deeply for Python's parser with 400
(it used to be a ``RecursionError`` and a 500). The schema-driven fuzzing of every operation
is in ``test_openapi_fuzz.py``; this file covers what a schema cannot generate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cutover.api.app import MAX_BODY, make_app
from cutover.config import parse_config
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from tests.unit.test_api import CONFIG

Client = TestClient  # type: ignore[type-arg]

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
    sup = Supervisor(config=parse_config(CONFIG), store=store, clock=SystemClock(), metrics=metrics)
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
