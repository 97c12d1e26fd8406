"""Table, scenario and property tests for the stage machine (cutover.core.machine).

Every (status, input) pair of ``machine.TABLE`` has a row in ``TABLE_ROWS``; every operator
command is tried in every status; scenario tests follow PRODUCT.md's Semantics section; the
Hypothesis tests drive random input sequences from a started cutover and check the invariants.
The last section holds regression tests of machine bugs found by these tests and fixed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cutover.core import machine
from cutover.core.machine import (
    TABLE,
    Apply,
    Command,
    Input,
    Measured,
    Observed,
    PreflightPassed,
    Refusal,
    Restarted,
    Rollback,
    RollbackVerified,
    RouterRolledBack,
    ShiftApplied,
    ShiftAttemptFailed,
    ShiftFailed,
    Step,
    Tick,
)
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
    evolve,
)
from cutover.core.refusal import refused

P, F, INC, E = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.ERROR
RUNNING, AWAITING, PAUSED = Status.RUNNING, Status.AWAITING_APPROVAL, Status.PAUSED
ROLLING_BACK, FAILED = Status.ROLLING_BACK, Status.FAILED
COMPLETED, ROLLED_BACK = Status.COMPLETED, Status.ROLLED_BACK

T0 = 1_700_000_000.0
ROUTERS = ("edge", "dns")
KINDS = {"edge": "haproxy", "dns": "rfc2136"}
CHECKS = ("health", "errors")
STAGES = (
    Stage(weight=10, hold=60),
    Stage(weight=50, hold=60, approval=True),
    Stage(weight=100, hold=60),
)


def router_states(share: int) -> dict[str, dict[str, str]]:
    return {r: {"share": str(share)} for r in ROUTERS}


def make_plan(
    *,
    checks: tuple[CheckPolicy, ...] | None = None,
    stages: tuple[Stage, ...] = STAGES,
    **kw: Any,
) -> Plan:
    if checks is None:
        checks = tuple(CheckPolicy(name=n, failure_limit=2, window=5) for n in CHECKS)
    return Plan(stages=stages, checks=checks, routers=ROUTERS, **kw)


@dataclass
class Run:
    """A cutover driven through the machine, with a wall clock one second per input."""

    c: Cutover
    now: float = T0
    events: list[Event] = field(default_factory=list)
    last: Step | None = None

    @classmethod
    def new(cls, plan: Plan | None = None, *, start: bool = True) -> Run:
        s = machine.new_cutover(
            cutover_id="c-1",
            service="checkout",
            from_color="blue",
            to_color="green",
            plan=plan or make_plan(),
            router_kinds=KINDS,
            router_states=router_states(0),
            now=T0,
        )
        run = cls(c=s.cutover, events=list(s.events), last=s)
        if start:
            run.feed(PreflightPassed())
        return run

    def feed(self, inp: Input, *, wall: float = 1.0) -> Step:
        self.now += wall
        s = machine.step(self.c, inp, self.now)
        self.c = s.cutover
        self.events.extend(s.events)
        self.last = s
        return s

    def applied(self, share: int | None = None) -> Step:
        share = self.c.share if share is None else share
        return self.feed(ShiftApplied(share=share, states=router_states(share)))

    def measure(self, check: str, verdict: Verdict, value: float | None = None) -> Step:
        m = Measurement(verdict=verdict, value=value, at=self.now)
        return self.feed(Measured(check=check, measurement=m))

    def pass_checks(self) -> Step:
        s = self.last
        for name in CHECKS:
            s = self.measure(name, P, 0.0)
        assert s is not None
        return s

    def tick(self, dt: float) -> Step:
        return self.feed(Tick(dt=dt), wall=dt)

    def command(self, action: str, actor: str = "alice", **flags: bool) -> Step:
        return self.feed(Command(action=action, actor=actor, **flags))  # type: ignore[arg-type]

    def clear_stage(self) -> Step:
        """Apply the current stage, hold it, then pass every check."""
        self.applied()
        self.tick(self.c.stage.hold)
        return self.pass_checks()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def kinds(s: Step) -> tuple[str, ...]:
    return tuple(e.kind for e in s.events)


# --- cutovers in every status ------------------------------------------------------------------


def at_preflight(plan: Plan | None = None) -> Run:
    return Run.new(plan, start=False)


def at_shifting(plan: Plan | None = None) -> Run:
    return Run.new(plan)


def at_holding(plan: Plan | None = None) -> Run:
    run = Run.new(plan)
    run.applied()
    assert (run.c.status, run.c.phase) == (RUNNING, Phase.HOLDING)
    return run


def at_holding_passing(plan: Plan | None = None) -> Run:
    """Holding stage 1 with every check passing, its hold not over yet."""
    run = at_holding(plan)
    run.pass_checks()
    assert (run.c.status, run.c.phase) == (RUNNING, Phase.HOLDING)
    return run


def at_awaiting(plan: Plan | None = None) -> Run:
    run = Run.new(plan)
    run.clear_stage()
    run.clear_stage()
    assert (run.c.status, run.c.stage_index) == (AWAITING, 1)
    return run


def at_paused(plan: Plan | None = None) -> Run:
    run = at_holding(plan)
    run.command("pause")
    return run


def at_paused_shifting(plan: Plan | None = None) -> Run:
    run = at_shifting(plan)
    run.command("pause")
    return run


def at_paused_awaiting(plan: Plan | None = None) -> Run:
    run = at_awaiting(plan)
    run.command("pause")
    return run


def at_rolling_back(plan: Plan | None = None) -> Run:
    run = at_holding(plan)
    run.command("abort")
    assert run.c.status is ROLLING_BACK
    return run


def at_failed(plan: Plan | None = None) -> Run:
    run = at_rolling_back(plan)
    run.tick(run.c.plan.rollback_timeout)
    assert run.c.status is FAILED
    return run


def at_completed(plan: Plan | None = None) -> Run:
    run = at_awaiting(plan)
    run.command("promote")
    run.clear_stage()
    assert run.c.status is COMPLETED
    return run


def at_rolled_back(plan: Plan | None = None) -> Run:
    run = at_rolling_back(plan)
    run.feed(RollbackVerified(states=router_states(0)))
    assert run.c.status is ROLLED_BACK
    return run


def at_refused(plan: Plan | None = None) -> Run:
    run = at_preflight(plan)
    run.c = refused(run.c, reason="preflight refused the start", actor="alice", now=run.now).cutover
    return run


BY_STATUS: dict[Status, Callable[..., Run]] = {
    RUNNING: at_holding,
    AWAITING: at_awaiting,
    PAUSED: at_paused,
    ROLLING_BACK: at_rolling_back,
    FAILED: at_failed,
    COMPLETED: at_completed,
    ROLLED_BACK: at_rolled_back,
    Status.REFUSED: at_refused,
}


def assert_unchanged(before: Cutover, s: Step) -> None:
    assert s.cutover == before
    assert s.actions == ()
    assert s.events == ()


# --- the table: one row per (status, input) pair at least -------------------------------------


def _fail(check: str = "health", value: float | None = 0.5) -> Measured:
    return Measured(check=check, measurement=Measurement(verdict=F, value=value))


SAME = object()  # expected status/phase: as before

TABLE_ROWS: list[Any] = [
    # builder, input, status, phase, actions, event kinds
    pytest.param(
        at_preflight,
        PreflightPassed(),
        RUNNING,
        Phase.SHIFTING,
        (Apply(share=10),),
        ("stage_started",),
        id="running-preflight-passed",
    ),
    pytest.param(
        at_shifting, PreflightPassed(), SAME, SAME, (), (), id="running-preflight-passed-twice"
    ),
    pytest.param(
        at_shifting,
        ShiftApplied(share=10, states=router_states(10)),
        RUNNING,
        Phase.HOLDING,
        (),
        ("stage_applied",),
        id="running-shift-applied",
    ),
    pytest.param(
        at_shifting,
        ShiftApplied(share=50, states=router_states(50)),
        SAME,
        SAME,
        (),
        (),
        id="running-shift-applied-stale",
    ),
    pytest.param(
        at_holding,
        ShiftApplied(share=10, states=router_states(10)),
        SAME,
        SAME,
        (),
        (),
        id="running-shift-applied-while-holding",
    ),
    pytest.param(
        at_paused_shifting,
        ShiftApplied(share=10, states=router_states(10)),
        PAUSED,
        Phase.HOLDING,
        (),
        ("stage_applied",),
        id="paused-shift-applied",
    ),
    pytest.param(
        at_shifting,
        ShiftFailed(share=10, router="dns", error="REFUSED"),
        ROLLING_BACK,
        Phase.SHIFTING,
        (Rollback(),),
        ("rollback_started",),
        id="running-shift-failed",
    ),
    pytest.param(
        at_shifting,
        ShiftFailed(share=50, router="dns", error="REFUSED"),
        SAME,
        SAME,
        (),
        (),
        id="running-shift-failed-stale",
    ),
    pytest.param(
        at_paused_shifting,
        ShiftFailed(share=10, router="edge", error="no such server"),
        ROLLING_BACK,
        Phase.SHIFTING,
        (Rollback(),),
        ("rollback_started",),
        id="paused-shift-failed",
    ),
    pytest.param(
        at_awaiting,
        ShiftApplied(share=50, states=router_states(50)),
        SAME,
        SAME,
        (),
        (),
        id="awaiting-shift-applied-while-holding",
    ),
    pytest.param(
        at_awaiting,
        ShiftFailed(share=50, router="dns", error="REFUSED"),
        SAME,
        SAME,
        (),
        (),
        id="awaiting-shift-failed-while-holding",
    ),
    # a failed try of a shift that is retried shows the router's error, nothing else
    pytest.param(
        at_shifting,
        ShiftAttemptFailed(share=10, router="dns", error="timeout"),
        RUNNING,
        Phase.SHIFTING,
        (),
        (),
        id="running-shift-attempt-failed",
    ),
    pytest.param(
        at_paused_shifting,
        ShiftAttemptFailed(share=10, router="dns", error="timeout"),
        PAUSED,
        Phase.SHIFTING,
        (),
        (),
        id="paused-shift-attempt-failed",
    ),
    pytest.param(
        at_awaiting,
        ShiftAttemptFailed(share=50, router="dns", error="timeout"),
        SAME,
        SAME,
        (),
        (),
        id="awaiting-shift-attempt-failed-while-holding",
    ),
    pytest.param(at_paused, Tick(dt=5), PAUSED, Phase.HOLDING, (), (), id="paused-tick"),
    pytest.param(at_holding, Tick(dt=5), RUNNING, Phase.HOLDING, (), (), id="running-tick"),
    # stage time counts while shifting (a stage 1 check's initial_delay): not unchanged
    pytest.param(
        at_shifting, Tick(dt=5), RUNNING, Phase.SHIFTING, (), (), id="running-tick-shifting"
    ),
    pytest.param(at_awaiting, Tick(dt=5), AWAITING, Phase.HOLDING, (), (), id="awaiting-tick"),
    pytest.param(
        at_rolling_back, Tick(dt=5), ROLLING_BACK, Phase.HOLDING, (), (), id="rolling-back-tick"
    ),
    pytest.param(
        at_rolling_back,
        Tick(dt=30),
        FAILED,
        Phase.HOLDING,
        (),
        ("failed",),
        id="rolling-back-tick-timeout",
    ),
    pytest.param(
        at_rolling_back,
        RollbackVerified(states=router_states(0)),
        ROLLED_BACK,
        Phase.HOLDING,
        (),
        ("rolled_back",),
        id="rolling-back-verified",
    ),
    pytest.param(
        at_failed,
        RollbackVerified(states=router_states(0)),
        ROLLED_BACK,
        Phase.HOLDING,
        (),
        ("rolled_back",),
        id="failed-verified",
    ),
    pytest.param(
        at_rolling_back,
        RouterRolledBack(router="edge", state={"edge": "w0"}),
        ROLLING_BACK,
        Phase.HOLDING,
        (),
        (),
        id="rolling-back-one-router-verified",
    ),
    pytest.param(
        at_failed,
        RouterRolledBack(router="edge", state={"edge": "w0"}),
        FAILED,
        Phase.HOLDING,
        (),
        (),
        id="failed-one-router-verified",
    ),
    pytest.param(
        at_rolling_back,
        Observed(router="edge", error="refused"),
        ROLLING_BACK,
        Phase.HOLDING,
        (),
        (),
        id="rolling-back-observed",
    ),
    pytest.param(
        at_failed,
        Observed(router="edge", share=0.0),
        FAILED,
        Phase.HOLDING,
        (),
        (),
        id="failed-observed",
    ),
    pytest.param(at_holding, _fail(), RUNNING, Phase.HOLDING, (), (), id="running-measured"),
    pytest.param(at_awaiting, _fail(), AWAITING, Phase.HOLDING, (), (), id="awaiting-measured"),
    pytest.param(at_paused, _fail(), PAUSED, Phase.HOLDING, (), (), id="paused-measured"),
    pytest.param(
        at_holding,
        Measured(check="nope", measurement=Measurement(verdict=F)),
        SAME,
        SAME,
        (),
        (),
        id="running-measured-unknown-check",
    ),
    pytest.param(
        at_holding, Observed(router="edge", share=10.0), SAME, SAME, (), (), id="running-observed"
    ),
    pytest.param(
        at_holding,
        Observed(router="edge", share=30.0, known=False),
        PAUSED,
        Phase.HOLDING,
        (),
        ("drift", "paused"),
        id="running-observed-drift",
    ),
    pytest.param(
        at_holding,
        Observed(router="edge", error="connection refused"),
        SAME,
        SAME,
        (),
        ("router_unreadable",),
        id="running-observed-unreadable",
    ),
    pytest.param(
        at_awaiting,
        Observed(router="dns", error="timed out"),
        SAME,
        SAME,
        (),
        ("router_unreadable",),
        id="awaiting-observed-unreadable",
    ),
    pytest.param(
        at_paused,
        Observed(router="dns", error="timed out"),
        SAME,
        SAME,
        (),
        ("router_unreadable",),
        id="paused-observed-unreadable",
    ),
    pytest.param(
        at_awaiting,
        Observed(router="dns", share=20.0, known=False),
        PAUSED,
        Phase.HOLDING,
        (),
        ("drift", "paused"),
        id="awaiting-observed-drift",
    ),
    pytest.param(
        at_paused,
        Observed(router="dns", share=20.0, known=False),
        PAUSED,
        Phase.HOLDING,
        (),
        ("drift", "paused"),
        id="paused-observed-drift",
    ),
    pytest.param(
        at_shifting,
        Restarted(),
        RUNNING,
        Phase.SHIFTING,
        (Apply(share=10),),
        ("restarted",),
        id="running-restarted-shifting",
    ),
    pytest.param(
        at_holding, Restarted(), RUNNING, Phase.HOLDING, (), ("restarted",), id="running-restarted"
    ),
    pytest.param(
        at_awaiting,
        Restarted(),
        AWAITING,
        Phase.HOLDING,
        (),
        ("restarted",),
        id="awaiting-restarted",
    ),
    pytest.param(
        at_paused, Restarted(), PAUSED, Phase.HOLDING, (), ("restarted",), id="paused-restarted"
    ),
    pytest.param(
        at_rolling_back,
        Restarted(),
        ROLLING_BACK,
        Phase.HOLDING,
        (Rollback(),),
        ("restarted",),
        id="rolling-back-restarted",
    ),
    pytest.param(
        at_failed,
        Restarted(),
        FAILED,
        Phase.HOLDING,
        (Rollback(),),
        ("restarted",),
        id="failed-restarted",
    ),
    *(
        pytest.param(
            BY_STATUS[status], Command(action="abort"), ROLLING_BACK, SAME, (Rollback(),),
            ("rollback_started",), id=f"{status.value}-command",
        )
        if status in (RUNNING, AWAITING, PAUSED)
        else pytest.param(
            BY_STATUS[status], Command(action="abort"), SAME, SAME, (), (),
            id=f"{status.value}-command",
        )
        for status in Status
    ),
]  # fmt: skip


@pytest.mark.parametrize(("build", "inp", "status", "phase", "actions", "events"), TABLE_ROWS)
def test_table(
    build: Callable[[], Run],
    inp: Input,
    status: Any,
    phase: Any,
    actions: tuple[Any, ...],
    events: tuple[str, ...],
) -> None:
    run = build()
    before = run.c
    assert (before.status, type(inp)) in TABLE
    s = run.feed(inp)
    if isinstance(inp, Command) and status is SAME:
        assert s.refused  # commands that do not apply are refused, never silently dropped
    else:
        assert s.refused is None
    assert s.cutover.status is (before.status if status is SAME else status)
    assert s.cutover.phase is (before.phase if phase is SAME else phase)
    assert s.actions == actions
    assert kinds(s) == events
    if status is SAME and phase is SAME and not events:
        assert_unchanged(before, s)


def test_every_table_pair_has_a_row() -> None:
    covered = set()
    for row in TABLE_ROWS:
        build, inp = row.values[0], row.values[1]
        covered.add((build().c.status, type(inp)))
    assert set(TABLE) <= covered


_SAMPLES: list[Input] = [
    PreflightPassed(),
    ShiftApplied(share=10, states=router_states(10)),
    ShiftFailed(share=10, router="edge", error="x"),
    ShiftAttemptFailed(share=10, router="edge", error="x"),
    RollbackVerified(states=router_states(0)),
    Tick(dt=500),
    _fail(),
    Observed(router="edge", share=30.0, known=False),
    Restarted(),
]


@pytest.mark.parametrize(
    ("status", "inp"),
    [
        pytest.param(status, inp, id=f"{status.value}-{type(inp).__name__}")
        for status in Status
        for inp in _SAMPLES
        if (status, type(inp)) not in TABLE
    ],
)
def test_pairs_outside_the_table_change_nothing(status: Status, inp: Input) -> None:
    run = BY_STATUS[status]()
    before = run.c
    s = run.feed(inp)
    assert_unchanged(before, s)
    assert s.refused is None


# --- operator commands in every status -----------------------------------------------------------

# status builder -> action -> (status, stage_index, actions, event kinds), or None when refused
_CMD: dict[str, dict[str, tuple[Status, int, tuple[Any, ...], tuple[str, ...]] | None]] = {
    "preflight": {
        "pause": (PAUSED, 0, (), ("paused",)),
        "resume": None,
        "promote": None,
        "abort": (ROLLING_BACK, 0, (Rollback(),), ("rollback_started",)),
    },
    "shifting": {
        "pause": (PAUSED, 0, (), ("paused",)),
        "resume": None,
        "promote": None,
        "abort": (ROLLING_BACK, 0, (Rollback(),), ("rollback_started",)),
    },
    "holding": {
        "pause": (PAUSED, 0, (), ("paused",)),
        "resume": None,
        "promote": None,  # no check has passed at this stage yet: checks_not_passing
        "abort": (ROLLING_BACK, 0, (Rollback(),), ("rollback_started",)),
    },
    "holding_passing": {
        "pause": (PAUSED, 0, (), ("paused",)),
        "resume": None,
        "promote": (RUNNING, 1, (Apply(share=50),), ("promoted", "stage_started")),
        "abort": (ROLLING_BACK, 0, (Rollback(),), ("rollback_started",)),
    },
    "awaiting": {
        "pause": (PAUSED, 1, (), ("paused",)),
        "resume": None,
        "promote": (RUNNING, 2, (Apply(share=100),), ("promoted", "stage_started")),
        "abort": (ROLLING_BACK, 1, (Rollback(),), ("rollback_started",)),
    },
    "paused": {
        "pause": None,
        "resume": (RUNNING, 0, (), ("resumed",)),
        "promote": None,
        "abort": (ROLLING_BACK, 0, (Rollback(),), ("rollback_started",)),
    },
    "paused_awaiting": {
        "pause": None,
        "resume": (AWAITING, 1, (), ("resumed",)),
        "promote": None,
        "abort": (ROLLING_BACK, 1, (Rollback(),), ("rollback_started",)),
    },
    "paused_shifting": {
        "pause": None,
        "resume": (RUNNING, 0, (Apply(share=10, force=True),), ("resumed",)),
        "promote": None,
        "abort": (ROLLING_BACK, 0, (Rollback(),), ("rollback_started",)),
    },
    **{
        name: dict.fromkeys(("pause", "resume", "promote", "abort"))
        for name in ("rolling_back", "failed", "completed", "rolled_back")
    },
}
_BUILDERS: dict[str, Callable[..., Run]] = {
    "preflight": at_preflight,
    "shifting": at_shifting,
    "holding": at_holding,
    "holding_passing": at_holding_passing,
    "awaiting": at_awaiting,
    "paused": at_paused,
    "paused_awaiting": at_paused_awaiting,
    "paused_shifting": at_paused_shifting,
    "rolling_back": at_rolling_back,
    "failed": at_failed,
    "completed": at_completed,
    "rolled_back": at_rolled_back,
}


@pytest.mark.parametrize(
    ("where", "action"),
    [(where, action) for where, by_action in _CMD.items() for action in by_action],
)
def test_command(where: str, action: str) -> None:
    run = _BUILDERS[where]()
    before = run.c
    s = run.command(action, actor="alice")
    expected = _CMD[where][action]
    if expected is None:
        assert s.refused
        assert action in s.refused.message
        assert_unchanged(before, s)
        assert (
            action not in machine.allowed_commands(before.status)
            or before.phase in (Phase.PREFLIGHT, Phase.SHIFTING)
            or s.refused.code == "checks_not_passing"
        )
        return
    status, index, actions, events = expected
    assert s.refused is None
    assert action in machine.allowed_commands(before.status)
    assert (s.cutover.status, s.cutover.stage_index) == (status, index)
    assert s.actions == actions
    assert kinds(s) == events
    assert all("alice" in e.message for e in s.events if e.kind != "stage_started")


def test_allowed_commands() -> None:
    assert machine.allowed_commands(RUNNING) == ["pause", "promote", "abort"]
    assert machine.allowed_commands(AWAITING) == ["pause", "promote", "abort"]
    assert machine.allowed_commands(PAUSED) == ["resume", "abort"]
    for status in (ROLLING_BACK, FAILED, COMPLETED, ROLLED_BACK):
        assert machine.allowed_commands(status) == []


def test_promote_while_shifting_says_why() -> None:
    s = at_shifting().command("promote")
    assert s.refused == Refusal(code="invalid_state", message="cannot promote while shifting")


def test_refusal_names_status() -> None:
    s = at_completed().command("abort")
    assert s.refused == Refusal(
        code="invalid_state", message="cannot abort a cutover that is completed"
    )


# --- stages --------------------------------------------------------------------------------------


def test_new_cutover() -> None:
    run = at_preflight()
    c = run.c
    assert (c.status, c.phase, c.stage_index) == (RUNNING, Phase.PREFLIGHT, 0)
    assert [r.name for r in c.routers] == list(ROUTERS)
    assert all((r.desired, r.written, r.observed) == (0, 0, 0.0) for r in c.routers)
    assert c.router("edge").kind == "haproxy"
    assert [ch.name for ch in c.checks] == list(CHECKS)
    assert run.kinds() == ["started"]
    assert run.events[0].data == {"actor": "operator", "stages": [10, 50, 100]}
    assert "blue to green" in run.events[0].message


def test_preflight_enters_stage_1() -> None:
    run = at_preflight()
    s = run.feed(PreflightPassed())
    assert s.actions == (Apply(share=10),)
    assert (s.cutover.phase, s.cutover.stage_index) == (Phase.SHIFTING, 0)
    assert all(r.desired == 10 for r in s.cutover.routers)
    assert s.events[0].data == {"stage": 0, "share": 10}
    assert s.cutover.updated_at == run.now


def test_shift_applied_records_routers_and_holds() -> None:
    run = at_shifting()
    states = {"edge": {"g1": "26"}, "dns": {"A": "1 of 10"}}
    s = run.feed(ShiftApplied(share=10, states=states))
    assert s.cutover.phase is Phase.HOLDING
    for r in s.cutover.routers:
        assert (r.written, r.observed, r.drift, r.error) == (10, 10.0, False, "")
        assert r.written_state == states[r.name]


def test_stale_shift_applied_is_ignored_in_a_later_stage() -> None:
    run = at_holding()
    run.tick(60)
    run.pass_checks()
    assert (run.c.stage_index, run.c.phase) == (1, Phase.SHIFTING)
    before = run.c
    assert_unchanged(before, run.applied(10))
    assert run.applied(50).cutover.phase is Phase.HOLDING


def test_tick_accumulates_hold_only_while_holding() -> None:
    run = at_shifting()
    run.tick(30)
    assert run.c.hold_elapsed == 0
    run.applied()
    run.tick(5)
    run.tick(7.5)
    assert run.c.hold_elapsed == 12.5
    run.command("pause")
    run.tick(100)
    assert run.c.hold_elapsed == 12.5
    run.command("resume")
    run.tick(1)
    assert run.c.hold_elapsed == 13.5


def test_tick_in_awaiting_counts_approval_not_hold() -> None:
    run = at_awaiting()
    run.applied(50)  # stale for awaiting: ignored
    hold = run.c.hold_elapsed
    run.tick(40)
    assert (run.c.hold_elapsed, run.c.approval_elapsed) == (hold, 40)
    assert run.c.status is AWAITING  # no approval_timeout: waits forever


@pytest.mark.parametrize(
    ("ops", "advanced"),
    [
        ([("tick", 60)], False),
        ([("health", P), ("errors", P), ("tick", 59)], False),
        ([("health", P), ("errors", P), ("tick", 59), ("tick", 1)], True),
        ([("tick", 60), ("health", P)], False),
        ([("tick", 60), ("health", P), ("errors", P)], True),
        ([("health", P), ("errors", P), ("errors", F), ("tick", 60)], False),
        ([("health", P), ("errors", F), ("tick", 60), ("errors", P)], True),
        ([("health", P), ("errors", INC), ("tick", 60)], False),
        ([("health", P), ("errors", E), ("tick", 60)], False),
        ([("health", P), ("errors", E), ("tick", 60), ("errors", P)], True),
        ([("tick", 120), ("health", P), ("errors", P)], True),
    ],
)
def test_stage_passes_only_when_hold_over_and_every_check_passes(
    ops: list[tuple[str, Any]], advanced: bool
) -> None:
    run = at_holding()
    for what, arg in ops:
        if what == "tick":
            run.tick(arg)
        else:
            run.measure(what, arg)
    assert run.c.status is RUNNING
    if advanced:
        assert (run.c.stage_index, run.c.phase) == (1, Phase.SHIFTING)
        assert run.last is not None and run.last.actions == (Apply(share=50),)
    else:
        assert (run.c.stage_index, run.c.phase) == (0, Phase.HOLDING)


def test_dry_run_check_neither_holds_a_stage_nor_acts() -> None:
    plan = make_plan(
        checks=(
            CheckPolicy(name="health"),
            CheckPolicy(name="errors", failure_limit=1, on_error="rollback", dry_run=True),
        )
    )
    run = at_holding(plan)
    run.measure("errors", F, 9.0)
    run.measure("errors", E)
    run.measure("errors", E)
    run.measure("errors", E)
    assert run.c.status is RUNNING
    run.tick(60)
    run.measure("health", P)
    assert (run.c.stage_index, run.c.phase) == (1, Phase.SHIFTING)
    assert run.c.check("errors").failures_in_window == 1  # still measured and shown


def test_checks_need_a_fresh_pass_in_every_stage() -> None:
    run = at_holding()
    run.pass_checks()
    run.tick(60)
    assert run.c.stage_index == 1
    assert all(ch.latest is None for ch in run.c.checks)
    assert all(len(ch.history) == 1 for ch in run.c.checks)  # history and window survive
    run.applied()
    run.tick(60)
    run.measure("health", P)
    assert (run.c.status, run.c.stage_index) == (RUNNING, 1)
    run.measure("errors", P)
    assert (run.c.status, run.c.stage_index) == (AWAITING, 1)


def test_failure_counts_survive_stage_changes() -> None:
    run = at_holding()
    run.measure("health", F)
    run.pass_checks()
    run.tick(60)
    assert run.c.stage_index == 1
    run.applied()
    s = run.measure("health", F, 3.0)
    assert s.cutover.status is ROLLING_BACK
    assert "failed 2 of the last 3" in (s.cutover.reason or "")


def test_approval_stage_waits_for_promote() -> None:
    run = at_holding()
    run.clear_stage()  # stage 1 -> stage 2 shifting
    run.applied()
    run.tick(60)
    s = run.pass_checks()
    assert s.cutover.status is AWAITING
    assert kinds(s) == ("approval_needed",)
    assert s.events[0].data == {"stage": 1}
    assert "50%" in s.events[0].message
    run.tick(3600)
    assert run.c.status is AWAITING
    s = run.command("promote", actor="bob")
    assert (s.cutover.status, s.cutover.phase, s.cutover.stage_index) == (
        RUNNING,
        Phase.SHIFTING,
        2,
    )
    assert s.actions == (Apply(share=100),)
    assert "stage 2 promoted by bob" in s.events[0].message


def test_approval_timeout_rolls_back() -> None:
    stages = (STAGES[0], replace(STAGES[1], approval_timeout=120), STAGES[2])
    run = at_awaiting(make_plan(stages=stages))
    run.tick(119)
    assert run.c.status is AWAITING
    s = run.tick(1)
    assert s.cutover.status is ROLLING_BACK
    assert s.actions == (Rollback(),)
    assert "approval_timeout 120s" in (s.cutover.reason or "")


def test_last_stage_completes() -> None:
    run = at_awaiting()
    run.command("promote")
    run.applied()
    run.tick(60)
    s = run.pass_checks()
    c = s.cutover
    assert (c.status, c.stage_index, c.finished_at, c.paused_from) == (
        COMPLETED,
        2,
        run.now,
        None,
    )
    assert kinds(s) == ("completed",)
    assert "green is live for checkout" in s.events[0].message
    assert run.kinds() == [
        "started",
        "stage_started",
        "stage_applied",
        "stage_started",
        "stage_applied",
        "approval_needed",
        "promoted",
        "stage_started",
        "stage_applied",
        "completed",
    ]


def test_single_stage_without_checks_completes_on_hold() -> None:
    plan = make_plan(checks=(), stages=(Stage(weight=100, hold=0),))
    run = Run.new(plan)
    s = run.applied()
    assert s.cutover.status is COMPLETED
    assert kinds(s) == ("stage_applied", "completed")


# --- rollback ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["holding", "awaiting", "paused", "paused_awaiting"])
def test_failure_limit_rolls_back_in_every_active_status(where: str) -> None:
    run = _BUILDERS[where]()
    run.measure("errors", F, 0.02)
    assert run.c.status is not ROLLING_BACK
    s = run.measure("errors", F, 0.0375)
    c = s.cutover
    assert c.status is ROLLING_BACK
    assert s.actions == (Rollback(),)
    assert kinds(s) == ("rollback_started",)
    assert c.reason is not None and "check errors" in c.reason and "0.0375" in c.reason
    assert s.events[0].data == {"reason": c.reason, "cause": "check"}
    assert all(r.desired == 0 for r in c.routers)
    assert (c.rollback_elapsed, c.paused_from) == (0.0, None)


@pytest.mark.parametrize(
    ("policy", "codes", "status"),
    [
        (CheckPolicy(name="health", on_inconclusive="pause"), "I I I", PAUSED),
        (CheckPolicy(name="health", on_inconclusive="rollback"), "I I I", ROLLING_BACK),
        (CheckPolicy(name="health", on_error="pause"), "E E E", PAUSED),
        (CheckPolicy(name="health", on_error="rollback"), "E E E", ROLLING_BACK),
        (CheckPolicy(name="health", on_error="rollback"), "E E P E E", RUNNING),
    ],
)
def test_inconclusive_and_error_policies(policy: CheckPolicy, codes: str, status: Status) -> None:
    run = at_holding(make_plan(checks=(policy,)))
    for ch in codes.split():
        run.measure("health", {"P": P, "I": INC, "E": E}[ch])
    assert run.c.status is status
    if status is PAUSED:
        assert run.events[-1].kind == "alarm"
        assert run.c.paused_from is RUNNING
    if status is ROLLING_BACK:
        assert run.last is not None and run.last.actions == (Rollback(),)
        assert "check health" in (run.c.reason or "")


def test_initial_delay_makes_early_measurements_not_count() -> None:
    plan = make_plan(checks=(CheckPolicy(name="health", initial_delay=20),))
    run = at_shifting(plan)
    run.measure("health", F)  # while shifting: the stage's delay has not begun
    run.applied()
    run.measure("health", F)
    run.tick(19)
    run.measure("health", F)
    run.measure("health", P)
    h = run.c.check("health")
    assert run.c.status is RUNNING
    assert (h.window, h.latest, len(h.history)) == ((), None, 4)
    assert h.last is not None and h.last.counting is False
    run.tick(41)  # hold over, but no counting pass yet
    assert run.c.stage_index == 0
    run.measure("health", F)
    assert run.c.check("health").last.counting is True  # type: ignore[union-attr]
    s = run.measure("health", F)
    assert s.cutover.status is ROLLING_BACK


def test_measurements_during_preflight_do_not_count() -> None:
    run = at_preflight()
    run.measure("health", F)
    run.measure("health", F)
    assert run.c.status is RUNNING
    assert run.c.check("health").window == ()


def test_rollback_verified_rolls_back() -> None:
    run = at_holding()
    run.measure("health", F)
    run.measure("health", F, 1.0)
    reason = run.c.reason
    states = {"edge": {"g1": "maint"}, "dns": {"A": "blue"}}
    s = run.feed(RollbackVerified(states=states))
    c = s.cutover
    assert (c.status, c.finished_at, c.reason) == (ROLLED_BACK, run.now, reason)
    for r in c.routers:
        assert (r.desired, r.written, r.observed, r.drift) == (0, 0, 0.0, False)
        assert r.written_state == states[r.name]
    assert kinds(s) == ("rolled_back",)
    assert "100% blue" in s.events[0].message and str(reason) in s.events[0].message


def test_rollback_timeout_fails_then_verification_rolls_back() -> None:
    run = at_rolling_back(make_plan(rollback_timeout=30))
    run.tick(29)
    assert run.c.status is ROLLING_BACK
    s = run.tick(1)
    assert s.cutover.status is FAILED
    assert kinds(s) == ("failed",)
    assert s.events[0].data["routers"] == ["edge", "dns"]
    assert "still retrying" in s.events[0].message
    before = run.c
    assert_unchanged(before, run.tick(1000))  # failed is not a timeout loop
    s = run.feed(Restarted())
    assert s.actions == (Rollback(),) and s.cutover.status is FAILED
    s = run.feed(RollbackVerified(states=router_states(0)))
    assert s.cutover.status is ROLLED_BACK
    assert s.cutover.reason == "aborted by alice"


def test_shift_failed_rolls_back_naming_the_router() -> None:
    run = at_holding()
    run.clear_stage()
    s = run.feed(ShiftFailed(share=50, router="dns", error="TSIG BADKEY"))
    c = s.cutover
    assert c.status is ROLLING_BACK
    assert s.actions == (Rollback(),)
    assert c.reason == "router dns could not be set to 50%: TSIG BADKEY"
    assert c.router("dns").error == "TSIG BADKEY"
    assert c.router("edge").error == ""


@pytest.mark.parametrize(
    ("where", "inp", "cause"),
    [
        ("holding", Command(action="abort", actor="x"), "operator"),
        ("shifting", ShiftFailed(share=10, router="edge", error="e"), "router"),
        ("holding", Observed(router="edge", share=0.0, known=False), "drift"),
        ("holding", Measured(check="health", measurement=Measurement(verdict=F)), "check"),
        ("awaiting_timeout", Tick(dt=1000), "approval"),
    ],
)
def test_rollback_event_names_its_cause(where: str, inp: Input, cause: str) -> None:
    plan = make_plan(
        on_drift="rollback",
        checks=(CheckPolicy(name="health", failure_limit=1),),
        stages=(STAGES[0], replace(STAGES[1], approval_timeout=10), STAGES[2]),
    )
    run = at_awaiting(plan) if where == "awaiting_timeout" else _BUILDERS[where](plan)
    s = run.feed(inp)
    started = [e for e in s.events if e.kind == "rollback_started"]
    assert len(started) == 1
    assert started[0].data["cause"] == cause
    assert started[0].data["reason"] == s.cutover.reason


# --- pause, resume, abort ------------------------------------------------------------------------


def test_pause_and_resume_keep_the_hold() -> None:
    run = at_holding()
    run.pass_checks()
    run.tick(59)
    s = run.command("pause", actor="carol")
    assert (s.cutover.status, s.cutover.paused_from) == (PAUSED, RUNNING)
    assert s.events[0].message == "paused: by carol"
    run.tick(10)
    s = run.command("resume", actor="carol")
    assert (s.cutover.status, s.cutover.paused_from, s.cutover.phase) == (
        RUNNING,
        None,
        Phase.HOLDING,
    )
    assert s.actions == ()
    assert run.c.stage_index == 0
    run.tick(1)
    assert run.c.stage_index == 1


def test_resume_passes_a_stage_that_became_clean_while_paused() -> None:
    run = at_holding()
    run.tick(60)
    run.command("pause")
    run.pass_checks()  # checks keep running while paused
    assert run.c.status is PAUSED
    s = run.command("resume")
    assert (s.cutover.status, s.cutover.stage_index) == (RUNNING, 1)
    assert kinds(s) == ("resumed", "stage_started")
    assert s.actions == (Apply(share=50),)


def test_resume_from_awaiting_goes_back_to_awaiting() -> None:
    run = at_paused_awaiting()
    assert run.c.paused_from is AWAITING
    s = run.command("resume")
    assert (s.cutover.status, s.actions) == (AWAITING, ())


def test_resume_after_drift_reasserts_with_force() -> None:
    run = at_holding()
    run.feed(Observed(router="edge", share=30.0, known=False))
    assert run.c.status is PAUSED
    assert run.command("resume").refused is not None  # drift: the operator must say reapply
    s = run.command("resume", reapply=True)
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.SHIFTING)
    assert s.actions == (Apply(share=10, force=True),)
    s = run.applied()
    assert s.cutover.phase is Phase.HOLDING
    assert not any(r.drift for r in s.cutover.routers)


def test_resume_in_shifting_reapplies_with_force() -> None:
    run = at_paused_shifting()
    s = run.command("resume")
    assert s.actions == (Apply(share=10, force=True),)
    assert s.cutover.phase is Phase.SHIFTING


def test_shift_completes_while_paused() -> None:
    run = at_paused_shifting()
    run.applied()
    assert (run.c.status, run.c.phase) == (PAUSED, Phase.HOLDING)
    s = run.command("resume")
    assert s.actions == ()
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.HOLDING)


@pytest.mark.parametrize("where", ["preflight", "holding", "awaiting", "paused", "paused_awaiting"])
def test_abort_rolls_back_naming_the_actor(where: str) -> None:
    run = _BUILDERS[where]()
    s = run.command("abort", actor="dave")
    c = s.cutover
    assert (c.status, c.reason, c.paused_from) == (ROLLING_BACK, "aborted by dave", None)
    assert s.actions == (Rollback(),)
    assert s.events[0].message == "rolling back: aborted by dave"
    assert all(r.desired == 0 for r in c.routers)


# --- drift ---------------------------------------------------------------------------------------


def test_drift_pause_is_reported_once() -> None:
    run = at_holding()
    s = run.feed(Observed(router="dns", share=30.0, detail="3 of 10", known=False))
    c = s.cutover
    assert c.status is PAUSED
    assert kinds(s) == ("drift", "paused")
    assert s.events[0].data == {"router": "dns", "observed": 30.0, "policy": "pause"}
    assert "it now reads 30% green" in s.events[0].message
    assert "it last wrote 10%" in s.events[0].message
    r = c.router("dns")
    assert (r.drift, r.observed, r.detail) == (True, 30.0, "3 of 10")
    assert not c.router("edge").drift
    # the same drift again: no new event
    s = run.feed(Observed(router="dns", share=40.0, known=False))
    assert s.events == () and s.cutover.router("dns").observed == 40.0
    # reading what we wrote again clears the flag
    s = run.feed(Observed(router="dns", share=10.0))
    assert s.cutover.router("dns").drift is False
    assert s.cutover.status is PAUSED


def test_drift_rollback() -> None:
    run = at_holding(make_plan(on_drift="rollback"))
    s = run.feed(Observed(router="edge", share=0.0, known=False))
    assert s.cutover.status is ROLLING_BACK
    assert s.actions == (Rollback(),)
    assert kinds(s) == ("drift", "rollback_started")
    assert (s.cutover.reason or "").startswith(
        "drift: router edge holds something the daemon did not write"
    )


@pytest.mark.parametrize(
    ("observed", "reasserts"),
    [(30.0, True), (100.0, True), (10.5, True), (5.0, False), (0.0, False), (None, False)],
)
def test_drift_reassert_only_toward_the_old_color(observed: float | None, reasserts: bool) -> None:
    run = at_holding(make_plan(on_drift="reassert"))
    s = run.feed(Observed(router="edge", share=observed, known=False))
    if reasserts:
        assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.SHIFTING)
        assert s.actions == (Apply(share=10, force=True),)
        assert kinds(s) == ("drift",)
        s = run.applied()
        assert (s.cutover.phase, s.cutover.router("edge").drift) == (Phase.HOLDING, False)
    else:
        assert s.cutover.status is PAUSED
        assert s.actions == ()
        assert kinds(s) == ("drift", "paused")
    assert s.cutover.hold_elapsed == 0


@pytest.mark.parametrize("build", [at_holding, at_awaiting, at_paused])
def test_an_unreadable_router_alarms_once_and_says_when_it_reads_again(
    build: Callable[[], Run],
) -> None:
    run = build()
    status, phase = run.c.status, run.c.phase
    s = run.feed(Observed(router="edge", known=False, error="connection refused"))
    # Then an alarm event names the router and the error, and nothing else changes
    (alarm,) = s.events
    assert alarm.kind == "router_unreadable"
    assert alarm.data == {"router": "edge", "error": "connection refused"}
    assert "router edge cannot be read: connection refused" in alarm.message
    assert (s.cutover.status, s.cutover.phase, s.actions) == (status, phase, ())
    assert s.cutover.router("edge").error == "connection refused"
    assert not s.cutover.router("edge").drift
    # a run of failures is one alarm; the error shown is the latest
    s = run.feed(Observed(router="edge", error="timed out"))
    assert s.events == () and s.cutover.router("edge").error == "timed out"
    s = run.feed(Observed(router="dns", error="SERVFAIL"))  # another router: its own alarm
    assert kinds(s) == ("router_unreadable",) and s.events[0].data["router"] == "dns"
    # When it reads again what the daemon wrote, then one router_readable event, no drift
    s = run.feed(Observed(router="edge", share=float(run.c.share)))
    (back,) = s.events
    assert back.kind == "router_readable" and back.data == {"router": "edge"}
    assert "after: timed out" in back.message
    assert s.cutover.router("edge").error == "" and s.cutover.status is status
    s = run.feed(Observed(router="edge", share=float(run.c.share)))
    assert s.events == ()


def test_a_router_that_reads_again_with_something_else_is_drift_too() -> None:
    run = at_holding()
    run.feed(Observed(router="edge", error="connection refused"))
    s = run.feed(Observed(router="edge", share=30.0, known=False))
    assert kinds(s) == ("router_readable", "drift", "paused")
    assert s.cutover.status is PAUSED and s.cutover.router("edge").drift


# --- restart -------------------------------------------------------------------------------------


def test_restart_keeps_hold_but_needs_fresh_checks() -> None:
    run = at_holding()
    run.pass_checks()
    run.tick(40)
    s = run.feed(Restarted())
    assert s.actions == ()
    assert s.events[0].data == {"restarts_in_window": 1}
    assert "resuming running (holding)" in s.events[0].message
    assert s.cutover.hold_elapsed == 40
    assert all(ch.latest is None for ch in s.cutover.checks)
    assert all(len(ch.window) == 1 for ch in s.cutover.checks)  # counts survive restarts
    run.tick(30)
    assert run.c.stage_index == 0
    run.pass_checks()
    assert run.c.stage_index == 1


def test_restart_while_shifting_reapplies_without_force() -> None:
    run = at_shifting()
    s = run.feed(Restarted())
    assert s.actions == (Apply(share=10),)
    assert s.cutover.phase is Phase.SHIFTING


@pytest.mark.parametrize("where", ["rolling_back", "failed"])
def test_restart_while_rolling_back_reissues_rollback(where: str) -> None:
    run = _BUILDERS[where]()
    elapsed = run.c.rollback_elapsed
    s = run.feed(Restarted())
    assert s.actions == (Rollback(),)
    assert s.cutover.status is run.c.status
    assert s.cutover.rollback_elapsed == elapsed


@pytest.mark.parametrize(
    ("gaps", "paused_at"),
    [
        ([0, 100, 100], None),  # 3 restarts within 10 minutes: fine
        ([0, 100, 100, 100], 3),  # the 4th within 10 minutes pauses
        ([0, 200, 200, 200.5], None),  # the 1st left the window before the 4th
        ([0, 200, 200, 200], 3),  # exactly 600 s apart still counts
        ([0, 1, 1000, 1, 1, 1], 5),
    ],
)
def test_restart_limit_pauses(gaps: list[float], paused_at: int | None) -> None:
    run = at_holding()
    for i, gap in enumerate(gaps):
        s = run.feed(Restarted(), wall=gap)
        if paused_at is not None and i == paused_at:
            assert s.cutover.status is PAUSED
            assert kinds(s) == ("restarted", "alarm")
            assert "more than 3" in s.events[-1].message
        elif paused_at is None or i < paused_at:
            assert s.cutover.status is RUNNING
    assert run.c.status is (RUNNING if paused_at is None else PAUSED)


def test_restart_limit_pauses_awaiting_and_leaves_paused_alone() -> None:
    run = at_awaiting(make_plan(max_restarts=1))
    run.feed(Restarted())
    s = run.feed(Restarted())
    assert (s.cutover.status, s.cutover.paused_from) == (PAUSED, AWAITING)
    s = run.feed(Restarted())
    assert s.cutover.status is PAUSED
    assert kinds(s) == ("restarted",)
    assert len(s.cutover.restarts) == 3


def test_restart_limit_while_shifting_pauses_instead_of_reapplying() -> None:
    run = at_shifting(make_plan(max_restarts=0))
    s = run.feed(Restarted())
    assert s.cutover.status is PAUSED
    assert s.actions == ()
    s = run.command("resume")
    assert s.actions == (Apply(share=10, force=True),)


# --- undo ----------------------------------------------------------------------------------------


def test_undo_cutover_event_says_undo() -> None:
    s = machine.new_cutover(
        cutover_id="u-1",
        service="checkout",
        from_color="green",
        to_color="blue",
        plan=make_plan(stages=(Stage(weight=100, hold=0),)),
        router_kinds=KINDS,
        router_states=router_states(0),
        now=T0,
        kind="undo",
        actor="erin",
    )
    assert s.cutover.kind == "undo"
    assert s.events[0].message == "undo of checkout from green to blue started by erin"


# --- storage round trip --------------------------------------------------------------------------


def roundtrip(c: Cutover) -> Cutover:
    return Cutover.from_dict(json.loads(json.dumps(c.to_dict())))


def test_round_trip_after_a_long_sequence() -> None:
    stages = (STAGES[0], replace(STAGES[1], approval_timeout=900.0), STAGES[2])
    plan = make_plan(
        stages=stages,
        checks=(
            CheckPolicy(name="health", initial_delay=5, on_error="rollback"),
            CheckPolicy(name="errors", dry_run=True, window=3, interval=2.5),
        ),
        on_drift="reassert",
        rollback_timeout=12.5,
    )
    run = Run.new(plan, start=False)
    seen = [run.c]

    def feed(inp: Input, wall: float = 1.0) -> None:
        run.feed(inp, wall=wall)
        seen.append(run.c)

    feed(Measured(check="health", measurement=Measurement(verdict=P, value=1.0, detail="ok")))
    feed(PreflightPassed())
    feed(Restarted())
    feed(ShiftApplied(share=10, states={"edge": {"g1": "13", "b1": "243"}, "dns": {}}))
    feed(Measured(check="errors", measurement=Measurement(verdict=INC, detail="no data")))
    feed(Tick(dt=6.25))
    feed(Measured(check="health", measurement=Measurement(verdict=F, value=503.0, at=T0)))
    feed(Measured(check="health", measurement=Measurement(verdict=E, detail="timeout")))
    feed(Observed(router="edge", share=12.5, detail="w", known=False))
    feed(ShiftApplied(share=10, states=router_states(10)))
    feed(Command(action="pause", actor="x"))
    feed(Observed(router="dns", share=None, known=False))
    feed(Command(action="resume", actor="x"))
    feed(ShiftApplied(share=10, states=router_states(10)))
    feed(Tick(dt=60))
    for _ in range(25):
        feed(Measured(check="health", measurement=Measurement(verdict=P, value=0.1)))
        feed(Measured(check="errors", measurement=Measurement(verdict=P, value=0.1)))
    feed(ShiftApplied(share=50, states=router_states(50)))
    feed(Tick(dt=60))
    feed(Measured(check="health", measurement=Measurement(verdict=P)))
    feed(Tick(dt=10))
    feed(Restarted(), wall=700)
    feed(Command(action="pause"))
    feed(Command(action="resume"))
    feed(Observed(router="dns", error="SERVFAIL"))
    feed(Command(action="abort", actor="ops"))
    feed(Tick(dt=13))
    feed(Restarted())
    feed(RollbackVerified(states=router_states(0)))

    assert [c.status for c in seen[-4:]] == [ROLLING_BACK, FAILED, FAILED, ROLLED_BACK]
    assert len(seen[-1].check("health").history) == 20
    assert seen[-1].restarts and seen[-1].finished_at
    for c in seen:
        assert roundtrip(c) == c
        assert Cutover.from_dict(c.to_dict()) == c
    assert roundtrip(seen[-1]).to_dict() == seen[-1].to_dict()


# --- regressions: bugs found by this file and fixed in the machine ------------------------------


def test_drift_during_preflight_is_not_reasserted_toward_the_new_color() -> None:
    # was: reassert applied stage 1's share with force (5 % -> 10 %, toward the new color) and
    # jumped to shifting with every router's desired still 0
    run = at_preflight(make_plan(on_drift="reassert"))
    s = run.feed(Observed(router="edge", share=5.0, known=False))
    assert not any(isinstance(a, Apply) and a.share > 0 for a in s.actions)
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.PREFLIGHT)
    assert s.cutover.router("edge").observed == 5.0


def test_resume_in_preflight_does_not_skip_preflight() -> None:
    # was: a drift pause in preflight, then resume -> Apply(10, force) without PreflightPassed
    run = at_preflight()
    run.feed(Observed(router="edge", share=5.0, known=False))
    run.command("pause")
    s = run.command("resume")
    assert s.actions == ()
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.PREFLIGHT)
    s = run.feed(PreflightPassed())
    assert s.actions == (Apply(share=10),)
    assert kinds(s) == ("stage_started",)


def test_drift_reassert_in_awaiting_approval_completes() -> None:
    # was: phase stayed shifting in awaiting_approval because ShiftApplied was dropped there
    run = at_awaiting(make_plan(on_drift="reassert"))
    s = run.feed(Observed(router="edge", share=80.0, known=False))
    assert s.actions == (Apply(share=50, force=True),)
    assert (s.cutover.status, s.cutover.phase) == (AWAITING, Phase.SHIFTING)
    s = run.applied(50)
    assert (s.cutover.status, s.cutover.phase) == (AWAITING, Phase.HOLDING)
    assert s.cutover.router("edge").drift is False
    run.pass_checks()  # every check needs a pass at the re-applied share
    s = run.command("promote")
    assert s.actions == (Apply(share=100),)


def test_resume_after_drift_in_awaiting_approval_reapplies() -> None:
    # was: resume went back to awaiting_approval with the router still drifted and no Apply
    run = at_awaiting()
    run.feed(Observed(router="edge", share=30.0, known=False))
    assert (run.c.status, run.c.paused_from) == (PAUSED, AWAITING)
    s = run.command("resume", reapply=True)
    assert s.actions == (Apply(share=50, force=True),)
    assert (s.cutover.status, s.cutover.phase) == (AWAITING, Phase.SHIFTING)
    s = run.applied(50)
    assert (s.cutover.status, s.cutover.phase) == (AWAITING, Phase.HOLDING)
    assert not any(r.drift for r in s.cutover.routers)


def test_shift_failed_in_awaiting_approval_rolls_back() -> None:
    run = at_awaiting(make_plan(on_drift="reassert"))
    run.feed(Observed(router="dns", share=90.0, known=False))
    s = run.feed(ShiftFailed(share=50, router="dns", error="NOTAUTH"))
    assert s.cutover.status is ROLLING_BACK
    assert s.actions == (Rollback(),)
    assert "router dns" in (s.cutover.reason or "")


def test_failure_while_paused_early_in_a_stage_rolls_back() -> None:
    # was: initial_delay was measured with hold_elapsed, which does not grow while paused, so
    # failures during a pause early in a stage never counted (PRODUCT.md: a failure there
    # still rolls back)
    plan = make_plan(checks=(CheckPolicy(name="health", initial_delay=30),))
    run = at_holding(plan)
    run.tick(5)
    run.command("pause")
    run.measure("health", F, 1.0)  # 5 s into the stage: does not count
    assert run.c.check("health").window == ()
    run.tick(600)  # ten minutes of monitored time in the stage, paused
    assert (run.c.hold_elapsed, run.c.stage_elapsed) == (5, 605)
    run.measure("health", F, 1.0)
    s = run.measure("health", F, 1.0)
    assert s.cutover.status is ROLLING_BACK


def test_stage_time_counts_from_the_shift_and_restarts_when_the_stage_is_applied() -> None:
    run = at_shifting()
    run.tick(10)
    assert run.c.stage_elapsed == 10  # stage 1's initial_delay runs from its shift's start
    run.applied()
    assert run.c.stage_elapsed == 0
    run.tick(4)
    run.command("pause")
    run.tick(6)
    run.command("resume")
    assert (run.c.hold_elapsed, run.c.stage_elapsed) == (4, 10)
    run.pass_checks()
    run.tick(56)
    assert (run.c.stage_index, run.c.stage_elapsed) == (1, 0)  # a new stage starts at 0


# --- DNS TTL -----------------------------------------------------------------------------------


def test_a_lowered_ttl_is_waited_out_before_stage_1_paused_time_included() -> None:
    s = machine.new_cutover(
        cutover_id="c-1",
        service="checkout",
        from_color="blue",
        to_color="green",
        plan=make_plan(),
        router_kinds=KINDS,
        router_states=router_states(0),
        now=T0,
        router_ttls={"dns": 5.0},
        ttl_wait=300.0,
    )
    assert kinds(s) == ("started", "ttl_lowered")
    assert s.events[1].data == {"wait": 300.0, "until": T0 + 300.0}
    run = Run(c=s.cutover)
    assert run.feed(PreflightPassed()).actions == ()
    assert run.tick(200).actions == ()
    run.command("pause")
    run.tick(99)  # resolvers' caches expire while we pause
    assert run.command("resume").actions == ()
    assert (run.c.phase, run.c.stage_elapsed) == (Phase.PREFLIGHT, 299)
    s = run.tick(1)
    assert s.actions == (Apply(share=10),)
    assert kinds(s) == ("stage_started",)
    assert run.c.stage_elapsed == 0


def test_resume_in_preflight_without_a_ttl_wait_enters_stage_1_at_the_next_tick() -> None:
    run = at_preflight()
    run.command("pause")
    run.command("resume")
    assert run.tick(0.25).actions == (Apply(share=10),)


def test_events_say_when_dns_clients_can_have_moved_at_the_earliest() -> None:
    s = machine.new_cutover(
        cutover_id="c-1",
        service="checkout",
        from_color="blue",
        to_color="green",
        plan=make_plan(),
        router_kinds=KINDS,
        router_states=router_states(0),
        now=T0,
        router_ttls={"dns": 30.0},
    )
    run = Run(c=s.cutover)
    run.feed(PreflightPassed())
    applied = run.applied()
    (event,) = applied.events
    assert event.data["clients_from"] == run.now + 30
    assert "30s from now at the earliest" in event.message
    assert run.c.router("dns").written_at == run.now
    assert machine.clients_from(run.c, run.now) == run.now + 30
    run.command("abort")
    (done,) = run.feed(RollbackVerified(states=router_states(0))).events
    assert done.kind == "rolled_back"
    assert done.data["clients_from"] == run.now + 30


def test_no_dns_router_no_earliest_time() -> None:
    run = at_holding()
    assert machine.clients_from(run.c, run.now) is None
    assert "clients_from" not in run.events[-1].data


# --- regressions of bugs found and fixed -----------------------------------------------------


def test_a_pass_measured_while_shifting_does_not_pass_the_stage() -> None:
    stages = (STAGES[0], Stage(weight=50, hold=0), STAGES[2])
    run = at_holding(make_plan(stages=stages))
    run.tick(60)
    run.pass_checks()
    assert (run.c.stage_index, run.c.phase) == (1, Phase.SHIFTING)
    run.pass_checks()  # still at 10 %: says nothing about 50 %
    s = run.applied(50)
    assert (s.cutover.stage_index, s.cutover.phase) == (1, Phase.HOLDING)


def _awaiting_reasserting() -> Run:
    run = at_awaiting(make_plan(on_drift="reassert"))
    run.feed(Observed(router="edge", share=80.0, known=False))
    assert (run.c.status, run.c.phase) == (AWAITING, Phase.SHIFTING)
    return run


@pytest.mark.parametrize(
    ("build", "share"),
    [(at_paused_shifting, 10), (_awaiting_reasserting, 50)],
    ids=["paused-shifting", "awaiting-reasserting"],
)
def test_restart_completes_a_shift_in_flight(build: Callable[[], Run], share: int) -> None:
    run = build()
    s = run.feed(Restarted())
    assert any(isinstance(a, Apply) and a.share == share for a in s.actions)


# --- properties ----------------------------------------------------------------------------------

_ACTIVE = (RUNNING, AWAITING, PAUSED)
_WALL = st.sampled_from([0.5, 1.0, 30.0, 250.0, 700.0])
_ADVANCE = st.just(("advance",))  # promote, resume, or apply + hold + pass the current stage
_NOISE = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([1.0, 5.0, 20.0, 30.0, 61.0, 200.0])),
    st.tuples(st.just("measured"), st.sampled_from(CHECKS), st.sampled_from([P, F, INC, E])),
    st.tuples(st.just("applied"), st.sampled_from(["current", "stale"])),
    st.tuples(
        st.just("shift_failed"), st.sampled_from(["current", "stale"]), st.sampled_from(ROUTERS)
    ),
    st.tuples(st.just("command"), st.sampled_from(["pause", "resume", "promote", "abort"])),
    st.tuples(
        st.just("observed"),
        st.sampled_from(ROUTERS),
        st.sampled_from([None, 0.0, 5.0, 10.0, 30.0, 50.0, 100.0]),
        st.booleans(),
        st.sampled_from(["", "", "", "timeout"]),
    ),
    st.just(("restarted",)),
    st.just(("rollback_verified",)),
    st.just(("preflight",)),
)  # fmt: skip
_OP = st.one_of(
    _ADVANCE,
    _ADVANCE,
    _ADVANCE,
    st.tuples(st.just("command"), st.sampled_from(["resume", "promote"])),
    st.tuples(st.just("measured"), st.sampled_from(CHECKS), st.just(P)),
    _NOISE,
    _NOISE,
    _NOISE,
)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    holds = [draw(st.sampled_from([0.0, 30.0, 60.0])) for _ in range(3)]
    approval_timeout = draw(st.sampled_from([None, 100.0]))
    stages = (
        Stage(weight=10, hold=holds[0]),
        Stage(weight=50, hold=holds[1], approval=True, approval_timeout=approval_timeout),
        Stage(weight=100, hold=holds[2], approval=draw(st.booleans())),
    )
    checks = tuple(
        CheckPolicy(
            name=name,
            failure_limit=draw(st.integers(1, 3)),
            window=draw(st.integers(1, 5)),
            inconclusive_limit=draw(st.integers(1, 4)),
            error_limit=draw(st.integers(1, 4)),
            on_inconclusive=draw(st.sampled_from(["pause", "rollback"])),
            on_error=draw(st.sampled_from(["pause", "rollback"])),
            initial_delay=draw(st.sampled_from([0.0, 0.0, 20.0])),
            dry_run=draw(st.booleans()),
        )
        for name in CHECKS
    )
    return make_plan(
        stages=stages,
        checks=checks,
        on_drift=draw(st.sampled_from(["pause", "reassert", "rollback"])),
        rollback_timeout=draw(st.sampled_from([10.0, 30.0])),
        max_restarts=draw(st.integers(0, 3)),
    )


def to_inputs(op: tuple[Any, ...], c: Cutover) -> list[Input]:
    """One generated operation as machine inputs ("advance" drives the cutover on)."""
    if op[0] == "advance":
        if c.status is AWAITING:
            return [Command(action="promote", actor="prop")]
        if c.status is PAUSED:
            return [Command(action="resume", actor="prop")]
        return [
            ShiftApplied(share=c.share, states=router_states(c.share)),
            Tick(dt=max(c.stage.hold, 30.0)),
            *(Measured(check=n, measurement=Measurement(verdict=P, value=0.0)) for n in CHECKS),
        ]
    return [to_input(op, c)]


def to_input(op: tuple[Any, ...], c: Cutover) -> Input:
    kind = op[0]
    stale = next(w for w in (10, 50, 100, 7) if w != c.share)
    if kind == "tick":
        return Tick(dt=op[1])
    if kind == "measured":
        value = {P: 0.001, F: 0.5, INC: None, E: None}[op[2]]
        return Measured(check=op[1], measurement=Measurement(verdict=op[2], value=value))
    if kind == "applied":
        share = c.share if op[1] == "current" else stale
        return ShiftApplied(share=share, states=router_states(share))
    if kind == "shift_failed":
        share = c.share if op[1] == "current" else stale
        return ShiftFailed(share=share, router=op[2], error="permanent")
    if kind == "command":
        return Command(action=op[1], actor="prop")
    if kind == "observed":
        return Observed(router=op[1], share=op[2], known=op[3], error=op[4])
    if kind == "restarted":
        return Restarted()
    if kind == "rollback_verified":
        return RollbackVerified(states=router_states(0))
    return PreflightPassed()


@dataclass
class Oracle:
    """An independent model of each check's window of counting pass/fail/inconclusive, and of
    the stage's monitored time that initial_delay runs on."""

    plan: Plan
    windows: dict[str, list[Verdict]] = field(default_factory=dict)
    stage_time: float = 0.0

    def reaches_failure_limit(self, c: Cutover, m: Measured) -> bool:
        """Record ``m`` as the spec says; whether it makes the check reach its failure_limit."""
        policy = self.plan.checks[CHECKS.index(m.check)]
        counting = c.phase is not Phase.PREFLIGHT and (
            (c.phase is Phase.SHIFTING and c.stage_index > 0)
            or self.stage_time >= policy.initial_delay
        )
        verdict = m.measurement.verdict
        if not counting or verdict is E:
            return False
        window = self.windows.setdefault(m.check, [])
        window.append(verdict)
        del window[: -policy.window]
        return verdict is F and window.count(F) >= policy.failure_limit and not policy.dry_run

    def observe_time(self, prev: Cutover, inp: Input, c: Cutover) -> None:
        """Stage time: monitored time from a stage's shift, restarted when it is first applied,
        paused and awaiting included."""
        shifting_or_holding = prev.phase in (Phase.SHIFTING, Phase.HOLDING)
        if isinstance(inp, Tick) and prev.status in _ACTIVE and shifting_or_holding:
            self.stage_time += inp.dt
        first_applied = prev.hold_elapsed == 0 and prev.bake_elapsed is None
        if prev.phase is Phase.SHIFTING and c.phase is Phase.HOLDING and first_applied:
            self.stage_time = 0.0
        if c.stage_index != prev.stage_index:
            self.stage_time = 0.0


def check_step(prev: Cutover, inp: Input, s: Step, oracle: Oracle, high: list[int]) -> None:
    c = s.cutover
    # every journal event has a kind and a message
    for e in s.events:
        assert e.kind and isinstance(e.kind, str)
        assert e.message and isinstance(e.message, str)
    # refused commands change nothing; only commands are refused
    if s.refused is not None:
        assert isinstance(inp, Command)
        assert inp.action in s.refused.message
        assert c == prev and s.actions == () and s.events == ()
    # progress is monotone while not rolling back; no Apply once rolling back
    for a in s.actions:
        if isinstance(a, Apply):
            assert c.status in _ACTIVE, (prev.status, inp, c.status)
            assert a.share >= high[0], (high[0], a, inp)
            high[0] = a.share
    # a Rollback action comes only with a rollback state; entering rolling_back asks for one
    if any(isinstance(a, Rollback) for a in s.actions):
        assert c.status in (ROLLING_BACK, FAILED)
    if c.status is ROLLING_BACK and prev.status is not ROLLING_BACK:
        assert Rollback() in s.actions and c.reason
    # absorbing terminal states; failed leads only to rolled_back
    if prev.status in (COMPLETED, ROLLED_BACK):
        assert c == prev and s.actions == () and s.events == ()
    if prev.status is FAILED:
        assert c.status in (FAILED, ROLLED_BACK)
    if prev.status is ROLLING_BACK:
        assert c.status in (ROLLING_BACK, FAILED, ROLLED_BACK)
    if c.status is ROLLED_BACK and prev.status is not ROLLED_BACK:
        assert prev.status in (ROLLING_BACK, FAILED)
    # abort from an active status rolls back
    if isinstance(inp, Command) and inp.action == "abort" and prev.status in _ACTIVE:
        assert c.status is ROLLING_BACK and Rollback() in s.actions
        assert c.reason == "aborted by prop"
    # reaching failure_limit while active rolls back in the same step
    if isinstance(inp, Measured) and prev.status in _ACTIVE:
        if oracle.reaches_failure_limit(prev, inp):
            assert c.status is ROLLING_BACK and Rollback() in s.actions, inp
        assert c.check(inp.check).window == tuple(oracle.windows.get(inp.check, ()))
    oracle.observe_time(prev, inp, c)
    # a stage is left only forwards, and only by one
    if c.status in _ACTIVE and prev.status in _ACTIVE:
        assert c.stage_index in (prev.stage_index, prev.stage_index + 1)
    if c.status is COMPLETED and prev.status is not COMPLETED:
        assert c.stage_index == len(c.plan.stages) - 1 and c.finished_at is not None
    # the storage round trip
    assert roundtrip(c) == c
    # the runner sleeps until next_deadline: time short of it changes nothing but clocks, and
    # time that reaches it may (a deadline is never late)
    check_deadline(c)


def check_deadline(c: Cutover) -> None:
    remaining = machine.next_deadline(c)
    for dt in (0.0, 0.5 * (remaining or 0.0), max(0.0, (remaining or 1e6) - 1e-6)):
        early = machine.step(c, Tick(dt=dt), T0 + 10**6).cutover
        assert early.only_progress_since(c), (c.status, c.phase, remaining, dt)
        assert (early.status, early.phase, early.stage_index) == (c.status, c.phase, c.stage_index)
    if remaining is not None and c.status is not RUNNING:  # a timeout: time alone acts
        late = machine.step(c, Tick(dt=remaining), T0 + 10**6).cutover
        assert late.status is not c.status, (c.status, remaining)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plan=plans(), ops=st.lists(st.tuples(_WALL, _OP), min_size=5, max_size=60))
def test_random_sequences_keep_the_invariants(
    plan: Plan, ops: list[tuple[float, tuple[Any, ...]]]
) -> None:
    run = Run.new(plan)
    assert run.last is not None and run.last.actions == (Apply(share=10),)
    oracle = Oracle(plan=plan)
    high = [10]
    for wall, op in ops:
        for inp in to_inputs(op, run.c):
            prev = run.c
            s = run.feed(inp, wall=wall)
            check_step(prev, inp, s, oracle, high)


@settings(max_examples=100, deadline=None, database=None)
@given(plan=plans(), ops=st.lists(st.tuples(_WALL, _OP), max_size=40), data=st.data())
def test_abort_from_any_reached_active_status_rolls_back(
    plan: Plan, ops: list[tuple[float, tuple[Any, ...]]], data: st.DataObject
) -> None:
    run = Run.new(plan)
    reached = [run.c]
    for wall, op in ops:
        for inp in to_inputs(op, run.c):
            run.feed(inp, wall=wall)
            reached.append(run.c)
    c = data.draw(st.sampled_from(reached))
    s = machine.step(c, Command(action="abort", actor="prop"), T0 + 10**6)
    if c.status in _ACTIVE:
        assert s.cutover.status is ROLLING_BACK
        assert s.actions == (Rollback(),)
        assert s.cutover.reason == "aborted by prop"
    else:
        assert s.refused and s.cutover == c


def test_a_respawned_runner_names_its_crash_in_the_restarted_event() -> None:
    run = at_holding()
    s = run.feed(Restarted(crash="RuntimeError('boom')"))
    (event,) = s.events
    assert event.kind == "restarted"
    assert event.message.startswith("runner crashed (RuntimeError('boom')) and was respawned")
    assert event.data == {"restarts_in_window": 1, "crash": "RuntimeError('boom')"}


def test_evolve_is_replace_without_init() -> None:
    """``evolve`` (the machine's cheap ``dataclasses.replace``) gives an equal, still frozen
    object, leaves the original alone and refuses unknown fields."""
    c = at_holding().c
    changed = evolve(c, hold_elapsed=12.5, reason="x")
    assert changed == replace(c, hold_elapsed=12.5, reason="x")
    assert c.hold_elapsed != 12.5 and changed is not c
    assert hash(changed.plan) == hash(c.plan)
    with pytest.raises(AttributeError):
        changed.hold_elapsed = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field"):
        evolve(c, hold_elapsd=1.0)


# --- issue 14: guarded promote and resume, bake -------------------------------------------------

F = Verdict.FAIL
BAKE = 300.0


def at_baking(plan: Plan | None = None) -> Run:
    """Every stage passed (stage 2 promoted), now baking at 100 %."""
    run = at_awaiting(plan or make_plan(bake=BAKE))
    run.command("promote")
    run.clear_stage()
    assert (run.c.status, run.c.phase, run.c.bake_elapsed) == (RUNNING, Phase.BAKING, 0.0)
    return run


def test_promote_is_refused_while_a_check_fails_naming_it() -> None:
    run = at_holding_passing()
    run.measure("errors", F, 0.2)
    before = run.c
    s = run.command("promote")
    assert s.refused is not None and s.refused.code == "checks_not_passing"
    assert "errors (fail)" in s.refused.message and "health" not in s.refused.message
    assert_unchanged(before, s)


def test_promote_is_refused_before_a_check_has_a_counting_pass() -> None:
    s = at_holding().command("promote")
    assert s.refused is not None and s.refused.code == "checks_not_passing"
    assert "health (no counting measurement yet)" in s.refused.message
    assert "errors (no counting measurement yet)" in s.refused.message


def test_a_dry_run_check_does_not_block_promote() -> None:
    checks = (CheckPolicy(name="health"), CheckPolicy(name="errors", dry_run=True))
    run = at_holding(make_plan(checks=checks))
    run.measure("health", P, 0.0)
    run.measure("errors", F, 0.9)
    s = run.command("promote")
    assert s.refused is None
    assert kinds(s) == ("promoted", "stage_started")
    assert s.events[0].data["forced"] is False


def test_forced_promote_passes_and_says_forced_and_who() -> None:
    run = at_holding_passing()
    run.measure("errors", F, 0.2)
    s = run.command("promote", actor="bob", force=True)
    assert s.refused is None
    assert (s.cutover.stage_index, s.actions) == (1, (Apply(share=50),))
    promoted = s.events[0]
    assert promoted.kind == "promoted"
    assert promoted.data == {"actor": "bob", "forced": True, "not_passing": ["errors"]}
    assert "promoted by bob, forced past checks not passing: errors (fail)" in promoted.message


def test_promote_at_an_approval_gate_is_refused_when_a_check_failed_since() -> None:
    run = at_awaiting()
    run.measure("health", F, 0.0)  # one fail: under failure_limit, checks keep running
    assert run.c.status is AWAITING
    s = run.command("promote")
    assert s.refused is not None and s.refused.code == "checks_not_passing"
    s = run.command("promote", force=True)
    assert s.actions == (Apply(share=100),)


def test_resume_after_a_drift_pause_is_refused_naming_router_written_and_read() -> None:
    run = at_holding()
    run.feed(Observed(router="edge", share=0.0, known=False))
    assert run.c.status is PAUSED
    before = run.c
    s = run.command("resume")
    assert s.refused is not None and s.refused.code == "drift"
    assert "router edge: the daemon last wrote 10% green, it reads 0% green" in s.refused.message
    assert "dns" not in s.refused.message
    assert_unchanged(before, s)


def test_resume_reapply_writes_the_current_stage_again() -> None:
    run = at_holding()
    run.feed(Observed(router="edge", share=0.0, known=False))
    s = run.command("resume", actor="bob", reapply=True)
    assert s.refused is None
    assert s.actions == (Apply(share=10, force=True),)
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.SHIFTING)
    (resumed,) = s.events
    assert resumed.data == {"actor": "bob", "reapply": True}
    assert "writing the current stage again" in resumed.message
    s = run.applied()
    assert s.cutover.phase is Phase.HOLDING and not any(r.drift for r in s.cutover.routers)


def test_resume_after_drift_that_went_back_needs_no_reapply() -> None:
    run = at_holding()
    run.feed(Observed(router="edge", share=0.0, known=False))
    run.feed(Observed(router="edge", share=10.0, known=True))  # someone put it back
    s = run.command("resume")
    assert s.refused is None and s.actions == ()
    assert s.cutover.status is RUNNING


def test_resume_without_drift_writes_nothing() -> None:
    s = at_paused().command("resume")
    assert s.refused is None and s.actions == ()


def test_after_the_last_stage_the_cutover_bakes_then_completes() -> None:
    run = at_awaiting(make_plan(bake=BAKE))
    run.command("promote")
    run.applied()
    run.tick(60)
    s = run.pass_checks()
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.BAKING)
    (baking,) = [e for e in s.events if e.kind == "baking"]
    assert baking.data == {"bake": BAKE}
    assert machine.next_deadline(s.cutover) == BAKE
    s = run.tick(BAKE - 1)
    assert s.cutover.phase is Phase.BAKING
    assert machine.next_deadline(s.cutover) == 1
    s = run.tick(1)
    assert s.cutover.status is COMPLETED
    assert kinds(s) == ("completed",)


def test_a_bake_waits_for_every_check_to_pass_at_its_end() -> None:
    run = at_baking()
    run.measure("health", F, 0.0)
    s = run.tick(BAKE)
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.BAKING)
    assert machine.next_deadline(s.cutover) is None  # only a measurement can end it now
    s = run.measure("health", P, 0.0)
    assert s.cutover.status is COMPLETED


def test_a_breach_during_the_bake_rolls_back() -> None:
    run = at_baking()
    run.tick(BAKE / 2)
    run.measure("errors", F, 0.5)
    s = run.measure("errors", F, 0.6)
    assert s.cutover.status is ROLLING_BACK
    assert s.actions == (Rollback(),)
    assert all(r.desired == 0 for r in s.cutover.routers)


def test_promote_ends_a_bake_under_the_hold_rule() -> None:
    run = at_baking()
    run.measure("errors", F, 0.2)
    s = run.command("promote")
    assert s.refused is not None and s.refused.code == "checks_not_passing"
    s = run.command("promote", force=True)
    assert s.cutover.status is COMPLETED
    assert kinds(s) == ("promoted", "completed")
    assert s.events[0].message.startswith("the bake promoted by alice, forced")


def test_paused_bake_time_does_not_count() -> None:
    run = at_baking()
    run.tick(100)
    run.command("pause")
    run.tick(1000)
    assert run.c.bake_elapsed == 100
    s = run.command("resume")
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.BAKING)
    assert machine.next_deadline(s.cutover) == BAKE - 100


def test_a_stage_written_again_during_the_bake_returns_to_the_bake() -> None:
    run = at_baking()
    run.tick(100)
    run.feed(Observed(router="edge", share=0.0, known=False))
    run.command("resume", reapply=True)
    s = run.applied()
    assert (s.cutover.status, s.cutover.phase) == (RUNNING, Phase.BAKING)
    assert s.cutover.bake_elapsed == 100
    assert "baking" not in kinds(s)  # the same bake, not a second one


def test_without_bake_the_last_stage_completes_at_once() -> None:
    run = at_awaiting()
    run.command("promote")
    s = run.clear_stage()
    assert s.cutover.status is COMPLETED and s.cutover.bake_elapsed is None


def test_bake_round_trips_through_the_store_encoding() -> None:
    run = at_baking()
    run.tick(42)
    c = run.c
    assert Cutover.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    old = c.to_dict()
    del old["bake_elapsed"], old["plan"]["bake"]  # a record written before bake existed
    assert Cutover.from_dict(old).plan.bake == 0.0


# --- checks count while a stage change is under way (issue 14, item 1) -------------------------


def test_checks_count_at_once_while_shifting_past_stage_1_and_a_failure_rolls_back() -> None:
    # was: initial_delay counted from a stage time that did not advance while shifting, so a
    # shift hanging on a frozen router let the failing new color keep its traffic
    plan = make_plan(checks=(CheckPolicy(name="health", failure_limit=2, initial_delay=30),))
    run = at_shifting(plan)
    run.clear_stage()
    assert (run.c.stage_index, run.c.phase) == (1, Phase.SHIFTING)
    run.tick(1)  # the stage 2 shift hangs on a router; the other one carries 50 % already
    first = run.measure("health", F)
    assert first.cutover.check("health").last.counting is True  # type: ignore[union-attr]
    assert first.cutover.status is RUNNING
    s = run.measure("health", F)
    assert (s.cutover.status, s.actions) == (ROLLING_BACK, (Rollback(),))
    assert "health" in (s.cutover.reason or "")


def test_stage_1_checks_count_once_initial_delay_has_passed_since_its_shift_began() -> None:
    plan = make_plan(checks=(CheckPolicy(name="health", failure_limit=2, initial_delay=20),))
    run = at_shifting(plan)
    run.tick(19)
    early = run.measure("health", F)
    assert early.cutover.check("health").last.counting is False  # type: ignore[union-attr]
    run.tick(1)
    run.measure("health", F)
    s = run.measure("health", F)
    assert (run.c.phase, s.cutover.status) == (Phase.SHIFTING, ROLLING_BACK)


def test_a_stage_applied_late_serves_its_own_initial_delay_from_then() -> None:
    plan = make_plan(checks=(CheckPolicy(name="health", failure_limit=2, initial_delay=20),))
    run = at_shifting(plan)
    run.tick(25)  # stage 1's shift took 25 s
    run.applied()
    s = run.measure("health", F)
    assert s.cutover.check("health").last.counting is False  # type: ignore[union-attr]
    run.tick(20)
    s = run.measure("health", P, 0.0)
    assert s.cutover.check("health").last.counting is True  # type: ignore[union-attr]


def test_a_retried_shift_attempt_shows_the_router_error_until_applied() -> None:
    run = at_shifting()
    s = run.feed(ShiftAttemptFailed(share=10, router="dns", error="no answer within 2s"))
    assert s.cutover.router("dns").error == "no answer within 2s"
    assert (s.cutover.status, s.cutover.phase, s.actions) == (RUNNING, Phase.SHIFTING, ())
    assert run.applied().cutover.router("dns").error == ""
