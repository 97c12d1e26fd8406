"""What adapters are handed instead of making it themselves: shared clients and the secret sink.

A router or check spec's ``build()`` receives a :class:`Resources` (as Argo Rollouts'
ProviderFactory hands clients to its providers, DESIGN.md habit 11) and takes from it what
it needs: the log redactor's :class:`SecretSink` to register a secret it loads, and a shared
client by its :class:`Shared` kind (the checks' aiohttp session, the HAProxy runtime API
clients; next a database pool or an AWS session). A kind is declared once, next to the
adapter code that uses it, with how to make the client and how to close it; the owner
(:class:`cutover.resource_pool.ResourcePool`, made by the daemon at start and closed at stop)
makes each client the first time it is asked for and closes them all at the end. So a new
kind of client needs no new parameter in any ``build()``, and no adapter holds a client of
its own at module level or outlives the daemon's event loop.

Adapters import this module, never the owner's (import-linter's contracts say so).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["Resources", "SecretSink", "Shared"]

T = TypeVar("T")


class SecretSink(Protocol):
    """Where a loaded secret value goes so that no log line can carry it."""

    def add(self, secret: str) -> None: ...


@dataclass(frozen=True, eq=False)
class Shared(Generic[T]):
    """A kind of client every adapter of a daemon shares: made by ``create`` in the running
    event loop the first time it is asked for, closed by ``close`` when the owner closes.
    Kinds are compared by identity: declare each once, as a module constant."""

    name: str
    create: Callable[[], T]
    close: Callable[[T], Awaitable[None]]


class Resources(Protocol):
    """What ``build()`` hands an adapter."""

    @property
    def secrets(self) -> SecretSink: ...

    def get(self, kind: Shared[T]) -> T:
        """The one client of ``kind``, made on first use; call it inside the event loop."""
        ...
