"""End to end: guarded operator commands and the bake, through the CLI, against real HAProxy.

The daemon runs as a process (tests/e2e/conftest.py) and every command is the ``cutover`` CLI as
an operator types it. Traffic is measured with real requests through HAProxy's frontend.

* ``promote`` while a check fails is refused (409 ``checks_not_passing``, exit 1, naming the
  check); ``promote --force`` passes the stage and the event says forced and who.
* ``resume`` after an operator's emergency rollback by hand (a drift pause) is refused (409
  ``drift``, naming the router, what the daemon wrote and what it reads) and leaves the hand
  rollback standing; ``resume --reapply`` writes the stage again.
* A check breached during the bake rolls everything back to the old color.

The promote and bake checks ask a small HTTP server of this test's own (``Gate``), so a check
can fail without touching the HAProxy servers' own health (a failing server would change the
split HAProxy reads back, which is drift, not a check failure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from demo.stack import LOOPBACK, free_port
from tests.e2e.conftest import E2E

#: HAProxy splits by smooth weighted round robin; 2000 requests land within a few percent.
TOLERANCE = 4.0
#: The daemon reads its routers back at least every second (checks every 300-500 ms here).
OBSERVE_EVERY = 1.0


class Gate:
    """``GET /healthz`` answering 200 while ``ok``, else 503: a check target the test flips."""

    def __init__(self) -> None:
        self.ok = True
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200 if self.ok else 503, text="ok" if self.ok else "failing")

    async def start(self) -> Gate:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def check(self, **policy: Any) -> dict[str, Any]:
        return {
            "name": "gate",
            "type": "http",
            "url": f"http://{LOOPBACK}:{self.port}/healthz",
            "timeout": "1s",
            **policy,
        }


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    g = await Gate().start()
    try:
        yield g
    finally:
        await g.stop()


async def _check_status(e2e: E2E, cid: str, name: str, status: str, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        c = await e2e.cutover(cid)
        if next(ch for ch in c["checks"] if ch["name"] == name)["status"] == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"check {name} not {status} within {within}s: {c['checks']}")


async def _start(e2e: E2E) -> str:
    rc, out, err = await e2e.cli("start", "checkout")
    assert rc == 0, err
    return out.split()[1].rstrip(":")  # "started <id>: checkout blue -> green"


async def test_promote_is_refused_while_a_check_fails_and_forced_with_force(
    e2e: E2E, gate: Gate
) -> None:
    # Given a cutover holding stage 1 (10 %) for a minute, its gate check passing
    stages = [
        {"weight": 10, "hold": "60s"},
        {"weight": 50, "hold": "60s"},
        {"weight": 100, "hold": "1s"},
    ]
    # failing alone takes 30 measurements (15 s) to roll back: long enough to promote by hand
    e2e.write_config(
        stages=stages, checks=[gate.check(interval="500ms", failure_limit=30, window=30)]
    )
    await e2e.start_daemon()
    cid = await _start(e2e)
    await e2e.wait_for(cid, state="running", stage=0, phase="holding")

    # When the check starts failing and the operator promotes
    gate.ok = False
    await _check_status(e2e, cid, "gate", "fail", within=5)
    rc, out, err = await e2e.cli("promote", "checkout")

    # Then it is refused with exit 1, naming the check, and nothing moved
    assert rc == 1, (out, err)
    assert "cannot promote: checks not passing at stage 1: gate (fail)" in err
    assert "Traceback" not in err
    c = await e2e.cutover(cid)
    assert (c["state"], c["stage"]) == ("running", 0)
    assert abs(await e2e.green_share(2000) - 10) <= TOLERANCE

    # When the operator forces it, then stage 2 (50 %) is applied and the event says so
    rc, out, err = await e2e.cli("promote", "checkout", "--force")
    assert rc == 0, err
    assert f"promote: {cid} is now running" in out
    c = await e2e.wait_for(cid, state="running", stage=1, phase="holding", within=10)
    assert abs(await e2e.green_share(2000) - 50) <= TOLERANCE
    (promoted,) = [e for e in c["events"] if e["kind"] == "promoted"]
    assert promoted["data"]["forced"] is True and promoted["data"]["not_passing"] == ["gate"]
    actor = promoted["data"]["actor"]
    assert "@" in actor  # the CLI's user@host
    assert (
        f"stage 1 promoted by {actor}, forced past checks not passing: gate" in promoted["message"]
    )
    gate.ok = True


async def test_resume_after_a_hand_rollback_is_refused_and_reapply_writes_the_stage(
    e2e: E2E,
) -> None:
    # Given a cutover holding stage 2 at 50 %
    stages = [
        {"weight": 10, "hold": "500ms"},
        {"weight": 50, "hold": "60s"},
        {"weight": 100, "hold": "500ms"},
    ]
    c = await e2e.holding_at(stages, 1)
    cid = c["id"]
    assert abs(await e2e.green_share(2000) - 50) <= TOLERANCE

    # When an operator rolls back by hand on HAProxy's runtime API (an emergency)
    await e2e.stack.haproxy.cli(
        "set server checkout/green1 weight 0; set server checkout/green2 weight 0"
    )
    # Then the daemon sees drift and pauses
    c = await e2e.wait_for(cid, state="paused", within=OBSERVE_EVERY + 5)
    assert c["routers"][0]["drift"] is True

    # When the operator resumes without --reapply, then it is refused naming the router, what
    # the daemon wrote and what it reads, and the hand rollback stands
    rc, out, err = await e2e.cli("resume", "checkout")
    assert rc == 1, (out, err)
    assert "router edge: the daemon last wrote 50% green, it reads 0% green" in err
    assert "reapply" in err and "Traceback" not in err
    await asyncio.sleep(OBSERVE_EVERY * 1.5)  # a read-back or two later: still nothing moved
    assert (await e2e.cutover(cid))["state"] == "paused"
    assert await e2e.green_share(1000) == 0.0

    # When the operator resumes with --reapply, then the stage is written again: 50 % green
    rc, out, err = await e2e.cli("resume", "checkout", "--reapply")
    assert rc == 0, err
    c = await e2e.wait_for(cid, state="running", stage=1, phase="holding", within=10)
    assert not c["routers"][0]["drift"]
    assert abs(await e2e.green_share(2000) - 50) <= TOLERANCE
    (resumed,) = [e for e in c["events"] if e["kind"] == "resumed"]
    assert resumed["data"]["reapply"] is True


async def test_a_breach_during_the_bake_rolls_back_to_all_old(e2e: E2E, gate: Gate) -> None:
    # Given a two-stage plan with a 2-minute bake
    e2e.write_config(
        stages=[{"weight": 50, "hold": "500ms"}, {"weight": 100, "hold": "500ms"}],
        checks=[gate.check(interval="300ms", failure_limit=2)],
        bake="120s",
    )
    await e2e.start_daemon()
    cid = await _start(e2e)

    # When the last stage has held, then the cutover bakes at 100 % green, still running
    c = await e2e.wait_for(cid, state="running", phase="baking", within=20)
    assert c["stage"] == 1 and c["bake"] == 120.0 and 0 < c["bake_left"] <= 120.0
    assert await e2e.green_share(1000) == 100.0
    rc, out, err = await e2e.cli("status", "checkout")
    assert rc == 0 and "phase=baking" in out, err

    # When the check fails during the bake, then every router rolls back to 100 % blue
    gate.ok = False
    breached = time.monotonic()
    c = await e2e.wait_for(cid, state="rolled_back", within=15)
    took = time.monotonic() - breached
    assert await e2e.green_share(1000) == 0.0
    assert c["reason"].startswith("check gate failed"), c["reason"]
    kinds = [e["kind"] for e in c["events"]]
    assert "baking" in kinds and kinds.index("baking") < kinds.index("rollback_started")
    assert "completed" not in kinds
    # two failures 300 ms apart, then the rollback and its read-back: seconds, not the bake
    assert took < 15, took
    _, svc = await e2e.api("GET", "/v1/services/checkout")
    assert svc["live"] == "blue"
