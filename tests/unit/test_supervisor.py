"""The supervisor respawns a crashed runner in-process, with a bounded backoff and an alarm.

A runner "crashes" when an exception escapes it; here a store whose ``save`` raises a plain
``RuntimeError`` (not the ``StoreError`` the runner handles) stands in for such a bug. Routers
and checks are the fakes of :mod:`cutover.testing`, handed to the supervisor through its
``adapters`` factory; time is a :class:`FakeClock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from cutover.checks.base import Check
from cutover.config import ServiceSpec, parse_config
from cutover.core.model import Color, Cutover, Event, Status
from cutover.engine.supervisor import RESPAWN_MAX, Supervisor
from cutover.observability.metrics import Metrics
from cutover.routers.base import Router
from cutover.testing import FakeCheck, FakeClock, FakeRouter
from tests.unit.test_runner import TrackedStore

GUARD = 5.0  # real seconds a test may take before it fails as hung

CONFIG: dict[str, Any] = {
    "services": {
        "checkout": {
            "routers": [
                {
                    "name": "edge",
                    "type": "haproxy",
                    "runtime_api": "unix:/nonexistent/admin.sock",
                    "backend": "checkout",
                    "blue": ["blue1"],
                    "green": ["green1"],
                }
            ],
            "checks": [
                {"name": "health", "type": "http", "url": "http://127.0.0.1:1/", "interval": "1s"}
            ],
            "stages": [{"weight": 50, "hold": "2s"}, {"weight": 100, "hold": "2s"}],
        }
    }
}


class BuggyStore(TrackedStore):
    """The real store (tracking writes in flight), whose next ``crashes`` saves raise an
    exception the runner does not expect (a bug): the runner task dies with it."""

    def __init__(self, *, path: str) -> None:
        super().__init__(path=path)
        self.crashes = 0

    async def save(self, cutover: Cutover, events: Sequence[Event]) -> Cutover:
        if self.crashes > 0:
            self.crashes -= 1
            raise RuntimeError("simulated bug in save")
        return await super().save(cutover, events)


@dataclass
class Daemon:
    supervisor: Supervisor
    store: BuggyStore
    clock: FakeClock
    router: FakeRouter
    check: FakeCheck
    metrics: Metrics

    async def advance_until_status(self, cutover_id: str, *statuses: Status) -> Cutover:
        async def settle() -> None:
            await self.store.idle.wait()

        async def current() -> Cutover:
            return await self.supervisor.get(cutover_id)

        for _ in range(400):
            c = await current()
            if c.status in statuses:
                return c
            await self.clock.advance(0.25, step=0.25, settle=settle)
        raise AssertionError(f"cutover never reached {statuses}: {await current()}")


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    store = BuggyStore(path=str(tmp_path / "state.db"))
    await store.open()
    clock = FakeClock()
    router, check = FakeRouter("edge"), FakeCheck("health", clock=clock)

    def adapters(
        spec: ServiceSpec, service: str, new: Color
    ) -> tuple[dict[str, Router], dict[str, Check]]:
        # the same fakes each time: they are the "servers", which outlive a runner
        return {"edge": router}, {"health": check}

    metrics = Metrics()
    sup = Supervisor(
        config=parse_config(CONFIG), store=store, clock=clock, adapters=adapters, metrics=metrics
    )
    await sup.start()
    try:
        yield Daemon(sup, store, clock, router, check, metrics)
    finally:
        await sup.stop()
        await store.aclose()


async def test_a_crashed_runner_is_respawned_and_the_cutover_completes(daemon: Daemon) -> None:
    async with asyncio.timeout(GUARD):
        with structlog.testing.capture_logs() as logs:
            # Given a cutover whose runner dies at its first write after the start
            daemon.store.crashes = 1
            c = await daemon.supervisor.start_cutover("checkout", actor="test")

            # When time passes, then the supervisor respawns the runner and the cutover ends
            done = await daemon.advance_until_status(c.id, Status.COMPLETED, Status.ROLLED_BACK)

    assert done.status is Status.COMPLETED
    assert daemon.router.state == {"share": "w100"}
    crashes = [e for e in logs if e["event"] == "runner crashed; respawning it"]
    assert len(crashes) == 1 and crashes[0]["alarm"] is True
    assert "simulated bug in save" in crashes[0]["error"]
    assert daemon.metrics.runner_crashes.labels("checkout")._value.get() == 1

    # the journal says so, once, and stays continuous
    events = await daemon.store.events(c.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    restarted = [e for e in events if e.kind == "restarted"]
    assert len(restarted) == 1
    assert "runner crashed" in restarted[0].message
    assert "simulated bug in save" in restarted[0].data["crash"]
    kinds = [e.kind for e in events]
    assert kinds.count("stage_started") == 2 and kinds[-1] == "completed"


async def test_respawn_backs_off_and_stop_cancels_a_pending_respawn(daemon: Daemon) -> None:
    async with asyncio.timeout(GUARD):
        with structlog.testing.capture_logs() as logs:
            # Given a runner that crashes again at once after each of its first respawns
            daemon.store.crashes = 3
            c = await daemon.supervisor.start_cutover("checkout", actor="test")
            done = await daemon.advance_until_status(c.id, Status.COMPLETED)

            # Then the delays double (1, 2, 4 s), bounded by RESPAWN_MAX
            crashed = [e for e in logs if e["event"] == "runner crashed; respawning it"]
            delays = [e["respawn_in"] for e in crashed]
            assert delays == [1.0, 2.0, 4.0]
            assert max(delays) <= RESPAWN_MAX
            assert done.status is Status.COMPLETED

            # And a respawn still pending when the daemon stops is cancelled (no stray task)
            daemon.router.state = {"share": "w0"}
            daemon.store.crashes = 1
            again = await daemon.supervisor.start_cutover("checkout", actor="test")
            await daemon.clock.advance(0.5, settle=daemon.store.idle.wait)
            assert daemon.supervisor.runner(again.id) is None  # crashed, respawn pending
            await daemon.supervisor.stop()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("respawn-")]
