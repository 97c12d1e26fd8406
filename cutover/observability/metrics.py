"""Prometheus metrics of one daemon, built with the app (no module singletons).

What on-call reads (PRODUCT.md, Signals for on-call) and what config/prometheus-rules.yaml and
config/grafana-dashboard.json query: the live color, each service's cutover state, stage and
hold progress, per-router desired/observed share, check values and verdicts, rollbacks by
cause, router operation latency, event-loop lag and webhook delivery.

The per-service families (state, stage, routers, checks, router latency) are read at scrape
time by :class:`_CutoverCollector` from one immutable record a service, which the runners
replace as their cutover changes: at 1000 services that is thousands of series, and a
prometheus_client child each would cost memory and collection time. Rollbacks (a few series
a service) and the daemon-wide signals (loop lag, webhooks, store errors, reloads, runner
crashes) are prometheus_client counters, histograms and gauges. :meth:`Metrics.scrape`
writes the text with ``generate_latest`` in a worker thread, so that a scrape of many
services does not hold the event loop (status answers, timers) for the time it takes.

A service's series are what the rules, the dashboard and the docs read, and no more: the
state and live color are written for the current one only (the rules and the dashboard select
``== 1``), no ``_created`` series, router latency buckets one every ~5x.

Counters an alert takes ``increase()`` of are created at 0 as soon as their labels are known
(a service's first cutover, a configured webhook): ``increase()`` never counts a series' first
sample, so a counter born at 1 would hide the first rollback (recipes/lb-and-metrics.md §6).
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import accumulate
from time import perf_counter

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from cutover.core.model import Cutover, Status, Verdict

__all__ = ["ROLLBACK_CAUSES", "Metrics", "RouterTimer"]

_VERDICT_VALUE = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.ERROR: 2, Verdict.FAIL: 3}

#: The ``cause`` vocabulary of ``rollback_started`` events (cutover.core.machine._start_rollback).
ROLLBACK_CAUSES = ("check", "operator", "router", "drift", "approval")

#: Router calls take ~1 ms on a local HAProxy socket and up to their timeout when a server
#: hangs. One bound every ~5x is what a p99 needs to tell a healthy call, a slow server and a
#: call that ran into its timeout apart; the series a bucket costs is paid by every
#: (service, router, op).
_ROUTER_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0)
#: 0.02: the bound issue 7 sets for loop lag p99, so a dashboard can tell it directly.
#: The ``le`` label of each router latency bucket, the last one +Inf.
_ROUTER_LE = tuple(
    floatToGoString(b)  # type: ignore[no-untyped-call]
    for b in (*_ROUTER_BUCKETS, float("inf"))
)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True, slots=True)
class _Latency:
    """The router latency histogram of one (service, router, op): observations per bucket (not
    cumulative, the last one +Inf) and their sum."""

    counts: tuple[int, ...] = (0,) * len(_ROUTER_LE)
    sum: float = 0.0

    def add(self, seconds: float) -> _Latency:
        # a bucket counts the observations <= its bound, so a bound itself goes in it
        i = bisect_left(_ROUTER_BUCKETS, seconds)
        counts = (*self.counts[:i], self.counts[i] + 1, *self.counts[i + 1 :])
        return _Latency(counts, self.sum + seconds)


@dataclass(frozen=True, slots=True)
class _ServiceState:
    """What the gauges of one service show. Replaced, never changed: a scrape in a worker
    thread reads one whole record while the loop thread writes the next one.

    Router and check values outlive the cutover that set them: a check keeps its last value
    when a measurement has none, a router its last read-back.
    """

    live: str | None = None
    status: Status | None = None  # None until the service's first cutover
    stage: int = 0
    hold: float = 0.0
    elapsed: float = 0.0
    desired: Mapping[str, float] = field(default_factory=dict)
    observed: Mapping[str, float] = field(default_factory=dict)
    check_value: Mapping[str, float] = field(default_factory=dict)
    check_verdict: Mapping[str, float] = field(default_factory=dict)
    latency: Mapping[tuple[str, str], _Latency] = field(default_factory=dict)  # (router, op)

    def observe_latency(self, router: str, op: str, seconds: float) -> _ServiceState:
        before = self.latency.get((router, op), _Latency())
        return replace(self, latency={**self.latency, (router, op): before.add(seconds)})

    def observe(self, c: Cutover) -> _ServiceState:
        measured = [(check.name, check.last) for check in c.checks if check.last is not None]
        return replace(
            self,
            status=c.status,
            stage=c.stage_index,
            hold=c.stage.hold,
            elapsed=c.stage_elapsed,
            desired={**self.desired, **{r.name: float(r.desired) for r in c.routers}},
            observed={
                **self.observed,
                **{r.name: r.observed for r in c.routers if r.observed is not None},
            },
            check_value={
                **self.check_value,
                **{name: m.value for name, m in measured if m.value is not None},
            },
            check_verdict={
                **self.check_verdict,
                **{name: float(_VERDICT_VALUE[m.verdict]) for name, m in measured},
            },
        )


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class _CutoverCollector:
    """The per-service families but rollbacks, built at scrape time from the current records.

    Router latency is here rather than in a prometheus_client Histogram, whose children (one a
    service, router and op) cost twice as much to collect as these records.
    """

    def __init__(self, states: Mapping[str, _ServiceState]) -> None:
        self.states = states

    def collect(self) -> Iterable[Metric]:
        live = _gauge(
            "cutover_live_color",
            "1 for the live color of each service (the other color has no series)",
            ["service", "color"],
        )
        state = _gauge(
            "cutover_state",
            "1 for the state of the service's running or last cutover (no series for other states)",
            ["service", "state"],
        )
        stage = _gauge("cutover_stage_index", "Current stage index (0-based)", ["service"])
        hold = _gauge(
            "cutover_stage_hold_seconds", "Hold time the current stage asks for", ["service"]
        )
        elapsed = _gauge(
            "cutover_stage_elapsed_seconds",
            "Monitored seconds since the current stage was applied (paused time included)",
            ["service"],
        )
        desired = _gauge(
            "cutover_router_desired_share",
            "New color's share the daemon wants, percent",
            ["service", "router"],
        )
        observed = _gauge(
            "cutover_router_observed_share",
            "New color's share read back, percent",
            ["service", "router"],
        )
        check_value = _gauge(
            "cutover_check_value", "Last measured value of a check", ["service", "check"]
        )
        check_verdict = _gauge(
            "cutover_check_verdict",
            "Last verdict: 0 pass, 1 inconclusive, 2 error, 3 fail",
            ["service", "check"],
        )
        latency = HistogramMetricFamily(
            "cutover_router_operation_seconds",
            "Router operation latency (op: observe, apply, rollback)",
            labels=["service", "router", "op"],
        )
        for service, s in self.states.items():
            if s.live is not None:
                live.add_metric([service, s.live], 1.0)
            if s.status is not None:
                state.add_metric([service, s.status.value], 1.0)
                stage.add_metric([service], s.stage)
                hold.add_metric([service], s.hold)
                elapsed.add_metric([service], s.elapsed)
            for family, values in (
                (desired, s.desired),
                (observed, s.observed),
                (check_value, s.check_value),
                (check_verdict, s.check_verdict),
            ):
                for name, v in values.items():
                    family.add_metric([service, name], v)
            for (router, op), h in s.latency.items():
                buckets = list(zip(_ROUTER_LE, accumulate(h.counts), strict=True))
                latency.add_metric([service, router, op], buckets, h.sum)
        return [
            *(live, state, stage, hold, elapsed),
            *(desired, observed, check_value, check_verdict),
            latency,
        ]


class RouterTimer:
    """Times the router calls of one service's cutover into its latency histogram; the engine's
    actuation gets one of these, so it needs to know neither the service nor Prometheus."""

    def __init__(self, metrics: Metrics, service: str) -> None:
        self._metrics = metrics
        self._service = service

    @contextlib.contextmanager
    def time(self, router: str, op: str) -> Iterator[None]:
        """Observe the duration of the ``with`` body, also when it raises."""
        t0 = perf_counter()
        try:
            yield
        finally:
            self._metrics.observe_router(self._service, router, op, perf_counter() - t0)


class Metrics:
    def __init__(self) -> None:
        # The ``_created`` series of counters and histograms: nothing reads them, and rollbacks
        # at 0 would double; prometheus_client turns them off process-wide only.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        # Replaced as a whole when a service is added, so that a scrape in a worker thread
        # iterates a dict no one grows (a record of a known service is swapped in place).
        self._states: dict[str, _ServiceState] = {}
        self._collector = _CutoverCollector(self._states)
        r.register(self._collector)
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
        self.store_write_errors = Counter(
            "cutover_store_write_errors",
            "State store writes that failed (disk full, read-only, database lost): while they "
            "fail, nothing moves toward a new color and /readyz is 503",
            registry=r,
        )
        self.config_reload_success = Gauge(
            "cutover_config_reload_success",
            "1 when the last config load (start-up or SIGHUP reload) was taken, 0 when refused",
            registry=r,
        )
        self.config_reload_success.set(1)  # the daemon starts only with a valid config

    def _update(self, service: str, state: _ServiceState) -> None:
        if service in self._states:
            self._states[service] = state
        else:
            self._states = {**self._states, service: state}
            self._collector.states = self._states

    def set_live(self, service: str, live: str) -> None:
        self._update(service, replace(self._states.get(service, _ServiceState()), live=live))

    def observe_cutover(self, c: Cutover) -> None:
        known = self._states.get(c.service)
        if known is None or known.status is None:
            for cause in ROLLBACK_CAUSES:
                self.rollbacks.labels(c.service, cause)  # at 0 before the first rollback
        self._update(c.service, (known or _ServiceState()).observe(c))

    def router_timer(self, service: str) -> RouterTimer:
        return RouterTimer(self, service)

    def observe_router(self, service: str, router: str, op: str, seconds: float) -> None:
        """One router call of ``service``'s cutover that took ``seconds``."""
        state = self._states.get(service, _ServiceState())
        self._update(service, state.observe_latency(router, op, seconds))

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
        """The exposition text, written on the calling thread; the daemon serves :meth:`scrape`."""
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """What ``GET /metrics`` serves: :meth:`render` in a worker thread.

        The thread holds the GIL for at most the interpreter's switch interval at a time, so
        the loop keeps answering while thousands of series are written.
        """
        return await asyncio.to_thread(self.render)
