"""Preflight's TTL step against fake routers: the pure bookkeeping around ``lower_ttl``."""

from __future__ import annotations

import pytest

from cutover.engine.preflight import lower_ttls, reachable
from cutover.errors import PermanentError, PreflightError, TransientError
from cutover.testing import FakeRouter


async def test_the_longest_lowered_ttl_is_waited_and_only_republished_routers_are_reread() -> None:
    edge, dns, gslb = FakeRouter("edge"), FakeRouter("dns"), FakeRouter("gslb")
    dns.old_ttl, gslb.old_ttl = 300.0, 60.0
    wait, states = await lower_ttls({"edge": edge, "dns": dns, "gslb": gslb})
    assert wait == 300.0
    assert set(states) == {"dns", "gslb"}
    assert [c.op for c in edge.calls] == ["lower_ttl"]
    assert [c.op for c in dns.calls] == ["lower_ttl", "observe"]


async def test_no_dns_router_no_wait() -> None:
    assert await lower_ttls({"edge": FakeRouter("edge")}) == (0.0, {})


async def test_a_router_that_cannot_lower_its_ttl_refuses_the_start_by_name() -> None:
    dns = FakeRouter("dns")
    dns.fail(PermanentError, "server 127.0.0.1:53 refused the update", ops=("lower_ttl",))
    with pytest.raises(PreflightError, match="router dns: could not lower the published TTL"):
        await lower_ttls({"edge": FakeRouter("edge"), "dns": dns})


async def test_an_undo_needs_only_every_router_readable() -> None:
    # the live (undone) color failing its health checks fails a router's preflight, not a read
    edge, dns = FakeRouter("edge", share=100), FakeRouter("dns", share=100)
    edge.fail(TransientError, "live server(s) green1 not UP", ops=("preflight",), times=None)
    readings = await reachable({"edge": edge, "dns": dns})
    assert {name: r.share for name, r in readings.items()} == {"edge": 100.0, "dns": 100.0}
    assert [c.op for c in edge.calls] == ["observe"]


async def test_an_undo_with_unreadable_routers_is_refused_naming_each() -> None:
    edge, dns, gslb = FakeRouter("edge"), FakeRouter("dns"), FakeRouter("gslb")
    edge.fail(TransientError, "socket file not found", ops=("observe",))
    dns.fail(PermanentError, "no such record", ops=("observe",))
    with pytest.raises(PreflightError) as refusal:
        await reachable({"edge": edge, "dns": dns, "gslb": gslb})
    assert str(refusal.value) == (
        "preflight refused the undo: router edge: cannot be read: socket file not found; "
        "router dns: cannot be read: no such record"
    )
