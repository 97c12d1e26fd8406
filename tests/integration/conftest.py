"""Fixtures for integration tests against real servers (HAProxy + demo apps on loopback)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cutover.routers.haproxy import HAProxySpec
from tests.servers import Backend, DemoApp, HAProxy, make_workdir, require_binary

#: The main backend's servers and configured weights (blue1/blue2/green1/green2).
DEFAULT_WEIGHTS: Mapping[str, int] = {"blue1": 10, "blue2": 10, "green1": 10, "green2": 10}
#: Extra backends over the same demo apps, for the balance-algorithm checks.
EXTRA_BACKENDS = {"static": "static-rr", "hashed": "source", "randomized": "random"}


@dataclass
class HAProxyStack:
    """2 blue + 2 green demo apps behind HAProxy backend ``checkout`` (and a few others)."""

    workdir: Path
    apps: dict[str, DemoApp]
    haproxy: HAProxy
    weights: Mapping[str, int]
    backend: str = "checkout"
    blue: list[str] = field(default_factory=lambda: ["blue1", "blue2"])
    green: list[str] = field(default_factory=lambda: ["green1", "green2"])

    @property
    def port(self) -> int:
        """The frontend port of ``checkout``."""
        return self.haproxy.frontend_ports[self.backend]

    @property
    def runtime_unix(self) -> str:
        return self.haproxy.runtime_unix

    @property
    def runtime_tcp(self) -> str:
        return self.haproxy.runtime_tcp

    def spec_values(self, **overrides: Any) -> dict[str, Any]:
        """Config values of an ``haproxy`` router for ``checkout`` (unix socket by default)."""
        values: dict[str, Any] = {
            "type": "haproxy",
            "name": "checkout-lb",
            "runtime_api": self.runtime_unix,
            "backend": self.backend,
            "blue": list(self.blue),
            "green": list(self.green),
            "timeout": "2s",
        }
        values.update(overrides)
        return values

    def spec(self, **overrides: Any) -> HAProxySpec:
        return HAProxySpec.model_validate(self.spec_values(**overrides))

    async def stop(self) -> None:
        await self.haproxy.stop()
        await asyncio.gather(*(app.stop() for app in self.apps.values()))
        shutil.rmtree(self.workdir, ignore_errors=True)


async def start_stack(weights: Mapping[str, int] = DEFAULT_WEIGHTS) -> HAProxyStack:
    """Start the demo apps, then HAProxy; on any failure stop what was started."""
    require_binary("haproxy")
    workdir = make_workdir("cutover-hap-")
    apps: dict[str, DemoApp] = {}
    try:
        started = await asyncio.gather(
            *(
                DemoApp.start(workdir, name=name, color=name.rstrip("0123456789"))
                for name in weights
            ),
            return_exceptions=True,
        )
        for name, app in zip(weights, started, strict=True):
            if isinstance(app, DemoApp):
                apps[name] = app
        errors = [e for e in started if isinstance(e, BaseException)]
        if errors:
            raise errors[0]
        servers = [(name, apps[name].port, w) for name, w in weights.items()]
        backends = [Backend("checkout", "roundrobin", servers)]
        backends += [Backend(name, algo, servers) for name, algo in EXTRA_BACKENDS.items()]
        haproxy = await HAProxy.start(workdir, backends)
    except BaseException:
        await asyncio.gather(*(app.stop() for app in apps.values()))
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return HAProxyStack(workdir=workdir, apps=apps, haproxy=haproxy, weights=weights)


@pytest.fixture
async def haproxy_stack(request: pytest.FixtureRequest) -> AsyncIterator[HAProxyStack]:
    """A fresh stack per test; ``@pytest.mark.parametrize("haproxy_stack", [weights],
    indirect=True)`` sets other configured weights for blue1/blue2/green1/green2."""
    weights: Mapping[str, int] = getattr(request, "param", DEFAULT_WEIGHTS)
    stack = await start_stack(weights)
    try:
        yield stack
    finally:
        await stack.stop()
