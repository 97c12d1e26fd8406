"""The ops files work, checked with the real tools:

* ``config/prometheus-rules.yaml``: ``promtool check rules`` and ``promtool test rules``
  (config/prometheus-rules.test.yaml exercises every alert); each alert has a runbook that
  exists, and every metric a rule reads is one the daemon exposes.
* ``config/grafana-dashboard.json``: every panel query returns data from a real Prometheus
  scraping a real daemon (subprocess) in the middle of a cutover on real HAProxy.
* ``Dockerfile``: no Docker engine runs here, so the image is not built. The test reads the
  Dockerfile and runs its entrypoint the way the image would: as an unprivileged user
  (``nobody`` via ``setpriv``, since tests run as root), with only the image's environment,
  its WORKDIR, and its volume paths moved into a temp dir; then the image's HEALTHCHECK
  command must pass against it. The interpreter is Debian's Python 3.11 (the test venv's own
  lives under /root, which ``nobody`` cannot enter) with the venv's packages on PYTHONPATH.
* ``config/cutover.service``: ``systemd-analyze verify`` and ``systemd-analyze security``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from demo.prometheus import Prometheus
from demo.stack import Child, free_port, http_request
from tests.e2e.conftest import E2E, e2e  # noqa: F401 (the fixture, reused as it is)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus-rules.yaml"
RULE_TESTS = ROOT / "config" / "prometheus-rules.test.yaml"
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "config" / "cutover.service"

#: What Grafana puts in for its variables when the dashboard shows the last hour, all services.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$service": ".+"}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(argv[0])
    assert binary is not None, f"{argv[0]} is not installed (make system-deps)"
    return subprocess.run(
        [binary, *argv[1:]], capture_output=True, text=True, timeout=60, check=False
    )


# --- Prometheus rules -------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = run("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_unit_tests_exercise_every_alert() -> None:
    result = run("promtool", "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in alert_rules()}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_points_to_a_runbook_that_exists() -> None:
    runbooks = {
        "CutoverRolledBack": "automatic-rollback.md",
        "CutoverRollbackFailed": "failed-rollback.md",
        "CutoverDaemonDown": "daemon-died.md",
        "CutoverStageStuck": "stuck-stage.md",
        "CutoverStoreCannotWrite": "store-fault.md",
        "CutoverConfigReloadRefused": "config-reload.md",
    }
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("/" + runbooks[rule["alert"]]), rule["alert"]
        assert (ROOT / "runbooks" / runbooks[rule["alert"]]).is_file()


# --- Grafana dashboard against a real Prometheus and daemon ------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str


def dashboard_queries() -> list[PanelQuery]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [
        p for top in dashboard["panels"] for p in [top, *top.get("panels", [])] if "targets" in p
    ]
    assert len(panels) >= 10
    out = []
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append(PanelQuery(panel["title"], target["refId"], expr))
    return out


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[str]:
    async def acknowledge(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", acknowledge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def test_every_dashboard_panel_returns_data_mid_cutover(
    e2e: E2E,  # noqa: F811 (the imported fixture)
    webhook_receiver: str,
) -> None:
    path = e2e.write_config(stages=[{"weight": 20, "hold": "10m"}, {"weight": 100, "hold": "10m"}])
    config = yaml.safe_load(path.read_text())
    config["notify"] = [{"type": "webhook", "url": webhook_receiver}]
    path.write_text(yaml.safe_dump(config))
    await e2e.start_daemon()
    prom = await Prometheus.launch({"cutover": [f"127.0.0.1:{e2e.port}"]})
    try:
        c = await e2e.start()
        await e2e.wait_for(c["id"], state="running", stage=0, phase="holding")
        # the template variable's query: label_values(cutover_live_color{job="cutover"}, service)
        await prom.wait_for_data('cutover_live_color{job="cutover", service="checkout"}')
        empty = []
        deadline = time.monotonic() + 30.0
        for q in dashboard_queries():
            values: list[float] = []
            while time.monotonic() < deadline:
                values = [v for v in await prom.query(q.expr) if not math.isnan(v)]
                if values:
                    break
                await asyncio.sleep(0.5)
            if not values:
                empty.append(f"{q.panel} [{q.ref}]: {q.expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        # delivery worked: 'started' and 'stage_applied' were acknowledged
        delivered = await prom.wait_for_data(
            'cutover_webhook_deliveries_total{job="cutover"}', accept=lambda v: v[0] >= 2
        )
        assert delivered == [2.0]
        # every metric an alert reads is one the daemon exposes
        exposed = (await http_request(e2e.port, "/metrics")).body
        for rule in alert_rules():
            for name in re.findall(r"\bcutover_[a-z_]+", rule["expr"]):
                series = re.search(rf"^{name}[{{ ]", exposed, re.MULTILINE)
                assert series is not None, f"{rule['alert']} reads {name}: not exposed"
    finally:
        await prom.cleanup()


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str

    def exec_form(self) -> list[str]:
        form = json.loads(self.args)
        assert isinstance(form, list) and all(isinstance(a, str) for a in form), self
        return form


def dockerfile() -> list[Instruction]:
    """Instructions of the last stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions = [Instruction(*(s.strip() for s in line.split(None, 1))) for line in logical]
    last_from = max(i for i, ins in enumerate(instructions) if ins.name.upper() == "FROM")
    return [Instruction(ins.name.upper(), ins.args) for ins in instructions[last_from:]]


def one(instructions: list[Instruction], name: str) -> Instruction:
    found = [i for i in instructions if i.name == name]
    assert len(found) == 1, f"expected one {name}, got {found}"
    return found[0]


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.name == "ENV":
            env.update(pair.partition("=")[::2] for pair in shlex.split(ins.args))
    return env


def test_dockerfile_has_a_slim_base_a_non_root_user_volumes_and_a_healthcheck() -> None:
    image = dockerfile()
    assert image[0].args.split()[0] == "python:3.11-slim"
    user = one(image, "USER").args.split(":")[0]
    assert user not in ("root", "0")
    names = [i.name for i in image]
    assert names.index("USER") < names.index("ENTRYPOINT")  # the daemon never runs as root
    volumes = one(image, "VOLUME").exec_form()
    assert set(volumes) == {"/etc/cutover", "/var/lib/cutover"}
    assert one(image, "WORKDIR").args == "/var/lib/cutover"
    argv = one(image, "ENTRYPOINT").exec_form() + one(image, "CMD").exec_form()
    assert argv == ["cutover", "daemon", "-c", "/etc/cutover/config.yaml"]
    health = one(image, "HEALTHCHECK").args
    assert "CMD" in health and "/healthz" in image_env(image)["CUTOVER_HEALTH_URL"]
    # the build context (.dockerignore) holds what the build stage copies
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "README.md", "cutover/"):
        assert f"!{needed}" in ignore and (ROOT / needed).exists()


@dataclass
class ImageRoot:
    """The image's paths moved under one temp dir that ``nobody`` can traverse."""

    root: Path
    uid: int
    gid: int

    def path(self, image_path: str) -> str:
        return image_path.replace("/etc/cutover", str(self.root / "etc/cutover")).replace(
            "/var/lib/cutover", str(self.root / "var/lib/cutover")
        )


@pytest.fixture
def image_root() -> Iterator[ImageRoot]:
    root = Path(tempfile.mkdtemp(prefix="cutover-image-", dir="/tmp"))
    nobody = pwd.getpwnam("nobody")
    try:
        root.chmod(0o755)
        (root / "etc/cutover").mkdir(parents=True, mode=0o755)  # read-only to the daemon
        state = root / "var/lib/cutover"
        state.mkdir(parents=True)
        os.chown(state, nobody.pw_uid, nobody.pw_gid)  # as the image's install -d -o …
        state.chmod(0o750)
        yield ImageRoot(root, nobody.pw_uid, nobody.pw_gid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_image_user(image: ImageRoot, env: dict[str, str], cwd: str, argv: list[str]) -> list[str]:
    """``argv`` as the image's USER would run it: no privileges, only the image's env."""
    python = shutil.which("python3.11", path="/usr/bin")
    assert python is not None, "Debian's python3.11 is needed to run as nobody"
    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    tools = {
        "python": [python],
        "cutover": [python, str(Path(sys.executable).parent / "cutover")],  # console script
    }
    pythonpath = ":".join([*sorted(site), str(ROOT)])
    return [
        "setpriv",
        f"--reuid={image.uid}",
        f"--regid={image.gid}",
        "--clear-groups",
        "--",
        "env",
        "-i",
        f"--chdir={cwd}",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        f"PYTHONPATH={pythonpath}",
        *(f"{k}={v}" for k, v in env.items()),
        *tools[argv[0]],
        *argv[1:],
    ]


async def test_the_image_entrypoint_runs_unprivileged_and_passes_its_healthcheck(
    image_root: ImageRoot,
) -> None:
    image = dockerfile()
    port = free_port()
    (image_root.root / "etc/cutover/config.yaml").write_text(
        yaml.safe_dump(
            {
                "api": {"listen": f"127.0.0.1:{port}"},
                "state": {"sqlite": image_root.path("/var/lib/cutover/cutover.db")},
                "services": {
                    "checkout": {
                        "routers": [
                            {
                                "name": "edge",
                                "type": "haproxy",
                                "runtime_api": f"unix:{image_root.root}/haproxy.sock",
                                "backend": "checkout",
                                "blue": ["blue1"],
                                "green": ["green1"],
                            }
                        ],
                        "stages": [{"weight": 100, "hold": "10s"}],
                    }
                },
            }
        )
    )
    env = {
        k: image_root.path(v).replace(":8480/", f":{port}/") for k, v in image_env(image).items()
    }
    workdir = image_root.path(one(image, "WORKDIR").args)
    entry = [
        image_root.path(a)
        for a in one(image, "ENTRYPOINT").exec_form() + one(image, "CMD").exec_form()
    ]
    health = one(image, "HEALTHCHECK").args
    health_cmd = json.loads(health[health.index("CMD") + 3 :].strip())

    daemon = await Child.spawn(
        "image", as_image_user(image_root, env, workdir, entry), image_root.root
    )
    try:
        deadline = time.monotonic() + 20.0
        rc = None
        while rc != 0:
            assert daemon.proc.returncode is None, f"daemon exited:\n{daemon.log()}"
            assert time.monotonic() < deadline, f"healthcheck never passed:\n{daemon.log()}"
            probe = await asyncio.create_subprocess_exec(
                *as_image_user(image_root, env, workdir, health_cmd),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            rc = await probe.wait()
            await asyncio.sleep(0.1)
        status = await asyncio.to_thread(Path(f"/proc/{daemon.pid}/status").read_text)
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
        assert uids is not None and set(uids.group(1).split()) == {str(image_root.uid)}
        assert (await http_request(port, "/healthz")).status == 200
        db = Path(image_root.path("/var/lib/cutover/cutover.db"))
        owner = (await asyncio.to_thread(db.stat)).st_uid
        assert owner == image_root.uid  # the state volume is the daemon's
    finally:
        rc = await daemon.stop(grace=10.0)
    assert rc == 0, daemon.log()  # SIGTERM (the image's STOPSIGNAL) is a clean stop


# --- systemd unit -------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_systemd_unit_is_hardened_and_restarts() -> None:
    s = unit_settings()
    assert s["Type"] == ["simple"]
    assert s["User"] == ["cutover"]
    assert s["Restart"] == ["on-failure"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/cutover"]
    assert s["ExecStart"] == ["/usr/local/bin/cutover daemon -c /etc/cutover/config.yaml"]
    # reload = SIGHUP after the config validates (PRODUCT.md, Reload): no restart counted
    assert s["ExecReload"] == [
        "/usr/local/bin/cutover validate -c /etc/cutover/config.yaml",
        "/bin/kill -HUP $MAINPID",
    ]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point it at this checkout's
    unit = tmp_path / "cutover.service"
    unit.write_text(
        UNIT.read_text().replace(
            "/usr/local/bin/cutover", str(Path(sys.executable).parent / "cutover")
        )
    )
    result = run("systemd-analyze", "verify", str(unit))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    security = run("systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit))
    assert security.returncode == 0, security.stdout + security.stderr
    assert "Overall exposure level for cutover.service" in security.stdout
