"""The /metrics exposition: names, labels and values the rules and the dashboard query."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
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
    assert value(s, "cutover_state", service="checkout", state="running") == 1
    for name in ("cutover_live_color", "cutover_state"):  # the current one only: == 1 selects it
        assert [v for (n, _), v in s.items() if n == name] == [1]
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
    assert [dict(labels)["state"] for name, labels in s if name == "cutover_state"] == [
        "rolling_back"
    ]


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


def test_store_write_errors_start_at_zero_and_a_config_load_is_a_success() -> None:
    m = Metrics()
    s = samples(m)
    assert value(s, "cutover_store_write_errors_total") == 0  # increase() sees the first one
    assert value(s, "cutover_config_reload_success") == 1  # the daemon started on a valid one
    m.store_write_errors.inc()
    m.config_reload_success.set(0)
    s = samples(m)
    assert value(s, "cutover_store_write_errors_total") == 1
    assert value(s, "cutover_config_reload_success") == 0


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


# --- what a service costs, and the text as Prometheus reads it --------------------------------


def test_a_service_has_the_series_the_rules_and_the_dashboard_read_and_no_more() -> None:
    m = Metrics()
    m.set_live("checkout", "blue")
    m.observe_cutover(holding())
    with m.router_timer("checkout").time("edge", "apply"):
        pass
    names = [name for name, labels in samples(m) if dict(labels).get("service") == "checkout"]
    assert not [name for name in names if name.endswith("_created")]
    # live, state, stage, hold, elapsed; desired x2, observed x1; check value and verdict;
    # rollbacks at 0 by cause; one latency histogram: 7 bounds and +Inf, count and sum
    assert len(names) == 5 + 3 + 2 + len(ROLLBACK_CAUSES) + 10


def test_router_latency_buckets_are_cumulative_and_a_bound_is_in_its_bucket() -> None:
    m = Metrics()
    for seconds in (0.001, 0.003, 0.003, 20.0):
        m.observe_router("checkout", "edge", "apply", seconds)
    s = samples(m)
    labels = {"service": "checkout", "router": "edge", "op": "apply"}
    bucket = "cutover_router_operation_seconds_bucket"
    assert value(s, bucket, **labels, le="0.001") == 1
    assert value(s, bucket, **labels, le="0.005") == 3
    assert value(s, bucket, **labels, le="10.0") == 3
    assert value(s, bucket, **labels, le="+Inf") == 4
    assert value(s, "cutover_router_operation_seconds_sum", **labels) == 20.007


def test_values_outlive_the_cutover_that_set_them() -> None:
    # a check keeps its last value when a measurement has none, a router its last read-back
    m = Metrics()
    m.observe_cutover(holding())
    later = replace(
        holding(),
        routers=(RouterStatus(name="edge", kind="haproxy", desired=100, observed=None),),
        checks=(CheckState(name="errors", last=Measurement(verdict=Verdict.ERROR, value=None)),),
    )
    m.observe_cutover(later)
    s = samples(m)
    assert value(s, "cutover_router_observed_share", service="checkout", router="edge") == 99.5
    assert value(s, "cutover_check_value", service="checkout", check="errors") == 0.25
    assert value(s, "cutover_check_verdict", service="checkout", check="errors") == 2


def test_names_to_escape_read_back_as_they_were() -> None:
    odd = 'a "quoted"\\back\nslash'
    m = Metrics()
    checks = (CheckState(name=odd, last=Measurement(verdict=Verdict.PASS, value=float("nan"))),)
    router = RouterStatus(name=odd, kind="haproxy", desired=50, observed=1e20)
    m.observe_cutover(replace(holding(), service=odd, routers=(router,), checks=checks))
    m.observe_router(odd, odd, "apply", 0.002)
    s = samples(m)
    assert value(s, "cutover_router_observed_share", service=odd, router=odd) == 1e20
    assert value(s, "cutover_check_value", service=odd, check=odd) != value(  # NaN
        s, "cutover_check_value", service=odd, check=odd
    )
    bucket = "cutover_router_operation_seconds_bucket"
    assert value(s, bucket, service=odd, router=odd, op="apply", le="0.005") == 1


def test_each_kind_of_change_shows_in_the_next_render() -> None:
    m = Metrics()
    m.set_live("checkout", "blue")
    m.observe_cutover(holding())
    timer = m.router_timer("checkout")

    def observe_router() -> None:
        with timer.time("edge", "observe"):
            pass

    changes: list[tuple[Callable[[], None], str, dict[str, str], float]] = [
        (lambda: m.set_live("checkout", "green"), "cutover_live_color", {"color": "green"}, 1),
        (
            lambda: m.observe_cutover(replace(holding(), stage_elapsed=50.0)),
            "cutover_stage_elapsed_seconds",
            {},
            50,
        ),
        (
            lambda: m.rollbacks.labels("checkout", "drift").inc(),
            "cutover_rollbacks_total",
            {"reason": "drift"},
            1,
        ),
        (
            observe_router,
            "cutover_router_operation_seconds_count",
            {"router": "edge", "op": "observe"},
            1,
        ),
    ]
    for change, name, labels, want in changes:
        samples(m)
        change()
        assert value(samples(m), name, service="checkout", **labels) == want, name


def test_the_registry_holds_every_family() -> None:
    # what prometheus_client readers of Metrics.registry (get_sample_value) see
    m = Metrics()
    m.observe_cutover(holding())
    m.runner_crashes.labels("checkout").inc()
    labels = {"service": "checkout", "state": "running"}
    assert m.registry.get_sample_value("cutover_state", labels) == 1
    assert m.registry.get_sample_value("cutover_runner_crashes_total", {"service": "checkout"}) == 1


async def test_a_scrape_runs_off_the_loop_while_services_come_and_change() -> None:
    m = Metrics()
    for i in range(300):
        m.observe_cutover(replace(holding(), service=f"svc-{i}"))
    ran = 0

    async def meanwhile() -> None:
        nonlocal ran
        while True:
            ran += 1
            m.observe_cutover(replace(holding(), service=f"new-{ran}"))  # no harm to the scrape
            m.observe_cutover(replace(holding(), service="svc-0", stage_elapsed=float(ran)))
            await asyncio.sleep(0)

    task = asyncio.create_task(meanwhile())
    try:
        body = await m.scrape()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert ran >= 1  # the loop ran other tasks while the text was written
    scraped = text_string_to_metric_families(body.decode())
    services = {
        s.labels["service"] for f in scraped if f.name == "cutover_state" for s in f.samples
    }
    assert {f"svc-{i}" for i in range(300)} <= services  # services that came later: next scrape
