"""The daemon's start-up check of the open-files limit against what its checks keep open, and
its config reload (SIGHUP): what a valid, an invalid and a restart-only config change do to
the supervisor, the token table and ``cutover_config_reload_success``. The supervisor runs
the fakes of :mod:`cutover.testing` on a FakeClock (the fixture of test_supervisor)."""

from __future__ import annotations

import asyncio
import copy
import resource
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from cutover.api.auth import TokenTable
from cutover.config import TokenSpec, load_config, parse_config
from cutover.core.model import Status
from cutover.daemon import (
    FILES_BESIDES_CHECKS,
    few_files_warning,
    kept_connections,
    open_files_soft_limit,
    reload_config,
    restart_only_changes,
)
from cutover.errors import NotFoundError, StoreError
from tests.unit import test_supervisor
from tests.unit.test_supervisor import CONFIG, GUARD, Daemon

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            {soft}                524288               files
Max locked memory         8388608              8388608              bytes
"""


def _config(services: int) -> Any:
    raw = copy.deepcopy(CONFIG)
    template = raw["services"].pop("checkout")
    for i in range(services):
        service = copy.deepcopy(template)
        service["routers"][0]["backend"] = f"svc{i}"  # one backend per service
        service["checks"].append(  # kept open only for plain http://
            {"name": "tls", "type": "http", "url": "https://127.0.0.1:1/", "interval": "1s"}
        )
        raw["services"][f"svc{i}"] = service
    return parse_config(raw)


def test_only_plain_http_checks_keep_a_connection() -> None:
    assert kept_connections(_config(3)) == 3


@pytest.mark.parametrize(
    ("services", "soft", "warns"),
    [
        (1000, "1024", True),  # systemd's default soft limit
        (1000, "65536", False),  # what config/cutover.service sets
        (10, "1024", False),
        (1024 - FILES_BESIDES_CHECKS, "1024", False),  # exactly enough
        (1024 - FILES_BESIDES_CHECKS + 1, "1024", True),
        (1000, "unlimited", False),
    ],
)
def test_a_low_open_files_limit_is_named_with_what_the_checks_need(
    services: int, soft: str, warns: bool
) -> None:
    warning = few_files_warning(_config(services), LIMITS.format(soft=soft))
    assert (warning is not None) is warns
    if warning is not None:
        assert f"open-files limit ({soft})" in warning
        assert f"{services} plain-http health check(s)" in warning
        assert "LimitNOFILE" in warning


def test_no_limits_text_is_no_warning() -> None:
    assert few_files_warning(_config(1000), "") is None


def test_this_process_limits_read_as_getrlimit_says() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = None if soft == resource.RLIM_INFINITY else soft
    assert open_files_soft_limit(Path("/proc/self/limits").read_text()) == expected


# --- reload (SIGHUP) ------------------------------------------------------------------------------

daemon = test_supervisor.daemon  # the supervisor on fakes, as a fixture of this module too


def _with_billing(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` plus a service ``billing`` on its own backend."""
    raw = copy.deepcopy(raw)
    billing = copy.deepcopy(CONFIG["services"]["checkout"])
    billing["routers"][0]["backend"] = "billing"
    raw["services"]["billing"] = billing
    return raw


def _write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


async def _running(daemon: Daemon) -> str:
    c = await daemon.supervisor.start_cutover("checkout", actor="test")
    await daemon.advance_until_status(c.id, Status.RUNNING)
    return c.id


async def test_a_reload_adds_a_service_and_leaves_the_running_cutover_alone(
    daemon: Daemon,
) -> None:
    async with asyncio.timeout(GUARD):
        sup = daemon.supervisor
        cid = await _running(daemon)
        runner = sup.runner(cid)
        plan = (await sup.get(cid)).plan
        raw = _with_billing(CONFIG)
        raw["services"]["checkout"]["stages"] = [
            {"weight": 10, "hold": "1s"},
            {"weight": 100, "hold": "1s"},
        ]

        await sup.reload(parse_config(raw))

        assert set(sup.config.services) == {"checkout", "billing"}
        assert sup.live("billing") == "blue"
        assert await sup.latest("billing") is None
        assert sup.runner(cid) is runner  # not restarted
        assert (await sup.get(cid)).plan == plan  # the frozen plan
        done = await daemon.advance_until_status(cid, Status.COMPLETED)
        kinds = [e.kind for e in await daemon.store.events(done.id)]
        assert "restarted" not in kinds and kinds.count("stage_started") == 2
        # the next start of the service takes the new stages
        daemon.router.state = {"share": "w0"}
        sup.config = parse_config(raw)  # green is live now; the next one goes back
        again = await sup.start_cutover("checkout", actor="test")
        assert [s.weight for s in again.plan.stages] == [10, 100]


async def test_a_removed_service_stays_while_its_cutover_runs_then_goes(daemon: Daemon) -> None:
    async with asyncio.timeout(GUARD):
        sup = daemon.supervisor
        cid = await _running(daemon)
        raw = _with_billing(CONFIG)
        del raw["services"]["checkout"]

        await sup.reload(parse_config(raw))

        assert set(sup.config.services) == {"checkout", "billing"}  # still watched, abortable
        assert (await sup.latest("checkout")) is not None
        await daemon.advance_until_status(cid, Status.COMPLETED)
        for _ in range(100):  # the runner's task ends after its last write
            if sup.runner(cid) is None:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the task's done callbacks
        assert set(sup.config.services) == {"billing"}
        with pytest.raises(NotFoundError):
            await sup.latest("checkout")


async def test_reload_config_takes_a_valid_file_and_rotates_tokens(
    daemon: Daemon, tmp_path: Path
) -> None:
    old_token, old = TokenSpec.generate(name="old-bot", role="operator")
    new_token, new = TokenSpec.generate(name="new-bot", role="operator")
    raw = copy.deepcopy(CONFIG) | {"api": {"tokens": [old.model_dump()]}}
    running = load_config(_write(tmp_path / "c.yaml", raw))  # as the daemon read it at start
    tokens = TokenTable(running.api.tokens)
    path = _write(tmp_path / "c.yaml", _with_billing(raw) | {"api": {"tokens": [new.model_dump()]}})
    daemon.metrics.config_reload_success.set(0)  # a refused reload before this one

    with structlog.testing.capture_logs() as logs:
        now = await reload_config(
            path, running, supervisor=daemon.supervisor, tokens=tokens, metrics=daemon.metrics
        )

    assert set(now.services) == {"checkout", "billing"} == set(daemon.supervisor.config.services)
    assert tokens.lookup(old_token) is None
    found = tokens.lookup(new_token)
    assert found is not None and found.name == "new-bot"
    assert daemon.metrics.registry.get_sample_value("cutover_config_reload_success") == 1
    assert [e["event"] for e in logs if e["log_level"] == "info"] == [
        "config reloaded: next starts use it; running cutovers keep their plan"
    ]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            lambda raw: raw["services"]["checkout"]["stages"][0].update(weight=0),
            "services.checkout.stages[0].weight",
        ),
        (lambda raw: raw.update(api={"listen": "127.0.0.1:9"}), "api.listen: cannot change"),
        (lambda raw: raw.update(state={"sqlite": "/elsewhere.db"}), "state: cannot change"),
        (lambda raw: raw.clear(), "services"),  # an empty file
    ],
)
async def test_reload_config_refuses_a_bad_file_whole_and_keeps_running(
    daemon: Daemon, tmp_path: Path, change: Any, error: str
) -> None:
    running = load_config(_write(tmp_path / "c.yaml", CONFIG))
    daemon.supervisor.config = running
    tokens = TokenTable(running.api.tokens)
    raw = _with_billing(CONFIG)
    change(raw)
    path = _write(tmp_path / "c.yaml", raw)

    with structlog.testing.capture_logs() as logs:
        now = await reload_config(
            path, running, supervisor=daemon.supervisor, tokens=tokens, metrics=daemon.metrics
        )

    assert now is running and daemon.supervisor.config is running  # nothing of it applied
    assert daemon.metrics.registry.get_sample_value("cutover_config_reload_success") == 0
    (refused,) = [e for e in logs if e["event"].startswith("config reload refused")]
    assert refused["alarm"] is True
    assert any(error in line for line in refused["errors"]), refused["errors"]


def test_restart_only_changes_name_each_key_that_needs_a_restart() -> None:
    running = parse_config(CONFIG)
    same = parse_config(_with_billing(CONFIG))
    assert restart_only_changes(running, same) == []
    moved = parse_config(
        copy.deepcopy(CONFIG)
        | {
            "api": {"listen": "127.0.0.1:9"},
            "notify": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
        }
    )
    assert [e.split(":")[0] for e in restart_only_changes(running, moved)] == [
        "api.listen",
        "notify",
    ]


async def test_a_reload_the_store_cannot_answer_is_reported_and_can_be_sent_again(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = load_config(_write(tmp_path / "c.yaml", CONFIG))
    daemon.supervisor.config = running
    tokens = TokenTable(running.api.tokens)
    raw = _with_billing(CONFIG)
    del raw["services"]["checkout"]  # the supervisor asks the store whether it still runs
    path = _write(tmp_path / "c.yaml", raw)

    async def unreadable(service: str | None = None) -> list[Any]:
        raise StoreError("state store s.db: an I/O error occurred (simulated)")

    with monkeypatch.context() as patch, structlog.testing.capture_logs() as logs:
        patch.setattr(daemon.store, "active", unreadable)
        now = await reload_config(
            path, running, supervisor=daemon.supervisor, tokens=tokens, metrics=daemon.metrics
        )
    assert now is running
    assert daemon.metrics.registry.get_sample_value("cutover_config_reload_success") == 0
    (line,) = [e for e in logs if e.get("alarm")]
    assert "send SIGHUP again" in line["event"] and "I/O error" in line["error"]

    now = await reload_config(
        path, running, supervisor=daemon.supervisor, tokens=tokens, metrics=daemon.metrics
    )
    assert set(now.services) == {"billing"} == set(daemon.supervisor.config.services)
    assert daemon.metrics.registry.get_sample_value("cutover_config_reload_success") == 1
