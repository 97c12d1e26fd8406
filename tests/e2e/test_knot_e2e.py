"""End to end with Knot DNS: a real daemon driving the ``rfc2136`` router on a real ``knotd``.

Plan, stages measured with real DNS queries, knotd restarted in the middle of a hold (the
router reports it unreadable, then readable, and the cutover goes on), and a hand edit with
Knot's ``knsupdate`` during a hold (drift: paused), then an abort that rolls back over it.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from demo.dnsservers import new_tsig_key
from demo.knotdns import Knot
from demo.stack import make_workdir
from tests.e2e.conftest import E2E
from tests.integration.test_dns_routers import measure
from tests.integration.test_knot import knsupdate

ZONE = "example.test."
RECORD = f"www.{ZONE}"
BLUE = ["192.0.2.10", "192.0.2.11"]
GREEN = ["198.51.100.10", "198.51.100.11"]
TTL = 1
QUERIES = 100


@dataclass
class KnotE2E:
    e2e: E2E
    knot: Knot

    def write_config(self, stages: list[dict[str, Any]]) -> None:
        secret_file = self.e2e.dir / "tsig.secret"
        secret_file.write_text(self.knot.key.secret + "\n")
        dns_router = {
            "name": "dns",
            "type": "rfc2136",
            "server": self.knot.server,
            "zone": ZONE,
            "record": RECORD,
            "ttl": TTL,
            "tsig": {"name": self.knot.key.name, "secret_file": str(secret_file)},
            "blue": BLUE,
            "green": GREEN,
        }
        self.e2e.write_config(stages=stages, routers=[dns_router])

    async def published(self) -> list[str]:
        """The addresses in :data:`QUERIES` real answers (each answer has the whole RRset)."""
        return sorted(await measure(self.knot.server, RECORD, QUERIES))

    async def start_holding(self, stages: list[dict[str, Any]]) -> dict[str, Any]:
        self.write_config(stages)
        await self.e2e.start_daemon()
        c = await self.e2e.start()
        return await self.e2e.wait_for(c["id"], state="running", stage=0, phase="holding")


@pytest.fixture
async def knot_e2e(e2e: E2E) -> AsyncIterator[KnotE2E]:
    workdir = make_workdir("cutover-knot-")
    try:
        knot = await Knot.start(
            workdir,
            key=new_tsig_key(),
            zone=ZONE,
            records=[f"www {TTL} IN A {address}" for address in BLUE],
        )
        try:
            yield KnotE2E(e2e=e2e, knot=knot)
        finally:
            await knot.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def kinds(c: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in c["events"]]


async def event_seen(e2e: E2E, cutover_id: str, kind: str, within: float) -> dict[str, Any]:
    """The cutover once its timeline has an event of ``kind``."""
    deadline = time.monotonic() + within
    while kind not in kinds(c := await e2e.cutover(cutover_id)):
        assert time.monotonic() < deadline, f"no {kind} event within {within}s: {kinds(c)}"
        await asyncio.sleep(0.1)
    return c


async def test_a_cutover_on_knot_survives_a_knotd_restart_mid_hold(knot_e2e: KnotE2E) -> None:
    e2e, knot = knot_e2e.e2e, knot_e2e.knot
    stages = [{"weight": 50, "hold": "6s"}, {"weight": 100, "hold": "1s"}]
    knot_e2e.write_config(stages)

    # Given the plan: every blue address plus as many green ones as fit, then all green
    rc, out, err = await e2e.cli("plan", "-c", str(e2e.config_path), "checkout")
    assert rc == 0, err
    print(out)
    assert "dns" in out and "address share 50%" in out, out
    assert await knot_e2e.published() == BLUE  # plan touched nothing

    # When a cutover starts, then stage 1 publishes blue + green on knotd
    c = await knot_e2e.start_holding(stages)
    assert await knot_e2e.published() == sorted(BLUE + GREEN)

    # When knotd is stopped mid-hold, then the router is reported unreadable
    await knot.stop()
    c = await event_seen(e2e, c["id"], "router_unreadable", within=5)
    assert c["state"] == "running"
    unreadable = next(e for e in c["events"] if e["kind"] == "router_unreadable")
    assert f"{knot.server}: connection refused" in unreadable["data"]["error"], unreadable
    # And when it is back, the router reads again and the cutover completes all green
    await knot.restart()
    c = await e2e.wait_for(c["id"], state="completed", within=30)
    assert kinds(c).index("router_unreadable") < kinds(c).index("router_readable")
    assert await knot_e2e.published() == GREEN
    assert {r["name"]: r["observed"] for r in c["routers"]} == {"dns": 100.0}


async def test_a_knsupdate_hand_edit_on_knot_is_drift_and_abort_rolls_back(
    knot_e2e: KnotE2E,
) -> None:
    e2e, knot = knot_e2e.e2e, knot_e2e.knot
    c = await knot_e2e.start_holding([{"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "1s"}])

    # When someone adds an address by hand with knsupdate
    await knsupdate(knot, f"update add {RECORD} {TTL} IN A 203.0.113.66")

    # Then the daemon pauses on drift (the default on_drift) and writes nothing over it
    c = await e2e.wait_for(c["id"], state="paused", within=15)
    drift = next(e for e in c["events"] if e["kind"] == "drift")
    assert drift["data"]["router"] == "dns"
    assert "203.0.113.66" in await knot_e2e.published()

    # When the operator aborts, then the rollback overwrites the hand edit: all blue
    status, body = await e2e.api("POST", f"/v1/cutovers/{c['id']}/abort")
    assert status in (200, 202), body
    c = await e2e.wait_for(c["id"], state="rolled_back", within=15)
    assert await knot_e2e.published() == BLUE
    assert {r["name"]: r["observed"] for r in c["routers"]} == {"dns": 0.0}
