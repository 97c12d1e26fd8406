"""Config loading and validation: every error named by its place, never a traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from cutover.config import (
    NOTIFY_EVENTS,
    Config,
    ServiceSpec,
    StageSpec,
    _Parts,
    _service_errors,
    load_config,
    parse_config,
)
from cutover.core.model import CheckPolicy, Plan, Stage
from cutover.errors import ConfigError, NotFoundError
from cutover.routers.base import RouterSpecBase

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "cutover.example.yaml"
ROOT = Path(__file__).resolve().parents[2]

SHA_A = "a" * 64
SHA_B = "b" * 64

VALID_YAML = f"""
api:
  listen: 127.0.0.1:8480
  tokens:
    - {{name: release-bot, role: operator, sha256: "{SHA_A}"}}
    - {{name: oncall, role: viewer, sha256: "{SHA_B}"}}
state:
  sqlite: ./var/cutover.db
notify:
  - {{type: webhook, url: "http://127.0.0.1:9000/hook"}}
services:
  checkout:
    live: blue
    routers:
      - name: edge
        type: haproxy
        runtime_api: unix:/run/haproxy/admin.sock
        backend: checkout
        blue: [blue1, blue2]
        green: [green1, green2]
    stages:
      - {{weight: 5, hold: 60s}}
      - {{weight: 25, hold: 120s}}
      - {{weight: 50, hold: 120s, approval: true}}
      - {{weight: 100, hold: 300s}}
    checks:
      - name: new-health
        type: http
        url: http://{{{{new}}}}.checkout.internal/healthz
        interval: 5s
        failure_limit: 2
      - name: old-health
        type: http
        url: http://{{{{old}}}}.checkout.internal/healthz
"""


def valid() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(VALID_YAML)
    return data


def errors_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


# --- valid configs ---------------------------------------------------------------------------


def test_full_config_parses_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cutover.yaml"
    path.write_text(VALID_YAML)
    config = load_config(path)

    assert config.api.listen == "127.0.0.1:8480"
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8480)
    assert [t.role for t in config.api.tokens] == ["operator", "viewer"]
    assert config.api.tls is None
    assert config.notify[0].format == "json"
    assert config.state.path == tmp_path / "var" / "cutover.db"

    svc = config.service("checkout")
    assert svc.live == "blue"
    assert [s.weight for s in svc.stages] == [5, 25, 50, 100]
    assert [s.hold for s in svc.stages] == [60, 120, 120, 300]
    assert svc.stages[2].approval and not svc.stages[0].approval
    assert (svc.on_drift, svc.apply_timeout, svc.rollback_timeout) == ("pause", 10, 30)
    assert (svc.undo_window, svc.max_restarts, svc.restart_window) == (3600, 3, 600)

    new, old = svc.checks
    assert new.interval == 5 and new.effective_timeout == 5
    assert old.interval == 10  # default interval
    assert old.effective_timeout == 5  # min(interval, 5s)
    assert (old.failure_limit, old.window) == (2, 5)
    assert (old.inconclusive_limit, old.error_limit) == (3, 3)
    assert (old.on_inconclusive, old.on_error, old.dry_run) == ("pause", "pause", False)
    assert svc.default_initial_delay == 0  # no DNS router


def test_plan() -> None:
    plan = parse_config(valid()).service("checkout").plan()
    assert isinstance(plan, Plan)
    assert plan.stages[0] == Stage(weight=5, hold=60.0)
    assert plan.stages[2] == Stage(weight=50, hold=120.0, approval=True)
    assert plan.routers == ("edge",)
    assert plan.checks[1] == CheckPolicy(name="old-health", interval=10.0, initial_delay=0.0)
    assert plan.checks[0].interval == 5.0
    assert (plan.on_drift, plan.apply_timeout, plan.rollback_timeout) == ("pause", 10.0, 30.0)
    assert (plan.max_restarts, plan.restart_window) == (3, 600.0)


def test_minimal_config_defaults() -> None:
    data = valid()
    del data["api"], data["state"], data["notify"]
    del data["services"]["checkout"]["checks"], data["services"]["checkout"]["live"]
    config = parse_config(data)
    assert config.api.listen == "127.0.0.1:8480" and config.api.tokens == []
    assert config.state.sqlite == "./var/cutover.db"  # resolved only by load_config
    assert config.notify == []
    assert config.services["checkout"].checks == []
    assert config.services["checkout"].live == "blue"


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), (45, 45.0), (1.5, 1.5)],
)
def test_durations(written: object, seconds: float) -> None:
    data = valid()
    data["services"]["checkout"]["stages"][0]["hold"] = written
    data["services"]["checkout"]["checks"][0]["interval"] = written
    svc = parse_config(data).service("checkout")
    assert svc.stages[0].hold == seconds
    assert svc.checks[0].interval == seconds
    assert svc.checks[0].effective_timeout == min(seconds, 5.0)


def test_ipv6_listen_and_tls() -> None:
    data = valid()
    data["api"]["listen"] = "[::1]:9000"
    data["api"]["tls"] = {"cert_file": "/etc/c.crt", "key_file": "/etc/c.key"}
    config = parse_config(data)
    assert (config.api.host, config.api.port) == ("::1", 9000)
    assert config.api.tls is not None and config.api.tls.key_file == "/etc/c.key"


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert set(config.services) >= {"checkout"}
    assert Path(config.state.sqlite).is_absolute()
    for svc in config.services.values():
        svc.plan()


def test_unknown_service() -> None:
    with pytest.raises(NotFoundError, match=r"no service 'nope' in the config \(known: checkout\)"):
        parse_config(valid()).service("nope")


# --- invalid configs: each names its place ---------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """``_set("services.checkout.stages.0.weight", 0)``; value ``...`` deletes the key."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]
        else:
            node[key] = copy.deepcopy(value)

    return mutate


def _weights(*weights: int) -> Mutation:
    return _set("services.checkout.stages", [{"weight": w, "hold": "1m"} for w in weights])


def _second_service(**router: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        other = copy.deepcopy(data["services"]["checkout"])
        other["routers"][0].update(router)
        data["services"]["search"] = other

    return mutate


CASES: list[tuple[str, Mutation, str]] = [
    (
        "weight 0",
        _set("services.checkout.stages.0.weight", 0),
        "services.checkout.stages[0].weight: must be 1..100",
    ),
    (
        "weight 101",
        _set("services.checkout.stages.3.weight", 101),
        "services.checkout.stages[3].weight: must be 1..100",
    ),
    (
        "weight as string",
        _set("services.checkout.stages.0.weight", "5"),
        "services.checkout.stages[0].weight: must be an integer, not a string",
    ),
    (
        "weight as float",
        _set("services.checkout.stages.0.weight", 5.5),
        "services.checkout.stages[0].weight: must be an integer, not a number",
    ),
    (
        "weight as bool",
        _set("services.checkout.stages.0.weight", True),
        "services.checkout.stages[0].weight: must be an integer, not true/false",
    ),
    (
        "weights equal",
        _weights(5, 25, 25, 100),
        "services.checkout.stages[2].weight: must be greater than the previous stage's 25",
    ),
    (
        "weights falling",
        _weights(50, 25, 100),
        "services.checkout.stages[1].weight: must be greater than the previous stage's 50",
    ),
    (
        "last not 100",
        _weights(5, 25, 50),
        "services.checkout.stages[2].weight: the last stage must be 100",
    ),
    (
        "no stages",
        _set("services.checkout.stages", []),
        "services.checkout.stages: must not be empty",
    ),
    (
        "stage without hold",
        _set("services.checkout.stages.1.hold", ...),
        "services.checkout.stages[1].hold: required",
    ),
    (
        "bad duration",
        _set("services.checkout.stages.1.hold", "soon"),
        "services.checkout.stages[1].hold: must be a duration like 30s, 5m, 1h",
    ),
    (
        "negative duration",
        _set("services.checkout.stages.1.hold", -5),
        "services.checkout.stages[1].hold: must not be negative",
    ),
    (
        "approval_timeout without approval",
        _set("services.checkout.stages.1.approval_timeout", "1h"),
        "services.checkout.stages[1].approval_timeout: only meaningful with approval: true",
    ),
    (
        "unknown top-level key",
        _set("servces", {}),
        "servces: unknown key (did you mean 'services'?)",
    ),
    (
        "unknown stage key",
        _set("services.checkout.stages.1.approve", True),
        "services.checkout.stages[1].approve: unknown key (did you mean 'approval'?)",
    ),
    (
        "unknown service key",
        _set("services.checkout.on_drfit", "pause"),
        "services.checkout.on_drfit: unknown key (did you mean 'on_drift'?)",
    ),
    (
        "unknown router key",
        _set("services.checkout.routers.0.bakend", "x"),
        "services.checkout.routers[0].bakend: unknown key (did you mean 'backend'?)",
    ),
    (
        "unknown check key",
        _set("services.checkout.checks.0.intervall", "5s"),
        "services.checkout.checks[0].intervall: unknown key (did you mean 'interval'?)",
    ),
    ("unknown api key", _set("api.tokenz", []), "api.tokenz: unknown key (did you mean 'tokens'?)"),
    (
        "unknown router type",
        _set("services.checkout.routers.0.type", "nginxx"),
        "services.checkout.routers[0].type: unknown router type 'nginxx' (known: ",
    ),
    (
        "router without type",
        _set("services.checkout.routers.0.type", ...),
        "services.checkout.routers[0].type: required (known: ",
    ),
    (
        "router not a mapping",
        _set("services.checkout.routers.0", "edge"),
        "services.checkout.routers[0]: must be a mapping with a type: key, not a string",
    ),
    (
        "unknown check type",
        _set("services.checkout.checks.1.type", "prometheuss"),
        "services.checkout.checks[1].type: unknown check type 'prometheuss' (known: ",
    ),
    (
        "router field missing",
        _set("services.checkout.routers.0.backend", ...),
        "services.checkout.routers[0].backend: required",
    ),
    (
        "check field wrong",
        _set("services.checkout.checks.0.failure_limit", 0),
        "services.checkout.checks[0].failure_limit: must be >= 1",
    ),
    (
        "check on_error",
        _set("services.checkout.checks.0.on_error", "panic"),
        "services.checkout.checks[0].on_error: must be one of 'pause' or 'rollback'",
    ),
    (
        "no routers",
        _set("services.checkout.routers", []),
        "services.checkout.routers: must not be empty",
    ),
    (
        "duplicate router names",
        lambda d: d["services"]["checkout"]["routers"].append(
            {**d["services"]["checkout"]["routers"][0], "backend": "other"}
        ),
        "services.checkout.routers[1].name: duplicate router name 'edge' (also routers[0])",
    ),
    (
        "duplicate check names",
        _set("services.checkout.checks.1.name", "new-health"),
        "services.checkout.checks[1].name: duplicate check name 'new-health' (also checks[0])",
    ),
    (
        "unknown placeholder",
        _set("services.checkout.checks.1.url", "http://{{neww}}.x/healthz"),
        "services.checkout.checks[1].url: unknown placeholder {{neww}}",
    ),
    (
        "color placeholder outside compare",
        _set("services.checkout.checks.1.url", "http://{{color}}.x/healthz"),
        "services.checkout.checks[1].url: unknown placeholder {{color}}",
    ),
    (
        "unknown placeholder in header",
        _set("services.checkout.checks.1.headers", {"X-Svc": "{{svc}}"}),
        "services.checkout.checks[1].headers.X-Svc: unknown placeholder {{svc}}",
    ),
    (
        "live color",
        _set("services.checkout.live", "purple"),
        "services.checkout.live: must be one of 'blue' or 'green'",
    ),
    (
        "on_drift",
        _set("services.checkout.on_drift", "ignore"),
        "services.checkout.on_drift: must be one of 'pause', 'reassert' or 'rollback'",
    ),
    (
        "max_restarts as string",
        _set("services.checkout.max_restarts", "3"),
        "services.checkout.max_restarts: must be an integer, not a string",
    ),
    ("no services", _set("services", {}), "services: must not be empty"),
    ("services missing", _set("services", ...), "services: required"),
    (
        "bad service name",
        lambda d: d["services"].update(Checkout=d["services"]["checkout"]),
        "services.Checkout: service names use lowercase letters",
    ),
    (
        "service not a mapping",
        _set("services.checkout", ["x"]),
        "services.checkout: must be a mapping, not a list",
    ),
    ("listen without port", _set("api.listen", "localhost"), "api.listen: must be host:port"),
    (
        "listen port too big",
        _set("api.listen", "127.0.0.1:70000"),
        "api.listen: port must be 1..65535",
    ),
    (
        "unquoted IPv6 listen",
        _set("api.listen", [":1"]),
        'api.listen: must be a string; quote IPv6 addresses: "[::1]:8480"',
    ),
    (
        "public listen without tokens",
        lambda d: d["api"].update(listen="0.0.0.0:8480", tokens=[]),
        "api.listen: with no api.tokens the daemon listens only on a loopback address",
    ),
    (
        "token sha256",
        _set("api.tokens.0.sha256", "ABC"),
        "api.tokens[0].sha256: must be the sha256 of the token as 64 lowercase hex digits",
    ),
    (
        "token role",
        _set("api.tokens.1.role", "admin"),
        "api.tokens[1].role: must be one of 'viewer' or 'operator'",
    ),
    *(
        (
            f"token name {name!r}",
            _set("api.tokens.0.name", name),
            "api.tokens[0].name: token names are 1-64 letters, digits and @._+- and start with "
            "a letter or digit",
        )
        for name in ("", "has space", "-dash-first", "x" * 65, "naïve", "a:b")
    ),
    (
        "one token for two names",
        _set("api.tokens.1.sha256", SHA_A),
        "api.tokens[1].sha256: the same token as api.tokens[0]; give each name its own token",
    ),
    (
        "duplicate token name",
        _set("api.tokens.1.name", "release-bot"),
        "api.tokens[1].name: duplicate token name 'release-bot' (also api.tokens[0])",
    ),
    ("tls incomplete", _set("api.tls", {"cert_file": "/c.crt"}), "api.tls.key_file: required"),
    ("state key", _set("state.postgres", "x"), "state.postgres: unknown key"),
    ("notify type", _set("notify.0.type", "email"), "notify[0].type: must be 'webhook'"),
    (
        "notify url",
        _set("notify.0.url", "127.0.0.1:9000"),
        "notify[0].url: must be an http:// or https:// URL",
    ),
    (
        "notify token twice",
        lambda d: d["notify"][0].update(token_file="/t", token_env="T"),
        "notify[0]: give token_file or token_env, not both",
    ),
    (
        "notify url without a host",
        _set("notify.0.url", "http:///hook"),
        "notify[0].url: must name a host, e.g. http://127.0.0.1:9000/hook",
    ),
    (
        "notify url bad port",
        _set("notify.0.url", "http://127.0.0.1:99999/hook"),
        "notify[0].url: port must be 1..65535",
    ),
    (
        "notify url with a space",
        _set("notify.0.url", "http://127.0.0.1:9000/a hook"),
        "notify[0].url: must not contain spaces or control characters",
    ),
    (
        "notify url unclosed IPv6 bracket",
        _set("notify.0.url", "http://[::1/hook"),
        "notify[0].url: must be an http:// or https:// URL",
    ),
    (
        "notify url ftp",
        _set("notify.0.url", "ftp://127.0.0.1/hook"),
        "notify[0].url: must be an http:// or https:// URL",
    ),
    (
        "notify url password and a token",
        lambda d: d["notify"][0].update(
            url="https://bot:hunter5@hooks.example.com/x", token_env="HOME"
        ),
        "notify[0].url: carries user:password credentials and a token is given; "
        "authenticate with one of them",
    ),
    (
        "notify same url twice",
        lambda d: d["notify"].append({"type": "webhook", "url": "http://127.0.0.1:9000/hook"}),
        "notify[1].url: the same url and format as notify[0]; "
        "list the events of both in one webhook's events:",
    ),
    (
        "notify unknown event kind",
        _set("notify.0.events", ["rolled_back", "rollback"]),
        "notify[0].events[1]: unknown event kind 'rollback' (known: started, stage_applied, "
        "approval_needed, paused, resumed, drift, alarm, baking, completed, rolled_back, "
        "failed, refused)",
    ),
    (
        "notify no events",
        _set("notify.0.events", []),
        "notify[0].events: must not be empty",
    ),
    (
        "notify events not a list",
        _set("notify.0.events", "rolled_back"),
        "notify[0].events: must be a list, not a string",
    ),
    (
        "notify event listed twice",
        _set("notify.0.events", ["failed", "rolled_back", "failed"]),
        "notify[0].events[2]: 'failed' is listed twice (also events[0])",
    ),
    (
        "server in both colors",
        _set("services.checkout.routers.0.green", ["blue1"]),
        "services.checkout.routers[0]: server(s) in both blue and green: blue1",
    ),
    (
        "bad runtime_api",
        _set("services.checkout.routers.0.runtime_api", "http://x"),
        "services.checkout.routers[0].runtime_api: ",
    ),
    (
        "router blue missing",
        _set("services.checkout.routers.0.blue", ...),
        "services.checkout.routers[0].blue: required",
    ),
    (
        "two services share a backend server",
        _second_service(green=["green9"]),
        "services.search.routers[0]: ",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_names_the_place(mutate: Mutation, expected: str) -> None:
    data = valid()
    mutate(data)
    errors = errors_of(data)
    assert any(e.startswith(expected) for e in errors), errors


def test_shared_backend_server_names_both_places() -> None:
    data = valid()
    _second_service(green=["green9"])(data)
    errors = errors_of(data)
    assert any(
        e.startswith("services.search.routers[0]: ") and "services.checkout.routers[0]" in e
        for e in errors
    ), errors


def test_other_backend_or_socket_is_no_conflict() -> None:
    data = valid()
    _second_service(backend="search")(data)
    _second_service(runtime_api="tcp:127.0.0.1:9999")(data)
    assert set(parse_config(data).services) == {"checkout", "search"}


def test_unknown_type_lists_the_registry() -> None:
    data = valid()
    data["services"]["checkout"]["routers"][0]["type"] = "nginxx"
    (error,) = errors_of(data)
    assert error.endswith("(known: haproxy)") or "haproxy" in error.split("known: ")[1]


def test_several_errors_at_once() -> None:
    data = valid()
    svc = data["services"]["checkout"]
    svc["stages"][0]["weight"] = 0
    svc["stages"][3]["weight"] = 101
    svc["routers"][0]["type"] = "nginxx"
    svc["checks"][1]["name"] = "new-health"
    data["bogus"] = 1
    data["services"]["search"] = copy.deepcopy(valid()["services"]["checkout"])
    data["services"]["search"]["routers"][0]["backend"] = "search"
    data["services"]["search"]["stages"][1]["weight"] = 1  # pass-2 error in a valid section
    errors = errors_of(data)
    for expected in (
        "services.checkout.stages[0].weight: must be 1..100",
        "services.checkout.stages[3].weight: must be 1..100",
        "services.checkout.routers[0].type: unknown router type 'nginxx'",
        "bogus: unknown key",
        "services.search.stages[1].weight: must be greater than the previous stage's 5",
    ):
        assert any(e.startswith(expected) for e in errors), (expected, errors)


def test_secrets_never_echoed() -> None:
    data = valid()
    data["services"]["checkout"]["routers"][0]["secret"] = "hunter2"
    data["services"]["checkout"]["routers"][0]["api_key"] = ["hunter3"]
    data["notify"][0]["token_file"] = {"token": "hunter4"}
    data["api"]["tokens"][0]["sha256"] = "hunter5"
    text = "\n".join(errors_of(data))
    assert "services.checkout.routers[0].secret: unknown key" in text
    assert "hunter" not in text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, "<config>: the config is empty"),
        ([1, 2], "<config>: the top level must be a mapping of keys, not a list"),
        ("services", "<config>: the top level must be a mapping of keys, not a string"),
    ],
)
def test_top_level_not_a_mapping(data: object, expected: str) -> None:
    assert errors_of(data)[0].startswith(expected)


# --- files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: no such file"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("services:\n  checkout:\n    stages: [1, 2\n    live: blue\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}:4:")
    assert "YAML syntax error" in error


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services: 2024-13-01\n", "YAML value error"),
        ("services: !!python/object:os.system x\n", "YAML syntax error"),
        ("services: " + "[" * 5000 + "]" * 5000 + "\n", "YAML"),
    ],
)
def test_odd_yaml_never_tracebacks(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}") and expected in error


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(VALID_YAML + "  checkout:\n    live: green\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert "duplicate key 'checkout'" in error and error.startswith(f"{path}:")


def test_empty_and_non_mapping_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: the config is empty"):
        load_config(empty)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        load_config(listing)


def test_relative_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "cutover.yaml"
    data = valid()
    data["state"]["sqlite"] = "state/c.db"
    data["notify"][0]["token_file"] = "hook.token"
    (tmp_path / "etc" / "hook.token").write_text("hook-token\n")
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert config.state.sqlite == str(tmp_path / "etc" / "state" / "c.db")
    assert config.notify[0].token_file == str(tmp_path / "etc" / "hook.token")

    data["state"]["sqlite"] = "/abs/c.db"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).state.sqlite == "/abs/c.db"


def test_router_secret_and_socket_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    config = load_config(ROOT / "config" / "dns.example.yaml")
    routers = {r.name: r for s in config.services.values() for r in s.routers}
    # absolute paths stay as they are ...
    assert routers["edge"].runtime_api == "unix:/run/haproxy/admin.sock"  # type: ignore[attr-defined]
    # ... relative ones resolve against the config file's directory, not the daemon's cwd
    data = yaml.safe_load((ROOT / "config" / "dns.example.yaml").read_text())
    service = data["services"]["checkout"]
    service["routers"][0]["runtime_api"] = "unix:run/admin.sock"
    service["routers"][1]["tsig"]["secret_file"] = "keys/tsig.secret"
    path = tmp_path / "cutover.yaml"
    path.write_text(yaml.safe_dump(data))
    edge, dns = load_config(path).services["checkout"].routers
    assert edge.runtime_api == f"unix:{tmp_path}/run/admin.sock"  # type: ignore[attr-defined]
    assert dns.tsig.secret_file == str(tmp_path / "keys" / "tsig.secret")  # type: ignore[attr-defined]


# --- DNS TTL rules (no DNS router is registered yet: checked on a hand-built service) --------


class _DnsSpec(RouterSpecBase):
    type: Literal["fake-dns"] = "fake-dns"
    record_ttl: int = 30

    @property
    def ttl(self) -> int | None:
        return self.record_ttl

    def claims(self) -> set[str]:
        return {f"dns {self.name}"}


def _dns_service(*stages: StageSpec) -> ServiceSpec:
    return ServiceSpec.model_construct(
        routers=[
            _DnsSpec(name="dns", blue=["192.0.2.1"], green=["192.0.2.2"], record_ttl=30),
            _DnsSpec(name="dns2", blue=["192.0.2.1"], green=["192.0.2.2"], record_ttl=20),
        ],
        stages=list(stages),
        checks=[],
    )


def test_hold_shorter_than_dns_ttl() -> None:
    svc = _dns_service(
        StageSpec(weight=10, hold=10),
        StageSpec(weight=50, hold=10, allow_hold_below_ttl=True),
        StageSpec(weight=100, hold=30),
    )
    assert list(_service_errors("x", _Parts.of(svc))) == [
        "services.x.stages[0].hold: 10s is shorter than the TTL 30s of DNS router 'dns' "
        "(set allow_hold_below_ttl: true to allow)"
    ]
    assert svc.default_initial_delay == 30.0


def test_config_is_frozen() -> None:
    config: Config = parse_config(valid())
    with pytest.raises(ValueError, match="frozen"):
        config.services["checkout"].stages[0].weight = 7  # type: ignore[misc]


def test_tls_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    data = valid()
    data["api"]["tls"] = {"cert_file": "tls/api.crt", "key_file": "/etc/cutover/api.key"}
    path = tmp_path / "cutover.yaml"
    path.write_text(yaml.safe_dump(data))
    tls = load_config(path).api.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file) == (str(tmp_path / "tls/api.crt"), "/etc/cutover/api.key")


# --- config errors all at once (PRODUCT.md, Operator controls) -------------------------------


def _dns_router(name: str, record: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "rfc2136",
        "server": "127.0.0.1:53",
        "zone": "example.com.",
        "record": record,
        "ttl": 30,
        "tsig": {"name": "cutover-key.", "secret_env": "CUTOVER_TSIG_SECRET"},
        "blue": ["192.0.2.10"],
        "green": ["198.51.100.10"],
    }


def _all_at_once() -> tuple[dict[str, Any], list[str]]:
    """A config with a shape error in checkout and, elsewhere, errors only pass 2 can see;
    with every error it must report."""
    data = valid()
    checkout = data["services"]["checkout"]
    checkout["routers"].append(_dns_router("dns", "checkout.example.com."))
    checkout["stages"][1]["weight"] = "25"  # shape: a string
    checkout["stages"][0]["hold"] = "10s"  # cross-field: below the DNS TTL, in the same service
    checkout["checks"][0]["interval"] = -1  # shape, in a check
    search = copy.deepcopy(valid()["services"]["checkout"])
    search["routers"][0].update(green=["green2", "green9"])  # shares checkout's green2
    search["stages"][3]["weight"] = 90  # cross-field in a valid service
    payments = copy.deepcopy(valid()["services"]["checkout"])
    payments["routers"] = [_dns_router("gslb", "checkout.example.com.")]  # checkout's record
    payments["stages"] = [{"weight": 50, "hold": "1m"}, {"weight": 100, "hold": "5s"}]
    data["services"].update(search=search, payments=payments)
    data["notify"].append({"type": "webhook", "url": "http://127.0.0.1:9001/", "events": ["x"]})
    return data, [
        "services.checkout.stages[1].weight: must be an integer, not a string",
        "services.checkout.checks[0].interval: ",
        "services.checkout.stages[0].hold: 10s is shorter than the TTL 30s of DNS router 'dns'",
        "services.search.routers[0]: shares ",
        "services.search.stages[3].weight: the last stage must be 100",
        "services.payments.routers[0]: shares ",
        "services.payments.stages[1].hold: 5s is shorter than the TTL 30s of DNS router 'gslb'",
        "notify[1].events[0]: unknown event kind 'x'",
    ]


def test_a_shape_error_hides_no_cross_field_or_cross_service_error() -> None:
    data, expected = _all_at_once()
    errors = errors_of(data)
    for want in expected:
        assert any(e.startswith(want) for e in errors), (want, errors)
    shared = {e.split(":", 1)[0]: e for e in errors if ": shares " in e}
    assert (
        "checkout/green2 with services.checkout.routers[0];" in shared["services.search.routers[0]"]
    )
    assert "with services.checkout.routers[1];" in shared["services.payments.routers[0]"]
    assert len(errors) == len(expected), errors  # each once, nothing invented


def test_cutover_validate_prints_every_error_in_one_run(tmp_path: Path) -> None:
    data, expected = _all_at_once()
    path = tmp_path / "cutover.yaml"
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run(
        [sys.executable, "-m", "cutover", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    for want in expected:
        assert want in run.stderr, (want, run.stderr)


def test_rules_run_on_the_valid_parts_of_a_broken_service() -> None:
    data = valid()
    checkout = data["services"]["checkout"]
    checkout["live"] = "purple"  # shape error at the service level
    checkout["stages"][2]["weight"] = 5  # not above stage 1
    checkout["checks"][1]["name"] = "new-health"  # a duplicate check name
    checkout["checks"][1]["url"] = "http://{{newest}}/healthz"  # an unknown placeholder
    errors = errors_of(data)
    for want in (
        "services.checkout.live: must be one of 'blue' or 'green'",
        "services.checkout.stages[2].weight: must be greater than the previous stage's 25",
        "services.checkout.checks[1].name: duplicate check name 'new-health' (also checks[0])",
        "services.checkout.checks[1].url: ",
    ):
        assert any(e.startswith(want) for e in errors), (want, errors)


def test_rules_run_on_the_valid_parts_of_a_broken_api_section() -> None:
    data = valid()
    data["api"]["tls"] = "yes"  # shape
    data["api"]["tokens"].append({"name": "deploy", "role": "admin", "sha256": SHA_A[:-1] + "c"})
    data["api"]["tokens"].append({"name": "oncall", "role": "viewer", "sha256": SHA_A})
    assert sorted(errors_of(data)) == [
        "api.tls: must be a mapping, not a string",
        "api.tokens[2].role: must be one of 'viewer' or 'operator'",
        "api.tokens[3].name: duplicate token name 'oncall' (also api.tokens[1])",
        "api.tokens[3].sha256: the same token as api.tokens[0]; give each name its own token",
    ]
    del data["api"]["tokens"]
    data["api"]["listen"] = "0.0.0.0:8480"
    assert sorted(errors_of(data)) == [
        "api.listen: with no api.tokens the daemon listens only on a loopback address "
        "(127.0.0.1, [::1], localhost); add tokens to listen on 0.0.0.0",
        "api.tls: must be a mapping, not a string",
    ]


def test_an_invalid_stage_is_not_the_previous_one_of_the_next() -> None:
    data = valid()
    data["services"]["checkout"]["stages"][1]["weight"] = 0
    errors = errors_of(data)
    # stage 2 (50) is compared with nothing: its neighbour has its own error
    assert errors == ["services.checkout.stages[1].weight: must be 1..100"]


# --- webhooks: what cannot work is refused at load --------------------------------------------


def test_webhook_events_default_to_every_notifiable_kind() -> None:
    config = parse_config(valid())
    assert config.notify[0].events == list(NOTIFY_EVENTS)
    data = valid()
    data["notify"][0]["events"] = ["rolled_back", "failed"]
    assert parse_config(data).notify[0].events == ["rolled_back", "failed"]


def test_webhook_url_credentials_are_never_echoed() -> None:
    data = valid()
    data["notify"][0].update(url="https://bot:hunter6@hooks.example.com/T0/x", token_env="HOME")
    data["notify"].append({"type": "webhook", "url": "https://bot:hunter7@h.example.com/ a"})
    text = "\n".join(errors_of(data))
    assert "notify[0].url: carries user:password" in text
    assert "notify[1].url: must not contain spaces" in text
    assert "hunter" not in text and "T0" not in text


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "cutover.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, "notify[0].token_file: cannot read {dir}/hook.token: No such file or directory"),
        ("  \n", "notify[0].token_file: {dir}/hook.token is empty"),
        (b"\xff\xfe", "notify[0].token_file: {dir}/hook.token is not UTF-8 text"),
    ],
    ids=["missing", "empty", "not-utf8"],
)
def test_webhook_token_file_that_cannot_be_read_is_a_config_error(
    tmp_path: Path, token: str | bytes | None, expected: str
) -> None:
    data = valid()
    data["notify"][0]["token_file"] = "hook.token"
    if isinstance(token, str):
        (tmp_path / "hook.token").write_text(token)
    elif token is not None:
        (tmp_path / "hook.token").write_bytes(token)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert info.value.errors == [expected.format(dir=tmp_path)]


def test_webhook_token_env_unset_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = valid()
    data["notify"][0]["token_env"] = "CUTOVER_TEST_HOOK_TOKEN"
    path = _write(tmp_path, data)
    monkeypatch.delenv("CUTOVER_TEST_HOOK_TOKEN", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        "notify[0].token_env: $CUTOVER_TEST_HOOK_TOKEN is not set or empty"
    ]
    monkeypatch.setenv("CUTOVER_TEST_HOOK_TOKEN", "hook-secret")
    assert load_config(path).notify[0].token_env == "CUTOVER_TEST_HOOK_TOKEN"


def test_webhook_token_errors_come_with_the_others(tmp_path: Path) -> None:
    data, expected = _all_at_once()
    data["notify"][0]["token_file"] = "missing.token"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    errors = info.value.errors
    assert f"notify[0].token_file: cannot read {tmp_path}/missing.token: " in "\n".join(errors)
    assert len(errors) == len(expected) + 1, errors


def test_the_docs_and_the_example_name_every_webhook_event_kind() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    webhooks = operations[operations.index("* **Webhooks**") :].split("\n* ", 1)[0]
    example = EXAMPLE.read_text()
    listed = example[example.index("# The event kinds to send") :].split("# events:", 1)[0]
    for kind in NOTIFY_EVENTS:
        assert f"`{kind}`" in webhooks, kind
        assert kind in listed, kind
