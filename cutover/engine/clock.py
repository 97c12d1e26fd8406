"""The clock the engine reads: monotonic time for holds and intervals, wall time for people."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

__all__ = ["Clock", "SystemClock", "Timer"]


class Timer(Protocol):
    def cancel(self) -> object: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` on the event loop once ``seconds`` have passed, unless cancelled.
        A waiting timer is one handle, where a task asleep in :meth:`sleep` holds a coroutine
        chain, a future and a context: at 1000 cutovers those were most of what the garbage
        collector traversed (docs/performance.md)."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """Raise :class:`TimeoutError` out of the block once ``seconds`` have passed (the block
        is cancelled), like :func:`asyncio.timeout` but on this clock."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(seconds, callback)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)  # one timer handle: no task per bounded call
