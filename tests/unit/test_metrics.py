"""The /metrics exposition: names, labels and values the rules and the dashboard query."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cutover.core.model import (
    CheckPolicy,
    CheckState,
    Cutover,
    Measurement,
    Phase,
    Plan,
    RouterStatus,
    Stage,
    Status,
    Verdict,
)
from cutover.observability.metrics import ROLLBACK_CAUSES, Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(all_samples: Samples, name: str, **labels: str) -> float:
    return all_samples[(name, frozenset(labels.items()))]


def holding() -> Cutover:
    return Cutover(
        id="co-1",
        service="checkout",
        from_color="blue",
        to_color="green",
        plan=Plan(
            stages=(Stage(weight=10, hold=60.0), Stage(weight=100, hold=120.0)),
            checks=(CheckPolicy(name="errors"), CheckPolicy(name="latency")),
            routers=("edge", "dns"),
        ),
        phase=Phase.HOLDING,
        stage_index=1,
        stage_elapsed=42.5,
        routers=(
            RouterStatus(name="edge", kind="haproxy", desired=100, observed=99.5),
            RouterStatus(name="dns", kind="rfc2136", desired=100, observed=None),
        ),
        checks=(
            CheckState(name="errors", last=Measurement(verdict=Verdict.FAIL, value=0.25)),
            CheckState(name="latency"),
        ),
    )


def test_a_cutover_shows_state_stage_hold_routers_and_checks() -> None:
    m = Metrics()
    m.set_live("checkout", "blue")
    m.observe_cutover(holding())
    s = samples(m)
    assert value(s, "cutover_live_color", service="checkout", color="blue") == 1
    assert value(s, "cutover_live_color", service="checkout", color="green") == 0
    assert value(s, "cutover_state", service="checkout", state="running") == 1
    assert sum(v for (name, _), v in s.items() if name == "cutover_state") == 1
    assert value(s, "cutover_stage_index", service="checkout") == 1
    assert value(s, "cutover_stage_hold_seconds", service="checkout") == 120
    assert value(s, "cutover_stage_elapsed_seconds", service="checkout") == 42.5
    assert value(s, "cutover_router_desired_share", service="checkout", router="dns") == 100
    assert value(s, "cutover_router_observed_share", service="checkout", router="edge") == 99.5
    assert (
        "cutover_router_observed_share",
        frozenset({("service", "checkout"), ("router", "dns")}),
    ) not in s
    assert value(s, "cutover_check_value", service="checkout", check="errors") == 0.25
    assert value(s, "cutover_check_verdict", service="checkout", check="errors") == 3
    assert not any(dict(labels).get("check") == "latency" for _, labels in s)  # not measured yet


def test_rollback_counters_exist_at_zero_before_the_first_rollback() -> None:
    # increase() ignores a series' first sample: a counter born at 1 would hide the rollback
    m = Metrics()
    m.observe_cutover(holding())
    s = samples(m)
    for cause in ROLLBACK_CAUSES:
        assert value(s, "cutover_rollbacks_total", service="checkout", reason=cause) == 0
    m.rollbacks.labels("checkout", "check").inc()
    m.observe_cutover(replace(holding(), status=Status.ROLLING_BACK))
    s = samples(m)
    assert value(s, "cutover_rollbacks_total", service="checkout", reason="check") == 1
    assert value(s, "cutover_state", service="checkout", state="rolling_back") == 1
    assert value(s, "cutover_state", service="checkout", state="running") == 0


def test_router_timer_observes_per_service_router_and_op_even_on_errors() -> None:
    m = Metrics()
    timer = m.router_timer("checkout")
    with timer.time("edge", "apply"):
        time.sleep(0.01)
    with pytest.raises(RuntimeError), timer.time("edge", "observe"):
        raise RuntimeError("router down")
    s = samples(m)
    labels = {"service": "checkout", "router": "edge"}
    assert value(s, "cutover_router_operation_seconds_count", **labels, op="apply") == 1
    assert value(s, "cutover_router_operation_seconds_sum", **labels, op="apply") >= 0.01
    assert value(s, "cutover_router_operation_seconds_count", **labels, op="observe") == 1
    assert value(s, "cutover_router_operation_seconds_bucket", **labels, op="apply", le="+Inf") == 1


def test_webhook_counters_start_at_zero() -> None:
    m = Metrics()
    m.add_webhook("notify[0]")
    m.webhook_failures.labels("notify[0]").inc(2)
    s = samples(m)
    assert value(s, "cutover_webhook_deliveries_total", webhook="notify[0]") == 0
    assert value(s, "cutover_webhook_failures_total", webhook="notify[0]") == 2


async def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    m = Metrics()
    watch = asyncio.create_task(m.watch_loop_lag(interval=0.02))
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # noqa: ASYNC251 -- the point: block the loop
        await asyncio.sleep(0.05)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    s = samples(m)
    assert value(s, "cutover_event_loop_lag_seconds_count") >= 3
    assert value(s, "cutover_event_loop_lag_seconds_bucket", le="0.1") < value(
        s, "cutover_event_loop_lag_seconds_count"
    )  # one wake-up came more than 0.1 s late


def test_every_app_gets_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.set_live("checkout", "green")
    assert not any(name == "cutover_live_color" for name, _ in samples(b))
