"""The supervisor: one runner per active cutover, start/undo/commands, clean shutdown.

On start-up it resumes every active cutover from the store (PRODUCT.md, Restart). Starts of one
service are serialized by a per-service lock and, across processes, by the store's
one-active-cutover rule. Stopping cancels the runners: traffic stays as it is, and the next
daemon picks every cutover up where it was. A start (or undo) that preflight refuses is stored
as ``refused`` and never gets a runner. A service's live color is what its newest completed
cutover or verified undo made live (:func:`cutover.core.undo.live_after`).

A runner that crashes (an exception escaped it: a bug, an unexpected store error) would leave its
cutover without anyone to roll it back until the daemon restarts. So the supervisor respawns it
in-process from the stored record, as a restart would (a ``restarted`` event naming the crash;
it counts toward ``max_restarts``, so a crash loop pauses the cutover), after a backoff of
1 s doubling to at most 60 s; each crash is an alarm. A runner that ran for ``restart_window``
resets the backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from cutover.checks.base import Check, color_placeholders
from cutover.config import Config, ServiceSpec
from cutover.core import machine
from cutover.core.machine import Step
from cutover.core.model import Color, Cutover, Event, evolve, other_color
from cutover.core.refusal import refused
from cutover.core.undo import live_after, new_undo, undo_refusal
from cutover.engine.clock import Clock
from cutover.engine.preflight import lower_ttls, preflight, reachable
from cutover.engine.runner import Runner
from cutover.errors import ConflictError, CutoverError, NotFoundError, PreflightError
from cutover.observability.metrics import Metrics
from cutover.resources import Resources
from cutover.routers.base import Reading, Router
from cutover.store.base import StateStore

__all__ = ["Supervisor"]

Listener = Callable[[Cutover, list[Event]], Awaitable[None]]
Adapters = Callable[[ServiceSpec, str, Color], tuple[dict[str, Router], dict[str, Check]]]

#: Backoff before respawning a crashed runner: first delay and cap, in seconds.
RESPAWN_FIRST = 1.0
RESPAWN_MAX = 60.0


def _new_id() -> str:
    return "co-" + secrets.token_hex(6)


class Supervisor:
    def __init__(
        self,
        *,
        config: Config,
        store: StateStore,
        clock: Clock,
        resources: Resources,
        metrics: Metrics | None = None,
        listeners: tuple[Listener, ...] = (),
        adapters: Adapters | None = None,
        act_delay: float = 0.0,
    ) -> None:
        """``adapters`` builds a cutover's routers and checks (tests pass fakes); by default
        they are built from their specs, handed ``resources``. ``act_delay`` is the runners'
        test hook (:class:`Runner`)."""
        self.config = config
        self._act_delay = act_delay
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._listeners = listeners
        self._adapters = adapters or functools.partial(_build_adapters, resources=resources)
        self._runners: dict[str, tuple[Runner, asyncio.Task[Cutover]]] = {}
        self._by_service: dict[str, str] = {}  # service -> the id of its running cutover
        self._spawned_at: dict[str, float] = {}
        self._crashes: dict[str, int] = {}  # crashes in a row, per cutover
        self._respawns: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._live: dict[str, Color] = {}
        self._log = structlog.get_logger()
        self.started = False

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every active cutover found in the store."""
        for service in self.config.services:
            await self._refresh_live(service)
        for c in await self._store.active():
            spec = self._frozen_spec(c)
            routers, checks = self._adapters(spec, c.service, c.to_color)
            self._spawn(c, routers, checks, restarted=True)
        self.started = True

    async def stop(self) -> None:
        """Cancel every runner (and pending respawn) without touching traffic."""
        self._stopping = True
        tasks: list[asyncio.Task[Any]] = [*self._respawns.values()]
        tasks += [task for _, task in self._runners.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runners.clear()
        self._by_service.clear()
        self._respawns.clear()

    # --- queries -----------------------------------------------------------------------------

    def live(self, service: str) -> Color:
        return self._live.get(service) or self.config.service(service).live

    def runner(self, cutover_id: str) -> Runner | None:
        entry = self._runners.get(cutover_id)
        return entry[0] if entry else None

    async def get(self, cutover_id: str) -> Cutover:
        runner = self.runner(cutover_id)
        if runner is not None:
            return runner.cutover
        c = await self._store.get(cutover_id)
        if c is None:
            raise NotFoundError(f"no cutover {cutover_id!r}")
        return c

    @property
    def clock(self) -> Clock:
        return self._clock

    async def latest(self, service: str) -> Cutover | None:
        self.config.service(service)  # 404 for an unknown service
        running = self._by_service.get(service)
        if running is not None and running in self._runners:
            return self._runners[running][0].cutover
        history = await self._store.history(service, limit=1)
        return history[0] if history else None

    # --- operator actions --------------------------------------------------------------------

    async def start_cutover(self, service: str, *, actor: str) -> Cutover:
        spec = self.config.service(service)
        async with self._lock(service):
            active = await self._active(service)
            if active is not None:
                raise ConflictError(
                    f"service {service} already has cutover {active.id} ({active.status.value})",
                    code="cutover_running",
                )
            live = self.live(service)
            new = other_color(live)
            routers, checks = self._adapters(spec, service, new)
            plan = spec.plan()

            def record(states: dict[str, dict[str, str]], ttl_wait: float = 0.0) -> Step:
                created = machine.new_cutover(
                    cutover_id=_new_id(),
                    service=service,
                    from_color=live,
                    to_color=new,
                    plan=plan,
                    router_kinds={name: r.kind for name, r in routers.items()},
                    router_states=states,
                    now=self._clock.time(),
                    actor=actor,
                    router_ttls={r.name: float(r.ttl or 0) for r in spec.routers},
                    ttl_wait=ttl_wait,
                )
                frozen = evolve(created.cutover, spec=spec.model_dump(mode="json"))
                return evolve(created, cutover=frozen)

            async def prepare() -> Step:
                states = await preflight(
                    routers,
                    checks,
                    new=new,
                    dry_run=frozenset(p.name for p in plan.checks if p.dry_run),
                )
                ttl_wait, republished = await lower_ttls(routers)
                states = {**states, **republished}
                return record({name: dict(s) for name, s in states.items()}, ttl_wait)

            return await self._launch(
                routers,
                checks,
                prepare(),
                draft=lambda: record({name: {} for name in routers}).cutover,
                actor=actor,
            )

    async def undo(self, service: str, *, actor: str) -> Cutover:
        """All traffic back to the previous color at once: a rollback of the last completed
        cutover, driving the routers frozen in it (:mod:`cutover.core.undo`)."""
        spec = self.config.service(service)
        async with self._lock(service):
            last = await self._store.last_switch(service)
            refusal = undo_refusal(
                last_switch=last,
                running=await self._active(service),
                now=self._clock.time(),
                undo_window=spec.undo_window,
            )
            if refusal is not None:
                raise ConflictError(f"cannot undo {service}: {refusal.message}", code=refusal.code)
            assert last is not None  # undo_refusal refuses without a completed cutover
            # an undo measures nothing: no checks are built, now or after a restart
            frozen = self._frozen_spec(last).model_copy(update={"checks": []})
            routers, checks = self._adapters(frozen, service, last.to_color)

            def record(readings: Mapping[str, Reading]) -> Step:
                return new_undo(
                    last,
                    undo_id=_new_id(),
                    states={name: dict(r.state) for name, r in readings.items()},
                    observed={name: r.share for name, r in readings.items()},
                    details={name: r.detail for name, r in readings.items()},
                    spec=frozen.model_dump(mode="json"),
                    now=self._clock.time(),
                    actor=actor,
                )

            async def prepare() -> Step:
                return record(await reachable(routers))

            return await self._launch(
                routers, checks, prepare(), draft=lambda: record({}).cutover, actor=actor
            )

    async def command(self, cutover_id: str, command: machine.Command) -> Cutover:
        runner = self.runner(cutover_id)
        if runner is None:
            c = await self.get(cutover_id)
            raise ConflictError(
                f"cannot {command.action} cutover {cutover_id}: it is {c.status.value}",
                code="invalid_state",
            )
        return await runner.command(command)

    # --- internals -----------------------------------------------------------------------------

    def _lock(self, service: str) -> asyncio.Lock:
        return self._locks.setdefault(service, asyncio.Lock())

    async def _active(self, service: str) -> Cutover | None:
        """The service's cutover that still owns it (not completed, rolled back or refused)."""
        found = await self._store.active(service)
        return found[0] if found else None

    async def _launch(
        self,
        routers: dict[str, Router],
        checks: dict[str, Check],
        prepare: Awaitable[Step],
        *,
        draft: Callable[[], Cutover],
        actor: str,
    ) -> Cutover:
        """Store and run the cutover ``prepare`` returns once its preflight passed. When
        preflight refuses, ``draft()`` (the record without what preflight would have read) is
        kept in history as ``refused`` and the refusal is raised (HTTP 422)."""
        try:
            try:
                step = await prepare
            except PreflightError as exc:
                await self._keep_refused(draft(), reason=str(exc), actor=actor)
                raise
            c = await self._store.create(step.cutover, list(step.events))
        except BaseException:
            await _close(routers, checks)
            raise
        await self._notify(c, list(step.events))
        self._spawn(c, routers, checks, restarted=False)
        return c

    async def _keep_refused(self, draft: Cutover, *, reason: str, actor: str) -> None:
        """Store a refused start (terminal: it never has a runner). The refusal is answered
        whatever happens here: a store that cannot keep it is an alarm, not the user's error."""
        step = refused(draft, reason=reason, actor=actor, now=self._clock.time())
        try:
            c = await self._store.create(step.cutover, list(step.events))
        except CutoverError as exc:
            self._log.error(
                "refused start not kept in history",
                service=draft.service,
                reason=reason,
                error=str(exc),
                alarm=True,
            )
            return
        self._log.info(step.events[0].message, service=c.service, cutover=c.id, kind="refused")
        if self._metrics is not None:
            self._metrics.observe_cutover(c)
        await self._notify(c, list(step.events))

    def _frozen_spec(self, c: Cutover) -> ServiceSpec:
        return ServiceSpec.model_validate(c.spec) if c.spec else self.config.service(c.service)

    def _spawn(
        self,
        c: Cutover,
        routers: dict[str, Router],
        checks: dict[str, Check],
        *,
        restarted: bool,
        crash: str = "",
    ) -> None:
        runner = Runner(
            cutover=c,
            routers=routers,
            checks=checks,
            store=self._store,
            clock=self._clock,
            metrics=self._metrics,
            on_change=self._notify,
            act_delay=self._act_delay,
        )
        task = asyncio.create_task(
            runner.run(restarted=restarted, crash=crash), name=f"runner-{c.id}"
        )
        self._runners[c.id] = (runner, task)
        self._by_service[c.service] = c.id
        self._spawned_at[c.id] = self._clock.monotonic()
        task.add_done_callback(lambda t: self._finished(c.id, t))
        if self._metrics is not None:
            self._metrics.observe_cutover(c)

    def _finished(self, cutover_id: str, task: asyncio.Task[Cutover]) -> None:
        entry = self._runners.pop(cutover_id, None)
        if entry is not None and self._by_service.get(entry[0].cutover.service) == cutover_id:
            del self._by_service[entry[0].cutover.service]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            window = entry[0].cutover.plan.restart_window if entry else 0.0
            if self._clock.monotonic() - self._spawned_at.get(cutover_id, 0.0) >= window:
                self._crashes.pop(cutover_id, None)  # it ran long enough: a fresh backoff
            if self._metrics is not None and entry is not None:
                self._metrics.runner_crashes.labels(entry[0].cutover.service).inc()
            self._crashed(cutover_id, exc)
            return
        self._crashes.pop(cutover_id, None)
        self._spawned_at.pop(cutover_id, None)
        live = live_after(task.result())
        if entry is not None and live is not None:
            self._live[entry[0].cutover.service] = live
            if self._metrics is not None:
                self._metrics.set_live(entry[0].cutover.service, live)

    def _crashed(self, cutover_id: str, exc: BaseException) -> None:
        """Schedule a respawn of a crashed runner after a bounded backoff (an alarm).

        Written by hand, not with tenacity (which actuation uses): tenacity retries one awaited
        call, its attempt counter only grows for the life of that call, and its per-attempt
        timestamps read ``time.monotonic`` rather than the injected clock. Here each attempt is
        a separate runner task that must stay reachable (``runner()``, commands, ``stop()``)
        and is re-read from the store, and the count resets once a runner has lived for
        ``restart_window``: tenacity would need a wait holding its own resettable counter and
        clock reading, i.e. this same bookkeeping hidden in a callback."""
        crashes = self._crashes.get(cutover_id, 0) + 1
        self._crashes[cutover_id] = crashes
        delay = min(RESPAWN_FIRST * 2 ** (crashes - 1), RESPAWN_MAX)
        self._log.error(
            "runner crashed; respawning it",
            cutover=cutover_id,
            error=repr(exc),
            crashes_in_a_row=crashes,
            respawn_in=delay,
            alarm=True,
        )
        if self._stopping:
            return
        task = asyncio.create_task(
            self._respawn(cutover_id, delay, repr(exc)), name=f"respawn-{cutover_id}"
        )
        self._respawns[cutover_id] = task
        task.add_done_callback(lambda t: self._respawned(cutover_id, t))

    async def _respawn(self, cutover_id: str, delay: float, crash: str) -> None:
        await self._clock.sleep(delay)
        c = await self._store.get(cutover_id)
        if c is None or c.status.terminal:
            return  # nothing left to drive
        spec = self._frozen_spec(c)
        routers, checks = self._adapters(spec, c.service, c.to_color)
        self._spawn(c, routers, checks, restarted=True, crash=crash)

    def _respawned(self, cutover_id: str, task: asyncio.Task[None]) -> None:
        if self._respawns.get(cutover_id) is task:
            del self._respawns[cutover_id]
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # the store could not be read, say: try again, later
            self._crashed(cutover_id, exc)

    async def _refresh_live(self, service: str) -> None:
        last = await self._store.last_switch(service)
        live = (live_after(last) if last else None) or self.config.service(service).live
        self._live[service] = live
        if self._metrics is not None:
            self._metrics.set_live(service, live)

    async def _notify(self, c: Cutover, events: list[Event]) -> None:
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener(c, events)

    # --- config reload (PRODUCT.md, Reload) ----------------------------------------------------

    async def reload(self, config: Config) -> None:
        """Take a re-read, valid ``config``: each service's next start uses it. Running
        cutovers keep their frozen plan and their runner (nothing is restarted). A service no
        longer in ``config`` stays (with its old spec) while it has an active cutover, so it
        can still be watched and aborted, and goes once that cutover's runner ends."""
        old = self.config
        busy: dict[str, tuple[ServiceSpec, str]] = {}
        for service in old.services.keys() - config.services.keys():
            async with self._lock(service):  # a start under way is in the store after it
                active = await self._active(service)
            if active is not None:
                busy[service] = (old.services[service], active.id)
        kept = {service: spec for service, (spec, _) in busy.items()}
        self.config = (
            config.model_copy(update={"services": {**config.services, **kept}}) if kept else config
        )
        for service in old.services.keys() - self.config.services.keys():
            self._live.pop(service, None)
        for service, spec in config.services.items():
            before = old.services.get(service)
            if before is None or before.live != spec.live:
                await self._refresh_live(service)
        for service, (spec, cutover_id) in busy.items():
            self._retire_when_idle(service, spec, cutover_id)

    def _retire_when_idle(self, service: str, spec: ServiceSpec, cutover_id: str) -> None:
        """Drop ``service`` (removed by a reload, kept as ``spec`` while busy) once its cutover
        ``cutover_id`` has no runner and none waits to be respawned; a later reload that brings
        the service back (a new spec) wins."""
        if self.config.services.get(service) is not spec:
            return
        entry = self._runners.get(cutover_id)
        waiting = entry[1] if entry is not None else self._respawns.get(cutover_id)
        if waiting is not None:
            waiting.add_done_callback(lambda _: self._retire_when_idle(service, spec, cutover_id))
            return
        services = {k: v for k, v in self.config.services.items() if k != service}
        self.config = self.config.model_copy(update={"services": services})
        self._live.pop(service, None)


def _build_adapters(
    spec: ServiceSpec, service: str, new: Color, *, resources: Resources
) -> tuple[dict[str, Router], dict[str, Check]]:
    placeholders = color_placeholders(service=service, new=new)
    return (
        {r.name: r.build(new=new, resources=resources) for r in spec.routers},
        {c.name: c.build(placeholders=placeholders, resources=resources) for c in spec.checks},
    )


async def _close(routers: dict[str, Router], checks: dict[str, Check]) -> None:
    await asyncio.gather(
        *(r.aclose() for r in routers.values()),
        *(c.aclose() for c in checks.values()),
        return_exceptions=True,
    )
