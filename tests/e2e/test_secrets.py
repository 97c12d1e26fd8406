"""End to end: no secret leaks. A full cutover with every kind of secret configured (bearer
tokens, a TSIG secret for BIND, a PowerDNS API key, a webhook token) on real HAProxy, BIND 9
and PowerDNS; then none of them appears in the daemon's log, in any API answer (errors
included), in the CLI's output or in what the webhook received."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from aiohttp import web

from demo.dnsservers import Bind, PowerDNS
from demo.stack import free_port, make_workdir
from tests.e2e.conftest import E2E
from tests.unit.test_auth import OPERATOR, TOKENS, UNKNOWN, VIEWER

ZONE = "example.test."
WEBHOOK_TOKEN = "hook-7c1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f"


@pytest.fixture
async def dns_servers() -> AsyncIterator[tuple[Bind, PowerDNS]]:
    bind_dir, pdns_dir = make_workdir("cutover-bind-"), make_workdir("cutover-pdns-")
    bind = await Bind.start(bind_dir, zone=ZONE, records=["www 1 IN A 192.0.2.10"])
    pdns: PowerDNS | None = None
    try:
        pdns = await PowerDNS.start(pdns_dir)
        await pdns.create_zone(ZONE, {(f"gslb.{ZONE}", "A"): (1, ["192.0.2.10"])})
        yield bind, pdns
    finally:
        if pdns is not None:
            await pdns.stop()
        await bind.stop()
        shutil.rmtree(bind_dir, ignore_errors=True)
        shutil.rmtree(pdns_dir, ignore_errors=True)


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append({"auth": request.headers.get("Authorization"), **await request.json()})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def test_a_full_cutover_with_every_secret_configured_leaks_none(
    e2e: E2E,
    dns_servers: tuple[Bind, PowerDNS],
    webhook: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bind, pdns = dns_servers
    url, received = webhook
    secrets = {
        "operator token": OPERATOR,
        "viewer token": VIEWER,
        "TSIG secret": bind.key.secret,
        "PowerDNS API key": pdns.api_key,
        "webhook token": WEBHOOK_TOKEN,
    }
    (e2e.dir / "tsig.secret").write_text(bind.key.secret + "\n")
    (e2e.dir / "pdns.key").write_text(pdns.api_key + "\n")
    (e2e.dir / "hook.token").write_text(WEBHOOK_TOKEN + "\n")
    path = e2e.write_config(
        stages=[{"weight": 50, "hold": "1s"}, {"weight": 100, "hold": "1s"}],
        routers=[
            e2e.stack.spec_values(name="edge", timeout="1s"),
            {
                "name": "dns",
                "type": "rfc2136",
                "server": bind.server,
                "zone": ZONE,
                "record": f"www.{ZONE}",
                "ttl": 1,
                "tsig": {"name": bind.key.name, "secret_file": "tsig.secret"},
                "blue": ["192.0.2.10"],
                "green": ["198.51.100.10"],
            },
            {
                "name": "gslb",
                "type": "powerdns",
                "api_url": pdns.api_url,
                "api_key_file": "pdns.key",
                "dns_server": pdns.server,
                "zone": ZONE,
                "record": f"gslb.{ZONE}",
                "ttl": 1,
                "blue": ["192.0.2.10"],
                "green": ["198.51.100.10"],
            },
        ],
    )
    config = yaml.safe_load(path.read_text())
    config["api"]["tokens"] = TOKENS
    config["notify"] = [{"type": "webhook", "url": url, "token_file": "hook.token"}]
    path.write_text(yaml.safe_dump(config))
    await e2e.start_daemon()
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    viewer = {"Authorization": f"Bearer {VIEWER}"}

    # When the operator runs a whole cutover over HAProxy, BIND and PowerDNS
    status, c = await e2e.api("POST", "/v1/services/checkout/cutovers", headers=operator)
    assert status == 201, c
    deadline = asyncio.get_running_loop().time() + 40
    while c["state"] != "completed":
        assert c["state"] in ("running", "awaiting_approval"), c
        assert asyncio.get_running_loop().time() < deadline, c
        await asyncio.sleep(0.2)
        _, c = await e2e.api("GET", f"/v1/cutovers/{c['id']}", headers=viewer)

    # Then every answer anyone could read, errors included, is free of every secret
    answers: list[str] = []
    for method, route, headers in [
        ("GET", "/v1/services", viewer),
        ("GET", "/v1/services/checkout", viewer),
        ("GET", f"/v1/cutovers/{c['id']}", viewer),
        ("GET", "/v1/services/checkout/cutovers", viewer),
        ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/", {}),
        ("GET", "/v1/services", {"Authorization": f"Bearer {UNKNOWN}"}),
        ("POST", "/v1/services/checkout/cutovers", viewer),
        ("POST", "/v1/services/checkout/undo", {"Authorization": f"Bearer {OPERATOR}x"}),
    ]:
        status, body = await e2e.api(method, route, headers=headers)
        answers.append(f"{method} {route} -> {status} {body}")
    monkeypatch.setenv("CUTOVER_TOKEN", VIEWER)
    for args in (["status", "checkout"], ["history", "checkout"], ["status", "--json"]):
        rc, out, err = await e2e.cli(*args)
        assert rc == 0, err
        answers.append(out + err)
    rc, out, err = await e2e.cli("plan", "-c", str(path), "checkout")
    answers.append(out + err)
    rc, out, err = await e2e.cli("validate", "-c", str(path))
    answers.append(out + err)
    assert await e2e.stop_daemon() == 0
    seen = {
        "daemon log": e2e.daemon_log(),
        "API and CLI answers": "\n".join(answers),
        "webhook bodies": repr([{k: v for k, v in r.items() if k != "auth"} for r in received]),
    }
    for place, text in seen.items():
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} leaked into the {place}"
    # and the secrets did their jobs: the webhook got its token, every router was written
    assert received and all(r["auth"] == f"Bearer {WEBHOOK_TOKEN}" for r in received)
    assert {r["event"] for r in received} >= {"started", "stage_applied", "completed"}
    assert {r["name"]: r["observed"] for r in c["routers"]} == {
        "edge": 100.0,
        "dns": 100.0,
        "gslb": 100.0,
    }
