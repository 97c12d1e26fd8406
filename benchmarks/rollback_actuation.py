"""Benchmark: rollback actuation, from the rollback decision to every router read back at 0 %.

Not a test. Starts a real HAProxy (backend ``b4``: 2 blue + 2 green servers; backend
``b100``: 50 + 50), a real BIND 9 and a real PowerDNS on loopback. The servers point at a
port nobody listens on: a rollback writes weights and admin states, which do not depend on
health, and no demo app has to answer 200 health checks a second. Five setups, each a
"service" whose routers a rollback drives: ``haproxy-4``, ``haproxy-100``, ``bind``,
``powerdns`` and ``all`` (the four routers together). Per round and setup, interleaved so that
all columns see the same machine load, after moving the routers to 50 % (untimed):

* ``actuation``  the engine's rollback path, :func:`cutover.engine.actuation.rollback_once`:
                 every router written to 0 % with evacuation concurrently, then read back and
                 compared with the all-old state (the time the runner waits before
                 ``rolled_back``);
* ``bound``      the lower bound: the raw write round trip of the slowest router of the setup
                 with the simplest blocking client (HAProxy: one unix-socket connection with
                 the backend's ``set server`` commands on one ``;``-joined line; BIND: one
                 TSIG-signed dnspython UPDATE over TCP; PowerDNS: one API PATCH with
                 ``http.client``, which connects each time: PowerDNS closes after an answer);
                 no read-back;
* ``script``     what an operator would script otherwise: ``bash`` running, sequentially, one
                 ``socat`` per HAProxy server (its weight and state on one line), ``nsupdate``
                 for BIND and ``curl`` PATCH for PowerDNS; no read-back either.

The two yardsticks above skip the read-back that a verified rollback needs (PRODUCT.md:
``rolled_back`` only once every router reads back all-old). So the same rounds also time them
with it, which is the fair comparison:

* ``bound+read`` the slowest router's raw write followed by the router's own read-back
                 requests with the same simplest blocking clients (HAProxy: ``show servers
                 state`` ending the write's line; BIND: SOA, A and AAAA queries on one TCP
                 connection; PowerDNS: the API GET of the name and one UDP query of it);
* ``script+read`` the script followed by the same reads with ``socat``, ``dig`` and ``curl``
                 (their output is not even compared, which still favours the script).

Run (``--quick``: 20 rounds, the CI smoke size):

    .venv/bin/python benchmarks/rollback_actuation.py            # 200 rounds
    .venv/bin/python benchmarks/rollback_actuation.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `demo` importable

import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.tsig  # noqa: E402
import dns.update  # noqa: E402
from benchlib import powerdns_spec, rfc2136_spec, row, summary  # noqa: E402

from cutover.engine.actuation import rollback_once  # noqa: E402
from cutover.engine.clock import SystemClock  # noqa: E402
from cutover.routers.base import Router  # noqa: E402
from cutover.routers.haproxy import HAProxyRouter, HAProxySpec  # noqa: E402
from cutover.routers.powerdns import PowerDNSRouter  # noqa: E402
from cutover.testing import resource_pool  # noqa: E402
from demo.dnsservers import Bind, PowerDNS  # noqa: E402
from demo.stack import Backend, HAProxy, free_port, make_workdir  # noqa: E402

ZONE = "example.test."
RECORD = f"www.{ZONE}"
BLUE = ["192.0.2.10", "192.0.2.11"]
GREEN = ["198.51.100.10", "198.51.100.11"]
SETUPS = ("haproxy-4", "haproxy-100", "bind", "powerdns", "all")
RawWrite = Callable[[], None]


@dataclass
class Target:
    """One router with its raw-write floor and its lines of the operator's script."""

    router: Router
    raw: RawWrite
    script: list[str]
    raw_read: RawWrite
    read_script: list[str]


@dataclass
class Samples:
    actuation: list[float] = field(default_factory=list)
    bound: list[float] = field(default_factory=list)
    script: list[float] = field(default_factory=list)
    bound_read: list[float] = field(default_factory=list)
    script_read: list[float] = field(default_factory=list)


def haproxy_commands(router: HAProxyRouter, spec: HAProxySpec) -> list[tuple[str, str]]:
    """(server, "set server … weight W; set server … state S") of a rollback with evacuation."""
    weights = router.weights(0)
    out = []
    for server in (*spec.blue, *spec.green):
        state = "maint" if server in spec.green else "ready"
        out.append(
            (
                server,
                f"set server {spec.backend}/{server} weight {weights[server]}; "
                f"set server {spec.backend}/{server} state {state}",
            )
        )
    return out


async def haproxy_target(haproxy: HAProxy, backend: str, n: int) -> Target:
    spec = HAProxySpec.model_validate(
        {
            "type": "haproxy",
            "name": backend,
            "runtime_api": haproxy.runtime_unix,
            "backend": backend,
            "blue": [f"blue{i}" for i in range(n // 2)],
            "green": [f"green{i}" for i in range(n // 2)],
        }
    )
    router = spec.build(new="green", resources=resource_pool())
    await router.observe()  # learns the configured weights
    commands = haproxy_commands(router, spec)
    writes = "; ".join(c for _, c in commands)
    show = f"show servers state {backend}"
    path = haproxy.admin_socket

    def line(text: str) -> RawWrite:
        data = (text + "\n").encode()

        def run() -> None:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass

        return run

    script = [
        f"echo '{c}' | socat - UNIX-CONNECT:{path} >/dev/null  # {server}" for server, c in commands
    ]
    read = [f"echo '{show}' | socat - UNIX-CONNECT:{path} >/dev/null"]
    return Target(router, line(writes), script, line(f"{writes}; {show}"), read)


async def start_bind(workdir: Path) -> tuple[Bind, Target]:
    bind = await Bind.start(workdir, zone=ZONE, records=[f"www 300 IN A {a}" for a in BLUE])
    secret = workdir / "tsig.secret"
    secret.write_text(bind.key.secret)
    spec = rfc2136_spec(
        server=bind.server,
        key_name=bind.key.name,
        secret_file=str(secret),
        zone=ZONE,
        record=RECORD,
        blue=BLUE,
        green=GREEN,
    )
    key = dns.tsig.Key(bind.key.name, bind.key.secret, dns.tsig.HMAC_SHA256)

    def raw() -> None:
        update = dns.update.UpdateMessage(ZONE, keyring=key)
        update.replace("www", 30, "A", *BLUE)
        answer = dns.query.tcp(update, "127.0.0.1", port=bind.port, timeout=2)
        if answer.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(dns.rcode.to_text(answer.rcode()))

    def raw_read() -> None:
        raw()
        with socket.create_connection(("127.0.0.1", bind.port), timeout=2) as s:
            for name, rdtype in ((ZONE, "SOA"), (RECORD, "A"), (RECORD, "AAAA")):
                query = dns.message.make_query(name, rdtype)
                dns.query.tcp(query, "127.0.0.1", timeout=2, sock=s)

    adds = "\n".join(f"update add {RECORD} 30 A {a}" for a in BLUE)
    script = [
        f"nsupdate -k {workdir}/tsig.key <<'EOF'\nserver 127.0.0.1 {bind.port}\nzone {ZONE}\n"
        f"update delete {RECORD} A\n{adds}\nsend\nEOF"
    ]
    read = [f"dig +tcp @127.0.0.1 -p {bind.port} {ZONE} SOA {RECORD} A {RECORD} AAAA >/dev/null"]
    return bind, Target(
        spec.build(new="green", resources=resource_pool()), raw, script, raw_read, read
    )


async def start_pdns(workdir: Path) -> tuple[PowerDNS, Target, http.client.HTTPConnection]:
    pdns = await PowerDNS.start(workdir)
    await pdns.create_zone(ZONE, {(RECORD, "A"): (300, BLUE)})
    key = workdir / "pdns.key"
    key.write_text(pdns.api_key)
    spec = powerdns_spec(
        api_url=pdns.api_url,
        api_key_file=str(key),
        dns_server=pdns.server,
        zone=ZONE,
        record=RECORD,
        blue=BLUE,
        green=GREEN,
    )
    router: PowerDNSRouter = spec.build(new="green", resources=resource_pool())
    body = json.dumps({"rrsets": router.rrsets(0)})
    (workdir / "rollback.json").write_text(body)
    path = f"/api/v1/servers/localhost/zones/{ZONE}"
    conn = http.client.HTTPConnection("127.0.0.1", pdns.api_port, timeout=5)
    headers = {"X-API-Key": pdns.api_key, "Content-Type": "application/json"}

    read_path = f"{path}?rrset_name={RECORD}"
    query = dns.message.make_query(RECORD, "A")

    def call(method: str, url: str, data: str | None, status: int) -> None:
        conn.request(method, url, body=data, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != status:
            raise RuntimeError(f"{method} -> {response.status}")

    def raw() -> None:
        call("PATCH", path, body, 204)

    def raw_read() -> None:
        raw()
        call("GET", read_path, None, 200)
        dns.query.udp(query, "127.0.0.1", port=pdns.port, timeout=2)

    curl = f"curl -sf -H 'X-API-Key: {pdns.api_key}'"
    script = [
        f"{curl} -X PATCH -H 'Content-Type: application/json'"
        f" --data @{workdir}/rollback.json {pdns.api_url}{path}"
    ]
    read = [
        f"{curl} '{pdns.api_url}{read_path}' >/dev/null",
        f"dig @127.0.0.1 -p {pdns.port} {RECORD} A >/dev/null",
    ]
    return pdns, Target(router, raw, script, raw_read, read), conn


async def forward(routers: Mapping[str, Router]) -> None:
    """Untimed: every router to 50 % so that the next rollback really changes something
    (read first, as the engine does: a raw write or the script changed what BIND holds)."""

    async def one(router: Router) -> None:
        await router.observe()
        await router.apply(50)

    await asyncio.gather(*(one(r) for r in routers.values()))


async def round_(
    name: str,
    targets: Mapping[str, Target],
    scripts: tuple[Path, Path],
    samples: Samples,
    clock: SystemClock,
) -> None:
    """One timed rollback, then (each after moving to 50 % again) the two bounds and the two
    scripts: without and with the read-back."""
    routers = {n: t.router for n, t in targets.items()}
    await forward(routers)
    t0 = time.perf_counter()
    outcomes = await rollback_once(routers, clock)
    samples.actuation.append(time.perf_counter() - t0)
    failed = [o for o in outcomes if o.result != "applied"]
    if failed:
        raise RuntimeError(f"{name}: rollback not verified: {failed}")

    for raw, bounds in (("raw", samples.bound), ("raw_read", samples.bound_read)):
        await forward(routers)
        slowest = 0.0
        for target in targets.values():  # one at a time: each alone is a floor
            t0 = time.perf_counter()
            getattr(target, raw)()
            slowest = max(slowest, time.perf_counter() - t0)
        bounds.append(slowest)

    for path, times in ((scripts[0], samples.script), (scripts[1], samples.script_read)):
        await forward(routers)
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("bash", str(path))
        if await proc.wait() != 0:
            raise RuntimeError(f"{name}: the operator's script {path.name} failed")
        times.append(time.perf_counter() - t0)


def head(bound: str, script: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        ("setup", "act", "act", bound, bound, script, script, "act/bnd", "act/bnd", "scr/act",
         "scr/act", "<=1.5x", ">=5x"),
        ("", "p50 ms", "p99 ms", "p50 ms", "p99 ms", "p50 ms", "p99 ms", "p50", "p99", "p50",
         "p99", "bound", "script"),
    )  # fmt: skip


WIDTHS = (-12, 8, 8, 10, 10, 11, 11, 8, 8, 8, 8, 7, 7)


def table(results: Mapping[str, Samples], labels: tuple[str, str], bound: str, script: str) -> None:
    for line in head(*labels):
        print(row(line, WIDTHS))
    for name, s in results.items():
        a50, a99 = summary(s.actuation)
        b50, b99 = summary(getattr(s, bound))
        s50, s99 = summary(getattr(s, script))
        ratios = (a50 / b50, a99 / b99, s50 / a50, s99 / a99)
        cells = [name, *(f"{v:.2f}" for v in (a50, a99, b50, b99, s50, s99))]
        cells += [f"{r:.1f}x" for r in ratios]
        cells += ["met" if ratios[0] <= 1.5 else "NOT", "met" if ratios[2] >= 5 else "NOT"]
        print(row(cells, WIDTHS))


def report(results: Mapping[str, Samples], rounds: int) -> None:
    print(f"rollback actuation: decision -> every router read back at 0 % (n={rounds} each)")
    print("yardsticks of issue 7: one raw write, and the script, both without a read-back")
    table(results, ("bound", "script"), "bound", "script")
    print("the same with the read-back a verified rollback needs (bound+read, script+read)")
    table(results, ("bnd+read", "scr+read"), "bound_read", "script_read")
    print("goals, at p50: actuation <= 1.5x the bound; the script >= 5x the actuation")


async def main(rounds: int) -> None:
    workdirs = {k: make_workdir(f"cutover-rb-{k}-") for k in ("hap", "bind", "pdns")}
    dead = free_port()  # nobody listens: servers stay DOWN, which a rollback does not read
    backends = [
        Backend(
            f"b{n}",
            "roundrobin",
            [(f"{c}{i}", dead, 10) for c in ("blue", "green") for i in range(n // 2)],
        )
        for n in (4, 100)
    ]
    haproxy = await HAProxy.start(workdirs["hap"], backends)
    bind: Bind | None = None
    pdns: PowerDNS | None = None
    conn: http.client.HTTPConnection | None = None
    targets: dict[str, Target] = {}
    try:
        for n in (4, 100):
            targets[f"haproxy-{n}"] = await haproxy_target(haproxy, f"b{n}", n)
        bind, targets["bind"] = await start_bind(workdirs["bind"])
        pdns, targets["powerdns"], conn = await start_pdns(workdirs["pdns"])
        for name in ("bind", "powerdns"):  # HAProxy's would refuse the DOWN servers
            await targets[name].router.preflight()
        setups = {name: {name: targets[name]} for name in SETUPS[:-1]}
        setups["all"] = dict(targets)
        scripts: dict[str, tuple[Path, Path]] = {}
        for name, group in setups.items():
            writes = [line for t in group.values() for line in t.script]
            reads = [line for t in group.values() for line in t.read_script]
            paths = (
                workdirs["hap"] / f"rollback-{name}.sh",
                workdirs["hap"] / f"rollback-{name}-read.sh",
            )
            for path, lines in zip(paths, (writes, writes + reads), strict=True):
                path.write_text("set -e\n" + "\n".join(lines) + "\n")
            scripts[name] = paths
        results = {name: Samples() for name in setups}
        clock = SystemClock()
        for _ in range(rounds):
            for name, group in setups.items():
                await round_(name, group, scripts[name], results[name], clock)
        report(results, rounds)
    finally:
        if conn is not None:
            conn.close()
        for t in targets.values():
            await t.router.aclose()
        for server in (pdns, bind, haproxy):
            if server is not None:
                await server.stop()
        for d in workdirs.values():
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 rounds: a smoke test")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(20 if args.quick else args.rounds))
