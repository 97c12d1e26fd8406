"""One runner per active cutover: inputs -> ``core.machine.step`` -> persist -> act.

Everything that can change a cutover (check results, its timer, router read-backs, results
of actuation, operator commands) is put on one queue and handled one at a time, so operator
commands arriving during a stage change are serialized, never lost. Each handled input is
stepped through the pure machine together with the monotonic time that passed; the new
cutover and its journal events are written in one store transaction *before* the actions are
started (PRODUCT.md, Restart). Actuation runs as one background task at a time: a newer
action (a rollback) cancels an older one (a forward shift), so rollback starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from cutover.checks.base import Check, MeasureContext
from cutover.core import machine
from cutover.core.drift import standing
from cutover.core.machine import (
    Action,
    Apply,
    Command,
    Input,
    Measured,
    Observed,
    Rollback,
    RollbackVerified,
    RouterRolledBack,
    ShiftApplied,
    ShiftAttemptFailed,
    ShiftFailed,
    Step,
    Tick,
)
from cutover.core.model import Cutover, Event, Measurement, Phase, Status, Verdict, evolve
from cutover.engine.actuation import (
    CALL_TIMEOUT,
    RouterOutcome,
    observe,
    roll_back,
    shift,
    together,
    within,
)
from cutover.engine.clock import Clock, Timer
from cutover.errors import AdapterError, ConflictError, StoreError
from cutover.observability.metrics import Metrics
from cutover.routers.base import Reading, Router
from cutover.store.base import StateStore

__all__ = ["Runner"]

#: Write progress alone (elapsed hold time, passing measurements: see
#: ``Cutover.only_progress_since``) at most this often per cutover. A crash loses at most this
#: much hold time (the hold then lasts longer, never shorter); with many cutovers it keeps the
#: store's writes far below one per measurement (docs/performance.md).
PERSIST_EVERY = 30.0
#: Seconds between read-backs of a cutover without checks (with checks: two check intervals).
OBSERVE_WITHOUT_CHECKS = 5.0


@dataclass(frozen=True)
class _Wake:
    """Only time passed."""


@dataclass(frozen=True)
class _ReadBack:
    router: str
    reading: Reading | None
    error: str = ""


_Item = Input | _Wake | _ReadBack


class Runner:
    def __init__(
        self,
        *,
        cutover: Cutover,
        routers: Mapping[str, Router],
        checks: Mapping[str, Check],
        store: StateStore,
        clock: Clock,
        metrics: Metrics | None = None,
        on_change: Callable[[Cutover, list[Event]], Awaitable[None]] | None = None,
        act_delay: float = 0.0,
    ) -> None:
        """``act_delay`` (tests only, e.g. the crash harness) holds the runner this many real
        seconds between persisting a transition and acting on it, so a SIGKILL can land
        there."""
        self.cutover = cutover
        self._routers = dict(routers)
        self._checks = dict(checks)
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._router_timer = metrics.router_timer(cutover.service) if metrics else None
        self._on_change = on_change
        self._inbox: asyncio.Queue[tuple[_Item, asyncio.Future[Step] | None]] = asyncio.Queue()
        self._actuation: asyncio.Task[None] | None = None
        # routers a forward write was sent to and never answered: it may still land, so their
        # rollback is verified once more after it could have (actuation.STALE_WRITE_SETTLE)
        self._unsettled: set[str] = set()
        # Feeders are clock timers, not tasks asleep: a check's next measurement, the next
        # read-back, and a wake at the cutover's next deadline (machine.next_deadline). A task
        # runs only while a measurement or read-back is under way.
        self._timers: dict[str, Timer] = {}  # "check:<name>", "observe", "wake"
        self._feeding: set[asyncio.Task[None]] = set()
        self._wake_at = float("inf")
        # per router: the last good read-back handled and what the cutover was after it
        self._last_reading: dict[str, tuple[Observed, tuple[object, ...]]] = {}
        self._last_mono = clock.monotonic()
        self._last_persist = self._last_mono
        self._persisted = cutover  # as last written to the store
        self._unsaved_events: list[Event] = []
        self._unsaved_actions: list[Action] = []
        self._closed = False
        self._log = structlog.get_logger().bind(service=cutover.service, cutover=cutover.id)
        self._act_delay = act_delay
        # Drift is rare and a hold is long: routers are read back every two check intervals
        # (1-10 s), half the read-backs of one per interval.
        intervals = [p.interval for p in cutover.plan.checks]
        self._observe_every = (
            max(1.0, min(2 * min(intervals), 10.0)) if intervals else OBSERVE_WITHOUT_CHECKS
        )

    # --- public ---------------------------------------------------------------------------

    async def command(self, cmd: Command) -> Cutover:
        """Hand an operator command to the runner; returns the cutover after it, or raises
        :class:`ConflictError` when the command does not apply now."""
        if self._closed:
            raise ConflictError("the cutover is no longer running", code="invalid_state")
        fut: asyncio.Future[Step] = asyncio.get_running_loop().create_future()
        await self._inbox.put((cmd, fut))
        result = await fut
        if result.refused:
            raise ConflictError(result.refused.message, code=result.refused.code)
        return result.cutover

    async def run(self, *, restarted: bool, crash: str = "") -> Cutover:
        """Drive the cutover until it is completed or rolled back (or the task is cancelled:
        a daemon stopping leaves traffic as it is). ``crash`` names the error of the runner
        this one replaces (the supervisor respawns a crashed runner)."""
        self._log.info("runner started", restarted=restarted, status=self.cutover.status.value)
        self._after(self._observe_every, "observe", self._observe)
        for name, check in self._checks.items():
            self._measure_in(0.0, name, check)
        try:
            if restarted:
                if self.cutover.phase is Phase.SHIFTING:
                    # the runner before may have sent a forward write that never came back
                    # (a frozen server still holds it): verify a rollback as after one
                    self._unsettled.update(self._routers)
                await self._handle(machine.Restarted(crash=crash), None)
            elif self.cutover.status is Status.ROLLING_BACK:
                # an undo is stored already rolling back (core.undo): act on it
                await self._start_actuation(Rollback())
            if self.cutover.phase is Phase.PREFLIGHT and self.cutover.status is Status.RUNNING:
                await self._handle(machine.PreflightPassed(), None)
            self._arm_timer(fired=False)
            # a terminal step whose save failed is retried until it is stored: the record
            # must not stay "running" while traffic is all-old
            while not self.cutover.status.terminal or self._unsaved_events:
                item, fut = await self._inbox.get()
                await self._handle(item, fut)
            self._log.info("runner finished", status=self.cutover.status.value)
            return self.cutover
        except asyncio.CancelledError:
            await self._persist_progress()
            raise
        finally:
            self._closed = True
            for timer in self._timers.values():
                timer.cancel()
            feeding = list(self._feeding)
            for task in feeding:
                task.cancel()
            await self._cancel_actuation()
            await asyncio.gather(*feeding, return_exceptions=True)
            await asyncio.gather(
                *(r.aclose() for r in self._routers.values()),
                *(c.aclose() for c in self._checks.values()),
                return_exceptions=True,
            )
            while not self._inbox.empty():  # nobody will answer these any more
                _, fut = self._inbox.get_nowait()
                if fut is not None and not fut.done():
                    fut.set_exception(
                        ConflictError("the cutover is no longer running", code="invalid_state")
                    )

    async def _persist_progress(self) -> None:
        """On a clean stop (the task cancelled): write what is only in memory -- the hold's
        monitored time since the last write -- so the next daemon continues from it. Nothing
        new is decided or acted on here; a store that does not answer within a second is let
        go (the next daemon then continues from the previous write)."""
        c = self.cutover
        if c == self._persisted and not self._unsaved_events:
            return
        try:
            async with asyncio.timeout(1.0):
                await self._store.save(c, self._unsaved_events)
        except (StoreError, TimeoutError) as exc:
            self._log.warning("progress not saved at stop", error=str(exc) or "timeout")

    # --- the loop -------------------------------------------------------------------------

    async def _handle(self, item: _Item, fut: asyncio.Future[Step] | None) -> None:
        if isinstance(item, _ReadBack) and self._repeats_last_reading(item):
            return
        now_mono = self._clock.monotonic()
        dt = max(0.0, now_mono - self._last_mono)
        self._last_mono = now_mono
        now = self._clock.time()
        before = self.cutover
        step = machine.step(before, Tick(dt=dt), now)
        event = self._to_input(step.cutover, item)
        if event is not None:
            step = step.then(machine.step(step.cutover, event, now))
        if fut is not None and not fut.done():
            fut.set_result(step)
        await self._commit(before, step, now_mono)
        self._arm_timer(fired=isinstance(item, _Wake))
        if isinstance(event, Observed) and not event.error:
            self._last_reading[event.router] = (event, self._reading_context(event.router))

    def _reading_context(self, router: str) -> tuple[object, ...]:
        c = self.cutover
        return (c.router(router), c.status, c.phase, c.stage_index)

    def _repeats_last_reading(self, rb: _ReadBack) -> bool:
        """A periodic read-back equal to the last one handled, with the cutover unchanged for
        it since: the machine would decide exactly what it decided then, so it is not stepped
        (most periodic read-backs are). A new reading or an error always goes through."""
        last = self._last_reading.get(rb.router)
        if last is None or rb.reading is None:
            return False
        observed = self._observed(self.cutover, rb)
        return observed == last[0] and self._reading_context(rb.router) == last[1]

    def _arm_timer(self, *, fired: bool) -> None:
        """Wake the runner when time alone can next change the cutover. An armed timer that is
        due no later is kept; a later one is replaced (a new stage's hold may be shorter)."""
        remaining = machine.next_deadline(self.cutover)
        if remaining is None or self._closed:
            return
        due = self._clock.monotonic() + remaining
        if "wake" in self._timers and not fired and self._wake_at <= due:
            return
        self._wake_at = due
        self._at(remaining, "wake", self._inbox.put_nowait, (_Wake(), None))

    # Timers take their callback's arguments, not closures: a closure per timer (its function
    # and cells) is more garbage for every young collection to traverse (docs/performance.md).

    def _at(self, seconds: float, key: str, callback: Callable[..., object], *args: Any) -> None:
        """(Re)arm timer ``key`` to call ``callback(*args)`` in ``seconds``."""
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        if not self._closed:
            self._timers[key] = self._clock.call_later(seconds, self._fire, key, callback, *args)

    def _fire(self, key: str, callback: Callable[..., object], *args: Any) -> None:
        del self._timers[key]
        callback(*args)

    def _after(
        self, seconds: float, key: str, feed: Callable[..., Coroutine[None, None, None]], *args: Any
    ) -> None:
        """Run ``feed(*args)`` as a task in ``seconds`` (a feeder re-arms itself when done)."""
        self._at(seconds, key, self._start, key, feed, *args)

    def _start(
        self, key: str, feed: Callable[..., Coroutine[None, None, None]], *args: Any
    ) -> None:
        task = asyncio.create_task(feed(*args), name=f"{key}-{self.cutover.id}")
        self._feeding.add(task)
        task.add_done_callback(self._feeding.discard)

    def _to_input(self, c: Cutover, item: _Item) -> Input | None:
        if isinstance(item, _Wake):
            return None
        if isinstance(item, _ReadBack):
            return self._observed(c, item)
        return item

    def _observed(self, c: Cutover, rb: _ReadBack) -> Observed | None:
        """A periodic read-back, judged against the cutover as it is *now*."""
        if self._actuation is not None and not self._actuation.done():
            return None  # a shift or rollback is under way; its own outcome reports
        if rb.reading is None:
            return Observed(router=rb.router, error=rb.error)
        router = self._routers[rb.router]
        status = c.router(rb.router)
        evacuated = c.status in (Status.ROLLING_BACK, Status.FAILED, Status.ROLLED_BACK)
        stands = standing(
            rb.reading.state,
            target=router.expected(status.desired, evacuate=evacuated),
            written=status.written_state,
        )
        return Observed(
            router=rb.router,
            share=rb.reading.share,
            detail=rb.reading.detail,
            known=stands != "drift",
            at_desired=stands == "at_target",
        )

    async def _commit(self, before: Cutover, step: Step, now_mono: float) -> None:
        if any(isinstance(a, Rollback) for a in step.actions):
            # a rollback decision stops a forward shift before anything else is awaited (the
            # store may be slow): no forward write is sent after it (PRODUCT.md)
            await self._cancel_actuation()
        c = step.cutover
        events = [*self._unsaved_events, *step.events]
        actions = [*self._unsaved_actions, *step.actions]
        progress_only = not events and not actions and c.only_progress_since(self._persisted)
        if (c == before and not events) or (
            progress_only and now_mono - self._last_persist < PERSIST_EVERY
        ):
            self.cutover = c
            if self._metrics is not None and c.checks != before.checks:
                self._metrics.observe_cutover(c)
            return
        try:
            if c.store_error:  # this write takes the held-back transition: the fault is over
                c = evolve(c, store_error="")
            c = await self._store.save(c, events)
            self._persisted = c
            self._unsaved_events, self._unsaved_actions = [], []
            self._last_persist = now_mono
        except StoreError as exc:
            # Not persisted, so not acted on: events and actions wait for the next save (the
            # next input tries again) -- except a rollback, acted on at once (moving to the old
            # color is always safe), which also voids every forward action held back before it.
            # The alarm is the store's, paced; the cutover's status carries the reason.
            rollback = any(isinstance(a, Rollback) for a in actions)
            self._unsaved_events = events
            self._unsaved_actions = [] if rollback else actions
            if not before.store_error or rollback:
                self._log.warning(
                    "transition not written: held back until the state store takes it",
                    error=str(exc),
                    status=c.status.value,
                    rollback_acted_on=rollback,
                )
            self.cutover = evolve(c, store_error=str(exc))
            if rollback:
                await self._start_actuation(Rollback())
            return
        self.cutover = c
        for e in step.events:
            self._log.info(e.message, kind=e.kind, status=c.status.value, **e.data)
        if self._metrics is not None:
            self._metrics.observe_cutover(c)
            for e in step.events:
                if e.kind == "rollback_started":
                    self._metrics.rollbacks.labels(c.service, str(e.data.get("cause"))).inc()
        if self._on_change is not None:
            await self._on_change(c, list(step.events))
        if actions and self._act_delay > 0:  # test hook: a window between persist and act
            self._log.warning("test hook: persisted, acting after a delay", delay=self._act_delay)
            await asyncio.sleep(self._act_delay)
        for action in actions:
            await self._start_actuation(action)

    # --- actuation --------------------------------------------------------------------------

    async def _cancel_actuation(self) -> None:
        task, self._actuation = self._actuation, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _start_actuation(self, action: Action) -> None:
        await self._cancel_actuation()
        coro = self._apply(action) if isinstance(action, Apply) else self._rollback()
        self._actuation = asyncio.create_task(coro, name=f"actuate-{self.cutover.id}")

    async def _apply(self, action: Apply) -> None:
        c = self.cutover
        outcomes = await shift(
            self._routers,
            action.share,
            written_states={r.name: r.written_state for r in c.routers},
            force=action.force,
            apply_timeout=c.plan.apply_timeout,
            clock=self._clock,
            timer=self._router_timer,
            on_retry=functools.partial(self._shift_retrying, action.share),
            unsettled=self._unsettled,
        )
        failed = [o for o in outcomes if o.result == "failed"]
        drifted = [o for o in outcomes if o.result == "drift"]
        if failed:
            await self._inbox.put(
                (
                    ShiftFailed(share=action.share, router=failed[0].router, error=failed[0].error),
                    None,
                )
            )
        elif drifted:
            for o in drifted:
                assert o.reading is not None
                await self._inbox.put(
                    (
                        Observed(
                            router=o.router,
                            share=o.reading.share,
                            detail=o.reading.detail,
                            known=False,
                            at_desired=False,
                        ),
                        None,
                    )
                )
        else:
            read = {o.router: o.reading for o in outcomes if o.reading is not None}
            applied = ShiftApplied(
                share=action.share,
                states={name: dict(r.state) for name, r in read.items()},
                observed={name: r.share for name, r in read.items()},
                details={name: r.detail for name, r in read.items()},
            )
            await self._inbox.put((applied, None))

    def _shift_retrying(self, share: int, router: str, error: str) -> None:
        """A forward shift's try failed and will be retried: visible at once (PRODUCT.md)."""
        self._log.warning(
            "shift not applied yet, retrying", router=router, share=share, error=error
        )
        self._inbox.put_nowait((ShiftAttemptFailed(share=share, router=router, error=error), None))

    def _rollback_retrying(self, outcome: RouterOutcome) -> None:
        self._log.warning("rollback not verified yet", router=outcome.router, error=outcome.error)
        self._inbox.put_nowait((Observed(router=outcome.router, error=outcome.error), None))

    async def _rollback(self) -> None:
        """Every router rolled back on its own, retried until verified; a router verified
        while others are still retried is reported at once (status shows which are done)."""
        pending = set(self._routers)

        async def one(name: str, router: Router) -> tuple[str, Reading]:
            reading = await roll_back(
                router,
                self._clock,
                self._router_timer,
                unsettled=self._unsettled,
                on_retry=self._rollback_retrying,
            )
            pending.discard(name)
            if pending:
                done = RouterRolledBack(
                    router=name, state=dict(reading.state), detail=reading.detail
                )
                self._inbox.put_nowait((done, None))
            return name, reading

        readings = await together([one(name, r) for name, r in self._routers.items()])
        # one RollbackVerified carries every router: one write for the last, not two
        await self._inbox.put(
            (
                RollbackVerified(
                    states={name: dict(r.state) for name, r in readings},
                    details={name: r.detail for name, r in readings},
                ),
                None,
            )
        )

    # --- background feeders -----------------------------------------------------------------

    async def _observe(self) -> None:
        """Read every router back once (unless a shift or rollback is under way, which reads
        back itself), then come back in ``_observe_every``."""
        try:
            if self.cutover.status not in (Status.RUNNING, Status.AWAITING_APPROVAL, Status.PAUSED):
                return
            if self._actuation is not None and not self._actuation.done():
                return
            for name, router in self._routers.items():
                try:
                    reading: Reading | None = await within(
                        self._clock, CALL_TIMEOUT, observe(router, self._router_timer)
                    )
                    error = ""
                except AdapterError as exc:
                    reading, error = None, str(exc)
                self._inbox.put_nowait((_ReadBack(name, reading, error), None))
        finally:
            self._after(self._observe_every, "observe", self._observe)

    async def _measure(self, name: str, check: Check) -> None:
        """One measurement of check ``name``; the next comes one interval after it ends."""
        try:
            ctx = MeasureContext(
                share=self.cutover.share, baseline=self.cutover.check(name).baseline
            )
            m = await check.measure(ctx)
        except Exception as exc:  # a check must not raise; if one does, it is an error
            m = Measurement(
                verdict=Verdict.ERROR, detail=f"check crashed: {exc!r}", at=self._clock.time()
            )
        self._inbox.put_nowait((Measured(check=name, measurement=m), None))
        self._measure_in(self.cutover.policy(name).interval, name, check)

    def _measure_in(self, seconds: float, name: str, check: Check) -> None:
        self._after(seconds, f"check:{name}", self._measure, name, check)
