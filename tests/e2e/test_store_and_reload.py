"""End-to-end: a state store that fills up under a running cutover, and SIGHUP config reloads.

The daemon runs as a process against real HAProxy and demo apps (tests/e2e/conftest.py). For
the full store its SQLite database lives on a small tmpfs of its own (``mount -t tmpfs``: the
tests run as root, in CI too; a mount that fails fails the test), which a filler file fills to
the last byte. A fresh database's write-ahead log only grows, and each commit appends at least
one 4 KiB page plus its frame header, so on a full file system every write fails with
``SQLITE_FULL`` until the filler goes.

PRODUCT.md, Operator controls made safe: "Store faults are visible" and "Reload".
"""

from __future__ import annotations

import asyncio
import copy
import errno
import json
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.async_api import Browser, expect

from tests.e2e import test_status_page
from tests.e2e.conftest import E2E
from tests.e2e.test_status_page import open_page

#: Big enough for the daemon's database and its write-ahead log in this test, small enough to
#: fill in an instant.
TMPFS_SIZE = "4m"

STORE_STAGES = [
    {"weight": 10, "hold": "3s"},
    {"weight": 50, "hold": "2s"},
    {"weight": 100, "hold": "1s"},
]
RELOAD_STAGES = [{"weight": 10, "hold": "120s"}, {"weight": 100, "hold": "1s"}]


browser = test_status_page.browser  # headless Chromium, as a fixture of this module too


@pytest.fixture
async def state_on_tmpfs(e2e: E2E) -> AsyncIterator[Path]:
    """The daemon's state directory (where ``E2E.write_config`` puts the database) on its own
    tmpfs; unmounted after the daemon stops."""
    state = e2e.dir / "state"
    state.mkdir()
    rc, err = await run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(state))
    assert rc == 0, f"cannot mount a tmpfs (run as root): {err}"
    try:
        yield state
    finally:
        if e2e.daemon is not None:  # it holds the database open
            await e2e.daemon.stop()
        rc, err = await run("umount", str(state))
        assert rc == 0, err


async def run(*argv: str) -> tuple[int, str]:
    """Run a command; its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


def fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its file system has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def stored(db: Path, cutover_id: str) -> dict[str, Any]:
    """The cutover's record as the store holds it, read from the side (read-only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT body FROM cutovers WHERE id = ?", (cutover_id,)).fetchone()
    finally:
        con.close()
    assert row is not None
    record: dict[str, Any] = json.loads(row[0])
    return record


async def metric(e2e: E2E, name: str) -> float:
    status, text = await e2e.api("GET", "/metrics")
    assert status == 200
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


async def eventually(
    what: str, probe: Callable[[], Awaitable[Any]], *, within: float, e2e: E2E
) -> Any:
    """Poll ``probe`` until it returns something truthy, at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {within}s: {what}\n{e2e.daemon_log()[-3000:]}")


async def servers_state(e2e: E2E) -> list[tuple[str, str, str]]:
    """(server, weight, admin state) of each server of ``checkout``, as HAProxy has them."""
    text = await e2e.stack.haproxy.cli("show servers state checkout")
    # after the format version and the header: be_id be_name srv_id srv_name srv_addr
    # srv_op_state srv_admin_state srv_uweight ... (HAProxy management guide, show servers state)
    rows = [row for row in (line.split() for line in text.splitlines()) if len(row) > 7]
    return sorted((row[3], row[7], row[6]) for row in rows)


# --- a full store --------------------------------------------------------------------------------


async def test_a_full_store_is_visible_holds_forward_moves_and_still_rolls_back(
    e2e: E2E, state_on_tmpfs: Path, browser: Browser
) -> None:
    db = state_on_tmpfs / "cutover.db"
    # Given a cutover holding at 10 % on real HAProxy, its database on a tmpfs
    c = await e2e.holding_at(STORE_STAGES, stage=0)
    cid = c["id"]
    at_10 = await servers_state(e2e)

    # When the file system fills up
    filler = fill(state_on_tmpfs)

    # Then the stage change after the 3 s hold cannot be written, and the status says why
    c = await eventually(
        "store_error in status",
        lambda: _with_store_error(e2e, cid),
        within=15,
        e2e=e2e,
    )
    assert "disk" in c["store_error"] and str(db) in c["store_error"], c["store_error"]
    status, body = await e2e.api("GET", "/readyz")
    assert status == 503 and body["error"]["code"] == "store_unwritable", body
    assert str(db) in body["error"]["message"] and "full" in body["error"]["message"]
    rc, out, err = await e2e.cli("status", "checkout")
    assert rc == 0 and f"store_error: state store {db}" in out, (out, err)
    assert await metric(e2e, "cutover_store_write_errors_total") >= 1

    # And nothing moves toward the new color: HAProxy keeps the first stage's weights,
    # measured seconds past its hold, and the stored record is still at the first stage
    await asyncio.sleep(3)
    assert await servers_state(e2e) == at_10
    share = await e2e.green_share(1000)
    assert 5 <= share <= 15, (share, await e2e.stack.haproxy.cli("show servers state checkout"))
    assert stored(db, cid)["stage_index"] == 0
    failed_writes = await metric(e2e, "cutover_store_write_errors_total")
    assert failed_writes >= 2, failed_writes  # every input tries the write again...
    alarms = [line for line in e2e.daemon_log().splitlines() if "state store cannot write" in line]
    assert len(alarms) == 1, alarms  # ...and the alarm line is paced (one a minute), not one each
    assert json.loads(alarms[0])["alarm"] is True
    # and on-call's status page says so
    page, errors = await open_page(browser, e2e.url + "/")
    store_banner = page.locator('section[data-service="checkout"] .banner.store-error')
    await expect(store_banner).to_contain_text(f"State store cannot write: state store {db}")
    assert errors == []

    # When the new color starts failing while the store is still full
    for name in ("green1", "green2"):
        await e2e.stack.apps[name].set_health(False)

    # Then the rollback is acted on at once: all traffic on blue, measured, green in maint
    c = await e2e.wait_for(cid, state="rolled_back", within=20)
    assert c["store_error"], c  # not written yet
    assert await e2e.green_share(1000) == 0.0
    assert all(admin == "1" for server, _, admin in await servers_state(e2e) if "green" in server)
    assert stored(db, cid)["status"] == "running"

    # When space returns, the rollback is written: the store and the status say so, once
    filler.unlink()
    c = await eventually(
        "the rollback written",
        lambda: _without_store_error(e2e, cid),
        within=20,
        e2e=e2e,
    )
    assert stored(db, cid)["status"] == "rolled_back"
    assert (await e2e.api("GET", "/readyz"))[0] == 200
    kinds = [e["kind"] for e in c["events"]]
    assert kinds.count("rollback_started") == 1 and kinds[-1] == "rolled_back", kinds
    # the stage change decided during the fault is in the journal, never applied
    applied = [e["data"].get("stage") for e in c["events"] if e["kind"] == "stage_applied"]
    assert applied == [0], kinds
    assert "state store writes again" in e2e.daemon_log()
    await page.reload()
    await expect(page.locator(".banner.store-error")).to_have_count(0)
    assert await e2e.green_share(1000) == 0.0


async def _with_store_error(e2e: E2E, cutover_id: str) -> dict[str, Any] | None:
    c = await e2e.cutover(cutover_id)
    return c if c.get("store_error") else None


async def _without_store_error(e2e: E2E, cutover_id: str) -> dict[str, Any] | None:
    c = await e2e.cutover(cutover_id)
    return c if c["store_error"] is None else None


# --- SIGHUP reload -------------------------------------------------------------------------------


async def test_sighup_applies_a_good_config_and_refuses_a_bad_one_without_restarts(
    e2e: E2E,
) -> None:
    # Given a cutover holding at 10 % for a long while
    c = await e2e.holding_at(RELOAD_STAGES, stage=0)
    cid = c["id"]
    assert e2e.daemon is not None
    pid = e2e.daemon.pid
    original = yaml.safe_load(e2e.config_path.read_text())

    # When the config gains a service and the running service's stages change, and SIGHUP
    changed = copy.deepcopy(original)
    checkout = changed["services"]["checkout"]
    checkout["stages"] = [{"weight": 30, "hold": "1s"}, {"weight": 100, "hold": "1s"}]
    billing = copy.deepcopy(checkout)
    billing["routers"][0] |= {"name": "billing-lb", "backend": "billing"}
    changed["services"]["billing"] = billing
    e2e.config_path.write_text(yaml.safe_dump(changed))
    e2e.daemon.proc.send_signal(signal.SIGHUP)

    # Then the new service appears, in the same process
    await eventually("billing listed", lambda: _services(e2e, "billing"), within=10, e2e=e2e)
    assert e2e.daemon.proc.returncode is None and e2e.daemon.pid == pid
    assert await metric(e2e, "cutover_config_reload_success") == 1
    # And the running cutover is not restarted and keeps its frozen plan and its traffic
    now = await e2e.cutover(cid)
    assert (now["state"], now["stage"], now["phase"]) == ("running", 0, "holding")
    assert [s["weight"] for s in now["stages"]] == [10, 100]
    assert "restarted" not in [e["kind"] for e in now["events"]]
    assert now["hold_elapsed"] >= c["hold_elapsed"]
    share = await e2e.green_share(1000)
    assert 5 <= share <= 15, share

    # When the file turns invalid and SIGHUP comes again
    broken = copy.deepcopy(changed)
    broken["services"]["billing"]["stages"][0]["weight"] = 0
    e2e.config_path.write_text(yaml.safe_dump(broken))
    e2e.daemon.proc.send_signal(signal.SIGHUP)

    # Then it is refused whole with its errors logged, and the running config stays
    await eventually(
        "reload refused",
        lambda: _metric_is(e2e, "cutover_config_reload_success", 0),
        within=10,
        e2e=e2e,
    )
    refused = [line for line in e2e.daemon_log().splitlines() if "config reload refused" in line]
    assert len(refused) == 1 and "services.billing.stages[0].weight" in refused[0], refused
    assert await _services(e2e, "billing") and await _services(e2e, "checkout")
    now = await e2e.cutover(cid)
    assert (now["state"], now["stage"]) == ("running", 0)
    assert "restarted" not in [e["kind"] for e in now["events"]]
    # billing is still served from the running config
    _, body = await e2e.api("GET", "/v1/services/billing")
    assert body["name"] == "billing" and body["cutover"] is None
    assert e2e.daemon.proc.returncode is None and e2e.daemon.pid == pid


async def _services(e2e: E2E, name: str) -> bool:
    status, body = await e2e.api("GET", "/v1/services")
    assert status == 200, body
    return name in [s["name"] for s in body["services"]]


async def _metric_is(e2e: E2E, name: str, value: float) -> bool:
    return await metric(e2e, name) == value
