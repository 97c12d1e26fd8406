"""No API client can delay a rollback (issue 18), end to end.

The daemon runs under ``ulimit -n 1024`` against a real HAProxy while 1500 connections that
never finish their request head are held open against its API (each one opened again as soon
as the daemon closes it, like a persistent attacker). When the new color starts failing during
that flood, HAProxy is at 0 % new within failure_limit x interval + 1 s (measured on HAProxy's
runtime API, then by real requests), the API answers a new client within the header timeout,
and the daemon's log grows by less than 1 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shlex
import socket
import sys
import time

import aiohttp

from demo.stack import Child, wait_http
from tests.e2e.conftest import E2E

CHECK_INTERVAL = 0.3  # the default new-health check of tests/e2e/conftest.py
FAILURE_LIMIT = 2
HEADER_TIMEOUT = 2.0
OPEN_FILES = 1024
FLOOD = 1500
#: An unfinished request head: the line and one header, never the blank line that ends it.
UNFINISHED = b"GET /v1/services HTTP/1.1\r\nHost: cutover\r\n"


async def _start_daemon_with_few_files(e2e: E2E) -> None:
    e2e.daemon_runs += 1
    daemon = shlex.join([sys.executable, "-m", "cutover", "daemon", "-c", str(e2e.config_path)])
    e2e.daemon = await Child.spawn(
        f"daemon-{e2e.daemon_runs}",
        ["sh", "-c", f"ulimit -n {OPEN_FILES} && exec {daemon}"],
        e2e.dir,
    )
    try:
        await wait_http(e2e.port, "/readyz", within=20.0)
    except TimeoutError:
        raise AssertionError(f"daemon not ready:\n{e2e.daemon.log()}") from None


async def _hold_unfinished(port: int, opened: list[int]) -> None:
    """One attacker: a connection with an unfinished head, opened again whenever it closes."""
    loop = asyncio.get_running_loop()
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5.0)
            await loop.sock_sendall(sock, UNFINISHED)
            opened[0] += 1
            while await loop.sock_recv(sock, 4096):  # until the daemon closes it
                pass
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
        finally:
            sock.close()


async def _green_weights(e2e: E2E) -> dict[str, tuple[int, int]]:
    """Each green server's (runtime weight, admin state) from ``show servers state``."""
    out = await e2e.stack.haproxy.cli("show servers state checkout")
    rows = [r for r in map(str.split, out.splitlines()) if len(r) > 7 and r[1] == "checkout"]
    return {r[3]: (int(r[7]), int(r[6])) for r in rows if r[3] in e2e.stack.green}


async def _all_old_on_haproxy(e2e: E2E) -> bool:
    # admin state bit 1: maint, set on the runtime API
    return all(weight == 0 or admin & 1 for weight, admin in (await _green_weights(e2e)).values())


async def _healthz_seconds(port: int) -> float:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        assert resp.status == 200, await resp.text()
    return time.monotonic() - started


async def test_a_flood_of_unfinished_connections_does_not_delay_a_rollback(e2e: E2E) -> None:
    # the attackers' own descriptors: this process may open more than the daemon
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * FLOOD)), hard))
    try:
        e2e.write_config(stages=[{"weight": 50, "hold": "10m"}, {"weight": 100, "hold": "1s"}])
        config = e2e.config_path.read_text()
        e2e.config_path.write_text(
            config.replace("api:\n", f"api:\n  header_timeout: {HEADER_TIMEOUT}s\n", 1)
        )
        await _start_daemon_with_few_files(e2e)
        c = await e2e.start()
        c = await e2e.wait_for(c["id"], state="running", stage=0, phase="holding", within=15)
        log_before = len(e2e.daemon_log().encode())

        # Given 1500 connections that never finish their request head
        opened = [0]
        attackers = [asyncio.create_task(_hold_unfinished(e2e.port, opened)) for _ in range(FLOOD)]
        try:
            deadline = time.monotonic() + 30
            while opened[0] < FLOOD:
                assert time.monotonic() < deadline, f"only {opened[0]} connections opened"
                await asyncio.sleep(0.1)
            await asyncio.sleep(HEADER_TIMEOUT)  # the flood goes on past a header timeout

            # Then a new client is answered within the header timeout
            answered = await _healthz_seconds(e2e.port)
            assert answered < HEADER_TIMEOUT, answered

            # When the new color starts failing its health check
            failing = time.monotonic()
            for name in e2e.stack.green:
                await e2e.stack.apps[name].set_health(False)

            # Then HAProxy is at 0 % new within failure_limit x interval + 1 s
            bound = FAILURE_LIMIT * CHECK_INTERVAL + 1.0
            while not await _all_old_on_haproxy(e2e):
                assert time.monotonic() - failing <= bound, await _green_weights(e2e)
                await asyncio.sleep(0.02)
            all_old = time.monotonic() - failing
            assert await e2e.green_share(300) == 0.0
            answered_late = await _healthz_seconds(e2e.port)
            assert answered_late < HEADER_TIMEOUT, answered_late
            attempts = opened[0]
        finally:
            for task in attackers:
                task.cancel()
            await asyncio.gather(*attackers, return_exceptions=True)

        c = await e2e.wait_for(c["id"], state="rolled_back", within=30)
        assert "new-health" in c["reason"], c["reason"]
        log = e2e.daemon_log()
        grown = len(log.encode()) - log_before
        assert grown < 1_000_000, grown
        assert "Too many open files" not in log
        assert "Traceback" not in log
        print(
            f"\n{FLOOD} unfinished connections ({attempts} opened in all) under ulimit -n "
            f"{OPEN_FILES}: HAProxy all-old {all_old:.2f}s after the check started failing "
            f"(bound {bound:g}s); /healthz answered in {answered:.3f}s and {answered_late:.3f}s; "
            f"log grew {grown} bytes"
        )
    finally:
        with contextlib.suppress(ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
