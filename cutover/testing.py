"""In-memory stand-ins for the engine's edges: a clock, a router and a check, for unit tests.

They exist so that the runner can be tested tick by tick (DESIGN.md, points 7 and 9) without
real time, real servers or real providers:

* :class:`FakeClock` implements :class:`cutover.engine.clock.Clock`. Monotonic and wall time
  move only when the test calls :meth:`FakeClock.advance` (both together) or
  :meth:`FakeClock.jump_wall` (wall time alone, as NTP or an operator would); ``sleep``
  suspends until the monotonic time has been advanced to the wake-up time. ``advance`` moves
  in small steps, wakes due sleepers in deadline order and yields to the event loop after each
  step, so a hold of 60 s is tested in milliseconds.
* :class:`FakeRouter` implements :class:`cutover.routers.base.Router` in memory: its state is
  ``{"share": "w<N>"}`` at N % new and ``{"share": "maint"}`` after an evacuating rollback. It
  records every call, can fail (transient or permanent errors, a number of times or until
  cleared), can hang (to test timeouts) and can be edited "by hand" to simulate drift.
* :class:`FakeCheck` implements :class:`cutover.checks.base.Check`: a scripted sequence of
  measurements, then a settable current verdict; it counts how often it was measured.
* :func:`resource_pool` makes the resources real adapters are built with, as the daemon does
  (its secret sink a :class:`~cutover.observability.logging.Redactor` the test can read); use
  it as ``async with`` so its clients close with the test.

Nothing here sleeps for real or touches the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from cutover.checks.base import Check, MeasureContext
from cutover.core.model import Measurement, Verdict
from cutover.engine.clock import Clock, Timer
from cutover.errors import AdapterError, TransientError
from cutover.observability.logging import Redactor
from cutover.resource_pool import ResourcePool
from cutover.routers.base import Reading, Router, RouterState

__all__ = ["FakeCheck", "FakeClock", "FakeRouter", "RouterCall", "RouterOp", "resource_pool"]

#: ``await asyncio.sleep(0)`` rounds after each step of :meth:`FakeClock.advance`: enough for
#: a woken task to put on a queue, the queue's reader to run and its follow-ups to start.
DEFAULT_YIELDS = 10

Settle = Callable[[], Awaitable[None]]


# --- clock ---------------------------------------------------------------------------------


class FakeClock:
    """A :class:`~cutover.engine.clock.Clock` whose time moves only when the test says so."""

    def __init__(self, *, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._mono = monotonic
        self._wall = wall
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    # --- the Clock protocol -----------------------------------------------------------------

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    async def sleep(self, seconds: float) -> None:
        """Suspend until the clock has been advanced by ``seconds`` (at least one yield)."""
        deadline = self._mono + seconds
        if deadline <= self._mono:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), fut))
        await fut  # a cancelled sleeper leaves a cancelled future; it is skipped on waking

    def call_later(self, seconds: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` once the clock has been advanced by ``seconds`` (a sleeper
        too)."""
        loop = asyncio.get_running_loop()
        deadline = self._mono + seconds
        if deadline <= self._mono:  # as in sleep: due now (or within float rounding of now)
            return loop.call_soon(callback, *args)
        fut: asyncio.Future[None] = loop.create_future()
        fut.add_done_callback(lambda f: None if f.cancelled() else callback(*args))
        heapq.heappush(self._sleepers, (deadline, next(self._order), fut))
        return fut

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        """Cancel the block when the clock has been advanced by ``seconds``; raise
        :class:`TimeoutError` for it then (as :func:`asyncio.timeout` does)."""
        task = asyncio.current_task()
        assert task is not None
        expired = False

        async def expire() -> None:
            nonlocal expired
            await self.sleep(seconds)
            expired = True
            task.cancel()

        watcher = asyncio.create_task(expire())
        try:
            yield
        except asyncio.CancelledError:
            if expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            watcher.cancel()

    # --- test controls ----------------------------------------------------------------------

    @property
    def sleepers(self) -> int:
        """Tasks currently suspended in :meth:`sleep`."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_wakeup(self) -> float | None:
        """The monotonic time of the earliest pending sleeper, if any."""
        self._drop_done()
        return self._sleepers[0][0] if self._sleepers else None

    def jump_wall(self, seconds: float) -> None:
        """Move wall time alone (NTP step, manual ``date -s``); monotonic time stays."""
        self._wall += seconds

    async def advance(
        self,
        seconds: float,
        *,
        step: float = 0.1,
        yields: int = DEFAULT_YIELDS,
        settle: Settle | None = None,
    ) -> None:
        """Move monotonic and wall time forward by ``seconds``.

        Time moves at most ``step`` at once and stops at every sleeper's deadline, so sleepers
        wake in order and each sees the monotonic time it asked for. After each move the event
        loop runs ``yields`` rounds, then ``settle`` (if given) is awaited: a test passes one
        that waits for work outside the loop (a store's thread) to finish."""
        if seconds < 0:
            raise ValueError("a monotonic clock never goes back")
        if step <= 0:
            raise ValueError("step must be greater than 0")
        target = self._mono + seconds
        while True:
            to = min(target, self._mono + step)
            due = self.next_wakeup()
            if due is not None and due < to:
                to = due
            self._move_to(to)
            self._wake_due()
            await self.settle(yields=yields, settle=settle)
            if self._mono >= target:
                return

    async def advance_until(
        self,
        predicate: Callable[[], bool],
        *,
        within: float,
        step: float = 0.1,
        yields: int = DEFAULT_YIELDS,
        settle: Settle | None = None,
    ) -> float:
        """Advance in ``step``s until ``predicate()`` holds; return the seconds it took.

        Raises :class:`TimeoutError` when ``within`` seconds of fake time pass without it."""
        start = self._mono
        while not predicate():
            spent = self._mono - start
            if spent >= within:
                raise TimeoutError(f"condition not met within {within:g}s of fake time")
            await self.advance(min(step, within - spent), step=step, yields=yields, settle=settle)
        return self._mono - start

    @staticmethod
    async def settle(*, yields: int = DEFAULT_YIELDS, settle: Settle | None = None) -> None:
        """Let ready tasks run without moving time."""
        for _ in range(yields):
            await asyncio.sleep(0)
        if settle is not None:
            await settle()

    # --- internals --------------------------------------------------------------------------

    def _move_to(self, mono: float) -> None:
        if mono > self._mono:
            self._wall += mono - self._mono
            self._mono = mono

    def _drop_done(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)


# --- router --------------------------------------------------------------------------------

RouterOp = Literal["preflight", "lower_ttl", "apply", "observe"]


@dataclass(frozen=True, kw_only=True)
class RouterCall:
    """One call made to a :class:`FakeRouter`, recorded when it starts."""

    op: RouterOp
    share: int | None = None
    evacuate: bool = False


@dataclass(kw_only=True)
class _Failure:
    error: type[AdapterError]
    message: str
    ops: frozenset[RouterOp]
    remaining: int | None  # None: until cleared


@dataclass(kw_only=True)
class _Hang:
    ops: frozenset[RouterOp]
    remaining: int | None
    released: asyncio.Event


class FakeRouter:
    """An in-memory :class:`~cutover.routers.base.Router`.

    ``state`` is what the "server" holds: ``{"share": "w<N>"}`` or ``{"share": "maint"}``.
    Calls are recorded in ``calls`` before any configured failure or hang applies, so a retried
    call shows up once per attempt."""

    def __init__(self, name: str, *, share: int = 0, kind: str = "fake") -> None:
        self._name = name
        self._kind = kind
        self.state: dict[str, str] = {"share": f"w{share}"}
        #: ``lower_ttl`` returns this (a fake DNS router whose published TTL was too long).
        self.old_ttl = 0.0
        self.calls: list[RouterCall] = []
        self.closed = 0
        self.hanging = 0  # calls currently suspended by :meth:`hang`
        self._failure: _Failure | None = None
        self._hang: _Hang | None = None

    def __repr__(self) -> str:
        return f"FakeRouter({self._name!r}, state={self.state})"

    # --- the Router protocol ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return self._kind

    def expected(self, share: int, *, evacuate: bool = False) -> RouterState:
        return {"share": "maint"} if evacuate else {"share": f"w{share}"}

    async def preflight(self) -> None:
        await self._enter(RouterCall(op="preflight"))

    async def lower_ttl(self) -> float:
        await self._enter(RouterCall(op="lower_ttl"))
        old, self.old_ttl = self.old_ttl, 0.0
        return old

    async def apply(self, share: int, *, evacuate: bool = False) -> None:
        await self._enter(RouterCall(op="apply", share=share, evacuate=evacuate))
        self.state = dict(self.expected(share, evacuate=evacuate))

    async def observe(self) -> Reading:
        await self._enter(RouterCall(op="observe"))
        return Reading(share=self.share, state=dict(self.state), detail=f"fake {self._name}")

    async def aclose(self) -> None:
        self.closed += 1

    # --- test controls ----------------------------------------------------------------------

    @property
    def share(self) -> float | None:
        """The new color's share the state stands for (0 when evacuated)."""
        value = self.state.get("share", "")
        if value == "maint":
            return 0.0
        if value.startswith("w") and value[1:].isdigit():
            return float(value[1:])
        return None

    def set_by_hand(self, share: int) -> None:
        """An operator (or a reload) edits the router behind the daemon's back: drift."""
        self.state = {"share": f"w{share}"}

    def fail(
        self,
        error: type[AdapterError] = TransientError,
        message: str = "",
        *,
        times: int | None = 1,
        ops: Iterable[RouterOp] = ("apply",),
    ) -> None:
        """Raise ``error`` from the next ``times`` calls of ``ops`` (``None``: until
        :meth:`clear`). Replaces an earlier failure setting."""
        self._failure = _Failure(
            error=error,
            message=message or f"router {self._name}: simulated {error.__name__}",
            ops=frozenset(ops),
            remaining=times,
        )

    def hang(self, *, times: int | None = None, ops: Iterable[RouterOp] = ("apply",)) -> None:
        """Suspend the next ``times`` calls of ``ops`` (``None``: every one) until
        :meth:`clear`; a suspended call then carries on normally. Cancelling it is fine."""
        if self._hang is not None:
            self._hang.released.set()
        self._hang = _Hang(ops=frozenset(ops), remaining=times, released=asyncio.Event())

    def clear(self) -> None:
        """No more failures or hangs; calls suspended by :meth:`hang` carry on."""
        self._failure = None
        if self._hang is not None:
            self._hang.released.set()
            self._hang = None

    def ops(self, op: RouterOp) -> list[RouterCall]:
        return [c for c in self.calls if c.op == op]

    @property
    def applied(self) -> list[int]:
        """Shares of every forward ``apply`` attempt (evacuating rollbacks excluded)."""
        return [
            c.share
            for c in self.calls
            if c.op == "apply" and not c.evacuate and c.share is not None
        ]

    @property
    def evacuations(self) -> int:
        return sum(1 for c in self.calls if c.op == "apply" and c.evacuate)

    # --- internals --------------------------------------------------------------------------

    async def _enter(self, call: RouterCall) -> None:
        self.calls.append(call)
        hang = self._hang
        if hang is not None and call.op in hang.ops and hang.remaining != 0:
            if hang.remaining is not None:
                hang.remaining -= 1
            self.hanging += 1
            try:
                await hang.released.wait()
            finally:
                self.hanging -= 1
        failure = self._failure
        if failure is not None and call.op in failure.ops and failure.remaining != 0:
            if failure.remaining is not None:
                failure.remaining -= 1
            raise failure.error(failure.message)


# --- check ---------------------------------------------------------------------------------


class FakeCheck:
    """An in-memory :class:`~cutover.checks.base.Check`.

    :meth:`measure` returns the scripted measurements first, in order, then the current
    verdict and value (see :meth:`set`). ``at`` is stamped from ``clock`` when one is given."""

    def __init__(
        self,
        name: str,
        *,
        verdict: Verdict = Verdict.PASS,
        value: float | None = None,
        detail: str = "",
        script: Iterable[Measurement | Verdict] = (),
        clock: Clock | None = None,
    ) -> None:
        self._name = name
        self._clock = clock
        self.verdict = verdict
        self.value = value
        self.detail = detail
        self._script: deque[Measurement] = deque()
        self.script(*script)
        self.measured = 0
        self.contexts: list[MeasureContext] = []  # what each measure() was told
        self.closed = 0

    @property
    def name(self) -> str:
        return self._name

    def set(self, verdict: Verdict, value: float | None = None, detail: str = "") -> None:
        """The verdict every unscripted measurement returns from now on."""
        self.verdict, self.value, self.detail = verdict, value, detail

    def script(self, *items: Measurement | Verdict) -> None:
        """Queue measurements returned before the current verdict."""
        for item in items:
            m = item if isinstance(item, Measurement) else Measurement(verdict=item)
            self._script.append(m)

    async def measure(self, ctx: MeasureContext) -> Measurement:
        self.measured += 1
        self.contexts.append(ctx)
        at = self._clock.time() if self._clock is not None else 0.0
        if self._script:
            m = self._script.popleft()
            return m if m.at else replace(m, at=at)
        return Measurement(verdict=self.verdict, value=self.value, detail=self.detail, at=at)

    async def aclose(self) -> None:
        self.closed += 1


def _conforms(
    clock: FakeClock, router: FakeRouter, check: FakeCheck
) -> tuple[Clock, Router, Check]:
    """Never called: lets mypy prove that the fakes implement the engine's protocols."""
    return clock, router, check


# --- resources -----------------------------------------------------------------------------


def resource_pool(secrets: Redactor | None = None) -> ResourcePool:
    """Resources for adapters under test, owned by the test: close them (``async with``)."""
    return ResourcePool(secrets=Redactor() if secrets is None else secrets)
