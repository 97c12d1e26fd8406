"""The state store becomes unwritable under a running cutover, then recovers.

The real :class:`Runner` on a :class:`FakeClock` over a real SQLite store made read-only for
real (``SqliteStore.set_read_only(True)``: ``PRAGMA query_only``, every write
fails with ``SQLITE_READONLY``; the tests run as root, so chmod would not stop a write). A
full disk (``max_page_count``) only stops writes that need a new page, so a running cutover's
in-place updates mostly still fit: its store-level behaviour (one clear StoreError, nothing
half-written) is tested in ``test_store_sqlite.py``; the engine handles both errors the same.

The rules under test (PRODUCT.md, Restart: persist before acting):

* a forward step that cannot be persisted is not acted on: the routers stay where the stored
  record says, the record is the last good one, and every failed write is logged as an alarm;
* a rollback is acted on even when it cannot be persisted (moving to the old color is always
  safe);
* when the fault clears, the held-back events are written once each, in order, and the
  cutover carries on by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from cutover.core import machine
from cutover.core.model import Phase, Status, Verdict
from cutover.testing import FakeCheck, FakeClock, FakeRouter
from tests.unit.test_runner import GUARD, Scenario, TrackedStore, make_plan, seq_contiguous


@pytest.fixture
async def scenario(tmp_path: Path) -> AsyncIterator[Scenario]:
    store = TrackedStore(path=str(tmp_path / "state.db"))
    await store.open()
    plan = make_plan()
    clock = FakeClock()
    routers = {name: FakeRouter(name, share=0) for name in plan.routers}
    created = machine.new_cutover(
        cutover_id="co-store",
        service="checkout",
        from_color="blue",
        to_color="green",
        plan=plan,
        router_kinds={n: r.kind for n, r in routers.items()},
        router_states={n: dict(r.state) for n, r in routers.items()},
        now=clock.time(),
    )
    c = await store.create(created.cutover, list(created.events))
    s = Scenario(
        store=store,
        clock=clock,
        routers=routers,
        checks={"health": FakeCheck("health", clock=clock)},
        cutover_id=c.id,
    )
    try:
        yield s
    finally:
        for task in s.runs:
            task.cancel()
        await asyncio.gather(*s.runs, return_exceptions=True)
        await store.aclose()


def _write_alarms(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == "state store write failed" and e.get("alarm")]


async def test_a_stage_change_waits_for_the_store_and_completes_after(scenario: Scenario) -> None:
    s = scenario
    async with asyncio.timeout(GUARD * 2):
        await s.start()
        await s.holding(0)
        await s.store.set_read_only(True)
        with structlog.testing.capture_logs() as logs:
            await s.run_for(15)  # past the 10 s hold: the stage change cannot be persisted
        # the last good record is stage 0; stage 1 was neither persisted nor acted on
        stored = await s.stored()
        assert (stored.stage_index, stored.status) == (0, Status.RUNNING)
        assert all(r.state == {"share": "w10"} for r in s.routers.values())
        alarms = _write_alarms(logs)
        assert alarms and "is read-only" in str(alarms[0]["error"]), alarms[:1]
        # one attempt per runner pass (ticks every 0.25 s): bounded by time, never a hot loop
        assert len(alarms) <= 15 / 0.25 + 20, len(alarms)

        await s.store.set_read_only(False)
        await s.until(lambda c: c.stage_index == 1 and c.phase is Phase.HOLDING, within=5)
        events = await s.journal()
        assert seq_contiguous(events)
        assert [e.data["stage"] for e in events if e.kind == "stage_started"] == [0, 1]
        assert all(r.state == {"share": "w50"} for r in s.routers.values())
        c = await s.until(lambda c: c.status is Status.COMPLETED, within=40)
        assert c


async def test_a_rollback_is_acted_on_while_the_store_is_read_only(scenario: Scenario) -> None:
    s = scenario
    async with asyncio.timeout(GUARD * 2):
        await s.start()
        await s.holding(1)
        await s.store.set_read_only(True)
        s.checks["health"].set(Verdict.FAIL, value=1.0)
        await s.until(lambda c: c.status is Status.ROLLED_BACK, within=10)
        assert all(r.state == {"share": "maint"} for r in s.routers.values())
        stored = await s.stored()
        assert stored.status is Status.RUNNING  # the store could not take it yet


# was an engine bug: Runner.run returned as soon as the in-memory cutover was terminal,
# even when that step's save had failed, so rolled_back was never persisted
async def test_a_rollback_done_while_the_store_is_read_only_is_persisted_when_it_clears(
    scenario: Scenario,
) -> None:
    s = scenario
    async with asyncio.timeout(GUARD * 2):
        await s.start()
        await s.holding(1)
        await s.store.set_read_only(True)
        s.checks["health"].set(Verdict.FAIL, value=1.0)
        await s.until(lambda c: c.status is Status.ROLLED_BACK, within=10)
        await s.store.set_read_only(False)
        await s.run_for(5)
        stored = await s.stored()
        assert stored.status is Status.ROLLED_BACK, stored.status
        events = await s.journal()
        assert seq_contiguous(events)
        kinds = [e.kind for e in events]
        assert kinds.count("rollback_started") == 1 and kinds[-1] == "rolled_back"
