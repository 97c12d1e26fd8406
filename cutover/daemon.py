"""The daemon process: config -> store -> supervisor -> API, and a clean stop on SIGTERM.

SIGTERM/SIGINT stop the API and cancel every runner without touching traffic; the store keeps
every running cutover, and the next start resumes them (PRODUCT.md, Restart). SIGHUP re-reads
the config file (:func:`reload_config`; PRODUCT.md, Reload): services and tokens change, running
cutovers keep their frozen plan; what is bound at start-up (:data:`RESTART_ONLY`) cannot.
With ``api.tls`` the API speaks HTTPS only (TLS 1.2 or newer); a certificate that cannot be
loaded stops the start-up before anything else is opened.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path

import structlog
from aiohttp import web

from cutover.api.app import TOKENS, make_app
from cutover.api.auth import TokenTable
from cutover.api.listener import ApiListener, connection_cap
from cutover.api.tls import server_ssl_context
from cutover.checks.http import HttpCheckSpec
from cutover.config import Config, load_config
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.errors import ConfigError, CutoverError, StoreError
from cutover.notify import Notifier
from cutover.observability.metrics import Metrics
from cutover.resource_pool import ResourcePool
from cutover.resources import SecretSink
from cutover.store.sqlite import SqliteStore

__all__ = [
    "GC_THRESHOLDS",
    "RESTART_ONLY",
    "few_files_warning",
    "reload_config",
    "restart_only_changes",
    "run_daemon",
]

#: Garbage-collector generation thresholds for the daemon. With CPython's default (700, 10, 10)
#: a cutover's short-lived states (each step makes a new one, kept a few seconds) survive many
#: young collections and fill the old generation, so with many cutovers full collections run
#: often and each holds the event loop (rollbacks included). With far more allocations between
#: young collections most of those states die young and full collections become rare
#: (measured in docs/performance.md).
GC_THRESHOLDS = (50_000, 20, 100)


#: Open files the engine may hold besides its checks' kept connections: the store, the
#: routers' and notifiers' connections. The API's connections get only what is left
#: (:func:`api_connection_cap`), so no client can take these.
FILES_BESIDES_CHECKS = 256


def kept_connections(config: Config) -> int:
    """Connections the checks keep open when every service's cutover runs: one per plain
    ``http://`` check (cutover.checks.http1)."""
    return sum(
        1
        for service in config.services.values()
        for check in service.checks
        if isinstance(check, HttpCheckSpec) and check.url.startswith("http://")
    )


def open_files_soft_limit(limits: str) -> int | None:
    """The soft "Max open files" of a ``/proc/<pid>/limits`` text; None when unlimited or not
    there. Read from /proc, not getrlimit(2): the shipped unit's system-call filter leaves out
    ``@resources``, and a call outside the filter kills the process."""
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return int(soft) if soft.isdigit() else None
    return None


def api_connection_cap(config: Config, limits: str) -> int:
    """The most API connections open at once: ``api.max_connections`` within the open-files
    limit of a ``/proc/<pid>/limits`` text, less the engine's reserve."""
    reserve = kept_connections(config) + FILES_BESIDES_CHECKS
    return connection_cap(config.api.max_connections, open_files_soft_limit(limits), reserve)


def few_files_warning(config: Config, limits: str) -> str | None:
    """Why the open-files limit is too low for this config, or None."""
    soft = open_files_soft_limit(limits)
    checks = kept_connections(config)
    needed = checks + FILES_BESIDES_CHECKS
    if soft is None or soft >= needed:
        return None
    return (
        f"the open-files limit ({soft}) is below what {checks} plain-http health check(s) need "
        f"when every cutover runs ({needed}): checks would fail with 'Too many open files'. "
        "Raise it (LimitNOFILE=; config/cutover.service sets 65536)"
    )


#: Config keys a reload cannot change, bound at start-up: the listening socket, its TLS
#: context and connection limits, the open state store (and its lock), the webhook senders and
#: their delivery cursors. A reload that changes one is refused whole; restart for them.
RESTART_ONLY = (
    "api.listen",
    "api.tls",
    "api.max_connections",
    "api.header_timeout",
    "api.keepalive_timeout",
    "state",
    "notify",
)


def restart_only_changes(running: Config, new: Config) -> list[str]:
    """An error per :data:`RESTART_ONLY` key that ``new`` changes."""
    values = {
        "api.listen": (running.api.listen, new.api.listen),
        "api.tls": (running.api.tls, new.api.tls),
        "api.max_connections": (running.api.max_connections, new.api.max_connections),
        "api.header_timeout": (running.api.header_timeout, new.api.header_timeout),
        "api.keepalive_timeout": (running.api.keepalive_timeout, new.api.keepalive_timeout),
        "state": (running.state, new.state),
        "notify": (running.notify, new.notify),
    }
    return [
        f"{key}: cannot change on reload; restart the daemon to change it"
        for key, (before, after) in values.items()
        if before != after
    ]


async def reload_config(
    path: str | Path,
    running: Config,
    *,
    supervisor: Supervisor,
    tokens: TokenTable,
    metrics: Metrics,
) -> Config:
    """Re-read ``path`` (SIGHUP) and return the config now in force. A valid one goes to the
    supervisor (next starts) and the token table (rotation); an invalid one, or one that
    changes a :data:`RESTART_ONLY` key, is refused whole with every error logged, and
    ``running`` stays. ``cutover_config_reload_success`` says which."""
    log = structlog.get_logger()
    try:
        # file I/O and validation off the event loop: rollbacks go on meanwhile
        new = await asyncio.to_thread(load_config, path)
        refused = restart_only_changes(running, new)
        if refused:
            raise ConfigError(refused)
    except ConfigError as exc:
        metrics.config_reload_success.set(0)
        log.error(
            "config reload refused: the running config stays",
            config=str(path),
            errors=exc.errors,
            alarm=True,
        )
        return running
    try:
        await supervisor.reload(new)
    except StoreError as exc:  # it reads which removed services still have a cutover
        metrics.config_reload_success.set(0)
        log.error(
            "config reload not completed: the state store could not be read; send SIGHUP again",
            config=str(path),
            error=str(exc),
            alarm=True,
        )
        return running
    tokens.replace(new.api.tokens)
    metrics.config_reload_success.set(1)
    log.info(
        "config reloaded: next starts use it; running cutovers keep their plan",
        config=str(path),
        services=list(new.services),
        auth=f"{len(new.api.tokens)} bearer token(s)" if new.api.tokens else "open",
    )
    return new


async def _reloads(
    requested: asyncio.Event,
    path: str | Path,
    config: Config,
    *,
    supervisor: Supervisor,
    tokens: TokenTable,
    metrics: Metrics,
) -> None:
    """Run until cancelled: one reload per wake-up; SIGHUPs during a reload make one more."""
    while True:
        await requested.wait()
        requested.clear()
        config = await reload_config(
            path, config, supervisor=supervisor, tokens=tokens, metrics=metrics
        )


async def run_daemon(
    config: Config, *, config_path: str | Path, secrets: SecretSink, act_delay: float = 0.0
) -> None:
    """Run until SIGTERM/SIGINT; ``config`` was read from ``config_path``, which SIGHUP
    re-reads. ``secrets`` (the log redactor) is where adapters put the secrets they load.
    ``act_delay`` is the runners' test hook (:class:`~cutover.engine.runner.Runner`)."""
    log = structlog.get_logger()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        limits = await asyncio.to_thread(Path("/proc/self/limits").read_text)
    except OSError:
        limits = ""
    few_files = few_files_warning(config, limits)
    if few_files:
        log.warning(few_files, alarm=True)
    host, port = config.api.host, config.api.port  # config refuses non-loopback w/o tokens
    tls = config.api.tls
    ssl_context = await asyncio.to_thread(server_ssl_context, tls) if tls else None
    metrics = Metrics()
    store = SqliteStore(path=config.state.sqlite, on_write_error=metrics.store_write_errors.inc)
    await store.open()
    notifier = Notifier(specs=config.notify, store=store, secrets=secrets, metrics=metrics)
    # the clients adapters share: made on first use, closed after the last runner stopped
    resources = ResourcePool(secrets=secrets)
    supervisor = Supervisor(
        config=config,
        store=store,
        clock=SystemClock(),
        resources=resources,
        metrics=metrics,
        listeners=(notifier.wake,),
        act_delay=act_delay,
    )
    app = make_app(supervisor=supervisor, store=store, metrics=metrics)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    stop = asyncio.Event()
    reload_requested = asyncio.Event()  # a SIGHUP before the engine runs waits for it
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    lag = asyncio.create_task(metrics.watch_loop_lag(), name="loop-lag")
    reloads: asyncio.Task[None] | None = None
    listener: ApiListener | None = None
    try:
        await runner.setup()
        assert runner.server is not None  # set by setup()
        listener = ApiListener(
            runner.server,
            host=host,
            port=port,
            ssl_context=ssl_context,
            max_connections=api_connection_cap(config, limits),
            header_timeout=config.api.header_timeout,
            keepalive_timeout=config.api.keepalive_timeout,
        )
        try:
            await listener.start()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise CutoverError(
                f"api.listen: cannot listen on {config.api.listen}: {reason}"
            ) from None
        await notifier.start()  # before the runners: resends what the last run left owed
        await supervisor.start()
        reloads = asyncio.create_task(
            _reloads(
                reload_requested,
                config_path,
                config,
                supervisor=supervisor,
                tokens=app[TOKENS],
                metrics=metrics,
            ),
            name="config-reloads",
        )
        # what start-up built (modules, config, resumed runners) lives as long as the daemon:
        # out of every later collection's way
        gc.collect()
        gc.freeze()
        log.info(
            "daemon ready",
            listen=config.api.listen,
            scheme="https" if ssl_context else "http",
            max_connections=listener.max_connections,
            auth=f"{len(config.api.tokens)} bearer token(s)" if config.api.tokens else "open",
            services=list(config.services),
        )
        await stop.wait()
        log.info("stopping: traffic is left as it is")
    finally:
        if reloads is not None:
            reloads.cancel()
            await asyncio.gather(reloads, return_exceptions=True)
        await supervisor.stop()
        await resources.aclose()
        await notifier.stop()
        lag.cancel()
        await asyncio.gather(lag, return_exceptions=True)
        if listener is not None:
            await listener.stop()
        await runner.cleanup()
        await store.aclose()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
