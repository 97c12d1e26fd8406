"""End to end SLO analysis: a real daemon, real HAProxy and demo apps under a steady load, and a
real Prometheus scraping the apps every second. A bad green is rolled back by the daemon on
its own; a good green with realistic noise is never rolled back (issue: SLO analysis)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from demo.prometheus import Prometheus
from demo.stack import LoadLoop, split
from tests.e2e.conftest import E2E

NOISE = 0.005  # 0.5 % errors on both colors: what a healthy service looks like
ERROR_RATIO = (
    'sum(rate(http_requests_total{{color="{color}",code=~"5.."}}[5s]))'
    ' / sum(rate(http_requests_total{{color="{color}"}}[5s]))'
)
P99 = (
    "histogram_quantile(0.99, sum by (le) ("
    'rate(http_request_duration_seconds_bucket{{color="{color}"}}[5s])))'
)


@dataclass
class SLO:
    e2e: E2E
    prometheus: Prometheus
    load: LoadLoop

    def error_ratio(self, **kw: Any) -> dict[str, Any]:
        return {
            "name": "new-error-ratio",
            "type": "prometheus",
            "url": self.prometheus.url,
            "query": ERROR_RATIO.format(color="{{new}}"),
            "max": 0.05,
            "interval": "500ms",
            "failure_limit": 2,
            "inconclusive_limit": 20,
            **kw,
        }

    def p99_compare(self, **kw: Any) -> dict[str, Any]:
        return {
            "name": "new-not-slower",
            "type": "compare",
            "url": self.prometheus.url,
            "query": P99.format(color="{{color}}"),
            "max_ratio": 1.5,
            "margin": 0.005,
            "interval": "500ms",
            "failure_limit": 2,
            "inconclusive_limit": 20,
            **kw,
        }

    async def warm(self) -> None:
        """Prometheus's first rate() needs two scrapes in the window (~6.5 s after start)."""
        await self.prometheus.wait_for_data(ERROR_RATIO.format(color="blue"), within=30.0)

    async def set_green(
        self, *, error_rate: float | None = None, latency: float | None = None
    ) -> None:
        for name in self.e2e.stack.green:
            app = self.e2e.stack.apps[name]
            if error_rate is not None:
                await app.set_error_rate(error_rate)
            if latency is not None:
                await app.set_latency(latency)

    async def green_answers(self, n: int = 400) -> collections.Counter[str]:
        """Real requests through HAProxy, by color; answers of either status count."""
        counts = await split(self.e2e.stack.port, n=n, conc=10)
        by_color: collections.Counter[str] = collections.Counter()
        for key, count in counts.items():
            by_color[key.split(":")[0]] += count
        return by_color


@pytest.fixture
async def slo(e2e: E2E) -> AsyncIterator[SLO]:
    stack = e2e.stack
    await asyncio.gather(*(app.set_error_rate(NOISE) for app in stack.apps.values()))
    (stack.workdir / "prometheus").mkdir()
    prometheus = await Prometheus.launch(
        {"demo": [f"127.0.0.1:{app.port}" for app in stack.apps.values()]},
        workdir=stack.workdir / "prometheus",
    )
    load = LoadLoop(stack.port, rate=100, conc=10).start()
    try:
        yield SLO(e2e=e2e, prometheus=prometheus, load=load)
    finally:
        counts = await load.stop()
        assert counts["error"] == 0, f"transport errors under load: {dict(counts)}"
        await prometheus.stop()


def measured(c: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return next(ch for ch in c["checks"] if ch["name"] == check)["history"]  # type: ignore[no-any-return]


STAGES = [{"weight": 10, "hold": "3s"}, {"weight": 50, "hold": "3s"}, {"weight": 100, "hold": "3s"}]


async def test_a_healthy_green_with_noise_completes_and_a_dry_run_check_never_acts(
    slo: SLO,
) -> None:
    # Given 0.5 % errors on both colors, a 5 % threshold, a p99 compare check, and a dry-run
    # check that fails at every measurement
    always_failing = slo.error_ratio(name="dry-impossible", max=-1.0, dry_run=True)
    slo.e2e.write_config(
        stages=STAGES, checks=[slo.error_ratio(), slo.p99_compare(), always_failing]
    )
    await slo.warm()
    await slo.e2e.start_daemon()

    # When the cutover runs under a steady load
    c = await slo.e2e.start()
    c = await slo.e2e.wait_for(c["id"], state=("completed", "rolled_back"), within=60)

    # Then it completes: no false rollback, and the dry-run check was measured failing
    assert c["state"] == "completed", c["reason"]
    assert "rollback_started" not in [e["kind"] for e in c["events"]]
    dry = [m["verdict"] for m in measured(c, "dry-impossible")]
    assert dry.count("fail") >= 3
    passes = [m for m in measured(c, "new-error-ratio") if m["verdict"] == "pass"]
    assert passes and all(m["value"] <= 0.05 for m in passes)
    assert (await slo.green_answers())["blue"] == 0


async def test_green_error_rate_raised_in_stage_two_rolls_back_naming_check_and_value(
    slo: SLO,
) -> None:
    slo.e2e.write_config(
        stages=[{"weight": 10, "hold": "2s"}, {"weight": 50, "hold": "30s"}, STAGES[2]],
        checks=[slo.error_ratio()],
    )
    await slo.warm()
    await slo.e2e.start_daemon()
    c = await slo.e2e.start()
    await slo.e2e.wait_for(c["id"], state="running", stage=1, phase="holding")

    # When green answers 20 % of its requests with 500 during stage 2
    await slo.set_green(error_rate=0.2)

    # Then the daemon rolls back by itself; the reason names the check and the value
    c = await slo.e2e.wait_for(c["id"], state="rolled_back", within=30)
    assert "new-error-ratio" in c["reason"] and "> max 0.05" in c["reason"], c["reason"]
    fails = [m for m in measured(c, "new-error-ratio") if m["verdict"] == "fail"]
    assert len(fails) >= 2 and all(m["value"] > 0.05 for m in fails)
    # And HAProxy is at 100 % blue, read back by the daemon and measured with real requests
    assert c["routers"][0]["observed"] == 0.0
    answers = await slo.green_answers()
    assert answers["green"] == 0 and answers["blue"] == 400, answers


async def test_green_three_times_slower_at_p99_rolls_back_on_the_compare_check(
    slo: SLO,
) -> None:
    blue_latency = 0.02
    for name in slo.e2e.stack.blue:
        await slo.e2e.stack.apps[name].set_latency(blue_latency)
    slo.e2e.write_config(
        stages=[{"weight": 10, "hold": "2s"}, {"weight": 50, "hold": "30s"}, STAGES[2]],
        checks=[slo.p99_compare()],
    )
    await slo.warm()
    await slo.e2e.start_daemon()
    c = await slo.e2e.start()
    await slo.e2e.wait_for(c["id"], state="running", stage=1, phase="holding")

    await slo.set_green(latency=3 * blue_latency)

    c = await slo.e2e.wait_for(c["id"], state="rolled_back", within=30)
    assert "new-not-slower" in c["reason"], c["reason"]
    fail = next(m for m in reversed(measured(c, "new-not-slower")) if m["verdict"] == "fail")
    assert fail["value"] > 1.5 * blue_latency + 0.005
    assert c["routers"][0]["observed"] == 0.0


async def test_prometheus_down_mid_hold_pauses_by_on_error_and_the_cutover_proceeds_after(
    slo: SLO,
) -> None:
    slo.e2e.write_config(
        stages=[{"weight": 10, "hold": "2s"}, {"weight": 50, "hold": "6s"}, STAGES[2]],
        checks=[slo.error_ratio(error_limit=3)],  # on_error: pause, the default
    )
    await slo.warm()
    await slo.e2e.start_daemon()
    c = await slo.e2e.start()
    await slo.e2e.wait_for(c["id"], state="running", stage=1, phase="holding")

    # When Prometheus stops mid-hold
    await slo.prometheus.stop()

    # Then the check measures provider errors, and after 3 in a row the cutover pauses
    c = await slo.e2e.wait_for(c["id"], state="paused", within=20)
    history = measured(c, "new-error-ratio")
    assert [m["verdict"] for m in history[-3:]] == ["error"] * 3
    pause = next(e for e in reversed(c["events"]) if e["kind"] in ("paused", "alarm"))
    assert "3 provider errors in a row" in pause["message"]
    assert c["routers"][0]["desired"] == 50  # nothing moved

    # When Prometheus is back and the operator resumes, then the cutover completes
    await slo.prometheus.start()
    await slo.prometheus.wait_for_data(ERROR_RATIO.format(color="green"), within=30.0)
    status, body = await slo.e2e.api("POST", f"/v1/cutovers/{c['id']}/resume")
    assert status == 200, body
    c = await slo.e2e.wait_for(c["id"], state="completed", within=60)


@pytest.mark.parametrize(
    ("policy", "outcome"), [({"on_inconclusive": "rollback"}, "rolled_back"), ({}, "paused")]
)
async def test_no_data_is_inconclusive_and_acts_after_exactly_the_limit(
    slo: SLO, policy: dict[str, Any], outcome: str
) -> None:
    empty = slo.error_ratio(
        name="no-such-metric",
        query='sum(rate(no_such_metric_total{color="{{new}}"}[5s]))',
        on_no_data="inconclusive",
        inconclusive_limit=2,
        **policy,
    )
    slo.e2e.write_config(stages=STAGES, checks=[empty])
    await slo.e2e.start_daemon()
    c = await slo.e2e.start()
    c = await slo.e2e.wait_for(c["id"], state=outcome, within=30)
    counted = [m for m in measured(c, "no-such-metric") if m["verdict"] == "inconclusive"]
    at_decision = [e for e in c["events"] if e["kind"] in ("rollback_started", "paused", "alarm")]
    assert "2 inconclusive measurements in a row" in at_decision[0]["message"]
    assert len(counted) >= 2
    assert c["routers"][0]["desired"] == (0 if outcome == "rolled_back" else 10)


async def test_a_promql_syntax_error_refuses_the_start_with_prometheus_message(slo: SLO) -> None:
    broken = slo.error_ratio(query='sum(rate(http_requests_total{color="{{new}}"}[5s])')
    slo.e2e.write_config(stages=STAGES, checks=[broken])
    await slo.e2e.start_daemon()

    status, body = await slo.e2e.api("POST", "/v1/services/checkout/cutovers")

    assert status == 422, body
    assert body["error"]["code"] == "preflight_failed"
    assert "check new-error-ratio" in body["error"]["message"]
    assert "parse error" in body["error"]["message"]
    assert (await slo.green_answers())["green"] == 0  # nothing moved
    _, svc = await slo.e2e.api("GET", "/v1/services/checkout")
    assert svc["cutover"]["state"] == "refused"  # kept with its reason; nothing runs
    assert svc["cutover"]["reason"] == body["error"]["message"]
