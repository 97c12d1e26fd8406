"""Plain data of a cutover: its frozen plan, its state and the inputs and outputs of the machine.

Everything here is an immutable dataclass with ``with_…``-style updates through
:func:`evolve` (``dataclasses.replace`` without re-running ``__init__``), and round-trips to
JSON-able dicts explicitly (``to_dict`` / ``from_dict``) so the store never pickles and an old
record stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal, TypeVar

__all__ = [
    "COLORS",
    "CheckPolicy",
    "CheckState",
    "Color",
    "Cutover",
    "Event",
    "Measurement",
    "Phase",
    "Plan",
    "RouterStatus",
    "Stage",
    "Status",
    "Verdict",
    "evolve",
    "other_color",
]

Color = Literal["blue", "green"]
COLORS: tuple[Color, Color] = ("blue", "green")

#: Measurements kept per check for status pages and sparklines.
HISTORY_KEPT = 20


def other_color(color: Color) -> Color:
    return "green" if color == "blue" else "blue"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class Status(StrEnum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    # a start that preflight refused: kept in history with its reason, nothing moved
    REFUSED = "refused"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.ROLLED_BACK, Status.REFUSED)

    @property
    def active(self) -> bool:
        """Still owns the service: a new start gets 409 (``failed`` included: not terminal)."""
        return not self.terminal


class Phase(StrEnum):
    PREFLIGHT = "preflight"
    SHIFTING = "shifting"
    HOLDING = "holding"
    # after the last stage's hold: every check still runs at 100 % for ``Plan.bake`` seconds
    BAKING = "baking"


Policy = Literal["pause", "rollback"]
DriftPolicy = Literal["pause", "reassert", "rollback"]


_T = TypeVar("_T")


def evolve(obj: _T, **changes: Any) -> _T:
    """:func:`dataclasses.replace` for this module's frozen dataclasses, without calling
    ``__init__`` again (none of them validates there). A step makes several new cutovers, and
    re-running a 25-field ``__init__`` for each was a visible share of the daemon's CPU at
    scale (docs/performance.md). Unknown field names still raise :class:`TypeError`."""
    known: dict[str, Any] = obj.__dataclass_fields__  # type: ignore[attr-defined]
    unknown = changes.keys() - known.keys()
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field(s) {sorted(unknown)}")
    new = object.__new__(type(obj))
    # a frozen dataclass blocks __setattr__, not its __dict__
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


@dataclass(frozen=True, kw_only=True)
class Stage:
    weight: int
    hold: float
    approval: bool = False
    approval_timeout: float | None = None


@dataclass(frozen=True, kw_only=True)
class CheckPolicy:
    """What the analysis needs of a check; the provider details stay with the check."""

    name: str
    interval: float = 10.0
    failure_limit: int = 2
    window: int = 5
    inconclusive_limit: int = 3
    error_limit: int = 3
    on_inconclusive: Policy = "pause"
    on_error: Policy = "pause"
    initial_delay: float = 0.0
    dry_run: bool = False


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Frozen into the cutover at start: later config edits affect only later cutovers."""

    stages: tuple[Stage, ...]
    checks: tuple[CheckPolicy, ...] = ()
    routers: tuple[str, ...] = ()
    on_drift: DriftPolicy = "pause"
    apply_timeout: float = 10.0
    rollback_timeout: float = 30.0
    max_restarts: int = 3
    restart_window: float = 600.0
    bake: float = 0.0  # monitored seconds at 100 % after the last stage, checks running


@dataclass(frozen=True, kw_only=True)
class Measurement:
    verdict: Verdict
    value: float | None = None
    detail: str = ""
    at: float = 0.0  # wall-clock seconds since the epoch, for people
    counting: bool = True
    # A compare check's value of the old color, judged against; kept in the record so that at
    # share 100 (old has no traffic) the check still has the preceding stage's value, even
    # after a restart (PRODUCT.md, Compare checks).
    baseline: float | None = None


@dataclass(frozen=True, kw_only=True)
class CheckState:
    name: str
    window: tuple[Verdict, ...] = ()  # last counting pass/fail/inconclusive, newest last
    consecutive_inconclusive: int = 0
    consecutive_errors: int = 0
    latest: Verdict | None = None  # latest counting verdict since stage entry or restart
    last: Measurement | None = None  # latest measurement, counting or not
    history: tuple[Measurement, ...] = ()

    @property
    def failures_in_window(self) -> int:
        return sum(1 for v in self.window if v is Verdict.FAIL)

    @property
    def baseline(self) -> float | None:
        """The newest old-color value a compare check measured (or carried forward)."""
        return next((m.baseline for m in reversed(self.history) if m.baseline is not None), None)


@dataclass(frozen=True, kw_only=True)
class RouterStatus:
    name: str
    kind: str
    desired: int = 0  # share the machine wants (persisted before it is acted on)
    written: int | None = None  # share last written and verified by read-back
    # What the router held after our last verified write (or at preflight): drift is a
    # reading that is neither this nor what ``desired`` writes (PRODUCT.md, Drift).
    written_state: dict[str, str] | None = None
    observed: float | None = None  # effective share last read
    detail: str = ""
    drift: bool = False
    # A DNS router's TTL and the wall time of our last verified write: resolvers may serve
    # the previous answer until written_at + ttl (PRODUCT.md, DNS: "earliest", not "when").
    ttl: float = 0.0
    written_at: float | None = None
    error: str = ""
    verified: bool = True  # False from a rollback's start until this router reads all-old


@dataclass(frozen=True, kw_only=True)
class Event:
    """One line of the append-only journal; ``seq`` is assigned by the store."""

    kind: str
    message: str
    at: float
    data: dict[str, Any] = field(default_factory=dict)
    seq: int = 0


@dataclass(frozen=True, kw_only=True)
class Cutover:
    id: str
    service: str
    from_color: Color
    to_color: Color
    plan: Plan
    status: Status = Status.RUNNING
    phase: Phase = Phase.PREFLIGHT
    stage_index: int = 0
    hold_elapsed: float = 0.0  # monitored seconds counting toward the current stage's hold
    # monitored seconds since the current stage was applied (before that, since its shift
    # began), paused time included: what a check's initial_delay is measured against (clients
    # move even while we pause)
    stage_elapsed: float = 0.0
    approval_elapsed: float = 0.0
    rollback_elapsed: float = 0.0
    # monitored seconds of the bake so far; ``None`` until the bake starts (a re-applied last
    # stage then returns to the bake, not to a second one)
    bake_elapsed: float | None = None
    paused_from: Status | None = None
    # Before stage 1: a DNS router's published TTL was longer than configured, so it was
    # republished with the configured TTL and the old one is waited out (monitored time,
    # counted in stage_elapsed while the phase is still preflight).
    ttl_wait: float = 0.0
    checks: tuple[CheckState, ...] = ()
    routers: tuple[RouterStatus, ...] = ()
    reason: str | None = None
    restarts: tuple[float, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    kind: Literal["cutover", "undo"] = "cutover"
    # The service's config as it was at start (plain JSON), so routers and checks are built
    # from the frozen plan after a restart even if the config file changed since.
    spec: dict[str, Any] = field(default_factory=dict)
    revision: int = 0
    # Why the state store could not take this cutover's latest transition ("" once it is
    # written): status shows it; the engine clears it in the write that succeeds, and a record
    # read back never has one (from_dict leaves it out).
    store_error: str = ""

    @property
    def stage(self) -> Stage:
        return self.plan.stages[self.stage_index]

    @property
    def share(self) -> int:
        """The share the current stage asks for."""
        return self.stage.weight

    def check(self, name: str) -> CheckState:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def policy(self, name: str) -> CheckPolicy:
        for p in self.plan.checks:
            if p.name == name:
                return p
        raise KeyError(name)

    def with_check(self, new: CheckState) -> Cutover:
        return evolve(self, checks=tuple(new if c.name == new.name else c for c in self.checks))

    def router(self, name: str) -> RouterStatus:
        for r in self.routers:
            if r.name == name:
                return r
        raise KeyError(name)

    def only_progress_since(self, before: Cutover) -> bool:
        """True when this differs from ``before`` only in elapsed times, ``updated_at`` and
        measurements that leave what later rollback decisions depend on as it was: windows of
        passes only (a fail leaves any window after the same number of measurements, however
        many passes came before it), the same consecutive error and inconclusive counts.
        Losing such a change in a crash can only make the restarted daemon hold longer, so the
        engine writes it periodically; any other measurement is written at once, so counts
        survive restarts exactly (PRODUCT.md)."""
        if len(self.checks) != len(before.checks):
            return False
        for now, then in zip(self.checks, before.checks, strict=True):
            if (
                now.name != then.name
                or now.consecutive_inconclusive != then.consecutive_inconclusive
                or now.consecutive_errors != then.consecutive_errors
            ):
                return False
            if now.window != then.window and not (_passes(now.window) and _passes(then.window)):
                return False
        return all(getattr(self, f) == getattr(before, f) for f in _NOT_PROGRESS)

    def with_router(self, new: RouterStatus) -> Cutover:
        return evolve(self, routers=tuple(new if r.name == new.name else r for r in self.routers))

    # --- explicit storage round-trip ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _dump(self)  # type: ignore[no-any-return]

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Cutover:
        plan = d["plan"]
        return Cutover(
            id=d["id"],
            service=d["service"],
            from_color=d["from_color"],
            to_color=d["to_color"],
            plan=Plan(
                stages=tuple(Stage(**s) for s in plan["stages"]),
                checks=tuple(CheckPolicy(**c) for c in plan["checks"]),
                routers=tuple(plan["routers"]),
                on_drift=plan["on_drift"],
                apply_timeout=plan["apply_timeout"],
                rollback_timeout=plan["rollback_timeout"],
                max_restarts=plan["max_restarts"],
                restart_window=plan["restart_window"],
                bake=plan.get("bake", 0.0),
            ),
            status=Status(d["status"]),
            phase=Phase(d["phase"]),
            stage_index=d["stage_index"],
            hold_elapsed=d["hold_elapsed"],
            stage_elapsed=d.get("stage_elapsed", 0.0),
            approval_elapsed=d["approval_elapsed"],
            rollback_elapsed=d["rollback_elapsed"],
            bake_elapsed=d.get("bake_elapsed"),
            paused_from=Status(d["paused_from"]) if d["paused_from"] else None,
            ttl_wait=d.get("ttl_wait", 0.0),
            checks=tuple(_check_state(c) for c in d["checks"]),
            routers=tuple(RouterStatus(**r) for r in d["routers"]),
            reason=d["reason"],
            restarts=tuple(d["restarts"]),
            created_at=d["created_at"],
            updated_at=d["updated_at"],
            finished_at=d["finished_at"],
            kind=d["kind"],
            spec=d.get("spec", {}),
            revision=d["revision"],
        )


def _passes(window: tuple[Verdict, ...]) -> bool:
    return all(v is Verdict.PASS for v in window)


#: The fields of a :class:`Cutover` that are more than progress (``only_progress_since``).
_NOT_PROGRESS = tuple(
    f.name
    for f in fields(Cutover)
    if f.name
    not in (
        "hold_elapsed",
        "stage_elapsed",
        "approval_elapsed",
        "rollback_elapsed",
        "bake_elapsed",
        "updated_at",
        "checks",
    )
)


def _measurement(d: dict[str, Any]) -> Measurement:
    return Measurement(**{**d, "verdict": Verdict(d["verdict"])})


def _check_state(d: dict[str, Any]) -> CheckState:
    return CheckState(
        name=d["name"],
        window=tuple(Verdict(v) for v in d["window"]),
        consecutive_inconclusive=d["consecutive_inconclusive"],
        consecutive_errors=d["consecutive_errors"],
        latest=Verdict(d["latest"]) if d["latest"] else None,
        last=_measurement(d["last"]) if d["last"] else None,
        history=tuple(_measurement(m) for m in d["history"]),
    )


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _dump(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, enums -> their values. Scalar leaves (most of a
    cutover's) are kept inline, without a call each: every progress write encodes the whole
    cutover, check histories included, so this runs for every field of every running cutover."""
    if type(obj) in _SCALARS:
        return obj
    if hasattr(obj, "__dataclass_fields__"):
        # A dataclass's __dict__ holds exactly its fields, in field order (__init__ and
        # evolve set them so): no getattr per field.
        return {k: v if type(v) in _SCALARS else _dump(v) for k, v in obj.__dict__.items()}
    if isinstance(obj, tuple | list):
        return [x if type(x) in _SCALARS else _dump(x) for x in obj]
    if isinstance(obj, dict):
        return {k: v if type(v) in _SCALARS else _dump(v) for k, v in obj.items()}
    if isinstance(obj, StrEnum):
        return obj.value
    return obj
