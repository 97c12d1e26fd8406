"""Benchmark: how long one stage change takes on BIND 9 and PowerDNS through the DNS routers.

Not a test. Starts a real BIND 9 and a real PowerDNS on loopback (``demo/dnsservers.py``),
then times, interleaved in one run so both see the same machine load:

* ``router.apply``  one stage change through the router (rfc2136: one signed UPDATE over a
  new TCP connection; powerdns: one API PATCH on the router's kept-alive session);
* ``shift``         what the engine does per router for a stage: read, write, read back
  (``observe`` + ``apply`` + ``observe``; powerdns's read-back includes the real DNS query);
* ``raw UPDATE``    the floor for rfc2136: one signed dnspython UPDATE round trip, no reads;
* ``raw PATCH``     the floor for powerdns: one API PATCH with aiohttp, nothing else.

Shares cycle 10 -> 50 -> 100 -> 0 so every change really changes the records. Run:

    .venv/bin/python benchmarks/dns_stage.py            # 200 changes each
    .venv/bin/python benchmarks/dns_stage.py --quick    # 20 changes each
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `demo` importable

import aiohttp  # noqa: E402
import dns.asyncquery  # noqa: E402
import dns.rcode  # noqa: E402
import dns.tsig  # noqa: E402
import dns.update  # noqa: E402
from benchlib import powerdns_spec, rfc2136_spec  # noqa: E402

from cutover.routers.base import Router  # noqa: E402
from cutover.routers.powerdns import lua_content  # noqa: E402
from cutover.testing import resource_pool  # noqa: E402
from demo.dnsservers import Bind, PowerDNS  # noqa: E402
from demo.stack import make_workdir  # noqa: E402

ZONE = "example.test."
BLUE = ["192.0.2.10", "192.0.2.11"]
GREEN = ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
SHARES = (10, 50, 100, 0)
Timings = dict[str, list[float]]


async def timed(timings: Timings, label: str, work: Awaitable[object]) -> None:
    t0 = time.perf_counter()
    await work
    timings.setdefault(label, []).append(time.perf_counter() - t0)


async def shift(router: Router, share: int) -> None:
    """The engine's per-router stage change: read, write, verify by reading back."""
    await router.observe()
    await router.apply(share)
    reading = await router.observe()
    if dict(reading.state) != dict(router.expected(share)):
        raise RuntimeError(f"{router.name}: read back {dict(reading.state)} at {share}%")


async def bench_bind(workdir: Path, changes: int, timings: Timings) -> str:
    records = [f"www 300 IN A {a}" for a in BLUE] + ["raw 300 IN A 192.0.2.99"]
    bind = await Bind.start(workdir, zone=ZONE, records=records)
    try:
        secret = workdir / "tsig.secret"
        secret.write_text(bind.key.secret)
        spec = rfc2136_spec(
            server=bind.server,
            key_name=bind.key.name,
            secret_file=str(secret),
            zone=ZONE,
            record=f"www.{ZONE}",
            blue=BLUE,
            green=GREEN,
        )
        router = spec.build(new="green", resources=resource_pool())
        await router.preflight()
        key = dns.tsig.Key(bind.key.name, bind.key.secret, dns.tsig.HMAC_SHA256)

        async def raw_update(i: int) -> None:
            update = dns.update.UpdateMessage(ZONE, keyring=key)
            update.replace("raw", 30, "A", f"192.0.2.{100 + i % 2}")
            answer = await dns.asyncquery.tcp(update, "127.0.0.1", port=bind.port, timeout=2)
            if answer.rcode() != dns.rcode.NOERROR:
                raise RuntimeError(dns.rcode.to_text(answer.rcode()))

        shares = itertools.cycle(SHARES)
        for i in range(changes):
            await timed(timings, "bind  router.apply", router.apply(next(shares)))
            await timed(timings, "bind  raw UPDATE (dnspython)", raw_update(i))
        for _ in range(changes):
            await timed(
                timings,
                "bind  shift (observe+apply+observe)",
                shift(router, next(shares)),
            )
        await router.aclose()
        return "BIND 9 (named -g)"
    finally:
        await bind.stop()


async def bench_pdns(workdir: Path, changes: int, timings: Timings) -> str:
    pdns = await PowerDNS.start(workdir)
    try:
        await pdns.create_zone(
            ZONE,
            {(f"www.{ZONE}", "A"): (300, BLUE), (f"raw.{ZONE}", "A"): (300, ["192.0.2.99"])},
        )
        _, server = await pdns.api("GET", "")
        key = workdir / "pdns.key"
        key.write_text(pdns.api_key)
        spec = powerdns_spec(
            api_url=pdns.api_url,
            api_key_file=str(key),
            dns_server=pdns.server,
            zone=ZONE,
            record=f"www.{ZONE}",
            blue=BLUE,
            green=GREEN,
        )
        router = spec.build(new="green", resources=resource_pool())
        url = f"{pdns.api_url}/api/v1/servers/localhost/zones/{ZONE}"
        headers = {"X-API-Key": pdns.api_key}
        try:
            await router.preflight()
            async with aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=5)
            ) as session:

                async def raw_patch(i: int) -> None:
                    weights = {"192.0.2.10": 1 + i % 2, "198.51.100.10": 1}
                    rrset: dict[str, Any] = {
                        "name": f"raw.{ZONE}",
                        "type": "LUA",
                        "ttl": 30,
                        "changetype": "REPLACE",
                        "records": [{"content": lua_content("A", weights), "disabled": False}],
                    }
                    async with session.patch(url, json={"rrsets": [rrset]}) as response:
                        if response.status != 204:
                            raise RuntimeError(f"PATCH -> {response.status}")

                shares = itertools.cycle(SHARES)
                for i in range(changes):
                    await timed(timings, "pdns  router.apply", router.apply(next(shares)))
                    await timed(timings, "pdns  raw API PATCH (aiohttp)", raw_patch(i))
            for _ in range(changes):
                await timed(
                    timings,
                    "pdns  shift (observe+apply+observe)",
                    shift(router, next(shares)),
                )
        finally:
            await router.aclose()
        return f"PowerDNS {server.get('version', '?')} (gsqlite3)"
    finally:
        await pdns.stop()


def table(timings: Timings) -> str:
    rows = [f"{'operation':38} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8}"]
    for label, samples in timings.items():
        ms = sorted(s * 1000 for s in samples)
        p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
        rows.append(
            f"{label:38} {len(ms):>5} {statistics.median(ms):>8.2f} {p99:>8.2f}"
            f" {statistics.fmean(ms):>8.2f} {ms[-1]:>8.2f}"
        )
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 changes each instead of 200")
    parser.add_argument("--changes", type=int, help="changes per measurement (default 200)")
    args = parser.parse_args()
    changes = args.changes or (20 if args.quick else 200)
    timings: Timings = {}
    servers = []
    for bench in (bench_bind, bench_pdns):
        workdir = make_workdir("cutover-bench-")
        try:
            servers.append(await bench(workdir, changes, timings))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"one stage change, {changes} changes each; {', '.join(servers)}; loopback")
    print(table(timings))


if __name__ == "__main__":
    asyncio.run(main())
