"""The PowerDNS router's DNS read-back, against a real PowerDNS (and a real BIND resolver).

Its read-back asks the DNS server itself, as clients do: over UDP, a truncated answer asked
again over TCP, and only an authoritative answer (AA) counts. PowerDNS's own query counters
prove which transport each query took.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest

from cutover.errors import TransientError
from cutover.resource_pool import ResourcePool
from cutover.routers.powerdns import PowerDNSRouter, PowerDNSSpec
from demo.dnsservers import PowerDNS, find_binary, free_dns_port, wait_dns
from demo.stack import LOOPBACK, Child, make_workdir
from tests.integration.conftest import DNS_ZONE

WWW = f"www.{DNS_ZONE}"
#: Enough addresses that their A RRset does not fit a 512-byte UDP answer (16 bytes each).
MANY = [str(ipaddress.ip_address("198.51.100.1") + i) for i in range(40)]


def spec(pdns: PowerDNS, tmp_path: Path, *, green: list[str], dns_server: str) -> PowerDNSSpec:
    key_file = tmp_path / "pdns.key"
    key_file.write_text(pdns.api_key + "\n")
    values: dict[str, Any] = {
        "type": "powerdns",
        "name": "gslb",
        "api_url": pdns.api_url,
        "api_key_file": str(key_file),
        "zone": DNS_ZONE,
        "record": WWW,
        "ttl": 60,
        "dns_server": dns_server,
        "blue": ["192.0.2.10"],
        "green": green,
    }
    return PowerDNSSpec.model_validate(values, strict=True)


@pytest.fixture
async def router_of() -> AsyncIterator[list[PowerDNSRouter]]:
    """Routers built in a test, closed at its end."""
    built: list[PowerDNSRouter] = []
    yield built
    for router in built:
        await router.aclose()


async def queries(pdns: PowerDNS) -> dict[str, int]:
    """PowerDNS's counts of the queries it was asked, by transport."""
    status, stats = await pdns.api("GET", "/statistics")
    assert status == 200, stats
    counts = {s["name"]: int(s["value"]) for s in stats if s.get("type") == "StatisticItem"}
    return {"udp": counts["udp-queries"], "tcp": counts["tcp-queries"]}


async def build(
    pdns: PowerDNS,
    tmp_path: Path,
    resources: ResourcePool,
    built: list[PowerDNSRouter],
    *,
    green: list[str],
    dns_server: str | None = None,
) -> PowerDNSRouter:
    router = spec(pdns, tmp_path, green=green, dns_server=dns_server or pdns.server).build(
        new="green", resources=resources
    )
    built.append(router)
    await router.preflight()
    return router


async def test_read_back_asks_over_udp(
    pdns_server: PowerDNS,
    tmp_path: Path,
    resources: ResourcePool,
    router_of: list[PowerDNSRouter],
) -> None:
    router = await build(pdns_server, tmp_path, resources, router_of, green=["198.51.100.10"])
    await router.apply(100)
    before = await queries(pdns_server)
    reading = await router.observe()
    after = await queries(pdns_server)
    assert reading.state == router.expected(100) and reading.share == 100
    assert after["udp"] - before["udp"] == 1  # one family, one query
    assert after["tcp"] == before["tcp"]


async def test_a_truncated_udp_answer_is_asked_again_over_tcp(
    pdns_server: PowerDNS,
    tmp_path: Path,
    resources: ResourcePool,
    router_of: list[PowerDNSRouter],
) -> None:
    router = await build(pdns_server, tmp_path, resources, router_of, green=MANY)
    await router.apply(100)
    plain = dns.message.make_query(WWW, "A")
    plain.flags &= ~dns.flags.RD
    host, port = pdns_server.server.rsplit(":", 1)
    udp = await dns.asyncquery.udp(plain, host, port=int(port), timeout=2)
    assert udp.flags & dns.flags.TC, "the RRset fits one UDP answer: the test proves nothing"
    before = await queries(pdns_server)
    reading = await router.observe()
    after = await queries(pdns_server)
    assert reading.state == router.expected(100) and reading.share == 100
    assert (after["udp"] - before["udp"], after["tcp"] - before["tcp"]) == (1, 1)


@pytest.fixture
async def resolver(pdns_server: PowerDNS) -> AsyncIterator[str]:
    """A real BIND 9 caching resolver that forwards :data:`DNS_ZONE` to PowerDNS: it answers
    the zone's names, but not authoritatively. ``host:port``."""
    workdir = make_workdir("cutover-resolver-")
    port = free_dns_port()
    host, pdns_port = pdns_server.server.rsplit(":", 1)
    (workdir / "named.conf").write_text(
        f'options {{ directory "{workdir}"; pid-file "{workdir}/named.pid";\n'
        f'    session-keyfile "{workdir}/session.key";\n'
        f"    listen-on port {port} {{ {LOOPBACK}; }}; listen-on-v6 {{ none; }};\n"
        "    recursion yes; allow-recursion { any; }; allow-query-cache { any; };\n"
        "    dnssec-validation no; notify no; };\n"
        "controls { };\n"
        f'zone "{DNS_ZONE}" {{ type forward; forward only;\n'
        f"    forwarders {{ {host} port {pdns_port}; }}; }};\n"
    )
    child = await Child.spawn(
        "named", [find_binary("named"), "-g", "-c", str(workdir / "named.conf")], workdir
    )
    try:
        await wait_dns(child, port)
        yield f"{LOOPBACK}:{port}"
    finally:
        await child.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_a_resolvers_answer_is_not_a_read_back(
    pdns_server: PowerDNS,
    resolver: str,
    tmp_path: Path,
    resources: ResourcePool,
    router_of: list[PowerDNSRouter],
) -> None:
    writer = await build(pdns_server, tmp_path, resources, router_of, green=["198.51.100.10"])
    await writer.apply(100)
    host, port = resolver.rsplit(":", 1)
    # a client's recursive query fills the resolver's cache, which then answers a
    # non-recursive one (as the router asks): the right address, without the AA flag
    query = dns.message.make_query(WWW, "A")
    cached = await dns.asyncquery.udp(query, host, port=int(port), timeout=2)
    assert cached.rcode() == dns.rcode.NOERROR and not cached.flags & dns.flags.AA
    assert {rd.to_text() for rrset in cached.answer for rd in rrset} == {"198.51.100.10"}
    reader = spec(pdns_server, tmp_path, green=["198.51.100.10"], dns_server=resolver).build(
        new="green", resources=resources
    )
    router_of.append(reader)
    with pytest.raises(TransientError, match=r"answered 198\.51\.100\.10 \(not authoritative\)"):
        await reader.observe()
