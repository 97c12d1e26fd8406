"""The API app without traffic: routes match the OpenAPI spec, errors are JSON, probes work."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cutover.api.app import SUPERVISOR, make_app
from cutover.config import parse_config
from cutover.core.model import Cutover, Phase, Status, Verdict
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from cutover.testing import FakeCheck, FakeClock, FakeRouter, resource_pool
from tests.unit.supervised import served, supervised
from tests.unit.test_runner import TrackedStore

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
    sup = Supervisor(
        config=parse_config(CONFIG),
        store=store,
        clock=SystemClock(),
        resources=resource_pool(),
        metrics=metrics,
    )
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


# --- guarded promote and resume (issue 14): 409 codes, flags in the body -------------------------


GUARDED = {
    "services": {
        "checkout": {
            "routers": [{**CONFIG["services"]["checkout"]["routers"][0]}],  # type: ignore[index]
            "checks": [
                {
                    "name": "health",
                    "type": "http",
                    "url": "http://127.0.0.1:1/",
                    "interval": "1s",
                    "failure_limit": 5,
                }
            ],
            "stages": [{"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "60s"}],
            "bake": "120s",
        }
    }
}


@dataclass
class Faked:
    """The app over a supervisor whose router and check are fakes, on a fake clock."""

    client: TestClient  # type: ignore[type-arg]
    supervisor: Supervisor
    store: TrackedStore
    clock: FakeClock
    router: FakeRouter
    check: FakeCheck

    async def until(self, cutover_id: str, predicate: Callable[[Cutover], bool]) -> Cutover:
        c = await self.supervisor.get(cutover_id)
        for _ in range(2000):
            if predicate(c):
                return c
            # each step waits for the store's thread: fake time never runs ahead of the runner
            await self.clock.advance(0.25, step=0.25, settle=self.store.idle.wait)
            c = await self.supervisor.get(cutover_id)
        raise AssertionError(f"never reached: {c}")

    async def post(self, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        headers = {"X-Cutover-Actor": "alice", "Content-Type": "application/json"}
        resp = await self.client.post(path, headers=headers, **kw)
        return resp.status, await resp.json()


@asynccontextmanager
async def faked_daemon(tmp_path: Path) -> AsyncIterator[Faked]:
    """The app serving :data:`GUARDED` over a fake router and check (the CLI tests use it too)."""
    store = TrackedStore(path=str(tmp_path / "state.db"))
    async with supervised(GUARDED, store) as s, served(s) as c:
        yield Faked(c, s.supervisor, s.store, s.clock, s.router, s.check)


@pytest.fixture
async def faked(tmp_path: Path) -> AsyncIterator[Faked]:
    async with faked_daemon(tmp_path) as f:
        yield f


def holding(c: Cutover) -> bool:
    """Holding a stage, every check measured at it."""
    return c.phase is Phase.HOLDING and all(s.latest is not None for s in c.checks)


async def test_promote_is_409_checks_not_passing_unless_forced(faked: Faked) -> None:
    async with asyncio.timeout(30):
        c = await faked.supervisor.start_cutover("checkout", actor="alice")
        await faked.until(c.id, holding)
        faked.check.set(Verdict.FAIL, 0.5)  # failure_limit 5: no rollback within this test
        await faked.until(c.id, lambda c: c.checks[0].latest is Verdict.FAIL)
        status, body = await faked.post(f"/v1/cutovers/{c.id}/promote")
        assert status == 409
        assert body["error"]["code"] == "checks_not_passing"
        assert "health (fail)" in body["error"]["message"]
        assert (await faked.supervisor.get(c.id)).stage_index == 0
        status, body = await faked.post(f"/v1/cutovers/{c.id}/promote", json={"force": True})
        assert status == 200 and body["stage"] == 1
        (promoted,) = [e for e in body["events"] if e["kind"] == "promoted"]
        assert promoted["data"] == {"actor": "alice", "forced": True, "not_passing": ["health"]}


async def test_promote_of_a_bake_and_the_baking_phase_are_shown(faked: Faked) -> None:
    async with asyncio.timeout(30):
        c = await faked.supervisor.start_cutover("checkout", actor="alice")
        await faked.until(c.id, holding)
        assert (await faked.post(f"/v1/cutovers/{c.id}/promote"))[0] == 200
        await faked.until(c.id, lambda c: c.phase is Phase.BAKING)
        answer = await (await faked.client.get(f"/v1/cutovers/{c.id}")).json()
        assert (answer["state"], answer["phase"], answer["bake"]) == ("running", "baking", 120.0)
        assert 0 < answer["bake_left"] <= 120.0
        assert "baking" in [e["kind"] for e in answer["events"]]
        status, body = await faked.post(f"/v1/cutovers/{c.id}/promote", json={"force": False})
        assert status == 200 and body["state"] == "completed"


async def test_resume_after_drift_is_409_drift_unless_reapply(faked: Faked) -> None:
    async with asyncio.timeout(30):
        c = await faked.supervisor.start_cutover("checkout", actor="alice")
        await faked.until(c.id, holding)
        faked.router.set_by_hand(0)  # an emergency rollback by hand
        await faked.until(c.id, lambda c: c.status is Status.PAUSED)
        status, body = await faked.post(f"/v1/cutovers/{c.id}/resume")
        assert status == 409 and body["error"]["code"] == "drift"
        assert (
            "router edge: the daemon last wrote 50% green, it reads 0% green"
            in body["error"]["message"]
        )
        assert faked.router.state == {"share": "w0"}  # the operator's rollback stands
        status, body = await faked.post(f"/v1/cutovers/{c.id}/resume", json={"reapply": True})
        assert status == 200 and body["state"] == "running"
        await faked.until(c.id, lambda c: (c.status, c.phase) == (Status.RUNNING, Phase.HOLDING))
        assert faked.router.state == {"share": "w50"}


@pytest.mark.parametrize(
    ("action", "body", "status", "code"),
    [
        ("promote", b'{"force": "yes"}', 422, "invalid_body"),
        ("promote", b'{"force": 1}', 422, "invalid_body"),
        ("promote", b'{"reapply": true}', 400, "unexpected_body"),
        ("promote", b'{"force": true, "x": 1}', 400, "unexpected_body"),
        ("resume", b"[true]", 400, "unexpected_body"),
        ("resume", b'{"reapply": tru', 400, "bad_json"),
        ("pause", b'{"force": true}', 400, "unexpected_body"),
        ("abort", b'{"reapply": true}', 400, "unexpected_body"),
    ],
)
async def test_a_bad_command_body_is_a_json_4xx_and_changes_nothing(
    faked: Faked, action: str, body: bytes, status: int, code: str
) -> None:
    async with asyncio.timeout(30):
        c = await faked.supervisor.start_cutover("checkout", actor="alice")
        before = await faked.until(c.id, holding)
        got, answer = await faked.post(f"/v1/cutovers/{c.id}/{action}", data=body)
        assert (got, answer["error"]["code"]) == (status, code)
        after = await faked.supervisor.get(c.id)
        assert (after.status, after.stage_index) == (before.status, before.stage_index)


async def test_an_empty_or_null_body_still_works(faked: Faked) -> None:
    async with asyncio.timeout(30):
        c = await faked.supervisor.start_cutover("checkout", actor="alice")
        await faked.until(c.id, holding)
        assert (await faked.post(f"/v1/cutovers/{c.id}/pause", data=b"null"))[0] == 200
        assert (await faked.post(f"/v1/cutovers/{c.id}/resume", json={}))[0] == 200
        assert (await faked.post(f"/v1/cutovers/{c.id}/promote", data=b""))[0] == 200


async def test_a_bake_ends_by_itself_after_its_monitored_time(faked: Faked) -> None:
    async with asyncio.timeout(30):
        c = await faked.supervisor.start_cutover("checkout", actor="alice")
        await faked.until(c.id, holding)
        assert (await faked.post(f"/v1/cutovers/{c.id}/promote"))[0] == 200
        await faked.until(c.id, lambda c: c.phase is Phase.BAKING)
        began = faked.clock.monotonic()
        done = await faked.until(c.id, lambda c: c.status is Status.COMPLETED)
        # a wake at the bake's deadline: not a tick sooner, and not a check interval later
        assert 120 <= faked.clock.monotonic() - began <= 121
        assert done.bake_elapsed is not None and done.bake_elapsed >= 120


async def test_a_breach_during_the_bake_rolls_back(faked: Faked) -> None:
    async with asyncio.timeout(30):
        c = await faked.supervisor.start_cutover("checkout", actor="alice")
        await faked.until(c.id, holding)
        assert (await faked.post(f"/v1/cutovers/{c.id}/promote"))[0] == 200
        await faked.until(c.id, lambda c: c.phase is Phase.BAKING and c.bake_elapsed)
        faked.check.set(Verdict.FAIL, 0.9)
        done = await faked.until(c.id, lambda c: c.status is Status.ROLLED_BACK)
        assert done.reason is not None and done.reason.startswith("check health failed")
        assert faked.router.state == {"share": "maint"}  # evacuated: 0 % new
