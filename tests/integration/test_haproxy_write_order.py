"""HAProxy router: one apply writes the servers that end up ready with weight > 0 first.

A real HAProxy, its runtime API reached through a relay that records every command line the
router sends, so the order is read off what HAProxy was really told; the split is then
measured with real requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

from cutover.resource_pool import ResourcePool
from cutover.routers.haproxy import HAProxySpec
from demo.stack import HAProxyStack, split

REQUESTS = 400
WEIGHT = re.compile(r"set server [^/\s]+/(\S+) weight (\d+)")
STATE = re.compile(r"set server [^/\s]+/(\S+) state (\S+)")


class RecordingRelay:
    """A unix socket that passes each connection through to HAProxy's runtime API and
    records the commands sent, in order."""

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        self.target = target
        self.commands: list[str] = []
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[object]] = set()

    async def __aenter__(self) -> RecordingRelay:
        self._server = await asyncio.start_unix_server(self._relay, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        server_r, server_w = await asyncio.open_unix_connection(self.target)
        try:
            line = await client_r.readline()
            self.commands += [c.strip() for c in line.decode().split(";") if c.strip()]
            server_w.write(line)
            await server_w.drain()
            while chunk := await server_r.read(65536):
                client_w.write(chunk)
                await client_w.drain()
        finally:
            for w in (server_w, client_w):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()

    def writes(self) -> list[tuple[str, str]]:
        """``(server, "weight N" or "state S")`` of every write, in the order sent."""
        found = []
        for command in self.commands:
            if m := WEIGHT.fullmatch(command):
                found.append((m[1], f"weight {m[2]}"))
            elif m := STATE.fullmatch(command):
                found.append((m[1], f"state {m[2]}"))
        return found


def carrying_first(writes: list[tuple[str, str]]) -> bool:
    """Every server that ends up ready with a weight > 0 is written before any other."""
    final: dict[str, dict[str, str]] = {}
    for server, what in writes:
        key, _, value = what.partition(" ")
        final.setdefault(server, {})[key] = value
    carrying = {s for s, v in final.items() if v["state"] == "ready" and v["weight"] != "0"}
    order = [server for server, _ in writes]
    last_carrying = max(i for i, s in enumerate(order) if s in carrying)
    first_other = min((i for i, s in enumerate(order) if s not in carrying), default=len(order))
    return bool(carrying) and last_carrying < first_other


async def green_share(stack: HAProxyStack) -> float:
    counts = await split(stack.port, REQUESTS, conc=20, time_limit=30.0)
    assert sum(counts.values()) == REQUESTS and set(counts) <= {"blue", "green"}, counts
    return 100.0 * counts["green"] / REQUESTS


async def test_servers_that_carry_traffic_are_written_first(
    haproxy_stack: HAProxyStack, resources: ResourcePool, tmp_path: Path
) -> None:
    target = haproxy_stack.runtime_unix.removeprefix("unix:")
    async with RecordingRelay(tmp_path / "relay.sock", target) as relay:
        values = haproxy_stack.spec_values(runtime_api=f"unix:{relay.path}")
        router = HAProxySpec.model_validate(values).build(new="green", resources=resources)
        await router.preflight()
        for share, evacuate, green in ((100, False, 100.0), (0, False, 0.0), (0, True, 0.0)):
            relay.commands.clear()
            await router.apply(share, evacuate=evacuate)
            writes = relay.writes()
            assert {s for s, _ in writes} == {*haproxy_stack.blue, *haproxy_stack.green}
            assert carrying_first(writes), (share, evacuate, relay.commands)
            assert (await router.observe()).state == router.expected(share, evacuate=evacuate)
            assert await green_share(haproxy_stack) == green
        await router.aclose()
