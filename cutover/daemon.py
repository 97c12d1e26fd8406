"""The daemon process: config -> store -> supervisor -> API, and a clean stop on SIGTERM.

SIGTERM/SIGINT stop the API and cancel every runner without touching traffic; the store keeps
every running cutover, and the next start resumes them (PRODUCT.md, Restart).
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal

import structlog
from aiohttp import web

from cutover.api.app import make_app
from cutover.config import Config
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.errors import ConfigError
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore

__all__ = ["run_daemon", "split_listen"]


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_daemon(config: Config) -> None:
    log = structlog.get_logger()
    host, port = split_listen(config.api.listen)
    if not config.api.tokens and not _is_loopback(host):
        raise ConfigError(
            [
                f"api.listen: {config.api.listen} is not loopback and api.tokens is empty; "
                "configure tokens before listening beyond this machine"
            ]
        )
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
