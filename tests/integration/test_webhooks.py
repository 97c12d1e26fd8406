"""Webhook delivery against real aiohttp receivers on loopback.

* A receiver that never answers does not slow a rollback down: the real :class:`Runner`, with
  FakeRouter/FakeCheck/FakeClock, rolls back in the same fake time and about the same real
  time with and without it (and a listener that awaited the POST inline would not).
* At least once from the journal: what a receiver did not acknowledge is sent again by a new
  Notifier on the same store file (a daemon restart); what it acknowledged is not.
* Event ids for de-duplication, Slack format, bearer tokens kept out of logs, bounded retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from cutover.config import NotifySpec
from cutover.core import machine
from cutover.core.machine import Command
from cutover.core.model import CheckPolicy, Cutover, Event, Plan, Stage, Status, Verdict
from cutover.core.refusal import refused
from cutover.engine.runner import Runner
from cutover.notify import NOTIFIED, Notifier, RetryPolicy
from cutover.notify.webhook import Webhook
from cutover.observability.logging import Redactor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from cutover.testing import FakeCheck, FakeClock, FakeRouter

GUARD = 20.0  # real seconds any one test may take
FAST = RetryPolicy(timeout=2.0, attempts=3, first=0.02, cap=0.05, pause=0.3, pause_max=0.3)


@dataclass
class Received:
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """A webhook receiver on a free loopback port. It answers each request with the next of
    ``answers`` (then ``default``), or, with ``hang``, never answers."""

    default: int = 200
    hang: bool = False
    answers: deque[int] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    hanging: int = 0
    url: str = ""
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.json()))
        if self.hang:
            self.hanging += 1
            await self._release.wait()
        return web.json_response(
            {}, status=self.answers.popleft() if self.answers else self.default
        )

    @property
    def ids(self) -> list[str]:
        return [r.headers["X-Cutover-Event-Id"] for r in self.received]


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    made: list[Receiver] = []

    async def make(**kw: Any) -> Receiver:
        made.append(await Receiver(**kw).start())
        return made[-1]

    try:
        yield make
    finally:
        for r in made:
            await r.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(path=str(tmp_path / "state.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


def spec(url: str, **kw: Any) -> NotifySpec:
    return NotifySpec.model_validate({"type": "webhook", "url": url, **kw})


def key(url: str) -> str:
    """The webhook's delivery-cursor key in the store."""
    return Webhook(secrets=Redactor(), spec=spec(url), index=0, policy=FAST).key


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


PLAN = Plan(
    stages=(Stage(weight=10, hold=10.0), Stage(weight=100, hold=10.0)),
    checks=(CheckPolicy(name="health", interval=1.0, failure_limit=2, window=5),),
    routers=("edge", "dns"),
    rollback_timeout=5.0,
)


def new_cutover(cutover_id: str, clock: FakeClock) -> machine.Step:
    return machine.new_cutover(
        cutover_id=cutover_id,
        service="checkout",
        from_color="blue",
        to_color="green",
        plan=PLAN,
        router_kinds={"edge": "fake", "dns": "fake"},
        router_states={"edge": {"share": "w0"}, "dns": {"share": "w0"}},
        now=clock.time(),
    )


async def create(
    store: SqliteStore, cutover_id: str, clock: FakeClock
) -> tuple[Cutover, list[Event]]:
    made = new_cutover(cutover_id, clock)
    return await store.create(made.cutover, list(made.events)), list(made.events)


# --- a dead webhook never delays a rollback -------------------------------------------------


Listener = Callable[[Cutover, list[Event]], Awaitable[None]]


@dataclass
class Timing:
    fake: float  # fake seconds from the failing check to rolled_back
    real: float  # real seconds the same took
    kinds: list[str]


async def rollback_timing(
    store: SqliteStore,
    cutover_id: str,
    listener: Listener | None,
    holding: Callable[[Runner], Awaitable[object]] | None = None,
) -> Timing:
    """Run a cutover with the real Runner to stage 1's hold (then ``holding``, e.g. operator
    commands), make its check fail and time the rollback, on the fake clock and in real
    time. Fake time stands still while a listener runs, so whatever a listener makes the
    runner wait shows in real time."""
    clock = FakeClock()
    routers = {name: FakeRouter(name) for name in PLAN.routers}
    health = FakeCheck("health", clock=clock)
    c, events = await create(store, cutover_id, clock)
    idle = asyncio.Event()
    idle.set()

    async def tracked(c: Cutover, events: list[Event]) -> None:
        if listener is None:
            return
        idle.clear()  # the runner handles one item at a time: calls never overlap
        try:
            await listener(c, events)
        finally:
            idle.set()

    await tracked(c, events)  # as Supervisor._launch tells its listeners
    runner = Runner(
        cutover=c,
        routers=routers,
        checks={"health": health},
        store=store,
        clock=clock,
        on_change=tracked,
    )

    async def settle() -> None:
        for _ in range(3):
            await FakeClock.settle()
            await store.get(cutover_id)  # the store's one thread: waits for queued writes
            await idle.wait()

    task = asyncio.create_task(runner.run(restarted=False))
    try:
        await clock.advance_until(
            lambda: runner.cutover.phase.value == "holding", within=30, settle=settle
        )
        if holding is not None:
            await holding(runner)
            await settle()
        health.set(Verdict.FAIL, 0.0)
        t0, fake0 = time.perf_counter(), clock.monotonic()
        await clock.advance_until(
            lambda: runner.cutover.status is Status.ROLLED_BACK, within=30, settle=settle
        )
        timing = Timing(
            fake=clock.monotonic() - fake0,
            real=time.perf_counter() - t0,
            kinds=[e.kind for e in await store.events(cutover_id)],
        )
        assert all(r.state == {"share": "maint"} for r in routers.values())
        return timing
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_hanging_webhook_does_not_delay_a_rollback(
    store: SqliteStore, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    async with asyncio.timeout(GUARD):
        baseline = await rollback_timing(store, "co-base", None)

        dead = await receivers(hang=True)
        policy = RetryPolicy(timeout=30.0, attempts=4)  # each POST hangs for the whole test
        async with Notifier(
            secrets=Redactor(), specs=[spec(dead.url)], store=store, policy=policy
        ) as notifier:
            with_hook = await rollback_timing(store, "co-hook", notifier.wake)
            assert dead.hanging == 1  # the POST of 'started' hangs throughout the rollback
            assert dead.ids == ["co-hook:1"]

        # a listener that awaited the POST itself is what the Notifier must not be
        async def inline(c: Cutover, events: list[Event]) -> None:
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session,
                    session.post(dead.url, json={"n": len(events)}),
                ):
                    pass

        blocking = await rollback_timing(store, "co-inline", inline)

    print(
        f"\nrollback: fake {baseline.fake:.2f}s / real {baseline.real:.3f}s without webhooks; "
        f"fake {with_hook.fake:.2f}s / real {with_hook.real:.3f}s with a hanging webhook; "
        f"fake {blocking.fake:.2f}s / real {blocking.real:.3f}s with an inline-awaiting listener"
    )
    assert with_hook.kinds == baseline.kinds
    assert "rolled_back" in baseline.kinds
    assert with_hook.fake == pytest.approx(baseline.fake, abs=0.25)  # one tick
    assert with_hook.real < baseline.real + 0.25
    assert blocking.real > baseline.real + 0.5  # the test can tell a blocking listener apart


# --- per-webhook events: filter --------------------------------------------------------------


async def test_a_webhook_gets_only_the_kinds_it_lists_and_another_gets_all(
    store: SqliteStore, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    async def pause_and_resume(runner: Runner) -> None:
        await runner.command(Command(action="pause", actor="alice"))
        await runner.command(Command(action="resume", actor="alice"))

    async with asyncio.timeout(GUARD):
        every = await receivers()
        only = await receivers()
        specs = [spec(every.url), spec(only.url, events=["rolled_back"])]
        async with Notifier(secrets=Redactor(), specs=specs, store=store, policy=FAST) as notifier:
            await rollback_timing(store, "co-ev", notifier.wake, pause_and_resume)
            journal = await store.events("co-ev")
            notified = [e for e in journal if e.kind in NOTIFIED]
            await until(lambda: len(every.received) == len(notified))
            await until(lambda: len(only.received) == 1)
            await asyncio.sleep(0.3)  # nothing more comes
            owed = await store.undelivered(key(only.url))
    assert [r.body["event"] for r in every.received] == [e.kind for e in notified]
    assert {"paused", "resumed", "rolled_back"} <= {e.kind for e in notified}
    assert {e.kind for e in journal} - NOTIFIED  # kinds no webhook is sent were written too
    (got,) = only.received
    rolled_back = next(e for e in journal if e.kind == "rolled_back")
    assert got.body["event"] == "rolled_back"
    assert got.body["id"] == f"co-ev:{rolled_back.seq}" == every.received[-1].body["id"]
    assert [e for _, e in owed if e.seq <= rolled_back.seq] == []  # its cursor passed the rest


async def test_a_refused_start_is_sent_to_webhooks_that_list_it(
    store: SqliteStore, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    async with asyncio.timeout(GUARD):
        every = await receivers()
        oncall = await receivers()
        specs = [spec(every.url), spec(oncall.url, events=["rolled_back", "failed"])]
        async with Notifier(secrets=Redactor(), specs=specs, store=store, policy=FAST) as notifier:
            clock = FakeClock()
            draft = new_cutover("co-r", clock).cutover
            step = refused(draft, reason="router edge: unreachable", actor="bob", now=clock.time())
            c = await store.create(step.cutover, list(step.events))
            await notifier.wake(c, list(step.events))
            await until(lambda: len(every.received) == 1)
            await asyncio.sleep(0.3)  # nothing comes to the other
    (got,) = every.received
    assert (got.body["event"], got.body["share"]) == ("refused", 0)
    assert got.body["reason"] == "router edge: unreachable"
    assert oncall.received == []


# --- at least once, from the journal --------------------------------------------------------


async def test_a_restart_resends_what_was_not_acknowledged_only(
    tmp_path: Path, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    async with asyncio.timeout(GUARD):
        hook = await receivers(default=503, answers=deque([200]))
        path = str(tmp_path / "restart.db")
        clock = FakeClock()
        store = SqliteStore(path=path)
        await store.open()
        try:
            async with Notifier(
                secrets=Redactor(), specs=[spec(hook.url)], store=store, policy=FAST
            ) as first:
                c, events = await create(store, "co-1", clock)
                await first.wake(c, events)
                await until(lambda: len(hook.received) == 1)  # 'started', acknowledged
                stage = [
                    Event(kind="stage_started", message="stage 1", at=clock.time(), data={}),
                    Event(kind="stage_applied", message="at 10%", at=clock.time(), data={}),
                ]
                c = await store.save(c, stage)
                await first.wake(c, stage)
                await until(lambda: len(hook.received) == 1 + FAST.attempts)  # 503s
            # the daemon stops with stage_applied unacknowledged
        finally:
            await store.aclose()

        hook.default = 200
        store = SqliteStore(path=path)
        await store.open()
        try:
            async with Notifier(
                secrets=Redactor(), specs=[spec(hook.url)], store=store, policy=FAST
            ):
                await until(lambda: len(hook.received) == 2 + FAST.attempts)
                await asyncio.sleep(0.2)  # nothing more comes
            assert await store.undelivered(key(hook.url)) == []
        finally:
            await store.aclose()
    assert hook.ids == ["co-1:1", *["co-1:3"] * FAST.attempts, "co-1:3"]
    assert [r.body["event"] for r in hook.received] == [
        "started",
        *["stage_applied"] * (FAST.attempts + 1),
    ]  # stage_started (seq 2) is not a kind that is sent


async def test_a_redelivery_carries_the_same_id_and_body_for_de_duplication(
    store: SqliteStore, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    async with asyncio.timeout(GUARD):
        hook = await receivers(answers=deque([500]))
        async with Notifier(
            secrets=Redactor(), specs=[spec(hook.url)], store=store, policy=FAST
        ) as notifier:
            c, events = await create(store, "co-7", FakeClock())
            await notifier.wake(c, events)
            await until(lambda: len(hook.received) == 2)
    first, second = hook.received
    assert first.body == second.body
    assert first.headers["X-Cutover-Event-Id"] == second.headers["X-Cutover-Event-Id"]
    assert first.body["id"] == first.headers["X-Cutover-Event-Id"] == "co-7:1"
    assert first.body["event"] == "started"
    assert (first.body["service"], first.body["from"], first.body["to"]) == (
        "checkout",
        "blue",
        "green",
    )


async def test_events_go_out_in_journal_order_cutover_by_cutover(
    store: SqliteStore, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    async with asyncio.timeout(GUARD):
        hook = await receivers()
        async with Notifier(
            secrets=Redactor(), specs=[spec(hook.url)], store=store, policy=FAST
        ) as notifier:
            clock = FakeClock()
            a, _ = await create(store, "co-a", clock)
            done = [Event(kind="completed", message="done", at=clock.time())]
            await store.save(replace(a, status=Status.COMPLETED), done)
            b, more = await create(store, "co-b", clock)
            await notifier.wake(b, more)
            await until(lambda: len(hook.received) == 3)
    assert hook.ids == ["co-a:1", "co-a:2", "co-b:1"]
    assert hook.received[1].body["share"] == 100


# --- formats and tokens ---------------------------------------------------------------------


async def test_slack_format_posts_text_with_a_bearer_token_from_the_environment(
    store: SqliteStore,
    receivers: Callable[..., Awaitable[Receiver]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_HOOK_TOKEN", "xoxb-env-secret")
    async with asyncio.timeout(GUARD):
        hook = await receivers()
        specs = [spec(hook.url, format="slack", token_env="SLACK_HOOK_TOKEN")]
        async with Notifier(secrets=Redactor(), specs=specs, store=store, policy=FAST) as notifier:
            c, events = await create(store, "co-s", FakeClock())
            await notifier.wake(c, events)
            await until(lambda: len(hook.received) == 1)
    (got,) = hook.received
    assert set(got.body) == {"text"}
    assert got.body["text"].startswith(":rocket: *checkout* blue → green: cutover of checkout")
    assert "`co-s:1`" in got.body["text"]
    assert got.headers["Authorization"] == "Bearer xoxb-env-secret"
    assert got.headers["Content-Type"].startswith("application/json")


async def test_the_token_never_reaches_the_logs_even_when_delivery_fails(
    store: SqliteStore, receivers: Callable[..., Awaitable[Receiver]], tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("tok-file-secret\n")
    metrics = Metrics()
    async with asyncio.timeout(GUARD):
        hook = await receivers(default=401)
        specs = [spec(hook.url + "?key=url-secret", token_file=str(tmp_path / "token"))]
        with structlog.testing.capture_logs() as logs:
            async with Notifier(
                secrets=Redactor(), specs=specs, store=store, metrics=metrics, policy=FAST
            ) as n:
                c, events = await create(store, "co-t", FakeClock())
                await n.wake(c, events)
                await until(lambda: any("failed" in line["event"] for line in logs))
    assert hook.received[0].headers["Authorization"] == "Bearer tok-file-secret"
    assert len(hook.received) == 1  # a 401 is not retried within the cycle
    (failed,) = [line for line in logs if "failed" in line["event"]]
    assert failed["error"] == "HTTP 401"
    assert failed["webhook"] == "notify[0]" and failed["alarm"] is True
    assert (failed["service"], failed["cutover"], failed["event_id"]) == (
        "checkout",
        "co-t",
        "co-t:1",
    )
    text = repr(logs) + metrics.render().decode()
    assert "tok-file-secret" not in text and "url-secret" not in text


# --- bounded effort ---------------------------------------------------------------------------


async def test_a_failing_webhook_gets_bounded_retries_then_a_pause(
    store: SqliteStore, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    metrics = Metrics()
    async with asyncio.timeout(GUARD):
        hook = await receivers(default=500)
        async with Notifier(
            secrets=Redactor(), specs=[spec(hook.url)], store=store, metrics=metrics, policy=FAST
        ) as n:
            c, events = await create(store, "co-f", FakeClock())
            await n.wake(c, events)
            await until(lambda: len(hook.received) == FAST.attempts)
            t0 = time.monotonic()
            for _ in range(20):  # new events do not cut the pause short
                await n.wake(c, events)
                await asyncio.sleep(0.01)
            assert len(hook.received) == FAST.attempts
            await until(lambda: len(hook.received) == 2 * FAST.attempts)
            paused = time.monotonic() - t0
            assert await store.undelivered(key(hook.url)) != []
    assert paused >= FAST.pause - 0.05
    rendered = metrics.render().decode()
    assert (
        f'cutover_webhook_failures_total{{webhook="notify[0]"}} {2 * FAST.attempts}.0' in rendered
    )
    assert 'cutover_webhook_deliveries_total{webhook="notify[0]"} 0.0' in rendered


async def test_stop_does_not_wait_for_a_hanging_post(
    store: SqliteStore, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    async with asyncio.timeout(GUARD):
        dead = await receivers(hang=True)
        notifier = Notifier(
            secrets=Redactor(), specs=[spec(dead.url)], store=store, policy=RetryPolicy(timeout=30)
        )
        await notifier.start()
        c, events = await create(store, "co-h", FakeClock())
        await notifier.wake(c, events)
        await until(lambda: dead.hanging == 1)
        t0 = time.monotonic()
        await notifier.stop()
        assert time.monotonic() - t0 < 0.5


async def test_a_bug_in_delivery_alarms_and_is_retried_not_fatal(
    store: SqliteStore,
    receivers: Callable[..., Awaitable[Receiver]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cutover.notify import notifier as module
    from cutover.notify.payload import payload as real

    calls = 0

    def flaky(c: Cutover, e: Event, fmt: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug")
        return real(c, e, fmt)

    monkeypatch.setattr(module, "payload", flaky)
    async with asyncio.timeout(GUARD):
        hook = await receivers()
        with structlog.testing.capture_logs() as logs:
            async with Notifier(
                secrets=Redactor(), specs=[spec(hook.url)], store=store, policy=FAST
            ) as n:
                c, events = await create(store, "co-b", FakeClock())
                await n.wake(c, events)
                await until(lambda: len(hook.received) == 1)
    assert hook.ids == ["co-b:1"]
    crashed = [line for line in logs if line["event"] == "webhook delivery crashed; will retry"]
    assert len(crashed) == 1 and "a bug" in crashed[0]["error"] and crashed[0]["alarm"] is True
