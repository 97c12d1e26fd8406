"""Suite-wide guards (no test may leave child processes or asyncio tasks behind) and the
resources adapters under test are built with."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cutover.resource_pool import ResourcePool
from cutover.testing import resource_pool


def _children() -> set[int]:
    me = os.getpid()
    kids: set[int] = set()
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[1] the parent pid; zombies are reaped by asyncio
        if int(fields[1]) == me and fields[0] != "Z":
            kids.add(int(status.parent.name))
    return kids


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    before = _children()
    yield
    left = _children() - before
    if left:
        names = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
            for pid in left
            if Path(f"/proc/{pid}/cmdline").exists()
        }
        pytest.fail(f"test left child processes behind: {names}")


@pytest.fixture(autouse=True)
async def no_leftover_tasks() -> object:
    yield
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if left:
        for t in left:
            t.cancel()
        pytest.fail(f"test left asyncio tasks behind: {[t.get_name() for t in left]}")


@pytest.fixture
async def resources() -> AsyncIterator[ResourcePool]:
    """The shared clients adapters are built with, closed when the test ends."""
    async with resource_pool() as pool:
        yield pool
