"""Schemathesis over ``/openapi.json``: no 5xx, no answer that breaks the spec (bounded run).

The app is the real one (real Supervisor and SQLite store, tokens configured) served on a
loopback port from a thread of its own, because schemathesis' calls are blocking. Its only
router points at an HAProxy socket that does not exist, so a start is refused by preflight
and nothing ever moves traffic.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from cutover.api.app import make_app
from cutover.config import parse_config, token_sha256
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from tests.unit.test_api import CONFIG

OPERATOR = "fuzz-operator-token"
MAX_EXAMPLES = 25


class _Server:
    """The app on 127.0.0.1 in a thread with its own event loop, until ``stop``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="api-under-fuzz")

    def __enter__(self) -> _Server:
        self._thread.start()
        if not self._ready.wait(10.0) or self._error is not None:
            raise RuntimeError(f"the app did not start: {self._error!r}")
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10.0)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        config = parse_config(
            {
                **CONFIG,
                "api": {
                    "tokens": [
                        {"name": "fuzz", "role": "operator", "sha256": token_sha256(OPERATOR)}
                    ]
                },
            }
        )
        store = SqliteStore(path=str(self.tmp / "state.db"))
        await store.open()
        metrics = Metrics()
        sup = Supervisor(config=config, store=store, clock=SystemClock(), metrics=metrics)
        runner = web.AppRunner(make_app(supervisor=sup, store=store, metrics=metrics))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await sup.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await sup.stop()
            await runner.cleanup()
            await store.aclose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    with _Server(tmp_path_factory.mktemp("fuzz")) as server:
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_answers_as_its_openapi_spec_says(served: _Server, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{served.port}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # schemathesis leaves out the document it was loaded from; every other operation is run
    documented = {
        f"{method.upper()} {path}"
        for path, ops in schema.raw_schema["paths"].items()
        for method in ops
        if path != "/openapi.json"
    }
    assert {o.label for o in operations} == documented
    calls: list[str] = []
    for operation in operations:
        raw = schema.raw_schema["paths"][operation.path][operation.method]
        if mode is GenerationMode.NEGATIVE and not {"parameters", "requestBody"} & set(raw):
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10)
            calls.append(case.operation.label)

        call()
    print(f"schemathesis {mode.value}: {len(calls)} calls over {len(set(calls))} operations")
