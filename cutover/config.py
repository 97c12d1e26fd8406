"""Load and validate the daemon's YAML config into typed, frozen specs.

A config with an error is refused as a whole, with every error named by its place
(PRODUCT.md, Config): :func:`parse_config` raises one :class:`~cutover.errors.ConfigError` whose
``errors`` list holds one ``"<place>: <message>"`` string per problem, e.g.
``services.checkout.stages[2].weight: must be 1..100``. Nothing here ever lets a traceback or
a pydantic error text through, and messages name places, not input values, so a secret typed
into the wrong key is never echoed.

Validation runs in two passes:

1. *Shape*: pydantic models (strict: ``weight: "5"`` is an error, not 5; unknown keys are errors).
   Router and check specs are discriminated unions on ``type:`` built from
   :data:`cutover.routers.registry.ROUTER_SPECS` and :data:`cutover.checks.registry.CHECK_SPECS`,
   so a new provider needs no change here, and an unknown ``type:`` is an error naming the
   known ones (never a silent default).
2. *Meaning*: rules across fields and services (strictly increasing stage weights, unique names,
   placeholders, routers of two services claiming the same backend server or DNS record, holds
   shorter than a DNS TTL, webhook settings that could never deliver). These run on every
   router, stage, check and webhook that passed pass 1 on its own, even when a sibling or its
   service did not: a shape error in one place never hides a rule across fields or services
   elsewhere (PRODUCT.md, Operator controls), and one run reports every error it can.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import ipaddress
import os
import re
import secrets
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    TypeAlias,
    TypeVar,
    Union,
    get_args,
    get_origin,
)
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import ErrorDetails

from cutover.checks.base import CheckSpecBase
from cutover.checks.registry import CHECK_SPECS
from cutover.core.model import CheckPolicy, Plan, Stage
from cutover.errors import ConfigError, NotFoundError
from cutover.routers.base import RouterSpecBase
from cutover.routers.registry import ROUTER_SPECS
from cutover.specs import Duration, Spec, render

__all__ = [
    "NOTIFY_EVENTS",
    "TOKEN_NAME",
    "ApiSpec",
    "CheckSpec",
    "Config",
    "NotifySpec",
    "RouterSpec",
    "ServiceSpec",
    "StageSpec",
    "StateSpec",
    "TlsSpec",
    "TokenSpec",
    "load_config",
    "parse_config",
    "shown_key",
    "token_sha256",
]

#: Placeholders every check's string fields may use (PRODUCT.md, Config).
CHECK_PLACEHOLDERS = ("new", "old", "service")
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
#: A token's name is the actor in the event timeline and sits unquoted in a YAML flow mapping.
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._+-]{0,63}$")
DEFAULT_LISTEN = "127.0.0.1:8480"
#: The journal event kinds a webhook can be sent, in a cutover's order (PRODUCT.md, Signals
#: for on-call and Notifications). ``stage_applied`` is the verified stage change (traffic has
#: moved, not just been asked to); ``drift`` is a router that reads what the daemon did not
#: write (followed by ``paused`` under ``on_drift: pause``, as after an operator's pause);
#: ``alarm`` is a pause the daemon decided (a check's inconclusive or error limit, too many
#: restarts); ``refused`` is a start preflight refused. The others
#: (``stage_started``, ``rollback_started``, ``promoted``, ``router_unreadable``, …) stay in
#: the journal and on the status page.
NOTIFY_EVENTS = (
    "started",
    "stage_applied",
    "approval_needed",
    "paused",
    "resumed",
    "drift",
    "alarm",
    "baking",
    "completed",
    "rolled_back",
    "failed",
    "refused",
)


# --- discriminated unions from the registries ----------------------------------------------


def _type_of(value: Any) -> str | None:
    """The ``type:`` of a router/check item; ``None`` (tag not found) when there is none."""
    if isinstance(value, Mapping):
        tag = value.get("type")
        return tag if isinstance(tag, str) else None
    tag = getattr(value, "type", None)
    return tag if isinstance(tag, str) else None


def _tagged_union(specs: Mapping[str, type[BaseModel]]) -> Any:
    members = tuple(Annotated[cls, Tag(tag)] for tag, cls in specs.items())
    return Annotated[Union[members], Discriminator(_type_of)]  # noqa: UP007 (runtime-built)


if TYPE_CHECKING:
    RouterSpec: TypeAlias = RouterSpecBase
    CheckSpec: TypeAlias = CheckSpecBase
else:
    RouterSpec = _tagged_union(ROUTER_SPECS)
    CheckSpec = _tagged_union(CHECK_SPECS)

#: The list fields holding union items, and the registry their ``type:`` is looked up in.
_UNIONS: dict[str, tuple[str, Mapping[str, type[BaseModel]]]] = {
    "routers": ("router", ROUTER_SPECS),
    "checks": ("check", CHECK_SPECS),
}


# --- field validators --------------------------------------------------------------------


def _weight(value: int) -> int:
    if not 1 <= value <= 100:
        raise ValueError("must be 1..100")
    return value


def _service_name(value: str) -> str:
    if not SERVICE_NAME.match(value):
        raise ValueError(
            "service names use lowercase letters, digits, '-' and '_' and start with a letter "
            "or digit"
        )
    return value


def _token_name(value: str) -> str:
    if not TOKEN_NAME.match(value):
        raise ValueError(
            "token names are 1-64 letters, digits and @._+- and start with a letter or digit"
        )
    return value


def _sha256_hex(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("must be the sha256 of the token as 64 lowercase hex digits")
    return value


def _split_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); raises ``ValueError`` otherwise."""
    bad = ValueError('must be host:port, e.g. 127.0.0.1:8480 or "[::1]:8480"')
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", value)
    if not m:
        raise bad
    if m.group(1) is not None:
        host, port = m.group(1), int(m.group(2))
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    else:
        host, port = m.group(3), int(m.group(4))
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1..65535")
    return host, port


def _listen(value: Any) -> Any:
    if isinstance(value, list):
        # `listen: [::1]:8480` unquoted is YAML flow-sequence syntax, not a string.
        raise ValueError('must be a string; quote IPv6 addresses: "[::1]:8480"')
    if isinstance(value, str):
        _split_listen(value)
    return value


def _webhook_url(value: str) -> str:
    """An URL aiohttp can POST to; the message never holds the URL (its path or its
    user:password may be a secret)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain spaces or control characters")
    bad = ValueError("must be an http:// or https:// URL")
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        raise bad from None
    if parts.scheme not in ("http", "https"):
        raise bad
    if not parts.hostname:
        raise ValueError("must name a host, e.g. http://127.0.0.1:9000/hook")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port must be 1..65535") from None
    if port == 0:
        raise ValueError("port must be 1..65535")
    return value


def _notify_event(value: str) -> str:
    if value not in NOTIFY_EVENTS:
        raise ValueError(f"unknown event kind {value[:40]!r} (known: {', '.join(NOTIFY_EVENTS)})")
    return value


# --- models --------------------------------------------------------------------------------


class _Strict(Spec):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def token_sha256(token: str) -> str:
    """The form a bearer token is kept in: the sha256 of its UTF-8 bytes as lowercase hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenSpec(_Strict):
    """A bearer token, stored only as the sha256 hex of the token."""

    name: Annotated[str, AfterValidator(_token_name)]
    role: Literal["viewer", "operator"]
    sha256: Annotated[str, AfterValidator(_sha256_hex)]

    @classmethod
    def generate(cls, *, name: str, role: Literal["viewer", "operator"]) -> tuple[str, TokenSpec]:
        """A fresh random token (256 bits) and the spec that keeps only its hash."""
        token = secrets.token_urlsafe(32)
        return token, cls(name=name, role=role, sha256=token_sha256(token))

    def config_line(self) -> str:
        """This token as an ``api.tokens`` list item to paste into the config."""
        return f'- {{name: {self.name}, role: {self.role}, sha256: "{self.sha256}"}}'


class TlsSpec(_Strict):
    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)


Listen = Annotated[str, BeforeValidator(_listen)]


class ApiSpec(_Strict):
    listen: Listen = DEFAULT_LISTEN
    tokens: list[TokenSpec] = Field(default_factory=list)
    tls: TlsSpec | None = None
    #: Most API connections open at once; the daemon lowers it to what the open-files limit
    #: leaves after the engine's reserve (cutover.api.listener).
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    #: A request's line and headers (and a TLS handshake) must arrive within this.
    header_timeout: Annotated[Duration, Field(gt=0, le=300)] = 10.0
    #: An idle kept-alive connection is closed after this.
    keepalive_timeout: Annotated[Duration, Field(gt=0, le=3600)] = 15.0

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StateSpec(_Strict):
    #: After :func:`load_config`, a relative path is resolved against the config's directory.
    sqlite: str = Field(default="./var/cutover.db", min_length=1)

    @property
    def path(self) -> Path:
        return Path(self.sqlite)


class NotifySpec(_Strict):
    """A webhook; delivery lives elsewhere. The token comes from a file or the environment."""

    type: Literal["webhook"]
    url: Annotated[str, AfterValidator(_webhook_url)]
    format: Literal["json", "slack"] = "json"
    token_file: str | None = Field(default=None, min_length=1)
    token_env: str | None = Field(default=None, min_length=1)
    #: The journal event kinds this webhook is sent; the others only move its cursor.
    events: list[Annotated[str, AfterValidator(_notify_event)]] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS), min_length=1
    )


class StageSpec(_Strict):
    weight: Annotated[int, AfterValidator(_weight)]
    hold: Duration
    approval: bool = False
    approval_timeout: Duration | None = None
    allow_hold_below_ttl: bool = False

    def stage(self) -> Stage:
        return Stage(
            weight=self.weight,
            hold=self.hold,
            approval=self.approval,
            approval_timeout=self.approval_timeout,
        )


def _longest_ttl(routers: Iterable[RouterSpecBase]) -> tuple[int, str] | None:
    ttls = [(r.ttl, r.name) for r in routers if r.ttl is not None]
    return max(ttls, key=lambda t: t[0]) if ttls else None


class ServiceSpec(_Strict):
    live: Literal["blue", "green"] = "blue"
    routers: list[RouterSpec] = Field(min_length=1)
    stages: list[StageSpec] = Field(min_length=1)
    checks: list[CheckSpec] = Field(default_factory=list)
    on_drift: Literal["pause", "reassert", "rollback"] = "pause"
    apply_timeout: Duration = 10.0
    rollback_timeout: Duration = 30.0
    undo_window: Duration = 3600.0
    # after the last stage: this long at 100 % with every check running (phase baking)
    bake: Duration = 0.0
    max_restarts: int = Field(default=3, ge=0)
    restart_window: Duration = 600.0

    @property
    def dns_ttl(self) -> tuple[int, str] | None:
        """The longest TTL among the DNS routers and that router's name, or ``None``."""
        return _longest_ttl(self.routers)

    @property
    def default_initial_delay(self) -> float:
        """A check's ``initial_delay`` default: the longest DNS TTL (0 without DNS routers)."""
        longest = self.dns_ttl
        return float(longest[0]) if longest else 0.0

    def policies(self) -> tuple[CheckPolicy, ...]:
        delay = self.default_initial_delay
        return tuple(c.policy(default_initial_delay=delay) for c in self.checks)

    def plan(self) -> Plan:
        """The plan a cutover of this service freezes at start."""
        return Plan(
            stages=tuple(s.stage() for s in self.stages),
            checks=self.policies(),
            routers=tuple(r.name for r in self.routers),
            on_drift=self.on_drift,
            apply_timeout=self.apply_timeout,
            rollback_timeout=self.rollback_timeout,
            max_restarts=self.max_restarts,
            restart_window=self.restart_window,
            bake=self.bake,
        )


ServiceName = Annotated[str, AfterValidator(_service_name)]


class Config(_Strict):
    api: ApiSpec = Field(default_factory=ApiSpec)
    state: StateSpec = Field(default_factory=StateSpec)
    notify: list[NotifySpec] = Field(default_factory=list)
    services: dict[ServiceName, ServiceSpec] = Field(min_length=1)

    def service(self, name: str) -> ServiceSpec:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise NotFoundError(f"no service {name!r} in the config (known: {known})") from None


# --- loading -------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key; construct_mapping reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file; relative file paths resolve against its dir."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or type(exc).__name__})"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_error(path, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML error: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: YAML nested too deeply"]) from None
    except ValueError as exc:  # e.g. a date-like scalar PyYAML cannot build: 2024-13-01
        raise ConfigError([f"{path}: YAML value error: {exc}"]) from None
    base = path.resolve().parent
    return _resolve_paths(parse_config(data, source=str(path), base=base), base)


def _yaml_error(path: Path, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    what = " ".join(p for p in (exc.context, exc.problem) if p)
    return f"{where}: YAML syntax error: {what or 'cannot parse'}"


def _resolved(p: str, base: Path) -> str:
    """A path of the config, relative to ``base`` (the config's directory)."""
    if p == ":memory:" or p.startswith("file:"):
        return p  # SQLite's special names are not paths
    return str(base / Path(p).expanduser())


def _resolve_paths(config: Config, base: Path) -> Config:
    resolve = functools.partial(_resolved, base=base)
    state = config.state.model_copy(update={"sqlite": resolve(config.state.sqlite)})
    tls = config.api.tls
    if tls is not None:
        tls = tls.model_copy(
            update={"cert_file": resolve(tls.cert_file), "key_file": resolve(tls.key_file)}
        )
    notify = [
        n.model_copy(update={"token_file": resolve(n.token_file)}) if n.token_file else n
        for n in config.notify
    ]
    services = {
        name: service.model_copy(
            update={"routers": [r.resolve_paths(resolve) for r in service.routers]}
        )
        for name, service in config.services.items()
    }
    return config.model_copy(
        update={
            "state": state,
            "api": config.api.model_copy(update={"tls": tls}),
            "notify": notify,
            "services": services,
        }
    )


def parse_config(data: object, *, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate already-parsed YAML/JSON data; raise :class:`ConfigError` listing every error.

    With ``base`` (the config's directory), files the daemon reads at run time (a webhook's
    token file) are read once here too, so one that cannot work is a config error now, not a
    delivery that fails forever."""
    if data is None:
        raise ConfigError([f"{source}: the config is empty (it needs at least services:)"])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys, not {_kind(data)}"])
    errors: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data, strict=True)
    except ValidationError as exc:
        errors.extend(_format(e) for e in exc.errors(include_url=False, include_input=True))

    # Pass 2 on whatever validated, down to single routers, stages, checks and webhooks, so a
    # shape error in one place never hides a rule across fields or services elsewhere.
    if config is not None:
        api = _ApiParts.of(config.api)
        notify = list(enumerate(config.notify))
        services = {name: _Parts.of(spec) for name, spec in config.services.items()}
    else:
        raw_api = data.get("api", {})
        valid_api = _valid(_API, raw_api)
        api = _ApiParts.of(valid_api) if valid_api is not None else _ApiParts.salvage(raw_api)
        notify = _valid_items(_NOTIFY, data.get("notify"))
        raw_services = data.get("services")
        services = {}
        if isinstance(raw_services, dict):
            for name, raw in raw_services.items():
                if isinstance(name, str):
                    spec = _valid(_SERVICE, raw)
                    services[name] = _Parts.of(spec) if spec is not None else _Parts.salvage(raw)

    errors.extend(_api_errors(api))
    errors.extend(_notify_errors(notify, base))
    for name, parts in services.items():
        errors.extend(_service_errors(name, parts))
    errors.extend(_claim_errors(services))

    if errors:
        raise ConfigError(errors)
    assert config is not None  # no pass-1 error means it validated
    return config


_T = TypeVar("_T")
_API = TypeAdapter(ApiSpec)
_LISTEN: TypeAdapter[str] = TypeAdapter(Listen)
_TOKEN = TypeAdapter(TokenSpec)
_NOTIFY = TypeAdapter(NotifySpec)
_SERVICE = TypeAdapter(ServiceSpec)
_ROUTER: TypeAdapter[RouterSpec] = TypeAdapter(RouterSpec)
_STAGE = TypeAdapter(StageSpec)
_CHECK: TypeAdapter[CheckSpec] = TypeAdapter(CheckSpec)


def _valid(adapter: TypeAdapter[_T], raw: Any) -> _T | None:
    """``raw`` validated, or ``None`` when it does not pass pass 1 (which reported why)."""
    try:
        return adapter.validate_python(raw, strict=True)
    except ValidationError:
        return None


def _valid_items(adapter: TypeAdapter[_T], raw: Any) -> list[tuple[int, _T]]:
    """The items of the list ``raw`` that pass pass 1 on their own, with their indexes."""
    if not isinstance(raw, list):
        return []
    items = ((i, _valid(adapter, item)) for i, item in enumerate(raw))
    return [(i, item) for i, item in items if item is not None]


@dataclass(frozen=True, kw_only=True)
class _ApiParts:
    """The parts of ``api`` that passed pass 1, as :class:`_Parts` for a service."""

    listen: str | None
    tokens: list[tuple[int, TokenSpec]]
    #: tokens were written (valid or not): the loopback rule is for a config without any
    tokens_given: bool

    @classmethod
    def of(cls, api: ApiSpec) -> _ApiParts:
        return cls(
            listen=api.listen, tokens=list(enumerate(api.tokens)), tokens_given=bool(api.tokens)
        )

    @classmethod
    def salvage(cls, raw: Any) -> _ApiParts:
        if not isinstance(raw, Mapping):
            return cls(listen=None, tokens=[], tokens_given=False)
        tokens = raw.get("tokens")
        return cls(
            listen=_valid(_LISTEN, raw.get("listen", DEFAULT_LISTEN)),
            tokens=_valid_items(_TOKEN, tokens),
            tokens_given=tokens is not None and tokens != [],
        )


@dataclass(frozen=True, kw_only=True)
class _Parts:
    """A service's routers, stages and checks that passed pass 1, each with its index in the
    config: the rules across fields and services run on these even when a sibling did not."""

    routers: list[tuple[int, RouterSpecBase]]
    stages: list[tuple[int, StageSpec]]
    checks: list[tuple[int, CheckSpecBase]]
    #: the index of the last stage in the config (-1: none); its weight must be 100
    last_stage: int

    @classmethod
    def of(cls, service: ServiceSpec) -> _Parts:
        return cls(
            routers=list(enumerate(service.routers)),
            stages=list(enumerate(service.stages)),
            checks=list(enumerate(service.checks)),
            last_stage=len(service.stages) - 1,
        )

    @classmethod
    def salvage(cls, raw: Any) -> _Parts:
        """The valid parts of a service that failed pass 1."""
        if not isinstance(raw, Mapping):
            return cls(routers=[], stages=[], checks=[], last_stage=-1)
        stages = raw.get("stages")
        return cls(
            routers=_valid_items(_ROUTER, raw.get("routers")),
            stages=_valid_items(_STAGE, stages),
            checks=_valid_items(_CHECK, raw.get("checks")),
            last_stage=len(stages) - 1 if isinstance(stages, list) else -1,
        )


# --- pass 2: rules across fields -----------------------------------------------------------


def _seconds(value: float) -> str:
    if value < 1 and value != 0:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def _api_errors(api: _ApiParts) -> Iterable[str]:
    host = None if api.listen is None else _split_listen(api.listen)[0]
    if not api.tokens_given and host is not None and not _is_loopback(host):
        yield (
            "api.listen: with no api.tokens the daemon listens only on a loopback address "
            f"(127.0.0.1, [::1], localhost); add tokens to listen on {host}"
        )
    seen: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for i, token in api.tokens:
        if token.name in seen:
            yield (
                f"api.tokens[{i}].name: duplicate token name {token.name!r} "
                f"(also api.tokens[{seen[token.name]}])"
            )
        if token.sha256 in hashes:  # one token, two names: which one acted would be a guess
            yield (
                f"api.tokens[{i}].sha256: the same token as api.tokens[{hashes[token.sha256]}]; "
                "give each name its own token"
            )
        seen.setdefault(token.name, i)
        hashes.setdefault(token.sha256, i)


def _notify_errors(webhooks: list[tuple[int, NotifySpec]], base: Path | None) -> Iterable[str]:
    """Webhook settings that could never deliver. Messages name places, never the URL (its
    path or user:password may be a secret) nor a token."""
    cursors: dict[tuple[str, str], int] = {}
    for i, hook in webhooks:
        place = f"notify[{i}]"
        if hook.token_file is not None and hook.token_env is not None:
            yield f"{place}: give token_file or token_env, not both"
        parts = urlsplit(hook.url)
        if (hook.token_file or hook.token_env) and (parts.username or parts.password):
            # aiohttp turns URL credentials into its own Authorization header: with the
            # token's as well every POST would be refused before it is sent
            yield (
                f"{place}.url: carries user:password credentials and a token is given; "
                "authenticate with one of them"
            )
        first = cursors.setdefault((hook.format, hook.url), i)
        if first != i:  # one delivery cursor: two lanes would move it under each other
            yield (
                f"{place}.url: the same url and format as notify[{first}]; "
                "list the events of both in one webhook's events:"
            )
        seen: dict[str, int] = {}
        for k, kind in enumerate(hook.events):
            if kind in seen:
                yield f"{place}.events[{k}]: {kind!r} is listed twice (also events[{seen[kind]}])"
            seen.setdefault(kind, k)
        if base is not None:
            yield from _token_errors(place, hook, base)


def _token_errors(place: str, hook: NotifySpec, base: Path) -> Iterable[str]:
    """A token the daemon reads at each delivery cycle, read once now."""
    if hook.token_file is not None:
        path = _resolved(hook.token_file, base)
        try:
            token = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            yield f"{place}.token_file: cannot read {path}: {exc.strerror or type(exc).__name__}"
        except UnicodeDecodeError:
            yield f"{place}.token_file: {path} is not UTF-8 text"
        else:
            if not token.strip():
                yield f"{place}.token_file: {path} is empty"
    elif hook.token_env is not None and not os.environ.get(hook.token_env, "").strip():
        yield f"{place}.token_env: ${hook.token_env} is not set or empty"


def _duplicates(place: str, kind: str, names: list[tuple[int, str]]) -> Iterable[str]:
    seen: dict[str, int] = {}
    for i, name in names:
        if name in seen:
            yield (
                f"{place}[{i}].name: duplicate {kind} name {name!r} "
                f"(also {place.rsplit('.', 1)[-1]}[{seen[name]}])"
            )
        seen.setdefault(name, i)


def _service_errors(name: str, service: _Parts) -> Iterable[str]:
    place = f"services.{shown_key(name)}"
    yield from _duplicates(f"{place}.routers", "router", [(i, r.name) for i, r in service.routers])
    yield from _duplicates(f"{place}.checks", "check", [(i, c.name) for i, c in service.checks])

    previous: tuple[int, StageSpec] | None = None
    for i, stage in service.stages:
        # compared with the stage before it only when that one is valid: an invalid one in
        # between has its own error, and a comparison across it would name the wrong stage
        if previous is not None and previous[0] == i - 1 and stage.weight <= previous[1].weight:
            yield (
                f"{place}.stages[{i}].weight: must be greater than the previous stage's "
                f"{previous[1].weight}"
            )
        if stage.approval_timeout is not None and not stage.approval:
            yield f"{place}.stages[{i}].approval_timeout: only meaningful with approval: true"
        if i == service.last_stage and stage.weight != 100:
            yield f"{place}.stages[{i}].weight: the last stage must be 100"
        previous = (i, stage)

    longest = _longest_ttl(r for _, r in service.routers)
    if longest is not None:
        ttl, router = longest
        for i, stage in service.stages:
            if stage.hold < ttl and not stage.allow_hold_below_ttl:
                yield (
                    f"{place}.stages[{i}].hold: {_seconds(stage.hold)} is shorter than the TTL "
                    f"{_seconds(ttl)} of DNS router {router!r} "
                    "(set allow_hold_below_ttl: true to allow)"
                )

    for i, check in service.checks:
        values = {k: k for k in (*CHECK_PLACEHOLDERS, *check.extra_placeholders)}
        for field, template in check.template_fields().items():
            try:
                render(template, values)
            except ValueError as exc:
                yield f"{place}.checks[{i}].{field}: {exc}"


def _claim_errors(services: Mapping[str, _Parts]) -> Iterable[str]:
    """Two routers (of two services, or twice in one) may not drive the same thing
    (PRODUCT.md: an HAProxy backend server or a DNS record); one error per pair of places."""
    owner: dict[str, str] = {}
    shared: dict[tuple[str, str], list[str]] = {}
    for name, service in services.items():
        for i, router in service.routers:
            here = f"services.{shown_key(name)}.routers[{i}]"
            try:
                claims = router.claims()
            except NotImplementedError:
                continue
            for key in sorted(claims):
                first = owner.setdefault(key, here)
                if first != here:
                    shared.setdefault((here, first), []).append(key)
    for (here, first), keys in shared.items():
        listed = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        yield (
            f"{here}: shares {listed} with {first}; "
            "two routers may not drive the same backend server or DNS record"
        )


# --- pydantic errors -> "<place>: <message>" ------------------------------------------------


def _kind(value: Any) -> str:
    """The YAML kind of a value, never the value itself (it may be a secret)."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _is_tag(loc: tuple[int | str, ...], i: int) -> bool:
    """Is ``loc[i]`` the tag pydantic puts after ``routers[n]`` / ``checks[n]``?"""
    return (
        i >= 2
        and isinstance(loc[i - 1], int)
        and isinstance(loc[i - 2], str)
        and loc[i - 2] in _UNIONS
        and loc[i] in _UNIONS[str(loc[i - 2])][1]
    )


def _place(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = shown_key(part)
            out += f".{part}" if out else part
    return out


def shown_key(part: str) -> str:
    """A mapping key as a place shows it: a pasted value is cut short, and a key with line
    breaks or other unprintable characters is quoted so an error stays one line."""
    if len(part) > 40:  # a key that is really a pasted value: do not echo all of it
        part = part[:20] + "…"
    return part if part.isprintable() else repr(part)


def _format(error: ErrorDetails) -> str:
    raw_loc = tuple(error["loc"])
    loc = [p for i, p in enumerate(raw_loc) if not _is_tag(raw_loc, i) and p != "[key]"]
    kind = error["type"]
    ctx = error.get("ctx", {})
    value = error.get("input")

    if kind in ("union_tag_invalid", "union_tag_not_found"):
        what, registry = _UNIONS.get(_list_name(loc), ("item", {}))
        known = ", ".join(registry) or "none"
        if kind == "union_tag_not_found" and not isinstance(value, dict):
            return f"{_place(loc)}: must be a mapping with a type: key, not {_kind(value)}"
        tag = value.get("type") if isinstance(value, dict) else None
        if tag is None:
            return f"{_place([*loc, 'type'])}: required (known: {known})"
        if not isinstance(tag, str):
            return f"{_place([*loc, 'type'])}: must be a string (known: {known})"
        return f"{_place([*loc, 'type'])}: unknown {what} type {tag[:40]!r} (known: {known})"

    place = _place(loc) or "(top level)"
    if kind == "extra_forbidden":
        message = "unknown key"
        allowed = _keys_at(raw_loc[:-1])
        if allowed and isinstance(raw_loc[-1], str):
            close = difflib.get_close_matches(raw_loc[-1], allowed, n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
        return f"{place}: {message}"
    return f"{place}: {_message(kind, ctx, value, error['msg'])}"


def _list_name(loc: list[int | str]) -> str:
    return str(loc[-2]) if len(loc) >= 2 and isinstance(loc[-1], int) else ""


def _message(kind: str, ctx: Mapping[str, Any], value: Any, fallback: str) -> str:
    simple = {
        "missing": "required",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "float_type": "must be a number",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
    }
    if kind in simple:
        message = simple[kind]
        return message if kind == "missing" else f"{message}, not {_kind(value)}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", fallback))
    if kind == "literal_error":
        expected = str(ctx.get("expected", "?"))
        if " or " not in expected:
            return f"must be {expected}"
        return f"must be one of {expected}"
    if kind in ("too_short", "string_too_short"):
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        bound = next(iter(ctx.values()), "?")
        return f"must be {op} {bound}"
    return fallback[:1].lower() + fallback[1:]


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys a mapping at ``loc`` (pydantic's raw loc, tags included) may have."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        origin = get_origin(current)
        if origin in (Union, types.UnionType):
            members = [m for m in map(_unwrap, get_args(current)) if m is not type(None)]
            match = [m for m in members if _is_model(m) and _literal_type(m) == part]
            if match:
                current = match[0]
                continue
            if len(members) != 1:
                return []
            current = members[0]
            origin = get_origin(current)
        if _is_model(current):
            if part not in current.model_fields and _literal_type(current) == part:
                continue  # the union tag pydantic puts after routers[n] / checks[n]
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif origin is list:
            current = get_args(current)[0]
        elif origin is dict:
            current = get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if get_origin(current) in (Union, types.UnionType):
        members = [m for m in get_args(current) if m is not type(None)]
        current = _unwrap(members[0]) if len(members) == 1 else None
    return list(current.model_fields) if _is_model(current) else []


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _literal_type(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    if field is None:
        return None
    args = get_args(field.annotation)
    return args[0] if len(args) == 1 else None
