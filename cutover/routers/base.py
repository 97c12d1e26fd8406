"""The one small interface every traffic router implements.

A router splits one place's traffic (an HAProxy backend, a DNS name) between the two colors of
a service. It is built per cutover, so it knows which color is *new*; every share it takes or
reports is the new color's share of traffic in percent (0 = all old, 100 = all new).

Verification compares *router state* (what the router holds: per-server weights and admin
states, or the published records), never the effective share alone: a server that fails its
health check changes the effective share, yet nobody changed what we wrote, so that is no drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, Self, cast, runtime_checkable

from pydantic import Field, field_validator

from cutover.core.model import Color
from cutover.resources import Resources
from cutover.specs import Duration, Spec

__all__ = [
    "AddressShare",
    "AppliesAndObserves",
    "Reading",
    "Router",
    "RouterSpecBase",
    "RouterState",
    "one_round_trip",
]

#: What a router holds, as plain JSON-able data: e.g. ``{"green1": "w50", "blue1": "maint"}``.
RouterState = Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class Reading:
    """One read-back of a router.

    ``share`` is the new color's effective share of traffic in percent, or ``None`` when it is
    undefined (no server can take traffic). ``state`` is what the router holds, comparable with
    :meth:`Router.expected`. ``detail`` is a short human note (e.g. DNS "address share").
    """

    share: float | None
    state: RouterState
    detail: str = ""


class Router(Protocol):
    """One traffic router of one cutover. Implementations translate their errors into
    :class:`cutover.errors.TransientError` / :class:`cutover.errors.PermanentError`."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str:
        """The config ``type:`` of this router, e.g. ``haproxy``."""
        ...

    def expected(self, share: int, *, evacuate: bool = False) -> RouterState:
        """The state :meth:`apply` writes for ``share`` (pure; no I/O)."""
        ...

    async def preflight(self) -> None:
        """Raise if this router cannot be driven at all (unreachable, unsupported setup)."""
        ...

    async def lower_ttl(self) -> float:
        """Before stage 1 (PRODUCT.md, DNS): if the published TTL is longer than the configured
        one, republish the same records with the configured TTL and return the old TTL, the
        seconds resolvers may still cache the old answer; else return 0. Load balancers have
        no TTL and return 0."""
        ...

    async def apply(self, share: int, *, evacuate: bool = False) -> None:
        """Set the new color's share, in as few round trips as the server allows.

        ``evacuate`` (rollback only) also moves persistent sessions off the new color where
        the router can (HAProxy: ``maint``)."""
        ...

    async def observe(self) -> Reading:
        """Read back what the router holds now."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class AddressShare(Protocol):
    """A router whose traffic share is a share of published addresses (plain DNS), which only
    approximates the asked share: ``plan`` and ``status`` show both."""

    def address_share(self, share: int) -> float:
        """The new color's share of the addresses published for ``share`` (pure)."""
        ...


@runtime_checkable
class AppliesAndObserves(Protocol):
    """A router that can write a share and read itself back in one round trip (HAProxy: the
    ``set server`` commands and ``show servers state`` on one line). The engine prefers it
    wherever it would call :meth:`Router.apply` and then :meth:`Router.observe`."""

    async def apply_and_observe(self, share: int, *, evacuate: bool = False) -> Reading:
        """:meth:`Router.apply`, then what :meth:`Router.observe` would read after it.

        A failed write raises as :meth:`Router.apply` does (with no reading: the caller reads
        back on its own if it needs to)."""
        ...


def one_round_trip(router: Router) -> AppliesAndObserves | None:
    """``router`` as an :class:`AppliesAndObserves` when it is one, else None. Not
    ``isinstance``: a runtime-checkable Protocol's check collects the protocol's members on
    every call, and this is on the path of every rollback and stage shift
    (docs/performance.md)."""
    if callable(getattr(router, "apply_and_observe", None)):
        return cast(AppliesAndObserves, router)
    return None


class RouterSpecBase(Spec):
    """Fields every router has. ``blue``/``green`` list what each color is made of
    (servers for a load balancer, addresses for DNS)."""

    type: str
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    blue: list[str] = Field(min_length=1)
    green: list[str] = Field(min_length=1)
    # per network call: one HAProxy runtime API line (connect, send, read the answer), one DNS
    # message, one HTTP request
    timeout: Duration = 2.0

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("timeout must be greater than 0")
        return value

    @property
    def ttl(self) -> int | None:
        """The published TTL of a DNS router; ``None`` for load balancers."""
        return None

    def resolve_paths(self, resolve: Callable[[str], str]) -> Self:
        """This spec with its file paths made absolute by ``resolve`` (against the config
        file's directory); a router without file paths returns itself."""
        return self

    def claims(self) -> set[str]:
        """Things only one service may drive (a backend server, a DNS record), as keys."""
        raise NotImplementedError  # each router module's spec overrides this

    def build(self, *, new: Color, resources: Resources) -> Router:
        raise NotImplementedError  # each router module's spec overrides this
