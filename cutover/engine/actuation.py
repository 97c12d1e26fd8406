"""Driving routers: forward shifts with the drift guard, and rollbacks retried until verified.

A forward shift reads each router first and writes only when it holds what the daemon last
wrote (or ``force``): reconciliation may move traffic toward the new color only from our own
state (PRODUCT.md, Drift). Transient errors and hanging calls are retried with backoff for
``apply_timeout`` on the engine's clock (tenacity measures real time, so it cannot serve the
injected clock); permanent ones are not. A rollback writes 0 % new with evacuation to every
router at once and re-reads; it counts as verified when the router *reads* all-old, even if
the write errored. Routers of one cutover are driven concurrently. A router that can write and
read back in one round trip (:class:`~cutover.routers.base.AppliesAndObserves`) does both
in one call; when that write fails, the router is read back on its own, as after ``apply``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from cutover.engine.clock import Clock
from cutover.errors import AdapterError, PermanentError, TransientError
from cutover.observability.metrics import RouterTimer
from cutover.routers.base import Reading, Router, RouterState, one_round_trip

__all__ = [
    "CALL_TIMEOUT",
    "CallTimeout",
    "RouterOutcome",
    "observe",
    "rollback_once",
    "shift",
    "within",
]

#: Bound on one router call during a rollback, on top of the adapter's own timeouts.
CALL_TIMEOUT = 10.0
RETRY_FIRST = 0.1
RETRY_MAX = 2.0

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RouterOutcome:
    router: str
    result: Literal["applied", "drift", "failed"]
    reading: Reading | None = None
    error: str = ""


def _timed(timer: RouterTimer | None, router: Router, op: str) -> AbstractContextManager[None]:
    """Router operation latency, by service, router and operation."""
    return contextlib.nullcontext() if timer is None else timer.time(router.name, op)


async def observe(router: Router, timer: RouterTimer | None) -> Reading:
    """Read a router back, timed."""
    with _timed(timer, router, "observe"):
        return await router.observe()


class CallTimeout(TransientError):
    """A router call that did not finish in the time the engine gave it (the router's own
    errors say more: they name the server)."""


async def within(clock: Clock, seconds: float, coro: Coroutine[Any, Any, T]) -> T:
    """One router call, bounded by ``seconds`` on ``clock`` (so a fake clock bounds it in
    tests too). Running out of time raises :class:`TransientError`; so does any exception an
    adapter should have translated but did not: a misbehaving router is a failing router, and
    a rollback keeps retrying it instead of dying with it."""
    try:
        async with clock.timeout(max(0.0, seconds)):
            return await coro
    except TimeoutError:
        raise CallTimeout(f"no answer within {seconds:.3g}s") from None
    except AdapterError:
        raise
    except Exception as exc:
        raise TransientError(f"router call failed unexpectedly: {exc!r}") from exc


async def _shift_attempt(
    router: Router,
    share: int,
    *,
    written_state: RouterState | None,
    force: bool,
    timer: RouterTimer | None,
) -> RouterOutcome:
    reading = await observe(router, timer)
    target = router.expected(share)
    if dict(reading.state) == dict(target):
        return RouterOutcome(router=router.name, result="applied", reading=reading)
    if not force and dict(reading.state) != dict(written_state or {}):
        return RouterOutcome(router=router.name, result="drift", reading=reading)
    reading = await _apply_and_read(router, share, timer)
    if dict(reading.state) != dict(target):
        raise TransientError(
            f"router {router.name}: read back {dict(reading.state)} after setting "
            f"{share}%, expected {dict(target)}"
        )
    return RouterOutcome(router=router.name, result="applied", reading=reading)


async def _apply_and_read(router: Router, share: int, timer: RouterTimer | None) -> Reading:
    """Write ``share`` (timed as ``apply``) and read back: in one call where the router can."""
    with _timed(timer, router, "apply"):
        if (both := one_round_trip(router)) is not None:
            return await both.apply_and_observe(share)
        await router.apply(share)
    return await observe(router, timer)


async def _shift_one(
    router: Router,
    share: int,
    *,
    written_state: RouterState | None,
    force: bool,
    apply_timeout: float,
    clock: Clock,
    timer: RouterTimer | None,
) -> RouterOutcome:
    """Transient errors (and calls that hang) are retried with backoff until
    ``apply_timeout`` on ``clock``; permanent ones are not retried."""
    deadline = clock.monotonic() + apply_timeout
    delay = RETRY_FIRST
    last = ""
    while True:
        attempt = _shift_attempt(
            router, share, written_state=written_state, force=force, timer=timer
        )
        try:
            return await within(clock, max(deadline - clock.monotonic(), RETRY_FIRST), attempt)
        except PermanentError as exc:
            return RouterOutcome(router=router.name, result="failed", error=str(exc))
        except CallTimeout as exc:
            last = last or str(exc)  # a try cut short by the deadline: keep the router's error
        except TransientError as exc:
            last = str(exc)
        left = deadline - clock.monotonic()
        if left <= 0:
            return RouterOutcome(
                router=router.name,
                result="failed",
                error=f"{last} (still failing after {apply_timeout:g}s of retries)",
            )
        await clock.sleep(min(delay, left))  # the last try is at the deadline
        delay = min(delay * 2, RETRY_MAX)


async def shift(
    routers: Mapping[str, Router],
    share: int,
    *,
    written_states: Mapping[str, RouterState | None],
    force: bool,
    apply_timeout: float,
    clock: Clock,
    timer: RouterTimer | None = None,
) -> list[RouterOutcome]:
    """Set every router to ``share`` concurrently; one outcome per router."""
    return await _together(
        [
            _shift_one(
                r,
                share,
                written_state=written_states.get(name),
                force=force,
                apply_timeout=apply_timeout,
                clock=clock,
                timer=timer,
            )
            for name, r in routers.items()
        ]
    )


async def _rollback_write(
    router: Router, clock: Clock, timer: RouterTimer | None
) -> tuple[Reading | None, str]:
    """Write 0 % with evacuation (timed as ``rollback``), with the read-back where the router
    does both in one round trip. A write error is returned, not raised: the rollback still
    counts if the router then reads all-old."""
    try:
        with _timed(timer, router, "rollback"):
            if (both := one_round_trip(router)) is not None:
                call = both.apply_and_observe(0, evacuate=True)
                return await within(clock, CALL_TIMEOUT, call), ""
            await within(clock, CALL_TIMEOUT, router.apply(0, evacuate=True))
    except AdapterError as exc:
        return None, str(exc)
    return None, ""


async def _rollback_one(router: Router, clock: Clock, timer: RouterTimer | None) -> RouterOutcome:
    reading, write_error = await _rollback_write(router, clock, timer)
    try:
        if reading is None:
            reading = await within(clock, CALL_TIMEOUT, observe(router, timer))
        # after the read: a router built after a restart learns its servers from it
        target = router.expected(0, evacuate=True)
    except AdapterError as exc:
        return RouterOutcome(router=router.name, result="failed", error=write_error or str(exc))
    if dict(reading.state) == dict(target):
        return RouterOutcome(router=router.name, result="applied", reading=reading)
    return RouterOutcome(
        router=router.name,
        result="failed",
        reading=reading,
        error=write_error or f"reads {dict(reading.state)}, not all-old",
    )


async def rollback_once(
    routers: Mapping[str, Router], clock: Clock, timer: RouterTimer | None = None
) -> list[RouterOutcome]:
    """One concurrent rollback attempt on the given routers."""
    return await _together([_rollback_one(r, clock, timer) for r in routers.values()])


async def _together(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of ``calls``, run concurrently; a lone call (most services have one router)
    is awaited as it is, without a task around it."""
    if len(calls) == 1:
        return [await calls[0]]
    return list(await asyncio.gather(*calls))
