"""End to end: a daemon serving HTTPS with bearer tokens, driven by the CLI, on real HAProxy.

Given a daemon with an operator and a viewer token and a certificate from a test CA, when the
viewer and then the operator drive a cutover with the CLI, then only the operator moves traffic,
the timeline names the operator's token, and no token appears in the daemon's log.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
import time
from typing import Any

import pytest
import trustme
import yaml

from demo.stack import Child
from tests.e2e.conftest import E2E
from tests.unit.test_auth import OPERATOR, TOKENS, VIEWER

GATED = [{"weight": 50, "hold": "500ms", "approval": True}, {"weight": 100, "hold": "500ms"}]


async def _start_tls_daemon(e2e: E2E, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given the daemon with tokens and TLS; the CLI and ``e2e.api`` trust the test CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(e2e.dir / "api.key"))
    (e2e.dir / "api.crt").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(e2e.dir / "ca.pem"))
    path = e2e.write_config(stages=GATED)
    config = yaml.safe_load(path.read_text())
    config["api"].update(tokens=TOKENS, tls={"cert_file": "api.crt", "key_file": "api.key"})
    path.write_text(yaml.safe_dump(config))

    context = ssl.create_default_context(cafile=str(e2e.dir / "ca.pem"))
    plain_api = e2e.api

    async def api(method: str, path: str, **kw: Any) -> tuple[int, Any]:
        kw.setdefault("headers", {"Authorization": f"Bearer {VIEWER}"})
        return await plain_api(method, path, ssl=context, **kw)

    monkeypatch.setattr(e2e, "api", api)
    monkeypatch.setenv("CUTOVER_CA", str(e2e.dir / "ca.pem"))
    e2e.url = f"https://127.0.0.1:{e2e.port}"
    e2e.daemon_runs += 1
    e2e.daemon = await Child.spawn(
        f"daemon-{e2e.daemon_runs}",
        [sys.executable, "-m", "cutover", "daemon", "-c", str(path)],
        e2e.dir,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if (await e2e.api("GET", "/readyz"))[0] == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"daemon not ready over HTTPS:\n{e2e.daemon.log()}")


async def test_only_the_operator_token_moves_traffic_and_is_named_in_the_timeline(
    e2e: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _start_tls_daemon(e2e, monkeypatch)

    # no token: 401, nothing to see
    status, body = await e2e.api("GET", "/v1/services", headers={})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    monkeypatch.delenv("CUTOVER_TOKEN", raising=False)
    rc, _, err = await e2e.cli("status")
    assert (rc, err.strip()) == (
        1,
        "cutover: not authorized: set CUTOVER_TOKEN to a token from the config",
    )

    # When the viewer tries to start: refused, and no traffic moves
    monkeypatch.setenv("CUTOVER_TOKEN", VIEWER)
    rc, _, err = await e2e.cli("start", "checkout")
    assert rc == 1
    assert "forbidden: token 'oncall' is a viewer: this needs an operator token" in err
    assert await e2e.green_share(300) == 0.0

    # When the operator starts: half the real traffic goes green at the approval gate
    monkeypatch.setenv("CUTOVER_TOKEN", OPERATOR)
    rc, out, err = await e2e.cli("start", "checkout")
    assert rc == 0, err
    match = re.search(r"started (co-[0-9a-f]+)", out)
    assert match, out
    c = await e2e.wait_for(match.group(1), state="awaiting_approval", stage=0)
    assert abs(await e2e.green_share(1000) - 50) <= 4

    # the viewer may watch but not promote or abort
    monkeypatch.setenv("CUTOVER_TOKEN", VIEWER)
    rc, out, _ = await e2e.cli("status", "checkout", "--json")
    assert rc == 0 and '"awaiting_approval"' in out
    for action in ("promote", "abort"):
        rc, _, err = await e2e.cli(action, "checkout")
        assert rc == 1 and "forbidden" in err

    # When the operator aborts, then all traffic is back on blue
    monkeypatch.setenv("CUTOVER_TOKEN", OPERATOR)
    rc, _, err = await e2e.cli("abort", "checkout")
    assert rc == 0, err
    c = await e2e.wait_for(c["id"], state="rolled_back")
    assert await e2e.green_share(300) == 0.0

    # Then the timeline names the operator's token (and who used it); no token was logged
    via = r"release-bot \(via [A-Za-z0-9@._-]+\)"
    assert re.fullmatch(f"aborted by {via}", c["reason"]), c["reason"]
    started = [e for e in c["events"] if e["kind"] == "started"]
    assert len(started) == 1 and re.fullmatch(via, started[0]["data"]["actor"]), started
    log = e2e.daemon_log()
    assert "refused a viewer's action" in log
    for token in (OPERATOR, VIEWER):
        assert token not in log
