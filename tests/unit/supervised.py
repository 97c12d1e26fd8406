"""A Supervisor over one fake router (``edge``) and one fake check (``health``) on a fake clock,
as the API, view and supervisor unit tests run it; ``served`` puts the app in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp.test_utils import TestClient, TestServer

from cutover.api.app import make_app
from cutover.checks.base import Check
from cutover.config import ServiceSpec, parse_config
from cutover.core.model import Color
from cutover.engine.supervisor import Supervisor
from cutover.observability.metrics import Metrics
from cutover.routers.base import Router
from cutover.store.sqlite import SqliteStore
from cutover.testing import FakeCheck, FakeClock, FakeRouter, resource_pool

__all__ = ["Supervised", "served", "supervised"]

StoreT = TypeVar("StoreT", bound=SqliteStore)


@dataclass
class Supervised(Generic[StoreT]):
    supervisor: Supervisor
    store: StoreT
    clock: FakeClock
    router: FakeRouter
    check: FakeCheck
    metrics: Metrics


@asynccontextmanager
async def supervised(config: dict[str, Any], store: StoreT) -> AsyncIterator[Supervised[StoreT]]:
    """A started supervisor of ``config`` over ``store`` (opened here, closed after)."""
    await store.open()
    clock = FakeClock()
    router, check = FakeRouter("edge"), FakeCheck("health", clock=clock)

    def adapters(
        spec: ServiceSpec, service: str, new: Color
    ) -> tuple[dict[str, Router], dict[str, Check]]:
        # the same fakes each time: they are the "servers", which outlive a runner
        return {"edge": router}, {"health": check}

    metrics = Metrics()
    sup = Supervisor(
        config=parse_config(config),
        store=store,
        clock=clock,
        resources=resource_pool(),
        adapters=adapters,
        metrics=metrics,
    )
    await sup.start()
    try:
        yield Supervised(sup, store, clock, router, check, metrics)
    finally:
        await sup.stop()
        await store.aclose()


@asynccontextmanager
async def served(s: Supervised[Any]) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    """The API app over ``s``, with a test client."""
    app = make_app(supervisor=s.supervisor, store=s.store, metrics=s.metrics)
    async with TestClient(TestServer(app)) as client:
        yield client
