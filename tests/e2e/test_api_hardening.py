"""No API client can delay a rollback (issue 18), end to end.

The daemon runs under ``ulimit -n 1024`` against a real HAProxy while 1500 connections that
never finish their request head are held open against its API by another process (each one
opened again as soon as the daemon closes it, like a persistent attacker). When the new color
starts failing during that flood, HAProxy is at 0 % new within failure_limit x interval + 1 s
(measured on HAProxy's runtime API, then by real requests), the API answers a new client
within the header timeout, and the daemon's log grows by less than 1 MB.

Schemathesis (``schemathesis run``, every check, ``unsupported_method`` included) runs against
the daemon while a cutover of a real HAProxy is running; half of the generated ``service`` and
``id`` path parameters are the real service and cutover, so its actions (pause, resume,
promote, abort) act on real traffic. No 5xx, no answer the spec does not allow, no traceback,
and what HAProxy serves afterwards matches what the daemon says.

A metrics provider that answers far more than a check can use is refused after
:data:`~cutover.checks.promql.ANSWER_LIMIT` bytes, before anything is parsed on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cutover.checks.promql import ANSWER_LIMIT, PromClient, QueryFailed
from cutover.config import token_sha256
from cutover.testing import resource_pool
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


#: The attacker, in a process of its own so that its churn does not slow the test's own
#: measurements: ``flood`` connections with an unfinished head, each opened again as soon as
#: the daemon closes it. Prints ``held`` once all are open, and on SIGTERM how many it opened.
ATTACKER = """
import asyncio, resource, signal, socket, sys

port, flood, head = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * flood), hard))
opened = 0


async def hold():
    global opened
    loop = asyncio.get_running_loop()
    while True:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            async with asyncio.timeout(5):
                await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, head)
            opened += 1
            while await loop.sock_recv(sock, 4096):
                pass
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
        finally:
            sock.close()


async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(hold()) for _ in range(flood)]
    while opened < flood:
        await asyncio.sleep(0.05)
    print("held", flush=True)
    await stop.wait()
    print(opened, flush=True)


asyncio.run(main())
"""


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
    attacker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ATTACKER,
        str(e2e.port),
        str(FLOOD),
        UNFINISHED.decode(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert attacker.stdout is not None
    try:
        held = await asyncio.wait_for(attacker.stdout.readline(), 30)
        assert held == b"held\n", held
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
        assert all_old <= bound, all_old
        assert await e2e.green_share(300) == 0.0
        answered_late = await _healthz_seconds(e2e.port)
        assert answered_late < HEADER_TIMEOUT, answered_late
    finally:
        if attacker.returncode is None:
            attacker.terminate()
        attempts, _ = await asyncio.wait_for(attacker.communicate(), 30)

    c = await e2e.wait_for(c["id"], state="rolled_back", within=30)
    assert "new-health" in c["reason"], c["reason"]
    log = e2e.daemon_log()
    grown = len(log.encode()) - log_before
    assert grown < 1_000_000, grown
    assert "Too many open files" not in log
    assert "Traceback" not in log
    print(
        f"\n{FLOOD} unfinished connections ({int(attempts)} opened in all) under ulimit -n "
        f"{OPEN_FILES}: HAProxy all-old {all_old:.2f}s after the check started failing "
        f"(bound {bound:g}s); /healthz answered in {answered:.3f}s and {answered_late:.3f}s; "
        f"log grew {grown} bytes"
    )


# --- schemathesis against a daemon with a running cutover ------------------------------------

OPERATOR = "fuzz-operator-token-0123456789abcdef"
#: Examples per operation and phase: every operation and check in seconds for ``make test``;
#: the ``-m long`` run takes more.
MAX_EXAMPLES = 15
LONG_MAX_EXAMPLES = 300
TERMINAL = ("completed", "rolled_back", "aborted")


def _schemathesis_config(path: Path, cutover_id: str) -> Path:
    """Half of the ``service`` and ``id`` path parameters are the real ones."""
    path.write_text(
        "[dictionaries.services]\n"
        'values = ["checkout"]\n'
        "[dictionaries.cutovers]\n"
        f"values = [{json.dumps(cutover_id)}]\n"
        "[parameters]\n"
        '"path.service" = { dictionary = "services", probability = 0.5 }\n'
        '"path.id" = { dictionary = "cutovers", probability = 0.5 }\n'
    )
    return path


def _check_results(report: Path) -> list[tuple[str, str]]:
    """(check name, status) of every check schemathesis ran, from its NDJSON report."""
    found: list[tuple[str, str]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "checks" and isinstance(value, dict):
                    for results in value.values():
                        found.extend((r["name"], r["status"]) for r in results)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for line in report.read_text().splitlines():
        walk(json.loads(line))
    return found


@pytest.mark.parametrize(
    "examples", [MAX_EXAMPLES, pytest.param(LONG_MAX_EXAMPLES, marks=pytest.mark.long)]
)
async def test_schemathesis_finds_nothing_while_a_cutover_runs(e2e: E2E, examples: int) -> None:
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    e2e.write_config(stages=[{"weight": 20, "hold": "10m"}, {"weight": 100, "hold": "1s"}])
    config = e2e.config_path.read_text()
    token = {"name": "fuzz", "role": "operator", "sha256": token_sha256(OPERATOR)}
    e2e.config_path.write_text(
        config.replace("api:\n", f"api:\n  tokens: [{json.dumps(token)}]\n", 1)
    )
    await e2e.start_daemon()
    status, c = await e2e.api("POST", "/v1/services/checkout/cutovers", headers=auth)
    assert status == 201, c
    c = await _wait_holding(e2e, c["id"], auth)

    settings = _schemathesis_config(e2e.dir / "schemathesis.toml", c["id"])
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(settings),
        "run",
        f"{e2e.url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(examples),
        "--header",
        f"Authorization: Bearer {OPERATOR}",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--seed",
        "18",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(e2e.dir / "schemathesis.ndjson"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=e2e.dir,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    checks = _check_results(e2e.dir / "schemathesis.ndjson")
    assert checks and all(status == "success" for _, status in checks), checks
    assert {name for name, _ in checks} >= {"unsupported_method", "not_a_server_error"}
    # unsupported_method judges only the cases that send a method the spec does not list
    assert "Unspecified HTTP method" in (e2e.dir / "schemathesis.ndjson").read_text()

    log = e2e.daemon_log()
    assert "Traceback" not in log and '"level": "error"' not in log, log[-4000:]
    # traffic is where the daemon says it is, whatever the fuzzer made the cutover do
    status, c = await e2e.api("GET", f"/v1/cutovers/{c['id']}", headers=auth)
    assert status == 200, c
    c = await _wait_settled(e2e, c["id"], auth)
    (observed,) = {r["observed"] for r in c["routers"]}
    assert abs(await e2e.green_share(500) - observed) <= 5, (observed, c["state"])
    kinds = [e["kind"] for e in c["events"]]
    print(
        f"\nschemathesis ({examples} examples): {len(checks)} checks passed; the cutover "
        f"went {' -> '.join(kinds)} and is {c['state']} at {observed} % new"
    )


async def _wait_holding(e2e: E2E, cutover_id: str, auth: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        status, c = await e2e.api("GET", f"/v1/cutovers/{cutover_id}", headers=auth)
        assert status == 200, c
        if c["state"] == "running" and c["phase"] == "holding":
            return c  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, c
        await asyncio.sleep(0.1)


async def _wait_settled(e2e: E2E, cutover_id: str, auth: dict[str, str]) -> dict[str, Any]:
    """The cutover once it holds, is paused or is over: no shift or rollback under way."""
    deadline = time.monotonic() + 30
    while True:
        status, c = await e2e.api("GET", f"/v1/cutovers/{cutover_id}", headers=auth)
        assert status == 200, c
        if c["state"] in TERMINAL or c["phase"] in ("holding", "paused", "awaiting_approval"):
            return c  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, c
        await asyncio.sleep(0.1)


# --- a metrics provider's huge answer -----------------------------------------------------------


def _huge_answer(series: int) -> bytes:
    one = '{"metric":{"pod":"p"},"value":[1,"1"]}'
    result = ",".join([one] * series)
    return f'{{"status":"success","data":{{"resultType":"vector","result":[{result}]}}}}'.encode()


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_huge_prometheus_answer_is_refused_unparsed(chunked: bool) -> None:
    body = _huge_answer(series=2_000_000)  # ~76 MB
    assert len(body) > 50 * ANSWER_LIMIT

    async def query(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(body), 1 << 20):
                await resp.write(body[start : start + (1 << 20)])
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with resource_pool() as resources:
            client = PromClient(timeout=30.0, resources=resources)
            started = time.monotonic()
            with pytest.raises(QueryFailed, match=f"over {ANSWER_LIMIT}"):
                await client.query(f"http://127.0.0.1:{site.port}", "up")
            refused = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert refused < 5.0, refused  # not the time to read and parse 76 MB
