"""Config loading and validation: every error named by its place, never a traceback."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from cutover.config import (
    Config,
    ServiceSpec,
    StageSpec,
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
    assert list(_service_errors("x", svc)) == [
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
