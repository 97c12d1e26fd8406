"""Prometheus metrics of one daemon, on a registry built with the app (no module singletons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cutover.core.model import COLORS, Cutover, Status, Verdict

__all__ = ["Metrics"]

_VERDICT_VALUE = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.ERROR: 2, Verdict.FAIL: 3}


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
            "Rollbacks started, by reason kind",
            ["service", "reason"],
            registry=r,
        )
        self.router_latency = Histogram(
            "cutover_router_operation_seconds",
            "Router operation latency",
            ["router_type", "operation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )

    def set_live(self, service: str, live: str) -> None:
        for color in COLORS:
            self.live.labels(service, color).set(1 if color == live else 0)

    def observe_cutover(self, c: Cutover) -> None:
        for status in Status:
            self.state.labels(c.service, status.value).set(1 if c.status is status else 0)
        self.stage.labels(c.service).set(c.stage_index)
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

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
