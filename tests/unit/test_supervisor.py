"""The supervisor respawns a crashed runner in-process, with a bounded backoff and an alarm.

A runner "crashes" when an exception escapes it; here a store whose ``save`` raises a plain
``RuntimeError`` (not the ``StoreError`` the runner handles) stands in for such a bug. Routers
and checks are the fakes of :mod:`cutover.testing`, handed to the supervisor through its
``adapters`` factory; time is a :class:`FakeClock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from cutover.checks.base import Check
from cutover.config import ServiceSpec, parse_config
from cutover.core.model import Color, Cutover, Event, Status, Verdict
from cutover.engine.supervisor import RESPAWN_FIRST, RESPAWN_MAX, Supervisor
from cutover.errors import ConflictError, PreflightError, TransientError
from cutover.observability.metrics import Metrics
from cutover.routers.base import Router
from cutover.testing import FakeCheck, FakeClock, FakeRouter, resource_pool
from tests.unit.supervised import supervised
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
async def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Daemon]:
    """A supervisor over fakes; ``CONFIG`` unless a test passes another (indirect param)."""
    config: dict[str, Any] = getattr(request, "param", CONFIG)
    store = BuggyStore(path=str(tmp_path / "state.db"))
    async with supervised(config, store) as s:
        yield Daemon(s.supervisor, s.store, s.clock, s.router, s.check, s.metrics)


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


#: CONFIG with a short ``restart_window``: a runner alive that long has earned a fresh backoff.
WINDOW = 1.0
SHORT_WINDOW: dict[str, Any] = {
    "services": {
        "checkout": {
            **CONFIG["services"]["checkout"],
            "restart_window": f"{WINDOW:g}s",
            "stages": [{"weight": 50, "hold": "10s"}, {"weight": 100, "hold": "2s"}],
        }
    }
}


@pytest.mark.parametrize("daemon", [SHORT_WINDOW], indirect=True)
async def test_a_runner_alive_for_restart_window_resets_the_respawn_backoff(
    daemon: Daemon,
) -> None:
    async with asyncio.timeout(GUARD):
        with structlog.testing.capture_logs() as logs:

            def crashes() -> list[MutableMapping[str, Any]]:
                return [e for e in logs if e["event"] == "runner crashed; respawning it"]

            # Given a runner that crashed at once and was respawned after the first backoff
            daemon.store.crashes = 1
            c = await daemon.supervisor.start_cutover("checkout", actor="test")
            # (bounded by GUARD, not by fake time: the respawn reads the store in a thread)
            while not (crashes() and daemon.supervisor.runner(c.id) is not None):
                await daemon.clock.advance(0.25, step=0.25, settle=daemon.store.idle.wait)
                await asyncio.sleep(0.001)
            assert len(crashes()) == 1 and daemon.supervisor.runner(c.id) is not None

            # When the respawned runner has lived past restart_window and then crashes again
            await daemon.clock.advance(WINDOW + 0.5, step=0.25, settle=daemon.store.idle.wait)
            assert len(crashes()) == 1
            daemon.store.crashes = 1
            done = await daemon.advance_until_status(c.id, Status.COMPLETED)

    # Then its backoff starts over (1 s, not the doubled 2 s of a crash in a row)
    assert [(e["crashes_in_a_row"], e["respawn_in"]) for e in crashes()] == [
        (1, RESPAWN_FIRST),
        (1, RESPAWN_FIRST),
    ]
    assert done.status is Status.COMPLETED


# --- undo: a rollback of the completed cutover; refused starts are kept -------------------------


@dataclass
class Built:
    """An adapters factory that builds what the spec it is given lists (the fakes stand for
    every router name, so a renamed router in the config is still the same "server"), and
    what it was asked for: (router names, check names, new color)."""

    router: FakeRouter
    check: FakeCheck
    calls: list[tuple[tuple[str, ...], tuple[str, ...], Color]]

    def adapters(
        self, spec: ServiceSpec, service: str, new: Color
    ) -> tuple[dict[str, Router], dict[str, Check]]:
        names = tuple(r.name for r in spec.routers)
        checks = tuple(c.name for c in spec.checks)
        self.calls.append((names, checks, new))
        return dict.fromkeys(names, self.router), dict.fromkeys(checks, self.check)


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Built]]:
    store = BuggyStore(path=str(tmp_path / "state.db"))
    await store.open()
    clock = FakeClock()
    router, check = FakeRouter("edge"), FakeCheck("health", clock=clock)
    built = Built(router=router, check=check, calls=[])
    metrics = Metrics()
    sup = Supervisor(
        config=parse_config(CONFIG),
        store=store,
        clock=clock,
        resources=resource_pool(),
        adapters=built.adapters,
        metrics=metrics,
    )
    await sup.start()
    try:
        yield Daemon(sup, store, clock, router, check, metrics), built
    finally:
        await sup.stop()
        await store.aclose()


def renamed_router_config() -> dict[str, Any]:
    service = dict(CONFIG["services"]["checkout"])
    service["routers"] = [{**service["routers"][0], "name": "edge-renamed"}]
    return {"services": {"checkout": service}}


async def finished(daemon: Daemon, cutover_id: str, *statuses: Status) -> Cutover:
    """The cutover once in one of ``statuses`` and its runner gone (the live color is set)."""
    c = await daemon.advance_until_status(cutover_id, *statuses)
    await daemon.clock.advance_until(
        lambda: daemon.supervisor.runner(cutover_id) is None,
        within=5.0,
        settle=daemon.store.idle.wait,
    )
    return c


async def completed(daemon: Daemon) -> Cutover:
    c = await daemon.supervisor.start_cutover("checkout", actor="alice")
    done = await finished(daemon, c.id, Status.COMPLETED, Status.ROLLED_BACK)
    assert done.status is Status.COMPLETED and daemon.router.state == {"share": "w100"}
    return done


async def test_undo_rolls_back_the_completed_cutover_with_its_frozen_routers(
    plain: tuple[Daemon, Built],
) -> None:
    daemon, built = plain
    async with asyncio.timeout(GUARD):
        done = await completed(daemon)
        assert daemon.supervisor.live("checkout") == "green"
        # Given today's config renames the router, and the live color cannot pass a preflight
        daemon.supervisor.config = parse_config(renamed_router_config())
        daemon.router.fail(TransientError, "green1 not UP", ops=("preflight",), times=None)
        measured = daemon.check.measured
        calls = len(daemon.router.calls)

        # When the operator undoes it
        undo = await daemon.supervisor.undo("checkout", actor="erin")

        # Then it is a rollback of that cutover: its colors, its routers, no checks
        assert (undo.kind, undo.status, undo.from_color, undo.to_color) == (
            "undo",
            Status.ROLLING_BACK,
            "blue",
            "green",
        )
        assert built.calls[-1] == (("edge",), (), "green")
        assert undo.reason == f"undo of {done.id} by erin"
        undone = await finished(daemon, undo.id, Status.ROLLED_BACK, Status.FAILED)

    assert undone.status is Status.ROLLED_BACK
    assert daemon.router.state == {"share": "maint"}  # the undone color evacuated
    assert [c.op for c in daemon.router.calls[calls:]] == ["observe", "apply", "observe"]
    assert daemon.router.calls[calls + 1].evacuate
    assert daemon.check.measured == measured  # nothing measured for an undo
    assert daemon.supervisor.live("checkout") == "blue"
    events = await daemon.store.events(undo.id)
    assert [e.kind for e in events] == ["started", "rolled_back"]
    assert events[0].data["undoes"] == done.id

    # A second undo has nothing to undo; the next start goes the same way again
    with pytest.raises(ConflictError) as refused:
        await daemon.supervisor.undo("checkout", actor="erin")
    assert refused.value.code == "nothing_to_undo" and undo.id in str(refused.value)
    daemon.router.clear()
    daemon.supervisor.config = parse_config(CONFIG)
    again = await daemon.supervisor.start_cutover("checkout", actor="alice")
    assert (again.from_color, again.to_color) == ("blue", "green")


async def test_live_color_after_an_undo_survives_a_restart(plain: tuple[Daemon, Built]) -> None:
    daemon, _ = plain
    async with asyncio.timeout(GUARD):
        await completed(daemon)
        undo = await daemon.supervisor.undo("checkout", actor="erin")
        await finished(daemon, undo.id, Status.ROLLED_BACK)
        restarted = Supervisor(
            config=parse_config(CONFIG),
            store=daemon.store,
            clock=daemon.clock,
            resources=resource_pool(),
            adapters=None,
        )
        await restarted.start()
        try:
            assert restarted.live("checkout") == "blue"
        finally:
            await restarted.stop()


async def test_an_undo_in_flight_at_a_restart_resumes_with_its_frozen_spec(
    plain: tuple[Daemon, Built],
) -> None:
    daemon, built = plain
    async with asyncio.timeout(GUARD):
        await completed(daemon)
        # Given an undo whose rollback cannot be written yet when the daemon stops
        daemon.router.fail(TransientError, "edge: connection reset", ops=("apply",), times=None)
        undo = await daemon.supervisor.undo("checkout", actor="erin")
        await daemon.clock.advance(1.0, settle=daemon.store.idle.wait)
        await daemon.supervisor.stop()
        # When a daemon starts on a config that renamed the router
        restarted = Supervisor(
            config=parse_config(renamed_router_config()),
            store=daemon.store,
            clock=daemon.clock,
            resources=resource_pool(),
            adapters=built.adapters,
        )
        await restarted.start()
        try:
            # Then it resumes the undo with the undone cutover's router and no checks
            assert built.calls[-1] == (("edge",), (), "green")
            daemon.router.clear()
            await daemon.clock.advance_until(
                lambda: restarted.runner(undo.id) is None,
                within=10.0,
                settle=daemon.store.idle.wait,
            )
            assert (await restarted.get(undo.id)).status is Status.ROLLED_BACK
            assert restarted.live("checkout") == "blue"
        finally:
            await restarted.stop()
    assert daemon.router.state == {"share": "maint"}
    kinds = [e.kind for e in await daemon.store.events(undo.id)]
    assert kinds == ["started", "restarted", "rolled_back"]


async def test_undo_outside_the_window_is_409_undo_window_passed(
    plain: tuple[Daemon, Built],
) -> None:
    daemon, _ = plain
    async with asyncio.timeout(GUARD):
        await completed(daemon)
        daemon.clock.jump_wall(3600.5)  # undo_window defaults to 1h
        with pytest.raises(ConflictError) as refused:
            await daemon.supervisor.undo("checkout", actor="erin")
    assert (refused.value.code, refused.value.status) == ("undo_window_passed", 409)
    assert "beyond undo_window 3600s" in str(refused.value)
    assert daemon.router.state == {"share": "w100"}


async def test_undo_while_a_cutover_runs_or_before_any_is_409(
    plain: tuple[Daemon, Built],
) -> None:
    daemon, _ = plain
    async with asyncio.timeout(GUARD):
        with pytest.raises(ConflictError) as nothing:
            await daemon.supervisor.undo("checkout", actor="erin")
        c = await daemon.supervisor.start_cutover("checkout", actor="alice")
        with pytest.raises(ConflictError) as running:
            await daemon.supervisor.undo("checkout", actor="erin")
    assert nothing.value.code == "nothing_to_undo"
    assert running.value.code == "cutover_running" and c.id in str(running.value)


async def test_an_undo_not_verified_is_failed_after_rollback_timeout_and_keeps_retrying(
    plain: tuple[Daemon, Built],
) -> None:
    daemon, _ = plain
    async with asyncio.timeout(GUARD):
        await completed(daemon)
        # Given a router that reads but refuses every write
        daemon.router.fail(TransientError, "edge: connection reset", ops=("apply",), times=None)
        undo = await daemon.supervisor.undo("checkout", actor="erin")
        failed = await daemon.advance_until_status(undo.id, Status.FAILED)
        assert failed.plan.rollback_timeout == 30.0
        attempts = len(daemon.router.ops("apply"))
        await daemon.clock.advance(20.0, step=0.5, settle=daemon.store.idle.wait)
        assert len(daemon.router.ops("apply")) > attempts  # still retrying
        assert daemon.supervisor.live("checkout") == "green"
        # When the router takes writes again, then the undo ends verified
        daemon.router.clear()
        undone = await finished(daemon, undo.id, Status.ROLLED_BACK)
    assert daemon.router.state == {"share": "maint"}
    assert [e.kind for e in await daemon.store.events(undone.id)] == [
        "started",
        "failed",
        "rolled_back",
    ]
    assert daemon.supervisor.live("checkout") == "blue"


async def test_an_undo_whose_router_cannot_be_read_is_refused_and_kept(
    plain: tuple[Daemon, Built],
) -> None:
    daemon, _ = plain
    async with asyncio.timeout(GUARD):
        await completed(daemon)
        daemon.router.fail(TransientError, "edge: connection refused", ops=("observe",))
        with pytest.raises(PreflightError) as refusal:
            await daemon.supervisor.undo("checkout", actor="erin")
    assert refusal.value.status == 422
    assert "preflight refused the undo: router edge: cannot be read" in str(refusal.value)
    assert daemon.router.state == {"share": "w100"}
    last = (await daemon.store.history("checkout", limit=1))[0]
    assert (last.kind, last.status, last.reason) == ("undo", Status.REFUSED, str(refusal.value))
    assert daemon.supervisor.live("checkout") == "green"


async def test_a_start_refused_by_preflight_is_kept_in_history(
    plain: tuple[Daemon, Built],
) -> None:
    daemon, _ = plain
    notified: list[tuple[Cutover, list[Event]]] = []

    async def listener(c: Cutover, events: list[Event]) -> None:
        notified.append((c, events))

    daemon.supervisor._listeners = (listener,)
    # Given a health check of the new color that fails
    daemon.check.set(Verdict.FAIL, 0.0, "503 Service Unavailable")
    with pytest.raises(PreflightError) as refusal:
        await daemon.supervisor.start_cutover("checkout", actor="alice")
    assert refusal.value.status == 422 and "check health: fail" in str(refusal.value)
    assert daemon.router.applied == [] and daemon.router.evacuations == 0

    [kept] = await daemon.store.history("checkout")
    assert (kept.status, kept.reason, kept.kind) == (Status.REFUSED, str(refusal.value), "cutover")
    assert (kept.from_color, kept.to_color) == ("blue", "green")
    [event] = await daemon.store.events(kept.id)
    assert event.kind == "refused" and event.data == {"actor": "alice", "reason": kept.reason}
    assert [(c.id, [e.kind for e in es]) for c, es in notified] == [(kept.id, ["refused"])]
    assert (await daemon.supervisor.latest("checkout")) == kept
    assert daemon.router.closed == 1 and daemon.check.closed == 1

    # A refused start owns nothing: the next one runs once the check passes
    daemon.check.set(Verdict.PASS, 1.0)
    c = await daemon.supervisor.start_cutover("checkout", actor="alice")
    assert c.status is Status.RUNNING
