"""The owner of the shared clients adapters are handed (:mod:`cutover.resources`).

The daemon makes one at start and closes it at stop; tests make their own
(:func:`cutover.testing.resource_pool`). Adapters never import this module: they receive a
:class:`~cutover.resources.Resources` and cannot make or close one."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar, cast

import structlog

from cutover.resources import SecretSink, Shared

__all__ = ["ResourcePool"]

T = TypeVar("T")

#: A client's close is bounded: a stuck one must not hold the daemon's stop.
CLOSE_TIMEOUT = 5.0

log = structlog.get_logger()


class ResourcePool:
    """Implements :class:`cutover.resources.Resources`: makes each kind's client on first use
    (in the running event loop: aiohttp sessions are bound to theirs) and closes them all, the
    last made first, in :meth:`aclose`."""

    def __init__(self, *, secrets: SecretSink) -> None:
        self._secrets = secrets
        self._clients: dict[Shared[Any], Any] = {}
        self._closed = False

    @property
    def secrets(self) -> SecretSink:
        return self._secrets

    def get(self, kind: Shared[T]) -> T:
        if self._closed:
            raise RuntimeError(f"{kind.name} asked for after the resources were closed")
        if kind not in self._clients:
            self._clients[kind] = kind.create()
        return cast(T, self._clients[kind])

    async def aclose(self) -> None:
        """Close every client made (each within :data:`CLOSE_TIMEOUT`); a failing close is
        logged and the others still close."""
        self._closed = True
        clients, self._clients = self._clients, {}
        for kind, client in reversed(clients.items()):
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await kind.close(client)
            except Exception as exc:  # the others must still close
                log.warning("resource_close_failed", resource=kind.name, error=repr(exc))

    async def __aenter__(self) -> ResourcePool:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
