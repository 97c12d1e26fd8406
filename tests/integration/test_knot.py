"""The ``rfc2136`` router against a real Knot DNS (``knotd``), beside BIND 9 and PowerDNS.

What the router publishes is measured with real DNS queries to the server (every answer
counted), not only through the router's own read-back. Hand edits are made with Knot's own
``knsupdate``, as an operator would. The error texts are checked on all three servers: each
answers the same problem with another code (NOTAUTH + BADKEY on Knot for an ACL denial, where
BIND and PowerDNS answer REFUSED), so a message shows the rcode and every cause that fits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import pytest

from cutover.errors import PermanentError, TransientError
from cutover.resource_pool import ResourcePool
from cutover.routers.rfc2136 import Rfc2136Router
from demo.dnsservers import Bind, PowerDNS, new_tsig_key
from demo.knotdns import Knot, knot_binary
from demo.stack import Child
from tests.integration.conftest import DNS_ZONE
from tests.integration.test_dns_routers import (
    BLUE,
    DUAL,
    DUAL_BLUE,
    DUAL_GREEN,
    GREEN,
    WWW,
    hostport,
    measure,
    rfc2136_spec,
    rrset,
    serial,
    write_secret,
)
from tests.integration.test_webhooks import until

#: Real UDP queries per measured share; each answer carries the whole RRset.
QUERIES = 200


def knot_router(
    resources: ResourcePool, knot: Knot, tmp_path: Path, **changes: Any
) -> Rfc2136Router:
    secret = write_secret(tmp_path, knot.key.secret)
    return rfc2136_spec(knot, secret, **changes).build(new="green", resources=resources)


async def answered_share(server: str, name: str = WWW) -> tuple[float, set[str]]:
    """Green's share of the addresses in :data:`QUERIES` real answers, and the addresses."""
    counts = await measure(server, name, QUERIES)
    green = sum(n for address, n in counts.items() if address in GREEN)
    total = sum(counts.values())
    return 100.0 * green / total, set(counts)


async def knsupdate(knot: Knot, commands: str) -> None:
    """A hand edit with Knot's ``knsupdate``, signed with the server's key."""
    host, port = hostport(knot.server)
    script = knot.workdir / "knsupdate.txt"
    script.write_text(f"server {host} {port}\nzone {DNS_ZONE}\n{commands}\nsend\n")
    argv = [knot_binary("knsupdate"), "-k", str(knot.key_file), str(script)]
    child = await Child.spawn("knsupdate", argv, knot.workdir)
    try:
        async with asyncio.timeout(10):
            rc = await child.proc.wait()
    finally:
        await child.stop()
    assert rc == 0, child.log()


# --- shares -> RRsets, measured -----------------------------------------------------------------


async def test_knot_shares_publish_the_rrsets_that_answers_count(
    knot_server: Knot, tmp_path: Path, resources: ResourcePool
) -> None:
    router = knot_router(resources, knot_server, tmp_path)
    serial0 = await serial(knot_server.server)
    await router.preflight()  # the signed no-op update changes nothing on Knot either
    assert await serial(knot_server.server) == serial0
    assert (await router.observe()).state == {
        "A": "192.0.2.10 192.0.2.11",
        "AAAA": "",
        "ttl": "300",
    }

    last = serial0
    for share, addresses, address_share in [
        (25, {*BLUE, GREEN[0]}, 100 / 3),
        (50, {*BLUE, *GREEN[:2]}, 50.0),
        (100, set(GREEN), 100.0),
        (0, set(BLUE), 0.0),  # the rollback: all old at once
    ]:
        await router.apply(share)
        now = await serial(knot_server.server)
        assert now == last + 1, f"one UPDATE per change bumps the serial once (share {share})"
        last = now
        measured, answered = await answered_share(knot_server.server)
        print(f"share {share}: {QUERIES} answers, green {measured:.1f}% of {sorted(answered)}")
        assert answered == addresses
        assert measured == pytest.approx(address_share)
        assert (await rrset(knot_server.server, WWW, "A"))[1] == 30
        reading = await router.observe()
        assert reading.state == router.expected(share)
        assert reading.share == pytest.approx(address_share)
        assert f"(asked {share}%)" in reading.detail and f"SOA serial {now}" in reading.detail


async def test_knot_dual_stack_and_ttl(
    knot_server: Knot, tmp_path: Path, resources: ResourcePool
) -> None:
    router = knot_router(
        resources, knot_server, tmp_path, record=DUAL, blue=DUAL_BLUE, green=DUAL_GREEN
    )
    await router.preflight()
    assert await router.lower_ttl() == 300.0  # same addresses, the configured TTL
    assert await rrset(knot_server.server, DUAL, "A") == ({"192.0.2.10"}, 30)
    before = await serial(knot_server.server)
    await router.apply(50)
    assert await serial(knot_server.server) == before + 1  # both families, one UPDATE
    assert (await rrset(knot_server.server, DUAL, "A"))[0] == {"192.0.2.10", "198.51.100.10"}
    assert (await rrset(knot_server.server, DUAL, "AAAA"))[0] == {"2001:db8::b1", "2001:db8::a1"}
    assert (await router.observe()).state == router.expected(50)


async def test_knot_key_file_is_a_secret_source(
    knot_server: Knot, tmp_path: Path, resources: ResourcePool
) -> None:
    # the key file the server includes, as `keymgr -t` writes it (a comment line, then YAML)
    assert knot_server.server_key_file.read_text().startswith("# hmac-sha256:cutover-key.:")
    tsig = {"name": knot_server.key.name, "secret_file": str(knot_server.server_key_file)}
    router = rfc2136_spec(knot_server, tmp_path, tsig=tsig).build(new="green", resources=resources)
    await router.preflight()
    await router.apply(50)
    assert (await answered_share(knot_server.server))[0] == 50.0


# --- drift, rollback, restart -------------------------------------------------------------------


async def test_knot_hand_edit_blocks_a_forward_shift_but_not_a_rollback(
    knot_server: Knot, tmp_path: Path, resources: ResourcePool
) -> None:
    router = knot_router(resources, knot_server, tmp_path)
    await router.preflight()
    await router.apply(25)
    await knsupdate(knot_server, f"update add {WWW} 30 IN A 203.0.113.66")
    assert "203.0.113.66" in (await answered_share(knot_server.server))[1]
    before = await serial(knot_server.server)
    with pytest.raises(TransientError) as info:
        await router.apply(50)
    print(info.value)
    assert "changed since this router last read it (prerequisite failed: NXRRSET)" in str(
        info.value
    )
    assert await serial(knot_server.server) == before  # nothing written
    reading = await router.observe()  # the engine's read-back sees what it did not write
    assert reading.state != router.expected(25) and "203.0.113.66" in reading.state["A"]
    assert "1 address(es) in neither color" in reading.detail

    await router.apply(0)  # a rollback overwrites the hand edit
    assert (await answered_share(knot_server.server)) == (0.0, set(BLUE))

    # a hand-added family is guarded too (RFC 2136 2.4.3, "RRset does not exist")
    await router.apply(25)
    await knsupdate(knot_server, f"update add {WWW} 30 IN AAAA 2001:db8::66")
    with pytest.raises(TransientError, match="prerequisite failed: YXRRSET"):
        await router.apply(50)


async def test_knot_restart_mid_cutover_the_router_recovers(
    knot_server: Knot, tmp_path: Path, resources: ResourcePool
) -> None:
    router = knot_router(resources, knot_server, tmp_path)
    await router.preflight()
    await router.apply(25)
    await knot_server.stop()
    # while knotd is down: transient, so the engine retries (apply_timeout, rollback backoff)
    with pytest.raises(TransientError, match="connection refused"):
        await router.apply(50)
    with pytest.raises(TransientError, match="connection refused"):
        await router.observe()

    await knot_server.restart()
    reading = await router.observe()  # the update survived in Knot's journal
    assert reading.state == router.expected(25)
    assert (await answered_share(knot_server.server))[0] == pytest.approx(100 / 3)
    await router.apply(50)  # the forward guard still holds what it last wrote
    assert (await answered_share(knot_server.server)) == (50.0, {*BLUE, *GREEN[:2]})
    await router.apply(0)
    assert (await answered_share(knot_server.server)) == (0.0, set(BLUE))


# --- error texts: the rcode and every cause that fits -------------------------------------------


async def refused(router: Rfc2136Router) -> str:
    """The message of a preflight the server refuses (permanent: no retry)."""
    with pytest.raises(PermanentError) as info:
        await router.preflight()
    print(info.value)
    return str(info.value)


def causes(zone: str, key: str = "cutover-key.") -> dict[str, str]:
    return {
        "not served": f"the server does not serve zone {zone} as a primary",
        "denied": f"the update policy/ACL of zone {zone} does not allow key {key!r}",
        "unknown": f"the server knows no TSIG key {key!r} with algorithm hmac-sha256",
        "secret": f"the secret of TSIG key {key!r} differs from the server's",
    }


async def test_knot_error_texts(
    knot_server: Knot, tmp_path: Path, caplog: pytest.LogCaptureFixture, resources: ResourcePool
) -> None:
    caplog.set_level(logging.DEBUG)
    where = f"router 'dns': DNS server {knot_server.server}: signed no-op update"

    # the ACL does not name this key (Knot answers so, where BIND and PowerDNS say REFUSED)
    (denied,) = knot_server.denied
    tsig = {"name": denied.name, "secret_file": str(write_secret(tmp_path, denied.secret, "d"))}
    message = await refused(knot_router(resources, knot_server, tmp_path, tsig=tsig))
    said = causes(DNS_ZONE, denied.name)
    assert message.startswith(where) and "NOTAUTH, TSIG error BADKEY: " in message
    assert said["unknown"] in message and said["denied"] in message
    assert denied.secret not in message

    # a key it does not know: the same answer, so the same causes
    tsig = {"name": "no-such-key.", "secret_file": str(write_secret(tmp_path, denied.secret))}
    message = await refused(knot_router(resources, knot_server, tmp_path, tsig=tsig))
    said = causes(DNS_ZONE, "no-such-key.")
    assert "NOTAUTH, TSIG error BADKEY: " in message
    assert said["unknown"] in message and said["denied"] in message

    # another secret: BADSIG has one cause
    wrong = new_tsig_key().secret
    router = rfc2136_spec(knot_server, write_secret(tmp_path, wrong)).build(
        new="green", resources=resources
    )
    message = await refused(router)
    assert message.endswith(f"NOTAUTH, TSIG error BADSIG: {causes(DNS_ZONE)['secret']}")

    # a zone it does not serve: an unsigned NOTAUTH
    message = await refused(
        knot_router(resources, knot_server, tmp_path, zone="other.test.", record="www.other.test.")
    )
    said = causes("other.test.")
    assert "NOTAUTH, unsigned: " + said["not served"] in message
    assert said["unknown"] in message

    for secret in (wrong, knot_server.key.secret, denied.secret):
        assert secret not in caplog.text
    assert (await answered_share(knot_server.server)) == (0.0, set(BLUE))  # nothing changed


async def reload_bind(bind: Bind, old: str, new: str) -> None:
    """Edit named.conf and SIGHUP named (no rndc channel), until it has reloaded."""
    conf = bind.workdir / "named.conf"
    text = conf.read_text()
    assert old in text
    conf.write_text(text.replace(old, new))
    reloads = bind.log().count("reloading configuration succeeded")
    bind.child.proc.send_signal(signal.SIGHUP)
    await until(lambda: bind.log().count("reloading configuration succeeded") > reloads, 10.0)


async def test_bind_error_texts(bind_server: Bind, tmp_path: Path, resources: ResourcePool) -> None:
    router = rfc2136_spec(bind_server, write_secret(tmp_path, bind_server.key.secret)).build(
        new="green", resources=resources
    )
    await router.preflight()
    # a zone without an update policy for the key: REFUSED, signed (the key was verified)
    await reload_bind(
        bind_server, f'allow-update {{ key "{bind_server.key.name}"; }}', "allow-update { none; }"
    )
    message = await refused(router)
    said = causes(DNS_ZONE)
    assert f"REFUSED: {said['denied']} (from this host); or {said['not served']}" in message
    assert said["unknown"] not in message

    # a zone it does not serve: NOTAUTH, signed, so the key is fine and only the zone is left
    other = {"zone": "other.test.", "record": "www.other.test."}
    message = await refused(
        rfc2136_spec(bind_server, tmp_path / "tsig.secret", **other).build(
            new="green", resources=resources
        )
    )
    assert message.endswith(f"NOTAUTH: {causes('other.test.')['not served']}")

    # an unknown key: NOTAUTH + BADKEY, as on Knot
    tsig = {"name": "no-such-key.", "secret_file": str(tmp_path / "tsig.secret")}
    message = await refused(
        rfc2136_spec(bind_server, tmp_path, tsig=tsig).build(new="green", resources=resources)
    )
    said = causes(DNS_ZONE, "no-such-key.")
    assert "NOTAUTH, TSIG error BADKEY: " in message
    assert said["unknown"] in message and said["denied"] in message


async def test_powerdns_error_texts(
    pdns_server: PowerDNS, tmp_path: Path, resources: ResourcePool
) -> None:
    key = new_tsig_key()
    await pdns_server.allow_update(DNS_ZONE, key)
    secret_file = write_secret(tmp_path, key.secret)
    # an unknown key: an unsigned REFUSED, which fits several causes
    tsig = {"name": "no-such-key.", "secret_file": str(secret_file)}
    message = await refused(
        rfc2136_spec(pdns_server, tmp_path, tsig=tsig).build(new="green", resources=resources)
    )
    said = causes(DNS_ZONE, "no-such-key.")
    assert "REFUSED, unsigned: " in message
    assert all(said[c] in message for c in ("unknown", "secret", "denied", "not served"))
    # a zone it does not serve: NOTAUTH, signed
    other = {"zone": "other.test.", "record": "www.other.test."}
    message = await refused(
        rfc2136_spec(pdns_server, secret_file, **other).build(new="green", resources=resources)
    )
    assert message.endswith(f"NOTAUTH: {causes('other.test.')['not served']}")
