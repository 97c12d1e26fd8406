"""Fault classes against real servers: each ends in a known, persisted state, alarms, and
recovers by itself when the fault clears.

The real :class:`Runner` drives real routers (HAProxy runtime API, BIND over RFC 2136) built
from config specs, with a :class:`FakeCheck` (the checks are not under test here) and a real
SQLite store, on the system clock with short holds. Faults are made for real: HAProxy's admin
socket moved away and back (its path is what the router dials; HAProxy keeps serving the
inode), a :class:`DelayProxy` in front of it answering later than the router's timeout, BIND
stopped or its ``allow-update`` changed, a TSIG key the server does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from cutover.config import parse_config
from cutover.core.machine import Command
from cutover.core.model import Cutover, Phase, Status
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from cutover.testing import resource_pool
from demo.stack import HAProxyStack

__all__ = ["DelayProxy"]


class DelayProxy:
    """A unix-socket proxy in front of HAProxy's runtime API that answers late.

    Each client connection is relayed to ``target``; the proxy holds the request ``delay``
    seconds first (so a router's timeout can be overrun). HAProxy's runtime API answers one
    line per connection and closes: the proxy reads the request to its EOF, forwards it, and
    relays the answer.
    """

    def __init__(self, *, listen: Path, target: str) -> None:
        self.listen = listen
        self.target = target
        self.delay = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def runtime_api(self) -> str:
        return f"unix:{self.listen}"

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.listen))
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task: asyncio.Task[None] = asyncio.current_task()  # type: ignore[assignment]
        self._tasks.add(task)
        try:
            async with asyncio.timeout(30):
                request = await reader.read()
                await asyncio.sleep(self.delay)
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
                try:
                    up_writer.write(request)
                    up_writer.write_eof()
                    await up_writer.drain()
                    writer.write(await up_reader.read())
                    await writer.drain()
                finally:
                    up_writer.close()
                    with contextlib.suppress(OSError):
                        await up_writer.wait_closed()
        except (OSError, TimeoutError):
            pass  # the client gave up (its own timeout) or HAProxy is gone: hang up
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# --- the harness: an in-process daemon without its API -----------------------------------------


class Daemon:
    """The daemon's engine in this process: Supervisor + real SQLite + real routers + metrics,
    on the system clock, with structlog captured."""

    def __init__(self, *, tmp: Path, router: dict[str, Any], **service: Any) -> None:
        self.config = parse_config(
            {
                "state": {"sqlite": str(tmp / "state.db")},
                "services": {
                    "checkout": {
                        "routers": [router],
                        "stages": [
                            {"weight": 10, "hold": "1s"},
                            {"weight": 50, "hold": "1s"},
                            {"weight": 100, "hold": "1s"},
                        ],
                        **service,
                    }
                },
            }
        )
        self.store = SqliteStore(path=str(tmp / "state.db"))
        self.metrics = Metrics()
        self.resources = resource_pool()
        self.sup = Supervisor(
            config=self.config,
            store=self.store,
            clock=SystemClock(),
            resources=self.resources,
            metrics=self.metrics,
        )

    async def __aenter__(self) -> Daemon:
        await self.store.open()
        await self.sup.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.sup.stop()
        await self.resources.aclose()
        await self.store.aclose()

    async def until(self, cid: str, pred: Callable[[Cutover], bool], within: float) -> float:
        """Real seconds until ``pred`` holds for the cutover (as the API would show it)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            if pred(await self.sup.get(cid)):
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
        c = await self.sup.get(cid)
        raise AssertionError(f"not reached within {within}s: {c.status} {c.phase} {c.reason}")

    async def stored(self, cid: str) -> Cutover:
        c = await self.store.get(cid)
        assert c is not None
        return c

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
async def stack(haproxy_stack: HAProxyStack) -> HAProxyStack:
    # green out of rotation: the live color (blue) has the full share
    await haproxy_stack.haproxy.cli(
        "set server checkout/green1 state maint; set server checkout/green2 state maint"
    )
    return haproxy_stack


async def green_rows(stack: HAProxyStack) -> list[list[str]]:
    out = await stack.haproxy.cli("show servers state checkout")
    rows = [r for r in map(str.split, out.splitlines()) if len(r) > 7 and r[1] == "checkout"]
    return [r for r in rows if r[3].startswith("green")]


async def all_blue(stack: HAProxyStack) -> bool:
    return all(r[6] == "1" or r[7] == "0" for r in await green_rows(stack))  # maint or weight 0


# --- HAProxy --------------------------------------------------------------------------------


async def test_haproxy_socket_gone_at_a_stage_change_fails_the_rollback_until_it_returns(
    stack: HAProxyStack, tmp_path: Path
) -> None:
    """The socket disappears during stage 1: the shift to stage 2 is retried for
    ``apply_timeout`` and rolls back naming the router; the rollback cannot reach HAProxy
    either, so after ``rollback_timeout`` the cutover is ``failed`` (persisted, metric,
    event) and keeps retrying with backoff; the socket returns and it is ``rolled_back`` by
    itself, HAProxy all blue."""
    sock = Path(stack.haproxy.admin_socket)
    away = sock.with_name("admin.sock.away")
    router = stack.spec_values(name="edge", timeout="500ms")
    with structlog.testing.capture_logs() as logs:
        async with Daemon(
            tmp=tmp_path, router=router, apply_timeout="1s", rollback_timeout="1s"
        ) as d:
            c = await d.sup.start_cutover("checkout", actor="test")
            await d.until(c.id, lambda c: c.phase is Phase.HOLDING, within=10)
            os.rename(sock, away)
            try:
                await d.until(c.id, lambda c: c.status is Status.FAILED, within=15)
                stored = await d.stored(c.id)
                assert stored.status is Status.FAILED
                assert "router edge" in (stored.reason or ""), stored.reason
                assert "socket file not found" in (stored.reason or ""), stored.reason
                assert d.metric("cutover_state", service="checkout", state="failed") == 1
                assert d.metric("cutover_rollbacks_total", service="checkout", reason="router")
                before = len(logs)
                await asyncio.sleep(6)
                retries = [e for e in logs[before:] if e["event"] == "rollback not verified yet"]
                # backoff 0.1 s doubling to 5 s: a handful of attempts in 6 s, never a hot loop
                assert 1 <= len(retries) <= 8, len(retries)
                assert "socket file not found" in str(retries[-1]["error"])
            finally:
                os.rename(away, sock)
            took = await d.until(c.id, lambda c: c.status is Status.ROLLED_BACK, within=10)
            assert took <= 5.5  # the longest backoff step
            assert (await d.stored(c.id)).status is Status.ROLLED_BACK
            kinds = [e.kind for e in await d.store.events(c.id)]
            assert kinds[-3:] == ["rollback_started", "failed", "rolled_back"]
            assert d.metric("cutover_state", service="checkout", state="rolled_back") == 1
    assert await all_blue(stack)


async def test_haproxy_socket_gone_during_a_hold_shows_on_the_router_and_clears(
    stack: HAProxyStack, tmp_path: Path
) -> None:
    sock = Path(stack.haproxy.admin_socket)
    away = sock.with_name("admin.sock.away")
    router = stack.spec_values(name="edge", timeout="500ms")
    stages = [{"weight": 10, "hold": "6s"}, {"weight": 100, "hold": "1s"}]
    async with Daemon(tmp=tmp_path, router=router, stages=stages) as d:
        c = await d.sup.start_cutover("checkout", actor="test")
        await d.until(c.id, lambda c: c.phase is Phase.HOLDING, within=10)
        os.rename(sock, away)
        try:
            await d.until(c.id, lambda c: "socket file not found" in c.router("edge").error, 5)
            assert (await d.sup.get(c.id)).status is Status.RUNNING
        finally:
            os.rename(away, sock)
        await d.until(c.id, lambda c: not c.router("edge").error, within=5)
        await d.until(c.id, lambda c: c.status is Status.COMPLETED, within=20)


async def test_a_slow_haproxy_fails_the_rollback_until_it_answers_in_time(
    stack: HAProxyStack, tmp_path: Path
) -> None:
    proxy = await DelayProxy(
        listen=tmp_path / "slow.sock", target=stack.haproxy.admin_socket
    ).start()
    router = stack.spec_values(name="edge", runtime_api=proxy.runtime_api, timeout="500ms")
    stages = [{"weight": 10, "hold": "30s"}, {"weight": 100, "hold": "1s"}]
    try:
        with structlog.testing.capture_logs() as logs:
            async with Daemon(
                tmp=tmp_path, router=router, stages=stages, rollback_timeout="1s"
            ) as d:
                c = await d.sup.start_cutover("checkout", actor="test")
                await d.until(c.id, lambda c: c.phase is Phase.HOLDING, within=10)
                proxy.delay = 2.0  # past the router's 500 ms timeout
                await d.sup.command(c.id, Command(action="abort", actor="alice"))
                await d.until(c.id, lambda c: c.status is Status.FAILED, within=10)
                assert (await d.stored(c.id)).status is Status.FAILED
                retries = [e for e in logs if e["event"] == "rollback not verified yet"]
                assert retries and "no answer within 0.5s" in str(retries[-1]["error"])
                proxy.delay = 0.0
                await d.until(c.id, lambda c: c.status is Status.ROLLED_BACK, within=10)
                assert "aborted by alice" in ((await d.stored(c.id)).reason or "")
        assert await all_blue(stack)
    finally:
        await proxy.stop()
