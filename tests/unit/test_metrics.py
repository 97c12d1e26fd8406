"""The /metrics exposition: names, labels and values the rules and the dashboard query."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
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
from cutover.observability import metrics as metrics_module
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


# --- the text is prometheus_client's, written without it ----------------------------------------


def sample_lines(text: str) -> set[str]:
    """The sample lines of an exposition, ``_created`` values aside (they are clock readings)."""
    return {
        re.sub(r"_created(\{.*\})? \S+$", r"_created\1", line)
        for line in text.splitlines()
        if not line.startswith("#")
    }


def test_the_text_is_what_prometheus_client_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    # labels to escape, numbers Go writes unlike Python, bucket bounds, and series that outlive
    # the cutover that set them: all as prometheus_client objects fed the same would write them
    odd = 'a "quoted"\\back\nslash'
    values = [0.25, 1234567.0, 1e20, 1e-05, float("nan"), float("inf"), -0.0, 0.1 + 0.2]
    durations = [0.0005, 0.0004, 10.0, 11.0, 0.3, 1e-7]
    ref = CollectorRegistry()
    check_value = Gauge("cutover_check_value", "", ["service", "check"], registry=ref)
    observed = Gauge("cutover_router_observed_share", "", ["service", "router"], registry=ref)
    rollbacks = Counter("cutover_rollbacks", "", ["service", "reason"], registry=ref)
    latency = Histogram(
        "cutover_router_operation_seconds",
        "",
        ["service", "router", "op"],
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=ref,
    )
    m = Metrics()
    for i, v in enumerate(values):
        checks = (CheckState(name=f"{odd}{i}", last=Measurement(verdict=Verdict.PASS, value=v)),)
        router = RouterStatus(name=odd, kind="haproxy", observed=50.0 if i == 0 else None)
        m.observe_cutover(replace(holding(), service=odd, routers=(router,), checks=checks))
        check_value.labels(odd, f"{odd}{i}").set(v)
    observed.labels(odd, odd).set(50.0)
    for cause in ROLLBACK_CAUSES:
        rollbacks.labels(odd, cause)
    for reason, n in [("check", 1.0), (odd, 2.5), ("drift", 1234567.0)]:
        m.rollbacks.labels(odd, reason).inc(n)
        rollbacks.labels(odd, reason).inc(n)
    clock = iter([t for d in durations for t in (0.0, d)])  # each ``with`` lasts d
    monkeypatch.setattr(metrics_module, "perf_counter", lambda: next(clock))
    timer = m.router_timer(odd)
    for d in durations:
        with timer.time(odd, "apply"):
            latency.labels(odd, odd, "apply").observe(d)
    expected = sample_lines(generate_latest(ref).decode())
    names = {line.split("{")[0] for line in expected}
    ours = {line for line in sample_lines(m.render().decode()) if line.split("{")[0] in names}
    assert ours == expected
    assert value(samples(m), "cutover_check_value", service=odd, check=f"{odd}1") == 1234567.0


def test_each_kind_of_change_shows_in_the_next_render() -> None:
    # a service's text is kept between renders: every change must drop it
    m = Metrics()
    m.set_live("checkout", "blue")
    m.observe_cutover(holding())
    timer = m.router_timer("checkout")

    def observe_router() -> None:
        with timer.time("edge", "observe"):
            pass

    changes: list[tuple[Callable[[], None], str, dict[str, str], float]] = [
        (
            lambda: m.set_live("checkout", "green"),
            "cutover_live_color",
            {"color": "green"},
            1,
        ),
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


async def test_a_scrape_lets_other_tasks_run_between_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "_SLICE", 0.0)  # a slice per service
    m = Metrics()
    for i in range(20):
        m.observe_cutover(replace(holding(), service=f"svc-{i}"))
    ran = 0

    async def meanwhile() -> None:
        nonlocal ran
        while True:
            ran += 1
            m.observe_cutover(replace(holding(), service=f"new-{ran}"))  # no harm to the scrape
            await asyncio.sleep(0)

    task = asyncio.create_task(meanwhile())
    try:
        body = await m.scrape()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert ran >= 20
    scraped = text_string_to_metric_families(body.decode())
    services = {
        s.labels["service"] for f in scraped if f.name == "cutover_state" for s in f.samples
    }
    assert {f"svc-{i}" for i in range(20)} <= services  # services that came later: next scrape
