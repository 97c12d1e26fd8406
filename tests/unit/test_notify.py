"""Webhook bodies from the machine's real events, Slack text, event ids, webhook identity and
tokens. Delivery against real receivers is in tests/integration/test_webhooks.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cutover.config import NotifySpec
from cutover.core import machine
from cutover.core.machine import (
    Command,
    Measured,
    Observed,
    PreflightPassed,
    RollbackVerified,
    ShiftApplied,
    Tick,
)
from cutover.core.model import CheckPolicy, Cutover, Event, Measurement, Plan, Stage, Verdict
from cutover.core.refusal import refused
from cutover.notify import NOTIFIED, RetryPolicy, event_id
from cutover.notify.payload import body, payload, text
from cutover.notify.webhook import DeliveryError, Webhook
from cutover.observability.logging import Redactor

T0 = 1_700_000_000.0
PLAN = Plan(
    stages=(Stage(weight=10, hold=5.0), Stage(weight=50, hold=5.0, approval=True)),
    checks=(CheckPolicy(name="health", failure_limit=2),),
    routers=("edge",),
)


def journal() -> tuple[Cutover, list[Event]]:
    """A cutover the machine drove through start, stage 1, approval of stage 2 and a rollback
    on a failing check; events numbered as the store numbers them."""
    step = machine.new_cutover(
        cutover_id="co-1",
        service="checkout",
        from_color="blue",
        to_color="green",
        plan=PLAN,
        router_kinds={"edge": "haproxy"},
        router_states={"edge": {"green1": "w0"}},
        now=T0,
    )
    passed = Measured(check="health", measurement=Measurement(verdict=Verdict.PASS, value=1.0))
    inputs: list[machine.Input] = [
        PreflightPassed(),
        ShiftApplied(share=10, states={"edge": {"green1": "w10"}}),
        passed,
        Tick(dt=5.0),
        ShiftApplied(share=50, states={"edge": {"green1": "w50"}}),
        passed,
        Tick(dt=5.0),
        *[
            Measured(check="health", measurement=Measurement(verdict=Verdict.FAIL, value=0.0))
            for _ in range(2)
        ],
        RollbackVerified(states={"edge": {"green1": "maint"}}),
    ]
    for i, item in enumerate(inputs, start=1):
        step = step.then(machine.step(step.cutover, item, T0 + i))
    events = [replace(e, seq=seq) for seq, e in enumerate(step.events, start=1)]
    return step.cutover, events


def operator_journal() -> tuple[Cutover, list[Event]]:
    """A cutover paused and resumed by an operator, then baking, drifting and pausing on
    provider errors; events numbered as the store numbers them."""
    plan = replace(PLAN, stages=(Stage(weight=10, hold=5.0), Stage(weight=100, hold=5.0)), bake=5.0)
    step = machine.new_cutover(
        cutover_id="co-2",
        service="checkout",
        from_color="blue",
        to_color="green",
        plan=plan,
        router_kinds={"edge": "haproxy"},
        router_states={"edge": {"green1": "w0"}},
        now=T0,
    )
    passed = Measured(check="health", measurement=Measurement(verdict=Verdict.PASS, value=1.0))
    error = Measured(check="health", measurement=Measurement(verdict=Verdict.ERROR, detail="503"))
    inputs: list[machine.Input] = [
        PreflightPassed(),
        ShiftApplied(share=10, states={"edge": {"green1": "w10"}}),
        passed,
        Command(action="pause", actor="alice"),
        Command(action="resume", actor="alice"),
        Tick(dt=5.0),
        ShiftApplied(share=100, states={"edge": {"green1": "w100"}}),
        passed,
        Tick(dt=5.0),
        Observed(router="edge", share=50.0, known=False, at_desired=False),
        *[error for _ in range(3)],
    ]
    for i, item in enumerate(inputs, start=1):
        step = step.then(machine.step(step.cutover, item, T0 + i))
    events = [replace(e, seq=seq) for seq, e in enumerate(step.events, start=1)]
    return step.cutover, events


def test_every_notified_kind_is_one_the_core_writes() -> None:
    _, events = journal()
    c, more = operator_journal()
    refusal = refused(c, reason="preflight: edge unreachable", actor="bob", now=T0)
    written = {e.kind for e in [*events, *more, *refusal.events]}
    assert NOTIFIED - {"completed", "failed"} <= written


def test_new_kinds_carry_their_stage_and_share() -> None:
    c, events = operator_journal()
    sent = [body(c, e) for e in events if e.kind in NOTIFIED]
    assert [(b["event"], b["stage"], b["share"]) for b in sent] == [
        ("started", None, 0),
        ("stage_applied", 0, 10),
        ("paused", None, None),
        ("resumed", None, None),
        ("stage_applied", 1, 100),
        ("baking", 1, 100),
        ("drift", None, None),
        ("paused", None, None),
        ("alarm", None, None),
    ]
    drift = next(b for b in sent if b["event"] == "drift")
    assert "holds something the daemon did not write" in drift["message"]
    assert text(c, next(e for e in events if e.kind == "drift")).startswith(":warning: ")
    refusal = refused(c, reason="preflight: edge unreachable", actor="bob", now=T0)
    (event,) = refusal.events
    b = body(refusal.cutover, replace(event, seq=1))
    assert (b["event"], b["stage"], b["share"]) == ("refused", None, 0)
    assert b["reason"] == "preflight: edge unreachable"


def test_json_bodies_carry_id_colors_stage_share_and_reason() -> None:
    c, events = journal()
    sent = [body(c, e) for e in events if e.kind in NOTIFIED]
    assert [(b["event"], b["stage"], b["share"]) for b in sent] == [
        ("started", None, 0),
        ("stage_applied", 0, 10),
        ("stage_applied", 1, 50),
        ("approval_needed", 1, 50),
        ("rolled_back", 1, 0),
    ]
    rolled_back = sent[-1]
    seq = next(e.seq for e in events if e.kind == "rolled_back")
    assert rolled_back == {
        "id": f"co-1:{seq}",
        "event": "rolled_back",
        "service": "checkout",
        "cutover": "co-1",
        "kind": "cutover",
        "from": "blue",
        "to": "green",
        "stage": 1,
        "stages": 2,
        "share": 0,
        "reason": rolled_back["reason"],
        "message": rolled_back["message"],
        "at": rolled_back["at"],
    }
    assert "health" in rolled_back["reason"]
    assert rolled_back["message"].startswith("rolled back: every router reads 100% blue")
    assert rolled_back["at"].endswith("+00:00")
    assert len({b["id"] for b in sent}) == len(sent)


def test_failed_and_completed_take_the_stage_of_the_record() -> None:
    c, _ = journal()
    failed = Event(kind="failed", message="not verified", at=T0, data={"reason": "x"}, seq=9)
    assert (body(c, failed)["stage"], body(c, failed)["share"]) == (1, None)
    done = Event(kind="completed", message="completed", at=T0, seq=10)
    assert (body(c, done)["stage"], body(c, done)["share"]) == (1, 100)


def test_a_resend_has_the_same_body_whatever_the_record_did_since() -> None:
    c, events = journal()
    started = events[0]
    later = replace(c, stage_index=0, updated_at=T0 + 99)
    assert body(c, started) == body(later, started)


def test_event_ids_are_cutover_and_seq() -> None:
    assert event_id("co-ab12", 7) == "co-ab12:7"


def test_slack_format_is_a_text_line_with_the_event_id() -> None:
    c, events = journal()
    rolled_back = next(e for e in events if e.kind == "rolled_back")
    line = text(c, rolled_back)
    assert payload(c, rolled_back, "slack") == {"text": line}
    assert line.startswith(":rotating_light: *checkout* blue → green: rolled back:")
    assert line.endswith(f"(`co-1:{rolled_back.seq}`)")
    assert payload(c, rolled_back, "json") == body(c, rolled_back)


def hook(index: int = 0, **spec: str) -> Webhook:
    values = {"type": "webhook", "url": "https://user:pw@hooks.example.com:8443/T0/B0/s3cret"}
    return Webhook(
        secrets=Redactor(),
        spec=NotifySpec.model_validate({**values, **spec}),
        index=index,
        policy=RetryPolicy(),
    )


def test_webhook_identity_never_shows_the_url_path() -> None:
    a = hook()
    assert a.name == "notify[0]"
    assert a.target == "https://hooks.example.com:8443"
    assert "s3cret" not in a.key and "pw" not in a.key
    assert hook(index=3).key == a.key  # reordering the config keeps the cursors
    assert hook(format="slack").key != a.key
    assert hook(url="https://hooks.example.com/other").key != a.key


def test_token_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("tok-file\n")
    assert hook(token_file=str(tmp_path / "token"))._token() == "tok-file"
    monkeypatch.setenv("HOOK_TOKEN", "tok-env")
    assert hook(token_env="HOOK_TOKEN")._token() == "tok-env"
    assert hook()._token() is None


def test_a_missing_or_empty_token_is_a_failure_that_names_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DeliveryError, match=r"cannot read token_file .*No such file") as info:
        hook(token_file=str(tmp_path / "missing"))._token()
    assert not info.value.retryable
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(DeliveryError, match="is empty"):
        hook(token_file=str(tmp_path / "empty"))._token()
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    with pytest.raises(DeliveryError, match=r"\$NO_SUCH_TOKEN is empty"):
        hook(token_env="NO_SUCH_TOKEN")._token()
