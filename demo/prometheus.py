"""A real Prometheus for the demo and the tests: a child process on a free loopback port.

Its config, data and log live in one temp directory; it scrapes the given targets (and
evaluates) every second, and is stopped by its PID. :meth:`Prometheus.stop` and
:meth:`Prometheus.start` keep the port and the data directory, so a test can take the provider
away mid-run and bring it back with its samples (recipes/lb-and-metrics.md, section 6: start
flags, readiness on ``/-/ready``, first ``rate()`` value about 6.5 s after a fresh start, which
:meth:`Prometheus.wait_for_data` waits out by polling). A missing ``prometheus`` binary raises
:class:`~demo.stack.MissingBinary`, which fails a test (never a skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import aiohttp

from demo.stack import LOOPBACK, Child, free_port, http_request, make_workdir, require_binary

__all__ = ["Prometheus"]


def _config(jobs: Mapping[str, Sequence[str]]) -> str:
    """prometheus.yml: 1 s scrape and evaluation (a scrape timeout above the interval is
    refused by Prometheus, so it is 1 s as well)."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs.items()
        ],
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


class Prometheus:
    """Prometheus 2.x in the foreground, scraping ``jobs`` (job name -> ``host:port`` targets)."""

    def __init__(self, *, binary: str, workdir: Path, port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.child: Child | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @classmethod
    async def launch(
        cls,
        jobs: Mapping[str, Sequence[str]],
        *,
        workdir: Path | None = None,
        port: int | None = None,
    ) -> Prometheus:
        """Write the config and start; returns once ``/-/ready`` answers 200."""
        binary = require_binary("prometheus")
        own_dir = workdir is None
        workdir = workdir or make_workdir("cutover-prom-")
        (workdir / "prometheus.yml").write_text(_config(jobs))
        prom = cls(binary=binary, workdir=workdir, port=port or free_port())
        try:
            await prom.start()
        except BaseException:
            if own_dir:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        return prom

    async def start(self, *, within: float = 15.0) -> None:
        """Start (again) on the same port with the same data; returns once ready."""
        if self.child is not None and self.child.proc.returncode is None:
            raise RuntimeError("prometheus is already running")
        self._starts += 1
        argv = [
            self.binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        name = "prometheus" if self._starts == 1 else f"prometheus-{self._starts}"
        self.child = await Child.spawn(name, argv, self.workdir)
        try:
            await self._wait_ready(self.child, within=within)
        except BaseException:
            await self.child.stop()
            raise

    async def _wait_ready(self, child: Child, *, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if child.proc.returncode is not None:
                raise RuntimeError(
                    f"prometheus exited with {child.proc.returncode}:\n{child.log()}"
                )
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                if (await http_request(self.port, "/-/ready", within=1.0)).status == 200:
                    return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"prometheus was not ready within {within}s:\n{child.log()}")

    async def stop(self) -> int | None:
        """SIGTERM by PID (exit code 0 within milliseconds); ``None`` if it was not running."""
        child, self.child = self.child, None
        return None if child is None else await child.stop()

    async def cleanup(self) -> None:
        """Stop it and remove its directory."""
        await self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return self.child.log() if self.child is not None else ""

    async def query(self, promql: str, *, within: float = 2.0) -> list[float]:
        """The values of an instant query (a scalar is one value); ``[]`` for no series."""
        timeout = aiohttp.ClientTimeout(total=within)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.url}/api/v1/query", params={"query": promql}) as resp,
        ):
            body = await resp.json(content_type=None)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r}: HTTP {resp.status} {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(item["value"][1]) for item in data["result"]]

    async def wait_for_data(
        self,
        promql: str,
        *,
        accept: Callable[[list[float]], bool] | None = None,
        within: float = 20.0,
    ) -> list[float]:
        """Poll every 0.2 s until the query gives at least one value and none is NaN (and
        ``accept(values)`` holds, if given); returns the values."""
        deadline = time.monotonic() + within
        values: list[float] = []
        while True:
            # not ready yet: a refused connection, or a plain-text 503 instead of JSON
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                values = await self.query(promql)
                if (
                    values
                    and not any(math.isnan(v) for v in values)
                    and (accept is None or accept(values))
                ):
                    return values
            if time.monotonic() > deadline:
                raise TimeoutError(f"{promql!r} gave {values} for {within}s")
            await asyncio.sleep(0.2)
