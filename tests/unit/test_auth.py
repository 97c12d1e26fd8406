"""Bearer tokens on the API: who may do what, who is recorded, and no token ever echoed."""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cutover.api.app import make_app
from cutover.api.auth import Principal, TokenTable
from cutover.config import TokenSpec, parse_config, token_sha256
from cutover.core.model import Cutover
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.errors import ConflictError
from cutover.observability.logging import (
    REDACTED,
    RateLimitedLog,
    Redactor,
    configure_logging,
)
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from cutover.testing import resource_pool
from tests.unit.test_api import CONFIG

OPERATOR = "op-3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"
VIEWER = "view-0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d"
UNKNOWN = "nope-ffeeddccbbaa99887766554433221100"
TOKENS = [
    {"name": "release-bot", "role": "operator", "sha256": token_sha256(OPERATOR)},
    {"name": "oncall", "role": "viewer", "sha256": token_sha256(VIEWER)},
]
Client = TestClient[web.Request, web.Application]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _client(tmp_path: Path, api: dict[str, Any], **runner: Any) -> AsyncIterator[Client]:
    store = SqliteStore(path=str(tmp_path / "state.db"))
    await store.open()
    metrics = Metrics()
    config = parse_config({**CONFIG, "api": api})
    sup = Supervisor(
        config=config, store=store, clock=SystemClock(), resources=resource_pool(), metrics=metrics
    )
    server = TestServer(make_app(supervisor=sup, store=store, metrics=metrics))
    await server.start_server(**runner)  # the client then uses the server as it is
    async with TestClient(server) as c:
        yield c
    await sup.stop()
    await store.aclose()


@pytest.fixture
async def authed(tmp_path: Path) -> AsyncIterator[Client]:
    async for c in _client(tmp_path, {"tokens": TOKENS}):
        yield c


@pytest.fixture
async def open_api(tmp_path: Path) -> AsyncIterator[Client]:
    async for c in _client(tmp_path, {}):
        yield c


# --- the token table ------------------------------------------------------------------------


def test_lookup_compares_every_configured_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    table = TokenTable([TokenSpec.model_validate(t) for t in TOKENS])
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert table.lookup(OPERATOR) == Principal(name="release-bot", role="operator")
    assert table.lookup(VIEWER) == Principal(name="oncall", role="viewer")
    assert table.lookup(UNKNOWN) is None
    # a match at the first entry does not end the loop early: every lookup costs the same
    assert len(calls) == 3 * len(TOKENS)
    assert all(len(a) == len(b) == 64 for a, b in calls)  # hashes compared, not the token
    assert not TokenTable([]).enabled and table.enabled


def test_generated_tokens_are_fresh_and_only_their_hash_is_kept() -> None:
    token, spec = TokenSpec.generate(name="release-bot", role="operator")
    again, _ = TokenSpec.generate(name="release-bot", role="operator")
    assert token != again and len(token) >= 43  # 32 random bytes, URL-safe base64
    assert spec.sha256 == token_sha256(token) and token not in spec.config_line()
    assert spec.config_line() == (
        f'- {{name: release-bot, role: operator, sha256: "{spec.sha256}"}}'
    )


# --- who may do what ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/metrics", "/openapi.json"])
async def test_probes_metrics_spec_and_page_stay_open(authed: Client, path: str) -> None:
    resp = await authed.get(path)
    assert resp.status in (200, 503), path  # /readyz: 503 until the engine runs, never 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/services"),
        ("GET", "/v1/services/checkout"),
        ("GET", "/v1/cutovers/co-123"),
        ("POST", "/v1/services/checkout/cutovers"),
        ("POST", "/v1/cutovers/co-123/abort"),
        ("GET", "/v1/no-such-route"),  # no route listing for strangers
        ("GET", "/v1%2Fservices"),
    ],
)
async def test_no_token_is_401_with_a_bearer_challenge(
    authed: Client, method: str, path: str
) -> None:
    resp = await authed.request(method, path)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    body = await resp.json()
    assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {UNKNOWN}",
        f"Bearer {OPERATOR}x",
        f"Basic {OPERATOR}",
        OPERATOR,
        "Bearer",
        f"Bearer {OPERATOR} {OPERATOR}",
    ],
)
async def test_a_bad_token_is_401_invalid_token(authed: Client, header: str) -> None:
    resp = await authed.get("/v1/services", headers={"Authorization": header})
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_a_viewer_reads_and_is_refused_actions_with_403(authed: Client) -> None:
    assert (await authed.get("/v1/services", headers=_bearer(VIEWER))).status == 200
    resp = await authed.get("/v1/services/checkout", headers={"Authorization": f"bearer {VIEWER}"})
    assert resp.status == 200  # the scheme name is case-insensitive (RFC 7235 §2.1)
    for path in ("/v1/services/checkout/cutovers", "/v1/services/checkout/undo"):
        resp = await authed.post(path, headers=_bearer(VIEWER))
        assert resp.status == 403
        body = await resp.json()
        assert body["error"] == {
            "code": "forbidden",
            "message": "token 'oncall' is a viewer: this needs an operator token",
        }


async def test_an_operator_may_act(authed: Client) -> None:
    # past authorization, the request reaches the engine: preflight refuses (no HAProxy here)
    resp = await authed.post("/v1/services/checkout/cutovers", headers=_bearer(OPERATOR))
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "preflight_failed"
    resp = await authed.post("/v1/services/checkout/undo", headers=_bearer(OPERATOR))
    assert resp.status == 409


async def test_without_tokens_the_loopback_api_is_open(open_api: Client) -> None:
    assert (await open_api.get("/v1/services")).status == 200
    resp = await open_api.get("/v1/services", headers=_bearer(UNKNOWN))
    assert resp.status == 200  # nothing to check a token against: it is ignored


# --- who is recorded ------------------------------------------------------------------------


@pytest.fixture
def actors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The actor each start hands to the supervisor (the timeline records exactly that)."""
    seen: list[str] = []

    async def start_cutover(self: Supervisor, service: str, *, actor: str) -> Cutover:
        seen.append(actor)
        raise ConflictError("recorded")

    monkeypatch.setattr(Supervisor, "start_cutover", start_cutover)
    return seen


@pytest.mark.parametrize(
    ("header", "actor"),
    [
        (None, "release-bot"),
        ("release-bot", "release-bot"),
        ("ci-job-123", "release-bot (via ci-job-123)"),
        ("oncall", "release-bot (via oncall)"),  # cannot pass for another token
    ],
)
async def test_the_actor_is_the_token_name_and_a_header_only_adds_detail(
    authed: Client, actors: list[str], header: str | None, actor: str
) -> None:
    headers = _bearer(OPERATOR) | ({"X-Cutover-Actor": header} if header else {})
    resp = await authed.post("/v1/services/checkout/cutovers", headers=headers)
    assert resp.status == 409
    assert actors == [actor]


async def test_a_malformed_actor_header_is_refused(authed: Client, actors: list[str]) -> None:
    headers = _bearer(OPERATOR) | {"X-Cutover-Actor": "release bot"}
    resp = await authed.post("/v1/services/checkout/cutovers", headers=headers)
    assert resp.status == 400 and actors == []


async def test_without_tokens_the_header_is_the_actor(open_api: Client, actors: list[str]) -> None:
    await open_api.post("/v1/services/checkout/cutovers", headers={"X-Cutover-Actor": "alice@h"})
    await open_api.post("/v1/services/checkout/cutovers")
    assert actors == ["alice@h", "api"]


# --- no token in logs or answers ------------------------------------------------------------


def test_redactor_masks_secret_keys_shapes_and_registered_values() -> None:
    redactor = Redactor()
    redactor.add("s3cr3t-tsig-value")
    event = {
        "event": "calling http://user:hunter2@pdns:8081/api with s3cr3t-tsig-value",
        "api_key": "abc",
        "headers": {"Authorization": "Bearer xyz", "Accept": "*/*"},
        "args": ["Authorization: Bearer abc.def-ghi", ("s3cr3t-tsig-value",)],
        "exception": "Traceback ...\nValueError: bad key s3cr3t-tsig-value",
        "webhook_token_file": "/etc/cutover/hook.token",
        "count": 3,
    }
    out = redactor(None, "info", event)
    assert out == {
        "event": f"calling http://user:{REDACTED}@pdns:8081/api with {REDACTED}",
        "api_key": REDACTED,
        "headers": {"Authorization": REDACTED, "Accept": "*/*"},
        "args": [f"Authorization: Bearer {REDACTED}", [REDACTED]],
        "exception": f"Traceback ...\nValueError: bad key {REDACTED}",
        "webhook_token_file": REDACTED,
        "count": 3,
    }


@dataclass
class JsonLogs:
    buffer: io.StringIO
    redactor: Redactor  # the daemon's secret sink

    def getvalue(self) -> str:
        return self.buffer.getvalue()


@pytest.fixture
def json_logs() -> Iterator[JsonLogs]:
    """The daemon's logging set-up, writing into a buffer."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    yield JsonLogs(buffer, configure_logging("debug", stream=buffer))
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_registered_secret_is_masked_in_lines_and_tracebacks(json_logs: JsonLogs) -> None:
    secret = "c2VjcmV0LXRzaWcta2V5LWJ5dGVz"
    json_logs.redactor.add(secret)  # as a router does when it loads its TSIG secret
    log = structlog.get_logger()
    log.info(f"loaded {secret}", where="rfc2136")
    try:
        raise ValueError(f"bad key {secret}")
    except ValueError:
        log.exception("update failed")
    logging.getLogger("dns").warning("stdlib %s", secret)
    logs = json_logs.getvalue()
    assert secret not in logs and logs.count(REDACTED) >= 3, logs


async def test_no_token_reaches_logs_or_answers(tmp_path: Path, json_logs: JsonLogs) -> None:
    # an access log that prints the Authorization header, as a careless operator might set up
    access = '%a "%r" %s %{Authorization}i'
    answers: list[str] = []
    async for client in _client(
        tmp_path,
        {"tokens": TOKENS},
        access_log=logging.getLogger("aiohttp.access"),
        access_log_format=access,
    ):
        for token in (OPERATOR, VIEWER, UNKNOWN, f"{OPERATOR}x"):
            for method, path in [
                ("GET", "/v1/services"),
                ("POST", "/v1/services/checkout/cutovers"),
                ("POST", "/v1/services/checkout/undo"),
                ("GET", "/v1/cutovers/nope"),
            ]:
                resp = await client.request(method, path, headers=_bearer(token))
                answers.append(f"{resp.status} {dict(resp.headers)} {await resp.text()}")
    logs = json_logs.getvalue()
    assert "refused an unknown bearer token" in logs and "Bearer [redacted]" in logs
    for token in (OPERATOR, VIEWER, UNKNOWN):
        assert token not in logs
        assert not any(token in a for a in answers)
    assert all(isinstance(json.loads(line), dict) for line in logs.splitlines())  # JSON lines


# --- refusals are logged as a count per interval ---------------------------------------------


async def test_a_flood_of_refused_tokens_logs_one_line(authed: Client, json_logs: JsonLogs) -> None:
    for _ in range(200):
        resp = await authed.get("/v1/services", headers=_bearer(UNKNOWN))
        assert resp.status == 401
    for _ in range(50):
        resp = await authed.post("/v1/services/checkout/cutovers", headers=_bearer(VIEWER))
        assert resp.status == 403
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    refused = [ln["event"] for ln in lines if ln["event"].startswith("refused")]
    # the first of each in this minute; the rest are counted, to be logged when it ends
    assert refused == ["refused an unknown bearer token", "refused a viewer's action"], refused


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_limited_log_logs_the_first_event_then_a_count_per_interval() -> None:
    clock = _Clock()
    log = RateLimitedLog("refused", interval=60.0, clock=clock)
    with structlog.testing.capture_logs() as logs:
        log.note(remote="a")
        for i in range(999):
            clock.now += 0.01
            log.note(remote=f"b{i}")
        assert logs == [{"event": "refused", "remote": "a", "log_level": "warning"}]
        clock.now += 60.0
        log.note(remote="c")  # a new interval: the count of the last, then this one
        log.close()
    assert logs[1:] == [
        {
            "event": "refused",
            "repeated": 999,
            "seconds": 60.0,
            "remote": "b998",
            "log_level": "warning",
        },
        {"event": "refused", "remote": "c", "log_level": "warning"},
    ]


async def test_a_rate_limited_log_flushes_its_count_when_the_interval_ends() -> None:
    log = RateLimitedLog("refused", interval=0.05)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            log.note()
        await asyncio.sleep(0.2)  # the loop's timer, not a later event, logs the count
    assert [ln.get("repeated") for ln in logs] == [None, 2]
