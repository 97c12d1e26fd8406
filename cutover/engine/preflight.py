"""Preflight: before any traffic moves, every router and every check must be usable.

PRODUCT.md, Preflight: every router reachable and reading exactly the live color's full share
(the new color at 0 %, some old server able to take traffic); every check evaluated once with
no provider error and no fail (inconclusive is fine: the new color has no traffic yet; a
dry-run check is shown, never refuses). Any problem refuses the start and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from cutover.checks.base import Check, MeasureContext
from cutover.core.model import Color, Verdict
from cutover.errors import AdapterError, PreflightError
from cutover.routers.base import Router, RouterState

__all__ = ["preflight"]


async def _router(name: str, router: Router, new: Color, exact: bool) -> tuple[str, RouterState]:
    try:
        await router.preflight()
        reading = await router.observe()
    except AdapterError as exc:
        raise PreflightError(f"router {name}: {exc}") from exc
    if reading.share is None:
        raise PreflightError(f"router {name}: no server can take traffic ({reading.detail})")
    if exact and reading.share != 0.0:
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
    exact: bool = True,
) -> dict[str, RouterState]:
    """Return what each router holds now; raise PreflightError naming every problem."""
    results = await asyncio.gather(
        *(_router(n, r, new, exact) for n, r in routers.items()),
        *(_check(n, c, n in dry_run) for n, c in checks.items()),
        return_exceptions=True,
    )
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, PreflightError):
            raise r  # a bug, not a refusal
    problems = [str(r) for r in results if isinstance(r, PreflightError)]
    if problems:
        raise PreflightError("preflight refused the start: " + "; ".join(problems))
    return {name: state for name, state in (r for r in results if isinstance(r, tuple))}
