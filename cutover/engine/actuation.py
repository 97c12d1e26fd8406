"""Driving routers: forward shifts with the drift guard, and rollbacks retried until verified.

A forward shift reads every router first and writes only when each holds what the daemon last
wrote (or ``force``): reconciliation may move traffic toward the new color only from our own
state, and one router's drift holds the others (PRODUCT.md, Drift). Transient errors and
hanging calls are retried with backoff (tenacity, sleeping and stopping on the engine's clock)
for ``apply_timeout``; permanent ones are not; every
failed try is reported at once. A rollback writes 0 % new with evacuation and re-reads; it
counts as verified when the router *reads* all-old, even if the write errored. A router is
retried with backoff until verified, probed often while it does not answer (one that comes
back is rolled back at once), and read once more after a settle time when a forward write
to it was sent but never answered (that write can still land: see ``STALE_WRITE_SETTLE``).
Routers of one cutover are driven concurrently. A router that can write and
read back in one round trip (:class:`~cutover.routers.base.AppliesAndObserves`) does both
in one call; when that write fails, the router is read back on its own, as after ``apply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_result,
    wait_exponential,
)

from cutover.core.drift import standing
from cutover.engine.clock import Clock
from cutover.errors import AdapterError, PermanentError, TransientError
from cutover.observability.metrics import RouterTimer
from cutover.routers.base import Reading, Router, RouterState, one_round_trip

__all__ = [
    "CALL_TIMEOUT",
    "CallTimeout",
    "RouterOutcome",
    "observe",
    "roll_back",
    "rollback_once",
    "shift",
    "together",
    "within",
]

#: Bound on one router call during a rollback, on top of the adapter's own timeouts.
CALL_TIMEOUT = 10.0
RETRY_FIRST = 0.1
RETRY_MAX = 2.0
#: The longest wait between two rollback attempts on a router that keeps failing.
ROLLBACK_BACKOFF_MAX = 5.0
#: While a router does not answer at all during a rollback, it is read this often (each read
#: bounded by the same time) between attempts: one that answers again, such as an HAProxy
#: restarted at its config weights, is rolled back within about this time plus one attempt,
#: not at the next backoff step.
PROBE_EVERY = 0.5
#: A forward write sent to a server that never answered (frozen, or a shift cancelled by the
#: rollback) sits in the server's socket buffers and lands when it runs again, in no order
#: with the rollback's own writes (each is its own connection). Such a router is verified
#: all-old only by a second read this long after a first all-old one: a server that answered
#: the rollback's write and read is running, and drains what was queued before them within
#: milliseconds; a stale write landing in between is written over by the next attempt.
STALE_WRITE_SETTLE = 1.0

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RouterOutcome:
    """``held``: not written, because another router of the shift drifted or failed."""

    router: str
    result: Literal["applied", "drift", "held", "failed"]
    reading: Reading | None = None
    error: str = ""


#: Called with a router's name and error on every failed try that will be retried.
OnRetry = Callable[[str, str], None]


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


async def _read_first(
    router: Router,
    share: int,
    *,
    written_state: RouterState | None,
    force: bool,
    timer: RouterTimer | None,
) -> RouterOutcome:
    """Where a router stands before a shift writes anything: at the target already, drifted
    (it holds neither the target nor what we last wrote), or ``held`` until it is written."""
    reading = await observe(router, timer)
    match standing(reading.state, target=router.expected(share), written=written_state):
        case "at_target":
            return RouterOutcome(router=router.name, result="applied", reading=reading)
        case "drift" if not force:
            return RouterOutcome(router=router.name, result="drift", reading=reading)
        case _:
            return RouterOutcome(router=router.name, result="held", reading=reading)


async def _shift_attempt(
    router: Router,
    share: int,
    *,
    written_state: RouterState | None,
    force: bool,
    timer: RouterTimer | None,
    unsettled: set[str],
    recheck: bool,
) -> RouterOutcome:
    """Write a router the first read found ``held``; a retry (``recheck``) reads it again
    first, as that read did."""
    if recheck:
        first = await _read_first(
            router, share, written_state=written_state, force=force, timer=timer
        )
        if first.result != "held":
            return first
    reading = await _apply_and_read(router, share, timer, unsettled)
    target = router.expected(share)
    if dict(reading.state) != dict(target):
        raise TransientError(
            f"router {router.name}: read back {dict(reading.state)} after setting "
            f"{share}%, expected {dict(target)}"
        )
    return RouterOutcome(router=router.name, result="applied", reading=reading)


async def _apply_and_read(
    router: Router, share: int, timer: RouterTimer | None, unsettled: set[str]
) -> Reading:
    """Write ``share`` (timed as ``apply``) and read back: in one call where the router can.
    The router is in ``unsettled`` from the write until its answer: a write cut short (an
    error, a timeout, a cancel) may still land."""
    unsettled.add(router.name)
    with _timed(timer, router, "apply"):
        if (both := one_round_trip(router)) is not None:
            reading = await both.apply_and_observe(share)
            unsettled.discard(router.name)
            return reading
        await router.apply(share)
    unsettled.discard(router.name)
    return await observe(router, timer)


def _backoff(first: float, most: float) -> wait_exponential:
    """``first`` seconds after the first failed try, doubling up to ``most``."""
    return wait_exponential(multiplier=first, max=most)


async def _retrying(
    router: Router,
    attempt: Callable[[], Coroutine[Any, Any, RouterOutcome]],
    *,
    deadline: float,
    apply_timeout: float,
    clock: Clock,
    on_retry: OnRetry | None,
) -> RouterOutcome:
    """Transient errors (and calls that hang) are retried with backoff until ``deadline`` on
    ``clock``, each reported to ``on_retry``; permanent ones are not retried."""
    last = ""
    backoff = _backoff(RETRY_FIRST, RETRY_MAX)

    def failed_try(state: RetryCallState) -> None:
        nonlocal last
        exc = state.outcome.exception() if state.outcome else None
        # a try cut short by the deadline keeps the router's own error, which says more
        last = (last or str(exc)) if isinstance(exc, CallTimeout) else str(exc)

    def report(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(router.name, last)

    retrying = AsyncRetrying(
        sleep=clock.sleep,
        stop=lambda state: clock.monotonic() >= deadline,
        # the last try is at the deadline
        wait=lambda state: min(backoff(state), max(0.0, deadline - clock.monotonic())),
        retry=retry_if_exception_type(TransientError),
        after=failed_try,
        before_sleep=report,
        reraise=True,
    )
    try:
        async for one_try in retrying:
            with one_try:
                left = max(deadline - clock.monotonic(), RETRY_FIRST)
                return await within(clock, left, attempt())
    except PermanentError as exc:
        return RouterOutcome(router=router.name, result="failed", error=str(exc))
    except TransientError:
        pass
    return RouterOutcome(
        router=router.name,
        result="failed",
        error=f"{last} (still failing after {apply_timeout:g}s of retries)",
    )


async def shift(
    routers: Mapping[str, Router],
    share: int,
    *,
    written_states: Mapping[str, RouterState | None],
    force: bool,
    apply_timeout: float,
    clock: Clock,
    timer: RouterTimer | None = None,
    on_retry: OnRetry | None = None,
    unsettled: set[str] | None = None,
) -> list[RouterOutcome]:
    """Set every router to ``share`` concurrently; one outcome per router, in ``routers``'
    order. Every router is read first: when any of them drifted (unless ``force``) or cannot
    be read within ``apply_timeout``, none is written (the others are ``held``). A router's
    own retries read it again before writing, so a drift that appears meanwhile is not written
    over. ``unsettled`` collects the routers whose write was sent but never answered."""
    deadline = clock.monotonic() + apply_timeout
    sent: set[str] = set() if unsettled is None else unsettled
    states = {name: written_states.get(name) for name in routers}

    def retried(
        router: Router, attempt: Callable[[], Coroutine[Any, Any, RouterOutcome]]
    ) -> Coroutine[Any, Any, RouterOutcome]:
        return _retrying(
            router,
            attempt,
            deadline=deadline,
            apply_timeout=apply_timeout,
            clock=clock,
            on_retry=on_retry,
        )

    names = list(routers)
    first = await together(
        [
            retried(
                routers[name],
                functools.partial(
                    _read_first,
                    routers[name],
                    share,
                    written_state=states[name],
                    force=force,
                    timer=timer,
                ),
            )
            for name in names
        ]
    )
    if any(o.result in ("drift", "failed") for o in first):
        return first
    held = [name for name, o in zip(names, first, strict=True) if o.result == "held"]

    def write(name: str) -> Callable[[], Coroutine[Any, Any, RouterOutcome]]:
        tries = itertools.count()
        return lambda: _shift_attempt(
            routers[name],
            share,
            written_state=states[name],
            force=force,
            timer=timer,
            unsettled=sent,
            recheck=next(tries) > 0,
        )

    written = await together([retried(routers[name], write(name)) for name in held])
    after = dict(zip(held, written, strict=True))
    return [after.get(name, o) for name, o in zip(names, first, strict=True)]


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
    return await _verify_old(router, reading, write_error, clock, timer)


async def _verify_old(
    router: Router,
    reading: Reading | None,
    write_error: str,
    clock: Clock,
    timer: RouterTimer | None,
) -> RouterOutcome:
    """``applied`` when the router reads all-old (``reading``, or a read now)."""
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


async def _until_answering(
    router: Router, seconds: float, clock: Clock, timer: RouterTimer | None
) -> None:
    """Wait ``seconds`` between rollback attempts on a router that did not answer, or less:
    it is read every ``PROBE_EVERY``, and the wait ends as soon as it answers."""
    end = clock.monotonic() + seconds
    while (left := end - clock.monotonic()) > PROBE_EVERY:
        await clock.sleep(PROBE_EVERY)
        with contextlib.suppress(AdapterError):
            await within(clock, PROBE_EVERY, observe(router, timer))
            return
    await clock.sleep(max(0.0, left))


async def roll_back(
    router: Router,
    clock: Clock,
    timer: RouterTimer | None = None,
    *,
    unsettled: set[str],
    on_retry: Callable[[RouterOutcome], None] | None = None,
) -> Reading:
    """Roll one router back until it reads all-old; that reading. Each failed attempt goes
    to ``on_retry``; the next one comes after a backoff (up to ``ROLLBACK_BACKOFF_MAX``), or
    as soon as a router that did not answer answers again. A router in ``unsettled`` (a
    forward write to it may still land) must read all-old again ``STALE_WRITE_SETTLE`` after
    it first does; it leaves ``unsettled`` when verified."""
    answered = True  # by the last attempt: one that did not is probed while it waits

    async def attempt() -> RouterOutcome:
        outcome = await _rollback_one(router, clock, timer)
        if outcome.result == "applied" and router.name in unsettled:
            await clock.sleep(STALE_WRITE_SETTLE)
            outcome = await _verify_old(router, None, "", clock, timer)
        return outcome

    def failed(state: RetryCallState) -> None:
        nonlocal answered
        assert state.outcome is not None  # tenacity calls before_sleep after an attempt
        outcome: RouterOutcome = state.outcome.result()
        answered = outcome.reading is not None
        if on_retry is not None:
            on_retry(outcome)

    async def pause(seconds: float) -> None:
        if answered:  # it answers but is not all-old yet: plain backoff
            await clock.sleep(seconds)
        else:
            await _until_answering(router, seconds, clock, timer)

    retrying = AsyncRetrying(
        sleep=pause,
        wait=_backoff(RETRY_FIRST, ROLLBACK_BACKOFF_MAX),
        retry=retry_if_not_result(_verified),
        before_sleep=failed,
    )
    verified: RouterOutcome = await retrying(attempt)
    assert verified.reading is not None  # retried until _verified
    unsettled.discard(router.name)
    return verified.reading


def _verified(outcome: RouterOutcome) -> bool:
    return outcome.result == "applied" and outcome.reading is not None


async def rollback_once(
    routers: Mapping[str, Router], clock: Clock, timer: RouterTimer | None = None
) -> list[RouterOutcome]:
    """One concurrent rollback attempt on the given routers."""
    return await together([_rollback_one(r, clock, timer) for r in routers.values()])


async def together(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of ``calls``, run concurrently; a lone call (most services have one router)
    is awaited as it is, without a task around it."""
    if len(calls) == 1:
        return [await calls[0]]
    return list(await asyncio.gather(*calls))
