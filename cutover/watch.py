"""The live terminal view of a cutover, for ``cutover status --watch`` and ``start --wait``.

Drawn only from the API's cutover answer (PRODUCT.md, ``GET /v1/cutovers/{id}``) read through
:class:`cutover.api.models.Cutover`, so the CLI shows exactly what the API and the status page
show and this module needs nothing of the engine. :func:`render` is pure (the answer in, a rich
renderable out) and is what the tests look at; :func:`follow` polls and redraws it in place
on a terminal. Piped into a file or a CI log there is nothing to redraw: it prints each new
event as one line and the whole view once at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cutover.api.models import CheckMeasurement, Cutover, Event, ServiceList

__all__ = ["TERMINAL", "follow", "render", "render_services", "watch_services"]

# Where following stops: the CLI's exit code tells these apart. ``failed`` is not terminal for
# the daemon (it keeps retrying the rollback), but it is the end of what a pipeline waits for.
TERMINAL = frozenset({"completed", "rolled_back", "failed", "refused"})
EVENTS_SHOWN = 6
COLOR_STYLE = {"blue": "bold blue", "green": "bold green"}
VERDICT_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow", "error": "magenta"}
STATE_STYLE = {
    "running": "bold cyan",
    "awaiting_approval": "bold magenta",
    "paused": "bold yellow",
    "rolling_back": "bold red",
    "completed": "bold green",
    "rolled_back": "bold red",
    "failed": "bold red",
}
SPARK = "▁▂▃▄▅▆▇█"

FetchCutover = Callable[[], Awaitable[Cutover]]
FetchServices = Callable[[], Awaitable[ServiceList]]


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:g}%"


def _secs(s: float) -> str:
    return f"{s:g}s"


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _color(name: str) -> Text:
    return Text(name, style=COLOR_STYLE.get(name, "bold"))


def _header(c: Cutover) -> Text:
    state = c.state
    head = Text.assemble(
        (c.service, "bold"),
        "  ",
        _color(c.from_),
        " → ",
        _color(c.to),
        "  ",
        (state, STATE_STYLE.get(state, "bold")),
    )
    if state == "running":
        head.append(f" ({c.phase})", style="dim")
    head.append(f"   {c.kind} {c.id}", style="dim")
    return head


def _banner(c: Cutover) -> Panel | None:
    state = c.state
    reason = Text(c.reason or "no reason recorded")
    if state == "rolled_back":
        return Panel(
            reason, title="ROLLED BACK", title_align="left", style="red", border_style="red"
        )
    if state == "failed":
        reason.append("\nthe daemon keeps retrying each unverified router; see the runbook")
        return Panel(
            reason, title="ROLLBACK NOT VERIFIED (failed)", title_align="left", style="bold red"
        )
    if state == "rolling_back":
        return Panel(reason, title="rolling back", title_align="left", border_style="red")
    if state == "refused":  # by preflight: nothing moved
        return Panel(reason, title="REFUSED (no traffic moved)", title_align="left", style="yellow")
    if state == "awaiting_approval":
        hint = Text(f"cutover promote {c.service}")
        return Panel(hint, title="waiting for approval", title_align="left", border_style="magenta")
    drifted = [r.name for r in c.routers if r.drift]
    if state == "paused" and drifted:
        hint = Text(
            f"{', '.join(drifted)} hold(s) what the daemon did not write. "
            f"`cutover resume {c.service} --reapply` writes the stage again; "
            f"`cutover abort {c.service}` rolls back"
        )
        return Panel(hint, title="paused on drift", title_align="left", border_style="yellow")
    return None


def _stages(c: Cutover) -> Table:
    table = Table(box=None, pad_edge=False, show_header=False)
    for column in ("stage", "share", "hold", "bar", "where"):
        table.add_column(column, no_wrap=column != "where")
    # every stage is done once the bake runs after the last one
    done_all = c.state == "completed" or c.phase == "baking"
    ending = c.state in ("rolling_back", "rolled_back", "failed")
    current_style = "red" if ending else "cyan"
    for i, s in enumerate(c.stages):
        hold = s.hold
        gate = " +approval" if s.approval else ""
        if done_all or i < c.stage:
            bar = ProgressBar(total=1, completed=1, width=24, finished_style="green")
            where = Text("done", style="green")
        elif i == c.stage:
            elapsed = hold if c.state == "awaiting_approval" else c.hold_elapsed
            bar = ProgressBar(
                total=max(hold, 1e-9),
                completed=min(elapsed, hold) if c.phase == "holding" else 0,
                width=24,
                complete_style=current_style,
                finished_style=current_style,
            )
            where = Text(_current_note(c, elapsed, hold), style=current_style)
        else:
            bar = ProgressBar(total=1, completed=0, width=24)
            where = Text("pending", style="dim")
        marker = "▶" if i == c.stage and not done_all else " "
        table.add_row(
            f"{marker} {i + 1}/{len(c.stages)}",
            f"{s.weight}%",
            _secs(hold) + gate,
            bar,
            where,
        )
    if c.bake:
        table.add_row(*_bake_row(c, current_style))
    return table


def _bake_row(c: Cutover, style: str) -> tuple[str, str, str, ProgressBar, Text]:
    """The bake after the last stage: at 100 % with every check running (and acting)."""
    bake = c.bake
    baked = bake - c.bake_left
    baking = c.phase == "baking" and c.state in ("running", "paused")
    if c.state == "completed":
        where = Text("done", style="green")
    elif baking:
        paused = " (paused)" if c.state == "paused" else ""
        where = Text(f"baking, {bake - baked:.0f}s left of {_secs(bake)}{paused}", style=style)
    else:
        where = Text("pending", style="dim")
    bar = ProgressBar(
        total=max(bake, 1e-9),
        completed=min(baked, bake),
        width=24,
        complete_style=style,
        finished_style="green" if c.state == "completed" else style,
    )
    return ("▶ bake" if baking else "  bake", "100%", _secs(bake), bar, where)


def _current_note(c: Cutover, elapsed: float, hold: float) -> str:
    state, phase = c.state.value, c.phase.value
    if state in ("rolling_back", "rolled_back", "failed"):
        return f"{state.replace('_', ' ')} from here"
    if state == "awaiting_approval":
        return "hold done, awaiting approval"
    if phase != "holding":
        return phase
    note = f"hold {elapsed:.1f}s of {_secs(hold)}"
    return f"{note} (paused)" if state == "paused" else note


def _routers(c: Cutover) -> Table:
    table = Table(title="routers", title_justify="left", expand=False)
    table.add_column("router")
    table.add_column("type", style="dim")
    table.add_column(f"desired {c.to}", justify="right")
    table.add_column("observed", justify="right")
    table.add_column("detail", overflow="fold")
    for r in c.routers:
        detail = Text(r.detail)
        if r.clients_from:
            detail.append(
                f" · DNS clients from {_clock(r.clients_from)} at the earliest (TTL {r.ttl:g}s)"
            )
        if r.drift:
            detail.append(" DRIFT", style="bold red")
        if r.error:
            detail.append(f" error: {r.error}", style="red")
        observed = "cannot verify" if r.observed is None else _pct(r.observed)
        table.add_row(r.name, r.type, _pct(r.desired), observed, detail)
    return table


def _spark(history: list[CheckMeasurement]) -> Text:
    """One character per measurement: its height the value, its color the verdict."""
    values = [m.value for m in history if m.value is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    line = Text()
    for m in history:
        style = VERDICT_STYLE.get(m.verdict, "dim")
        if m.value is None:
            line.append("·", style=style)
            continue
        level = 0 if hi <= lo else round((m.value - lo) / (hi - lo) * (len(SPARK) - 1))
        line.append(SPARK[level], style=style)
    return line


def _checks(c: Cutover) -> Table:
    table = Table(title="checks", title_justify="left", expand=False)
    table.add_column("check")
    table.add_column("verdict")
    table.add_column("value", justify="right")
    table.add_column("fails", justify="right")
    table.add_column("recent")
    table.add_column("detail", overflow="fold")
    for ch in c.checks:
        status = ch.status or "not measured"
        name = Text(ch.name)
        if ch.dry_run:
            name.append(" (dry run)", style="dim")
        table.add_row(
            name,
            Text(status, style=VERDICT_STYLE.get(status, "dim")),
            _num(ch.value),
            f"{ch.failures_in_window}/{ch.failure_limit or '-'}",
            _spark(ch.history[-20:]),
            ch.detail,
        )
    return table


def _events(events: list[Event]) -> Table:
    table = Table(
        box=None, show_header=False, pad_edge=False, title="last events", title_justify="left"
    )
    table.add_column("at", style="dim", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("message", overflow="fold")
    for e in events[-EVENTS_SHOWN:]:
        table.add_row(_clock(e.at), e.kind, e.message)
    return table


def render(c: Cutover) -> RenderableType:
    """The whole view of one cutover, from its API answer."""
    parts: list[RenderableType] = [_header(c)]
    banner = _banner(c)
    if banner is not None:
        parts.append(banner)
    parts.append(_stages(c))
    if c.ttl_wait_left:
        parts.append(
            Text(
                f"waiting out the old DNS TTL before stage 1: {c.ttl_wait_left:.0f}s of "
                f"{c.ttl_wait:g}s left",
                style="yellow",
            )
        )
    parts.append(_routers(c))
    if c.checks:
        parts.append(_checks(c))
    if c.events:
        parts.append(_events(c.events))
    return Group(*parts)


def render_services(body: ServiceList) -> RenderableType:
    """Every service at a glance, from ``GET /v1/services``."""
    table = Table(title="services", title_justify="left")
    for column in ("service", "live", "cutover", "state", "stage", "share"):
        table.add_column(column)
    for s in body.services:
        c = s.cutover
        if c is None:
            table.add_row(s.name, _color(s.live), Text("no cutover yet", style="dim"))
            continue
        state = Text(c.state, style=STATE_STYLE.get(c.state, "bold"))
        table.add_row(
            s.name,
            _color(s.live),
            f"{c.id} {c.from_} → {c.to}",
            state,
            f"{c.stage + 1}/{len(c.stages)}",
            f"{c.stages[c.stage].weight}% {c.to}",
        )
    return table


def _new_events(console: Console, c: Cutover, seen: int) -> int:
    for e in c.events:
        if e.seq > seen:
            console.print(f"{_clock(e.at)}  {e.kind:<17} {e.message}", highlight=False)
            seen = e.seq
    return seen


async def follow(
    fetch: FetchCutover,
    *,
    console: Console | None = None,
    limit: float | None = None,
    interval: float = 0.5,
) -> Cutover:
    """Show the cutover ``fetch`` returns until it is in :data:`TERMINAL` or ``limit`` seconds
    have passed (``--timeout``); return its last answer: the caller picks the exit code from it,
    so unlike a cancellation the last state is known when the limit ends the wait."""
    console = console or Console()
    deadline = None if limit is None else time.monotonic() + limit

    def over(c: Cutover) -> bool:
        return c.state in TERMINAL or (deadline is not None and time.monotonic() >= deadline)

    c = await fetch()
    if console.is_terminal:
        # redrawn on our own schedule (auto_refresh=False): no refresh thread beside the loop
        with Live(render(c), console=console, auto_refresh=False) as live:
            while not over(c):
                await asyncio.sleep(interval)
                c = await fetch()
                live.update(render(c), refresh=True)
        return c
    seen = _new_events(console, c, 0)
    while not over(c):
        await asyncio.sleep(interval)
        c = await fetch()
        seen = _new_events(console, c, seen)
    console.print(render(c))
    return c


async def watch_services(
    fetch: FetchServices, *, console: Console | None = None, interval: float = 1.0
) -> NoReturn:
    """Redraw every service from ``GET /v1/services`` until interrupted (Ctrl-C).

    Not on a terminal, the overview is printed again only when it changed.
    """
    console = console or Console()
    if console.is_terminal:
        with Live(render_services(await fetch()), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(render_services(await fetch()), refresh=True)
    last = ""
    while True:
        with console.capture() as capture:
            console.print(render_services(await fetch()))
        text = capture.get()
        if text != last:
            console.out(text, end="", highlight=False)
            last = text
        await asyncio.sleep(interval)
