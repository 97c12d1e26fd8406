"""End-to-end: `undo` is a rollback of a completed cutover, and a refused start is kept.

The daemon runs as a process against real HAProxy and demo apps (tests/e2e/conftest.py); the
traffic split is measured with real requests through HAProxy's frontend, and HAProxy's own
``show servers state`` says which servers are in ``maint``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.e2e.conftest import E2E

QUICK = [{"weight": 50, "hold": "500ms"}, {"weight": 100, "hold": "500ms"}]


async def servers(e2e: E2E, color: str) -> list[list[str]]:
    """``show servers state checkout`` rows of ``color``'s servers: [5] is the operational
    state (0 down, 2 up), [6] the admin state (bit 0x01: forced maint), [7] the weight."""
    out = await e2e.stack.haproxy.cli("show servers state checkout")
    rows = [r for r in map(str.split, out.splitlines()) if len(r) > 7 and r[1] == "checkout"]
    return [r for r in rows if r[3].startswith(color)]


async def in_maint(e2e: E2E, color: str) -> bool:
    rows = await servers(e2e, color)
    return bool(rows) and all(int(r[6]) & 1 for r in rows)


async def completed(e2e: E2E) -> dict[str, object]:
    c = await e2e.start()
    done = await e2e.wait_for(c["id"], state="completed")
    assert await e2e.green_share(300) == 100.0
    return done


def no_task_errors(e2e: E2E) -> None:
    log = e2e.daemon_log()
    assert "Task exception was never retrieved" not in log
    assert "Traceback" not in log


async def test_undo_with_the_live_color_down_moves_traffic_back_and_evacuates(e2e: E2E) -> None:
    # Given a completed cutover to green (the service has a health check of the new color)
    e2e.write_config(stages=QUICK)
    await e2e.start_daemon()
    done = await completed(e2e)
    # And green's servers are DOWN: that is why one undoes
    for name in e2e.stack.green:
        await e2e.stack.apps[name].set_health(False)
    for _ in range(100):
        if all(r[5] == "0" for r in await servers(e2e, "green")):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"HAProxy never marked green DOWN: {await servers(e2e, 'green')}")

    # When the operator undoes it
    rc, out, err = await e2e.cli("undo", "checkout")

    # Then every request is served by blue again, and green's servers are in maint
    assert rc == 0, (out, err)
    assert "back to blue" in out
    _, svc = await e2e.api("GET", "/v1/services/checkout")
    undo = await e2e.wait_for(svc["cutover"]["id"], state="rolled_back", within=15)
    assert (undo["kind"], undo["from"], undo["to"]) == ("undo", "blue", "green")
    assert undo["reason"] == f"undo of {done['id']} by " + undo["events"][0]["data"]["actor"]
    assert [e["kind"] for e in undo["events"]] == ["started", "rolled_back"]
    assert await e2e.green_share(1000) == 0.0
    assert await in_maint(e2e, "green")
    _, svc = await e2e.api("GET", "/v1/services/checkout")
    assert svc["live"] == "blue"
    # the history shows the undo above the cutover it undid
    _, body = await e2e.api("GET", "/v1/services/checkout/cutovers")
    assert [(h["kind"], h["state"]) for h in body["cutovers"]] == [
        ("undo", "rolled_back"),
        ("cutover", "completed"),
    ]
    # a second undo has nothing to undo
    status, body = await e2e.api("POST", "/v1/services/checkout/undo")
    assert (status, body["error"]["code"]) == (409, "nothing_to_undo"), body
    # once green is fixed, the next start goes from blue to green again
    for name in e2e.stack.green:
        await e2e.stack.apps[name].set_health(True)
    again = await e2e.start()
    assert (again["from"], again["to"]) == ("blue", "green")
    await e2e.wait_for(again["id"], state="completed")
    assert await e2e.green_share(300) == 100.0
    no_task_errors(e2e)


async def test_undo_after_a_restart_with_a_renamed_router_uses_the_frozen_router(
    e2e: E2E,
) -> None:
    # Given a completed cutover through router "edge"
    e2e.write_config(stages=QUICK)
    await e2e.start_daemon()
    done = await completed(e2e)
    # And a daemon restarted on a config where that router is now called "edge-v2"
    assert await e2e.stop_daemon() == 0
    e2e.write_config(stages=QUICK, router=e2e.stack.spec_values(name="edge-v2", timeout="1s"))
    await e2e.start_daemon()

    # When the operator undoes the cutover
    status, undo = await e2e.api("POST", "/v1/services/checkout/undo")

    # Then it drives the router frozen in that cutover: no 500, traffic back on blue
    assert status == 201, undo
    assert [r["name"] for r in undo["routers"]] == [r["name"] for r in done["routers"]]
    assert [r["name"] for r in undo["routers"]] == ["edge"]
    await e2e.wait_for(undo["id"], state="rolled_back", within=15)
    assert await e2e.green_share(1000) == 0.0
    assert await in_maint(e2e, "green")
    no_task_errors(e2e)


async def test_undo_outside_the_window_is_409_undo_window_passed(e2e: E2E) -> None:
    e2e.write_config(stages=QUICK, undo_window="1s")
    await e2e.start_daemon()
    await completed(e2e)
    await asyncio.sleep(1.5)
    status, body = await e2e.api("POST", "/v1/services/checkout/undo")
    assert status == 409, body
    assert body["error"]["code"] == "undo_window_passed"
    assert "beyond undo_window 1s" in body["error"]["message"]
    assert await e2e.green_share(300) == 100.0  # nothing moved


class WriteRefusingProxy:
    """A unix-socket relay in front of HAProxy's runtime API. While ``refusing``, it hangs up
    without an answer on every line that writes (``set server``): reads still pass, so the
    router is reachable, but a rollback cannot be written. HAProxy's runtime API takes one line
    per connection: the relay reads the request to its EOF and relays the answer."""

    def __init__(self, *, listen: Path, target: str) -> None:
        self.listen = listen
        self.target = target
        self.refusing = False
        self.refused = 0  # write lines hung up on
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> WriteRefusingProxy:
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
            async with asyncio.timeout(10):
                request = await reader.read()
                if self.refusing and b"set server" in request:
                    self.refused += 1
                    return
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
                try:
                    up_writer.write(request)
                    up_writer.write_eof()
                    writer.write(await up_reader.read())
                    await writer.drain()
                finally:
                    up_writer.close()
                    with contextlib.suppress(OSError):
                        await up_writer.wait_closed()
        except (OSError, TimeoutError):
            pass  # the daemon gave up on this call: hang up
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_an_undo_that_cannot_be_verified_is_failed_and_keeps_retrying(e2e: E2E) -> None:
    proxy = await WriteRefusingProxy(
        listen=e2e.dir / "relay.sock", target=e2e.stack.haproxy.admin_socket
    ).start()
    try:
        # Given a completed cutover through a router whose writes can be refused
        router = e2e.stack.spec_values(
            name="edge", timeout="1s", runtime_api=f"unix:{proxy.listen}"
        )
        e2e.write_config(stages=QUICK, router=router, rollback_timeout="2s")
        await e2e.start_daemon()
        await completed(e2e)

        # When HAProxy takes no write any more and the operator undoes the cutover
        proxy.refusing = True
        status, undo = await e2e.api("POST", "/v1/services/checkout/undo")
        assert status == 201, undo

        # Then it is failed after rollback_timeout, says so, and keeps retrying
        failed = await e2e.wait_for(undo["id"], state="failed", within=10)
        assert failed["events"][-1]["kind"] == "failed"
        assert "rollback not verified within 2s on edge" in failed["events"][-1]["message"]
        tries = proxy.refused
        await asyncio.sleep(5.5)  # longer than the longest backoff step between tries (5 s)
        assert proxy.refused > tries, (tries, proxy.refused)
        assert await e2e.green_share(300) == 100.0  # nothing could be written
        _, svc = await e2e.api("GET", "/v1/services/checkout")
        assert svc["live"] == "green"
        status, body = await e2e.api("POST", "/v1/services/checkout/cutovers")
        assert (status, body["error"]["code"]) == (409, "cutover_running"), body

        # And once HAProxy takes writes again, the undo ends verified by itself
        proxy.refusing = False
        done = await e2e.wait_for(undo["id"], state="rolled_back", within=15)
        assert [e["kind"] for e in done["events"]] == ["started", "failed", "rolled_back"]
        assert await e2e.green_share(1000) == 0.0
        assert await in_maint(e2e, "green")
        no_task_errors(e2e)
    finally:
        if e2e.daemon is not None:
            await e2e.daemon.stop()
        await proxy.stop()


async def test_a_start_refused_by_preflight_is_in_history_as_refused(e2e: E2E) -> None:
    # Given the new color fails its health check
    e2e.write_config(stages=QUICK)
    await e2e.start_daemon()
    for name in e2e.stack.green:
        await e2e.stack.apps[name].set_health(False)

    # When a start is asked for, then it is refused (422) and no traffic moves
    status, body = await e2e.api("POST", "/v1/services/checkout/cutovers")
    assert status == 422, body
    assert body["error"]["code"] == "preflight_failed"
    reason = body["error"]["message"]
    assert "check new-health: fail" in reason, reason
    assert await e2e.green_share(300) == 0.0

    # And the refusal is in the history, with its reason and an event
    _, history = await e2e.api("GET", "/v1/services/checkout/cutovers")
    [kept] = history["cutovers"]
    assert (kept["state"], kept["reason"], kept["kind"]) == ("refused", reason, "cutover")
    assert [e["kind"] for e in kept["events"]] == ["refused"]
    rc, out, err = await e2e.cli("history", "checkout")
    assert rc == 0, (out, err)
    assert "refused" in out and "check new-health: fail" in out

    # And it owns nothing: once green is healthy a start goes ahead
    for name in e2e.stack.green:
        await e2e.stack.apps[name].set_health(True)
    c = await e2e.start()
    await e2e.wait_for(c["id"], state="completed")
    no_task_errors(e2e)
