"""DNS shares: which addresses (``rfc2136``) or which weights (``powerdns``) publish a share.

Pure and stdlib only, like :mod:`cutover.core.weights`. ``share`` is the new color's share of
traffic in percent, an integer 0..100; ``old`` and ``new`` list each color's addresses
(canonical text, see :func:`canonical_address`).

Address families
----------------
A DNS router owns the name's A and AAAA RRsets together (PRODUCT.md, DNS). Every family that
one color has, the other must have too (:func:`family_mismatch`, a config error otherwise):
with blue dual-stack and green IPv4 only, "100 % green" could only mean dropping the AAAA
RRset (IPv6-only clients lose the name; dual-stack clients all move at once) or keeping blue's
IPv6 addresses (traffic left on the old color at 100 %). With matching families the name keeps
every family it had at every share, and each family is split on its own, because a client
picks one family (RFC 8305) and sees only that RRset.

Address split (plain RRsets, RFC 2136)
--------------------------------------
A resolver picks among an RRset's addresses about evenly, so the only lever is *which*
addresses are published:

* ``share == 0``: exactly the old color's addresses; ``share == 100``: exactly the new ones.
* in between (PRODUCT.md): every old address stays, and the first ``k`` new addresses (in
  config order) are added, ``k`` in ``1..len(new)`` minimizing ``|k / (len(old) + k) - share
  / 100|`` (ties: the smaller ``k``, less traffic on the untried color). The *address share*
  of a family is ``k / (len(old) + k)``; the router's address share is the mean over the
  families (clients split between families in unknown proportions, so each counts alike).

Weighted split (PowerDNS ``LUA`` ``pickwrandom``)
-------------------------------------------------
Exact: per family, each old address weighs ``(100 - share) * len(new)`` and each new one
``share * len(old)``, all divided by their greatest common divisor, so the color totals stand
exactly at ``100 - share : share`` and each color's total is split evenly over its addresses.

Reading back
------------
:func:`share_of` turns what is published (addresses with weight 1 each, or LUA weights) back
into the new color's share in percent. Addresses in neither color are left out of the share
(a router shows them in its state, where they read as drift).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from functools import reduce
from math import gcd
from typing import Literal

__all__ = [
    "FAMILIES",
    "Family",
    "Published",
    "Weights",
    "address_share",
    "by_family",
    "canonical_address",
    "family_mismatch",
    "family_of",
    "lua_weights",
    "new_count",
    "percent",
    "published",
    "render_addresses",
    "share_of",
]

Family = Literal["A", "AAAA"]
FAMILIES: tuple[Family, Family] = ("A", "AAAA")

#: The addresses of each family's RRset (both keys always present; sorted; may be empty).
Published = dict[Family, tuple[str, ...]]
#: The LUA ``pickwrandom`` weights of each family: address -> weight (may be empty).
Weights = dict[Family, dict[str, int]]


def canonical_address(address: str) -> str:
    """The one text form of an IP address (``2001:DB8::0001`` -> ``2001:db8::1``), so the
    config, DNS answers and API contents compare equal; ``ValueError`` if not an address."""
    return ipaddress.ip_address(address.strip()).compressed


def family_of(address: str) -> Family:
    """``"A"`` for an IPv4 address, ``"AAAA"`` for IPv6; ``ValueError`` if not an address."""
    return "A" if ipaddress.ip_address(address).version == 4 else "AAAA"


def by_family(addresses: Iterable[str]) -> Published:
    """Addresses grouped by family, each group sorted (the order-independent form)."""
    groups: dict[Family, list[str]] = {family: [] for family in FAMILIES}
    for address in addresses:
        groups[family_of(address)].append(address)
    return {family: tuple(sorted(groups[family])) for family in FAMILIES}


def family_mismatch(blue: Sequence[str], green: Sequence[str]) -> str | None:
    """Why ``blue`` and ``green`` cannot share a DNS name, or ``None`` (see module docstring)."""
    b, g = by_family(blue), by_family(green)
    labels: dict[Family, str] = {"A": "IPv4", "AAAA": "IPv6"}
    for family, label in labels.items():
        if bool(b[family]) != bool(g[family]):
            has, lacks = ("blue", "green") if b[family] else ("green", "blue")
            return (
                f"{has} has {label} ({family}) addresses but {lacks} has none; both colors need "
                "the same address families, or the name would lose a family at 0 % or 100 %"
            )
    return None


def _check_share(share: int) -> None:
    if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
        raise ValueError(f"share must be an integer 0..100, got {share!r}")


def new_count(share: int, old: int, new: int) -> int:
    """How many of ``new`` addresses join ``old`` ones at an intermediate ``share`` (1..99)."""
    if not 0 < share < 100:
        raise ValueError(f"new_count is for shares 1..99, got {share!r}")
    if old < 1 or new < 1:
        raise ValueError("each color needs at least one address of the family")
    target = Fraction(share, 100)
    return min(range(1, new + 1), key=lambda k: (abs(Fraction(k, old + k) - target), k))


def published(share: int, old: Sequence[str], new: Sequence[str]) -> Published:
    """The addresses of each family's RRset at ``share`` (see module docstring)."""
    _check_share(share)
    old_f, new_f = _ordered(old), _ordered(new)
    out: Published = {}
    for family in FAMILIES:
        o, n = old_f[family], new_f[family]
        if share == 0 or not n:
            chosen = o
        elif share == 100 or not o:
            chosen = n
        else:
            chosen = [*o, *n[: new_count(share, len(o), len(n))]]
        out[family] = tuple(sorted(chosen))
    return out


def lua_weights(share: int, old: Sequence[str], new: Sequence[str]) -> Weights:
    """The exact ``pickwrandom`` weights of each family at an intermediate ``share``."""
    if not 0 < share < 100:
        raise ValueError(f"weighted records are for shares 1..99, got {share!r}")
    old_f, new_f = by_family(old), by_family(new)
    out: Weights = {}
    for family in FAMILIES:
        o, n = old_f[family], new_f[family]
        raw = {a: (100 - share) * len(n) for a in o} | {a: share * len(o) for a in n}
        if o and n:
            g = reduce(gcd, raw.values())
            out[family] = {a: w // g for a, w in raw.items()}
        else:
            out[family] = {}
    return out


def share_of(
    weights: Mapping[Family, Mapping[str, int]], old: Iterable[str], new: Iterable[str]
) -> float | None:
    """The new color's share in percent of what is published: per family the new color's
    weight over both colors' weight, then the mean over families that carry any; ``None``
    when no listed address is published."""
    old_set, new_set = set(old), set(new)
    shares: list[float] = []
    for family in FAMILIES:
        family_weights = weights.get(family, {})
        new_w = sum(w for a, w in family_weights.items() if a in new_set)
        total = new_w + sum(w for a, w in family_weights.items() if a in old_set)
        if total > 0:
            shares.append(100.0 * new_w / total)
    return sum(shares) / len(shares) if shares else None


def address_share(share: int, old: Sequence[str], new: Sequence[str]) -> float:
    """The address share an ``rfc2136`` router publishes for the asked ``share`` (for
    ``plan`` and ``status``: e.g. 33.3 for 25 with two old addresses and one new)."""
    result = share_of(
        {f: dict.fromkeys(addrs, 1) for f, addrs in published(share, old, new).items()}, old, new
    )
    assert result is not None  # each color has at least one address
    return result


def percent(value: float) -> str:
    """A share for people: 33.333 -> ``33.3``, 50.0 -> ``50``."""
    return f"{value:.1f}".removesuffix(".0")


def render_addresses(addresses: Iterable[str]) -> str:
    """Sorted and space-separated: the order-independent text of an RRset in router state."""
    return " ".join(sorted(addresses))


def _ordered(addresses: Sequence[str]) -> dict[Family, list[str]]:
    """Each family's addresses in config order (which new addresses join first)."""
    groups: dict[Family, list[str]] = {family: [] for family in FAMILIES}
    for address in addresses:
        groups[family_of(address)].append(address)
    return groups
