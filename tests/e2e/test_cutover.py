"""End to end: real daemon process, real HAProxy, real demo apps, real requests."""

from __future__ import annotations

import asyncio

from tests.e2e.conftest import E2E

GATED = [
    {"weight": 10, "hold": "500ms", "approval": True},
    {"weight": 50, "hold": "500ms", "approval": True},
    {"weight": 100, "hold": "500ms"},
]
THREE = [{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "1s"}, {"weight": 100, "hold": "1s"}]


async def test_staged_cutover_moves_real_traffic_and_a_second_one_returns(e2e: E2E) -> None:
    # Given a daemon with a 3-stage plan gated by approvals, so each stage can be measured
    e2e.write_config(stages=GATED)
    await e2e.start_daemon()
    assert await e2e.green_share(500) == 0.0

    # When a cutover starts, then each stage is measured with real requests and promoted
    c = await e2e.start()
    assert (c["from"], c["to"], c["state"]) == ("blue", "green", "running")
    for stage, share in ((0, 10), (1, 50)):
        c = await e2e.wait_for(c["id"], state="awaiting_approval", stage=stage)
        measured = await e2e.green_share(2000)
        assert abs(measured - share) <= 3, (stage, measured)
        assert c["routers"][0]["desired"] == share
        status, c = await e2e.api("POST", f"/v1/cutovers/{c['id']}/promote")
        assert status == 200, c

    # Then it completes with every request on green, and green is live
    c = await e2e.wait_for(c["id"], state="completed")
    assert await e2e.green_share(500) == 100.0
    status, svc = await e2e.api("GET", "/v1/services/checkout")
    assert svc["live"] == "green"
    kinds = [e["kind"] for e in c["events"]]
    assert kinds.count("stage_started") == 3 and kinds[-1] == "completed"

    # And a second cutover goes back to blue
    e2e.write_config(stages=THREE)
    await e2e.stop_daemon()
    await e2e.start_daemon()
    rc, out, err = await e2e.cli("start", "checkout", "--wait", "--timeout", "60s")
    assert rc == 0, (out, err)
    assert "blue" in out and "completed" in out
    assert await e2e.green_share(500) == 0.0
    _, svc = await e2e.api("GET", "/v1/services/checkout")
    assert svc["live"] == "blue"


async def test_failing_health_in_stage_two_rolls_back_to_all_blue(e2e: E2E) -> None:
    e2e.write_config(stages=THREE)
    await e2e.start_daemon()
    waiting = asyncio.create_task(e2e.cli("start", "checkout", "--wait", "--timeout", "60s"))
    try:
        _, body = await e2e.api("GET", "/v1/services/checkout")
        for _ in range(100):
            if body["cutover"] is not None:
                break
            await asyncio.sleep(0.1)
            _, body = await e2e.api("GET", "/v1/services/checkout")
        cid = body["cutover"]["id"]
        await e2e.wait_for(cid, state="running", stage=1, phase="holding")
        for name in ("green1", "green2"):
            await e2e.stack.apps[name].set_health(False)
        c = await e2e.wait_for(cid, state="rolled_back", within=15)
        rc, out, err = await waiting
    finally:
        if not waiting.done():
            waiting.cancel()
    assert rc == 3, (out, err)
    assert "new-health" in c["reason"], c["reason"]
    assert "HTTP 500" in c["reason"]
    assert await e2e.green_share(1000) == 0.0
    state = await e2e.stack.haproxy.cli("show servers state checkout")
    green_rows = [line.split() for line in state.splitlines() if " green" in line]
    assert green_rows and all(row[6] == "1" for row in green_rows), state  # admin state maint
    kinds = [e["kind"] for e in c["events"]]
    assert kinds[-2:] == ["rollback_started", "rolled_back"]


async def test_sigkill_mid_hold_resumes_to_completion_without_losing_events(e2e: E2E) -> None:
    stages = [
        {"weight": 10, "hold": "1s"},
        {"weight": 50, "hold": "3s"},
        {"weight": 100, "hold": "1s"},
    ]
    c = await e2e.holding_at(stages, stage=1)
    await asyncio.sleep(1.0)
    await e2e.kill_daemon()
    assert abs(await e2e.green_share(1000) - 50) <= 3  # traffic stays where it was

    await e2e.start_daemon()
    c = await e2e.wait_for(c["id"], state="completed", within=30)
    assert await e2e.green_share(500) == 100.0
    seqs = [e["seq"] for e in c["events"]]
    assert seqs == list(range(1, len(seqs) + 1))
    kinds = [e["kind"] for e in c["events"]]
    assert kinds.count("stage_started") == 3
    assert kinds.count("stage_applied") == 3
    assert kinds.count("restarted") == 1
    assert kinds.count("completed") == 1
    rc, out, _ = await e2e.cli("history", "checkout")
    assert rc == 0 and "restarted" in out and "completed" in out


async def test_manual_rollback_while_daemon_is_down_is_not_undone(e2e: E2E) -> None:
    stages = [
        {"weight": 10, "hold": "1s"},
        {"weight": 50, "hold": "30s"},
        {"weight": 100, "hold": "1s"},
    ]
    c = await e2e.holding_at(stages, stage=1)
    await e2e.kill_daemon()

    # an operator moves everything back to blue by hand while the daemon is down
    await e2e.stack.haproxy.cli(
        "set server checkout/green1 weight 0; set server checkout/green2 weight 0"
    )
    assert await e2e.green_share(500) == 0.0

    await e2e.start_daemon()
    c = await e2e.wait_for(c["id"], state="paused", within=20)
    assert any(r["drift"] for r in c["routers"])
    assert "drift" in [e["kind"] for e in c["events"]]
    await asyncio.sleep(1.0)
    assert await e2e.green_share(1000) == 0.0  # not undone

    # the operator makes the rollback official
    rc, out, err = await e2e.cli("abort", "checkout")
    assert rc == 0, (out, err)
    c = await e2e.wait_for(c["id"], state="rolled_back")
    assert "aborted by" in c["reason"]


async def test_unreachable_haproxy_refuses_the_start_and_changes_nothing(e2e: E2E) -> None:
    router = e2e.stack.spec_values(name="edge", runtime_api=f"unix:{e2e.dir}/nosuch.sock")
    e2e.write_config(stages=THREE, router=router)
    await e2e.start_daemon()
    status, body = await e2e.api("POST", "/v1/services/checkout/cutovers")
    assert status == 422, body
    assert body["error"]["code"] == "preflight_failed"
    assert "edge" in body["error"]["message"]
    # nothing changed, and the refusal is kept in the history with its reason
    _, history = await e2e.api("GET", "/v1/services/checkout/cutovers")
    assert [(c["state"], c["reason"]) for c in history["cutovers"]] == [
        ("refused", body["error"]["message"])
    ]
    rc, _, err = await e2e.cli("start", "checkout")
    assert rc == 1 and "preflight" in err and "Traceback" not in err
    assert await e2e.green_share(300) == 0.0


async def test_bad_api_requests_get_json_4xx(e2e: E2E) -> None:
    e2e.write_config(stages=[{"weight": 50, "hold": "30s"}, {"weight": 100, "hold": "30s"}])
    await e2e.start_daemon()
    cases = [
        ("GET", "/v1/services/nosuch", 404),
        ("POST", "/v1/services/nosuch/cutovers", 404),
        ("GET", "/v1/cutovers/co-nosuch", 404),
        ("POST", "/v1/cutovers/co-nosuch/pause", 404),
        ("GET", "/v1/nothing-here", 404),
        ("DELETE", "/v1/services", 405),
        ("GET", "/v1/services/checkout/cutovers?limit=abc", 400),
        ("POST", "/v1/services/checkout/undo", 409),
    ]
    for method, path, want in cases:
        status, body = await e2e.api(method, path)
        assert status == want, (method, path, body)
        assert set(body["error"]) == {"code", "message"}, body
    status, body = await e2e.api("POST", "/v1/services/checkout/cutovers", data="{not json")
    assert status == 400 and body["error"]["code"] == "bad_json"
    c = await e2e.start()
    status, body = await e2e.api("POST", "/v1/services/checkout/cutovers")
    assert status == 409 and body["error"]["code"] == "cutover_running"
    await e2e.wait_for(c["id"], state="running", phase="holding")
    status, body = await e2e.api("POST", f"/v1/cutovers/{c['id']}/resume")
    assert status == 409 and "running" in body["error"]["message"]
    status, body = await e2e.api("POST", f"/v1/cutovers/{c['id']}/explode")
    assert status == 404
    status, body = await e2e.api("POST", f"/v1/cutovers/{c['id']}/abort")
    assert status == 200 and body["state"] in ("rolling_back", "rolled_back")
    await e2e.wait_for(c["id"], state="rolled_back")
    # SIGTERM stops the daemon cleanly
    assert await e2e.stop_daemon() == 0
