"""End-to-end: the daemon as a subprocess against real HAProxy and demo apps.

Given/When/Then helpers in the spirit of Argo Rollouts' test fixtures: ``E2E`` starts the
stack and the daemon, writes the config, and offers the API, the CLI and traffic measurement.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from demo.stack import Child, HAProxyStack, free_port, split, start_stack, wait_http

TERMINAL = ("completed", "rolled_back")


class E2E:
    def __init__(self, stack: HAProxyStack) -> None:
        self.stack = stack
        self.dir = stack.workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.daemon: Child | None = None
        self.daemon_runs = 0
        self.config_path = self.dir / "cutover.yaml"

    def write_config(
        self,
        *,
        stages: list[dict[str, Any]],
        checks: list[dict[str, Any]] | None = None,
        router: dict[str, Any] | None = None,
        **service: Any,
    ) -> Path:
        health = self.stack.haproxy.health_port
        default_checks = [
            {
                "name": "new-health",
                "type": "http",
                "url": f"http://127.0.0.1:{health}/{{{{new}}}}/healthz",
                "interval": "300ms",
                "timeout": "1s",
                "failure_limit": 2,
            }
        ]
        config = {
            "api": {"listen": f"127.0.0.1:{self.port}"},
            "state": {"sqlite": str(self.dir / "state" / "cutover.db")},
            "services": {
                "checkout": {
                    "routers": [router or self.stack.spec_values(name="edge", timeout="1s")],
                    "stages": stages,
                    "checks": default_checks if checks is None else checks,
                    **service,
                }
            },
        }
        self.config_path.write_text(yaml.safe_dump(config))
        return self.config_path

    # --- the daemon ---------------------------------------------------------------------------

    async def start_daemon(self, *, act_delay: float = 0.0) -> None:
        """``act_delay``: the runners' test hook, seconds between persisting and acting."""
        self.daemon_runs += 1
        self.daemon = await Child.spawn(
            f"daemon-{self.daemon_runs}",
            [sys.executable, "-m", "cutover", "daemon", "-c", str(self.config_path)]
            + (["--test-act-delay", str(act_delay)] if act_delay else []),
            self.dir,
        )
        try:
            await wait_http(self.port, "/readyz", within=20.0)
        except TimeoutError:
            raise AssertionError(f"daemon not ready:\n{self.daemon.log()}") from None

    async def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.proc.kill()
        await self.daemon.stop()

    async def stop_daemon(self) -> int:
        assert self.daemon is not None
        return await self.daemon.stop(grace=10.0)

    def daemon_log(self) -> str:
        return "\n".join(
            (self.dir / f"daemon-{i}.log").read_text(errors="replace")
            for i in range(1, self.daemon_runs + 1)
            if (self.dir / f"daemon-{i}.log").exists()
        )

    # --- API ------------------------------------------------------------------------------------

    async def api(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
            s.request(method, self.url + path, **kw) as r,
        ):
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def start(self) -> dict[str, Any]:
        status, body = await self.api("POST", "/v1/services/checkout/cutovers")
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def holding_at(self, stages: list[dict[str, Any]], stage: int) -> dict[str, Any]:
        """Given a daemon with ``stages``, when a cutover starts, then it holds at ``stage``."""
        self.write_config(stages=stages)
        await self.start_daemon()
        c = await self.start()
        return await self.wait_for(c["id"], state="running", stage=stage, phase="holding")

    async def cutover(self, cutover_id: str) -> dict[str, Any]:
        status, body = await self.api("GET", f"/v1/cutovers/{cutover_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def wait_for(
        self,
        cutover_id: str,
        *,
        state: str | tuple[str, ...],
        stage: int | None = None,
        phase: str | None = None,
        within: float = 30.0,
    ) -> dict[str, Any]:
        states = (state,) if isinstance(state, str) else state
        deadline = time.monotonic() + within
        c: dict[str, Any] = {}
        while time.monotonic() < deadline:
            c = await self.cutover(cutover_id)
            if (
                c["state"] in states
                and (stage is None or c["stage"] == stage)
                and (phase is None or c["phase"] == phase)
            ):
                return c
            if c["state"] in TERMINAL and c["state"] not in states:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"cutover not {states} stage={stage} phase={phase} within {within}s: "
            f"{json.dumps(c, indent=1)[:3000]}\n--- daemon log ---\n{self.daemon_log()[-4000:]}"
        )

    async def cli(self, *args: str, within: float = 60.0) -> tuple[int, str, str]:
        env = {**os.environ, "CUTOVER_URL": self.url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cutover",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), within)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    # --- traffic ----------------------------------------------------------------------------

    async def green_share(self, n: int = 1000) -> float:
        counts = await split(self.stack.port, n=n, conc=20)
        ok = counts["blue"] + counts["green"]
        assert ok == n, f"not every request answered 200: {dict(counts)}"
        return 100.0 * counts["green"] / ok


@pytest.fixture
async def e2e() -> AsyncIterator[E2E]:
    stack = await start_stack(color_health=True)
    env = E2E(stack)
    try:
        # green starts out of rotation: the live color (blue) has the full share
        await stack.haproxy.cli(
            "set server checkout/green1 state maint; set server checkout/green2 state maint"
        )
        yield env
    finally:
        if env.daemon is not None:
            await env.daemon.stop()
        await stack.stop()
