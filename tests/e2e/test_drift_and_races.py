"""End to end: hand edits on the real HAProxy during a hold, and requests that race.

Drift (PRODUCT.md, Drift): someone runs ``set server checkout/green1 weight 5`` on the runtime
API while a stage holds. The daemon reads its routers back every observe interval (1 s here:
twice the 300 ms check interval, and at least 1 s), so the edit is an event within
about one interval, handled by ``on_drift``: ``pause`` (the default), ``rollback``, or
``reassert`` (which may only move traffic back toward the old color; an edit toward the old
color therefore pauses too).

Races: 20 concurrent starts give exactly one 201; commands sent while a stage change is in
flight (the runtime API slowed down by :class:`DelayProxy`) are each answered and reflected in
the end state; a second daemon on the same SQLite file refuses to start with one line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from demo.stack import free_port
from tests.e2e.conftest import E2E
from tests.integration.test_faults import DelayProxy

#: Observe interval of the daemon for these configs (checks every 300 ms -> max(1 s, 600 ms)).
OBSERVE_EVERY = 1.0
HOLDING = [
    {"weight": 10, "hold": "500ms"},
    {"weight": 50, "hold": "60s"},
    {"weight": 100, "hold": "500ms"},
]
EDIT = "set server checkout/green1 weight 5"


async def _weights(e2e: E2E) -> dict[str, int]:
    """Current runtime weight of each server of ``checkout`` (``show servers state``)."""
    out = await e2e.stack.haproxy.cli("show servers state checkout")
    rows = [
        row for row in map(str.split, out.splitlines()) if len(row) > 7 and row[1] == "checkout"
    ]
    return {row[3]: int(row[7]) for row in rows}


async def _hold_with(e2e: E2E, **service: Any) -> dict[str, Any]:
    e2e.write_config(stages=HOLDING, **service)
    await e2e.start_daemon()
    c = await e2e.start()
    return await e2e.wait_for(c["id"], state="running", stage=1, phase="holding")


async def _drift_after_edit(e2e: E2E, cid: str, edit: str) -> tuple[dict[str, Any], float]:
    """Make ``edit`` by hand; return the drift event and the seconds until it was journaled."""
    await asyncio.sleep(0.3)  # let a first read-back of the stage settle
    t0 = time.time()
    await e2e.stack.haproxy.cli(edit)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        c = await e2e.cutover(cid)
        drifts = [e for e in c["events"] if e["kind"] == "drift"]
        if drifts:
            return drifts[0], drifts[0]["at"] - t0
        await asyncio.sleep(0.05)
    raise AssertionError(f"no drift event within 10s of {edit!r}:\n{e2e.daemon_log()[-3000:]}")


async def test_hand_edit_during_a_hold_pauses_by_default(e2e: E2E) -> None:
    c = await _hold_with(e2e)
    drift, took = await _drift_after_edit(e2e, c["id"], EDIT)
    assert took <= OBSERVE_EVERY + 0.5, took
    assert drift["data"]["policy"] == "pause" and drift["data"]["router"] == "edge"
    assert "did not write" in drift["message"]
    c = await e2e.wait_for(c["id"], state="paused", within=5)
    assert c["routers"][0]["drift"] is True
    await asyncio.sleep(OBSERVE_EVERY * 1.5)
    assert (await _weights(e2e))["green1"] == 5  # the hand edit stands while paused
    # the operator looks and resumes with reapply: the stage is applied again as planned
    # (a plain resume is refused over drift: tests/e2e/test_operator_commands.py)
    status, _ = await e2e.api("POST", f"/v1/cutovers/{c['id']}/resume", json={"reapply": True})
    assert status == 200
    c = await e2e.wait_for(c["id"], state="running", stage=1, phase="holding", within=10)
    assert (await _weights(e2e))["green1"] != 5
    assert abs(await e2e.green_share(1000) - 50) <= 4


async def test_hand_edit_with_on_drift_rollback_rolls_back_to_all_blue(e2e: E2E) -> None:
    c = await _hold_with(e2e, on_drift="rollback")
    drift, took = await _drift_after_edit(e2e, c["id"], EDIT)
    assert took <= OBSERVE_EVERY + 0.5, took
    assert drift["data"]["policy"] == "rollback"
    c = await e2e.wait_for(c["id"], state="rolled_back", within=10)
    assert c["reason"].startswith("drift:"), c["reason"]
    assert await e2e.green_share(500) == 0.0
    kinds = [e["kind"] for e in c["events"]]
    assert kinds[kinds.index("drift") :][:3] == ["drift", "rollback_started", "rolled_back"]


async def test_hand_edit_toward_new_with_on_drift_reassert_is_set_back(e2e: E2E) -> None:
    c = await _hold_with(e2e, on_drift="reassert")
    before = await _weights(e2e)
    # more traffic to green than the stage asks: setting it back moves toward blue, allowed
    drift, took = await _drift_after_edit(
        e2e, c["id"], "set server checkout/blue1 weight 0; set server checkout/blue2 weight 0"
    )
    assert took <= OBSERVE_EVERY + 0.5, took
    assert drift["data"]["policy"] == "reassert"
    for _ in range(50):  # the reassert follows the drift event at once
        if await _weights(e2e) == before:
            break
        await asyncio.sleep(0.1)
    assert await _weights(e2e) == before
    c = await e2e.wait_for(c["id"], state="running", stage=1, phase="holding")
    assert abs(await e2e.green_share(1000) - 50) <= 4


async def test_hand_edit_toward_old_with_on_drift_reassert_pauses(e2e: E2E) -> None:
    """Reasserting would move traffic toward green from a state the daemon did not write:
    never done by itself (PRODUCT.md, Drift)."""
    c = await _hold_with(e2e, on_drift="reassert")
    drift, _ = await _drift_after_edit(e2e, c["id"], EDIT)
    assert drift["data"]["policy"] == "reassert"
    await e2e.wait_for(c["id"], state="paused", within=5)
    await asyncio.sleep(OBSERVE_EVERY * 1.5)
    assert (await _weights(e2e))["green1"] == 5


# --- races ---------------------------------------------------------------------------------------


async def test_twenty_concurrent_starts_give_exactly_one_201(e2e: E2E) -> None:
    e2e.write_config(stages=HOLDING)
    await e2e.start_daemon()
    answers = await asyncio.gather(
        *(e2e.api("POST", "/v1/services/checkout/cutovers") for _ in range(20))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {201, 409, 422}, answers
    for status, body in answers:
        if status != 201:
            assert set(body["error"]) == {"code", "message"}
    _, history = await e2e.api("GET", "/v1/services/checkout/cutovers")
    started = [c for c in history["cutovers"] if c["state"] != "refused"]  # 422s are kept too
    assert len(started) == 1
    (winner,) = [body for status, body in answers if status == 201]
    await e2e.wait_for(winner["id"], state="running", stage=1, phase="holding")


async def _during_shift(e2e: E2E, cid: str, stage: int) -> None:
    """Wait until the cutover is changing to ``stage`` (routers slowed down by the proxy)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        c = await e2e.cutover(cid)
        if c["stage"] == stage and c["phase"] == "shifting":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw stage {stage} shifting:\n{e2e.daemon_log()[-3000:]}")


async def test_commands_during_a_stage_change_are_answered_and_take_effect(e2e: E2E) -> None:
    proxy = await DelayProxy(
        listen=e2e.dir / "slow.sock", target=e2e.stack.haproxy.admin_socket
    ).start()
    try:
        stages = [
            {"weight": 10, "hold": "1s"},
            {"weight": 50, "hold": "1s"},
            {"weight": 100, "hold": "1s"},
        ]
        router = e2e.stack.spec_values(name="edge", runtime_api=proxy.runtime_api, timeout="2s")
        e2e.write_config(stages=stages, router=router)
        await e2e.start_daemon()
        c = await e2e.start()
        await e2e.wait_for(c["id"], state="running", stage=0, phase="holding")
        proxy.delay = 0.4  # each runtime API line now takes 0.4 s: a stage change takes ~1 s

        # During the change to stage 1: promote (no gate: refused, answered), then pause.
        await _during_shift(e2e, c["id"], 1)
        promote, pause = await asyncio.gather(
            e2e.api("POST", f"/v1/cutovers/{c['id']}/promote"),
            e2e.api("POST", f"/v1/cutovers/{c['id']}/pause"),
        )
        assert promote[0] == 409 and promote[1]["error"]["code"] == "invalid_state", promote
        assert pause[0] == 200, pause
        c = await e2e.wait_for(c["id"], state="paused", stage=1, within=10)
        await asyncio.sleep(1.5)  # the shift in flight finished; paused does not move on
        c = await e2e.cutover(c["id"])
        assert (c["state"], c["stage"], c["routers"][0]["desired"]) == ("paused", 1, 50)
        assert abs(await e2e.green_share(1000) - 50) <= 4

        status, _ = await e2e.api("POST", f"/v1/cutovers/{c['id']}/resume")
        assert status == 200
        # During the change to stage 2: abort. It is answered and rolls back at once.
        await _during_shift(e2e, c["id"], 2)
        status, body = await e2e.api("POST", f"/v1/cutovers/{c['id']}/abort")
        assert status == 200, body
        c = await e2e.wait_for(c["id"], state="rolled_back", within=20)
        assert "aborted by" in c["reason"]
        proxy.delay = 0.0
        assert await e2e.green_share(500) == 0.0
        kinds = [e["kind"] for e in c["events"]]
        assert kinds.count("paused") == 1 and kinds.count("resumed") == 1
        assert kinds[-2:] == ["rollback_started", "rolled_back"]
    finally:
        await proxy.stop()


async def test_a_second_daemon_on_the_same_state_file_refuses_to_start(e2e: E2E) -> None:
    e2e.write_config(stages=HOLDING)
    await e2e.start_daemon()
    assert e2e.daemon is not None
    config = yaml.safe_load(e2e.config_path.read_text())
    config["api"]["listen"] = f"127.0.0.1:{free_port()}"
    second = e2e.dir / "second.yaml"
    second.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cutover",
        "daemon",
        "-c",
        str(second),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1, (out, err)
    lines = err.decode().strip().splitlines()
    state = Path(config["state"]["sqlite"])
    assert lines == [
        f"cutover: state store {state} is in use by another cutover daemon (pid {e2e.daemon.pid})"
    ], err.decode()
    status, _ = await e2e.api("GET", "/readyz")  # the first one is unaffected
    assert status == 200
