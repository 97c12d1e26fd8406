"""`make demo`: a whole cutover on the embedded default, against real processes on loopback.

Starts 2 blue + 2 green demo apps (0.5 % errors each: realistic noise), HAProxy and a
Prometheus scraping the apps every second (ports as in config/demo.yaml), a steady load of
50 requests/s through HAProxy, then `cutover daemon -c config/demo.yaml`; starts a cutover of
`checkout` through the API and prints for every stage the share the daemon set, the share
measured from real requests through HAProxy, and each check's value. `--fail` raises green's
error rate to 20 % in stage 2 to show the automatic SLO rollback. Every process it started is
stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.prometheus import Prometheus  # noqa: E402
from demo.stack import (  # noqa: E402
    Child,
    HAProxyStack,
    LoadLoop,
    MissingBinary,
    split,
    start_stack,
    wait_http,
)

CONFIG = ROOT / "config" / "demo.yaml"
STATE_DIR = ROOT / "var" / "demo"
WORKDIR = Path("/tmp/cutover-demo")  # config/demo.yaml points the router at its admin.sock
PORTS = {
    "blue1": 18101,
    "blue2": 18102,
    "green1": 18103,
    "green2": 18104,
    "checkout": 18180,
    "health": 18181,
}
PROMETHEUS_PORT = 18190
NOISE = 0.005  # every app answers 0.5 % of requests with a 500
FAIL_RATE = 0.2
API = "http://127.0.0.1:8480"


async def api(method: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
        s.request(method, API + path) as r,
    ):
        body = await r.json()
        if r.status >= 400:
            raise RuntimeError(f"{method} {path}: {r.status} {body['error']['message']}")
        return body


async def measured_green(stack: HAProxyStack, n: int = 400) -> str:
    counts = await split(stack.port, n=n, conc=10)
    total = sum(counts.values())
    green = counts["green"]
    return f"{100.0 * green / total:5.1f}% green ({green}/{total} real requests)"


async def follow(stack: HAProxyStack, cutover_id: str, *, fail: bool) -> str:
    shown: set[int] = set()
    checks_seen: dict[str, tuple[float, str | None]] = {}
    seen_events = 0
    while True:
        c = await api("GET", f"/v1/cutovers/{cutover_id}")
        for e in c["events"][seen_events:]:
            print(f"  event  {e['kind']:<16} {e['message']}", flush=True)
        seen_events = len(c["events"])
        if c["state"] in ("completed", "rolled_back", "failed"):
            return str(c["state"])
        stage = c["stage"]
        if c["phase"] == "holding" and c["state"] == "running" and stage not in shown:
            shown.add(stage)
            share = c["stages"][stage]["weight"]
            print(
                f"stage {stage + 1}/{len(c['stages'])}: set {share:3d}% green -> measured "
                f"{await measured_green(stack)}",
                flush=True,
            )
            if fail and stage == 1:
                print(f">>> green now answers {FAIL_RATE:.0%} of requests with 500", flush=True)
                for name in ("green1", "green2"):
                    await stack.apps[name].set_error_rate(FAIL_RATE)
        for check in c["checks"] if c["phase"] == "holding" else ():
            # a line when a verdict changes, else one per check every 2 s
            last_at, last_status = checks_seen.get(check["name"], (0.0, None))
            at = check["at"] or 0.0
            if at > last_at and (check["status"] != last_status or at - last_at >= 2.0):
                checks_seen[check["name"]] = (at, check["status"])
                print(f"  check  {check['name']:<16} {check['status']:<12} {check['detail']}")
        await asyncio.sleep(0.2)


def fresh_dirs() -> None:
    """Each demo starts from scratch: blue live, no history."""
    for d in (STATE_DIR, WORKDIR):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)


async def main(fail: bool) -> int:
    print("starting 2 blue + 2 green demo apps, HAProxy and Prometheus on 127.0.0.1 ...")
    stack = await start_stack(ports=PORTS, color_health=True, workdir=WORKDIR)
    daemon: Child | None = None
    prometheus: Prometheus | None = None
    load: LoadLoop | None = None
    try:
        # green starts out of rotation: blue, the live color, has the full share
        await stack.haproxy.cli(
            "set server checkout/green1 state maint; set server checkout/green2 state maint"
        )
        await asyncio.gather(*(app.set_error_rate(NOISE) for app in stack.apps.values()))
        targets = [f"127.0.0.1:{app.port}" for app in stack.apps.values()]
        (WORKDIR / "prometheus").mkdir()
        prometheus = await Prometheus.launch(
            {"demo": targets}, workdir=WORKDIR / "prometheus", port=PROMETHEUS_PORT
        )
        load = LoadLoop(stack.port, rate=50).start()
        print("50 requests/s through HAProxy; waiting for Prometheus's first rates ...", flush=True)
        await prometheus.wait_for_data('sum(rate(http_requests_total{color="blue"}[10s]))')
        daemon = await Child.spawn(
            "daemon",
            [sys.executable, "-m", "cutover", "daemon", "-c", str(CONFIG)],
            STATE_DIR,
        )
        await wait_http(8480, "/readyz", within=20)
        print(f"daemon ready on {API} (log: {STATE_DIR / 'daemon.log'})")
        print(f"before: {await measured_green(stack)}")
        c = await api("POST", "/v1/services/checkout/cutovers")
        print(
            f"started cutover {c['id']}: checkout {c['from']} -> {c['to']}, stages "
            + ", ".join(f"{s['weight']}%/{s['hold']:g}s" for s in c["stages"]),
            flush=True,
        )
        state = await follow(stack, c["id"], fail=fail)
        c = await api("GET", f"/v1/cutovers/{c['id']}")
        print(f"result: {state}" + (f" -- reason: {c['reason']}" if c.get("reason") else ""))
        print(f"after:  {await measured_green(stack)}")
        expected = "rolled_back" if fail else "completed"
        return 0 if state == expected else 1
    finally:
        if daemon is not None:
            await daemon.stop()
        if load is not None:
            counts = await load.stop()
            print(f"background load: {dict(counts)}")
        if prometheus is not None:
            await prometheus.stop()
        await stack.stop()
        print("stopped every process the demo started")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fail", action="store_true", help="green's error rate 20%% in stage 2")
    fresh_dirs()
    try:
        sys.exit(asyncio.run(main(parser.parse_args().fail)))
    except (MissingBinary, RuntimeError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        sys.exit(1)
