"""End to end with DNS: a real daemon driving a real HAProxy and a real BIND 9 (RFC 2136 with
TSIG) in one service. Both routers move at every stage and roll back together; a published
TTL longer than configured is lowered and waited out first; a wrong key changes nothing."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from demo.dnsservers import Bind
from tests.e2e.conftest import E2E

ZONE = "example.test."
RECORD = f"www.{ZONE}"
BLUE = ["192.0.2.10", "192.0.2.11"]
GREEN = ["198.51.100.10", "198.51.100.11"]
PUBLISHED_TTL = 4  # longer than the router's: preflight lowers it and waits it out
ROUTER_TTL = 1
STAGES = [{"weight": 50, "hold": "1500ms"}, {"weight": 100, "hold": "1s"}]


@dataclass
class DnsE2E:
    e2e: E2E
    bind: Bind

    def dns_router(self, *, secret: str | None = None) -> dict[str, Any]:
        secret_file = self.e2e.dir / "tsig.secret"
        secret_file.write_text((secret or self.bind.key.secret) + "\n")
        return {
            "name": "dns",
            "type": "rfc2136",
            "server": self.bind.server,
            "zone": ZONE,
            "record": RECORD,
            "ttl": ROUTER_TTL,
            "tsig": {"name": self.bind.key.name, "secret_file": str(secret_file)},
            "blue": BLUE,
            "green": GREEN,
        }

    def write_config(
        self, *, secret: str | None = None, stages: list[dict[str, Any]] | None = None
    ) -> None:
        edge = self.e2e.stack.spec_values(name="edge", timeout="1s")
        self.e2e.write_config(
            stages=stages or STAGES, routers=[edge, self.dns_router(secret=secret)]
        )

    async def published(self) -> tuple[list[str], int]:
        """The A RRset and its TTL, asked of the authoritative server over TCP."""
        query = dns.message.make_query(RECORD, dns.rdatatype.A)
        answer = await dns.asyncquery.tcp(query, "127.0.0.1", port=self.bind.port, timeout=2)
        (rrset,) = answer.answer
        return sorted(r.address for r in rrset), rrset.ttl


@pytest.fixture
async def dns_e2e(e2e: E2E) -> AsyncIterator[DnsE2E]:
    (e2e.dir / "bind").mkdir()
    bind = await Bind.start(
        e2e.dir / "bind",
        zone=ZONE,
        records=[f"www {PUBLISHED_TTL} IN A {address}" for address in BLUE],
    )
    try:
        yield DnsE2E(e2e=e2e, bind=bind)
    finally:
        await bind.stop()


async def test_mixed_cutover_lowers_the_ttl_first_then_moves_both_routers(
    dns_e2e: DnsE2E,
) -> None:
    e2e = dns_e2e.e2e
    dns_e2e.write_config()
    await e2e.start_daemon()

    # When a cutover starts, then the record is republished with the configured TTL, same
    # addresses, and the old TTL is waited out before stage 1, visibly
    c = await e2e.start()
    c = await e2e.cutover(c["id"])
    assert (c["phase"], c["ttl_wait"]) == ("preflight", PUBLISHED_TTL)
    assert 0 < c["ttl_wait_left"] <= PUBLISHED_TTL
    assert await dns_e2e.published() == (BLUE, ROUTER_TTL)
    lowered = next(e for e in c["events"] if e["kind"] == "ttl_lowered")
    assert f"old TTL {PUBLISHED_TTL}s" in lowered["message"]
    rc, out, _ = await e2e.cli("status", "checkout")
    assert rc == 0 and "waiting out the old DNS TTL" in out, out

    # Then stage 1 puts 50 % on HAProxy and every blue plus as many green addresses in DNS
    c = await e2e.wait_for(c["id"], state="running", stage=0, phase="holding", within=15)
    started = next(e for e in c["events"] if e["kind"] == "stage_started")
    assert started["at"] - lowered["at"] >= PUBLISHED_TTL - 0.3
    addresses, _ = await dns_e2e.published()
    assert addresses == sorted(BLUE + GREEN)
    dns_status = next(r for r in c["routers"] if r["name"] == "dns")
    assert dns_status["clients_from"] is not None and dns_status["ttl"] == ROUTER_TTL
    assert abs(await e2e.green_share(1000) - 50) <= 5

    # And it completes with both routers all green
    c = await e2e.wait_for(c["id"], state="completed", within=30)
    assert await dns_e2e.published() == (GREEN, ROUTER_TTL)
    assert await e2e.green_share(300) == 100.0


async def test_green_failing_midway_rolls_both_routers_back_to_all_blue(dns_e2e: DnsE2E) -> None:
    e2e = dns_e2e.e2e
    dns_e2e.write_config(stages=[{"weight": 50, "hold": "30s"}, STAGES[1]])
    await e2e.start_daemon()
    c = await e2e.start()
    await e2e.wait_for(c["id"], state="running", stage=0, phase="holding", within=15)
    assert (await dns_e2e.published())[0] == sorted(BLUE + GREEN)

    for name in e2e.stack.green:
        await e2e.stack.apps[name].set_health(False)

    c = await e2e.wait_for(c["id"], state="rolled_back", within=30)
    assert "new-health" in c["reason"]
    # both routers read back all-old, by the daemon and by us
    assert {r["name"]: r["observed"] for r in c["routers"]} == {"edge": 0.0, "dns": 0.0}
    assert await dns_e2e.published() == (BLUE, ROUTER_TTL)
    assert await e2e.green_share(300) == 0.0
    done = c["events"][-1]
    assert done["kind"] == "rolled_back" and "at the earliest" in done["message"]


async def test_a_wrong_tsig_secret_refuses_the_start_naming_server_and_key(
    dns_e2e: DnsE2E,
) -> None:
    e2e = dns_e2e.e2e
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    dns_e2e.write_config(secret=wrong)
    await e2e.start_daemon()
    before = await dns_e2e.published()

    status, body = await e2e.api("POST", "/v1/services/checkout/cutovers")

    assert status == 422, body
    message = body["error"]["message"]
    assert dns_e2e.bind.server in message and dns_e2e.bind.key.name.rstrip(".") in message
    assert wrong not in message and wrong not in e2e.daemon_log()
    # nothing changed: DNS as before (TTL included), HAProxy all blue; the refusal is kept
    assert await dns_e2e.published() == before
    assert await e2e.green_share(300) == 0.0
    _, svc = await e2e.api("GET", "/v1/services/checkout")
    assert (svc["cutover"]["state"], svc["cutover"]["reason"]) == ("refused", message)


async def test_a_hold_below_the_dns_ttl_is_refused_with_its_place(dns_e2e: DnsE2E) -> None:
    e2e = dns_e2e.e2e
    dns_e2e.write_config(stages=[{"weight": 50, "hold": "500ms"}, {"weight": 100, "hold": "1s"}])
    rc, out, err = await e2e.cli("validate", "-c", str(e2e.config_path))
    assert rc == 2
    assert "services.checkout.stages[0].hold" in err + out
    assert "TTL" in err + out
