"""Prometheus metrics of one daemon, on a registry built with the app (no module singletons).

What on-call reads (PRODUCT.md, Signals for on-call) and what config/prometheus-rules.yaml and
config/grafana-dashboard.json query: the live color, each service's cutover state, stage and
hold progress, per-router desired/observed share, check values and verdicts, rollbacks by
cause, router operation latency, event-loop lag and webhook delivery.

Counters an alert takes ``increase()`` of are created at 0 as soon as their labels are known
(a service's first cutover, a configured webhook): ``increase()`` never counts a series' first
sample, so a counter born at 1 would hide the first rollback (recipes/lb-and-metrics.md §6).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cutover.core.model import COLORS, Cutover, Status, Verdict

__all__ = ["ROLLBACK_CAUSES", "Metrics", "RouterTimer"]

_VERDICT_VALUE = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.ERROR: 2, Verdict.FAIL: 3}

#: The ``cause`` vocabulary of ``rollback_started`` events (cutover.core.machine._start_rollback).
ROLLBACK_CAUSES = ("check", "operator", "router", "drift", "approval")

#: Router calls take ~1 ms on a local HAProxy socket and up to their timeout when a server hangs.
_ROUTER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class RouterTimer:
    """Times the router calls of one service's cutover into the shared histogram; the engine's
    actuation gets one of these, so it needs to know neither the service nor Prometheus."""

    def __init__(self, histogram: Histogram, service: str) -> None:
        self._histogram = histogram
        self._service = service

    @contextlib.contextmanager
    def time(self, router: str, op: str) -> Iterator[None]:
        """Observe the duration of the ``with`` body, also when it raises."""
        t0 = perf_counter()
        try:
            yield
        finally:
            self._histogram.labels(self._service, router, op).observe(perf_counter() - t0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.live = Gauge(
            "cutover_live_color",
            "1 for the live color of each service",
            ["service", "color"],
            registry=r,
        )
        self.state = Gauge(
            "cutover_state",
            "1 for the current state of the service's running or last cutover",
            ["service", "state"],
            registry=r,
        )
        self.stage = Gauge(
            "cutover_stage_index", "Current stage index (0-based)", ["service"], registry=r
        )
        self.stage_hold = Gauge(
            "cutover_stage_hold_seconds",
            "Hold time the current stage asks for",
            ["service"],
            registry=r,
        )
        self.stage_elapsed = Gauge(
            "cutover_stage_elapsed_seconds",
            "Monitored seconds since the current stage was applied (paused time included)",
            ["service"],
            registry=r,
        )
        self.desired = Gauge(
            "cutover_router_desired_share",
            "New color's share the daemon wants, percent",
            ["service", "router"],
            registry=r,
        )
        self.observed = Gauge(
            "cutover_router_observed_share",
            "New color's share read back, percent",
            ["service", "router"],
            registry=r,
        )
        self.check_value = Gauge(
            "cutover_check_value",
            "Last measured value of a check",
            ["service", "check"],
            registry=r,
        )
        self.check_verdict = Gauge(
            "cutover_check_verdict",
            "Last verdict: 0 pass, 1 inconclusive, 2 error, 3 fail",
            ["service", "check"],
            registry=r,
        )
        self.rollbacks = Counter(
            "cutover_rollbacks",
            "Rollbacks started, by cause (check, operator, router, drift, approval)",
            ["service", "reason"],
            registry=r,
        )
        self.runner_crashes = Counter(
            "cutover_runner_crashes",
            "Runners that crashed on a bug and were respawned (an alarm: see the daemon's log)",
            ["service"],
            registry=r,
        )
        self.router_latency = Histogram(
            "cutover_router_operation_seconds",
            "Router operation latency (op: observe, apply, rollback)",
            ["service", "router", "op"],
            buckets=_ROUTER_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "cutover_event_loop_lag_seconds",
            "How late the event loop ran a timer: time a rollback may wait before it starts",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "cutover_webhook_deliveries",
            "Journal events a webhook acknowledged (2xx)",
            ["webhook"],
            registry=r,
        )
        self.webhook_failures = Counter(
            "cutover_webhook_failures",
            "Webhook POSTs that failed (timeout, connection error, non-2xx)",
            ["webhook"],
            registry=r,
        )

    def set_live(self, service: str, live: str) -> None:
        for color in COLORS:
            self.live.labels(service, color).set(1 if color == live else 0)

    def observe_cutover(self, c: Cutover) -> None:
        for status in Status:
            self.state.labels(c.service, status.value).set(1 if c.status is status else 0)
        self.stage.labels(c.service).set(c.stage_index)
        self.stage_hold.labels(c.service).set(c.stage.hold)
        self.stage_elapsed.labels(c.service).set(c.stage_elapsed)
        for cause in ROLLBACK_CAUSES:
            self.rollbacks.labels(c.service, cause)  # at 0 before the first rollback
        for router in c.routers:
            self.desired.labels(c.service, router.name).set(router.desired)
            if router.observed is not None:
                self.observed.labels(c.service, router.name).set(router.observed)
        for check in c.checks:
            if check.last is None:
                continue
            if check.last.value is not None:
                self.check_value.labels(c.service, check.name).set(check.last.value)
            self.check_verdict.labels(c.service, check.name).set(_VERDICT_VALUE[check.last.verdict])

    def router_timer(self, service: str) -> RouterTimer:
        return RouterTimer(self.router_latency, service)

    def add_webhook(self, webhook: str) -> None:
        """A configured webhook: its counters exist (at 0) from the start."""
        self.webhook_deliveries.labels(webhook)
        self.webhook_failures.labels(webhook)

    async def watch_loop_lag(self, interval: float = 0.25) -> None:
        """Run until cancelled: every ``interval`` s, observe how much later than asked the
        loop woke this task. A blocking call anywhere in the daemon shows here."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - start - interval))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
