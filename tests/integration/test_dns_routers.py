"""The DNS routers against a real BIND 9 (``rfc2136``) and a real PowerDNS (``powerdns``).

What each router publishes is checked with plain dnspython queries to the server, not only
through the router's own read-back; the PowerDNS split is measured over thousands of real
UDP queries. Secrets must never show up in an error, its cause, or a log line.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import socket
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
import pytest
import structlog
from pydantic import ValidationError

from cutover.config import load_config
from cutover.errors import AdapterError, PermanentError, TransientError
from cutover.observability.logging import Redactor, configure_logging
from cutover.resource_pool import ResourcePool
from cutover.routers.dns_common import exchange, exchange_all
from cutover.routers.powerdns import PowerDNSRouter, PowerDNSSpec, lua_content
from cutover.routers.rfc2136 import Rfc2136Router, Rfc2136Spec
from cutover.testing import resource_pool
from demo.dnsservers import Bind, PowerDNS, find_binary, free_dns_port, new_tsig_key
from demo.knotdns import Knot
from demo.stack import Child, make_workdir
from tests.integration.conftest import DNS_ZONE

ROOT = Path(__file__).resolve().parents[2]
WWW = f"www.{DNS_ZONE}"
DUAL = f"dual.{DNS_ZONE}"
BLUE = ["192.0.2.10", "192.0.2.11"]
GREEN = ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
DUAL_BLUE = ["192.0.2.10", "2001:db8::b1"]
DUAL_GREEN = ["198.51.100.10", "198.51.100.11", "2001:db8::a1"]
QUERIES = 2000
TOLERANCE = 4.0  # percentage points


# --- helpers ------------------------------------------------------------------------------------


def hostport(server: str) -> tuple[str, int]:
    host, port = server.rsplit(":", 1)
    return host, int(port)


async def query(server: str, name: str, rdtype: str, *, udp: bool = False) -> dns.message.Message:
    """A plain query, as any client would send it."""
    host, port = hostport(server)
    q = dns.message.make_query(name, rdtype)
    if udp:
        return await dns.asyncquery.udp(q, host, port=port, timeout=2)
    return await dns.asyncquery.tcp(q, host, port=port, timeout=2)


async def rrset(server: str, name: str, rdtype: str) -> tuple[set[str], int | None]:
    """The addresses and TTL the server answers for ``name``/``rdtype``."""
    answer = await query(server, name, rdtype)
    assert answer.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(answer.rcode())
    found = answer.get_rrset(
        answer.answer, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
    )
    if found is None:
        return set(), None
    return {rd.to_text() for rd in found}, found.ttl


async def serial(server: str) -> int:
    answer = await query(server, DNS_ZONE, "SOA")
    return int(answer.answer[0][0].serial)


def write_secret(tmp_path: Path, secret: str, name: str = "tsig.secret") -> Path:
    path = tmp_path / name
    path.write_text(secret + "\n")
    return path


def everything_said(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """The error with its whole chain of causes, and every log line: where a secret must
    not be."""
    return "".join(traceback.format_exception(exc)) + caplog.text


# --- specs (no server) --------------------------------------------------------------------------

RFC2136 = {
    "type": "rfc2136",
    "name": "dns",
    "server": "127.0.0.1:53",
    "zone": "example.com.",
    "record": "checkout.example.com.",
    "ttl": 30,
    "tsig": {"name": "cutover-key.", "algorithm": "hmac-sha256", "secret_file": "/etc/x"},
    "blue": ["192.0.2.10", "192.0.2.11"],
    "green": ["198.51.100.10"],
}
POWERDNS = {
    "type": "powerdns",
    "name": "gslb",
    "api_url": "http://127.0.0.1:8081",
    "api_key_file": "/etc/cutover/pdns.key",
    "zone": "example.com.",
    "record": "www.example.com.",
    "ttl": 30,
    "blue": ["192.0.2.10"],
    "green": ["198.51.100.10"],
}


def test_specs_normalize_and_claim_the_record() -> None:
    spec = Rfc2136Spec.model_validate(
        {
            **RFC2136,
            "zone": "Example.com",
            "record": "Checkout.Example.com",
            "blue": ["2001:db8:0::2"],
            "green": ["2001:DB8::1"],
        },
        strict=True,
    )
    assert spec.zone == "Example.com." and spec.record == "Checkout.Example.com."
    assert spec.blue == ["2001:db8::2"] and spec.green == ["2001:db8::1"]
    assert spec.ttl == 30 and spec.tsig.name == "cutover-key."
    assert spec.claims() == {"dns:checkout.example.com."}
    # the frozen spec goes to the state store and comes back (the daemon's restart path)
    assert Rfc2136Spec.model_validate(spec.model_dump(mode="json"), strict=True) == spec
    pdns = PowerDNSSpec.model_validate(POWERDNS, strict=True)
    assert pdns.ttl == 30 and pdns.server_id == "localhost" and pdns.dns_server is None
    assert pdns.claims() == {"dns:www.example.com."}
    assert PowerDNSSpec.model_validate(pdns.model_dump(mode="json"), strict=True) == pdns


@pytest.mark.parametrize(
    ("base", "changes", "message"),
    [
        (RFC2136, {"record": "checkout.example.org."}, "not inside zone example.com."),
        (RFC2136, {"green": ["green1"]}, "'green1' is not an IPv4 or IPv6 address"),
        (RFC2136, {"green": ["2001:db8::1"]}, "blue has IPv4 (A) addresses but green has none"),
        (RFC2136, {"green": ["192.0.2.10"]}, "in both blue and green: 192.0.2.10"),
        (RFC2136, {"blue": ["192.0.2.1", "192.0.2.1"]}, "twice: 192.0.2.1"),
        (RFC2136, {"ttl": 0}, "greater than or equal to 1"),
        (RFC2136, {"server": "dns.example.com:53"}, "must be an IP address"),
        (RFC2136, {"server": "[::1]:99999"}, "port must be 1..65535"),
        (
            RFC2136,
            {"tsig": {"name": "k.", "secret_file": "/a", "secret_env": "B"}},
            "exactly one of secret_file or secret_env",
        ),
        (RFC2136, {"tsig": {"name": "k."}}, "exactly one of secret_file or secret_env"),
        (RFC2136, {"tsig": {"name": "k.", "secret": "c2VjcmV0"}}, "Extra inputs"),
        (RFC2136, {"tsig": {"name": "k.", "secret_env": "B", "algorithm": "hmac-md5"}}, "hmac"),
        (POWERDNS, {"api_key_env": "PDNS_KEY"}, "exactly one of api_key_file or api_key_env"),
        (POWERDNS, {"api_url": "127.0.0.1:8081"}, "http:// or https:// URL"),
        (POWERDNS, {"dns_server": "localhost"}, "must be an IP address"),
        (POWERDNS, {"server_id": "a/b"}, "PowerDNS server id"),
        (POWERDNS, {"timeout": 0}, "timeout must be greater than 0"),
    ],
)
def test_spec_errors(base: dict[str, Any], changes: dict[str, Any], message: str) -> None:
    cls: type[Rfc2136Spec | PowerDNSSpec] = Rfc2136Spec if base is RFC2136 else PowerDNSSpec
    with pytest.raises(ValidationError) as info:
        cls.model_validate({**base, **changes}, strict=True)
    assert message in str(info.value)


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "config" / "dns.example.yaml")
    types = {r.type for s in config.services.values() for r in s.routers}
    assert types == {"haproxy", "rfc2136", "powerdns"}


# --- BIND: shares -> RRsets ---------------------------------------------------------------------


def rfc2136_spec(bind: Bind | Knot | PowerDNS, secret_file: Path, **changes: Any) -> Rfc2136Spec:
    values: dict[str, Any] = {
        "type": "rfc2136",
        "name": "dns",
        "server": bind.server,
        "zone": DNS_ZONE,
        "record": WWW,
        "ttl": 30,
        "tsig": {
            "name": "cutover-key.",
            "algorithm": "hmac-sha256",
            "secret_file": str(secret_file),
        },
        "blue": BLUE,
        "green": GREEN,
        "timeout": "2s",
    }
    values.update(changes)
    return Rfc2136Spec.model_validate(values, strict=True)


def bind_router(
    resources: ResourcePool, bind: Bind, tmp_path: Path, **changes: Any
) -> Rfc2136Router:
    return rfc2136_spec(bind, write_secret(tmp_path, bind.key.secret), **changes).build(
        new="green", resources=resources
    )


async def test_bind_shares_publish_the_documented_rrsets(
    bind_server: Bind, tmp_path: Path, resources: ResourcePool
) -> None:
    router = bind_router(resources, bind_server, tmp_path)
    assert router.kind == "rfc2136" and router.name == "dns"
    serial0 = await serial(bind_server.server)
    await router.preflight()  # the signed no-op update changes nothing
    assert await serial(bind_server.server) == serial0
    reading = await router.observe()
    assert reading.share == 0.0
    assert reading.state == {"A": "192.0.2.10 192.0.2.11", "AAAA": "", "ttl": "300"}

    # (share, A RRset, address share): the 2 old addresses + the first k of 3 new ones
    steps = [
        (0, set(BLUE), 0.0),  # the same addresses, but TTL 300 -> 30: a change
        (25, {*BLUE, GREEN[0]}, 100 / 3),  # k=1: 33 % is nearer 25 % than k=2's 50 %
        (50, {*BLUE, *GREEN[:2]}, 50.0),  # k=2: exactly 50 %
        (100, set(GREEN), 100.0),
        (0, set(BLUE), 0.0),
    ]
    last = await serial(bind_server.server)
    for share, addresses, address_share in steps:
        await router.apply(share)
        got, ttl = await rrset(bind_server.server, WWW, "A")
        assert (got, ttl) == (addresses, 30), share
        assert (await rrset(bind_server.server, WWW, "AAAA"))[0] == set()
        now = await serial(bind_server.server)
        assert now == last + 1, f"one UPDATE per change bumps the serial once (share {share})"
        last = now
        reading = await router.observe()
        assert reading.state == router.expected(share)
        assert reading.share == pytest.approx(address_share)
        assert router.address_share(share) == pytest.approx(address_share)
        assert f"(asked {share}%)" in reading.detail and f"SOA serial {now}" in reading.detail
        print(f"share {share}: A {sorted(got)}, serial {now} ({reading.detail})")
    await router.apply(25)
    assert "address share 33.3% (asked 25%)" in (await router.observe()).detail


async def test_bind_dual_stack_changes_both_families_in_one_update(
    bind_server: Bind, tmp_path: Path, resources: ResourcePool
) -> None:
    router = bind_router(
        resources, bind_server, tmp_path, record=DUAL, blue=DUAL_BLUE, green=DUAL_GREEN
    )
    await router.preflight()
    assert (await router.observe()).state == {
        "A": "192.0.2.10",
        "AAAA": "2001:db8::b1",
        "ttl": "300",
    }
    steps = [
        # A: 1 old + k of 2 new; AAAA: 1 old + the 1 new; no family is ever left empty
        (50, {"192.0.2.10", "198.51.100.10"}, {"2001:db8::b1", "2001:db8::a1"}, 50.0),
        (75, {"192.0.2.10", *DUAL_GREEN[:2]}, {"2001:db8::b1", "2001:db8::a1"}, (200 / 3 + 50) / 2),
        (100, set(DUAL_GREEN[:2]), {"2001:db8::a1"}, 100.0),
        (0, {"192.0.2.10"}, {"2001:db8::b1"}, 0.0),
    ]
    for share, a, aaaa, address_share in steps:
        before = await serial(bind_server.server)
        await router.apply(share)
        assert await serial(bind_server.server) == before + 1  # both families, one UPDATE
        assert (await rrset(bind_server.server, DUAL, "A"))[0] == a
        assert (await rrset(bind_server.server, DUAL, "AAAA"))[0] == aaaa
        reading = await router.observe()
        assert reading.state == router.expected(share)
        assert reading.share == pytest.approx(address_share)
        if share == 75:
            assert "A 2/3 new, AAAA 1/2 new" in reading.detail


async def test_bind_ipv6_only_name(
    bind_server: Bind, tmp_path: Path, resources: ResourcePool
) -> None:
    blue, green = ["2001:db8::b1"], ["2001:db8::a1", "2001:db8::a2"]
    v6 = f"v6.{DNS_ZONE}"
    await raw_update(bind_server, lambda u: u.replace("v6", 300, "AAAA", *blue))
    router = bind_router(resources, bind_server, tmp_path, record=v6, blue=blue, green=green)
    await router.preflight()
    await router.apply(50)
    assert (await rrset(bind_server.server, v6, "AAAA"))[0] == {"2001:db8::b1", "2001:db8::a1"}
    assert (await rrset(bind_server.server, v6, "A"))[0] == set()
    reading = await router.observe()
    assert reading.state == {"A": "", "AAAA": "2001:db8::a1 2001:db8::b1", "ttl": "30"}
    assert reading.share == 50.0


async def test_bind_lower_ttl_republishes_with_the_configured_ttl(
    bind_server: Bind, tmp_path: Path, resources: ResourcePool
) -> None:
    router = bind_router(resources, bind_server, tmp_path, ttl=5)
    await router.preflight()
    before = await serial(bind_server.server)
    assert await rrset(bind_server.server, WWW, "A") == (set(BLUE), 300)
    assert await router.lower_ttl() == 300.0
    assert await rrset(bind_server.server, WWW, "A") == (set(BLUE), 5)  # same addresses
    assert await serial(bind_server.server) == before + 1
    assert await router.lower_ttl() == 0.0  # nothing left to lower
    assert await serial(bind_server.server) == before + 1
    assert (await router.observe()).state == router.expected(0)


# --- BIND: guards and errors --------------------------------------------------------------------


async def raw_update(bind: Bind, change: Callable[[dns.update.UpdateMessage], object]) -> None:
    """A hand edit with dnspython, signed with the server's key."""
    key = dns.tsig.Key(bind.key.name, bind.key.secret, dns.tsig.HMAC_SHA256)
    update = dns.update.UpdateMessage(DNS_ZONE, keyring=key)
    change(update)
    host, port = hostport(bind.server)
    answer = await dns.asyncquery.tcp(update, host, port=port, timeout=2)
    assert answer.rcode() == dns.rcode.NOERROR


async def nsupdate(bind: Bind, commands: str) -> None:
    """A hand edit with BIND's own ``nsupdate``, as an operator would make it."""
    host, port = hostport(bind.server)
    script = bind.workdir / "nsupdate.txt"
    script.write_text(f"server {host} {port}\nzone {DNS_ZONE}\n{commands}\nsend\n")
    argv = [find_binary("nsupdate"), "-k", str(bind.workdir / "tsig.key"), str(script)]
    child = await Child.spawn("nsupdate", argv, bind.workdir)
    try:
        async with asyncio.timeout(10):
            rc = await child.proc.wait()
    finally:
        await child.stop()
    assert rc == 0, child.log()


async def test_bind_concurrent_edit_blocks_a_forward_shift_but_not_a_rollback(
    bind_server: Bind, tmp_path: Path, resources: ResourcePool
) -> None:
    router = bind_router(resources, bind_server, tmp_path)
    await router.preflight()
    await router.apply(25)
    # someone adds an address by hand after our write
    await nsupdate(bind_server, f"update add {WWW} 30 IN A 203.0.113.66")
    assert "203.0.113.66" in (await rrset(bind_server.server, WWW, "A"))[0]
    before = await serial(bind_server.server)
    with pytest.raises(TransientError) as info:
        await router.apply(50)
    message = str(info.value)
    print(message)
    assert message.startswith(f"router 'dns': DNS server {bind_server.server}: setting 50% green")
    assert "changed since this router last read it (prerequisite failed: NXRRSET)" in message
    assert await serial(bind_server.server) == before  # nothing written
    with pytest.raises(TransientError):
        await router.apply(50)  # still guarded: nobody has read the name since
    assert "203.0.113.66" in (await rrset(bind_server.server, WWW, "A"))[0]

    # a rollback (share 0) overwrites the hand edit: reconciliation may always move to old
    await router.apply(0)
    assert (await rrset(bind_server.server, WWW, "A"))[0] == set(BLUE)
    assert (await router.observe()).state == router.expected(0)

    # a hand-added family is guarded too ("RRset does not exist", RFC 2136 2.4.3)
    await router.apply(25)
    await raw_update(bind_server, lambda u: u.add("www", 30, "AAAA", "2001:db8::66"))
    with pytest.raises(TransientError, match="prerequisite failed: YXRRSET"):
        await router.apply(50)
    reading = await router.observe()  # the engine's read-back: it now sees the drift
    assert reading.state != router.expected(25) and reading.state["AAAA"] == "2001:db8::66"


async def test_bind_wrong_secret_is_a_clear_permanent_error(
    bind_server: Bind, tmp_path: Path, caplog: pytest.LogCaptureFixture, resources: ResourcePool
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = new_tsig_key().secret
    router = rfc2136_spec(bind_server, write_secret(tmp_path, wrong)).build(
        new="green", resources=resources
    )
    with pytest.raises(PermanentError) as at_preflight:
        await router.preflight()
    with pytest.raises(PermanentError) as at_apply:
        await router.apply(25)
    for info in (at_preflight, at_apply):
        message = str(info.value)
        print(message)
        assert f"router 'dns': DNS server {bind_server.server}" in message
        assert "TSIG key 'cutover-key.'" in message and "BADSIG" in message
        for secret in (wrong, bind_server.key.secret):
            assert secret not in everything_said(info.value, caplog)
    assert wrong not in repr(router) + repr(router._spec)
    assert (await rrset(bind_server.server, WWW, "A"))[0] == set(BLUE)  # nothing changed

    # a key name or algorithm the server does not know: BADKEY
    for tsig in (
        {
            "name": "no-such-key.",
            "secret_file": str(write_secret(tmp_path, bind_server.key.secret)),
        },
        {
            "name": "cutover-key.",
            "algorithm": "hmac-sha512",
            "secret_file": str(tmp_path / "tsig.secret"),
        },
    ):
        other = rfc2136_spec(bind_server, tmp_path, tsig=tsig).build(
            new="green", resources=resources
        )
        with pytest.raises(PermanentError, match="BADKEY") as info:
            await other.preflight()
        assert bind_server.key.secret not in everything_said(info.value, caplog)


async def test_bind_secret_sources(
    bind_server: Bind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resources: ResourcePool
) -> None:
    # an environment variable
    monkeypatch.setenv("CUTOVER_TEST_TSIG", bind_server.key.secret)
    tsig = {"name": "cutover-key.", "secret_env": "CUTOVER_TEST_TSIG"}
    await (
        rfc2136_spec(bind_server, tmp_path, tsig=tsig)
        .build(new="green", resources=resources)
        .preflight()
    )
    # a BIND key file, as tsig-keygen writes it
    tsig = {"name": "cutover-key.", "secret_file": str(bind_server.workdir / "tsig.key")}
    await (
        rfc2136_spec(bind_server, tmp_path, tsig=tsig)
        .build(new="green", resources=resources)
        .preflight()
    )
    # missing: named, not guessed
    monkeypatch.delenv("CUTOVER_TEST_TSIG")
    problems = [
        ({"name": "k.", "secret_env": "CUTOVER_TEST_TSIG"}, "variable CUTOVER_TEST_TSIG"),
        ({"name": "k.", "secret_file": str(tmp_path / "nope")}, f"file {tmp_path / 'nope'}"),
        ({"name": "k.", "secret_file": str(write_secret(tmp_path, "not*base64", "bad"))}, "base64"),
    ]
    for tsig, where in problems:
        router = rfc2136_spec(bind_server, tmp_path, tsig=tsig).build(
            new="green", resources=resources
        )
        with pytest.raises(PermanentError, match="router 'dns'") as info:
            await router.preflight()
        assert where in str(info.value)
        assert "not*base64" not in str(info.value)


async def test_bind_preflight_refusals(
    bind_server: Bind, tmp_path: Path, resources: ResourcePool
) -> None:
    async def refusal(error: type[AdapterError], **changes: Any) -> str:
        router = bind_router(resources, bind_server, tmp_path, **changes)
        with pytest.raises(error) as info:
            await router.preflight()
        print(info.value)
        return str(info.value)

    assert "no A or AAAA record" in await refusal(PermanentError, record=f"none.{DNS_ZONE}")
    assert "NOTAUTH" in await refusal(PermanentError, zone="other.test.", record="www.other.test.")
    down = f"127.0.0.1:{free_dns_port()}"
    assert "connection refused" in await refusal(TransientError, server=down)
    await raw_update(bind_server, lambda u: u.add("www", 300, "A", "203.0.113.5"))
    message = await refusal(PermanentError)
    assert "publishes 203.0.113.5, in neither blue nor green" in message


class FakeDns:
    """A TCP DNS server that answers every query authoritatively with an empty NOERROR.

    ``reverse`` answers the queries that came in one read in reverse order (as RFC 7766 lets a
    server do); ``one_per_connection`` closes after the first answer, as old servers do.
    Broken servers: ``silent`` never answers, ``closes`` closes without answering, and
    ``wrong_id`` answers with another message id."""

    def __init__(
        self,
        *,
        reverse: bool = False,
        one_per_connection: bool = False,
        silent: bool = False,
        closes: bool = False,
        wrong_id: bool = False,
    ) -> None:
        self.reverse = reverse
        self.one_per_connection = one_per_connection
        self.silent = silent
        self.closes = closes
        self.wrong_id = wrong_id
        self.connections = 0
        self._handlers: list[asyncio.Task[object]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return "127.0.0.1", self._server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._handlers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        self.connections += 1
        try:
            data = b""
            while not data or len(data) < 2 + int.from_bytes(data[:2], "big"):
                data += await reader.read(65536)
            queries = []
            while data:
                size = int.from_bytes(data[:2], "big")
                queries.append(dns.message.from_wire(data[2 : 2 + size]))
                data = data[2 + size :]
            if self.silent:
                await reader.read()  # until the client gives up and closes
                return
            if self.closes:
                return
            if self.reverse:
                queries.reverse()
            for q in queries[:1] if self.one_per_connection else queries:
                answer = dns.message.make_response(q)
                answer.flags |= dns.flags.AA
                answer.id ^= 0xFFFF if self.wrong_id else 0
                writer.write(answer.to_wire(prepend_length=True))
            await writer.drain()
        finally:
            writer.close()


@pytest.mark.parametrize("server", ["reverse", "one_per_connection"])
async def test_read_back_queries_share_one_connection_when_the_server_lets_them(
    server: str,
) -> None:
    queries = [
        dns.message.make_query(name, rdtype)
        for name, rdtype in ((DNS_ZONE, "SOA"), (WWW, "A"), (WWW, "AAAA"))
    ]
    fake = FakeDns(**{server: True})
    async with fake as address:
        answers = await exchange_all(queries, address, within=2.0, who="router 'dns'")
    assert [a.question for a in answers] == [q.question for q in queries]
    assert all(q.is_response(a) for q, a in zip(queries, answers, strict=True))
    # pipelined on one connection; a server that answers once per connection is asked the
    # rest on a connection each
    assert fake.connections == (1 if server == "reverse" else 3)


@pytest.mark.parametrize(
    ("server", "error"),
    [
        ("silent", "no answer within 0.3s"),
        ("closes", "closed the connection without answering"),
        ("wrong_id", "malformed answer .A DNS query response does not respond"),
    ],
)
async def test_a_broken_answer_over_tcp_is_transient(server: str, error: str) -> None:
    query = dns.message.make_query(WWW, "A")
    async with FakeDns(**{server: True}) as address:
        for send in (
            exchange(query, address, within=0.3, who="router 'dns'"),
            exchange_all([query, query], address, within=0.3, who="router 'dns'"),
        ):
            with pytest.raises(TransientError, match=rf"router 'dns': DNS server .*{error}"):
                await send


async def test_a_query_over_udp_without_answer_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        query = dns.message.make_query(WWW, "A")
        with pytest.raises(TransientError, match=r"DNS server .* no answer within 0.2s"):
            await exchange(query, silent.getsockname(), within=0.2, who="r", udp=True)
        assert silent.recv(512) == query.to_wire()  # it was asked


async def test_read_back_queries_to_a_closed_port_are_transient() -> None:
    query = dns.message.make_query(WWW, "A")
    down = ("127.0.0.1", free_dns_port())
    with pytest.raises(TransientError, match=r"router 'dns': DNS server .* connection refused"):
        await exchange_all([query], down, within=2.0, who="router 'dns'")


async def test_rfc2136_against_powerdns(
    pdns_server: PowerDNS, tmp_path: Path, resources: ResourcePool
) -> None:
    """The same router drives PowerDNS over RFC 2136, whose bad-TSIG answer is unsigned."""
    key = new_tsig_key()
    await pdns_server.allow_update(DNS_ZONE, key)
    spec = rfc2136_spec(pdns_server, write_secret(tmp_path, key.secret), blue=["192.0.2.10"])
    router = spec.build(new="green", resources=resources)
    before = await serial(pdns_server.server)
    await router.preflight()  # the signed no-op update changes nothing here either
    assert await serial(pdns_server.server) == before
    await router.apply(50)
    assert (await rrset(pdns_server.server, WWW, "A"))[0] == {"192.0.2.10", "198.51.100.10"}
    assert await serial(pdns_server.server) == before + 1
    assert (await router.observe()).state == router.expected(50)
    wrong = rfc2136_spec(pdns_server, write_secret(tmp_path, new_tsig_key().secret, "wrong"))
    with pytest.raises(PermanentError, match="REFUSED, unsigned: ") as info:
        await wrong.build(new="green", resources=resources).preflight()
    assert pdns_server.server in str(info.value) and key.secret not in str(info.value)


# --- PowerDNS -----------------------------------------------------------------------------------


def pdns_spec(pdns: PowerDNS, key_file: Path, **changes: Any) -> PowerDNSSpec:
    values: dict[str, Any] = {
        "type": "powerdns",
        "name": "gslb",
        "api_url": pdns.api_url,
        "api_key_file": str(key_file),
        "zone": DNS_ZONE,
        "record": WWW,
        "ttl": 5,
        "dns_server": pdns.server,
        "blue": ["192.0.2.10"],
        "green": ["198.51.100.10"],
    }
    values.update(changes)
    return PowerDNSSpec.model_validate(values, strict=True)


@pytest.fixture
async def pdns_router(
    pdns_server: PowerDNS, tmp_path: Path, resources: ResourcePool
) -> AsyncIterator[PowerDNSRouter]:
    router = pdns_spec(pdns_server, write_secret(tmp_path, pdns_server.api_key, "pdns.key")).build(
        new="green", resources=resources
    )
    try:
        yield router
    finally:
        await router.aclose()


async def rrsets(pdns: PowerDNS, name: str = WWW) -> dict[str, tuple[int, list[str]]]:
    """``{type: (ttl, contents)}`` of ``name`` as the API lists it."""
    status, zone = await pdns.api("GET", f"/zones/{DNS_ZONE}")
    assert status == 200
    return {
        r["type"]: (r["ttl"], sorted(x["content"] for x in r["records"]))
        for r in zone["rrsets"]
        if r["name"] == name
    }


async def measure(
    server: str, name: str, n: int, rdtype: str = "A", conc: int = 20
) -> collections.Counter[str]:
    """``n`` real UDP queries, ``conc`` in flight; counts each answered address."""
    counts: collections.Counter[str] = collections.Counter()
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            answer = await query(server, name, rdtype, udp=True)
            assert answer.rcode() == dns.rcode.NOERROR
            for found in answer.answer:
                counts.update(rd.to_text() for rd in found)

    await asyncio.gather(*(worker() for _ in range(conc)))
    return counts


async def test_powerdns_split_follows_the_share(
    pdns_server: PowerDNS, pdns_router: PowerDNSRouter
) -> None:
    router = pdns_router
    assert router.kind == "powerdns" and router.name == "gslb"
    await router.preflight()
    assert (await router.observe()).share == 0.0
    for share in (10, 50, 90):
        await router.apply(share)
        weights = {"192.0.2.10": 100 - share, "198.51.100.10": share}
        g = 10 if share != 50 else 50
        content = lua_content("A", {a: w // g for a, w in weights.items()})
        assert await rrsets(pdns_server) == {"LUA": (5, [content])}  # no plain A left
        reading = await router.observe()
        assert reading.state == router.expected(share) and reading.share == share
        t0 = time.monotonic()
        counts = await measure(pdns_server.server, WWW, QUERIES)
        took = time.monotonic() - t0
        green = 100.0 * counts["198.51.100.10"] / QUERIES
        print(f"share {share}: {dict(counts)} -> green {green:.2f} % ({took:.2f}s)")
        assert sum(counts.values()) == QUERIES and set(counts) <= {"192.0.2.10", "198.51.100.10"}
        assert abs(green - share) <= TOLERANCE
    for share, address in ((100, "198.51.100.10"), (0, "192.0.2.10")):
        await router.apply(share)
        assert await rrsets(pdns_server) == {"A": (5, [address])}  # plain A, LUA deleted
        assert await measure(pdns_server.server, WWW, 100) == {address: 100}
        reading = await router.observe()
        assert reading.state == router.expected(share) and reading.share == share


async def test_powerdns_dual_stack_and_other_lua_records(
    pdns_server: PowerDNS, tmp_path: Path, resources: ResourcePool
) -> None:
    dual = f"dual.{DNS_ZONE}"
    txt = "TXT \"'kept as it is'\""
    status, _ = await pdns_server.api(
        "PATCH",
        f"/zones/{DNS_ZONE}",
        {
            "rrsets": [
                {"name": dual, "type": t, "ttl": 60, "changetype": "REPLACE", "records": r}
                for t, r in (
                    ("A", [{"content": "192.0.2.10", "disabled": False}]),
                    ("AAAA", [{"content": "2001:db8::b1", "disabled": False}]),
                    ("LUA", [{"content": txt, "disabled": False}]),
                )
            ]
        },
    )
    assert status == 204
    key = write_secret(tmp_path, pdns_server.api_key, "pdns.key")
    spec = pdns_spec(
        pdns_server, key, record=dual, blue=DUAL_BLUE, green=["198.51.100.10", "2001:db8::a1"]
    )
    router = spec.build(new="green", resources=resources)
    try:
        await router.preflight()
        await router.apply(25)
        assert await rrsets(pdns_server, dual) == {
            "LUA": (
                5,
                sorted(
                    [
                        lua_content("A", {"192.0.2.10": 3, "198.51.100.10": 1}),
                        lua_content("AAAA", {"2001:db8::b1": 3, "2001:db8::a1": 1}),
                        txt,
                    ]
                ),
            )
        }
        reading = await router.observe()
        assert reading.state == router.expected(25) and reading.share == 25.0
        assert reading.state["LUA AAAA"] == "2001:db8::a1=1 2001:db8::b1=3"
        counts = await measure(pdns_server.server, dual, 400, rdtype="AAAA")
        assert set(counts) == {"2001:db8::b1", "2001:db8::a1"} and sum(counts.values()) == 400
        await router.apply(100)
        assert await rrsets(pdns_server, dual) == {
            "A": (5, ["198.51.100.10"]),
            "AAAA": (5, ["2001:db8::a1"]),
            "LUA": (5, [txt]),  # not ours: kept
        }
        assert (await router.observe()).state == router.expected(100)
    finally:
        await router.aclose()


async def test_powerdns_lower_ttl(pdns_server: PowerDNS, pdns_router: PowerDNSRouter) -> None:
    await pdns_router.preflight()
    assert await rrset(pdns_server.server, WWW, "A") == ({"192.0.2.10"}, 300)
    assert await pdns_router.lower_ttl() == 300.0
    assert await rrset(pdns_server.server, WWW, "A") == ({"192.0.2.10"}, 5)
    assert await pdns_router.lower_ttl() == 0.0
    assert (await pdns_router.observe()).state == pdns_router.expected(0)


async def test_powerdns_wrong_api_key_is_a_clear_permanent_error(
    pdns_server: PowerDNS, tmp_path: Path, caplog: pytest.LogCaptureFixture, resources: ResourcePool
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + pdns_server.api_key[::-1]
    key_file = write_secret(tmp_path, wrong, "pdns.key")
    router = pdns_spec(pdns_server, key_file).build(new="green", resources=resources)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            router.preflight,
            lambda: router.apply(50),
            router.observe,
        ]
        for call in calls:
            with pytest.raises(PermanentError) as info:
                await call()
            message = str(info.value)
            print(message)
            assert message.startswith(f"router 'gslb': PowerDNS API {pdns_server.api_url}")
            assert "the API key was rejected (401)" in message and str(key_file) in message
            for secret in (wrong, pdns_server.api_key):
                assert secret not in everything_said(info.value, caplog)
        assert wrong not in repr(router)
    finally:
        await router.aclose()


async def test_powerdns_preflight_refusals(
    pdns_server: PowerDNS, tmp_path: Path, resources: ResourcePool
) -> None:
    key = write_secret(tmp_path, pdns_server.api_key, "pdns.key")

    async def refusal(error: type[AdapterError], spec: PowerDNSSpec) -> str:
        router = spec.build(new="green", resources=resources)
        try:
            with pytest.raises(error) as info:
                await router.preflight()
        finally:
            await router.aclose()
        print(info.value)
        return str(info.value)

    message = await refusal(
        PermanentError, pdns_spec(pdns_server, key, zone="nope.test.", record="www.nope.test.")
    )
    assert "no zone 'nope.test.'" in message
    message = await refusal(PermanentError, pdns_spec(pdns_server, key, server_id="other"))
    assert "no server id 'other'" in message
    message = await refusal(PermanentError, pdns_spec(pdns_server, key, record=f"none.{DNS_ZONE}"))
    assert "no A or AAAA record" in message
    down = f"http://127.0.0.1:{free_dns_port()}"
    message = await refusal(TransientError, pdns_spec(pdns_server, key, api_url=down))
    assert "cannot connect" in message

    workdir = make_workdir("cutover-pdns-nolua-")
    no_lua = await PowerDNS.start(workdir, lua_records=False)
    try:
        await no_lua.create_zone(DNS_ZONE, {(WWW, "A"): (300, ["192.0.2.10"])})
        key = write_secret(tmp_path, no_lua.api_key, "nolua.key")
        message = await refusal(PermanentError, pdns_spec(no_lua, key))
        assert "LUA records are disabled (enable-lua-records=no)" in message
    finally:
        await no_lua.stop()


async def hand_edit(pdns: PowerDNS, rtype: str, content: str) -> None:
    """What an operator might do through the API: ``www``'s ``rtype`` RRset becomes one
    record."""
    record = {"content": content, "disabled": False}
    rrset = {"name": WWW, "type": rtype, "ttl": 5, "changetype": "REPLACE", "records": [record]}
    assert (await pdns.api("PATCH", f"/zones/{DNS_ZONE}", {"rrsets": [rrset]}))[0] == 204


async def test_powerdns_dns_readback_catches_a_lua_record_that_fails(
    pdns_server: PowerDNS, pdns_router: PowerDNSRouter
) -> None:
    """The API takes any Lua code; only a real query shows that it answers SERVFAIL."""
    await pdns_router.preflight()
    await hand_edit(pdns_server, "LUA", "A \"pickwrandom({{1, '192.0.2.10'}\"")
    with pytest.raises(TransientError, match="SERVFAIL") as info:
        await pdns_router.observe()
    assert pdns_server.server in str(info.value)
    await pdns_router.apply(0)  # a rollback repairs it
    reading = await pdns_router.observe()
    assert reading.state == pdns_router.expected(0) and reading.share == 0.0


async def test_powerdns_read_back_also_asks_dns_for_a_family_only_the_record_has(
    pdns_server: PowerDNS, pdns_router: PowerDNSRouter
) -> None:
    """The colors are IPv4 only, so the read-back's early DNS query is for A; an AAAA added by
    hand shows in the API read, is asked for then, and reads as drift."""
    await pdns_router.preflight()
    await hand_edit(pdns_server, "AAAA", "2001:db8::5")
    reading = await pdns_router.observe()
    assert reading.state["AAAA"] == "2001:db8::5"
    assert reading.state != pdns_router.expected(0)
    assert "answered A 192.0.2.10, AAAA 2001:db8::5" in reading.detail


# --- secrets in the daemon's logs ---------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[tuple[io.StringIO, Redactor]]:
    """The daemon's logging set-up, writing into a buffer (restored afterwards), and its
    redactor: the secret sink of the daemon's resources."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    yield buffer, configure_logging("debug", stream=buffer)
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_loaded_secrets_are_masked_in_the_daemons_logs(
    bind_server: Bind,
    pdns_server: PowerDNS,
    tmp_path: Path,
    json_logs: tuple[io.StringIO, Redactor],
) -> None:
    buffer, redactor = json_logs
    # the TSIG secret from a BIND key file: both the file's text and the key's base64 count
    tsig = {"name": "cutover-key.", "secret_file": str(bind_server.workdir / "tsig.key")}
    pdns = pdns_spec(pdns_server, write_secret(tmp_path, pdns_server.api_key, "pdns.key"))
    async with resource_pool(redactor) as resources:  # as the daemon hands it its redactor
        rfc2136 = rfc2136_spec(bind_server, tmp_path, tsig=tsig).build(
            new="green", resources=resources
        )
        await rfc2136.preflight()
        router = pdns.build(new="green", resources=resources)
        try:
            await router.preflight()
        finally:
            await router.aclose()
    key = dns.tsig.Key(bind_server.key.name, bind_server.key.secret, dns.tsig.HMAC_SHA256)
    log = structlog.get_logger()
    log.info("careless", what=f"{key!r} {pdns_server.api_key}")  # repr(Key) shows the secret
    try:
        raise ValueError(f"bad {bind_server.key.secret}")
    except ValueError:
        log.exception("update failed")
    logs = buffer.getvalue()
    assert bind_server.key.secret not in logs and pdns_server.api_key not in logs, logs
    assert logs.count("[redacted]") >= 3
