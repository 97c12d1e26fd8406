"""Table tests for cutover.core.analysis: record, gate_open, worst (PRODUCT.md, Checks)."""

from __future__ import annotations

from itertools import permutations

import pytest

from cutover.core.analysis import Finding, gate_open, record, worst
from cutover.core.model import HISTORY_KEPT, CheckPolicy, CheckState, Measurement, Verdict

P, F, INC, E = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.ERROR
_CODES = {"P": P, "F": F, "I": INC, "E": E}


def verdicts(codes: str) -> list[Verdict]:
    """``"FPPE"`` -> [fail, pass, pass, error]; spaces are ignored."""
    return [_CODES[ch] for ch in codes if not ch.isspace()]


def run(
    policy: CheckPolicy, codes: str, *, counting: bool = True, state: CheckState | None = None
) -> tuple[CheckState, list[Finding | None]]:
    """Record the measurements in order; measurement i has value i."""
    state = state or CheckState(name=policy.name)
    findings: list[Finding | None] = []
    for i, verdict in enumerate(verdicts(codes)):
        m = Measurement(verdict=verdict, value=float(i), at=1000.0 + i, counting=counting)
        state, finding = record(state, policy, m)
        findings.append(finding)
    return state, findings


def acted(findings: list[Finding | None]) -> list[tuple[int, str]]:
    """Where a finding came, and what it asks: [(index, action)]."""
    return [(i, f.action) for i, f in enumerate(findings) if f is not None]


# --- failure_limit within the window --------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "window", "codes", "expected"),
    [
        # the brief's examples: limit 2 within the last 5
        (2, 5, "F P P P F", [(4, "rollback")]),  # the 2nd F is within the last 5
        (2, 5, "F P P P P F", []),  # the 1st F has just left the window
        (2, 5, "F P P P P P F", []),
        (2, 5, "F F", [(1, "rollback")]),
        (2, 5, "F", []),
        (2, 5, "P P P P P", []),
        (1, 5, "P P F", [(2, "rollback")]),
        (3, 5, "F F P F", [(3, "rollback")]),
        (3, 5, "F F P P P F", []),  # window [F P P P F]: 2 fails < 3
        (2, 3, "F P F", [(2, "rollback")]),
        (2, 3, "F P P F", []),
        (2, 1, "F F F", []),  # a window shorter than the limit can never roll back
        # inconclusive measurements take window slots (they are evidence of no data) ...
        (2, 5, "F I F", [(2, "rollback")]),
        (2, 5, "F I I P P F", []),
        # ... provider errors do not: they say nothing about the color
        (2, 5, "F E F", [(2, "rollback")]),
        (2, 5, "F E E P P P F", [(6, "rollback")]),  # window [F P P P F] without the errors
        # every further fail within the window asks again
        (2, 5, "F F F", [(1, "rollback"), (2, "rollback")]),
        # a pass never asks, even with fails in the window
        (2, 5, "F F P", [(1, "rollback")]),
    ],
)
def test_failure_limit_within_window(
    limit: int, window: int, codes: str, expected: list[tuple[int, str]]
) -> None:
    policy = CheckPolicy(
        name="health", failure_limit=limit, window=window, inconclusive_limit=99, error_limit=99
    )
    state, findings = run(policy, codes)
    assert acted(findings) == expected
    counted = [v for v in verdicts(codes) if v is not E]
    assert state.window == tuple(counted[-window:])
    assert state.failures_in_window == counted[-window:].count(F)


def test_failure_reason_names_check_count_and_value() -> None:
    policy = CheckPolicy(name="green-error-ratio", failure_limit=2, window=5)
    state, _ = run(policy, "F P")
    m = Measurement(verdict=F, value=0.25, detail="0.25 > max 0.01", at=5.0)
    _, finding = record(state, policy, m)
    assert finding is not None
    assert finding.action == "rollback"
    assert "green-error-ratio" in finding.reason
    assert "2 of the last 3" in finding.reason
    assert "0.25" in finding.reason and "max 0.01" in finding.reason


def test_failure_reason_without_value_names_the_verdict() -> None:
    policy = CheckPolicy(name="health", failure_limit=1)
    _, finding = record(CheckState(name="health"), policy, Measurement(verdict=F))
    assert finding is not None and "health" in finding.reason and "fail" in finding.reason


# --- inconclusive_limit -> on_inconclusive ---------------------------------------------------


@pytest.mark.parametrize(
    ("on_inconclusive", "codes", "expected", "left"),
    [
        ("pause", "I I", [], 2),
        ("pause", "I I I", [(2, "pause")], 0),
        ("rollback", "I I I", [(2, "rollback")], 0),
        # the counter resets after a finding: a resumed cutover needs a fresh run
        ("pause", "I I I I I", [(2, "pause")], 2),
        ("pause", "I I I I I I", [(2, "pause"), (5, "pause")], 0),
        # "in a row": a pass or a fail breaks the run
        ("pause", "I I P I I", [], 2),
        ("pause", "I I F I I", [], 2),
        ("rollback", "P I I P I I P", [], 0),
    ],
)
def test_inconclusive_limit(
    on_inconclusive: str, codes: str, expected: list[tuple[int, str]], left: int
) -> None:
    policy = CheckPolicy(
        name="ratio",
        inconclusive_limit=3,
        on_inconclusive=on_inconclusive,  # type: ignore[arg-type]
        failure_limit=99,
    )
    state, findings = run(policy, codes)
    assert acted(findings) == expected
    assert state.consecutive_inconclusive == left
    for f in findings:
        if f is not None:
            assert "ratio" in f.reason and "3 inconclusive" in f.reason


# --- error_limit -> on_error -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_error", "codes", "expected", "left"),
    [
        ("pause", "E E", [], 2),
        ("pause", "E E E", [(2, "pause")], 0),
        ("rollback", "E E E", [(2, "rollback")], 0),
        ("pause", "E E E E E", [(2, "pause")], 2),  # reset after the finding
        ("pause", "E E E E E E", [(2, "pause"), (5, "pause")], 0),
        # any non-error resets the run of errors
        ("pause", "E E P E E", [], 2),
        ("pause", "E E F E E", [], 2),
        ("pause", "E E I E E", [], 2),
    ],
)
def test_error_limit(on_error: str, codes: str, expected: list[tuple[int, str]], left: int) -> None:
    policy = CheckPolicy(
        name="prom",
        error_limit=3,
        on_error=on_error,  # type: ignore[arg-type]
        failure_limit=99,
        inconclusive_limit=99,
    )
    state, findings = run(policy, codes)
    assert acted(findings) == expected
    assert state.consecutive_errors == left
    for f in findings:
        if f is not None:
            assert "prom" in f.reason and "3 provider errors" in f.reason


def test_errors_stay_out_of_the_window_but_set_latest() -> None:
    policy = CheckPolicy(name="prom", error_limit=99)
    state, _ = run(policy, "P F E E")
    assert state.window == (P, F)
    assert state.consecutive_errors == 2
    assert state.latest is E  # the gate is closed by an error: the latest counting one is no pass
    state, _ = run(policy, "P", state=state)
    assert state.consecutive_errors == 0
    assert state.latest is P
    assert state.window == (P, F, P)


# --- non-counting measurements -----------------------------------------------------------------


def test_non_counting_measurements_are_recorded_but_ignored() -> None:
    policy = CheckPolicy(name="health", failure_limit=1, inconclusive_limit=1, error_limit=1)
    state, findings = run(policy, "F I E F", counting=False)
    assert acted(findings) == []
    assert state.window == ()
    assert state.latest is None
    assert state.consecutive_errors == 0 and state.consecutive_inconclusive == 0
    assert [m.verdict for m in state.history] == [F, INC, E, F]
    assert state.last is not None and state.last.verdict is F and state.last.counting is False


def test_non_counting_measurements_do_not_break_runs() -> None:
    policy = CheckPolicy(name="health", failure_limit=2, window=2, error_limit=2)
    state, _ = run(policy, "F")
    state, _ = run(policy, "P P P E E", counting=False, state=state)
    assert state.window == (F,)
    assert state.latest is F
    state, findings = run(policy, "F", state=state)
    assert acted(findings) == [(0, "rollback")]


# --- dry_run -------------------------------------------------------------------------------------


@pytest.mark.parametrize("codes", ["F F F F", "I I I I", "E E E E", "F I E F E I F"])
def test_dry_run_never_yields_a_finding(codes: str) -> None:
    policy = CheckPolicy(
        name="shadow",
        failure_limit=1,
        inconclusive_limit=1,
        error_limit=1,
        on_inconclusive="rollback",
        on_error="rollback",
        dry_run=True,
    )
    state, findings = run(policy, codes)
    assert acted(findings) == []
    # still measured and shown
    assert len(state.history) == len(verdicts(codes))
    assert state.window == tuple(v for v in verdicts(codes) if v is not E)[-policy.window :]


# --- history -------------------------------------------------------------------------------------


def test_history_is_capped_newest_last() -> None:
    policy = CheckPolicy(name="health", failure_limit=99, inconclusive_limit=99, error_limit=99)
    n = HISTORY_KEPT + 7
    state, _ = run(policy, "P" * n)
    assert len(state.history) == HISTORY_KEPT
    assert [m.value for m in state.history] == [float(i) for i in range(n - HISTORY_KEPT, n)]
    assert state.last == state.history[-1]


def test_window_is_capped_at_policy_window() -> None:
    policy = CheckPolicy(name="health", window=3, failure_limit=99)
    state, _ = run(policy, "F P P I P")
    assert state.window == (P, INC, P)


# --- gate_open -----------------------------------------------------------------------------------


def _states(**latest: Verdict | None) -> tuple[CheckState, ...]:
    return tuple(CheckState(name=name, latest=v) for name, v in latest.items())


def _policies(*names: str, dry: tuple[str, ...] = ()) -> tuple[CheckPolicy, ...]:
    return tuple(CheckPolicy(name=n, dry_run=n in dry) for n in names)


@pytest.mark.parametrize(
    ("latest", "dry", "expected"),
    [
        ({}, (), True),  # no checks: nothing to wait for
        ({"a": P, "b": P}, (), True),
        ({"a": P, "b": None}, (), False),  # no counting measurement yet
        ({"a": P, "b": F}, (), False),
        ({"a": P, "b": INC}, (), False),
        ({"a": P, "b": E}, (), False),
        ({"a": None, "b": None}, (), False),
        ({"a": P, "b": F}, ("b",), True),  # dry-run checks never hold a stage
        ({"a": P, "b": None}, ("b",), True),
        ({"a": F, "b": P}, ("b",), False),
        ({"a": None}, ("a",), True),
    ],
)
def test_gate_open(latest: dict[str, Verdict | None], dry: tuple[str, ...], expected: bool) -> None:
    assert gate_open(_states(**latest), _policies(*latest, dry=dry)) is expected


# --- worst ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], None),
        ([P], P),
        ([P, P], P),
        ([P, INC], INC),
        ([INC, E], E),
        ([E, F], F),
        ([P, INC, E], E),
        ([F, P, INC, E], F),
    ],
)
def test_worst(given: list[Verdict], expected: Verdict | None) -> None:
    for order in permutations(given):
        assert worst(list(order)) is expected
