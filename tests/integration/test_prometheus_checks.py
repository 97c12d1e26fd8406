"""The prometheus and compare checks against a real Prometheus 2.42 scraping real demo apps.

One Prometheus (plus a spare one, for the test that stops and restarts a provider) and three
demo apps are shared by the module: a fresh Prometheus needs about 6.5 s before its first
``rate()`` value (recipes/lb-and-metrics.md, section 6), which every test would otherwise pay.
The apps get steady, paced traffic for the whole module from a bounded load loop, and each
app's behaviour is fixed by its switches: blue answers 0.5 % errors, green 20 %; idle gets no
traffic, so its error ratio is 0/0 = NaN. Rate windows are [10s] (error ratios) and [5s]
(latency quantiles) over a 1 s scrape, and every test polls for its condition instead of
sleeping. Only one fault uses a fake provider: a server that never answers (and one that
answers like a proxy in front of a dead Prometheus), which a real Prometheus cannot be made
to do on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from cutover.checks.base import Check, MeasureContext
from cutover.checks.compare import CompareCheck, CompareCheckSpec
from cutover.checks.prometheus import PrometheusCheck, PrometheusCheckSpec
from cutover.core.model import Measurement, Verdict
from cutover.resource_pool import ResourcePool
from demo.prometheus import Prometheus
from demo.stack import DemoApp, http_request, make_workdir

pytestmark = pytest.mark.asyncio(loop_scope="module")

PLACEHOLDERS = {"new": "green", "old": "blue", "service": "checkout"}
STAGE = MeasureContext(share=50)

#: Requests per second per app, sent by LOAD_WORKERS paced workers.
LOAD_RATE = 40
LOAD_WORKERS = 4
#: Added latency of GET /, seconds: blue always, green at first (equal) and later (3x slower).
LATENCY = 0.02


def error_ratio(color: str, window: str = "10s") -> str:
    """PRODUCT.md's error-ratio query for one color."""
    return (
        f'sum(rate(http_requests_total{{color="{color}",code=~"5.."}}[{window}]))'
        f' / sum(rate(http_requests_total{{color="{color}"}}[{window}]))'
    )


#: PRODUCT.md's latency query, with a [5s] window so a change shows within seconds.
P99 = (
    "histogram_quantile(0.99, sum by (le) (rate("
    'http_request_duration_seconds_bucket{color="{{color}}"}[5s])))'
)


@dataclass
class Env:
    apps: dict[str, DemoApp]
    prom: Prometheus
    spare: Prometheus  # stopped and restarted by one test, then left stopped


async def load(ports: Sequence[int], *, time_limit: float) -> None:
    """Paced GET / to every port until cancelled, bounded by ``time_limit`` and a count."""
    deadline = time.monotonic() + time_limit
    period = LOAD_WORKERS / LOAD_RATE

    async def worker(port: int) -> None:
        for _ in range(int(time_limit * LOAD_RATE / LOAD_WORKERS)):
            if time.monotonic() > deadline:
                return
            started = time.monotonic()
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                await http_request(port, within=2.0)
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    await asyncio.gather(*(worker(p) for p in ports for _ in range(LOAD_WORKERS)))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env() -> AsyncIterator[Env]:
    workdir = make_workdir("cutover-promcheck-")
    apps: dict[str, DemoApp] = {}
    proms: list[Prometheus] = []
    traffic: asyncio.Task[None] | None = None
    try:
        started = await asyncio.gather(
            *(DemoApp.start(workdir, name=f"{c}1", color=c) for c in ("blue", "green", "idle")),
            return_exceptions=True,
        )
        apps = {a.color: a for a in started if isinstance(a, DemoApp)}
        for failure in (s for s in started if isinstance(s, BaseException)):
            raise failure
        await apps["blue"].set_error_rate(0.005)
        await apps["green"].set_error_rate(0.2)
        await asyncio.gather(*(apps[c].set_latency(LATENCY) for c in ("blue", "green")))

        jobs = {"app": [f"127.0.0.1:{a.port}" for a in apps.values()]}
        for name in ("prom", "spare"):
            (workdir / name).mkdir()
        launched = await asyncio.gather(
            *(Prometheus.launch(jobs, workdir=workdir / n) for n in ("prom", "spare")),
            return_exceptions=True,
        )
        proms = [p for p in launched if isinstance(p, Prometheus)]
        for failure in (p for p in launched if isinstance(p, BaseException)):
            raise failure
        prom, spare = proms

        traffic = asyncio.create_task(
            load([apps["blue"].port, apps["green"].port], time_limit=300.0), name="load"
        )
        t0 = time.monotonic()
        await asyncio.gather(
            prom.wait_for_data(error_ratio("blue")),
            prom.wait_for_data(error_ratio("green")),
            prom.wait_for_data('sum(rate(http_requests_total{color="idle"}[10s]))'),
            prom.wait_for_data(P99.replace("{{color}}", "green")),
            spare.wait_for_data(error_ratio("blue")),
        )
        print(f"\nfirst data from a fresh Prometheus after {time.monotonic() - t0:.1f} s")
        yield Env(apps=apps, prom=prom, spare=spare)
    finally:
        if traffic is not None:
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
        await asyncio.gather(*(p.cleanup() for p in proms))
        await asyncio.gather(*(a.stop() for a in apps.values()))
        shutil.rmtree(workdir, ignore_errors=True)


def prometheus_check(
    resources: ResourcePool, url: str, query: str, **fields: Any
) -> PrometheusCheck:
    spec = PrometheusCheckSpec.model_validate(
        {"type": "prometheus", "name": "ratio", "url": url, "query": query, **fields}
    )
    return spec.build(placeholders=PLACEHOLDERS, resources=resources)


def compare_check(
    resources: ResourcePool, url: str, *, placeholders: dict[str, str] = PLACEHOLDERS, **fields: Any
) -> CompareCheck:
    spec = CompareCheckSpec.model_validate(
        {"type": "compare", "name": "p99", "url": url, "query": P99, "max_ratio": 1.5, **fields}
    )
    return spec.build(placeholders=placeholders, resources=resources)


async def measure_until(
    check: Check, want: Verdict, *, ctx: MeasureContext = STAGE, within: float = 10.0
) -> Measurement:
    """Measure every 0.25 s until the verdict is ``want`` (or ``within`` s passed)."""
    deadline = time.monotonic() + within
    while True:
        m = await check.measure(ctx)
        if m.verdict is want or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.25)


# --- thresholds ---------------------------------------------------------------------------------


async def test_half_a_percent_errors_pass_max_five_percent(
    env: Env, resources: ResourcePool
) -> None:
    async with contextlib.aclosing(
        prometheus_check(resources, env.prom.url, error_ratio("blue"), max=0.05)
    ) as check:
        m = await measure_until(check, Verdict.PASS)
        assert m.verdict is Verdict.PASS, m
        assert m.value is not None and 0.0 <= m.value < 0.05, m
        assert m.detail.endswith("<= max 0.05")

        took = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert (await check.measure(STAGE)).verdict is Verdict.PASS
            took.append(time.perf_counter() - t0)
    print(
        f"\nquery latency over 20 measurements: median {statistics.median(took) * 1000:.1f} ms,"
        f" max {max(took) * 1000:.1f} ms"
    )


async def test_twenty_percent_errors_fail_with_the_value(env: Env, resources: ResourcePool) -> None:
    query = error_ratio("{{new}}")  # PRODUCT.md's form: rendered to green at build time
    async with contextlib.aclosing(
        prometheus_check(resources, env.prom.url, query, max=0.05)
    ) as check:
        assert 'color="green"' in check.spec.query
        m = await measure_until(check, Verdict.FAIL)
    assert m.verdict is Verdict.FAIL, m
    assert m.value is not None and 0.15 <= m.value <= 0.25, m
    assert m.detail.endswith("> max 0.05") and m.detail.startswith("0.")


@pytest.mark.parametrize(
    ("on_no_data", "verdict"),
    [("inconclusive", Verdict.INCONCLUSIVE), ("fail", Verdict.FAIL), ("pass", Verdict.PASS)],
)
async def test_empty_result_is_judged_by_on_no_data(
    env: Env, on_no_data: str, verdict: Verdict, resources: ResourcePool
) -> None:
    query = error_ratio("purple")  # no such series at all
    check = prometheus_check(resources, env.prom.url, query, max=0.05, on_no_data=on_no_data)
    async with contextlib.aclosing(check):
        m = await check.measure(STAGE)
    assert (m.verdict, m.value, m.detail) == (verdict, None, "no data (empty result)")


async def test_no_traffic_gives_nan_which_is_no_data(env: Env, resources: ResourcePool) -> None:
    async with contextlib.aclosing(
        prometheus_check(resources, env.prom.url, error_ratio("idle"), max=0.05)
    ) as check:
        m = await check.measure(STAGE)
    assert (m.verdict, m.value, m.detail) == (Verdict.INCONCLUSIVE, None, "no data (NaN)")


async def test_several_series_need_reduce(env: Env, resources: ResourcePool) -> None:
    query = 'sum by (color) (rate(http_requests_total{color=~"blue|green"}[10s]))'
    async with contextlib.aclosing(
        prometheus_check(resources, env.prom.url, query, max=1000)
    ) as check:
        m = await check.measure(STAGE)
    assert m.verdict is Verdict.ERROR and m.value is None
    assert m.detail.startswith("the query gives 2 series"), m.detail
    assert '{color="blue"}' in m.detail and '{color="green"}' in m.detail

    rates = await env.prom.query(query)
    check = prometheus_check(resources, env.prom.url, query, max=1000, reduce="max")
    async with contextlib.aclosing(check):
        m = await check.measure(STAGE)
    assert m.verdict is Verdict.PASS and m.value is not None
    assert m.value == pytest.approx(max(rates), rel=0.3), (m, rates)  # a second later


async def test_promql_syntax_error_gives_prometheus_message(
    env: Env, resources: ResourcePool
) -> None:
    query = "sum(rate(http_requests_total[10s])"
    async with contextlib.aclosing(
        prometheus_check(resources, env.prom.url, query, max=1)
    ) as check:
        m = await check.measure(MeasureContext(share=0))  # as preflight asks
    assert m.verdict is Verdict.ERROR
    assert m.detail.startswith("Prometheus: HTTP 400 bad_data: "), m.detail
    assert "parse error: unclosed left parenthesis" in m.detail


async def test_prometheus_stopped_is_an_error_until_it_is_back(
    env: Env, resources: ResourcePool
) -> None:
    spare = env.spare
    check = prometheus_check(resources, spare.url, error_ratio("blue"), max=0.05, timeout="1s")
    async with contextlib.aclosing(check):
        assert (await measure_until(check, Verdict.PASS)).verdict is Verdict.PASS

        assert await spare.stop() == 0
        m = await check.measure(STAGE)
        assert m.verdict is Verdict.ERROR and m.value is None
        assert m.detail == f"cannot reach {spare.url}: connection refused"

        t0 = time.monotonic()
        await spare.start()  # same port, same data directory
        m = await measure_until(check, Verdict.PASS)
        assert m.verdict is Verdict.PASS, m
        print(f"\nPASS again {time.monotonic() - t0:.2f} s after the restart began")
    await spare.stop()  # a restarted server is a new child: leave none behind


# --- a provider that does not answer -------------------------------------------------------------


async def _hang(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response(text="late")


async def _bad_gateway(request: web.Request) -> web.Response:
    return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>")


@pytest_asyncio.fixture(loop_scope="module")
async def fake_provider() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/hang/api/v1/query", _hang)
    app.router.add_get("/proxy/api/v1/query", _bad_gateway)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_slow_provider_is_an_error_after_the_timeout(
    fake_provider: str, resources: ResourcePool
) -> None:
    url = f"{fake_provider}/hang"
    async with contextlib.aclosing(
        prometheus_check(resources, url, "up", max=1, timeout="300ms")
    ) as check:
        t0 = time.monotonic()
        m = await check.measure(STAGE)
        took = time.monotonic() - t0
    assert m.verdict is Verdict.ERROR
    assert m.detail == f"no answer from {url} within 300ms"
    assert 0.29 <= took < 1.0, took


async def test_non_prometheus_5xx_is_an_error(fake_provider: str, resources: ResourcePool) -> None:
    url = f"{fake_provider}/proxy"
    async with contextlib.aclosing(prometheus_check(resources, url, "up", max=1)) as check:
        m = await check.measure(STAGE)
    assert m.verdict is Verdict.ERROR
    assert m.detail.startswith(f"HTTP 502 from {url}, not a Prometheus answer: '<html>")


# --- compare --------------------------------------------------------------------------------------


async def test_compare_latency_quantile(env: Env, resources: ResourcePool) -> None:
    async with contextlib.aclosing(compare_check(resources, env.prom.url, margin=0.005)) as check:
        # equal latency: pass
        m = await measure_until(check, Verdict.PASS)
        assert m.verdict is Verdict.PASS, m
        assert m.value is not None and m.baseline is not None
        assert LATENCY <= m.value < 2 * LATENCY and LATENCY <= m.baseline < 2 * LATENCY, m

        # green 3x slower than blue: fail, with both values
        await env.apps["green"].set_latency(3 * LATENCY)
        t0 = time.monotonic()
        m = await measure_until(check, Verdict.FAIL)
        assert m.verdict is Verdict.FAIL, m
        print(f"\ncompare failed {time.monotonic() - t0:.1f} s after green got 3x slower: {m}")
        assert m.value is not None and m.baseline is not None
        assert m.value > 2 * m.baseline, m
        assert m.detail.startswith("new 0.") and " > old 0.0" in m.detail
        assert m.detail.endswith("* 1.5 + 0.005")

        # share 100: blue has no traffic left; the baseline from the preceding stage is used
        last = m.baseline
        m = await check.measure(MeasureContext(share=100, baseline=last))
        assert (m.verdict, m.baseline) == (Verdict.FAIL, last), m
        assert m.detail.endswith("(old from the preceding stage)")
        # ...and only it: against a (made-up) slow old value the same green passes
        m = await check.measure(MeasureContext(share=100, baseline=1.0))
        assert (m.verdict, m.baseline) == (Verdict.PASS, 1.0), m
        # no baseline at share 100 is no data
        m = await check.measure(MeasureContext(share=100))
        assert (m.verdict, m.baseline) == (Verdict.INCONCLUSIVE, None), m
        assert m.detail == "no data for old (blue): no value recorded at a preceding stage"


async def test_compare_names_the_color_without_data(env: Env, resources: ResourcePool) -> None:
    # idle has no traffic: every bucket's rate is 0, so its quantile is NaN
    check = compare_check(
        resources, env.prom.url, on_no_data="fail", placeholders={**PLACEHOLDERS, "old": "idle"}
    )
    async with contextlib.aclosing(check):
        m = await check.measure(STAGE)
    assert (m.verdict, m.value, m.baseline) == (Verdict.FAIL, None, None), m
    assert m.detail == "no data for old (idle): NaN"
