"""Benchmark: from green's error rate jumping to 20 % to every router reading 0 % green.

Not a test. Starts the demo stack (2 blue + 2 green demo apps behind a real HAProxy), a real
Prometheus scraping the apps every 1 s, a steady load of 100 requests/s through HAProxy, and
the daemon as a subprocess. The service has one 50 % stage that holds for a long time and one
check: green's error ratio over a ``[10s]`` rate window, ``max: 0.05``, ``interval: 1s``,
``failure_limit: 2``. Each run starts a cutover, lets it hold, raises green's error rate to
20 % at t0, and reads the times of the breach's stages:

* ``cross``      t0 -> the query's value first exceeds the threshold (polled every 50 ms here:
                 the scrape interval plus the rate window's dilution of the new errors);
* ``decide``     cross -> the daemon's ``rollback_started`` event (the check's wait for its next
                 interval and the second failing measurement, then the decision);
* ``actuate``    decision -> ``rolled_back``: every router written and read back at 0 %;
* ``total``      t0 -> ``rolled_back``.

Between runs green's errors age out of the window before the next cutover's preflight.

    .venv/bin/python benchmarks/breach_rollback.py            # 10 runs
    .venv/bin/python benchmarks/breach_rollback.py --quick    # 2 runs (CI smoke)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `demo` importable

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from benchlib import pct  # noqa: E402

from demo.prometheus import Prometheus  # noqa: E402
from demo.stack import Child, LoadLoop, free_port, start_stack, wait_http  # noqa: E402

QUERY = (
    'sum(rate(http_requests_total{{color="{color}",code=~"5.."}}[10s]))'
    ' / sum(rate(http_requests_total{{color="{color}"}}[10s]))'
)
THRESHOLD = 0.05
BREACH = 0.2
NOISE = 0.005


def config(stack_values: dict[str, Any], prometheus: str, port: int, state: Path) -> str:
    check = {
        "name": "green-error-ratio",
        "type": "prometheus",
        "url": prometheus,
        "query": QUERY.format(color="{{new}}"),
        "max": THRESHOLD,
        "interval": "1s",
        "failure_limit": 2,
        "inconclusive_limit": 100,
    }
    return yaml.safe_dump(
        {
            "api": {"listen": f"127.0.0.1:{port}"},
            "state": {"sqlite": str(state)},
            "services": {
                "checkout": {
                    "routers": [stack_values],
                    "stages": [{"weight": 50, "hold": "1h"}, {"weight": 100, "hold": "1s"}],
                    "checks": [check],
                }
            },
        }
    )


class Api:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str) -> Any:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
            s.request(method, self.url + path) as r,
        ):
            body = await r.json()
            if r.status >= 400:
                raise RuntimeError(f"{method} {path}: {r.status} {body}")
            return body


async def until(predicate: Any, *, every: float = 0.05, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise TimeoutError("condition not met")


async def one_run(api: Api, prometheus: Prometheus, stack: Any) -> dict[str, float]:
    green = [stack.apps[name] for name in stack.green]
    query = QUERY.format(color="green")

    async def clean() -> bool:  # green's last errors have left the window
        values = await prometheus.query(query)
        return not values or all(v != v or v <= THRESHOLD / 5 for v in values)  # NaN: no data

    await until(clean, every=0.5, within=60)
    c = await api.call("POST", "/v1/services/checkout/cutovers")

    async def holding_with_data() -> bool:
        body = await api.call("GET", f"/v1/cutovers/{c['id']}")
        return body["phase"] == "holding" and bool(await prometheus.query(query))

    await until(holding_with_data, every=0.2, within=60)
    await asyncio.sleep(2.0)  # green's rate settles in the window
    t0 = time.time()
    await asyncio.gather(*(app.set_error_rate(BREACH) for app in green))

    async def crossed() -> float | None:
        values = await prometheus.query(query)
        return time.time() if values and values[0] > THRESHOLD else None

    t_cross = await until(crossed, every=0.05, within=30)

    async def rolled_back() -> dict[str, Any] | None:
        body = await api.call("GET", f"/v1/cutovers/{c['id']}")
        return body if body["state"] == "rolled_back" else None

    done = await until(rolled_back, every=0.05, within=30)
    await asyncio.gather(*(app.set_error_rate(NOISE) for app in green))
    at = {e["kind"]: e["at"] for e in done["events"]}
    return {
        "cross": t_cross - t0,
        "decide": at["rollback_started"] - t_cross,
        "actuate": at["rolled_back"] - at["rollback_started"],
        "total": at["rolled_back"] - t0,
    }


async def main(runs: int) -> None:
    stack = await start_stack()
    prometheus: Prometheus | None = None
    daemon: Child | None = None
    load: LoadLoop | None = None
    try:
        await stack.haproxy.cli(
            "set server checkout/green1 state maint; set server checkout/green2 state maint"
        )
        await asyncio.gather(*(app.set_error_rate(NOISE) for app in stack.apps.values()))
        (stack.workdir / "prometheus").mkdir()
        prometheus = await Prometheus.launch(
            {"demo": [f"127.0.0.1:{app.port}" for app in stack.apps.values()]},
            workdir=stack.workdir / "prometheus",
        )
        load = LoadLoop(stack.port, rate=100, conc=10).start()
        port = free_port()
        path = stack.workdir / "cutover.yaml"
        path.write_text(
            config(
                stack.spec_values(name="edge"),
                prometheus.url,
                port,
                stack.workdir / "state" / "cutover.db",
            )
        )
        daemon = await Child.spawn(
            "daemon", [sys.executable, "-m", "cutover", "daemon", "-c", str(path)], stack.workdir
        )
        await wait_http(port, "/readyz", within=20)
        await prometheus.wait_for_data(QUERY.format(color="blue"), within=30)
        api = Api(port)
        results: list[dict[str, float]] = []
        for i in range(runs):
            r = await one_run(api, prometheus, stack)
            results.append(r)
            print(
                f"run {i + 1:2d}: " + "  ".join(f"{k} {v * 1000:7.0f} ms" for k, v in r.items()),
                flush=True,
            )
        print()
        print(f"breach (green 0.5 % -> {BREACH:.0%} errors) -> every router at 0 % green")
        print("1 s scrape, [10s] rate window, 1 s check interval, failure_limit 2, HAProxy")
        print(f"{'phase':<10}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}   (n={runs})")
        for key in ("cross", "decide", "actuate", "total"):
            values = [r[key] for r in results]
            print(
                f"{key:<10}{statistics.median(values) * 1000:>10.0f}"
                f"{pct(values, 0.95) * 1000:>10.0f}{max(values) * 1000:>10.0f}"
            )
        goal = pct([r["total"] for r in results], 0.95)
        print(
            f"goal < 3000 ms p95 total: {'met' if goal < 3.0 else 'NOT met'} ({goal * 1000:.0f} ms)"
        )
        print(
            "Flagger's defaults for comparison: interval 60 s x threshold 5 failed checks = 300 s"
        )
    finally:
        if daemon is not None:
            await daemon.stop()
        if load is not None:
            await load.stop()
        if prometheus is not None:
            await prometheus.stop()
        await stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 runs: a smoke test")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(2 if args.quick else args.runs))
