"""Fixtures for integration tests against real servers (HAProxy + demo apps on loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest

from demo.stack import DEFAULT_WEIGHTS, HAProxyStack, start_stack

#: Extra backends over the same demo apps, for the balance-algorithm checks.
EXTRA_BACKENDS = {"static": "static-rr", "hashed": "source", "randomized": "random"}


@pytest.fixture
async def haproxy_stack(request: pytest.FixtureRequest) -> AsyncIterator[HAProxyStack]:
    """A fresh stack per test; ``@pytest.mark.parametrize("haproxy_stack", [weights],
    indirect=True)`` sets other configured weights for blue1/blue2/green1/green2."""
    weights: Mapping[str, int] = getattr(request, "param", DEFAULT_WEIGHTS)
    stack = await start_stack(weights, extra_backends=EXTRA_BACKENDS)
    try:
        yield stack
    finally:
        await stack.stop()
