"""DNS fault classes and DNS drift, end to end: a real daemon driving a real HAProxy and a real
BIND 9 (RFC 2136 with TSIG) in one service, the fault made on BIND itself while the cutover
holds at stage 1 of 2, so it hits the stage change to stage 2.

* **Server down** (named SIGSTOPped: connections are accepted by the kernel, never answered):
  the shift is retried for ``apply_timeout`` and rolls back naming the router; the rollback
  cannot reach BIND, so the cutover is ``failed`` (persisted, an event) until named is
  SIGCONTed, then ``rolled_back`` by itself with the RRset read back all-old.
* **REFUSED** (``allow-update { none; }`` and SIGHUP) and **BADSIG** (the key's secret changed
  in BIND's key file and SIGHUP): a permanent refusal rolls back at once, naming the router and
  the server's answer (BADSIG: server and key, never the secret); the rollback is refused too,
  so ``failed`` until the configuration is put back and named reloads, then ``rolled_back``.
* **Drift by ``nsupdate``** (Debian's /usr/bin/nsupdate with BIND's key file) during a hold:
  detected within one observe interval; ``on_drift: pause`` pauses with a drift event,
  ``on_drift: rollback`` rolls back.

named reloads its configuration on SIGHUP by itself (the harness config has ``controls { };``,
so there is no rndc channel); each test waits for its log line ``reloading configuration
succeeded``. The alarm of each fault is shown three ways: the journal event, the daemon's JSON
log line, and ``cutover_state`` / ``cutover_rollbacks_total`` on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from demo.dnsservers import Bind, assert_port_unused, find_binary, wait_dns
from demo.stack import Child
from tests.e2e.conftest import E2E
from tests.e2e.test_dns_e2e import BLUE, GREEN, RECORD, ROUTER_TTL, ZONE, DnsE2E

#: Stage 1 holds long enough to make the fault before it passes; stage 2 is the stage change
#: the fault hits.
STAGES = [{"weight": 50, "hold": "4s"}, {"weight": 100, "hold": "1s"}]
APPLY_TIMEOUT = 3.0
ROLLBACK_TIMEOUT = 3.0
#: The runner reads every router back this often (the shortest check interval, at least 1 s).
OBSERVE_EVERY = 1.0


@dataclass
class Faults:
    dns: DnsE2E

    @property
    def e2e(self) -> E2E:
        return self.dns.e2e

    @property
    def bind(self) -> Bind:
        return self.dns.bind

    def write_config(self, *, stages: list[dict[str, Any]] = STAGES, **service: Any) -> None:
        edge = self.e2e.stack.spec_values(name="edge", timeout="1s")
        dns_router = {**self.dns.dns_router(), "timeout": "1s"}
        self.e2e.write_config(
            stages=stages,
            routers=[edge, dns_router],
            apply_timeout=f"{APPLY_TIMEOUT:g}s",
            rollback_timeout=f"{ROLLBACK_TIMEOUT:g}s",
            **service,
        )

    async def holding_at_stage_1(self, **service: Any) -> dict[str, Any]:
        self.write_config(**service)
        await self.e2e.start_daemon()
        c = await self.e2e.start()
        c = await self.e2e.wait_for(c["id"], state="running", stage=0, phase="holding", within=15)
        assert (await self.dns.published())[0] == sorted(BLUE + GREEN)
        return c

    # --- BIND ---------------------------------------------------------------------------

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.bind.child.proc.pid, sig)

    async def reload(self, rewrite: Callable[[], None]) -> None:
        """Rewrite BIND's files, SIGHUP named and wait for it to say the reload succeeded."""
        done = self.bind.log().count("reloading configuration succeeded")
        rewrite()
        self.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5.0
        while self.bind.log().count("reloading configuration succeeded") == done:
            assert "reloading configuration failed" not in self.bind.log(), self.bind.log()
            assert time.monotonic() < deadline, f"named did not reload:\n{self.bind.log()}"
            await asyncio.sleep(0.02)

    def edit(self, name: str, old: str, new: str) -> Callable[[], None]:
        def rewrite() -> None:
            path = self.bind.workdir / name
            text = path.read_text()
            assert old in text, text
            path.write_text(text.replace(old, new))

        return rewrite

    async def nsupdate(self, *addresses: str) -> float:
        """Replace the A RRset by hand with Debian's nsupdate and BIND's own key file; returns
        the wall time it was done."""
        script = "".join(
            [
                f"server 127.0.0.1 {self.bind.port}\n",
                f"zone {ZONE}\n",
                f"update delete {RECORD} A\n",
                *(f"update add {RECORD} {ROUTER_TTL} A {a}\n" for a in addresses),
                "send\n",
            ]
        )
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/nsupdate",
            "-k",
            str(self.bind.workdir / "tsig.key"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(script.encode()), 10)
        assert proc.returncode == 0, out.decode()
        return time.time()

    async def restart(self) -> None:
        """Start named again on the same port, config and zone dir (journal included)."""
        bind = self.bind
        assert_port_unused(bind.port)
        argv = [find_binary("named"), "-g", "-c", str(bind.workdir / "named.conf")]
        bind.child = await Child.spawn("named-2", argv, bind.workdir)
        await wait_dns(bind.child, bind.port, bind.zone)

    # --- what the daemon shows ----------------------------------------------------------

    def persisted(self, cutover_id: str) -> tuple[str, list[str]]:
        """The cutover's status and event kinds as the store file holds them (read-only)."""
        path = self.e2e.dir / "state" / "cutover.db"
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (status,) = con.execute("SELECT status FROM cutovers WHERE id = ?", (cutover_id,))
            kinds = con.execute(
                "SELECT kind FROM events WHERE cutover_id = ? ORDER BY seq", (cutover_id,)
            )
            return status[0], [k for (k,) in kinds]
        finally:
            con.close()

    async def metric(self, name: str, **labels: str) -> float:
        status, text = await self.e2e.api("GET", "/metrics")
        assert status == 200
        want = {f'{k}="{v}"' for k, v in labels.items()}
        for line in text.splitlines():
            m = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
            if m and m[1] == name and want <= set(m[2].split(",")):
                return float(m[3])
        raise AssertionError(f"{name}{labels} not on /metrics")

    def log_lines(self, **match: Any) -> list[dict[str, Any]]:
        """The daemon's JSON log lines with every field of ``match``."""
        lines = []
        for raw in self.e2e.daemon_log().splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and all(line.get(k) == v for k, v in match.items()):
                lines.append(line)
        return lines

    async def show_the_alarm(self, c: dict[str, Any], state: str) -> None:
        """The alarm of a fault: event, log line and metrics agree on ``state``."""
        assert self.persisted(c["id"])[0] == state
        assert await self.metric("cutover_state", service="checkout", state=state) == 1.0
        assert (
            await self.metric("cutover_rollbacks_total", service="checkout", reason="router") == 1.0
        )
        (logged,) = self.log_lines(kind=state, cutover=c["id"])
        assert logged["service"] == "checkout" and logged["status"] == state


def event(c: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(e for e in c["events"] if e["kind"] == kind)


def stage_2_started(c: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in c["events"] if e["kind"] == "stage_started" and e["data"]["stage"] == 1)


@pytest.fixture
async def faults(e2e: E2E) -> AsyncIterator[Faults]:
    (e2e.dir / "bind").mkdir()
    # published with the router's TTL: no TTL to wait out before stage 1
    records = [f"www {ROUTER_TTL} IN A {address}" for address in BLUE]
    bind = await Bind.start(e2e.dir / "bind", zone=ZONE, records=records)
    try:
        yield Faults(DnsE2E(e2e=e2e, bind=bind))
    finally:
        if bind.child.proc.returncode is None:
            os.kill(bind.child.proc.pid, signal.SIGCONT)  # a stopped named cannot take SIGTERM
        await bind.stop()


# --- DNS server down --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "error"),
    [("sigstop", "no answer within 1s"), ("restart", "connection refused")],
    ids=["hung", "stopped-and-restarted"],
)
async def test_dns_server_down_mid_stage_fails_the_rollback_until_it_answers_again(
    faults: Faults, how: str, error: str
) -> None:
    e2e = faults.e2e
    c = await faults.holding_at_stage_1()

    # When named stops answering during the hold: hung (SIGSTOP), or stopped (SIGTERM)
    if how == "sigstop":
        faults.signal(signal.SIGSTOP)
    else:
        assert await faults.bind.stop() == 0
    stopped = time.time()

    # Then the periodic read-back alarms (the router's status shows the error; no drift)
    c = await e2e.wait_for(c["id"], state=("running", "rolling_back", "failed"), within=1)
    deadline = time.monotonic() + 2 * OBSERVE_EVERY + 2
    while not any(e["kind"] == "router_unreadable" for e in c["events"]):
        assert time.monotonic() < deadline, c["events"]
        await asyncio.sleep(0.1)
        c = await e2e.cutover(c["id"])
    unreadable = event(c, "router_unreadable")
    assert unreadable["data"]["router"] == "dns" and error in unreadable["message"]

    # And the stage change to stage 2 retries for apply_timeout, then rolls back naming dns
    c = await e2e.wait_for(c["id"], state=("rolling_back", "failed"), within=15)
    started, rollback = stage_2_started(c), event(c, "rollback_started")
    retried = rollback["at"] - started["at"]
    # retried, not given up at once; the engine stops retrying when the next backoff step
    # (0.1 s doubling) would pass apply_timeout, so quick refusals give up after 1.5 s of 3 s
    # (a known gap of cutover/engine/actuation.py, reported); a hung server is tried to the end
    assert APPLY_TIMEOUT / 2 - 0.3 <= retried <= APPLY_TIMEOUT + 2.5, retried
    assert c["reason"].startswith("router dns could not be set to 100%")
    if how == "sigstop":
        # the last try is cut by apply_timeout's deadline, and then the reason carries the
        # engine's "no answer within 0.69…s" rather than the router's message naming the server
        # (a known gap of cutover/engine/actuation.py, reported); either way it is a timeout
        assert "no answer within" in c["reason"], c["reason"]
    else:
        assert faults.bind.server in c["reason"] and error in c["reason"], c["reason"]
    assert "still failing after 3s of retries" in c["reason"]

    # And the rollback cannot reach BIND: failed (persisted, event, log, metric) while HAProxy
    # already reads all-old
    c = await e2e.wait_for(c["id"], state="failed", within=ROLLBACK_TIMEOUT + 3)
    failed = event(c, "failed")
    assert failed["data"]["routers"] == ["dns"]
    assert failed["at"] - rollback["at"] >= ROLLBACK_TIMEOUT - 0.3
    routers = {r["name"]: r for r in c["routers"]}
    assert routers["edge"]["observed"] == 0.0 and routers["dns"]["error"]
    assert await e2e.green_share(300) == 0.0
    await faults.show_the_alarm(c, "failed")
    assert faults.log_lines(event="rollback not verified yet", router="dns")
    rc, out, _ = await e2e.cli("status", "checkout")
    assert rc == 0 and "failed" in out, out

    # When named answers again (SIGCONT; or started again on the same port and dir, the
    # zone's journal holding the updates so far), then the rollback completes by itself
    if how == "sigstop":
        faults.signal(signal.SIGCONT)
    else:
        await faults.restart()
    resumed = time.time()
    c = await e2e.wait_for(c["id"], state="rolled_back", within=15)
    recovered = event(c, "rolled_back")["at"] - resumed
    assert await faults.dns.published() == (BLUE, ROUTER_TTL)
    assert {r["name"]: r["observed"] for r in c["routers"]} == {"edge": 0.0, "dns": 0.0}
    assert faults.persisted(c["id"]) == ("rolled_back", [e["kind"] for e in c["events"]])
    assert await faults.metric("cutover_state", service="checkout", state="rolled_back") == 1.0
    # the forward updates BIND found queued in its sockets when it woke did not win over the
    # rollback: still all-old a moment later
    await asyncio.sleep(2)
    assert await faults.dns.published() == (BLUE, ROUTER_TTL)
    print(
        f"\nDNS down ({how}): read-back alarm {unreadable['at'] - stopped:.1f}s after the stop; "
        f"shift retried {retried:.1f}s then rollback; failed {failed['at'] - stopped:.1f}s "
        f"after the stop; rolled_back {recovered:.1f}s after named answered again"
    )


# --- permanent refusals: REFUSED, BADSIG -------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    name: str
    #: (file, old text, new text) in BIND's workdir; the fix puts the old text back
    edit: Callable[[Faults], tuple[str, str, str]]
    #: what the reason must say besides the router and the server
    says: tuple[str, ...]


def _no_updates(f: Faults) -> tuple[str, str, str]:
    return ("named.conf", f'allow-update {{ key "{f.bind.key.name}"; }}', "allow-update { none; }")


def _other_secret(f: Faults) -> tuple[str, str, str]:
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    return ("tsig.key", f'secret "{f.bind.key.secret}"', f'secret "{other}"')


REFUSALS = [
    pytest.param(Refusal("REFUSED", _no_updates, ("REFUSED",)), id="refused"),
    pytest.param(Refusal("BADSIG", _other_secret, ("BADSIG", "TSIG key")), id="badsig"),
]


@pytest.mark.parametrize("refusal", REFUSALS)
async def test_a_permanent_refusal_mid_stage_rolls_back_at_once_naming_router_and_answer(
    faults: Faults, refusal: Refusal
) -> None:
    e2e = faults.e2e
    c = await faults.holding_at_stage_1()
    file, old, new = refusal.edit(faults)

    # When BIND starts refusing updates during the hold (reads still work)
    await faults.reload(faults.edit(file, old, new))

    # Then the stage change to stage 2 rolls back at once (no apply_timeout of retries),
    # naming the router, the server and its answer
    c = await e2e.wait_for(c["id"], state=("rolling_back", "failed"), within=15)
    started, rollback = stage_2_started(c), event(c, "rollback_started")
    took = rollback["at"] - started["at"]
    assert took < 1.0, took
    reason = c["reason"]
    assert reason.startswith("router dns could not be set to 100%"), reason
    assert faults.bind.server in reason
    assert all(s in reason for s in refusal.says), reason
    if refusal.name == "BADSIG":
        assert faults.bind.key.name.rstrip(".") in reason
        # the secrets, the daemon's and BIND's new one, are nowhere the daemon speaks
        for secret in (faults.bind.key.secret, new.removeprefix('secret "').rstrip('"')):
            assert secret not in json.dumps(c) and secret not in e2e.daemon_log()

    # And the rollback is refused too: failed until BIND takes updates again
    c = await e2e.wait_for(c["id"], state="failed", within=ROLLBACK_TIMEOUT + 3)
    assert event(c, "failed")["data"]["routers"] == ["dns"]
    assert await e2e.green_share(300) == 0.0
    await faults.show_the_alarm(c, "failed")
    assert (await faults.dns.published())[0] == sorted(BLUE + GREEN)  # refused: unchanged

    # When the configuration is put back, then the rollback completes by itself
    await faults.reload(faults.edit(file, new, old))
    fixed = time.time()
    c = await e2e.wait_for(c["id"], state="rolled_back", within=15)
    assert await faults.dns.published() == (BLUE, ROUTER_TTL)
    assert faults.persisted(c["id"])[0] == "rolled_back"
    print(
        f"\n{refusal.name}: rollback {took:.2f}s after stage 2 started; rolled_back "
        f"{event(c, 'rolled_back')['at'] - fixed:.1f}s after named reloaded the fix; "
        f"reason: {reason}"
    )


# --- drift by nsupdate --------------------------------------------------------------------------


@pytest.mark.parametrize("on_drift", [None, "rollback"], ids=["default-pause", "rollback"])
async def test_drift_by_nsupdate_during_a_hold_is_detected_within_one_interval(
    faults: Faults, on_drift: str | None
) -> None:
    e2e = faults.e2e
    service = {} if on_drift is None else {"on_drift": on_drift}
    c = await faults.holding_at_stage_1(
        stages=[{"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "1s"}], **service
    )

    # When someone puts every address back to blue by hand with nsupdate
    changed = await faults.nsupdate(*BLUE)

    # Then drift is reported within one observe interval (plus one read)
    want = "paused" if on_drift is None else ("rolling_back", "rolled_back")
    c = await e2e.wait_for(c["id"], state=want, within=OBSERVE_EVERY + 3)
    drift = event(c, "drift")
    detected = drift["at"] - changed
    assert detected <= OBSERVE_EVERY + 1.0, detected
    assert drift["data"]["router"] == "dns" and drift["data"]["observed"] == 0.0
    assert drift["data"]["policy"] == (on_drift or "pause")
    assert "router dns holds something the daemon did not write" in drift["message"]
    if on_drift is None:
        assert event(c, "paused")["message"].startswith("paused: drift: router dns")
        await asyncio.sleep(OBSERVE_EVERY + 0.5)  # paused: nothing writes DNS back
        assert await faults.dns.published() == (BLUE, ROUTER_TTL)
        assert faults.persisted(c["id"])[0] == "paused"
    else:
        c = await e2e.wait_for(c["id"], state="rolled_back", within=10)
        assert c["reason"].startswith("drift: router dns")
        assert await faults.dns.published() == (BLUE, ROUTER_TTL)
        assert await e2e.green_share(300) == 0.0
        assert (
            await faults.metric("cutover_rollbacks_total", service="checkout", reason="drift")
            == 1.0
        )
    print(f"\nnsupdate drift ({on_drift or 'pause'}): detected {detected:.2f}s after the update")
