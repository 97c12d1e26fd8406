"""Undo: a rollback of a completed cutover (PRODUCT.md, "`undo` is a rollback of a completed
cutover").

An undo is recorded as a cutover of kind ``undo`` that carries the completed cutover's colors
(``from`` is the color to return to, ``to`` the color being undone), its frozen plan and its
routers, and that starts where a rollback starts: ``rolling_back``, every router unverified at
a desired 0 % of ``to``. The machine's rollback then does exactly what an undo needs: every
router at once to 100 % ``from``, the undone color's HAProxy servers in ``maint``, retried until
each one reads back, ``failed`` after ``rollback_timeout`` and retried on. So an undo ends
``rolled_back`` -- the completed cutover's traffic is rolled back -- and from then on ``from``
is live again (:func:`live_after`); its reason says whose cutover it undid and who asked.

Shaped so rather than as a new one-stage cutover toward the previous color: that one needed the
color being undone UP and every check passing (the opposite of why one undoes), could not evacuate
sessions, and on a failed write "rolled back" to the very color being undone.
"""

from __future__ import annotations

from cutover.core.machine import Refusal, Step
from cutover.core.model import Color, Cutover, Event, Phase, Plan, Stage, Status, evolve

__all__ = ["live_after", "new_undo", "undo_plan", "undo_refusal"]


def live_after(c: Cutover) -> Color | None:
    """The color ``c`` made live, or ``None`` when it changed nothing: a completed cutover makes
    ``to`` live, a verified undo gives the traffic back to ``from``."""
    if c.status is Status.COMPLETED:
        return c.to_color
    if c.status is Status.ROLLED_BACK and c.kind == "undo":
        return c.from_color
    return None


def undo_plan(completed: Plan) -> Plan:
    """The completed cutover's plan, at its last share (100 %), without checks: an undo does
    not wait for measurements, and its routers, timeouts and drift rule stay the frozen ones."""
    return evolve(completed, stages=(Stage(weight=100, hold=0.0),), checks=())


def undo_refusal(
    *, last_switch: Cutover | None, running: Cutover | None, now: float, undo_window: float
) -> Refusal | None:
    """Why ``undo`` is refused now, or ``None`` when it may go ahead.

    ``last_switch`` is the service's newest cutover that changed its live color (a completed
    cutover or a verified undo); ``running`` its cutover that still owns it, if any."""
    if running is not None:
        return Refusal(
            code="cutover_running",
            message=f"{running.kind} {running.id} is {running.status.value} on this service",
        )
    if last_switch is not None and last_switch.status is Status.ROLLED_BACK:  # a verified undo
        return Refusal(
            code="nothing_to_undo",
            message=f"the last completed cutover was already undone by {last_switch.id}",
        )
    if (
        last_switch is None
        or last_switch.status is not Status.COMPLETED
        or last_switch.finished_at is None
    ):
        return Refusal(code="nothing_to_undo", message="no completed cutover to undo")
    age = now - last_switch.finished_at
    if age > undo_window:
        return Refusal(
            code="undo_window_passed",
            message=f"the last cutover {last_switch.id} completed {age:.0f}s ago, beyond "
            f"undo_window {undo_window:g}s",
        )
    return None


def new_undo(
    completed: Cutover,
    *,
    undo_id: str,
    states: dict[str, dict[str, str]],
    observed: dict[str, float | None],
    details: dict[str, str],
    spec: dict[str, object],
    now: float,
    actor: str,
) -> Step:
    """The undo of ``completed``, already rolling back (the engine acts on it once stored).

    ``states``, ``observed`` and ``details`` are what each router read just before (an undo
    needs only that every router can be read; a router that could not be read has none, and
    the undo is then refused); ``spec`` is the service config the routers are
    built from, after a restart too: the completed cutover's, without checks."""
    c = Cutover(
        id=undo_id,
        service=completed.service,
        from_color=completed.from_color,
        to_color=completed.to_color,
        plan=undo_plan(completed.plan),
        status=Status.ROLLING_BACK,
        phase=Phase.HOLDING,
        routers=tuple(
            evolve(
                r,
                desired=0,
                written_state=states.get(r.name),
                observed=observed.get(r.name),
                detail=details.get(r.name, ""),
                drift=False,
                error="",
                verified=False,
            )
            for r in completed.routers
        ),
        reason=f"undo of {completed.id} by {actor}",
        created_at=now,
        updated_at=now,
        kind="undo",
        spec=spec,
    )
    ago = now - (completed.finished_at or now)
    started = Event(
        kind="started",
        message=f"undo of {c.service} started by {actor}: all traffic back to {c.from_color} at "
        f"once (rolling back {completed.id}, {c.from_color} -> {c.to_color}, completed "
        f"{ago:.0f}s ago)",
        at=now,
        data={"actor": actor, "undoes": completed.id, "stages": [100]},
    )
    return Step(cutover=c, events=(started,))
