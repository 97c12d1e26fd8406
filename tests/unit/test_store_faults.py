"""The state store becomes unwritable under a running cutover, then recovers.

The real :class:`Runner` on a :class:`FakeClock` over a real SQLite store made read-only for
real (``SqliteStore.set_read_only(True)``: ``PRAGMA query_only``, every write
fails with ``SQLITE_READONLY``; the tests run as root, so chmod would not stop a write). A
full disk (``max_page_count``) only stops writes that need a new page, so a running cutover's
in-place updates mostly still fit: its store-level behaviour (one clear StoreError, nothing
half-written) is tested in ``test_store_sqlite.py``; the engine handles both errors the same.

The rules under test (PRODUCT.md, Restart: persist before acting):

* a forward step that cannot be persisted is not acted on: the routers stay where the stored
  record says, the record is the last good one;
* the fault is visible (PRODUCT.md, Store faults are visible): the store's ``write_error``, the
  cutover's ``store_error``, a counter per failed write, and an ``alarm`` line paced to one a
  minute with a count (not one per failed write);
* a rollback is acted on even when it cannot be persisted (moving to the old color is always
  safe), and voids any forward step held back before it;
* when the fault clears, the held-back events are written once each, in order, and the
  cutover carries on by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from cutover.api.app import make_app
from cutover.config import parse_config
from cutover.core import machine
from cutover.core.model import Phase, Status, Verdict
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.errors import StoreError
from cutover.observability.alarms import PacedAlarm
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from cutover.testing import FakeCheck, FakeClock, FakeRouter, resource_pool
from tests.unit.test_runner import GUARD, Scenario, TrackedStore, make_plan, seq_contiguous
from tests.unit.test_supervisor import CONFIG


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


def _alarms(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "state store cannot write" and e.get("alarm")]


def _held_back(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if str(e["event"]).startswith("transition not written")]


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
        assert stored.store_error == ""
        assert all(r.state == {"share": "w10"} for r in s.routers.values())
        # visible: the store's error, the cutover's status, one paced alarm (the run took far
        # less than the alarm interval of real time) and one held-back line, not one per write
        assert "is read-only" in s.store.write_error
        assert "is read-only" in s.c.store_error
        alarms = _alarms(logs)
        assert len(alarms) == 1 and "is read-only" in str(alarms[0]["error"]), alarms
        assert len(_held_back(logs)) == 1, _held_back(logs)

        with structlog.testing.capture_logs() as logs:
            await s.store.set_read_only(False)
            await s.until(lambda c: c.stage_index == 1 and c.phase is Phase.HOLDING, within=5)
        assert s.store.write_error == "" and s.c.store_error == ""
        (recovered,) = [e for e in logs if e["event"] == "state store writes again"]
        assert int(str(recovered["failed"])) >= 2, recovered  # one try per input, all counted
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
        assert "is read-only" in s.c.store_error
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
        assert stored.store_error == "" and s.c.store_error == ""
        events = await s.journal()
        assert seq_contiguous(events)
        kinds = [e.kind for e in events]
        assert kinds.count("rollback_started") == 1 and kinds[-1] == "rolled_back"


# was an engine bug: a forward shift held back by the fault was kept with the rollback acted on
# meanwhile, and sent when the store came back -- traffic moved toward the rolled-back color
async def test_a_stage_change_held_back_then_voided_by_a_rollback_is_never_sent(
    scenario: Scenario,
) -> None:
    s = scenario
    async with asyncio.timeout(GUARD * 2):
        await s.start()
        await s.holding(0)
        await s.store.set_read_only(True)
        await s.run_for(15)  # the stage change to 50 % is held back
        assert all(r.state == {"share": "w10"} for r in s.routers.values())
        s.checks["health"].set(Verdict.FAIL, value=1.0)
        await s.until(lambda c: c.status is Status.ROLLED_BACK, within=10)
        assert all(r.state == {"share": "maint"} for r in s.routers.values())
        await s.store.set_read_only(False)
        await s.run_for(10)
        assert all(r.state == {"share": "maint"} for r in s.routers.values())
        forward = [
            c for r in s.routers.values() for c in r.calls if c.op == "apply" and c.share == 50
        ]
        assert forward == [], forward
        stored = await s.stored()
        assert stored.status is Status.ROLLED_BACK


async def test_the_store_counts_failed_writes_and_probes_until_it_writes_again(
    tmp_path: Path,
) -> None:
    failed: list[None] = []
    store = SqliteStore(path=str(tmp_path / "s.db"), on_write_error=lambda: failed.append(None))
    await store.open()
    try:
        assert await store.check_writable() == ""
        await store.set_read_only(True)
        assert await store.check_writable() == ""  # nothing failed yet: no probe is made
        with pytest.raises(StoreError, match="read-only"):
            await store.register_notifier("n")
        assert len(failed) == 1 and "read-only" in store.write_error
        assert "read-only" in await store.check_writable()  # the probe write fails too
        assert len(failed) == 2
        await store.set_read_only(False)
        assert await store.check_writable() == ""  # the probe wrote: the fault is over
        assert store.write_error == ""
    finally:
        await store.aclose()


async def test_a_removed_database_file_fails_every_write(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path=str(path))
    await store.open()
    try:
        assert await store.register_notifier("before")
        path.unlink()  # SQLite would go on writing to the unlinked file, lost at restart
        with pytest.raises(StoreError, match="database file was removed"):
            await store.register_notifier("after")
        assert "removed" in await store.check_writable()
    finally:
        await store.aclose()


async def test_readyz_is_503_naming_the_store_while_it_cannot_write(tmp_path: Path) -> None:
    store = SqliteStore(path=str(tmp_path / "s.db"))
    await store.open()
    metrics = Metrics()
    sup = Supervisor(
        config=parse_config(CONFIG),
        store=store,
        clock=SystemClock(),
        resources=resource_pool(),
        metrics=metrics,
    )
    await sup.start()
    app = make_app(supervisor=sup, store=store, metrics=metrics)
    try:
        async with TestClient(TestServer(app)) as client:
            assert (await client.get("/readyz")).status == 200
            await store.set_read_only(True)
            with pytest.raises(StoreError):
                await store.register_notifier("n")  # a write fails: the store is faulty
            resp = await client.get("/readyz")
            body = await resp.json()
            assert resp.status == 503 and body["error"]["code"] == "store_unwritable", body
            assert (
                store.path in body["error"]["message"] and "read-only" in body["error"]["message"]
            )
            await store.set_read_only(False)
            resp = await client.get("/readyz")  # its probe write succeeds: ready again
            assert resp.status == 200, await resp.text()
    finally:
        await sup.stop()
        await store.aclose()


def test_the_alarm_is_paced_to_one_line_an_interval_with_a_count() -> None:
    now = [0.0]
    alarm = PacedAlarm(
        message="cannot write", cleared="writes again", every=60.0, monotonic=lambda: now[0]
    )
    with structlog.testing.capture_logs() as logs:
        for t in (0.0, 1.0, 30.0, 59.0, 60.0, 61.0, 130.0):
            now[0] = t
            alarm.fault(f"full at {t:g}")
        alarm.clear()
        alarm.clear()  # no fault: no line
    lines = [(e["event"], e.get("count"), e.get("error"), e.get("alarm")) for e in logs]
    assert lines[:3] == [
        ("cannot write", 1, "full at 0", True),
        ("cannot write", 4, "full at 60", True),  # 1, 30, 59 and 60 since the first line
        ("cannot write", 2, "full at 130", True),
    ]
    assert [(e["event"], e["failed"]) for e in logs[3:]] == [("writes again", 7)]
    assert alarm.error == ""
