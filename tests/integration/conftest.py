"""Fixtures for integration tests against real servers (HAProxy + demo apps, BIND 9, Knot DNS
and PowerDNS, on loopback)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Mapping

import pytest

from demo.dnsservers import Bind, PowerDNS, new_tsig_key
from demo.knotdns import Knot
from demo.stack import DEFAULT_WEIGHTS, HAProxyStack, make_workdir, start_stack

#: Extra backends over the same demo apps, for the balance-algorithm checks.
EXTRA_BACKENDS = {"static": "static-rr", "hashed": "source", "randomized": "random"}


@pytest.fixture
async def haproxy_stack(request: pytest.FixtureRequest) -> AsyncIterator[HAProxyStack]:
    """A fresh stack per test; ``@pytest.mark.parametrize("haproxy_stack", [weights],
    indirect=True)`` sets other configured weights for blue1/blue2/green1/green2."""
    weights: Mapping[str, int] = getattr(request, "param", DEFAULT_WEIGHTS)
    stack = await start_stack(weights, extra_backends=EXTRA_BACKENDS)
    try:
        yield stack
    finally:
        await stack.stop()


# --- DNS servers (BIND 9, PowerDNS) ------------------------------------------------------------

#: The zone both DNS servers serve in the tests.
DNS_ZONE = "example.test."
#: BIND's zone content: ``www`` (IPv4, TTL 300, the blue addresses), ``dual`` (dual stack).
BIND_RECORDS = (
    "www 300 IN A 192.0.2.10",
    "www 300 IN A 192.0.2.11",
    "dual 300 IN A 192.0.2.10",
    "dual 300 IN AAAA 2001:db8::b1",
)


@pytest.fixture
async def bind_server() -> AsyncIterator[Bind]:
    """A fresh BIND 9 per test serving :data:`DNS_ZONE` with :data:`BIND_RECORDS`, updates
    allowed with its ``key``."""
    workdir = make_workdir("cutover-bind-")
    try:
        server = await Bind.start(workdir, zone=DNS_ZONE, records=BIND_RECORDS)
        try:
            yield server
        finally:
            await server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def pdns_server() -> AsyncIterator[PowerDNS]:
    """A fresh PowerDNS per test (LUA records on) serving :data:`DNS_ZONE`, where
    ``www`` has the blue address 192.0.2.10 at TTL 300."""
    workdir = make_workdir("cutover-pdns-")
    try:
        server = await PowerDNS.start(workdir)
        try:
            await server.create_zone(DNS_ZONE, {(f"www.{DNS_ZONE}", "A"): (300, ["192.0.2.10"])})
            yield server
        finally:
            await server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def knot_server() -> AsyncIterator[Knot]:
    """A fresh Knot DNS per test serving :data:`DNS_ZONE` with :data:`BIND_RECORDS`, updates
    allowed by its ACL for ``key`` only (``denied`` holds a key it knows but does not allow)."""
    workdir = make_workdir("cutover-knot-")
    try:
        server = await Knot.start(
            workdir,
            key=new_tsig_key(),
            denied=[new_tsig_key("denied-key.")],
            zone=DNS_ZONE,
            records=BIND_RECORDS,
        )
        try:
            yield server
        finally:
            await server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
