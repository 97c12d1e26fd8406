"""The live terminal view: rendered from the API's answers, read through the API models as the
CLI reads them, to a recording rich Console."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from copy import deepcopy
from typing import Any

import pytest
from rich.console import Console

from cutover.api.models import Cutover, ServiceList
from cutover.watch import follow, render, render_services, watch_services

AT = 1_795_680_000.0
REASON = (
    "check new-health failed 2 of the last 5 measurements "
    "(value 0.001; HTTP 500 from http://127.0.0.1:8001/green/healthz (expected 200))"
)


def event(seq: int, kind: str, message: str) -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "at": AT + seq, "message": message, "data": {}}


EVENTS = [
    event(1, "started", "cutover of checkout from blue to green started by api"),
    event(2, "stage_started", "stage 1/3: shifting to 10% green"),
    event(3, "stage_applied", "every router verified at 10% green"),
    event(4, "stage_started", "stage 2/3: shifting to 50% green"),
    event(5, "stage_applied", "every router verified at 50% green"),
]


def cutover(**changes: Any) -> dict[str, Any]:
    """A cutover as ``GET /v1/cutovers/{id}`` answers it: holding at stage 2 of 3."""
    c: dict[str, Any] = {
        "id": "co-0123456789ab",
        "service": "checkout",
        "kind": "cutover",
        "from": "blue",
        "to": "green",
        "state": "running",
        "phase": "holding",
        "stage": 1,
        "stages": [
            {"weight": 10, "hold": 60.0, "approval": False, "approval_timeout": None},
            {"weight": 50, "hold": 120.0, "approval": True, "approval_timeout": None},
            {"weight": 100, "hold": 300.0, "approval": False, "approval_timeout": None},
        ],
        "hold_elapsed": 42.5,
        "ttl_wait": 0.0,
        "ttl_wait_left": 0.0,
        "routers": [
            {
                "name": "edge",
                "type": "haproxy",
                "desired": 50,
                "observed": 50.0,
                "detail": "blue 2/2 up, green 2/2 up",
                "drift": False,
                "error": "",
                "ttl": 0.0,
                "clients_from": None,
            },
            {
                "name": "dns",
                "type": "rfc2136",
                "desired": 50,
                "observed": 33.3,
                "detail": "address share 33.3%",
                "drift": False,
                "error": "",
                "ttl": 30.0,
                "clients_from": AT + 30,
            },
        ],
        "checks": [
            {
                "name": "new-health",
                "status": "pass",
                "value": 0.00123,
                "detail": "HTTP 200 from http://127.0.0.1:8001/green/healthz in 1 ms",
                "at": AT,
                "counting": True,
                "failures_in_window": 0,
                "failure_limit": 2,
                "dry_run": False,
                "history": [
                    {"verdict": "pass", "value": v, "at": AT + i}
                    for i, v in enumerate([0.001, 0.002, 0.004, 0.003])
                ],
            },
            {
                "name": "error-ratio",
                "status": "inconclusive",
                "value": None,
                "detail": "no data (empty result)",
                "at": AT,
                "counting": True,
                "failures_in_window": 1,
                "failure_limit": 2,
                "dry_run": True,
                "history": [{"verdict": "fail", "value": None, "at": AT}],
            },
        ],
        "bake": 0.0,
        "bake_left": 0.0,
        "reason": None,
        "store_error": None,
        "created_at": AT - 300,
        "updated_at": AT,
        "finished_at": None,
        "revision": 9,
        "events": deepcopy(EVENTS),
    }
    c.update(changes)
    return c


def text_of(c: dict[str, Any]) -> str:
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(render(Cutover.model_validate(c)))
    return console.export_text()


def line_with(text: str, needle: str) -> str:
    (line,) = [ln for ln in text.splitlines() if needle in ln]
    return line


def stage_row(text: str, n: int) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.lstrip("▶ ").startswith(f"{n}/3 ")]
    return line


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")[1:-1]]


def flat(text: str) -> str:
    """The text with table borders and wrapping gone, to find a wrapped cell's words."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Event times are shown in local time: pin it."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_mid_cutover_shows_header_stages_routers_checks_and_events() -> None:
    text = text_of(cutover())
    assert text.splitlines()[0].split() == [
        "checkout",
        "blue",
        "→",
        "green",
        "running",
        "(holding)",
        "cutover",
        "co-0123456789ab",
    ]
    # one row per stage: done, current with its hold progress, pending
    assert stage_row(text, 1).split()[-1] == "done"
    current = stage_row(text, 2)
    assert current.split()[:4] == ["▶", "2/3", "50%", "120s"] and "+approval" in current
    assert current.rstrip().endswith("hold 42.5s of 120s")
    assert stage_row(text, 3).split()[-1] == "pending"
    # routers: desired vs observed, and when DNS clients can have moved
    assert cells(line_with(text, "haproxy")) == [
        "edge",
        "haproxy",
        "50%",
        "50%",
        "blue 2/2 up, green 2/2 up",
    ]
    assert cells(line_with(text, "rfc2136"))[:4] == ["dns", "rfc2136", "50%", "33.3%"]
    assert "address share 33.3% · DNS clients from 08:00:30 at the earliest (TTL 30s)" in flat(text)
    # checks: verdict, last value, failures/limit, a sparkline, what it was judged against
    assert cells(line_with(text, "new-health"))[:5] == [
        "new-health",
        "pass",
        "0.00123",
        "0/2",
        "▁▃█▆",
    ]
    assert "HTTP 200 from http://127.0.0.1:8001/green/healthz in 1 ms" in flat(text).replace(
        "/he althz", "/healthz"
    )
    assert cells(line_with(text, "error-ratio"))[:5] == [
        "error-ratio (dry run)",
        "inconclusive",
        "-",
        "1/2",
        "·",
    ]
    # the last events, oldest first
    assert line_with(text, "every router verified at 50% green").split()[:2] == [
        "08:00:05",
        "stage_applied",
    ]
    assert "ROLLED BACK" not in text


def test_rolled_back_shows_a_red_panel_with_the_reason() -> None:
    c = cutover(state="rolled_back", reason=REASON)
    c["events"] += [
        event(6, "rollback_started", f"rolling back: {REASON}"),
        event(7, "rolled_back", "rolled back: every router reads 100% blue"),
    ]
    text = flat(text_of(c))
    assert "╭─ ROLLED BACK ─" in text
    assert REASON in text  # wrapped inside the panel
    assert "rolled back from here" in text
    assert "(holding)" not in text  # the phase means nothing once it ended
    console = Console(record=True, width=100, file=io.StringIO(), force_terminal=True)
    console.print(render(Cutover.model_validate(c)))
    styled = console.export_text(styles=True)
    assert "\x1b[31m╭─" in styled  # red


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"state": "failed", "reason": REASON}, "ROLLBACK NOT VERIFIED (failed)"),
        ({"state": "rolling_back", "reason": REASON}, "rolling back"),
        ({"state": "refused", "reason": REASON}, "REFUSED (no traffic moved)"),
        ({"state": "awaiting_approval"}, "cutover promote checkout"),
        ({"state": "paused"}, "hold 42.5s of 120s (paused)"),
        ({"phase": "shifting"}, "▶ 2/3 50% 120s +approval shifting"),
        ({"state": "completed", "stage": 2}, "3/3 100% 300s"),
        (
            {"phase": "preflight", "stage": 0, "ttl_wait": 300.0, "ttl_wait_left": 250.0},
            "waiting out the old DNS TTL before stage 1: 250s of 300s left",
        ),
    ],
)
def test_each_state_says_what_is_going_on(changes: dict[str, Any], expected: str) -> None:
    text = text_of(cutover(**changes))
    assert expected in flat(text), text
    if changes.get("state") == "completed":
        assert [stage_row(text, i).split()[-1] for i in (1, 2, 3)] == ["done"] * 3


def test_an_unverifiable_router_and_drift_are_named() -> None:
    c = cutover()
    c["routers"][0].update(observed=None, drift=True, error="connection refused")
    edge = flat(text_of(c))
    assert "cannot verify" in edge and "DRIFT" in edge and "error: connection refused" in edge


def test_services_overview() -> None:
    body = {
        "services": [
            {"name": "checkout", "live": "blue", "cutover": cutover()},
            {"name": "search", "live": "green", "cutover": None},
        ]
    }
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(render_services(ServiceList.model_validate(body)))
    text = console.export_text()
    assert cells(line_with(text, "checkout")) == [
        "checkout",
        "blue",
        "co-0123456789ab blue → green",
        "running",
        "2/3",
        "50% green",
    ]
    assert "no cutover yet" in line_with(text, "search")


class Feed:
    """A fetch that answers a fixed series of cutovers, then repeats the last one."""

    def __init__(self, *states: dict[str, Any]) -> None:
        self.states = list(states)
        self.calls = 0

    async def __call__(self) -> Cutover:
        self.calls += 1
        return Cutover.model_validate(
            self.states.pop(0) if len(self.states) > 1 else self.states[0]
        )


async def test_follow_off_a_terminal_prints_each_event_once_then_the_final_view() -> None:
    first = cutover(stage=0, events=deepcopy(EVENTS[:3]))
    last = cutover(state="completed", stage=2)
    last["events"] += [event(6, "completed", "completed: green is live for checkout")]
    out = io.StringIO()
    console = Console(file=out, width=100)
    assert not console.is_terminal

    c = await follow(Feed(first, cutover(), last), console=console, interval=0)

    assert c == Cutover.model_validate(last)
    text = out.getvalue()
    for e in last["events"]:
        assert text.count(e["message"]) == 2  # once as it came, once in the final view
    assert "\x1b[" not in text  # plain text for logs
    final = text[text.index("checkout  blue → green") :]
    assert "completed" in final.splitlines()[0]


async def test_follow_on_a_terminal_redraws_until_rolled_back() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, record=True)
    feed = Feed(cutover(), cutover(), cutover(state="rolled_back", reason=REASON))

    c = await follow(feed, console=console, interval=0)

    assert c.state == "rolled_back" and feed.calls == 3
    assert "ROLLED BACK" in console.export_text()
    assert "\x1b[?25l" in out.getvalue()  # the live display hid the cursor to redraw


async def test_follow_gives_up_after_its_limit_with_the_last_state() -> None:
    feed = Feed(cutover())
    c = await follow(feed, console=Console(file=io.StringIO()), limit=0.05, interval=0.01)
    assert c.state == "running" and feed.calls >= 2


async def test_watch_services_off_a_terminal_prints_only_changes() -> None:
    quiet = {"services": [{"name": "checkout", "live": "blue", "cutover": None}]}
    moving = {"services": [{"name": "checkout", "live": "blue", "cutover": cutover()}]}
    answers = [quiet, quiet, moving, moving]

    class Stop(Exception):
        """Ends the endless watch, as Ctrl-C would."""

    async def fetch() -> ServiceList:
        if not answers:
            raise Stop
        return ServiceList.model_validate(answers.pop(0))

    out = io.StringIO()
    with pytest.raises(Stop):
        await watch_services(fetch, console=Console(file=out, width=100), interval=0)
    text = out.getvalue()
    assert text.count("no cutover yet") == 1 and text.count("co-0123456789ab") == 1


def test_a_bake_is_a_row_after_the_stages_with_what_is_left() -> None:
    baking = text_of(cutover(stage=2, phase="baking", bake=600.0, bake_left=450.0))
    assert "▶ bake 100% 600s" in flat(baking) and "baking, 450s left of 600s" in flat(baking)
    assert [stage_row(baking, i).split()[-1] for i in (1, 2, 3)] == ["done"] * 3
    pending = text_of(cutover(bake=600.0, bake_left=600.0))
    assert "bake 100% 600s" in flat(pending) and "pending" in flat(pending).split("bake")[-1]
    assert "bake" not in flat(text_of(cutover()))


def test_a_drift_pause_says_how_to_resume_or_abort() -> None:
    c = cutover(state="paused")
    c["routers"][0]["drift"] = True
    text = flat(text_of(c))
    assert "paused on drift" in text
    assert "cutover resume checkout --reapply" in text and "cutover abort checkout" in text
