"""Measurements -> what the cutover must do about them.

Semantics (PRODUCT.md, Checks and Rollback), modelled on Argo Rollouts' analysis
(``utils/analysis/helpers.go``): every counting measurement of pass/fail/inconclusive enters
the check's sliding ``window``; ``failure_limit`` fails within it -> rollback. Inconclusive and
error measurements are counted *in a row*: ``inconclusive_limit`` -> ``on_inconclusive``,
``error_limit`` -> ``on_error`` (each pause or rollback). Provider errors stay out of the window
(they say nothing about the color). A ``dry_run`` check is measured and shown, never acts.
Measurements inside a stage's ``initial_delay`` are recorded but do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cutover.core.model import (
    HISTORY_KEPT,
    CheckPolicy,
    CheckState,
    Measurement,
    Verdict,
    evolve,
)

__all__ = ["Finding", "gate_open", "not_passing", "record", "worst"]

_SEVERITY = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.ERROR: 2, Verdict.FAIL: 3}


@dataclass(frozen=True, kw_only=True)
class Finding:
    """A check asks the cutover to act."""

    action: Literal["pause", "rollback"]
    reason: str


def worst(verdicts: list[Verdict]) -> Verdict | None:
    """The most severe verdict (fail > error > inconclusive > pass), ``None`` for none."""
    return max(verdicts, key=_SEVERITY.__getitem__, default=None)


def _describe(m: Measurement) -> str:
    value = "" if m.value is None else f"value {m.value:.4g}"
    return "; ".join(part for part in (value, m.detail) if part) or m.verdict.value


def record(
    state: CheckState, policy: CheckPolicy, m: Measurement
) -> tuple[CheckState, Finding | None]:
    """Add one measurement to a check's state; say whether the cutover must act."""
    state = evolve(state, last=m, history=(*state.history, m)[-HISTORY_KEPT:])
    if not m.counting:
        return state, None

    finding: Finding | None = None
    if m.verdict is Verdict.ERROR:
        errors = state.consecutive_errors + 1
        if errors >= policy.error_limit:
            finding = Finding(
                action=policy.on_error,
                reason=f"check {policy.name}: {errors} provider errors in a row ({_describe(m)})",
            )
            errors = 0  # a paused cutover that is resumed needs a fresh run of errors
        state = evolve(state, consecutive_errors=errors, latest=m.verdict)
    else:
        window = (*state.window, m.verdict)[-policy.window :]
        inconclusive = (
            state.consecutive_inconclusive + 1 if m.verdict is Verdict.INCONCLUSIVE else 0
        )
        fails = sum(1 for v in window if v is Verdict.FAIL)
        if m.verdict is Verdict.FAIL and fails >= policy.failure_limit:
            finding = Finding(
                action="rollback",
                reason=(
                    f"check {policy.name} failed {fails} of the last {len(window)} measurements"
                    f" ({_describe(m)})"
                ),
            )
        elif inconclusive >= policy.inconclusive_limit:
            finding = Finding(
                action=policy.on_inconclusive,
                reason=f"check {policy.name}: {inconclusive} inconclusive measurements in a row"
                f" ({_describe(m)})",
            )
            inconclusive = 0
        state = evolve(
            state,
            window=window,
            consecutive_inconclusive=inconclusive,
            consecutive_errors=0,
            latest=m.verdict,
        )
    return state, (None if policy.dry_run else finding)


def gate_open(states: tuple[CheckState, ...], policies: tuple[CheckPolicy, ...]) -> bool:
    """A stage may pass only when every acting check's latest counting measurement is pass."""
    return not not_passing(states, policies)


def not_passing(
    states: tuple[CheckState, ...], policies: tuple[CheckPolicy, ...]
) -> tuple[CheckState, ...]:
    """The acting (not dry-run) checks whose latest counting measurement is not pass: what
    keeps a stage's gate closed, and what a ``promote`` without ``force`` is refused over."""
    dry = {p.name for p in policies if p.dry_run}
    return tuple(s for s in states if s.name not in dry and s.latest is not Verdict.PASS)
