"""The daemon process: config -> store -> supervisor -> API, and a clean stop on SIGTERM.

SIGTERM/SIGINT stop the API and cancel every runner without touching traffic; the store keeps
every running cutover, and the next start resumes them (PRODUCT.md, Restart).
"""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from cutover.api.app import make_app
from cutover.config import Config
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore

__all__ = ["run_daemon"]


async def run_daemon(config: Config) -> None:
    log = structlog.get_logger()
    host, port = config.api.host, config.api.port  # config refuses non-loopback w/o tokens
    store = SqliteStore(path=config.state.sqlite)
    await store.open()
    metrics = Metrics()
    supervisor = Supervisor(config=config, store=store, clock=SystemClock(), metrics=metrics)
    runner = web.AppRunner(
        make_app(supervisor=supervisor, store=store, metrics=metrics), access_log=None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, shutdown_timeout=2.0)
        await site.start()
        await supervisor.start()
        log.info("daemon ready", listen=config.api.listen, services=list(config.services))
        await stop.wait()
        log.info("stopping: traffic is left as it is")
    finally:
        await supervisor.stop()
        await runner.cleanup()
        await store.aclose()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
