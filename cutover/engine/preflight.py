"""Preflight: before any traffic moves, every router and every check must be usable.

PRODUCT.md, Preflight: every router reachable and reading exactly the live color's full share
(the new color at 0 %, some old server able to take traffic); every check evaluated once with
no provider error and no fail (inconclusive is fine: the new color has no traffic yet; a
dry-run check is shown, never refuses). Any problem refuses the start and changes nothing.

An undo (PRODUCT.md, undo) needs less: only that every router can be read (:func:`reachable`).
The color being undone may be down -- that is why one undoes -- and an undo has no checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from cutover.checks.base import Check, MeasureContext
from cutover.core.model import Color, Verdict
from cutover.errors import AdapterError, PreflightError
from cutover.routers.base import Reading, Router, RouterState

__all__ = ["lower_ttls", "preflight", "reachable"]

T = TypeVar("T")


async def _router(name: str, router: Router, new: Color) -> tuple[str, RouterState]:
    try:
        await router.preflight()
        reading = await router.observe()
    except AdapterError as exc:
        raise PreflightError(f"router {name}: {exc}") from exc
    if reading.share is None:
        raise PreflightError(f"router {name}: no server can take traffic ({reading.detail})")
    if reading.share != 0.0:
        raise PreflightError(
            f"router {name} reads {reading.share:g}% {new}, but the live color must have the "
            f"full share before a cutover starts ({reading.detail})"
        )
    return name, reading.state


async def _check(name: str, check: Check, dry_run: bool) -> None:
    m = await check.measure(MeasureContext(share=0))
    if not dry_run and m.verdict in (Verdict.FAIL, Verdict.ERROR):
        value = "" if m.value is None else f", value {m.value:g}"
        raise PreflightError(f"check {name}: {m.verdict.value}{value} ({m.detail})")


async def preflight(
    routers: Mapping[str, Router],
    checks: Mapping[str, Check],
    *,
    new: Color,
    dry_run: frozenset[str] = frozenset(),
) -> dict[str, RouterState]:
    """Return what each router holds now; raise PreflightError naming every problem."""
    results = await _all_or_refuse(
        *(_router(n, r, new) for n, r in routers.items()),
        *(_check(n, c, n in dry_run) for n, c in checks.items()),
    )
    return {name: state for name, state in (r for r in results if isinstance(r, tuple))}


async def _read(name: str, router: Router) -> tuple[str, Reading]:
    try:
        return name, await router.observe()
    except AdapterError as exc:
        raise PreflightError(f"router {name}: cannot be read: {exc}") from exc


async def reachable(routers: Mapping[str, Router]) -> dict[str, Reading]:
    """Before an undo: what every router reads now; raise PreflightError naming each router
    that cannot be read (the undo is then refused and nothing changes)."""
    readings = await _all_or_refuse(*(_read(n, r) for n, r in routers.items()), what="the undo")
    return dict(readings)


async def _all_or_refuse(*steps: Awaitable[T], what: str = "the start") -> list[T]:
    """Run every step concurrently; one PreflightError listing every refusal, if any."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, PreflightError):
            raise r  # a bug, not a refusal
    problems = [str(r) for r in results if isinstance(r, PreflightError)]
    if problems:
        raise PreflightError(f"preflight refused {what}: " + "; ".join(problems))
    return [r for r in results if not isinstance(r, BaseException)]


async def _lower(name: str, router: Router) -> tuple[str, float, RouterState | None]:
    try:
        old = await router.lower_ttl()
        state = (await router.observe()).state if old > 0 else None
    except AdapterError as exc:
        raise PreflightError(f"router {name}: could not lower the published TTL: {exc}") from exc
    return name, old, state


async def lower_ttls(routers: Mapping[str, Router]) -> tuple[float, dict[str, RouterState]]:
    """After preflight passed (PRODUCT.md, DNS): republish every DNS record whose published
    TTL is longer than configured, with the same addresses. Returns the longest old TTL, to
    be waited out before stage 1, and what each republished router holds now."""
    done = await _all_or_refuse(*(_lower(n, r) for n, r in routers.items()))
    wait = max((old for _, old, _ in done), default=0.0)
    return wait, {name: state for name, _, state in done if state is not None}
