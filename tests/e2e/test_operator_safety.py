"""Engine safety end to end (issue 14: items 1, 12, 13 and "router errors visible at once"): a
real daemon driving a real HAProxy and, where DNS is part of it, a real BIND 9 (RFC 2136 with
TSIG) in the same service.

* **A frozen DNS server at a stage boundary** (named SIGSTOPped during stage 1's hold, so the
  change to stage 2 hangs on it): the shift's failed tries show on the router at once; the new
  color's health check fails and counts although the phase is still ``shifting``; HAProxy is
  at 0 % new within failure_limit x interval + 1 s while named is still frozen; once named
  runs again the record is all-old and stays so (its SOA serial does not move after
  ``rolled_back``: no forward write lands after the rollback).
* **One router's drift holds the others**: the daemon killed while shifting from 33 % to 50 %
  (written to the store, not yet acted on), HAProxy rolled back by hand meanwhile: the restart
  pauses on HAProxy's drift and leaves the DNS record at 33 %.
* **A router that comes back during ``failed``** (HAProxy stopped, restarted at its config
  weights, green in rotation): rolled back within 1 s of answering, not at the next backoff step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from demo.dnsservers import Bind
from demo.stack import Child, require_binary
from tests.e2e.conftest import E2E
from tests.e2e.test_dns_e2e import BLUE, GREEN, ROUTER_TTL, ZONE, DnsE2E

CHECK_INTERVAL = 0.3  # the default new-health check of tests/e2e/conftest.py
FAILURE_LIMIT = 2


@pytest.fixture
async def bind_dns(e2e: E2E) -> AsyncIterator[DnsE2E]:
    (e2e.dir / "bind").mkdir()
    # published with the router's TTL: no TTL to wait out before stage 1
    records = [f"www {ROUTER_TTL} IN A {address}" for address in BLUE]
    bind = await Bind.start(e2e.dir / "bind", zone=ZONE, records=records)
    try:
        yield DnsE2E(e2e=e2e, bind=bind)
    finally:
        if bind.child.proc.returncode is None:
            os.kill(bind.child.proc.pid, signal.SIGCONT)  # a stopped named cannot take SIGTERM
        await bind.stop()


def write_config(stack: DnsE2E, stages: list[dict[str, Any]], **service: Any) -> None:
    edge = stack.e2e.stack.spec_values(name="edge", timeout="1s")
    stack.e2e.write_config(
        stages=stages, routers=[edge, {**stack.dns_router(), "timeout": "1s"}], **service
    )


async def serial(stack: DnsE2E) -> int:
    """The zone's SOA serial on the authoritative server: it moves with every update."""
    query = dns.message.make_query(ZONE, dns.rdatatype.SOA)
    answer = await dns.asyncquery.tcp(query, "127.0.0.1", port=stack.bind.port, timeout=2)
    (rrset,) = answer.answer
    return int(rrset[0].serial)


async def green_weights(e2e: E2E) -> dict[str, tuple[int, int]]:
    """Each green server's (runtime weight, admin state) from ``show servers state``; admin
    state 1 is maint set on the runtime API."""
    out = await e2e.stack.haproxy.cli("show servers state checkout")
    rows = [r for r in map(str.split, out.splitlines()) if len(r) > 7 and r[1] == "checkout"]
    return {r[3]: (int(r[7]), int(r[6])) for r in rows if r[3] in e2e.stack.green}


async def all_old_on_haproxy(e2e: E2E) -> bool:
    return all(weight == 0 or admin & 1 for weight, admin in (await green_weights(e2e)).values())


def events(c: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in c["events"] if e["kind"] == kind]


# --- item 1 and 6b: a frozen DNS server at a stage boundary ----------------------------------


async def test_a_failing_new_color_is_rolled_back_while_the_stage_change_hangs_on_frozen_dns(
    bind_dns: DnsE2E,
) -> None:
    e2e = bind_dns.e2e
    apply_timeout = 60.0  # the stage change would hang far longer than the checks take
    write_config(
        bind_dns,
        [{"weight": 50, "hold": "3s"}, {"weight": 100, "hold": "1s"}],
        apply_timeout=f"{apply_timeout:g}s",
        rollback_timeout="60s",
    )
    await e2e.start_daemon()
    c = await e2e.start()
    c = await e2e.wait_for(c["id"], state="running", stage=0, phase="holding", within=15)
    assert (await bind_dns.published())[0] == sorted(BLUE + GREEN)

    # Given named frozen during stage 1's hold, so the change to stage 2 hangs on it
    os.kill(bind_dns.bind.child.proc.pid, signal.SIGSTOP)
    c = await e2e.wait_for(c["id"], state="running", stage=1, phase="shifting", within=10)
    shifting_at = time.time()

    # Then each failed try of the shift is visible at once: the router's error in status and a
    # warning logged, long before apply_timeout
    deadline = time.monotonic() + 5
    while not [ln for ln in e2e.daemon_log().splitlines() if "shift not applied yet" in ln]:
        assert time.monotonic() < deadline, e2e.daemon_log()[-3000:]
        await asyncio.sleep(0.1)
    c = await e2e.cutover(c["id"])
    routers = {r["name"]: r for r in c["routers"]}
    assert c["phase"] == "shifting" and "no answer within" in routers["dns"]["error"], routers
    assert time.time() - shifting_at < apply_timeout / 2

    # When the new color fails its health check while the shift still hangs
    failing = time.monotonic()
    for name in e2e.stack.green:
        await e2e.stack.apps[name].set_health(False)

    # Then HAProxy is at 0 % new within failure_limit x interval + 1 s, named still frozen
    bound = FAILURE_LIMIT * CHECK_INTERVAL + 1.0
    while not await all_old_on_haproxy(e2e):
        assert time.monotonic() - failing <= bound, await green_weights(e2e)
        await asyncio.sleep(0.02)
    haproxy_old = time.monotonic() - failing
    assert await e2e.green_share(300) == 0.0
    c = await e2e.cutover(c["id"])
    assert c["state"] == "rolling_back" and "new-health" in c["reason"], c["reason"]
    (rollback,) = events(c, "rollback_started")
    assert not [e for e in c["events"] if e["kind"] == "stage_applied" and e["data"]["stage"] == 1]

    # When named runs again, then the record is all-old and verified after anything it found
    # queued in its sockets, and stays so: its serial does not move once rolled_back
    os.kill(bind_dns.bind.child.proc.pid, signal.SIGCONT)
    thawed = time.monotonic()
    c = await e2e.wait_for(c["id"], state="rolled_back", within=20)
    verified = time.monotonic() - thawed
    assert await bind_dns.published() == (BLUE, ROUTER_TTL)
    first = await serial(bind_dns)
    for _ in range(20):
        await asyncio.sleep(0.1)
        assert await bind_dns.published() == (BLUE, ROUTER_TTL)
    assert await serial(bind_dns) == first
    assert {r["name"]: r["observed"] for r in c["routers"]} == {"edge": 0.0, "dns": 0.0}
    assert await e2e.green_share(300) == 0.0
    print(
        f"\nfrozen DNS: HAProxy all-old {haproxy_old:.2f}s after the check started failing "
        f"(bound {bound:g}s); rolled_back {verified:.2f}s after named ran again; rollback "
        f"decided {rollback['at'] - shifting_at:.2f}s into the hanging shift"
    )


# --- item 12: one router's drift holds the others ---------------------------------------------


async def test_a_restart_over_one_hand_rolled_back_router_moves_no_other_toward_new(
    bind_dns: DnsE2E,
) -> None:
    e2e = bind_dns.e2e
    write_config(
        bind_dns,
        [
            {"weight": 33, "hold": "2s"},
            {"weight": 50, "hold": "60s"},
            {"weight": 100, "hold": "1s"},
        ],
    )
    # the runner waits this long between writing a transition and acting on it: the kill lands
    # while the stage change to 50 % is written but not applied
    await e2e.start_daemon(act_delay=4.0)
    c = await e2e.start()
    c = await e2e.wait_for(c["id"], state="running", stage=1, phase="shifting", within=30)
    await e2e.kill_daemon()
    at_33 = await bind_dns.published()
    assert len(at_33[0]) == len(BLUE) + 1, at_33  # every blue address and one green: 33 %
    assert not await all_old_on_haproxy(e2e)

    # Given the operator's emergency rollback of HAProxy while the daemon is down (runbook)
    await e2e.stack.haproxy.cli(
        "; ".join(f"set server checkout/{name} state maint" for name in e2e.stack.green)
    )
    serial_before = await serial(bind_dns)

    # When the daemon restarts, then it pauses on HAProxy's drift
    await e2e.start_daemon()
    c = await e2e.wait_for(c["id"], state="paused", within=15)
    (drift,) = events(c, "drift")
    assert drift["data"]["router"] == "edge", drift
    # And the DNS record is not moved toward the new color: still 33 %, no update at all
    for _ in range(20):
        assert await bind_dns.published() == at_33
        await asyncio.sleep(0.1)
    assert await serial(bind_dns) == serial_before
    assert await all_old_on_haproxy(e2e)
    dns_status = next(r for r in c["routers"] if r["name"] == "dns")
    assert dns_status["desired"] == 50 and dns_status["observed"] < 50, dns_status


# --- item 13: a router that comes back during failed -------------------------------------------


async def test_haproxy_back_during_failed_at_its_config_weights_is_rolled_back_within_1s(
    e2e: E2E,
) -> None:
    stages = [{"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "1s"}]
    e2e.write_config(stages=stages, rollback_timeout="1s")
    await e2e.start_daemon()
    c = await e2e.start()
    c = await e2e.wait_for(c["id"], state="running", stage=0, phase="holding", within=15)

    # Given HAProxy down and an abort: the rollback cannot reach it, so failed
    hap = e2e.stack.haproxy
    argv = [
        require_binary("haproxy"),
        "-W",
        "-db",
        "-S",
        hap.master_socket,
        "-f",
        str(hap.workdir / "haproxy.cfg"),
    ]
    await hap.stop()
    status, _ = await e2e.api("POST", f"/v1/cutovers/{c['id']}/abort")
    assert status == 200
    c = await e2e.wait_for(c["id"], state="failed", within=10)
    # long enough for the rollback's backoff between attempts to reach its longest step
    await asyncio.sleep(8)
    assert (await e2e.cutover(c["id"]))["state"] == "failed"

    # When HAProxy comes back at its config weights (green in rotation, taking traffic)
    hap.child = await Child.spawn("haproxy-2", argv, hap.workdir)
    while True:
        try:
            await hap.cli("show info", within=1.0)
            break
        except (OSError, TimeoutError):
            await asyncio.sleep(0.01)
    answering = time.monotonic()
    at_restart = await green_weights(e2e)

    # Then the daemon rolls it back within 1 s of answering, and the cutover is rolled_back
    while not await all_old_on_haproxy(e2e):
        assert time.monotonic() - answering <= 1.0, await green_weights(e2e)
        await asyncio.sleep(0.02)
    took = time.monotonic() - answering
    c = await e2e.wait_for(c["id"], state="rolled_back", within=5)
    assert await e2e.green_share(300) == 0.0
    print(
        f"\nHAProxy back during failed: green (weight, admin) {at_restart} when it answered; "
        f"rolled back {took:.2f}s after it answered"
    )
