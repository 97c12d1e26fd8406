"""Prometheus metrics of one daemon, built with the app (no module singletons).

What on-call reads (PRODUCT.md, Signals for on-call) and what config/prometheus-rules.yaml and
config/grafana-dashboard.json query: the live color, each service's cutover state, stage and
hold progress, per-router desired/observed share, check values and verdicts, rollbacks by
cause, router operation latency, event-loop lag and webhook delivery.

Counters an alert takes ``increase()`` of are created at 0 as soon as their labels are known
(a service's first cutover, a configured webhook): ``increase()`` never counts a series' first
sample, so a counter born at 1 would hide the first rollback (recipes/lb-and-metrics.md §6).

The per-service families (~80 series a service, two thirds of them router latency buckets)
are plain numbers per service, written out as exposition text here: as prometheus_client
objects they took ~0.7 s per ``generate_latest`` and ~27 MB at 1000 services, and a scrape
held the event loop for all of it. The text is the one ``generate_latest`` wrote (label names
sorted, numbers as ``floatToGoString`` writes them, the ``_created`` series included), so the
rules, the dashboard and other readers see no change. Each service's text is kept until one
of its series changes, and :meth:`Metrics.scrape` writes the changed ones in slices of ~2 ms
of the loop. The daemon-wide families (loop lag, webhooks, runner crashes, store write errors,
config reloads) have a few series each and stay prometheus_client objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from time import perf_counter

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from cutover.core.model import COLORS, Cutover, Status, Verdict

__all__ = ["ROLLBACK_CAUSES", "Metrics", "RouterTimer"]

_VERDICT_VALUE = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.ERROR: 2, Verdict.FAIL: 3}

#: The ``cause`` vocabulary of ``rollback_started`` events (cutover.core.machine._start_rollback).
ROLLBACK_CAUSES = ("check", "operator", "router", "drift", "approval")

#: Router calls take ~1 ms on a local HAProxy socket and up to their timeout when a server hangs.
_ROUTER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: 0.02: the bound issue 7 sets for loop lag p99, so a dashboard can tell it directly.
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

#: How prometheus_client writes a number (Go's way: +Inf, NaN, 1.234567e+06); untyped there.
_go_float: Callable[[float], str] = floatToGoString

#: How long a scrape writes text before it lets the loop run other tasks (Metrics.scrape).
_SLICE = 0.002

_LATENCY = "cutover_router_operation_seconds"
_BUCKETS = tuple(
    f'{_LATENCY}_bucket{{le="{_go_float(bound)}",' for bound in (*_ROUTER_BUCKETS, float("inf"))
)
_ROLLBACKS_HELP = "Rollbacks started, by cause (check, operator, router, drift, approval)"
_LATENCY_HELP = "Router operation latency (op: observe, apply, rollback)"


def _family(name: str, kind: str, doc: str, *, always: bool = True) -> tuple[bytes, bool]:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode(), always


#: HELP and TYPE of each per-service family, in the order of _Service.lines(), and whether the
#: family is written without series: prometheus_client writes such a family as its header
#: alone, but the ``_created`` gauge of a counter or histogram only when it has series.
_FAMILIES = (
    _family("cutover_live_color", "gauge", "1 for the live color of each service"),
    _family(
        "cutover_state", "gauge", "1 for the current state of the service's running or last cutover"
    ),
    _family("cutover_stage_index", "gauge", "Current stage index (0-based)"),
    _family("cutover_stage_hold_seconds", "gauge", "Hold time the current stage asks for"),
    _family(
        "cutover_stage_elapsed_seconds",
        "gauge",
        "Monitored seconds since the current stage was applied (paused time included)",
    ),
    _family("cutover_router_desired_share", "gauge", "New color's share the daemon wants, percent"),
    _family("cutover_router_observed_share", "gauge", "New color's share read back, percent"),
    _family("cutover_check_value", "gauge", "Last measured value of a check"),
    _family(
        "cutover_check_verdict", "gauge", "Last verdict: 0 pass, 1 inconclusive, 2 error, 3 fail"
    ),
    _family("cutover_rollbacks_total", "counter", _ROLLBACKS_HELP),
    _family("cutover_rollbacks_created", "gauge", _ROLLBACKS_HELP, always=False),
    _family(_LATENCY, "histogram", _LATENCY_HELP),
    _family(f"{_LATENCY}_created", "gauge", _LATENCY_HELP, always=False),
)


def _num(value: float) -> str:
    """``_go_float(value)``, twice as fast for most values: a ``repr`` of at most 7
    characters is what it returns too, unless it is inf or nan (Go writes ``+Inf``, ``NaN``);
    a longer one may need Go's exponent form."""
    s = repr(value)
    if len(s) > 7 or s[-1] in "fn":
        return _go_float(value)
    return s


def _label(value: str) -> str:
    """A label value escaped as the text format asks (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _keyed(family: str, key: str, values: dict[str, float], service_label: str) -> str:
    """One line per router or check of a service: ``family{key="…",service="…"} value``."""
    return "".join(
        f'{family}{{{key}="{_label(name)}",{service_label}}} {_num(v)}\n'
        for name, v in values.items()
    )


class _Count:
    """One rollback counter series. prometheus_client exposes its creation time as
    ``_created``: formatted once, as a timestamp is the slowest number to format."""

    __slots__ = ("created", "labels", "value")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.value = 0.0
        self.created = _go_float(time.time())

    def lines(self) -> str:
        return f"cutover_rollbacks_total{{{self.labels}}} {_num(self.value)}\n"


class _Latency:
    """One router latency series: observations per bucket (not cumulative) and their sum."""

    __slots__ = ("counts", "created", "labels", "sum")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.counts = [0] * len(_BUCKETS)  # the last one is +Inf
        self.sum = 0.0
        self.created = _go_float(time.time())

    def observe(self, seconds: float) -> None:
        # a bucket counts the observations <= its bound, so a bound itself goes in it
        self.counts[bisect_left(_ROUTER_BUCKETS, seconds)] += 1
        self.sum += seconds

    def lines(self) -> str:
        """The bucket, count and sum lines."""
        labels = self.labels
        totals = [_num(float(n)) for n in accumulate(self.counts)]
        lines = [f"{bucket}{labels}}} {n}\n" for bucket, n in zip(_BUCKETS, totals, strict=True)]
        lines.append(f"{_LATENCY}_count{{{labels}}} {totals[-1]}\n")
        lines.append(f"{_LATENCY}_sum{{{labels}}} {_num(self.sum)}\n")
        return "".join(lines)


class _Service:
    """The series of one service. Changed on the loop thread only; each change drops the text,
    which the next render writes again."""

    __slots__ = (
        "_text",
        "check_value",
        "check_verdict",
        "desired",
        "elapsed",
        "hold",
        "label",
        "latency",
        "live",
        "observed",
        "rollbacks",
        "stage",
        "status",
    )

    def __init__(self, service: str) -> None:
        self.label = f'service="{_label(service)}"'
        self.live: str | None = None
        self.status: Status | None = None  # None until the service's first cutover
        self.stage = 0.0
        self.hold = 0.0
        self.elapsed = 0.0
        # Series outlive the cutover that set them, as prometheus_client children did: a check
        # keeps its last value when a measurement has none, a router its last read-back.
        self.desired: dict[str, float] = {}
        self.observed: dict[str, float] = {}
        self.check_value: dict[str, float] = {}
        self.check_verdict: dict[str, float] = {}
        self.rollbacks: dict[str, _Count] = {}
        self.latency: dict[tuple[str, str], _Latency] = {}
        self._text: tuple[bytes, ...] | None = None

    def set_live(self, live: str) -> None:
        self.live = live
        self._text = None

    def observe(self, c: Cutover) -> None:
        self.status = c.status
        self.stage = float(c.stage_index)
        self.hold = float(c.stage.hold)
        self.elapsed = float(c.stage_elapsed)
        for cause in ROLLBACK_CAUSES:
            self._rollbacks(cause)  # at 0 before the first rollback
        for router in c.routers:
            self.desired[router.name] = float(router.desired)
            if router.observed is not None:
                self.observed[router.name] = float(router.observed)
        for check in c.checks:
            if check.last is None:
                continue
            if check.last.value is not None:
                self.check_value[check.name] = float(check.last.value)
            self.check_verdict[check.name] = float(_VERDICT_VALUE[check.last.verdict])
        self._text = None

    def count_rollback(self, reason: str, amount: float) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._rollbacks(reason).value += amount
        self._text = None

    def observe_latency(self, router: str, op: str, seconds: float) -> None:
        series = self.latency.get((router, op))
        if series is None:
            labels = f'op="{_label(op)}",router="{_label(router)}",{self.label}'
            series = self.latency[router, op] = _Latency(labels)
        series.observe(seconds)
        self._text = None

    def _rollbacks(self, reason: str) -> _Count:
        count = self.rollbacks.get(reason)
        if count is None:
            count = self.rollbacks[reason] = _Count(f'reason="{_label(reason)}",{self.label}')
        return count

    def text(self) -> tuple[bytes, ...]:
        """This service's lines of each family of _FAMILIES (empty if it has none)."""
        if self._text is None:
            self._text = tuple(lines.encode() for lines in self.lines())
        return self._text

    def lines(self) -> tuple[str, ...]:
        svc, num = self.label, _num
        live = state = stage = hold = elapsed = ""
        if self.live is not None:
            live = "".join(
                f'cutover_live_color{{color="{color}",{svc}}} '
                f"{'1.0' if color == self.live else '0.0'}\n"
                for color in COLORS
            )
        if self.status is not None:
            state = "".join(
                f'cutover_state{{{svc},state="{status.value}"}} '
                f"{'1.0' if status is self.status else '0.0'}\n"
                for status in Status
            )
            stage = f"cutover_stage_index{{{svc}}} {num(self.stage)}\n"
            hold = f"cutover_stage_hold_seconds{{{svc}}} {num(self.hold)}\n"
            elapsed = f"cutover_stage_elapsed_seconds{{{svc}}} {num(self.elapsed)}\n"
        return (
            live,
            state,
            stage,
            hold,
            elapsed,
            _keyed("cutover_router_desired_share", "router", self.desired, svc),
            _keyed("cutover_router_observed_share", "router", self.observed, svc),
            _keyed("cutover_check_value", "check", self.check_value, svc),
            _keyed("cutover_check_verdict", "check", self.check_verdict, svc),
            "".join(c.lines() for c in self.rollbacks.values()),
            "".join(
                f"cutover_rollbacks_created{{{c.labels}}} {c.created}\n"
                for c in self.rollbacks.values()
            ),
            "".join(series.lines() for series in self.latency.values()),
            "".join(
                f"{_LATENCY}_created{{{series.labels}}} {series.created}\n"
                for series in self.latency.values()
            ),
        )


def _families(texts: list[tuple[bytes, ...]]) -> list[bytes]:
    """The per-service families, each one's header and then the lines of every service."""
    parts = []
    for i, (head, always) in enumerate(_FAMILIES):
        lines = [text[i] for text in texts if text[i]]
        if lines or always:
            parts.append(head)
            parts.extend(lines)
    return parts


class _Rollbacks:
    """``cutover_rollbacks_total`` with the call the runner makes on a prometheus_client
    counter: ``rollbacks.labels(service, reason).inc()``."""

    def __init__(self, service: Callable[[str], _Service]) -> None:
        self._service = service

    def labels(self, service: str, reason: str) -> _Rollback:
        return _Rollback(self._service(service), reason)


class _Rollback:
    def __init__(self, service: _Service, reason: str) -> None:
        self._service = service
        self._reason = reason

    def inc(self, amount: float = 1.0) -> None:
        self._service.count_rollback(self._reason, amount)


class RouterTimer:
    """Times the router calls of one service's cutover into its latency histogram; the engine's
    actuation gets one of these, so it needs to know neither the service nor Prometheus."""

    def __init__(self, service: _Service) -> None:
        self._service = service

    @contextlib.contextmanager
    def time(self, router: str, op: str) -> Iterator[None]:
        """Observe the duration of the ``with`` body, also when it raises."""
        t0 = perf_counter()
        try:
            yield
        finally:
            self._service.observe_latency(router, op, perf_counter() - t0)


class _ServiceFamilies:
    """The per-service families as prometheus_client objects, parsed from their text, so that
    ``Metrics.registry`` holds every family (``get_sample_value`` in tests). Scrapes do not
    come here."""

    def __init__(self, services: Iterable[_Service]) -> None:
        self._services = services

    def collect(self) -> Iterable[Metric]:
        text = b"".join(_families([s.text() for s in self._services]))
        return text_string_to_metric_families(text.decode())


class Metrics:
    def __init__(self) -> None:
        self._services: dict[str, _Service] = {}
        self.rollbacks = _Rollbacks(self._service)
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_ServiceFamilies(self._services.values()))
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

    def _service(self, service: str) -> _Service:
        s = self._services.get(service)
        if s is None:
            s = self._services[service] = _Service(service)
        return s

    def set_live(self, service: str, live: str) -> None:
        self._service(service).set_live(live)

    def observe_cutover(self, c: Cutover) -> None:
        self._service(c.service).observe(c)

    def router_timer(self, service: str) -> RouterTimer:
        return RouterTimer(self._service(service))

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
        """The exposition text, written at once; the daemon serves :meth:`scrape`."""
        return self._body([s.text() for s in self._services.values()])

    async def scrape(self) -> bytes:
        """What ``GET /metrics`` serves: :meth:`render`, written in slices of ~2 ms of the loop.

        A service's text comes from its series at one moment; a cutover that changes while
        the scrape goes on shows in the next one, as if this scrape had come a moment sooner.
        """
        texts = []
        until = perf_counter() + _SLICE
        for service in list(self._services.values()):
            texts.append(service.text())
            if perf_counter() > until:
                await asyncio.sleep(0)
                until = perf_counter() + _SLICE
        return self._body(texts)

    def _body(self, texts: list[tuple[bytes, ...]]) -> bytes:
        parts = _families(texts)
        for m in (
            self.runner_crashes,
            self.loop_lag,
            self.webhook_deliveries,
            self.webhook_failures,
            self.store_write_errors,
            self.config_reload_success,
        ):
            parts.append(generate_latest(m))
        return b"".join(parts)
