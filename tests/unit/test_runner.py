"""Tick-driven scenario tests of the runner (DESIGN.md point 9) with a fake clock.

Each test builds a cutover with ``machine.new_cutover`` in a real :class:`SqliteStore` on
``tmp_path``, then drives a real :class:`Runner` against :class:`FakeRouter`s and
:class:`FakeCheck`s by advancing a :class:`FakeClock`: a 10 s hold takes milliseconds. Every
test is guarded by ``asyncio.timeout`` so a hang fails fast, and the ``Scenario`` fixture
cancels and awaits every task it made.

Several tests guard against engine bugs they found (behaviour against PRODUCT.md or DESIGN.md),
since fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest
import structlog

from cutover.checks.base import MeasureContext
from cutover.core import machine
from cutover.core.machine import Command
from cutover.core.model import (
    CheckPolicy,
    Cutover,
    Event,
    Measurement,
    Phase,
    Plan,
    Stage,
    Status,
    Verdict,
)
from cutover.engine.runner import PERSIST_EVERY, Runner
from cutover.errors import ConflictError, PermanentError, StoreError, TransientError
from cutover.routers.base import Reading
from cutover.store.sqlite import SqliteStore
from cutover.testing import FakeCheck, FakeClock, FakeRouter, RouterCall

#: Real seconds any one test may take before it fails as hung.
GUARD = 3.0
STEP = 0.1  # fake seconds per clock step

STAGES = (
    Stage(weight=10, hold=10.0),
    Stage(weight=50, hold=10.0),
    Stage(weight=100, hold=10.0),
)
ALL_OLD = {"share": "maint"}
Action = Literal["pause", "resume", "promote", "abort"]
RUNNING, PAUSED, AWAITING = Status.RUNNING, Status.PAUSED, Status.AWAITING_APPROVAL
ROLLING_BACK, FAILED = Status.ROLLING_BACK, Status.FAILED
COMPLETED, ROLLED_BACK = Status.COMPLETED, Status.ROLLED_BACK


def make_plan(**changes: Any) -> Plan:
    base: dict[str, Any] = {
        "stages": STAGES,
        "checks": (CheckPolicy(name="health", interval=1.0, failure_limit=2, window=5),),
        "routers": ("edge", "dns"),
        "rollback_timeout": 5.0,
    }
    return Plan(**{**base, **changes})


class TrackedStore(SqliteStore):
    """The real store, tracking writes in flight on its thread so tests can wait for them;
    ``fail_when`` makes the first save whose cutover matches it fail (a full disk, a lock)."""

    def __init__(self, *, path: str) -> None:
        super().__init__(path=path)
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.fail_when: Callable[[Cutover], bool] | None = None

    async def save(self, cutover: Cutover, events: Sequence[Event]) -> Cutover:
        if self.fail_when is not None and self.fail_when(cutover):
            self.fail_when = None
            raise StoreError(f"state store {self.path}: the disk is full (simulated)")
        self.inflight += 1
        self.idle.clear()
        try:
            return await super().save(cutover, events)
        finally:
            self.inflight -= 1
            if not self.inflight:
                self.idle.set()


@dataclass
class Scenario:
    store: TrackedStore
    clock: FakeClock
    routers: dict[str, FakeRouter]
    checks: dict[str, FakeCheck]
    cutover_id: str
    runner: Runner | None = None
    task: asyncio.Task[Cutover] | None = None
    runs: list[asyncio.Task[Cutover]] = field(default_factory=list)

    # --- the daemon -------------------------------------------------------------------------

    async def start(self, *, restarted: bool = False) -> Runner:
        """A runner for the stored cutover, as the supervisor builds one."""
        c = await self.store.get(self.cutover_id)
        assert c is not None
        self.runner = Runner(
            cutover=c, routers=self.routers, checks=self.checks, store=self.store, clock=self.clock
        )
        self.task = asyncio.create_task(self.runner.run(restarted=restarted), name="runner")
        self.runs.append(self.task)
        await self.settle()
        return self.runner

    async def stop(self) -> None:
        """The daemon stops (SIGTERM or a kill): the runner task is cancelled."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.settle()

    async def command(self, action: Action, *, actor: str = "operator") -> Cutover:
        """An operator command, as the API hands it to the runner."""
        assert self.runner is not None
        return await self.runner.command(Command(action=action, actor=actor))

    async def finished(self) -> Cutover:
        assert self.task is not None
        return await self.task

    @property
    def c(self) -> Cutover:
        assert self.runner is not None
        return self.runner.cutover

    # --- time -------------------------------------------------------------------------------

    async def settle(self) -> None:
        """Run the loop until nothing is ready and no store write is in flight."""
        idle = 0
        while idle < 3:
            await FakeClock.settle(yields=10)
            if self.store.inflight:
                idle = 0
                await self.store.idle.wait()  # the store's thread, not fake time
            else:
                idle += 1

    async def run_for(self, seconds: float) -> None:
        await self.clock.advance(seconds, step=STEP, settle=self.settle)

    async def until(self, predicate: Callable[[Cutover], bool], *, within: float = 60.0) -> float:
        """Advance fake time until the runner's cutover satisfies ``predicate``."""
        return await self.clock.advance_until(
            lambda: predicate(self.c), within=within, step=STEP, settle=self.settle
        )

    async def until_real(self, predicate: Callable[[Cutover], bool], limit: float = 1.5) -> None:
        """Wait in real time without moving the fake clock (for real sleeps in the engine)."""
        poll = 0.002
        for _ in range(int(limit / poll)):
            if predicate(self.c):
                break
            await asyncio.sleep(poll)
        else:
            raise TimeoutError(f"condition not met within {limit:g}s of real time")
        await self.settle()

    async def holding(self, stage: int, *, within: float = 60.0) -> float:
        return await self.until(
            lambda c: c.stage_index == stage and c.phase is Phase.HOLDING and c.status is RUNNING,
            within=within,
        )

    # --- the journal ------------------------------------------------------------------------

    async def journal(self) -> list[Event]:
        return await self.store.events(self.cutover_id)

    async def kinds(self) -> list[str]:
        return [e.kind for e in await self.journal()]

    async def stored(self) -> Cutover:
        c = await self.store.get(self.cutover_id)
        assert c is not None
        return c


class MakeScenario(Protocol):
    def __call__(
        self, plan: Plan | None = None, *, checks: Sequence[str] = ..., start: bool = ...
    ) -> Awaitable[Scenario]: ...


@pytest.fixture
async def scenario(tmp_path: Path) -> AsyncIterator[MakeScenario]:
    store = TrackedStore(path=str(tmp_path / "state.db"))
    await store.open()
    made: list[Scenario] = []

    async def make(
        plan: Plan | None = None,
        *,
        checks: Sequence[str] = ("health",),
        start: bool = True,
    ) -> Scenario:
        plan = plan or make_plan()
        clock = FakeClock()
        routers = {name: FakeRouter(name, share=0) for name in plan.routers}
        fakes = {name: FakeCheck(name, clock=clock) for name in checks}
        created = machine.new_cutover(
            cutover_id=f"co-{len(made)}",
            service="checkout",
            from_color="blue",
            to_color="green",
            plan=plan,
            router_kinds={n: r.kind for n, r in routers.items()},
            router_states={n: dict(r.state) for n, r in routers.items()},
            now=clock.time(),
        )
        c = await store.create(created.cutover, list(created.events))
        s = Scenario(store=store, clock=clock, routers=routers, checks=fakes, cutover_id=c.id)
        made.append(s)
        if start:
            await s.start()
        return s

    try:
        yield make
    finally:
        for s in made:
            for task in s.runs:
                task.cancel()
            await asyncio.gather(*s.runs, return_exceptions=True)
            for r in s.routers.values():
                r.clear()
        await store.aclose()


def seq_contiguous(events: list[Event]) -> bool:
    return [e.seq for e in events] == list(range(1, len(events) + 1))


def at(events: list[Event], kind: str, **data: Any) -> list[float]:
    """Wall times of the events of ``kind`` whose data matches ``data``."""
    return [
        e.at for e in events if e.kind == kind and all(e.data.get(k) == v for k, v in data.items())
    ]


# --- logging ------------------------------------------------------------------------------------


async def test_runner_logs_every_journal_event_with_structlog(scenario: MakeScenario) -> None:
    # was a BUG: Runner._commit called self._log.info(e.message, event=e.kind, ...), passing
    # structlog's 'event' twice: TypeError, and the runner died after its first event
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(GUARD):
            s = await scenario()
            await s.holding(0)
            assert s.task is not None and not s.task.done()
    kinds = [line.get("kind") for line in logs if "kind" in line]
    assert kinds == ["stage_started", "stage_applied"]
    assert all(line["service"] == "checkout" for line in logs)
    assert all(line["cutover"] == s.cutover_id for line in logs)


# --- a cutover that completes -------------------------------------------------------------------


async def test_three_stages_complete_with_holds_on_the_fake_clock(scenario: MakeScenario) -> None:
    t0 = time.perf_counter()
    async with asyncio.timeout(GUARD):
        s = await scenario()
        start_mono = s.clock.monotonic()
        await s.until(lambda c: c.status is COMPLETED, within=60)
        c = await s.finished()
        fake_spent = s.clock.monotonic() - start_mono

        assert c.status is COMPLETED
        for r in s.routers.values():
            assert r.applied == [10, 50, 100]  # each stage's Apply reached both routers, once
            assert r.state == {"share": "w100"}
            assert r.evacuations == 0
            assert r.closed == 1
        assert s.checks["health"].closed == 1

        events = await s.journal()
        assert seq_contiguous(events)
        assert [e.kind for e in events] == [
            "started",
            "stage_started",
            "stage_applied",
            "stage_started",
            "stage_applied",
            "stage_started",
            "stage_applied",
            "completed",
        ]
        # each hold counted at least its 10 s of fake monotonic time (wall = monotonic here),
        # and passed within a tick and a check interval after that
        applied = at(events, "stage_applied")
        ends = [*at(events, "stage_started")[1:], *at(events, "completed")]
        for i, (a, e) in enumerate(zip(applied, ends, strict=True)):
            held = e - a  # wall stamps near 1.7e9 s carry ~1e-6 s of float rounding
            assert STAGES[i].hold - 1e-3 <= held < STAGES[i].hold + 1.5, (i, held)
        assert 30.0 <= fake_spent < 35.0
        assert (await s.stored()).status is COMPLETED
        assert s.clock.sleepers == 0  # the runner's feeders are gone
    assert time.perf_counter() - t0 < 2.0


async def test_approval_stage_waits_for_promote(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        stages = (STAGES[0], Stage(weight=50, hold=10.0, approval=True), STAGES[2])
        s = await scenario(make_plan(stages=stages))
        await s.until(lambda c: c.status is AWAITING)
        await s.run_for(30)
        assert (s.c.status, s.c.stage_index) == (AWAITING, 1)
        assert s.routers["edge"].applied == [10, 50]
        with pytest.raises(ConflictError):
            await s.command("resume")
        c = await s.command("promote", actor="rm")
        assert (c.status, c.stage_index, c.phase) == (RUNNING, 2, Phase.SHIFTING)
        await s.until(lambda c: c.status is COMPLETED, within=15)
        assert "promoted" in await s.kinds()


# --- checks ----------------------------------------------------------------------------------


async def test_check_failing_twice_in_stage_two_rolls_back(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(1)
        await s.run_for(3)
        s.checks["health"].set(Verdict.FAIL, value=503.0, detail="HTTP 503")
        took = await s.until(lambda c: c.status is ROLLED_BACK, within=10)
        assert took <= 2.5  # two failing measurements, one per second, then the rollback

        c = await s.finished()
        assert c.status is ROLLED_BACK
        assert c.stage_index == 1
        assert c.reason is not None and "check health" in c.reason and "503" in c.reason
        for r in s.routers.values():
            assert r.state == ALL_OLD  # 0 % new, sessions evacuated
            assert r.share == 0.0
            assert r.applied == [10, 50]  # never reached stage 3
            assert r.evacuations >= 1
        assert all(rs.written == 0 and rs.desired == 0 for rs in c.routers)

        events = await s.journal()
        assert seq_contiguous(events)
        kinds = [e.kind for e in events]
        assert kinds[-2:] == ["rollback_started", "rolled_back"]
        started = next(e for e in events if e.kind == "rollback_started")
        assert started.data["cause"] == "check"
        assert (await s.stored()).status is ROLLED_BACK


async def test_checks_keep_running_while_paused_and_a_failure_rolls_back(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        await s.command("pause", actor="alice")
        await s.run_for(20)
        assert (s.c.status, s.c.stage_index) == (PAUSED, 0)  # the hold does not pass paused
        before = s.checks["health"].measured
        s.checks["health"].script(Verdict.FAIL, Verdict.FAIL)  # then passes again
        await s.until(lambda c: c.status is ROLLED_BACK, within=5)
        assert s.checks["health"].measured - before == 2
        assert s.c.reason is not None and s.c.reason.startswith("check health failed 2")
        assert all(r.state == ALL_OLD for r in s.routers.values())


# --- routers ---------------------------------------------------------------------------------


async def test_transient_router_error_during_a_forward_shift_is_retried(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        edge.fail(TransientError, "router edge: connection refused", times=1)
        await s.until(lambda c: c.stage_index == 1)
        await s.until(lambda c: c.phase is Phase.HOLDING)  # the retry backoff is on the clock
        assert edge.applied == [10, 50, 50]  # the failed attempt, then the retry
        assert s.routers["dns"].applied == [10, 50]
        assert edge.state == {"share": "w50"}
        assert s.c.status is RUNNING
        assert all(rs.error == "" for rs in s.c.routers)
        await s.until(lambda c: c.status is COMPLETED, within=30)
        kinds = await s.kinds()
        assert "rollback_started" not in kinds
        assert kinds.count("stage_started") == 3


async def test_permanent_router_error_rolls_back_naming_the_router(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        dns = s.routers["dns"]
        dns.fail(PermanentError, "router dns: NOTAUTH for checkout.example.com.", times=1)
        await s.until(lambda c: c.status is ROLLED_BACK, within=15)
        c = s.c
        assert dns.applied == [10, 50]  # a permanent error is not retried
        assert c.reason is not None
        assert c.reason.startswith("router dns could not be set to 50%")
        assert "NOTAUTH" in c.reason
        assert all(r.state == ALL_OLD for r in s.routers.values())
        started = [e for e in await s.journal() if e.kind == "rollback_started"]
        assert len(started) == 1 and started[0].data["cause"] == "router"


async def test_rollback_that_cannot_be_verified_fails_then_recovers(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        edge.fail(TransientError, "router edge: no answer within 2s", times=None)
        c = await s.command("abort", actor="alice")
        assert c.status is ROLLING_BACK

        took = await s.until(lambda c: c.status is FAILED, within=10)
        assert 5.0 <= took < 5.5  # rollback_timeout, on the fake clock
        assert s.routers["dns"].state == ALL_OLD  # the healthy router is rolled back at once
        assert edge.state == {"share": "w10"}
        assert (await s.stored()).status is FAILED
        failed = [e for e in await s.journal() if e.kind == "failed"]
        assert len(failed) == 1 and "edge" in failed[0].message

        attempts = edge.evacuations
        await s.run_for(20)  # still failed, still retrying with backoff (capped at 5 s)
        assert s.c.status is FAILED
        assert 4 <= edge.evacuations - attempts <= 8

        edge.clear()  # the router recovers by itself
        took = await s.until(lambda c: c.status is ROLLED_BACK, within=6)
        assert took <= 5.0  # the next retry, at most the 5 s backoff cap away
        assert edge.state == ALL_OLD
        c = await s.finished()
        assert c.reason == "aborted by alice"
        kinds = await s.kinds()
        assert kinds[-3:] == ["rollback_started", "failed", "rolled_back"]


async def test_failed_event_names_only_the_unverified_router(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        s.routers["edge"].fail(TransientError, "router edge: timeout", times=None)
        await s.command("abort")
        await s.until(lambda c: c.status is FAILED, within=10)
        assert s.routers["dns"].state == ALL_OLD
        failed = next(e for e in await s.journal() if e.kind == "failed")
        assert failed.data["routers"] == ["edge"]


async def test_transient_errors_past_apply_timeout_roll_back_on_the_clock(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario(make_plan(apply_timeout=2.0))
        await s.holding(0)
        s.routers["edge"].fail(TransientError, "router edge: connection refused", times=None)
        await s.until(lambda c: c.stage_index == 1)
        gave_up = await s.until(lambda c: c.status is not RUNNING, within=5)
        assert s.c.status in (ROLLING_BACK, ROLLED_BACK)
        assert s.c.reason is not None and "router edge: connection refused" in s.c.reason
        # was a bug: a router failing fast gave up when the next backoff step passed the
        # deadline (after 1.5 of 2 s); the last try is now at the deadline
        assert gave_up >= 1.9


async def test_hanging_router_during_a_shift_rolls_back_after_apply_timeout(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario(make_plan(apply_timeout=2.0))
        await s.holding(0)
        s.routers["edge"].hang(ops=("apply",))
        await s.until(lambda c: c.stage_index == 1)
        await s.until(lambda c: c.status is not RUNNING, within=10)
        assert s.c.reason is not None and "router edge" in s.c.reason


# --- operator commands -------------------------------------------------------------------------


async def test_pause_during_an_apply_in_flight_is_applied_after_it(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        edge.hang(ops=("apply",))
        await s.until(lambda c: edge.hanging == 1)
        assert (s.c.stage_index, s.c.phase) == (1, Phase.SHIFTING)

        # refused commands raise and change nothing
        with pytest.raises(ConflictError, match="cannot promote while shifting"):
            await s.command("promote")
        with pytest.raises(ConflictError, match="cannot resume a cutover that is running"):
            await s.command("resume")

        c = await s.command("pause", actor="alice")
        assert (c.status, c.phase) == (PAUSED, Phase.SHIFTING)
        assert edge.hanging == 1  # the pause did not cancel the shift in flight
        with pytest.raises(ConflictError, match="cannot pause a cutover that is paused"):
            await s.command("pause")

        edge.clear()  # the apply returns: the shift completes, the pause stays
        await s.until_real(lambda c: c.phase is Phase.HOLDING)
        assert (s.c.status, s.c.stage_index) == (PAUSED, 1)
        assert {r.name: r.state["share"] for r in s.routers.values()} == {
            "edge": "w50",
            "dns": "w50",
        }
        await s.run_for(30)
        assert (s.c.status, s.c.stage_index, s.c.hold_elapsed) == (PAUSED, 1, 0.0)

        await s.command("resume", actor="alice")
        await s.until(lambda c: c.status is COMPLETED, within=30)

        events = await s.journal()
        assert seq_contiguous(events)
        kinds = [e.kind for e in events]
        assert kinds[kinds.index("stage_started", 2) :][:4] == [
            "stage_started",
            "paused",
            "stage_applied",
            "resumed",
        ]
        assert kinds.count("paused") == 1  # the refused pause left no trace
        assert edge.applied == [10, 50, 100]


async def test_abort_during_an_apply_in_flight_rolls_back_at_once(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        dns = s.routers["dns"]
        dns.hang(ops=("apply",), times=1)  # only the forward shift hangs
        await s.until(lambda c: dns.hanging == 1)
        await s.command("abort", actor="alice")
        await s.until(lambda c: c.status is ROLLED_BACK, within=2)
        assert dns.hanging == 0  # the forward shift was cancelled
        assert all(r.state == ALL_OLD for r in s.routers.values())


async def test_command_after_the_runner_ended_is_refused(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.until(lambda c: c.status is COMPLETED, within=60)
        await s.finished()
        with pytest.raises(ConflictError):
            async with asyncio.timeout(0.2):
                await s.command("pause")


# --- drift -----------------------------------------------------------------------------------


async def test_drift_during_a_hold_pauses_by_default(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        await s.run_for(2)
        dns = s.routers["dns"]
        applied = list(dns.applied)
        dns.set_by_hand(0)  # an operator takes green out of DNS
        await s.until(lambda c: c.status is PAUSED, within=3)

        drift = [e for e in await s.journal() if e.kind == "drift"]
        assert len(drift) == 1
        assert drift[0].data == {"router": "dns", "observed": 0.0, "policy": "pause"}
        assert s.c.router("dns").drift is True
        assert s.c.router("edge").drift is False

        await s.run_for(30)  # not overwritten, no stage change, no more drift events
        assert (s.c.status, s.c.stage_index) == (PAUSED, 0)
        assert dns.state == {"share": "w0"}
        assert dns.applied == applied
        assert (await s.kinds()).count("drift") == 1


async def test_a_repeated_read_back_is_not_stepped_but_a_new_one_is(
    scenario: MakeScenario,
) -> None:
    """The periodic read-back of a quiet hold equals the last one: the runner does not step
    the machine for it (the cutover object stays the same), yet drift still pauses."""
    long_hold = (Stage(weight=10, hold=300.0), Stage(weight=100, hold=1.0))
    async with asyncio.timeout(GUARD):
        s = await scenario(make_plan(stages=long_hold, checks=()), checks=())
        await s.holding(0)
        await s.run_for(12)  # the first periodic read-backs are handled and remembered
        quiet = s.c
        reads = len(s.routers["dns"].ops("observe"))
        await s.run_for(12)
        assert len(s.routers["dns"].ops("observe")) > reads
        assert s.c is quiet
        s.routers["dns"].set_by_hand(0)
        await s.until(lambda c: c.status is PAUSED, within=12)
        assert (await s.kinds()).count("drift") == 1


async def test_drift_with_on_drift_rollback_rolls_back(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario(make_plan(on_drift="rollback"))
        await s.holding(1)
        s.routers["edge"].set_by_hand(100)  # someone pushed everything to green
        await s.until(lambda c: c.status is ROLLED_BACK, within=3)
        assert s.c.reason is not None and s.c.reason.startswith("drift: router edge")
        assert all(r.state == ALL_OLD for r in s.routers.values())
        kinds = await s.kinds()
        assert kinds[-3:] == ["drift", "rollback_started", "rolled_back"]


async def test_drift_reassert_moves_back_toward_the_old_color_only(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario(make_plan(on_drift="reassert"))
        await s.holding(1)
        edge = s.routers["edge"]
        edge.set_by_hand(100)  # more new than the stage asks: reasserted (toward old)
        await s.until(lambda c: edge.state == {"share": "w50"}, within=3)
        await s.until(lambda c: c.phase is Phase.HOLDING and not c.router("edge").drift)
        assert s.c.status is RUNNING
        assert edge.applied == [10, 50, 50]

        edge.set_by_hand(0)  # less new than the stage asks: never pushed toward new
        await s.until(lambda c: c.status is PAUSED, within=3)
        await s.run_for(10)
        assert edge.state == {"share": "w0"}
        assert edge.applied == [10, 50, 50]
        assert (await s.kinds()).count("drift") == 2


async def test_unreadable_router_during_a_hold_is_an_error_not_drift(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        edge.fail(TransientError, "router edge: connection refused", times=None, ops=("observe",))
        await s.run_for(3)
        assert s.c.status is RUNNING
        assert s.c.router("edge").error == "router edge: connection refused"
        assert s.c.router("edge").drift is False
        edge.clear()
        await s.run_for(1.5)
        assert s.c.router("edge").error == ""
        await s.until(lambda c: c.status is COMPLETED, within=40)
        assert "drift" not in await s.kinds()


# --- restart ---------------------------------------------------------------------------------


async def test_restart_mid_hold_continues_and_completes(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(1)
        await s.run_for(6.2)
        await s.stop()  # the daemon stops mid-hold; traffic stays as it is
        saved = await s.stored()
        assert (saved.status, saved.stage_index, saved.phase) == (RUNNING, 1, Phase.HOLDING)
        assert 5.0 <= saved.hold_elapsed <= 6.2  # persisted with the measurements
        assert all(r.state == {"share": "w50"} for r in s.routers.values())

        await s.run_for(120)  # down for two minutes: not monitored, does not count
        assert s.clock.sleepers == 0
        await s.start(restarted=True)
        took = await s.until(lambda c: c.stage_index == 2, within=20)
        assert took <= 10.0 - saved.hold_elapsed + 1.5  # the hold continued, not restarted
        await s.until(lambda c: c.status is COMPLETED, within=20)
        await s.finished()

        events = await s.journal()
        assert seq_contiguous(events)
        kinds = Counter(e.kind for e in events)
        assert kinds["started"] == 1
        assert kinds["stage_started"] == 3
        assert kinds["stage_applied"] == 3
        assert kinds["restarted"] == 1
        assert kinds["completed"] == 1
        assert [e.data["stage"] for e in events if e.kind == "stage_started"] == [0, 1, 2]
        assert "rollback_started" not in kinds  # restarting alone never rolls back
        for r in s.routers.values():
            assert r.applied == [10, 50, 100]


async def test_restart_mid_shift_completes_the_stage_change(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        edge.hang(ops=("apply",))
        await s.until(lambda c: edge.hanging == 1)
        await s.stop()
        saved = await s.stored()
        assert (saved.stage_index, saved.phase) == (1, Phase.SHIFTING)
        assert edge.state == {"share": "w10"} and s.routers["dns"].state == {"share": "w50"}

        edge.clear()
        await s.start(restarted=True)
        await s.until(lambda c: c.status is COMPLETED, within=40)
        events = await s.journal()
        assert seq_contiguous(events)
        assert [e.data["stage"] for e in events if e.kind == "stage_started"] == [0, 1, 2]
        assert [e.data["stage"] for e in events if e.kind == "stage_applied"] == [0, 1, 2]
        assert edge.applied == [10, 50, 50, 100]  # the hung attempt, then the completed one
        assert s.routers["dns"].applied == [10, 50, 100]  # already there: not written again


async def test_manual_rollback_while_down_is_not_undone_by_a_restart(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        edge.hang(ops=("apply",))
        await s.until(lambda c: edge.hanging == 1)
        await s.stop()  # the daemon dies during the shift to 50 %
        edge.clear()
        for r in s.routers.values():
            r.set_by_hand(0)  # on-call rolls back by hand while it is down
        applied = {n: list(r.applied) for n, r in s.routers.items()}

        await s.start(restarted=True)
        await s.until(lambda c: c.status is PAUSED, within=3)
        await s.run_for(20)
        assert s.c.status is PAUSED  # paused on drift, not rolled back, not re-applied
        for name, r in s.routers.items():
            assert r.state == {"share": "w0"}, name
            assert r.applied == applied[name], name
        events = await s.journal()
        assert seq_contiguous(events)
        drift = [e for e in events if e.kind == "drift"]
        assert sorted(e.data["router"] for e in drift) == ["dns", "edge"]
        assert "rollback_started" not in [e.kind for e in events]

        await s.stop()  # and once more: a paused shift is retried, still without overwriting
        await s.start(restarted=True)
        await s.run_for(5)
        assert s.c.status is PAUSED
        assert all(r.state == {"share": "w0"} for r in s.routers.values())
        assert {n: r.applied for n, r in s.routers.items()} == applied
        assert (await s.kinds()).count("drift") == 2


@pytest.mark.parametrize("down_in", [ROLLING_BACK, FAILED])
async def test_restart_during_a_rollback_carries_on_with_it(
    scenario: MakeScenario, down_in: Status
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(1)
        edge = s.routers["edge"]
        edge.fail(TransientError, "router edge: timeout", times=None)
        s.checks["health"].set(Verdict.FAIL, value=0.2)
        await s.until(lambda c: c.status is down_in, within=10)
        await s.stop()
        reason = (await s.stored()).reason
        assert reason is not None and "check health" in reason

        edge.clear()
        await s.start(restarted=True)
        await s.until(lambda c: c.status is ROLLED_BACK, within=3)
        assert s.c.reason == reason  # the reason survives the restart
        assert all(r.state == ALL_OLD for r in s.routers.values())
        events = await s.journal()
        assert seq_contiguous(events)
        kinds = Counter(e.kind for e in events)
        assert (kinds["rollback_started"], kinds["rolled_back"], kinds["restarted"]) == (1, 1, 1)


async def test_more_than_three_restarts_in_ten_minutes_pause(scenario: MakeScenario) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        for _ in range(3):
            await s.stop()
            await s.start(restarted=True)
            await s.run_for(1)
            assert s.c.status is RUNNING
        await s.stop()
        await s.start(restarted=True)
        await s.run_for(1)
        assert s.c.status is PAUSED
        kinds = await s.kinds()
        assert kinds.count("restarted") == 4
        assert kinds[-1] == "alarm"


# --- wall clock --------------------------------------------------------------------------------


@pytest.mark.parametrize("jump", [3600.0, -3600.0])
async def test_wall_clock_jump_neither_shortens_a_hold_nor_skips_checks(
    scenario: MakeScenario, jump: float
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        applied_at = s.clock.monotonic()
        await s.run_for(2)
        s.clock.jump_wall(jump)
        before = s.checks["health"].measured
        await s.run_for(5)
        assert (s.c.stage_index, s.c.status, s.c.phase) == (0, RUNNING, Phase.HOLDING)
        assert 6.5 <= s.c.hold_elapsed <= 7.5
        assert s.checks["health"].measured - before == 5  # one per second of monotonic time
        await s.until(lambda c: c.stage_index == 1, within=10)
        held = s.clock.monotonic() - applied_at
        assert 10.0 - 1e-6 <= held < 11.5


# --- the state store ---------------------------------------------------------------------------


async def test_store_write_failure_at_a_stage_change_does_not_stall_the_cutover(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        s.store.fail_when = lambda c: c.stage_index == 1
        await s.until(lambda c: c.stage_index == 1)
        assert s.store.fail_when is None  # the save of the stage change failed once
        await s.run_for(3)
        events = await s.journal()
        assert seq_contiguous(events)
        assert [e.data["stage"] for e in events if e.kind == "stage_started"] == [0, 1]
        await s.until(lambda c: c.phase is Phase.HOLDING, within=10)
        assert all(r.state == {"share": "w50"} for r in s.routers.values())


async def test_a_passing_hold_is_persisted_periodically_not_at_every_measurement(
    scenario: MakeScenario,
) -> None:
    """Only clocks and passing measurements change during a clean hold: the runner writes that
    progress every PERSIST_EVERY seconds, not at each 1 s measurement (at 1000 cutovers that
    was the store's main cost), and a clean stop writes the rest."""
    long_hold = (Stage(weight=10, hold=300.0), Stage(weight=100, hold=1.0))
    async with asyncio.timeout(GUARD):
        s = await scenario(make_plan(stages=long_hold))
        await s.holding(0)
        before, measured = s.c.revision, s.checks["health"].measured
        await s.run_for(2 * PERSIST_EVERY + 5)
        assert s.checks["health"].measured - measured >= 2 * PERSIST_EVERY
        writes = s.c.revision - before
        assert 1 <= writes <= 3, writes
        assert (await s.stored()).hold_elapsed < s.c.hold_elapsed
        await s.stop()
        assert (await s.stored()).hold_elapsed == pytest.approx(s.c.hold_elapsed)


async def test_a_failing_measurement_is_persisted_at_once(scenario: MakeScenario) -> None:
    """A fail moves the count a rollback is decided on: it survives a crash (PRODUCT.md), so
    it is written when it is measured, not with the periodic progress."""
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        await s.run_for(2.0)
        s.checks["health"].set(Verdict.FAIL, detail="503")
        await s.until(lambda c: c.check("health").failures_in_window == 1, within=3)
        stored = await s.stored()
        assert stored.check("health").failures_in_window == 1
        assert stored.check("health").last is not None
        assert stored.check("health").last.verdict is Verdict.FAIL
        # while that fail is in the window, the passes after it move it along: written too,
        # so a restart counts exactly what this daemon would have
        s.checks["health"].set(Verdict.PASS)
        await s.run_for(3.0)
        assert s.c.check("health").window[-1] is Verdict.PASS
        assert (await s.stored()).check("health").window == s.c.check("health").window


async def test_the_timer_follows_the_next_deadline(scenario: MakeScenario) -> None:
    """No fixed tick: a stage passes when its hold ends, to within a clock step, and a stage
    entered while a longer timer is armed gets its own, shorter one."""
    stages = (Stage(weight=10, hold=7.3), Stage(weight=50, hold=0.5), Stage(weight=100, hold=2.0))
    async with asyncio.timeout(GUARD):
        s = await scenario(make_plan(stages=stages, checks=()), checks=())
        entered = await s.holding(0)
        took = await s.holding(1)
        assert 7.3 <= took <= 7.3 + 2 * STEP, (entered, took)
        took = await s.holding(2)
        assert 0.5 <= took <= 0.5 + 2 * STEP
        took = await s.until(lambda c: c.status is COMPLETED, within=5)
        assert 2.0 <= took <= 2.0 + 2 * STEP


async def test_a_router_raising_an_untranslated_exception_does_not_stop_the_rollback(
    scenario: MakeScenario,
) -> None:
    """An adapter bug (an exception that is not ours) counts as a failing call: read-backs
    show it as the router's error and the rollback keeps retrying until the router reads
    all-old."""
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        bug: Any = RuntimeError  # what an adapter that forgot to translate would raise
        edge.fail(bug, "adapter bug", times=None, ops=("observe",))
        await s.run_for(6)  # a periodic read-back hits the bug
        assert s.c.status is RUNNING
        assert "adapter bug" in s.c.router("edge").error
        await s.command("abort", actor="alice")
        await s.until(lambda c: c.status is FAILED, within=10)
        edge.clear()
        await s.until(lambda c: c.status is ROLLED_BACK, within=6)
        assert edge.state == ALL_OLD


async def test_checks_are_told_the_share_and_the_baseline_survives_a_restart(
    scenario: MakeScenario,
) -> None:
    # a compare check at share 100 judges against the old color's value of the preceding
    # stage: the runner hands it the newest baseline from the record, also after a restart
    async with asyncio.timeout(GUARD):
        s = await scenario(start=False)
        s.checks["health"].script(Measurement(verdict=Verdict.PASS, value=1.0, baseline=0.02))
        await s.start()
        await s.holding(1)
        await s.run_for(1.5)
        seen = s.checks["health"].contexts
        assert seen[0] == MeasureContext(share=10, baseline=None)
        assert seen[-1] == MeasureContext(share=50, baseline=0.02)
        await s.stop()
        fresh = FakeCheck("health", clock=s.clock)
        s.checks["health"] = fresh
        await s.start(restarted=True)
        await s.run_for(0.5)
        assert fresh.contexts[0] == MeasureContext(share=50, baseline=0.02)
        await s.holding(2)
        await s.run_for(1.5)
        assert fresh.contexts[-1].share == 100


# --- engine safety (issue 14: items 1, 12, 13, and router errors visible at once) ---------------


class FrozenServer(FakeRouter):
    """A DNS server SIGSTOPped at the stage boundary: it freezes when the forward write arrives
    (``freeze_on_write``), and then every call waits until :meth:`thaw`. A write sent while it
    is frozen lands when it thaws even if its sender gave up (it sat in the server's socket
    buffer); a forward one lands ``late`` seconds after the thaw, after the rollback's first
    write and read: the worst order the server may pick."""

    def __init__(self, name: str, clock: FakeClock, *, late: float) -> None:
        super().__init__(name, share=0)
        self._clock = clock
        self._running = asyncio.Event()
        self._running.set()
        self._queued: list[tuple[int, bool]] = []
        self.late = late
        self.freeze_on_write = False
        self.landed: list[tuple[float, int, bool]] = []  # (monotonic time, share, evacuate)

    def thaw(self) -> None:
        for share, evacuate in self._queued:
            if evacuate:
                self._land(share, evacuate)
            else:
                self._clock.call_later(self.late, self._land, share, evacuate)
        self._queued.clear()
        self._running.set()

    def _land(self, share: int, evacuate: bool) -> None:
        self.state = dict(self.expected(share, evacuate=evacuate))
        self.landed.append((self._clock.monotonic(), share, evacuate))

    async def apply(self, share: int, *, evacuate: bool = False) -> None:
        self.calls.append(RouterCall(op="apply", share=share, evacuate=evacuate))
        if self.freeze_on_write and not evacuate:
            self._running.clear()
        if not self._running.is_set():
            self._queued.append((share, evacuate))
            await self._running.wait()
            return
        self._land(share, evacuate)

    async def observe(self) -> Reading:
        await self._running.wait()
        return await super().observe()


async def shift_hanging_on_frozen_dns(scenario: MakeScenario) -> tuple[Scenario, FrozenServer]:
    """A cutover 1 s into its shift to stage 2, whose forward write froze the ``dns`` router."""
    plan = make_plan(apply_timeout=60.0, rollback_timeout=30.0)
    s = await scenario(plan, start=False)
    dns = FrozenServer("dns", s.clock, late=0.6)
    s.routers["dns"] = dns
    await s.start()
    await s.holding(0)
    dns.freeze_on_write = True
    await s.until(lambda c: c.stage_index == 1 and c.phase is Phase.SHIFTING)
    await s.run_for(1)
    return s, dns


async def test_a_failing_new_color_is_rolled_back_while_a_shift_hangs_on_a_frozen_router(
    scenario: MakeScenario,
) -> None:
    # was: initial_delay counted from a stage time that did not advance while shifting, and a
    # forward write queued behind a frozen server landed after the rollback
    async with asyncio.timeout(GUARD):
        s, dns = await shift_hanging_on_frozen_dns(scenario)
        assert s.routers["edge"].state == {"share": "w50"}  # HAProxy carries stage 2 already
        assert dns.applied == [10, 50] and dns.state == {"share": "w10"}

        # the new color fails while the shift hangs: counted at once, rolled back
        s.checks["health"].set(Verdict.FAIL)
        took = await s.clock.advance_until(
            lambda: s.routers["edge"].state == ALL_OLD, within=10, step=STEP, settle=s.settle
        )
        assert took <= 2 * 1.0 + 1.0  # failure_limit x interval + 1 s
        assert s.c.status is ROLLING_BACK and "health" in (s.c.reason or "")
        forward = (s.routers["edge"].applied, list(dns.applied))

        # the server runs again: the stale forward write lands after the rollback's first
        # write and read; the rollback ends verified after it, and nothing lands later
        await s.run_for(12)
        dns.thaw()
        thawed = s.clock.monotonic()
        await s.until(lambda c: c.status is ROLLED_BACK, within=10)
        done = s.clock.monotonic()
        (stale,) = [t for t, share, _ in dns.landed if share == 50]
        assert thawed < stale < done
        assert done - thawed <= 0.6 + 1.0 + 2.0  # the stale write, one settle, one retry
        assert dns.state == ALL_OLD and s.routers["edge"].state == ALL_OLD
        await s.run_for(5)
        assert dns.state == ALL_OLD
        # no forward write was sent after the rollback decision
        assert (s.routers["edge"].applied, dns.applied) == forward
        assert [e.kind for e in await s.journal()].count("stage_applied") == 1


async def test_a_restart_over_one_drifted_router_moves_no_router_toward_new(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge, dns = s.routers["edge"], s.routers["dns"]
        edge.hang(ops=("apply",))
        dns.hang(ops=("apply",))
        await s.until(lambda c: c.stage_index == 1 and c.phase is Phase.SHIFTING)
        await s.stop()  # killed while the stage change to 50 % is written, not applied
        edge.clear()
        dns.clear()
        edge.set_by_hand(0)  # the operator's emergency rollback of one router
        writes = len(dns.applied)
        await s.start(restarted=True)
        await s.until(lambda c: c.status is PAUSED, within=5)
        await s.run_for(5)
        assert s.c.router("edge").drift and not s.c.router("dns").drift
        assert dns.state == {"share": "w10"} and len(dns.applied) == writes
        assert edge.state == {"share": "w0"}


async def test_a_router_back_during_failed_is_rolled_back_within_a_second(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        edge.fail(TransientError, "router edge: connection refused", times=None,
                  ops=("apply", "observe"))  # fmt: skip
        await s.command("abort")
        await s.until(lambda c: c.status is FAILED, within=10)
        await s.run_for(20.05)  # the backoff between attempts is at its longest step now
        edge.clear()
        edge.set_by_hand(10)  # restarted at its config weights
        took = await s.clock.advance_until(
            lambda: edge.state == ALL_OLD, within=10, step=0.05, settle=s.settle
        )
        assert took <= 1.0
        await s.until(lambda c: c.status is ROLLED_BACK, within=2)


async def test_a_router_that_answers_but_keeps_refusing_the_rollback_backs_off(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        edge = s.routers["edge"]
        edge.fail(PermanentError, "router edge: no such server", times=None, ops=("apply",))
        await s.command("abort")
        tries = edge.evacuations
        await s.run_for(30)
        # backoff 0.1 s doubling up to 5 s: about 11 tries in 30 s, not one per probe interval
        assert 5 <= edge.evacuations - tries <= 12
        assert s.c.status is FAILED


async def test_every_failed_try_of_a_shift_shows_the_router_error_at_once(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s = await scenario()
        await s.holding(0)
        s.routers["dns"].fail(TransientError, "router dns: SERVFAIL", times=None)
        with structlog.testing.capture_logs() as logs:
            await s.until(lambda c: c.stage_index == 1 and c.phase is Phase.SHIFTING)
            await s.run_for(1)
        assert s.c.status is RUNNING and s.c.phase is Phase.SHIFTING
        assert s.c.router("dns").error == "router dns: SERVFAIL"  # long before apply_timeout
        warned = [ln for ln in logs if ln["event"] == "shift not applied yet, retrying"]
        assert len(warned) >= 3 and all(ln["log_level"] == "warning" for ln in warned)
        assert {ln["router"] for ln in warned} == {"dns"}
        s.routers["dns"].clear()
        await s.holding(1)
        assert s.c.router("dns").error == ""


async def test_a_forward_write_of_the_runner_before_a_restart_is_waited_out_by_the_rollback(
    scenario: MakeScenario,
) -> None:
    async with asyncio.timeout(GUARD):
        s, dns = await shift_hanging_on_frozen_dns(scenario)
        await s.stop()  # killed: its forward write to dns stays queued in the frozen server
        dns.freeze_on_write = False
        await s.start(restarted=True)  # the new runner's shift cannot even read dns
        await s.run_for(1)
        await s.command("abort")
        await s.run_for(3)
        assert s.routers["edge"].state == ALL_OLD and s.c.status is ROLLING_BACK
        dns.thaw()
        thawed = s.clock.monotonic()
        await s.until(lambda c: c.status is ROLLED_BACK, within=10)
        (stale,) = [t for t, share, _ in dns.landed if share == 50]
        assert thawed < stale < s.clock.monotonic()
        await s.run_for(5)
        assert dns.state == ALL_OLD
