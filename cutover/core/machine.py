"""The stage machine: the only place a cutover's status and phase change.

``step(cutover, input, now) -> Step`` is pure: it returns the next cutover, the actions the
engine must carry out (after persisting the new cutover), the journal events to append in the
same write, and ``refused`` when an operator command does not apply in this status.

The transition table ``TABLE`` maps (status, input type) to a handler; a pair that is not in
the table leaves the cutover as it is (a stale result, a tick in a terminal state), except that
operator commands are refused with a reason. ``now`` is wall-clock seconds, used for
timestamps and the restart window only; the hold counts monitored time from ``Tick.dt``, which
the engine measures on a monotonic clock, so a wall-clock jump never shortens a hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cutover.core import analysis
from cutover.core.model import (
    CheckState,
    Cutover,
    Event,
    Measurement,
    Phase,
    Plan,
    RouterStatus,
    Status,
    evolve,
)

__all__ = [
    "TABLE",
    "Action",
    "Apply",
    "Command",
    "Input",
    "Measured",
    "Observed",
    "PreflightPassed",
    "Refusal",
    "Restarted",
    "Rollback",
    "RollbackVerified",
    "RouterRolledBack",
    "ShiftApplied",
    "ShiftAttemptFailed",
    "ShiftFailed",
    "Step",
    "Tick",
    "allowed_commands",
    "clients_from",
    "new_cutover",
    "next_deadline",
    "step",
]


# --- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PreflightPassed:
    """Everything before stage 1 is done (preflight, DNS TTL republish wait)."""


@dataclass(frozen=True, kw_only=True)
class ShiftApplied:
    """Every router was verified at ``share``; ``states`` is what each one now holds."""

    share: int
    states: dict[str, dict[str, str]]
    # what each router's read-back says: effective share (a DNS router's address share may
    # differ from the asked one) and its note; missing routers read as the asked share
    observed: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ShiftFailed:
    """A forward shift could not be applied (permanent error, or transient past apply_timeout)."""

    share: int
    router: str
    error: str


@dataclass(frozen=True, kw_only=True)
class ShiftAttemptFailed:
    """One attempt of a forward shift failed on ``router`` and will be retried (PRODUCT.md:
    router errors are visible at once, before ``apply_timeout`` runs out)."""

    share: int
    router: str
    error: str


@dataclass(frozen=True, kw_only=True)
class RollbackVerified:
    states: dict[str, dict[str, str]]
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RouterRolledBack:
    """One router reads all-old during a rollback (the others may still be retried)."""

    router: str
    state: dict[str, str]
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class Tick:
    """``dt`` seconds of monitored time passed (monotonic clock, this process)."""

    dt: float


@dataclass(frozen=True, kw_only=True)
class Measured:
    check: str
    measurement: Measurement


@dataclass(frozen=True, kw_only=True)
class Observed:
    """A read-back of one router outside a shift.

    ``known``: it holds what we last wrote or what ``desired`` writes; anything else is drift.
    ``at_desired``: it holds exactly what ``desired`` writes."""

    router: str
    share: float | None = None
    detail: str = ""
    known: bool = True
    at_desired: bool = True
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class Command:
    """An operator's action. ``force``: promote although checks are not passing;
    ``reapply``: resume a cutover paused on drift by writing its current stage again."""

    action: Literal["pause", "resume", "promote", "abort"]
    actor: str = "operator"
    force: bool = False
    reapply: bool = False


@dataclass(frozen=True, kw_only=True)
class Restarted:
    """The daemon started again and picked this cutover up; ``crash`` names the error when
    it is the cutover's runner that crashed and was respawned inside a running daemon."""

    crash: str = ""


Input = (
    PreflightPassed
    | ShiftApplied
    | ShiftAttemptFailed
    | ShiftFailed
    | RollbackVerified
    | RouterRolledBack
    | Tick
    | Measured
    | Observed
    | Command
    | Restarted
)

# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Apply:
    """Set every router to ``share``. Unless ``force``, a router is written only when it holds
    what we last wrote (toward the new color only from our own state); ``force`` is an
    operator's explicit resume, or a reassert toward the old color."""

    share: int
    force: bool = False


@dataclass(frozen=True, kw_only=True)
class Rollback:
    """Every router to 0 % new at once, evacuating sessions; retried until verified."""


Action = Apply | Rollback


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """Why an operator command does not apply now: an API error ``code`` (HTTP 409) and a
    sentence naming what stands in the way (the checks, the routers)."""

    code: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Step:
    cutover: Cutover
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    refused: Refusal | None = None

    def then(self, other: Step) -> Step:
        return Step(
            cutover=other.cutover,
            actions=self.actions + other.actions,
            events=self.events + other.events,
            refused=other.refused or self.refused,
        )


def _event(now: float, kind: str, message: str, **data: Any) -> Event:
    return Event(kind=kind, message=message, at=now, data=data)


# --- construction ----------------------------------------------------------------------------


def new_cutover(
    *,
    cutover_id: str,
    service: str,
    from_color: Literal["blue", "green"],
    to_color: Literal["blue", "green"],
    plan: Plan,
    router_kinds: dict[str, str],
    router_states: dict[str, dict[str, str]],
    now: float,
    kind: Literal["cutover", "undo"] = "cutover",
    actor: str = "operator",
    router_ttls: dict[str, float] | None = None,
    ttl_wait: float = 0.0,
) -> Step:
    """A cutover that passed preflight; ``router_states`` is what each router held then.

    ``router_ttls`` are the DNS routers' configured TTLs; ``ttl_wait`` the longest published
    TTL that preflight lowered, to be waited out before stage 1."""
    ttls = router_ttls or {}
    c = Cutover(
        id=cutover_id,
        service=service,
        from_color=from_color,
        to_color=to_color,
        plan=plan,
        checks=tuple(CheckState(name=p.name) for p in plan.checks),
        routers=tuple(
            RouterStatus(
                name=name,
                kind=router_kinds[name],
                desired=0,
                written=0,
                observed=0.0,
                written_state=router_states[name],
                ttl=ttls.get(name, 0.0),
            )
            for name in plan.routers
        ),
        created_at=now,
        updated_at=now,
        kind=kind,
        ttl_wait=ttl_wait,
    )
    verb = "undo" if kind == "undo" else "cutover"
    events = [
        _event(
            now,
            "started",
            f"{verb} of {service} from {from_color} to {to_color} started by {actor}",
            actor=actor,
            stages=[s.weight for s in plan.stages],
        )
    ]
    if ttl_wait > 0:
        events.append(
            _event(
                now,
                "ttl_lowered",
                f"DNS records republished with their configured TTL; waiting out the old TTL "
                f"{ttl_wait:g}s before stage 1, so every resolver has the short TTL",
                wait=ttl_wait,
                until=now + ttl_wait,
            )
        )
    return Step(cutover=c, events=tuple(events))


def clients_from(c: Cutover, now: float) -> float | None:
    """The earliest wall time every client can follow a change made ``now``: ``now`` plus
    the longest DNS TTL (``None`` when the service has no DNS router)."""
    longest = max((r.ttl for r in c.routers), default=0.0)
    return now + longest if longest > 0 else None


def _dns_note(c: Cutover, now: float) -> tuple[str, dict[str, Any]]:
    """A message suffix and event data saying when DNS clients can have moved, at the earliest."""
    at = clients_from(c, now)
    if at is None:
        return "", {}
    longest = max(r.ttl for r in c.routers)
    return (
        f"; DNS clients can have moved {longest:g}s from now at the earliest (TTL)",
        {"clients_from": at},
    )


# --- helpers ---------------------------------------------------------------------------------


def _start_rollback(c: Cutover, now: float, reason: str, cause: str) -> Step:
    """``cause`` is a small fixed vocabulary (check, operator, router, drift, approval) for
    metrics labels; ``reason`` is the sentence for people."""
    c = evolve(
        c,
        status=Status.ROLLING_BACK,
        reason=reason,
        rollback_elapsed=0.0,
        paused_from=None,
        routers=tuple(evolve(r, desired=0, verified=False) for r in c.routers),
    )
    return Step(
        cutover=c,
        actions=(Rollback(),),
        events=(
            _event(now, "rollback_started", f"rolling back: {reason}", reason=reason, cause=cause),
        ),
    )


def _pause(c: Cutover, now: float, reason: str, kind: str = "paused") -> Step:
    if c.status is Status.PAUSED:
        return Step(cutover=c, events=(_event(now, kind, reason),))
    c = evolve(c, status=Status.PAUSED, paused_from=c.status)
    return Step(cutover=c, events=(_event(now, kind, f"paused: {reason}", reason=reason),))


def _enter_stage(c: Cutover, index: int, now: float) -> Step:
    stage = c.plan.stages[index]
    c = evolve(
        c,
        status=Status.RUNNING,
        phase=Phase.SHIFTING,
        stage_index=index,
        hold_elapsed=0.0,
        stage_elapsed=0.0,
        approval_elapsed=0.0,
        checks=tuple(evolve(s, latest=None) for s in c.checks),
        routers=tuple(evolve(r, desired=stage.weight) for r in c.routers),
    )
    return Step(
        cutover=c,
        actions=(Apply(share=stage.weight),),
        events=(
            _event(
                now,
                "stage_started",
                f"stage {index + 1}/{len(c.plan.stages)}: shifting to {stage.weight}% {c.to_color}",
                stage=index,
                share=stage.weight,
            ),
        ),
    )


def _advance(c: Cutover, now: float) -> Step:
    """Past the current stage: the next one; after the last, the bake (if the plan has one),
    and past the bake, completion."""
    if c.stage_index + 1 < len(c.plan.stages):
        return _enter_stage(c, c.stage_index + 1, now)
    if c.plan.bake > 0 and c.bake_elapsed is None:
        return _start_bake(c, now)
    c = evolve(c, status=Status.COMPLETED, finished_at=now, paused_from=None)
    return Step(
        cutover=c,
        events=(_event(now, "completed", f"completed: {c.to_color} is live for {c.service}"),),
    )


def _start_bake(c: Cutover, now: float) -> Step:
    """The last stage passed: stay at 100 % with every check running (and every rollback rule
    acting) for ``plan.bake`` seconds of monitored time."""
    c = evolve(c, status=Status.RUNNING, phase=Phase.BAKING, bake_elapsed=0.0)
    return Step(
        cutover=c,
        events=(
            _event(
                now,
                "baking",
                f"last stage passed; baking at 100% {c.to_color} for {c.plan.bake:g}s with "
                f"every check running; a breach rolls back to {c.from_color}",
                bake=c.plan.bake,
            ),
        ),
    )


def _try_pass_stage(c: Cutover, now: float) -> Step:
    """The hold (or the bake) is over and every acting check's latest counting measurement
    is pass: on to the approval gate, the next stage, the bake or completion."""
    if c.status is not Status.RUNNING:
        return Step(cutover=c)
    if c.phase is Phase.HOLDING and c.bake_elapsed is not None:
        # the last stage was written again during its bake (drift reassert, resume
        # --reapply): the bake goes on where it was
        c = evolve(c, phase=Phase.BAKING)
    if c.phase is Phase.BAKING:
        if (c.bake_elapsed or 0.0) < c.plan.bake or not analysis.gate_open(c.checks, c.plan.checks):
            return Step(cutover=c)
        return _advance(c, now)
    if c.phase is not Phase.HOLDING:
        return Step(cutover=c)
    if c.hold_elapsed < c.stage.hold or not analysis.gate_open(c.checks, c.plan.checks):
        return Step(cutover=c)
    if c.stage.approval:
        c = evolve(c, status=Status.AWAITING_APPROVAL, approval_elapsed=0.0)
        return Step(
            cutover=c,
            events=(
                _event(
                    now,
                    "approval_needed",
                    f"stage {c.stage_index + 1} at {c.share}% held cleanly; waiting for promote",
                    stage=c.stage_index,
                ),
            ),
        )
    return _advance(c, now)


# --- handlers --------------------------------------------------------------------------------

Handler = Callable[[Cutover, Any, float], Step]


def _on_preflight_passed(c: Cutover, _: PreflightPassed, now: float) -> Step:
    if c.phase is not Phase.PREFLIGHT or c.stage_elapsed < c.ttl_wait:
        return Step(cutover=c)  # still waiting out a DNS TTL (Tick moves on)
    return _enter_stage(c, 0, now)


def _on_shift_applied(c: Cutover, e: ShiftApplied, now: float) -> Step:
    if c.phase is not Phase.SHIFTING or e.share != c.share:
        return Step(cutover=c)  # a stale result of an earlier shift
    routers = tuple(
        evolve(
            r,
            written=e.share,
            written_state=e.states.get(r.name, r.written_state),
            observed=e.observed.get(r.name, float(e.share)),
            detail=e.details.get(r.name, r.detail),
            drift=False,
            error="",
            written_at=now,
        )
        for r in c.routers
    )
    # every check needs a pass measured at the new share (PRODUCT.md, Stages)
    checks = tuple(evolve(s, latest=None) for s in c.checks)
    # a stage's first shift: its initial_delay counts from now, when every router carries the
    # share; a stage written again (reassert, reapply) keeps its stage time
    first = c.hold_elapsed == 0 and c.bake_elapsed is None
    stage_elapsed = 0.0 if first else c.stage_elapsed
    c = evolve(c, phase=Phase.HOLDING, routers=routers, checks=checks, stage_elapsed=stage_elapsed)
    note, data = _dns_note(c, now)
    step = Step(
        cutover=c,
        events=(
            _event(
                now,
                "stage_applied",
                f"every router verified at {e.share}% {c.to_color}{note}",
                stage=c.stage_index,
                share=e.share,
                **data,
            ),
        ),
    )
    return step.then(_try_pass_stage(c, now))


def _on_shift_failed(c: Cutover, e: ShiftFailed, now: float) -> Step:
    if c.phase is not Phase.SHIFTING or e.share != c.share:
        return Step(cutover=c)
    c = c.with_router(evolve(c.router(e.router), error=e.error))
    reason = f"router {e.router} could not be set to {e.share}%: {e.error}"
    return _start_rollback(c, now, reason, "router")


def _on_shift_attempt_failed(c: Cutover, e: ShiftAttemptFailed, now: float) -> Step:
    if c.phase is not Phase.SHIFTING or e.share != c.share:
        return Step(cutover=c)  # a stale report of an earlier shift
    return Step(cutover=c.with_router(evolve(c.router(e.router), error=e.error)))


def _on_router_rolled_back(c: Cutover, e: RouterRolledBack, now: float) -> Step:
    r = evolve(
        c.router(e.router),
        written=0,
        written_state=e.state,
        observed=0.0,
        detail=e.detail,
        verified=True,
        drift=False,
        error="",
        written_at=now,
    )
    return Step(cutover=c.with_router(r))


def _on_observed_rolling(c: Cutover, e: Observed, now: float) -> Step:
    """During a rollback a read-back only informs status (errors shown per router)."""
    r = c.router(e.router)
    if e.error:
        return Step(cutover=c.with_router(evolve(r, error=e.error)))
    return Step(cutover=c.with_router(evolve(r, observed=e.share, detail=e.detail)))


def _on_rollback_verified(c: Cutover, e: RollbackVerified, now: float) -> Step:
    routers = tuple(
        evolve(
            r,
            desired=0,
            written=0,
            written_state=e.states.get(r.name, r.written_state),
            observed=0.0,
            detail=e.details.get(r.name, r.detail),
            verified=True,
            drift=False,
            error="",
            written_at=r.written_at if r.verified and r.written == 0 else now,
        )
        for r in c.routers
    )
    c = evolve(c, status=Status.ROLLED_BACK, finished_at=now, routers=routers)
    note, data = _dns_note(c, now)
    return Step(
        cutover=c,
        events=(
            _event(
                now,
                "rolled_back",
                f"rolled back: every router reads 100% {c.from_color} ({c.reason}){note}",
                reason=c.reason,
                **data,
            ),
        ),
    )


def _stage_time(c: Cutover, dt: float) -> Cutover:
    # resolvers' caches expire while we pause too: a TTL wait counts paused time. While
    # shifting too: the routers already written carry the new share (a stage's first shift
    # restarts it when applied, see _on_shift_applied).
    return evolve(c, stage_elapsed=c.stage_elapsed + dt)


def _on_tick_running(c: Cutover, e: Tick, now: float) -> Step:
    if c.phase is Phase.PREFLIGHT:  # waiting out a DNS TTL, or resumed before stage 1
        return _on_preflight_passed(_stage_time(c, e.dt), PreflightPassed(), now)
    if c.phase is Phase.BAKING:
        baked = (c.bake_elapsed or 0.0) + e.dt
        return _try_pass_stage(_stage_time(evolve(c, bake_elapsed=baked), e.dt), now)
    if c.phase is not Phase.HOLDING:
        return Step(cutover=_stage_time(c, e.dt))
    c = evolve(c, stage_elapsed=c.stage_elapsed + e.dt, hold_elapsed=c.hold_elapsed + e.dt)
    return _try_pass_stage(c, now)


def _on_tick_paused(c: Cutover, e: Tick, now: float) -> Step:
    return Step(cutover=_stage_time(c, e.dt))


def _on_tick_awaiting(c: Cutover, e: Tick, now: float) -> Step:
    c = evolve(_stage_time(c, e.dt), approval_elapsed=c.approval_elapsed + e.dt)
    timeout = c.stage.approval_timeout
    if timeout is not None and c.approval_elapsed >= timeout:
        reason = f"no promote within approval_timeout {timeout:g}s"
        return _start_rollback(c, now, reason, "approval")
    return Step(cutover=c)


def _on_tick_rolling_back(c: Cutover, e: Tick, now: float) -> Step:
    c = evolve(c, rollback_elapsed=c.rollback_elapsed + e.dt)
    if c.rollback_elapsed < c.plan.rollback_timeout:
        return Step(cutover=c)
    unverified = [r.name for r in c.routers if not r.verified]
    c = evolve(c, status=Status.FAILED)
    return Step(
        cutover=c,
        events=(
            _event(
                now,
                "failed",
                f"rollback not verified within {c.plan.rollback_timeout:g}s on "
                f"{', '.join(unverified) or 'some routers'}; still retrying",
                routers=unverified,
                reason=c.reason,
            ),
        ),
    )


def _counting(c: Cutover, initial_delay: float) -> bool:
    """Whether a measurement taken now counts against the limits (PRODUCT.md, Operator
    controls): after ``initial_delay`` of stage time; while shifting past stage 1 at once, the
    previous stage's delay being served and the routers already written carrying more of the
    new color. Stage 1 has no previous traffic: its delay counts from the shift's start, when
    the first router can take the new color's share."""
    if c.phase is Phase.PREFLIGHT:
        return False
    if c.phase is Phase.SHIFTING and c.stage_index > 0:
        return True
    return c.stage_elapsed >= initial_delay


def _on_measured(c: Cutover, e: Measured, now: float) -> Step:
    try:
        policy = c.policy(e.check)
    except KeyError:
        return Step(cutover=c)
    m = evolve(e.measurement, counting=_counting(c, policy.initial_delay))
    state, finding = analysis.record(c.check(e.check), policy, m)
    c = c.with_check(state)
    if finding is None:
        return _try_pass_stage(c, now)
    if finding.action == "rollback":
        return _start_rollback(c, now, finding.reason, "check")
    return _pause(c, now, finding.reason, kind="alarm")


def _on_observed_unreadable(c: Cutover, e: Observed, now: float) -> Step:
    """A read-back that failed. Not drift (nothing says traffic moved) and not a reason to
    pause or roll back (a shift or rollback handles its own errors): the router's ``error``
    shows it, and the first failure of a run of them is a ``router_unreadable`` event (an
    alarm); the first good read after is ``router_readable``."""
    r = c.router(e.router)
    c = c.with_router(evolve(r, error=e.error))
    if r.error:
        return Step(cutover=c)  # already reported
    what = (
        f"router {e.router} cannot be read: {e.error}; its traffic is not verified until it "
        f"reads again (the daemon last wrote {r.written}% {c.to_color} to it)"
    )
    return Step(
        cutover=c,
        events=(_event(now, "router_unreadable", what, router=e.router, error=e.error),),
    )


def _on_observed(c: Cutover, e: Observed, now: float) -> Step:
    if e.error:
        return _on_observed_unreadable(c, e, now)
    r = c.router(e.router)
    if not r.error:
        return _on_reading(c, e, now)
    readable = _event(
        now, "router_readable", f"router {e.router} reads again (after: {r.error})", router=e.router
    )
    return Step(cutover=c, events=(readable,)).then(_on_reading(c, e, now))


def _on_reading(c: Cutover, e: Observed, now: float) -> Step:
    """A read-back that succeeded: what we know or wrote, or drift."""
    r = c.router(e.router)
    r = evolve(r, observed=e.share, detail=e.detail, error="")
    if e.known:
        return Step(cutover=c.with_router(evolve(r, drift=False)))
    if c.phase is Phase.PREFLIGHT:
        return Step(cutover=c.with_router(r))  # preflight itself just read every router
    if r.drift:
        return Step(cutover=c.with_router(r))  # already reported and handled
    c = c.with_router(evolve(r, drift=True))
    seen = "an unknown share" if e.share is None else f"{round(e.share, 1):g}%"
    what = (
        f"router {e.router} holds something the daemon did not write (it last wrote "
        f"{r.written}%; it now reads {seen} {c.to_color})"
    )
    drift = Step(
        cutover=c,
        events=(
            _event(now, "drift", what, router=e.router, observed=e.share, policy=c.plan.on_drift),
        ),
    )
    if c.plan.on_drift == "rollback":
        return drift.then(_start_rollback(c, now, f"drift: {what}", "drift"))
    if c.plan.on_drift == "reassert" and e.share is not None and e.share > r.desired:
        # toward the old color: always allowed (PRODUCT.md, Drift)
        return drift.then(
            Step(
                cutover=evolve(c, phase=Phase.SHIFTING),
                actions=(Apply(share=c.share, force=True),),
            )
        )
    return drift.then(_pause(c, now, f"drift: {what}"))


def _on_restarted(c: Cutover, e: Restarted, now: float) -> Step:
    window_start = now - c.plan.restart_window
    restarts = (*(t for t in c.restarts if t >= window_start), now)
    c = evolve(c, restarts=restarts, checks=tuple(evolve(s, latest=None) for s in c.checks))
    what = f"runner crashed ({e.crash}) and was respawned" if e.crash else "daemon restarted"
    crash = {"crash": e.crash} if e.crash else {}
    step = Step(
        cutover=c,
        events=(
            _event(
                now,
                "restarted",
                f"{what}; resuming {c.status.value} ({c.phase.value})",
                restarts_in_window=len(restarts),
                **crash,
            ),
        ),
    )
    if c.status in (Status.ROLLING_BACK, Status.FAILED):
        return step.then(Step(cutover=c, actions=(Rollback(),)))
    if (
        c.status in (Status.RUNNING, Status.AWAITING_APPROVAL)
        and len(restarts) > c.plan.max_restarts
    ):
        return step.then(
            _pause(
                c,
                now,
                f"{len(restarts)} restarts within {c.plan.restart_window:g}s "
                f"(more than {c.plan.max_restarts})",
                kind="alarm",
            )
        )
    if c.phase is Phase.SHIFTING:  # complete the stage change in flight
        return step.then(Step(cutover=c, actions=(Apply(share=c.share),)))
    return step


# --- operator commands -----------------------------------------------------------------------


def _cmd_pause(c: Cutover, e: Command, now: float) -> Step:
    return _pause(c, now, f"by {e.actor}")


def _drift_refusal(c: Cutover) -> Refusal | None:
    """A resume without ``reapply`` would push routers that drifted (an operator's emergency
    rollback, an HAProxy reload) back toward the new color: name each one instead."""
    drifted = [r for r in c.routers if r.drift]
    if not drifted:
        return None
    readings = "; ".join(
        f"router {r.name}: the daemon last wrote {r.written}% {c.to_color}, it reads "
        + ("an unknown share" if r.observed is None else f"{round(r.observed, 1):g}% {c.to_color}")
        for r in drifted
    )
    return Refusal(
        code="drift",
        message=f"cannot resume over drift: {readings}. Resume with reapply to write stage "
        f"{c.stage_index + 1} ({c.share}% {c.to_color}) again, or abort to roll back",
    )


def _cmd_resume(c: Cutover, e: Command, now: float) -> Step:
    refusal = None if e.reapply else _drift_refusal(c)
    if refusal is not None:
        return Step(cutover=c, refused=refusal)
    back = c.paused_from or Status.RUNNING
    c = evolve(c, status=back, paused_from=None)
    how = ", writing the current stage again" if e.reapply else ""
    resumed = Step(
        cutover=c,
        events=(
            _event(now, "resumed", f"resumed by {e.actor}{how}", actor=e.actor, reapply=e.reapply),
        ),
    )
    reapply = c.phase is not Phase.PREFLIGHT and (e.reapply or c.phase is Phase.SHIFTING)
    if back in (Status.RUNNING, Status.AWAITING_APPROVAL) and reapply:
        # the operator asked for the stage again (or one was in flight): write it over
        # whatever the routers hold
        c = evolve(c, phase=Phase.SHIFTING)
        return resumed.then(Step(cutover=c, actions=(Apply(share=c.share, force=True),)))
    return resumed.then(_try_pass_stage(c, now))


def _cmd_promote(c: Cutover, e: Command, now: float) -> Step:
    """Skip the rest of a hold, pass an approval gate or end a bake: refused while an acting
    check's latest counting measurement at this stage is not pass, unless ``force``."""
    blocking = analysis.not_passing(c.checks, c.plan.checks)
    named = ", ".join(
        f"{s.name} ({s.latest.value if s.latest else 'no counting measurement yet'})"
        for s in blocking
    )
    if blocking and not e.force:
        return Step(
            cutover=c,
            refused=Refusal(
                code="checks_not_passing",
                message=f"cannot promote: checks not passing at stage {c.stage_index + 1}: "
                f"{named}; promote with force to pass it anyway",
            ),
        )
    what = "the bake" if c.phase is Phase.BAKING else f"stage {c.stage_index + 1}"
    forced = f", forced past checks not passing: {named}" if blocking else ""
    promoted = Step(
        cutover=c,
        events=(
            _event(
                now,
                "promoted",
                f"{what} promoted by {e.actor}{forced}",
                actor=e.actor,
                forced=bool(blocking),
                not_passing=[s.name for s in blocking],
            ),
        ),
    )
    return promoted.then(_advance(c, now))


def _cmd_promote_running(c: Cutover, e: Command, now: float) -> Step:
    if c.phase not in (Phase.HOLDING, Phase.BAKING):
        return Step(
            cutover=c,
            refused=Refusal(code="invalid_state", message=f"cannot promote while {c.phase.value}"),
        )
    return _cmd_promote(c, e, now)


def _cmd_abort(c: Cutover, e: Command, now: float) -> Step:
    return _start_rollback(c, now, f"aborted by {e.actor}", "operator")


_COMMANDS: dict[tuple[Status, str], Handler] = {
    (Status.RUNNING, "pause"): _cmd_pause,
    (Status.AWAITING_APPROVAL, "pause"): _cmd_pause,
    (Status.PAUSED, "resume"): _cmd_resume,
    (Status.RUNNING, "promote"): _cmd_promote_running,
    (Status.AWAITING_APPROVAL, "promote"): _cmd_promote,
    (Status.RUNNING, "abort"): _cmd_abort,
    (Status.AWAITING_APPROVAL, "abort"): _cmd_abort,
    (Status.PAUSED, "abort"): _cmd_abort,
}


def allowed_commands(status: Status) -> list[str]:
    return [action for (s, action) in _COMMANDS if s is status]


def _on_command(c: Cutover, e: Command, now: float) -> Step:
    handler = _COMMANDS.get((c.status, e.action))
    if handler is None:
        return Step(
            cutover=c,
            refused=Refusal(
                code="invalid_state",
                message=f"cannot {e.action} a cutover that is {c.status.value}",
            ),
        )
    return handler(c, e, now)


# --- the table -------------------------------------------------------------------------------

_ACTIVE = (Status.RUNNING, Status.AWAITING_APPROVAL, Status.PAUSED)
_ROLLING = (Status.ROLLING_BACK, Status.FAILED)

TABLE: dict[tuple[Status, type], Handler] = {
    (Status.RUNNING, PreflightPassed): _on_preflight_passed,
    **{(s, ShiftApplied): _on_shift_applied for s in _ACTIVE},
    **{(s, ShiftAttemptFailed): _on_shift_attempt_failed for s in _ACTIVE},
    **{(s, ShiftFailed): _on_shift_failed for s in _ACTIVE},
    (Status.RUNNING, Tick): _on_tick_running,
    (Status.AWAITING_APPROVAL, Tick): _on_tick_awaiting,
    (Status.PAUSED, Tick): _on_tick_paused,
    (Status.ROLLING_BACK, Tick): _on_tick_rolling_back,
    **{(s, RollbackVerified): _on_rollback_verified for s in _ROLLING},
    **{(s, RouterRolledBack): _on_router_rolled_back for s in _ROLLING},
    **{(s, Observed): _on_observed_rolling for s in _ROLLING},
    **{(s, Measured): _on_measured for s in _ACTIVE},
    **{(s, Observed): _on_observed for s in _ACTIVE},
    **{(s, Restarted): _on_restarted for s in (*_ACTIVE, *_ROLLING)},
    **{(s, Command): _on_command for s in Status},
}


def step(c: Cutover, event: Input, now: float) -> Step:
    """Apply one input. Unknown (status, input) pairs leave the cutover unchanged."""
    handler = TABLE.get((c.status, type(event)))
    if handler is None:
        return Step(cutover=c)
    result = handler(c, event, now)
    if result.cutover != c:
        result = evolve(result, cutover=evolve(result.cutover, updated_at=now))
    return result


def next_deadline(c: Cutover) -> float | None:
    """Seconds of monitored time until a ``Tick`` can change ``c`` by itself (a hold or a bake
    ends, a DNS TTL wait is over, an approval or rollback times out); ``None`` when only another
    input can. The engine sleeps until then instead of ticking at a fixed rate; elapsed times in
    between are brought up to date by whatever input comes first."""
    remaining: float | None = None
    if c.status is Status.RUNNING and c.phase is Phase.PREFLIGHT:
        remaining = c.ttl_wait - c.stage_elapsed
    elif c.status is Status.RUNNING and c.phase is Phase.HOLDING:
        if c.hold_elapsed < c.stage.hold:
            remaining = c.stage.hold - c.hold_elapsed
    elif c.status is Status.RUNNING and c.phase is Phase.BAKING:
        baked = c.bake_elapsed or 0.0
        if baked < c.plan.bake:
            remaining = c.plan.bake - baked
    elif c.status is Status.AWAITING_APPROVAL and c.stage.approval_timeout is not None:
        remaining = c.stage.approval_timeout - c.approval_elapsed
    elif c.status is Status.ROLLING_BACK:
        remaining = c.plan.rollback_timeout - c.rollback_elapsed
    return None if remaining is None else max(0.0, remaining)
