"""Zero downtime: cutovers through real HAProxy under a steady, bounded load of real requests.

Two clients run at once for the whole cutover, together >= 200 requests/s:

* new connections: ``demo.stack.LoadLoop`` (one TCP connection per request);
* keep-alive: :class:`KeepAliveLoop` below, an aiohttp session reusing a few connections.

Every answer is counted by color and status. An answer from a demo app carries ``X-Color``
(demo/app.py); an answer HAProxy makes itself (502/503/504 when no server can take the request)
has none and is counted as ``none:<status>``. Transport errors (refused, reset, timeout) count
as ``error``.
"""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp

from demo.stack import LoadLoop
from tests.e2e.conftest import E2E

FOUR = [
    {"weight": 10, "hold": "1s"},
    {"weight": 25, "hold": "1s"},
    {"weight": 50, "hold": "1s"},
    {"weight": 100, "hold": "1s"},
]
NEW_CONN_RATE = 120.0
KEEP_ALIVE_RATE = 120.0
MIN_RATE = 200.0


class KeepAliveLoop:
    """``rate`` requests/s from ``conc`` workers over one aiohttp session (connections are
    kept alive and reused), counted like ``LoadLoop``; ``connections`` counts the TCP
    connections the session opened."""

    def __init__(self, port: int, *, rate: float, conc: int = 8) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.rate = rate
        self.conc = conc
        self.counts: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self._next = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def _on_connection(self, *_: object) -> None:
        self.connections += 1

    def start(self) -> KeepAliveLoop:
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._on_connection)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.conc),
            timeout=aiohttp.ClientTimeout(total=5),
            trace_configs=[trace],
        )
        self._next = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"keepalive-{i}") for i in range(self.conc)
        ]
        return self

    async def stop(self) -> collections.Counter[str]:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        return self.counts

    async def _worker(self) -> None:
        assert self._session is not None
        while True:
            slot, self._next = self._next, max(self._next, time.monotonic()) + 1.0 / self.rate
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            try:
                async with self._session.get(self.url) as r:
                    await r.read()
                    color = r.headers.get("X-Color") or "none"
                    self.counts[color if r.status == 200 else f"{color}:{r.status}"] += 1
            except (aiohttp.ClientError, TimeoutError):
                self.counts["error"] += 1


async def _under_load(e2e: E2E, work: object) -> tuple[dict[str, int], dict[str, int], float, int]:
    fresh = LoadLoop(e2e.stack.port, rate=NEW_CONN_RATE, conc=16).start()
    kept = KeepAliveLoop(e2e.stack.port, rate=KEEP_ALIVE_RATE).start()
    t0 = time.monotonic()
    try:
        await asyncio.sleep(1.0)
        assert asyncio.iscoroutine(work)
        await work
        await asyncio.sleep(1.0)
    finally:
        new_counts = dict(await fresh.stop())
        kept_counts = dict(await kept.stop())
    return new_counts, kept_counts, time.monotonic() - t0, kept.connections


def _haproxy_made(counts: dict[str, int]) -> int:
    return sum(n for k, n in counts.items() if k.startswith("none:"))


async def test_a_healthy_four_stage_cutover_under_load_fails_no_request(e2e: E2E) -> None:
    # Given a daemon with a 4-stage plan and steady load through HAProxy
    e2e.write_config(stages=FOUR)
    await e2e.start_daemon()

    async def cutover() -> None:
        c = await e2e.start()
        done = await e2e.wait_for(c["id"], state="completed", within=60)
        assert [ev["kind"] for ev in done["events"]].count("stage_applied") == 4

    # When the cutover runs from start to completion under that load
    new, kept, elapsed, conns = await _under_load(e2e, cutover())

    # Then no client request failed, on new connections or kept-alive ones
    total = sum(new.values()) + sum(kept.values())
    print(
        f"\nhealthy: {total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s); "
        f"new connections {new}; keep-alive {kept} over {conns} connections"
    )
    assert total / elapsed >= MIN_RATE
    assert set(new) <= {"blue", "green"}, new
    assert set(kept) <= {"blue", "green"}, kept
    assert new.get("green", 0) > 0 and kept.get("green", 0) > 0
    assert conns <= 2 * 8, conns  # the keep-alive client really reused its connections


async def test_an_automatic_rollback_under_load_has_no_transport_or_haproxy_errors(
    e2e: E2E,
) -> None:
    # Given a cutover under load, holding in stage 2
    e2e.write_config(stages=FOUR)
    await e2e.start_daemon()

    async def rollback() -> None:
        c = await e2e.start()
        await e2e.wait_for(c["id"], state="running", stage=1, phase="holding")
        # When green's health check starts failing
        for name in ("green1", "green2"):
            await e2e.stack.apps[name].set_health(False)
        done = await e2e.wait_for(c["id"], state="rolled_back", within=20)
        assert "new-health" in done["reason"]

    new, kept, elapsed, conns = await _under_load(e2e, rollback())

    # Then the rollback broke no request: no transport error, nothing HAProxy answered itself
    total = sum(new.values()) + sum(kept.values())
    print(
        f"\nrollback: {total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s); "
        f"new connections {new}; keep-alive {kept} over {conns} connections"
    )
    assert total / elapsed >= MIN_RATE
    for counts in (new, kept):
        assert counts.get("error", 0) == 0, counts
        assert _haproxy_made(counts) == 0, counts
    assert await e2e.green_share(500) == 0.0
