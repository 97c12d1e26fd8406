"""A dead webhook receiver (connection refused) during a cutover, then a receiver coming up on
that port.

Given a Notifier whose only webhook points at a loopback port nobody listens on, when the real
:class:`Runner` (FakeRouter/FakeCheck/FakeClock, the helpers of ``test_webhooks``) runs a
cutover to a rollback, then:

* the cutover's timing is that of a run without webhooks (same journal, same fake time, about
  the same real time);
* every refused POST is counted in ``cutover_webhook_failures_total`` and each failed cycle is a
  log line with ``alarm=True`` naming the webhook by its place, never its URL path;
* once a receiver listens on that port, every notified event of the cutover arrives, in journal
  order, exactly once per event id (nothing was ever received while the port refused), and the
  cursor is at the end.

The retry policy is the Notifier's constructor argument (``RetryPolicy``): small delays here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from aiohttp import web

from cutover.notify import Notifier, RetryPolicy
from cutover.notify.payload import NOTIFIED, event_id
from cutover.observability.logging import Redactor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from demo.stack import free_port
from tests.integration.test_webhooks import GUARD, Received, key, rollback_timing, spec, until

#: Tries within a cycle 20-40 ms apart, 0.2 s between cycles: a dead receiver is retried often.
POLICY = RetryPolicy(timeout=1.0, attempts=3, first=0.02, cap=0.04, pause=0.2, pause_max=0.2)


class LateReceiver:
    """A webhook receiver started later on a port chosen in advance."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.json()))
        return web.json_response({})

    @property
    def ids(self) -> list[str]:
        return [r.headers["X-Cutover-Event-Id"] for r in self.received]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(path=str(tmp_path / "state.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


async def test_a_dead_receiver_neither_delays_the_cutover_nor_loses_an_event(
    store: SqliteStore,
) -> None:
    port = free_port()  # nobody listens here until the receiver starts below
    url = f"http://127.0.0.1:{port}/hook"
    metrics = Metrics()
    late = LateReceiver(port)
    try:
        async with asyncio.timeout(GUARD):
            baseline = await rollback_timing(store, "co-base", None)
            with structlog.testing.capture_logs() as logs:
                async with Notifier(
                    secrets=Redactor(),
                    specs=[spec(url)],
                    store=store,
                    metrics=metrics,
                    policy=POLICY,
                ) as notifier:
                    # When the receiver is dead throughout the cutover
                    dead = await rollback_timing(store, "co-dead", notifier.wake)
                    # Then delivery failures are counted and logged as alarms
                    await until(lambda: _failures(metrics) >= 2 * POLICY.attempts)
                    refused = _failures(metrics)
                    assert _deliveries(metrics) == 0
                    # When a receiver comes up on that port
                    await late.start()
                    expected = [
                        event_id("co-dead", e.seq)
                        for e in await store.events("co-dead")
                        if e.kind in NOTIFIED
                    ]
                    await until(lambda: len(late.received) >= len(expected), within=5.0)
                    await asyncio.sleep(POLICY.pause + 0.1)  # nothing more comes
                    assert await store.undelivered(key(url)) == []
    finally:
        await late.stop()

    print(
        f"\ndead webhook: rollback fake {dead.fake:.2f}s / real {dead.real:.3f}s "
        f"(without webhooks: fake {baseline.fake:.2f}s / real {baseline.real:.3f}s); "
        f"{refused:g} refused POSTs counted before the receiver came up; "
        f"{len(late.received)} events delivered after"
    )
    # the cutover ran as without webhooks
    assert dead.kinds == baseline.kinds and "rolled_back" in dead.kinds
    assert dead.fake == pytest.approx(baseline.fake, abs=0.25)  # one tick
    assert dead.real < baseline.real + 0.5
    # every notified event, in journal order, once per id
    assert late.ids == expected
    assert len(set(late.ids)) == len(late.ids)
    assert [r.body["event"] for r in late.received] == [k for k in dead.kinds if k in NOTIFIED]
    assert [r.body["event"] for r in late.received][-1] == "rolled_back"
    assert _deliveries(metrics) == len(expected)
    # the alarm in the log: the webhook's place and host, the connection error, never the path
    failed = [line for line in logs if line["event"] == "webhook delivery failed; will retry"]
    assert failed and all(line["alarm"] is True for line in failed)
    assert all(line["webhook"] == "notify[0]" for line in failed)
    assert all(line["target"] == f"http://127.0.0.1:{port}" for line in failed)
    assert all("cannot connect" in line["error"] for line in failed)
    assert failed[0]["event_id"] == "co-dead:1"  # the first event waits; nothing is skipped
    assert "/hook" not in repr(failed)


def _failures(metrics: Metrics) -> float:
    return _sample(metrics, "cutover_webhook_failures_total")


def _deliveries(metrics: Metrics) -> float:
    return _sample(metrics, "cutover_webhook_deliveries_total")


def _sample(metrics: Metrics, name: str) -> float:
    """The value of ``name{webhook="notify[0]"}`` in the /metrics text."""
    prefix = f'{name}{{webhook="notify[0]"}} '
    for line in metrics.render().decode().splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    raise AssertionError(f"{prefix} not in the metrics")
