"""An undo is a rollback of a completed cutover, and a refused start is kept (core, pure)."""

from __future__ import annotations

import pytest

from cutover.core import machine
from cutover.core.machine import Rollback, RollbackVerified, Tick
from cutover.core.model import Phase, Stage, Status
from cutover.core.refusal import refused
from cutover.core.undo import live_after, new_undo, undo_plan, undo_refusal
from tests.unit.test_machine import (
    ROUTERS,
    T0,
    at_completed,
    at_holding,
    at_preflight,
    at_rolled_back,
    make_plan,
    router_states,
)

WINDOW = 3600.0


def undo_of_completed(actor: str = "erin") -> machine.Step:
    done = at_completed().c
    return new_undo(
        done,
        undo_id="u-1",
        states=router_states(100),
        observed=dict.fromkeys(ROUTERS, None),  # the undone color is down: no share
        details=dict.fromkeys(ROUTERS, "green 0/2 up"),
        spec={"frozen": True},
        now=(done.finished_at or T0) + 60,
        actor=actor,
    )


@pytest.mark.parametrize(
    ("running", "has_completed", "age", "code"),
    [
        (False, True, 0.0, None),
        (False, True, WINDOW, None),  # exactly at the end of the window
        (False, True, WINDOW + 0.5, "undo_window_passed"),
        (True, True, 10.0, "cutover_running"),
        (True, False, 10.0, "cutover_running"),
        (False, False, 10.0, "nothing_to_undo"),
    ],
)
def test_undo_refusal(running: bool, has_completed: bool, age: float, code: str | None) -> None:
    done = at_completed().c if has_completed else None
    now = (done.finished_at or 0.0) + age if done else T0
    why = undo_refusal(
        last_switch=done,
        running=at_holding().c if running else None,
        now=now,
        undo_window=WINDOW,
    )
    assert (why.code if why else None) == code
    if code == "undo_window_passed":
        assert why is not None and f"beyond undo_window {WINDOW:g}s" in why.message


def test_an_unfinished_record_has_nothing_to_undo() -> None:
    why = undo_refusal(last_switch=at_holding().c, running=None, now=T0, undo_window=WINDOW)
    assert why is not None
    assert (why.code, why.message) == ("nothing_to_undo", "no completed cutover to undo")


def test_a_second_undo_is_refused_naming_the_first() -> None:
    run = undo_of_completed()
    undone = machine.step(run.cutover, RollbackVerified(states=router_states(0)), T0 + 100)
    assert undone.cutover.status is Status.ROLLED_BACK
    why = undo_refusal(last_switch=undone.cutover, running=None, now=T0 + 101, undo_window=WINDOW)
    assert why is not None and why.code == "nothing_to_undo"
    assert "already undone by u-1" in why.message


def test_undo_plan_holds_the_last_share_without_checks() -> None:
    plan = make_plan(on_drift="reassert", rollback_timeout=12.0)
    undo = undo_plan(plan)
    assert undo.stages == (Stage(weight=100, hold=0.0),)
    assert undo.checks == ()
    assert (undo.routers, undo.rollback_timeout, undo.on_drift) == (plan.routers, 12.0, "reassert")


def test_an_undo_starts_as_a_rollback_of_the_completed_cutover() -> None:
    done = at_completed().c
    s = undo_of_completed()
    c = s.cutover
    # the completed cutover's colors: from is where traffic goes back to
    assert (c.kind, c.from_color, c.to_color) == ("undo", done.from_color, done.to_color)
    assert (c.status, c.phase, c.share) == (Status.ROLLING_BACK, Phase.HOLDING, 100)
    assert c.plan.checks == () and c.checks == ()
    assert c.reason == f"undo of {done.id} by erin"
    assert c.spec == {"frozen": True}
    assert [(r.name, r.kind, r.desired, r.verified) for r in c.routers] == [
        (r.name, r.kind, 0, False) for r in done.routers
    ]
    assert {r.name: r.written_state for r in c.routers} == router_states(100)
    assert [r.detail for r in c.routers] == ["green 0/2 up"] * len(ROUTERS)
    assert [e.kind for e in s.events] == ["started"]
    assert s.events[0].data == {"actor": "erin", "undoes": done.id, "stages": [100]}
    assert "all traffic back to blue at once" in s.events[0].message
    # what the machine does with it from here: the rollback of any cutover
    assert machine.next_deadline(c) == c.plan.rollback_timeout


def test_an_undo_ends_rolled_back_with_the_previous_color_live() -> None:
    c = undo_of_completed().cutover
    assert live_after(c) is None  # not verified yet: the undone color is still live
    s = machine.step(c, RollbackVerified(states=router_states(0)), c.created_at + 1)
    assert s.cutover.status is Status.ROLLED_BACK
    assert [e.kind for e in s.events] == ["rolled_back"]
    assert "every router reads 100% blue" in s.events[0].message
    assert live_after(s.cutover) == "blue"


def test_an_undo_not_verified_in_rollback_timeout_is_failed_and_retried() -> None:
    c = undo_of_completed().cutover
    s = machine.step(c, Tick(dt=c.plan.rollback_timeout), c.created_at + 30)
    assert s.cutover.status is Status.FAILED
    assert [e.kind for e in s.events] == ["failed"]
    assert live_after(s.cutover) is None
    restarted = machine.step(s.cutover, machine.Restarted(), c.created_at + 40)
    assert restarted.actions == (Rollback(),)


def test_live_after() -> None:
    assert live_after(at_completed().c) == "green"
    assert live_after(at_rolled_back().c) is None  # an aborted cutover changed nothing
    assert live_after(at_holding().c) is None


def test_a_refused_start_is_terminal_with_its_reason() -> None:
    draft = at_preflight().c
    s = refused(draft, reason="preflight refused the start: check h: fail", actor="bob", now=T0)
    c = s.cutover
    assert c.status is Status.REFUSED and c.status.terminal and not c.status.active
    assert (c.reason, c.finished_at, c.id) == (
        "preflight refused the start: check h: fail",
        T0,
        draft.id,
    )
    assert all(r.observed is None and r.written is None for r in c.routers)
    assert live_after(c) is None
    assert [e.kind for e in s.events] == ["refused"]
    assert s.events[0].data == {"actor": "bob", "reason": c.reason}
    assert s.events[0].message == (
        "cutover of checkout from blue to green asked by bob was refused; no traffic moved: "
        "preflight refused the start: check h: fail"
    )
