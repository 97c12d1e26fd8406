"""Drift: whether what a router reads back is the daemon's doing (PRODUCT.md, Drift).

Pure and stdlib only. A router state is what an adapter reads back (server -> weight, or
address -> weight), compared as a whole: a router holds the daemon's target, or exactly what
the daemon last wrote to it (a shift under way or cut short), or something else, which is
drift: someone or something else changed it, and the daemon must not write over it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

__all__ = ["Standing", "standing"]

#: ``at_target``: reads the target; ``ours``: reads what the daemon last wrote; ``drift``:
#: neither.
Standing = Literal["at_target", "ours", "drift"]


def standing(
    state: Mapping[str, str],
    *,
    target: Mapping[str, str],
    written: Mapping[str, str] | None,
) -> Standing:
    """Where a router that reads ``state`` stands against the ``target`` it should reach and
    what was ``written`` to it last (``None``: nothing yet, so only the target is ours)."""
    if dict(state) == dict(target):
        return "at_target"
    if dict(state) == dict(written or {}):
        return "ours"
    return "drift"
