"""Demo blue/green backend: names itself, reports health and Prometheus metrics, takes faults.

Run:   python demo/app.py --name green1 --color green --port 18103 [--host 127.0.0.1]
       [--error-rate 0.2] [--latency 0.05] [--unhealthy]

Endpoints:
  GET  /                          "<name> <color>\\n", headers X-Backend: <name>, X-Color: <color>
                                  (500 "<name> <color> error\\n" for the injected error share)
  GET  /healthz                   200 "ok\\n", or 500 "unhealthy\\n" after /admin/health?ok=0
  GET  /metrics                   http_requests_total{color,code} (200 and 500 pre-created at 0),
                                  http_request_duration_seconds{color} (histogram, 1 ms..3 s)
  POST /admin/health?ok=0|1       make /healthz fail or pass
  POST /admin/error-rate?rate=R   answer 500 to exactly floor(n*R) of the next n requests (0..1)
  POST /admin/latency?seconds=S   add S seconds of latency to every GET / (0..60)
  GET  /admin/state               the current switches as JSON

Prints one line "<name> (<color>) listening on http://HOST:PORT" when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series

#: 1 ms .. 3 s, at most x1.5 apart, so histogram_quantile() (which interpolates linearly within
#: a bucket) is off by less than a factor 1.5 and a 3x slower color shows as such.
LATENCY_BUCKETS = tuple(
    round(decade * step, 6)
    for decade in (0.001, 0.01, 0.1, 1.0)
    for step in (1, 1.5, 2, 3, 4, 5, 7.5)
    if decade * step <= 3.0
)


class State:
    """The app's identity, switches and metrics (one registry per process, no extra collectors)."""

    def __init__(
        self, *, name: str, color: str, error_rate: float, latency: float, healthy: bool
    ) -> None:
        self.name = name
        self.color = color
        self.error_rate = error_rate
        self.latency = latency
        self.healthy = healthy
        self.n = 0  # requests since the error rate was last set
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",  # exposed as http_requests_total
            "HTTP requests served by GET /",
            ["color", "code"],
            registry=self.registry,
        )
        self.latency_hist = Histogram(
            "http_request_duration_seconds",
            "GET / latency",
            ["color"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for code in ("200", "500"):  # so that rate() of 5xx is 0 rather than empty
            self.requests.labels(color, code)
        self.latency_hist.labels(color)

    def should_fail(self) -> bool:
        """Deterministic: exactly floor(n * rate) of the first n requests fail."""
        self.n += 1
        rate = self.error_rate
        return math.floor(self.n * rate) > math.floor((self.n - 1) * rate)

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "color": self.color,
            "healthy": self.healthy,
            "error_rate": self.error_rate,
            "latency": self.latency,
        }


STATE = web.AppKey("state", State)


async def root(request: web.Request) -> web.Response:
    st = request.app[STATE]
    t0 = time.perf_counter()
    if st.latency > 0:
        await asyncio.sleep(st.latency)
    if st.should_fail():
        code, body = 500, f"{st.name} {st.color} error\n"
    else:
        code, body = 200, f"{st.name} {st.color}\n"
    st.requests.labels(st.color, str(code)).inc()
    st.latency_hist.labels(st.color).observe(time.perf_counter() - t0)
    return web.Response(status=code, text=body, headers={"X-Backend": st.name, "X-Color": st.color})


async def healthz(request: web.Request) -> web.Response:
    st = request.app[STATE]
    if st.healthy:
        return web.Response(text="ok\n")
    return web.Response(status=500, text="unhealthy\n")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _number(request: web.Request, key: str, low: float, high: float) -> float:
    raw = request.query.get(key)
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # also false for NaN
        raise web.HTTPBadRequest(text=f"{key} must be a number in [{low:g}, {high:g}]\n")
    return value


async def set_health(request: web.Request) -> web.Response:
    st = request.app[STATE]
    ok = request.query.get("ok")
    if ok not in ("0", "1"):
        raise web.HTTPBadRequest(text="ok must be 0 or 1\n")
    st.healthy = ok == "1"
    return web.json_response(st.snapshot())


async def set_error_rate(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.error_rate, st.n = _number(request, "rate", 0.0, 1.0), 0
    return web.json_response(st.snapshot())


async def set_latency(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.latency = _number(request, "seconds", 0.0, 60.0)
    return web.json_response(st.snapshot())


async def show_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


def make_app(state: State) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.add_routes(
        [
            web.get("/", root),
            web.get("/healthz", healthz),
            web.get("/metrics", metrics),
            web.post("/admin/health", set_health),
            web.post("/admin/error-rate", set_error_rate),
            web.post("/admin/latency", set_latency),
            web.get("/admin/state", show_state),
        ]
    )
    return app


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    p = argparse.ArgumentParser(description="demo blue/green backend")
    p.add_argument("--name", default=env("BACKEND_NAME", "blue1"))
    p.add_argument("--color", default=env("BACKEND_COLOR", "blue"))
    p.add_argument("--host", default=env("BACKEND_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("BACKEND_PORT", "18101")))
    p.add_argument("--error-rate", type=float, default=float(env("ERROR_RATE", "0")))
    p.add_argument("--latency", type=float, default=float(env("LATENCY", "0")))
    p.add_argument("--unhealthy", action="store_true", help="start with /healthz failing")
    a = p.parse_args(argv)
    if not 0.0 <= a.error_rate <= 1.0:
        p.error("--error-rate must be in [0, 1]")
    if not 0.0 <= a.latency <= 60.0:
        p.error("--latency must be in [0, 60]")
    state = State(
        name=a.name,
        color=a.color,
        error_rate=a.error_rate,
        latency=a.latency,
        healthy=not a.unhealthy,
    )
    ready = f"{a.name} ({a.color}) listening on http://{a.host}:{a.port}"
    web.run_app(
        make_app(state),
        host=a.host,
        port=a.port,
        access_log=None,
        print=lambda *_: print(ready, flush=True),
    )


if __name__ == "__main__":
    main()
