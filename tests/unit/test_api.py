"""The API app without traffic: routes match the OpenAPI spec, errors are JSON, probes work."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cutover.api.app import SUPERVISOR, make_app
from cutover.config import parse_config
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore

CONFIG = {
    "services": {
        "checkout": {
            "routers": [
                {
                    "name": "edge",
                    "type": "haproxy",
                    "runtime_api": "unix:/nonexistent/admin.sock",
                    "backend": "checkout",
                    "blue": ["blue1"],
                    "green": ["green1"],
                }
            ],
            "stages": [{"weight": 50, "hold": "1s"}, {"weight": 100, "hold": "1s"}],
        }
    }
}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    store = SqliteStore(path=str(tmp_path / "state.db"))
    await store.open()
    metrics = Metrics()
    sup = Supervisor(config=parse_config(CONFIG), store=store, clock=SystemClock(), metrics=metrics)
    app = make_app(supervisor=sup, store=store, metrics=metrics)
    async with TestClient(TestServer(app)) as c:
        yield c
    await sup.stop()
    await store.aclose()


def _template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


async def test_every_route_is_in_the_openapi_spec_and_back(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/openapi.json")
    spec = await resp.json()
    documented = {
        (method.upper(), _template(path)) for path, ops in spec["paths"].items() for method in ops
    }
    served = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD" or path is None:
            continue
        if "{action}" in path:
            served |= {
                ("POST", path.replace("{action}", a))
                for a in ("pause", "resume", "promote", "abort")
            }
            continue
        served.add((route.method, _template(path)))
    served = {(m, _template(p)) for m, p in served}
    assert served == documented


async def test_the_spec_declares_bearer_auth_and_its_refusals_on_v1_only(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    spec = await (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in spec  # the probes, /metrics, /openapi.json and / stay open
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            if not path.startswith("/v1/"):
                assert "security" not in op and "401" not in op["responses"], where
                continue
            assert op["security"] == [{"bearer": []}], where
            unauthorized = op["responses"]["401"]
            assert unauthorized["headers"]["WWW-Authenticate"]["required"], where
            assert ("403" in op["responses"]) == (method == "post"), where


async def test_the_spec_declares_etags_and_304_on_v1_gets_only(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    spec = await (await client.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            conditional = path.startswith("/v1/") and method == "get"
            assert ("304" in op["responses"]) == conditional, where
            if conditional:
                assert op["responses"]["200"]["headers"]["ETag"]["required"], where
                assert "If-None-Match" in {p["name"] for p in op["parameters"]}, where
    listed = await client.get("/v1/services")
    assert await listed.json() == {
        "services": [{"name": "checkout", "live": "blue", "cutover": None}]
    }
    again = await client.get("/v1/services", headers={"If-None-Match": listed.headers["ETag"]})
    assert again.status == 304


async def test_probes_and_metrics(client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "not_ready"
    await client.app[SUPERVISOR].start()
    assert (await client.get("/readyz")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'cutover_live_color{color="blue",service="checkout"} 1.0' in text


async def test_errors_are_json_4xx(client: TestClient) -> None:  # type: ignore[type-arg]
    for method, path, status in [
        ("GET", "/v1/services/nosuch", 404),
        ("GET", "/nope", 404),
        ("PUT", "/v1/services", 405),
        ("GET", "/v1/services/checkout/cutovers?limit=0", 400),
        ("POST", "/v1/services/checkout/undo", 409),
    ]:
        resp = await client.request(method, path)
        assert resp.status == status, path
        body = await resp.json()
        assert set(body["error"]) == {"code", "message"}
    resp = await client.post(
        "/v1/services/checkout/cutovers", headers={"X-Cutover-Actor": "bad actor!"}
    )
    assert resp.status == 400
    resp = await client.post("/v1/services/checkout/cutovers", json={"unexpected": 1})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "unexpected_body"
    # the router's socket does not exist: preflight refuses, and the refusal is kept
    resp = await client.post("/v1/services/checkout/cutovers")
    assert resp.status == 422
    body = await resp.json()
    assert body["error"]["code"] == "preflight_failed" and "edge" in body["error"]["message"]
    history = await (await client.get("/v1/services/checkout/cutovers")).json()
    assert [(c["state"], c["reason"]) for c in history["cutovers"]] == [
        ("refused", body["error"]["message"])
    ]


def test_validate_cli_exits_2_with_places_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "services:\n  checkout:\n    routers: []\n    stages:\n"
        "      - {weight: 50, hold: 10s}\n      - {weight: 40, hold: 10s}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "cutover", "validate", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "services.checkout.routers" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "cutover", "validate", "-c", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "cutover", "start"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
