"""DNS shares: address choice (rfc2136), exact LUA weights (powerdns), families, read-back share,
and the routers' expected states. Table tests plus properties; no server needed."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.core.dns_split import (
    Family,
    Weights,
    address_share,
    by_family,
    canonical_address,
    family_mismatch,
    lua_weights,
    new_count,
    published,
    share_of,
)
from cutover.core.model import Color
from cutover.routers.powerdns import PowerDNSSpec, lua_content, parse_lua
from cutover.routers.rfc2136 import Rfc2136Spec
from cutover.testing import resource_pool

B2 = ["192.0.2.10", "192.0.2.11"]
G1 = ["198.51.100.10"]
G3 = ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
B6 = ["192.0.2.10", "2001:db8::b1"]
G6 = ["198.51.100.10", "198.51.100.11", "2001:db8::a1", "2001:db8::a2"]


def addresses(prefix: str, n: int) -> list[str]:
    return [f"{prefix}.{i}" for i in range(1, n + 1)]


# --- which new addresses join (rfc2136) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("share", "old", "new", "k"),
    [
        (25, 2, 1, 1),  # only choice: 1/3
        (50, 2, 1, 1),
        (99, 2, 1, 1),
        (1, 2, 3, 1),  # at least one
        (25, 3, 3, 1),  # 1/4 exactly
        (50, 3, 3, 3),  # 3/6 exactly
        (40, 3, 3, 2),  # 2/5 exactly
        (60, 2, 5, 3),  # 3/5 exactly
        (90, 1, 10, 9),  # 9/10 exactly
        (95, 1, 10, 10),  # 10/11 = 90.9 beats 9/10 = 90
        (58, 1, 2, 1),  # |1/2 - .58| = .08 < |2/3 - .58| = .0867
        (59, 1, 2, 2),  # .09 > .0767
        # exact ties take the smaller k (less traffic on the untried color)
        (55, 2, 3, 2),  # 2/4 = 50 and 3/5 = 60 are both 5 points away
        (45, 3, 3, 2),  # 2/5 = 40 and 3/6 = 50
    ],
)
def test_new_count(share: int, old: int, new: int, k: int) -> None:
    assert new_count(share, old, new) == k


@pytest.mark.parametrize("share", [0, 100, -1, 101])
def test_new_count_only_for_intermediate_shares(share: int) -> None:
    with pytest.raises(ValueError):
        new_count(share, 2, 1)


@pytest.mark.parametrize(
    ("share", "old", "new", "want", "addr_share"),
    [
        (0, B2, G1, {"A": tuple(B2), "AAAA": ()}, 0.0),
        (100, B2, G1, {"A": tuple(G1), "AAAA": ()}, 100.0),
        (25, B2, G1, {"A": (*B2, *G1), "AAAA": ()}, 100 / 3),
        (50, B2, G3, {"A": (*B2, *G3[:2]), "AAAA": ()}, 50.0),
        # new addresses join in config order, the RRset is sorted
        (10, B2, list(reversed(G3)), {"A": (*B2, G3[2]), "AAAA": ()}, 100 / 3),
        # dual stack: each family split on its own; the share is the mean of the families
        (
            50,
            B6,
            G6,
            {"A": ("192.0.2.10", "198.51.100.10"), "AAAA": ("2001:db8::a1", "2001:db8::b1")},
            50.0,
        ),
        (
            75,
            B6,
            G6,
            {
                "A": ("192.0.2.10", "198.51.100.10", "198.51.100.11"),
                "AAAA": ("2001:db8::a1", "2001:db8::a2", "2001:db8::b1"),
            },
            200 / 3,
        ),
        (100, B6, G6, by_family(G6), 100.0),
        (0, B6, G6, by_family(B6), 0.0),
    ],
)
def test_published(
    share: int,
    old: list[str],
    new: list[str],
    want: dict[str, tuple[str, ...]],
    addr_share: float,
) -> None:
    got = published(share, old, new)
    assert got == want
    assert address_share(share, old, new) == pytest.approx(addr_share)


@given(
    share=st.integers(0, 100),
    n_old=st.integers(1, 6),
    n_new=st.integers(1, 6),
)
def test_published_properties(share: int, n_old: int, n_new: int) -> None:
    old, new = addresses("192.0.2", n_old), addresses("198.51.100", n_new)
    got = set(published(share, old, new)["A"])
    if share == 0:
        assert got == set(old)
    elif share == 100:
        assert got == set(new)
    else:
        assert set(old) <= got  # every old address stays
        joined = got - set(old)
        assert 1 <= len(joined) <= n_new  # at least one new address
        assert joined == set(new[: len(joined)])  # the first ones in config order
        best = min(abs(Fraction(k, n_old + k) - Fraction(share, 100)) for k in range(1, n_new + 1))
        assert abs(Fraction(len(joined), len(got)) - Fraction(share, 100)) == best


@given(n_old=st.integers(1, 6), n_new=st.integers(1, 6))
def test_address_share_never_decreases_with_share(n_old: int, n_new: int) -> None:
    old, new = addresses("192.0.2", n_old), addresses("198.51.100", n_new)
    shares = [address_share(s, old, new) for s in range(0, 101)]
    assert shares == sorted(shares)


# --- exact LUA weights (powerdns) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("share", "old", "new", "want"),
    [
        (10, ["192.0.2.10"], G1, {"A": {"192.0.2.10": 9, "198.51.100.10": 1}, "AAAA": {}}),
        (50, ["192.0.2.10"], G1, {"A": {"192.0.2.10": 1, "198.51.100.10": 1}, "AAAA": {}}),
        (90, ["192.0.2.10"], G1, {"A": {"192.0.2.10": 1, "198.51.100.10": 9}, "AAAA": {}}),
        # 25 % against two old: old each 75*1, new 25*2 -> 75:75:50 -> 3:3:2
        (25, B2, G1, {"A": {"192.0.2.10": 3, "192.0.2.11": 3, "198.51.100.10": 2}, "AAAA": {}}),
        # 33 % with 2 old, 3 new: old each 67*3 = 201, new each 33*2 = 66 (gcd 3) -> 67, 22
        (
            33,
            B2,
            G3,
            {
                "A": {"192.0.2.10": 67, "192.0.2.11": 67} | dict.fromkeys(G3, 22),
                "AAAA": {},
            },
        ),
        (
            20,
            B6,
            G6,
            {
                "A": {"192.0.2.10": 8, "198.51.100.10": 1, "198.51.100.11": 1},
                "AAAA": {"2001:db8::b1": 8, "2001:db8::a1": 1, "2001:db8::a2": 1},
            },
        ),
    ],
)
def test_lua_weights(
    share: int, old: list[str], new: list[str], want: dict[str, dict[str, int]]
) -> None:
    got = lua_weights(share, old, new)
    assert got == want
    assert share_of(got, old, new) == pytest.approx(share)


@given(share=st.integers(1, 99), n_old=st.integers(1, 7), n_new=st.integers(1, 7))
def test_lua_weights_are_exact(share: int, n_old: int, n_new: int) -> None:
    old, new = addresses("192.0.2", n_old), addresses("198.51.100", n_new)
    weights = lua_weights(share, old, new)["A"]
    new_total = sum(weights[a] for a in new)
    old_total = sum(weights[a] for a in old)
    assert Fraction(new_total, new_total + old_total) == Fraction(share, 100)
    assert len({weights[a] for a in new}) == 1 and len({weights[a] for a in old}) == 1
    assert min(weights.values()) >= 1


@pytest.mark.parametrize("share", [0, 100])
def test_lua_weights_only_in_between(share: int) -> None:
    with pytest.raises(ValueError):
        lua_weights(share, B2, G1)


# --- reading back -------------------------------------------------------------------------------


def test_share_of_ignores_unlisted_addresses_and_averages_families() -> None:
    weights: Weights = {
        "A": {"192.0.2.10": 1, "198.51.100.10": 1, "203.0.113.9": 5},  # 50 %, stranger ignored
        "AAAA": {"2001:db8::b1": 3, "2001:db8::a1": 1},  # 25 %
    }
    assert share_of(weights, B6, G6) == pytest.approx(37.5)
    assert share_of({"A": {"203.0.113.9": 1}, "AAAA": {}}, B6, G6) is None
    assert share_of({"A": {}, "AAAA": {}}, B6, G6) is None


# --- families and addresses ---------------------------------------------------------------------


def test_canonical_address() -> None:
    assert canonical_address(" 2001:DB8:0::0001 ") == "2001:db8::1"
    assert canonical_address("192.0.2.1") == "192.0.2.1"
    with pytest.raises(ValueError):
        canonical_address("www.example.com")


@pytest.mark.parametrize(
    ("blue", "green", "problem"),
    [
        (B2, G1, None),
        (B6, G6, None),
        (["2001:db8::1"], ["2001:db8::2"], None),
        (B6, G1, "blue has IPv6 (AAAA) addresses but green has none"),
        (B2, G6, "green has IPv6 (AAAA) addresses but blue has none"),
        (["2001:db8::1"], G1, "green has IPv4 (A) addresses but blue has none"),
    ],
)
def test_family_mismatch(blue: list[str], green: list[str], problem: str | None) -> None:
    got = family_mismatch(blue, green)
    if problem is None:
        assert got is None
    else:
        assert got is not None and got.startswith(problem)


# --- the routers' expected states and writes (pure) ---------------------------------------------

RFC2136 = {
    "type": "rfc2136",
    "name": "dns",
    "server": "127.0.0.1:53",
    "zone": "example.com.",
    "record": "www.example.com.",
    "ttl": 30,
    "tsig": {"name": "cutover-key.", "secret_env": "UNUSED"},
}
POWERDNS = {
    "type": "powerdns",
    "name": "gslb",
    "api_url": "http://127.0.0.1:8081",
    "api_key_env": "UNUSED",
    "zone": "example.com.",
    "record": "www.example.com.",
    "ttl": 30,
}


@pytest.mark.parametrize(
    ("new", "share", "a", "aaaa"),
    [
        ("green", 0, "192.0.2.10", "2001:db8::b1"),
        # each family on its own: 1 old + the first of 2 new = 50 % in both
        ("green", 50, "192.0.2.10 198.51.100.10", "2001:db8::a1 2001:db8::b1"),
        ("green", 100, "198.51.100.10 198.51.100.11", "2001:db8::a1 2001:db8::a2"),
        # built the other way round: blue is new, green old
        ("blue", 0, "198.51.100.10 198.51.100.11", "2001:db8::a1 2001:db8::a2"),
        (
            "blue",
            25,
            "192.0.2.10 198.51.100.10 198.51.100.11",
            "2001:db8::a1 2001:db8::a2 2001:db8::b1",
        ),
    ],
)
def test_rfc2136_expected_dual_stack(new: Color, share: int, a: str, aaaa: str) -> None:
    router = Rfc2136Spec.model_validate({**RFC2136, "blue": B6, "green": G6}).build(
        new=new, resources=resource_pool()
    )
    assert router.expected(share) == {"A": a, "AAAA": aaaa, "ttl": "30"}
    assert router.expected(share, evacuate=True) == router.expected(share)


def test_rfc2136_expected_exact() -> None:
    router = Rfc2136Spec.model_validate({**RFC2136, "blue": B2, "green": G3}).build(
        new="green", resources=resource_pool()
    )
    assert router.expected(0) == {"A": "192.0.2.10 192.0.2.11", "AAAA": "", "ttl": "30"}
    assert router.expected(25) == {
        "A": "192.0.2.10 192.0.2.11 198.51.100.10",
        "AAAA": "",
        "ttl": "30",
    }
    assert router.address_share(25) == pytest.approx(100 / 3)
    assert router.expected(100) == {"A": " ".join(G3), "AAAA": "", "ttl": "30"}


def test_powerdns_expected_and_patch() -> None:
    spec = PowerDNSSpec.model_validate({**POWERDNS, "blue": B6, "green": G6})
    router = spec.build(new="green", resources=resource_pool())
    assert router.expected(0) == {
        "A": "192.0.2.10",
        "AAAA": "2001:db8::b1",
        "LUA A": "",
        "LUA AAAA": "",
        "ttl": "30",
    }
    # 20 %: old each 80 * 2 = 160, new each 20 * 1 = 20 -> 8 : 1 : 1
    assert router.expected(20) == {
        "A": "",
        "AAAA": "",
        "LUA A": "192.0.2.10=8 198.51.100.10=1 198.51.100.11=1",
        "LUA AAAA": "2001:db8::a1=1 2001:db8::a2=1 2001:db8::b1=8",
        "ttl": "30",
    }
    kept = ({"content": "TXT \"'x'\"", "disabled": False},)
    assert router.rrsets(20, kept=kept) == [
        {"name": "www.example.com.", "type": "A", "changetype": "DELETE"},
        {"name": "www.example.com.", "type": "AAAA", "changetype": "DELETE"},
        {
            "name": "www.example.com.",
            "type": "LUA",
            "ttl": 30,
            "changetype": "REPLACE",
            "records": [
                kept[0],
                {
                    "content": "A \"pickwrandom({{8, '192.0.2.10'}, {1, '198.51.100.10'}, "
                    "{1, '198.51.100.11'}})\"",
                    "disabled": False,
                },
                {
                    "content": "AAAA \"pickwrandom({{1, '2001:db8::a1'}, {1, '2001:db8::a2'}, "
                    "{8, '2001:db8::b1'}})\"",
                    "disabled": False,
                },
            ],
        },
    ]
    body = router.rrsets(100)
    assert body[0]["records"] == [
        {"content": "198.51.100.10", "disabled": False},
        {"content": "198.51.100.11", "disabled": False},
    ]
    assert body[-1] == {"name": "www.example.com.", "type": "LUA", "changetype": "DELETE"}


@pytest.mark.parametrize(
    ("content", "parsed"),
    [
        (
            "A \"pickwrandom({{9, '192.0.2.10'}, {1, '198.51.100.10'}})\"",
            ("A", {"192.0.2.10": 9, "198.51.100.10": 1}),
        ),
        # any spacing, reduced by the gcd, addresses made canonical
        (
            "AAAA \" pickwrandom( { {18,'2001:DB8::1'},{2, '2001:db8::2'} } ) \"",
            ("AAAA", {"2001:db8::1": 9, "2001:db8::2": 1}),
        ),
        ("A \"pickrandom({'192.0.2.10', '198.51.100.10'})\"", None),
        ("A \"pickwrandom({{9, '192.0.2.10'}}) or '192.0.2.99'\"", None),
        ("A \"pickwrandom({{9, 'not-an-ip'}})\"", None),
        ("A \"pickwrandom({{0, '192.0.2.10'}})\"", None),
        ("TXT \"'hello'\"", None),
    ],
)
def test_parse_lua(content: str, parsed: tuple[Family, dict[str, int]] | None) -> None:
    assert parse_lua(content) == parsed
    if parsed is not None:
        assert parse_lua(lua_content(*parsed)) == parsed  # round trip
