"""The clock the engine reads: monotonic time for holds and intervals, wall time for people."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

__all__ = ["Clock", "SystemClock", "Timer"]


class Timer(Protocol):
    def cancel(self) -> object: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` on the loop once ``seconds`` have passed, unless cancelled.
        A waiting timer is one handle, where a task asleep in :meth:`sleep` holds a coroutine
        chain, a future and a context: with many cutovers those make up most of what the
        garbage collector traverses (docs/performance.md)."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """Raise :class:`TimeoutError` out of the block once ``seconds`` have passed (the block
        is cancelled), like :func:`asyncio.timeout` but on this clock."""
        ...


_TIMER_CONTEXT = contextvars.Context()


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[..., object], *args: Any) -> Timer:
        # One shared, empty context instead of a copy per handle (a tracked object each): the
        # engine's timer callbacks only hand work on and set no context variables.
        loop = asyncio.get_running_loop()
        return loop.call_later(seconds, callback, *args, context=_TIMER_CONTEXT)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)  # one timer handle: no task per bounded call
