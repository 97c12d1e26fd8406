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
from pathlib import Path

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
