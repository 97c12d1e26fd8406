"""Stage share -> absolute load-balancer weights per server, and the effective share back.

Pure and stdlib only. The numbers follow HAProxy's runtime API: absolute server weights are
integers 0..256 (HAProxy management guide, "set server <backend>/<server> weight", and
"set weight": "Absolute weight can only be between 0 and 256 inclusive").

The rule (:func:`split_weights`)
--------------------------------
``share`` is the new color's share in percent, an integer 0..100. Each color has servers with a
*configured* weight (HAProxy's ``srv_iweight``); a color whose configured weights are all 0 is
treated as if every server were configured with weight 1.

* ``share == 0``: every new-color server gets 0, every old-color server its configured weight.
* ``share == 100``: every old-color server gets 0, every new-color server its configured weight.
  (So both ends read exactly like the configuration of the live color.)
* ``0 < share < 100``: the two *color totals* are put in the exact ratio ``share : 100 - share``:
  with ``g = gcd(share, 100 - share)``, ``a = share / g`` and ``b = (100 - share) / g``, the new
  color's total is ``k * a`` and the old color's ``k * b``, with the largest integer ``k`` for
  which no server of either color needs more than 256 (a color with configured weights ``w_i``
  can carry a total of at most ``floor(256 * sum(w) / max(w))``). Each color's total is then
  split over its servers in proportion to their configured weights by largest-remainder
  (Hamilton) rounding: every server gets the floor of its exact quota, and the units left over
  go to the largest remainders (ties: larger configured weight, then list order).

Guarantees and worst-case error
-------------------------------
* The share error is **zero**: the weights always sum to exactly ``share : 100 - share`` between
  the colors, because ``a, b <= 99`` while every color can carry at least 256, so ``k >= 2``.
  With every server up and ready, HAProxy's dynamic algorithms then send exactly ``share`` % of
  requests (on average) to the new color. The *observed* share differs only when servers are
  down, in ``maint`` or ``drain`` (see :func:`effective_share`).
* Within a color each server is less than 1 weight unit away from its exact proportional quota
  (so a small server may get 0 at a small share: at share 1 % against a single old server the
  new color's total is only 2).
* Every weight is in 0..256; an intermediate share gives at least 1 to some new-color server and
  keeps at least 1 on some old-color server (each color's total is ``>= k >= 2``).
* The realized share ``new_total / (new_total + old_total)`` equals ``share / 100``, hence is
  strictly increasing in ``share``. Individual weights are *not* monotone in ``share`` (the
  scale ``k`` changes with ``gcd``), and need not be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from math import gcd

__all__ = [
    "MAX_WEIGHT",
    "ServerWeight",
    "effective_share",
    "realized_share",
    "split_weights",
]

#: HAProxy's largest absolute runtime weight.
MAX_WEIGHT = 256

#: ``(server name, configured weight)``.
ServerWeight = tuple[str, int]


def split_weights(
    share: int, *, old: Sequence[ServerWeight], new: Sequence[ServerWeight]
) -> dict[str, int]:
    """Absolute weights for every server of both colors at the new color's ``share`` percent.

    ``old`` and ``new`` list each color's servers with their configured weights (0..256).
    Returns ``{server name: weight}`` for all servers (see the module docstring for the rule).
    Raises ``ValueError`` for a share outside 0..100, an empty color, a weight outside 0..256
    or a server name that appears twice.
    """
    if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
        raise ValueError(f"share must be an integer 0..100, got {share!r}")
    _validate(old, new)
    old_w = _configured(old)
    new_w = _configured(new)
    if share == 0:
        return {**dict(zip(_names(old), old_w, strict=True)), **dict.fromkeys(_names(new), 0)}
    if share == 100:
        return {**dict.fromkeys(_names(old), 0), **dict(zip(_names(new), new_w, strict=True))}
    g = gcd(share, 100 - share)
    a, b = share // g, (100 - share) // g
    k = min(_capacity(new_w) // a, _capacity(old_w) // b)
    weights = dict(zip(_names(old), _apportion(k * b, old_w), strict=True))
    weights.update(zip(_names(new), _apportion(k * a, new_w), strict=True))
    return weights


def realized_share(weights: Mapping[str, int], new: Iterable[str]) -> float | None:
    """The new color's percentage of the summed ``weights`` (all servers assumed up)."""
    new_names = set(new)
    total = sum(weights.values())
    if total == 0:
        return None
    return 100.0 * sum(w for name, w in weights.items() if name in new_names) / total


def effective_share(servers: Iterable[tuple[bool, int, bool, bool]]) -> float | None:
    """The new color's share of *effective* weight, in percent.

    Each item is ``(is_new_color, weight, up, maint_or_drain)``; a server's weight counts only
    when it is up and neither in ``maint`` nor ``drain``. ``None`` when nothing counts (no server
    could take traffic, so the share is undefined).
    """
    total = 0
    new_total = 0
    for is_new, weight, up, maint_or_drain in servers:
        if up and not maint_or_drain and weight > 0:
            total += weight
            if is_new:
                new_total += weight
    if total == 0:
        return None
    return 100.0 * new_total / total


def _validate(old: Sequence[ServerWeight], new: Sequence[ServerWeight]) -> None:
    if not old or not new:
        raise ValueError("each color needs at least one server")
    seen: set[str] = set()
    for name, weight in (*old, *new):
        if name in seen:
            raise ValueError(f"server {name!r} is listed twice")
        seen.add(name)
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError(f"server {name!r}: weight must be an integer, got {weight!r}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"server {name!r}: weight {weight} is outside 0..{MAX_WEIGHT}")


def _names(servers: Sequence[ServerWeight]) -> list[str]:
    return [name for name, _ in servers]


def _configured(servers: Sequence[ServerWeight]) -> list[int]:
    weights = [w for _, w in servers]
    return weights if sum(weights) > 0 else [1] * len(weights)


def _capacity(weights: Sequence[int]) -> int:
    """The largest color total whose proportional split keeps every server <= 256."""
    return MAX_WEIGHT * sum(weights) // max(weights)


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` by largest remainders (Hamilton).

    A server whose exact quota is an integer gets exactly that (the leftover units are fewer
    than the servers with a non-zero remainder), so no server exceeds ``ceil(quota)``.
    """
    whole = sum(weights)
    floors = [total * w // whole for w in weights]
    left = total - sum(floors)
    order = sorted(
        range(len(weights)), key=lambda i: (-(total * weights[i] % whole), -weights[i], i)
    )
    for i in order[:left]:
        floors[i] += 1
    return floors
