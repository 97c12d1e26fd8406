"""Real servers for the demo and the tests: demo apps and HAProxy as children on loopback.

Used by ``demo/run.py`` (``make demo``) and by the test fixtures; helpers, not fixtures. Every
server runs in the foreground as a child of this process, with its files in one temp
directory, on free loopback ports, and is stopped by its PID (SIGTERM, then SIGKILL after a
grace period): see recipes/lb-and-metrics.md sections 2, 4 and 7. A missing ``haproxy`` binary
raises :class:`MissingBinary`, which fails a test (never a skip).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DEFAULT_WEIGHTS",
    "Backend",
    "Child",
    "DemoApp",
    "HAProxy",
    "HAProxyStack",
    "LoadLoop",
    "MissingBinary",
    "Response",
    "free_port",
    "http_request",
    "make_workdir",
    "require_binary",
    "split",
    "start_stack",
    "wait_http",
]

ROOT = Path(__file__).resolve().parents[1]
DEMO_APP = ROOT / "demo" / "app.py"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


class MissingBinary(RuntimeError):
    """A server binary the demo or a test needs is not installed."""


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH; a missing binary raises with a clear message."""
    path = shutil.which(name)
    if path is None:
        where = "in CI" if os.environ.get("CI") == "true" else "on this machine"
        raise MissingBinary(
            f"'{name}' is not installed {where}; the demo and the tests need the real server "
            f"(Debian: apt-get install -y {name}, or run `make test` as root). Never skipped."
        )
    return path


def make_workdir(prefix: str = "cutover-test-") -> Path:
    """A fresh temp dir whose paths stay short enough for unix sockets (< 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    if len(str(d / "master.sock")) > 100:
        shutil.rmtree(d)
        d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    return d


# --- HTTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str


async def http_request(
    port: int, path: str = "/", *, method: str = "GET", within: float = 5.0
) -> Response:
    """One HTTP/1.1 request on a new connection to 127.0.0.1:``port`` (``Connection: close``),
    answered ``within`` seconds."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)
            }
            length = headers.get("content-length")
            body = await (reader.readexactly(int(length)) if length else reader.read())
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return Response(int(lines[0].split()[1]), headers, body.decode("utf-8", errors="replace"))


async def wait_http(port: int, path: str = "/", *, want: int = 200, within: float = 15.0) -> float:
    """Poll until ``GET path`` answers ``want`` (at most ``within`` s); returns seconds taken."""
    t0 = time.monotonic()
    last: object = None
    while time.monotonic() - t0 < within:
        try:
            r = await http_request(port, path, within=1.0)
            if r.status == want:
                return time.monotonic() - t0
            last = r.status
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            last = exc
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{LOOPBACK}:{port}{path} did not answer {want} in {within}s ({last!r})")


async def split(
    port: int, n: int = 2000, conc: int = 20, *, time_limit: float = 30.0
) -> collections.Counter[str]:
    """Send ``n`` real requests (new connection each, ``conc`` at a time) and count per color.

    The color comes from the ``X-Color`` header (else the body's second word); answers that are
    not 200 count as ``"<color or none>:<status>"``. Bounded by ``n`` and ``time_limit``: after
    the limit no new request starts, so the counts may sum to less than ``n``.
    """
    counts: collections.Counter[str] = collections.Counter()
    left = n
    deadline = time.monotonic() + time_limit

    async def worker() -> None:
        nonlocal left
        while left > 0 and time.monotonic() < deadline:
            left -= 1
            try:
                r = await http_request(port, "/", within=5.0)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                counts["error"] += 1
                continue
            words = r.body.split()
            color = r.headers.get("x-color") or (words[1] if len(words) > 1 else "none")
            counts[color if r.status == 200 else f"{color}:{r.status}"] += 1

    await asyncio.gather(*(worker() for _ in range(conc)))
    return counts


class LoadLoop:
    """Steady, bounded background traffic through a port: ``rate`` requests per second from
    ``conc`` workers (new connection each), counted like :func:`split`, until :meth:`stop`.

    What a service sees in production while a cutover runs: Prometheus has rates to compute
    and a rollback has live requests to (not) break."""

    def __init__(self, port: int, *, rate: float = 50.0, conc: int = 8) -> None:
        self.port = port
        self.rate = rate
        self.conc = conc
        self.counts: collections.Counter[str] = collections.Counter()
        self._next = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> LoadLoop:
        self._next = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"load-{self.port}-{i}")
            for i in range(self.conc)
        ]
        return self

    async def stop(self) -> collections.Counter[str]:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        return self.counts

    async def _worker(self) -> None:
        while True:
            slot, self._next = self._next, max(self._next, time.monotonic()) + 1.0 / self.rate
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            try:
                r = await http_request(self.port, "/", within=5.0)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                self.counts["error"] += 1
                continue
            color = r.headers.get("x-color") or "none"
            self.counts[color if r.status == 200 else f"{color}:{r.status}"] += 1


# --- processes --------------------------------------------------------------------------------


@dataclass
class Child:
    """A server process started by the test, stopped by PID."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @classmethod
    async def spawn(cls, name: str, argv: Sequence[str], workdir: Path) -> Child:
        log_path = workdir / f"{name}.log"
        log = log_path.open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=workdir,
            )
        except BaseException:
            log.close()
            raise
        return cls(name, proc, log_path, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code."""
        try:
            if self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.proc.wait(), grace)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    await self.proc.wait()
            rc = self.proc.returncode
            assert rc is not None
            return rc
        finally:
            self._log.close()


class DemoApp:
    """``demo/app.py`` on a free port; ``start`` returns once ``/healthz`` answers 200."""

    def __init__(self, child: Child, *, name: str, color: str, port: int) -> None:
        self.child = child
        self.name = name
        self.color = color
        self.port = port

    @classmethod
    async def start(
        cls, workdir: Path, *, name: str, color: str, port: int | None = None
    ) -> DemoApp:
        port = port or free_port()
        argv = [sys.executable, str(DEMO_APP), "--name", name, "--color", color]
        child = await Child.spawn(name, [*argv, "--port", str(port)], workdir)
        app = cls(child, name=name, color=color, port=port)
        try:
            await wait_http(port, "/healthz", within=20.0)
        except BaseException:
            await app.stop()
            raise
        return app

    async def _admin(self, path: str) -> None:
        r = await http_request(self.port, path, method="POST")
        if r.status != 200:
            raise RuntimeError(f"{self.name}: POST {path} -> {r.status} {r.body.strip()}")

    async def set_health(self, ok: bool) -> None:
        await self._admin(f"/admin/health?ok={int(ok)}")

    async def set_error_rate(self, rate: float) -> None:
        await self._admin(f"/admin/error-rate?rate={rate}")

    async def set_latency(self, seconds: float) -> None:
        await self._admin(f"/admin/latency?seconds={seconds}")

    async def stop(self) -> int:
        return await self.child.stop()


@dataclass(frozen=True)
class Backend:
    """One HAProxy backend: ``servers`` are ``(name, port, configured weight)``."""

    name: str
    balance: str
    servers: Sequence[tuple[str, int, int]]


class HAProxy:
    """HAProxy 2.6 in master-worker foreground mode with a unix and a TCP admin socket.

    One frontend per backend, each on its own free port (:attr:`frontend_ports`); health checks
    ``GET /healthz`` every 500 ms (down after 3 failures of up to 2 s each, up after 1 success).
    """

    #: The health checks of every server (a line of each backend).
    HEALTH_CHECKS = "    default-server check inter 500ms fall 3 rise 1"

    def __init__(
        self,
        child: Child,
        *,
        workdir: Path,
        frontend_ports: dict[str, int],
        tcp_port: int,
        health_port: int | None = None,
    ) -> None:
        self.child = child
        self.health_port = health_port
        self.workdir = workdir
        self.frontend_ports = frontend_ports
        self.tcp_port = tcp_port
        self.admin_socket = str(workdir / "admin.sock")
        self.master_socket = str(workdir / "master.sock")

    @property
    def runtime_unix(self) -> str:
        return f"unix:{self.admin_socket}"

    @property
    def runtime_tcp(self) -> str:
        return f"tcp:{LOOPBACK}:{self.tcp_port}"

    @staticmethod
    def config(
        workdir: Path,
        backends: Sequence[Backend],
        frontend_ports: dict[str, int],
        tcp_port: int,
        color_pools: Mapping[str, Sequence[tuple[str, int]]] | None = None,
        health_port: int | None = None,
    ) -> str:
        out = [
            "global",
            f"    pidfile {workdir}/haproxy.pid",
            f"    stats socket {workdir}/admin.sock mode 600 level admin",
            f"    stats socket ipv4@{LOOPBACK}:{tcp_port} level admin",
            "    stats timeout 30s",
            f"    server-state-file {workdir}/haproxy.state",
            "    log stderr format short local0 notice",
            "",
            "defaults",
            "    mode http",
            "    log global",
            "    timeout connect 2s",
            "    timeout client 10s",
            "    timeout server 10s",
            # a health check may wait this long for a busy app (the default is `inter`,
            # 500 ms: on a loaded 2-core machine two slow answers marked a healthy app DOWN)
            "    timeout check 2s",
            "    load-server-state-from-file global",
        ]
        for b in backends:
            out += [
                "",
                f"frontend fe_{b.name}",
                f"    bind {LOOPBACK}:{frontend_ports[b.name]}",
                f"    default_backend {b.name}",
                "",
                f"backend {b.name}",
                f"    balance {b.balance}",
                "    option httpchk GET /healthz",
                HAProxy.HEALTH_CHECKS,
            ]
            out += [f"    server {s} {LOOPBACK}:{p} weight {w}" for s, p, w in b.servers]
        if color_pools and health_port:
            # GET /<color>/healthz reaches every server of that color in turn (no health
            # checks here on purpose: one sick server makes every other answer fail)
            out += ["", "frontend fe_color_health", f"    bind {LOOPBACK}:{health_port}"]
            out += [
                f"    use_backend pool_{color} if {{ path_beg /{color}/ }}" for color in color_pools
            ]
            for color, servers in color_pools.items():
                out += [
                    "",
                    f"backend pool_{color}",
                    "    balance roundrobin",
                    "    http-request set-path %[path,regsub(^/[^/]+/,/)]",
                ]
                out += [f"    server {s} {LOOPBACK}:{p}" for s, p in servers]
        return "\n".join(out) + "\n"

    @classmethod
    async def start(
        cls,
        workdir: Path,
        backends: Sequence[Backend],
        *,
        frontend_ports: Mapping[str, int] | None = None,
        color_pools: Mapping[str, Sequence[tuple[str, int]]] | None = None,
        health_port: int | None = None,
    ) -> HAProxy:
        """``color_pools`` adds a frontend on ``health_port`` (free if not given) where
        ``/<color>/<path>`` reaches that color's servers (for per-color health checks)."""
        binary = require_binary("haproxy")
        frontend_ports = dict(frontend_ports or {b.name: free_port() for b in backends})
        tcp_port = free_port()
        if color_pools:
            health_port = health_port or free_port()
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(
            cls.config(workdir, backends, frontend_ports, tcp_port, color_pools, health_port)
        )
        (workdir / "haproxy.state").touch()
        argv = [binary, "-W", "-db", "-S", f"{workdir}/master.sock", "-f", str(cfg)]
        child = await Child.spawn("haproxy", argv, workdir)
        hap = cls(
            child,
            workdir=workdir,
            frontend_ports=frontend_ports,
            tcp_port=tcp_port,
            health_port=health_port,
        )
        try:
            await hap._wait_ready(within=15.0)
        except BaseException:
            await hap.stop()
            raise
        return hap

    async def _wait_ready(self, *, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.child.proc.returncode is not None:
                raise RuntimeError(
                    f"haproxy exited with {self.child.proc.returncode}:\n{self.log()}"
                )
            with contextlib.suppress(OSError, TimeoutError):
                if "Pid:" in await self.cli("show info"):
                    return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"haproxy did not answer 'show info' within {within}s:\n{self.log()}")

    async def cli(self, command: str, *, within: float = 5.0) -> str:
        """One runtime API line over the unix socket; returns the raw answer."""
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(self.admin_socket)
            try:
                writer.write(command.encode() + b"\n")
                writer.write_eof()
                await writer.drain()
                return (await reader.read()).decode()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def log(self) -> str:
        return self.child.log()

    async def stop(self) -> int:
        return await self.child.stop()


#: The main backend's servers and configured weights (blue1/blue2/green1/green2).
DEFAULT_WEIGHTS: Mapping[str, int] = {"blue1": 10, "blue2": 10, "green1": 10, "green2": 10}


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

    async def stop(self) -> None:
        await self.haproxy.stop()
        await asyncio.gather(*(app.stop() for app in self.apps.values()))
        shutil.rmtree(self.workdir, ignore_errors=True)


async def start_stack(
    weights: Mapping[str, int] = DEFAULT_WEIGHTS,
    *,
    extra_backends: Mapping[str, str] | None = None,
    color_health: bool = False,
    ports: Mapping[str, int] | None = None,
    workdir: Path | None = None,
) -> HAProxyStack:
    """Start the demo apps, then HAProxy with backend ``checkout`` over them; on any failure
    stop what was started. ``extra_backends`` (name -> balance algorithm) adds backends over
    the same apps; ``color_health`` adds the per-color health frontend; ``ports`` fixes ports
    by name (app names, ``checkout`` for the frontend, ``health``) instead of free ones."""
    require_binary("haproxy")
    ports = ports or {}
    workdir = workdir or make_workdir("cutover-hap-")
    apps: dict[str, DemoApp] = {}
    try:
        started = await asyncio.gather(
            *(
                DemoApp.start(
                    workdir, name=name, color=name.rstrip("0123456789"), port=ports.get(name)
                )
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
        backends += [Backend(name, algo, servers) for name, algo in (extra_backends or {}).items()]
        pools: dict[str, list[tuple[str, int]]] = {}
        for name, app in apps.items():
            pools.setdefault(app.color, []).append((name, app.port))
        haproxy = await HAProxy.start(
            workdir,
            backends,
            frontend_ports={"checkout": ports["checkout"]} if "checkout" in ports else None,
            color_pools=pools if color_health else None,
            health_port=ports.get("health"),
        )
    except BaseException:
        await asyncio.gather(*(app.stop() for app in apps.values()))
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return HAProxyStack(workdir=workdir, apps=apps, haproxy=haproxy, weights=weights)
