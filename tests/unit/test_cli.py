"""The CLI against a real API server: one clear line and exit 1 for every refusal, no traceback.

The client commands run in a thread (``main`` runs its own event loop) while this test's loop
serves the API; `daemon` and `validate` run as processes, as a user runs them.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp.test_utils import TestServer

from cutover.api.app import make_app
from cutover.api.tls import server_ssl_context
from cutover.cli import main
from cutover.config import TlsSpec, parse_config, token_sha256
from cutover.core.model import Phase, Status, Verdict
from cutover.engine.clock import SystemClock
from cutover.engine.supervisor import Supervisor
from cutover.observability.metrics import Metrics
from cutover.store.sqlite import SqliteStore
from cutover.testing import resource_pool
from tests.unit.test_api import CONFIG, GUARDED, faked_daemon, holding
from tests.unit.test_auth import OPERATOR, TOKENS, UNKNOWN, VIEWER


def _cutover(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cutover", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _serve(tmp_path: Path, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    store = SqliteStore(path=str(tmp_path / "state.db"))
    await store.open()
    metrics = Metrics()
    config = parse_config({**CONFIG, "api": {"tokens": TOKENS}})
    sup = Supervisor(
        config=config, store=store, clock=SystemClock(), resources=resource_pool(), metrics=metrics
    )
    server = TestServer(make_app(supervisor=sup, store=store, metrics=metrics))
    await server.start_server(ssl=tls)
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        await sup.stop()
        await store.aclose()


@pytest.fixture
async def daemon_url(tmp_path: Path) -> AsyncIterator[str]:
    async for url in _serve(tmp_path):
        yield url


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_daemon(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS daemon with a certificate for 127.0.0.1, and the file of the CA that signed it."""
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = (tmp_path / n for n in ("api.crt", "api.key", "ca.pem"))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    context = server_ssl_context(TlsSpec(cert_file=str(cert_file), key_file=str(key_file)))
    async for url in _serve(tmp_path, tls=context):
        yield url, ca_file


async def _run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    **env: str | None,
) -> tuple[int, str, str]:
    for name in ("CUTOVER_URL", "CUTOVER_TOKEN", "CUTOVER_CA"):
        value = env.get(name.removeprefix("CUTOVER_").lower())
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    rc = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cutover: ")
    return lines[0].removeprefix("cutover: ")


# --- refusals, one line each ----------------------------------------------------------------


async def test_no_token_is_401_asking_for_cutover_token(
    daemon_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = await _run(monkeypatch, capsys, "status", url=daemon_url)
    assert rc == 1 and out == ""
    assert _one_line(err) == "not authorized: set CUTOVER_TOKEN to a token from the config"


async def test_an_unknown_token_is_401_and_is_not_echoed(
    daemon_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = await _run(monkeypatch, capsys, "status", url=daemon_url, token=UNKNOWN)
    assert rc == 1
    assert _one_line(err) == (
        "not authorized: the daemon does not know the token in CUTOVER_TOKEN; "
        "set it to a token from the config"
    )
    assert UNKNOWN not in err


async def test_a_viewer_reads_but_an_action_is_403(
    daemon_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = await _run(monkeypatch, capsys, "status", url=daemon_url, token=VIEWER)
    assert rc == 0 and "checkout: live blue" in out
    rc, _, err = await _run(monkeypatch, capsys, "undo", "checkout", url=daemon_url, token=VIEWER)
    assert rc == 1
    assert _one_line(err) == "forbidden: token 'oncall' is a viewer: this needs an operator token"


async def test_a_conflict_is_409_with_the_daemons_reason(
    daemon_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = await _run(monkeypatch, capsys, "undo", "checkout", url=daemon_url, token=OPERATOR)
    assert rc == 1
    assert _one_line(err).startswith("conflict: ")


async def test_connection_refused_names_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    rc, _, err = await _run(monkeypatch, capsys, "status", "checkout", url=url, token=OPERATOR)
    assert rc == 1
    assert _one_line(err).startswith(f"cannot reach the daemon at {url}: connection refused")


@pytest.mark.parametrize("url", ["127.0.0.1:8480", "ftp://127.0.0.1:8480"])
async def test_a_url_that_is_not_http_is_refused(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = await _run(monkeypatch, capsys, "status", url=url)
    assert rc == 1
    assert _one_line(err).startswith("CUTOVER_URL must be an http:// or https:// URL")


# --- TLS ------------------------------------------------------------------------------------


async def test_https_with_cutover_ca(
    tls_daemon: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, ca_file = tls_daemon
    assert url.startswith("https://")
    rc, out, err = await _run(monkeypatch, capsys, "status", url=url, token=VIEWER, ca=str(ca_file))
    assert (rc, err) == (0, "") and "checkout: live blue" in out


async def test_an_untrusted_certificate_is_one_line_pointing_at_cutover_ca(
    tls_daemon: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = tls_daemon
    rc, _, err = await _run(monkeypatch, capsys, "status", url=url, token=VIEWER)
    assert rc == 1
    line = _one_line(err)
    assert line.startswith(f"cannot trust the daemon at {url}: TLS certificate verification")
    assert "CUTOVER_CA" in line


async def test_plain_http_to_a_tls_daemon_says_so(
    tls_daemon: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = tls_daemon
    plain = url.replace("https://", "http://")
    rc, _, err = await _run(monkeypatch, capsys, "status", url=plain, token=VIEWER)
    assert rc == 1
    assert "https://" in _one_line(err)


async def test_https_to_a_plain_daemon_is_a_handshake_error(
    daemon_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = daemon_url.replace("http://", "https://")
    rc, _, err = await _run(monkeypatch, capsys, "status", url=url, token=VIEWER)
    assert rc == 1
    assert _one_line(err).startswith(f"TLS handshake with the daemon at {url} failed")


async def test_a_missing_ca_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.pem"
    rc, _, err = await _run(
        monkeypatch, capsys, "status", url="https://127.0.0.1:1", ca=str(missing)
    )
    assert rc == 1
    assert _one_line(err) == f"CUTOVER_CA: cannot load {missing}: No such file or directory"


def test_tls_key_that_does_not_load_is_a_startup_config_error(tmp_path: Path) -> None:
    config = tmp_path / "cutover.yaml"
    data: dict[str, Any] = {
        **CONFIG,
        "api": {"tls": {"cert_file": "missing.crt", "key_file": "missing.key"}},
        "state": {"sqlite": "state.db"},
    }
    config.write_text(yaml.safe_dump(data))
    run = _cutover("daemon", "-c", str(config))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"api.tls: cannot load the certificate {tmp_path}/missing.crt" in run.stderr
    assert "No such file or directory" in run.stderr
    assert not (tmp_path / "state.db").exists()  # refused before anything was opened


# --- the loopback rule at start-up ----------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "daemon"])
def test_no_tokens_and_a_public_listen_address_is_refused_at_startup(
    tmp_path: Path, command: str
) -> None:
    config = tmp_path / "cutover.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "api": {"listen": "0.0.0.0:8480"}}))
    run = _cutover(command, "-c", str(config))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert (
        "api.listen: with no api.tokens the daemon listens only on a loopback address "
        "(127.0.0.1, [::1], localhost); add tokens to listen on 0.0.0.0"
    ) in run.stderr
    # with a token the same address is accepted
    tokens = [{"name": "release-bot", "role": "operator", "sha256": token_sha256("x" * 43)}]
    config.write_text(
        yaml.safe_dump({**CONFIG, "api": {"listen": "0.0.0.0:8480", "tokens": tokens}})
    )
    assert _cutover("validate", "-c", str(config)).returncode == 0


# --- token new ------------------------------------------------------------------------------


def test_token_new_prints_a_token_once_and_the_config_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cutover", "token", "new", "--name", "ci-bot", "--role", "viewer"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    token = lines[1].strip()
    line = lines[3].strip()
    assert line.startswith("- {name: ci-bot, role: viewer, sha256: ")
    # the line pastes under api.tokens as it is, and holds the hash of the printed token only
    parsed = yaml.safe_load(f"api:\n  tokens:\n    {line}\n")
    config = parse_config({**CONFIG, **parsed})
    assert config.api.tokens[0].sha256 == token_sha256(token)
    assert token not in line
    assert list(tmp_path.iterdir()) == []  # no file touched
    again = _cutover("token", "new", "--name", "ci-bot", "--role", "viewer")
    assert again.stdout.splitlines()[1].strip() != token


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "new", "--name", "has space", "--role", "viewer"],
        ["token", "new", "--name", "x", "--role", "admin"],
        ["token", "new", "--role", "viewer"],
        ["token"],
    ],
)
def test_token_new_usage_errors_exit_2(argv: list[str]) -> None:
    run = _cutover(*argv)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stdout == ""


# --- promote --force, resume --reapply, the bake (issue 14) -------------------------------------


async def test_promote_is_refused_while_a_check_fails_and_force_passes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with faked_daemon(tmp_path) as d, asyncio.timeout(60):
        url = str(d.client.make_url("")).rstrip("/")
        c = await d.supervisor.start_cutover("checkout", actor="alice")
        await d.until(c.id, holding)
        d.check.set(Verdict.FAIL, 0.5)
        await d.until(c.id, lambda c: c.checks[0].latest is Verdict.FAIL)
        rc, _, err = await _run(monkeypatch, capsys, "promote", "checkout", url=url)
        assert rc == 1
        line = _one_line(err)
        assert line.startswith("conflict: cannot promote: checks not passing at stage 1")
        assert "health (fail)" in line
        rc, out, err = await _run(monkeypatch, capsys, "promote", "checkout", "--force", url=url)
        assert rc == 0, err
        assert f"promote: {c.id} is now running (shifting)" in out.splitlines()
        (promoted,) = [e for e in await d.store.events(c.id) if e.kind == "promoted"]
        assert promoted.data["forced"] is True and promoted.data["not_passing"] == ["health"]
        assert "forced past checks not passing: health (fail)" in promoted.message


async def test_resume_after_drift_is_refused_naming_the_router_and_reapply_writes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with faked_daemon(tmp_path) as d, asyncio.timeout(60):
        url = str(d.client.make_url("")).rstrip("/")
        c = await d.supervisor.start_cutover("checkout", actor="alice")
        await d.until(c.id, holding)
        d.router.set_by_hand(0)
        await d.until(c.id, lambda c: c.status is Status.PAUSED)
        rc, _, err = await _run(monkeypatch, capsys, "resume", "checkout", url=url)
        assert rc == 1
        assert "router edge: the daemon last wrote 50% green, it reads 0% green" in _one_line(err)
        rc, out, err = await _run(monkeypatch, capsys, "status", "checkout", url=url)
        assert rc == 0 and "DRIFT" in out
        rc, out, err = await _run(monkeypatch, capsys, "resume", "checkout", "--reapply", url=url)
        assert rc == 0, err
        assert f"resume: {c.id} is now running (shifting)" in out.splitlines()
        await d.until(c.id, lambda c: (c.status, c.phase) == (Status.RUNNING, Phase.HOLDING))
        assert d.router.state == {"share": "w50"}


async def test_status_shows_the_bake_and_what_is_left_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with faked_daemon(tmp_path) as d, asyncio.timeout(60):
        url = str(d.client.make_url("")).rstrip("/")
        c = await d.supervisor.start_cutover("checkout", actor="alice")
        rc, out, _ = await _run(monkeypatch, capsys, "status", "checkout", url=url)
        assert rc == 0 and "bake at 100% green: 0/120s\n" in out
        await d.until(c.id, lambda c: c.phase is Phase.BAKING and (c.bake_elapsed or 0) >= 30)
        rc, out, _ = await _run(monkeypatch, capsys, "status", "checkout", url=url)
        assert "phase=baking" in out
        baked = re.search(r"bake at 100% green: (\d+)/120s \(baking: checks running, a breach", out)
        assert baked is not None and 30 <= int(baked[1]) < 120, out


@pytest.mark.parametrize(
    "argv", [["promote", "checkout", "--reapply"], ["resume", "checkout", "--force"]]
)
def test_a_flag_of_the_other_command_is_a_usage_error(argv: list[str]) -> None:
    run = _cutover(*argv)
    assert run.returncode == 2 and "unrecognized arguments" in run.stderr


def test_validate_and_plan_show_the_bake(tmp_path: Path) -> None:
    config = tmp_path / "cutover.yaml"
    config.write_text(yaml.safe_dump(GUARDED))
    run = _cutover("validate", "-c", str(config))
    assert run.returncode == 0, run.stderr
    assert "checkout: bake 120s after the last stage" in run.stdout
    run = _cutover("plan", "-c", str(config), "checkout", "--from", "blue")
    assert run.returncode == 0, run.stderr
    assert "then bake 120s after the last stage: at 100% with every check running" in run.stdout
