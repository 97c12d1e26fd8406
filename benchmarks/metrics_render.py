"""Benchmark: the ``/metrics`` text of N services, each with a running cutover, in process.

Not a test. No servers: one :class:`cutover.observability.metrics.Metrics` that N cutovers
holding their first stage fed (one HAProxy router, two checks with values, one observation of
each router operation), as their runners would. Per N:

* ``text``       the size of the exposition;
* ``changed``    median time of ``render()`` after every service changed since the last one
                 (a new cutover and an ``observe`` timing each: what 5 s of runners do);
* ``same``       median time of ``render()`` when nothing changed;
* ``held``       the longest the event loop waited for a task while ``scrape()`` (what
                 ``GET /metrics`` serves) wrote the changed services;
* ``series``     tracemalloc: memory of the metrics before any render;
* ``kept``       ... after one (the kept text of every service included, the body not);
* ``peak``       ... at most during it.

    .venv/bin/python benchmarks/metrics_render.py            # N = 100, 300 and 1000
    .venv/bin/python benchmarks/metrics_render.py --quick    # N = 50, fewer renders
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `cutover` importable

from benchlib import row  # noqa: E402

from cutover.core.model import (  # noqa: E402
    CheckPolicy,
    CheckState,
    Cutover,
    Measurement,
    Phase,
    Plan,
    RouterStatus,
    Stage,
    Verdict,
)
from cutover.observability.metrics import Metrics  # noqa: E402

OPS = ("observe", "apply", "rollback")
WIDTHS = (6, 8, 10, 8, 8, 8, 8, 8)


def holding(i: int, elapsed: float) -> Cutover:
    return Cutover(
        id=f"co-{i}",
        service=f"svc{i}",
        from_color="blue",
        to_color="green",
        plan=Plan(
            stages=(Stage(weight=50, hold=3600.0), Stage(weight=100, hold=1.0)),
            checks=(CheckPolicy(name="errors"), CheckPolicy(name="latency")),
            routers=("lb",),
        ),
        phase=Phase.HOLDING,
        stage_elapsed=elapsed,
        routers=(RouterStatus(name="lb", kind="haproxy", desired=50, observed=50.0),),
        checks=(
            CheckState(name="errors", last=Measurement(verdict=Verdict.PASS, value=0.001 * i)),
            CheckState(name="latency", last=Measurement(verdict=Verdict.PASS, value=0.18)),
        ),
    )


def runners_pass(m: Metrics, cutovers: list[Cutover], ops: tuple[str, ...]) -> None:
    for c in cutovers:
        m.observe_cutover(c)
        timer = m.router_timer(c.service)
        for op in ops:
            with timer.time("lb", op):
                pass


def ms(f: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1000


async def longest_hold(scrape: Callable[[], Awaitable[bytes]]) -> float:
    """The longest a task that only yields waited for the loop while ``scrape`` ran, ms."""
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    done = False

    async def yielder() -> None:
        while not done:
            t0 = loop.time()
            await asyncio.sleep(0)
            waits.append(loop.time() - t0)

    task = asyncio.create_task(yielder())
    await asyncio.sleep(0)
    await scrape()
    done = True
    await task
    return max(waits) * 1000


def measure(n: int, renders: int) -> list[str]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    m = Metrics()
    for i in range(n):
        m.set_live(f"svc{i}", "blue")
    runners_pass(m, [holding(i, 10.0) for i in range(n)], OPS)
    series = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.reset_peak()
    body = m.render()
    kept = tracemalloc.get_traced_memory()[0] - base - len(body)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    changed, same, held = [], [], []
    for r in range(renders):
        cutovers = [holding(i, 20.0 + r) for i in range(n)]
        runners_pass(m, cutovers, ("observe",))
        changed.append(ms(m.render))
        same.append(ms(m.render))
        runners_pass(m, cutovers, ("observe",))
        held.append(asyncio.run(longest_hold(m.scrape)))
    mb = 1e6
    return [
        str(n),
        f"{len(body) / mb:.2f}MB",
        f"{statistics.median(changed):.1f}",
        f"{statistics.median(same):.1f}",
        f"{max(held):.1f}",
        f"{series / mb:.1f}MB",
        f"{kept / mb:.1f}MB",
        f"{peak / mb:.1f}MB",
    ]


def main(sizes: list[int], renders: int) -> None:
    print(row(["N", "text", "changed", "same", "held", "series", "kept", "peak"], WIDTHS))
    print(row(["", "", "ms", "ms", "ms max", "", "", ""], WIDTHS))
    for n in sizes:
        print(row(measure(n, renders), WIDTHS))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 50, 3 renders: a smoke test")
    args = parser.parse_args()
    main([50] if args.quick else [100, 300, 1000], 3 if args.quick else 7)
