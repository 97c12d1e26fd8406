"""The ``cutover`` command line.

Exit codes (PRODUCT.md): 0 success / completed; 1 error talking to the daemon or refused
request; 2 bad config or usage; 3 rolled back; 4 failed (rollback not verified); 5 --timeout.
Client commands read CUTOVER_URL (default http://127.0.0.1:8480; https:// when the daemon
serves TLS), CUTOVER_TOKEN (a bearer token from the config's api.tokens) and CUTOVER_CA (a CA
file to verify the daemon's certificate with, instead of the system's CAs).
No traceback reaches the user: every error is one clear line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from cutover import __version__
from cutover.api.models import Cutover, Event, Service, ServiceList
from cutover.api.models import History as CutoverHistory
from cutover.config import TOKEN_NAME, Config, TokenSpec, load_config
from cutover.core.model import other_color
from cutover.errors import ConfigError, CutoverError
from cutover.observability.logging import Redactor
from cutover.resource_pool import ResourcePool
from cutover.routers.base import AddressShare
from cutover.specs import parse_duration
from cutover.watch import follow, watch_services

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ROLLED_BACK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
TERMINAL_EXIT = {
    "completed": EXIT_OK,
    "rolled_back": EXIT_ROLLED_BACK,
    "failed": EXIT_FAILED,
    "refused": EXIT_ERROR,  # a start refused by preflight, kept in history
}
DEFAULT_URL = "http://127.0.0.1:8480"
REQUEST_TIMEOUT = 30.0


_Answer = TypeVar("_Answer", bound=BaseModel)


class ClientError(Exception):
    """A request to the daemon failed; the message is for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"cutover: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _token_name(text: str) -> str:
    if not TOKEN_NAME.match(text):
        raise argparse.ArgumentTypeError(
            "1-64 letters, digits and @._+-, starting with a letter or digit"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cutover", description="Staged blue/green cutovers with automatic rollback.")
    p.add_argument("--version", action="version", version=f"cutover {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("daemon", help="run the daemon (API + engine) in the foreground")
    d.add_argument("-c", "--config", required=True)
    d.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    d.add_argument("--log-format", default="json", choices=["json", "console"])
    # tests only (the crash harness): seconds between persisting a transition and acting on it
    d.add_argument("--test-act-delay", type=float, default=0.0, help=argparse.SUPPRESS)

    v = sub.add_parser("validate", help="check a config; exit 0, or 2 with every error")
    v.add_argument("-c", "--config", required=True)

    pl = sub.add_parser("plan", help="dry run: each stage and what each router would be set to")
    pl.add_argument("-c", "--config", required=True)
    pl.add_argument("service")
    pl.add_argument(
        "--from",
        dest="from_color",
        choices=["blue", "green"],
        help="the live color (default: ask the daemon, else the config's live)",
    )

    s = sub.add_parser("start", help="preflight, then a cutover from the live color")
    s.add_argument("service")
    s.add_argument("--wait", action="store_true", help="follow the cutover to its end")
    s.add_argument("--timeout", type=_duration, help="with --wait: give up after this (exit 5)")

    st = sub.add_parser("status", help="state, stage, routers and checks")
    st.add_argument("service", nargs="?")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", action="store_true", help="redraw every second until it ends")

    for name, what in (
        ("pause", "pause the running cutover"),
        ("resume", "resume a paused cutover"),
        ("promote", "pass the current stage's hold or approval gate, or end the bake"),
        ("abort", "roll back at once"),
    ):
        a = sub.add_parser(name, help=what)
        a.add_argument("service")
        if name == "promote":
            a.add_argument(
                "--force",
                action="store_true",
                help="promote although checks are not passing (the event says forced and who)",
            )
        if name == "resume":
            a.add_argument(
                "--reapply",
                action="store_true",
                help="after a drift pause: write the current stage to every router again",
            )

    u = sub.add_parser("undo", help="within undo_window: all traffic back at once")
    u.add_argument("service")

    h = sub.add_parser("history", help="past cutovers and their event timelines")
    h.add_argument("service")
    h.add_argument("--limit", type=int, default=10)
    h.add_argument("--json", action="store_true")

    t = sub.add_parser("token", help="bearer tokens for the API")
    tsub = t.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    tn = tsub.add_parser(
        "new", help="print a fresh token once and its api.tokens config line; writes no file"
    )
    tn.add_argument("--name", required=True, type=_token_name, help="the actor it acts as")
    tn.add_argument("--role", required=True, choices=["viewer", "operator"])
    return p


# --- HTTP client ---------------------------------------------------------------------------


class Client:
    """The daemon's API as the CLI sees it: every failure becomes one clear line."""

    def __init__(self, *, url: str, token: str | None, ca_file: str | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"CUTOVER_URL must be an http:// or https:// URL, not {url!r}")
        self.url = url.rstrip("/")
        self.has_token = bool(token)
        self.headers = {"X-Cutover-Actor": _whoami()}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.ssl: ssl.SSLContext | bool = True  # verify against the system's CAs
        if ca_file:
            try:
                self.ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or "not a PEM CA certificate file"
                raise ClientError(f"CUTOVER_CA: cannot load {ca_file}: {reason}") from None

    @classmethod
    def from_env(cls) -> Client:
        return cls(
            url=os.environ.get("CUTOVER_URL", DEFAULT_URL),
            token=os.environ.get("CUTOVER_TOKEN"),
            ca_file=os.environ.get("CUTOVER_CA"),
        )

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, headers=self.headers) as session,
                session.request(method, self.url + path, json=body, ssl=self.ssl) as resp,
            ):
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status >= 400:
                    raise ClientError(self._refusal(resp.status, resp.reason, body))
                return body
        except aiohttp.ClientConnectorCertificateError as exc:
            detail = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
            raise ClientError(
                f"cannot trust the daemon at {self.url}: TLS certificate verification failed "
                f"({detail}); set CUTOVER_CA to the CA file that signed its certificate"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise ClientError(
                f"TLS handshake with the daemon at {self.url} failed ({exc.os_error}); "
                "does it serve TLS? (CUTOVER_URL http:// or https://)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            reason = (
                "connection refused"
                if isinstance(exc.os_error, ConnectionRefusedError)
                else exc.os_error.strerror or str(exc.os_error)
            )
            raise ClientError(
                f"cannot reach the daemon at {self.url}: {reason}; "
                "is `cutover daemon` running there? (CUTOVER_URL)"
            ) from None
        except aiohttp.ServerDisconnectedError:
            raise ClientError(
                f"the daemon at {self.url} closed the connection without an answer; if it "
                "serves TLS, CUTOVER_URL must start with https://"
            ) from None
        except TimeoutError:
            raise ClientError(
                f"no answer from the daemon at {self.url} within {REQUEST_TIMEOUT:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise ClientError(f"request to {self.url}{path} failed: {exc!r}") from None

    async def read(
        self, model: type[_Answer], method: str, path: str, body: dict[str, Any] | None = None
    ) -> _Answer:
        """The answer read through its API model; one the model does not fit (a daemon of
        another version) is refused with what differs."""
        answer = await self.call(method, path, body)
        try:
            return model.model_validate(answer)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise ClientError(
                f"the daemon at {self.url} answered {method} {path} in a shape cutover "
                f"{__version__} does not read ({where}: {first['msg']}); is it another version?"
            ) from None

    def _refusal(self, status: int, reason: str | None, body: Any) -> str:
        """One line for a refused request; the API's message names the token, never shows it."""
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        message = "; ".join(
            line.strip() for line in str(err.get("message") or reason or "").splitlines()
        )
        if status == 401:
            if not self.has_token:
                return "not authorized: set CUTOVER_TOKEN to a token from the config"
            return (
                "not authorized: the daemon does not know the token in CUTOVER_TOKEN; "
                "set it to a token from the config"
            )
        if status == 403:
            return f"forbidden: {message}"
        if status == 409:
            return f"conflict: {message}"
        return f"{status} {err.get('code', 'error')}: {message or 'request refused'}"


def _whoami() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "cli"
    host = socket.gethostname().split(".")[0]
    return "".join(ch for ch in f"{user}@{host}" if ch.isalnum() or ch in "@._-")[:64] or "cli"


# --- rendering -----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{round(value, 1):g}%"


def render_cutover(c: Cutover) -> str:
    stages = c.stages
    idx = c.stage
    lines = [
        f"{c.service}: {c.kind} {c.id} {c.from_} -> {c.to}  state={c.state} phase={c.phase}",
        "stages: "
        + "  ".join(
            ("[" if i == idx else " ")
            + f"{s.weight}%/{s.hold:g}s{'+approval' if s.approval else ''}"
            + ("]" if i == idx else " ")
            for i, s in enumerate(stages)
        )
        + f"   hold {c.hold_elapsed:.0f}/{stages[idx].hold:g}s",
    ]
    if c.bake:
        baked = c.bake - c.bake_left
        now = " (baking: checks running, a breach rolls back)" if c.phase == "baking" else ""
        lines.append(f"  bake at 100% {c.to}: {baked:.0f}/{c.bake:g}s{now}")
    if c.ttl_wait_left:
        lines.append(
            f"  waiting out the old DNS TTL before stage 1: {c.ttl_wait_left:.0f}s of "
            f"{c.ttl_wait:g}s left"
        )
    for r in c.routers:
        extra = " DRIFT" if r.drift else ""
        extra += f" error: {r.error}" if r.error else ""
        detail = f" ({r.detail})" if r.detail else ""
        if r.clients_from:
            moved = time.strftime("%H:%M:%S", time.localtime(r.clients_from))
            detail += f" DNS clients from {moved} at the earliest (TTL {r.ttl:g}s)"
        lines.append(
            f"  router {r.name} [{r.type}]: desired {r.desired}% observed "
            f"{_pct(r.observed)}{detail}{extra}"
        )
    for ch in c.checks:
        value = "" if ch.value is None else f" value={ch.value:g}"
        dry = " (dry run)" if ch.dry_run else ""
        lines.append(
            f"  check {ch.name}: {ch.status or 'not measured yet'}{value}"
            f" failures={ch.failures_in_window}/{ch.failure_limit}{dry}"
            + (f"  {ch.detail}" if ch.detail else "")
        )
    if c.reason:
        lines.append(f"  reason: {c.reason}")
    if c.store_error:  # nothing moves toward the new color until it is written
        lines.append(f"  store_error: {c.store_error} (latest transition not written yet)")
    return "\n".join(lines)


def render_events(events: list[Event]) -> str:
    return "\n".join(
        f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.at))}  {e.kind:<17} {e.message}"
        for e in events
    )


# --- commands --------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    n = len(config.services)
    print(f"{args.config}: ok ({n} service{'s' if n != 1 else ''})")
    for name, spec in config.services.items():
        if spec.bake:
            print(f"  {name}: {_bake_line(spec.bake)}")
    return EXIT_OK


def _bake_line(bake: float) -> str:
    return (
        f"bake {bake:g}s after the last stage: at 100% with every check running, "
        "a breach rolls back to the old color"
    )


async def _live_color(client: Client, service: str, config: Config) -> tuple[str, str]:
    try:
        answer = await client.read(Service, "GET", f"/v1/services/{service}")
        return answer.live, "from the daemon"
    except ClientError:
        return config.service(service).live, "from the config (daemon not reachable)"


async def cmd_plan(args: argparse.Namespace, client: Client) -> int:
    config = load_config(args.config)
    spec = config.service(args.service)
    if args.from_color:
        live, source = args.from_color, "from --from"
    else:
        live, source = await _live_color(client, args.service, config)
    new = other_color(live)
    plan = spec.plan()
    print(f"plan for {args.service}: {live} -> {new} (live {source}); changes nothing")
    # a DNS router's records follow from the config alone; a load balancer's weights depend
    # on its own server configuration, which only a read shows
    dns = {r.name for r in spec.routers if r.ttl is not None}
    # no log lines here to mask a loaded secret in: the sink only keeps them
    async with ResourcePool(secrets=Redactor()) as resources:
        routers = {r.name: r.build(new=new, resources=resources) for r in spec.routers}
        readable = {name: router for name, router in routers.items() if name in dns}
        for name, router in routers.items():
            try:  # a read only
                reading = await router.observe()
                readable[name] = router
                print(f"router {name} now: {_pct(reading.share)} {new} ({reading.detail})")
            except CutoverError as exc:
                shown = "" if name in dns else "; its settings are not shown"
                print(f"router {name}: cannot read it ({exc}){shown}")
            finally:
                await router.aclose()
    for i, stage in enumerate(plan.stages):
        gate = ", then waits for promote" if stage.approval else ""
        print(f"stage {i + 1}: {stage.weight}% {new}, hold {stage.hold:g}s{gate}")
        for name, router in readable.items():
            state = ", ".join(f"{k}={v}" for k, v in router.expected(stage.weight).items())
            if isinstance(router, AddressShare):
                state += f" (address share {_pct(router.address_share(stage.weight))})"
            print(f"  {name}: {state}")
    if plan.bake:
        print(f"then {_bake_line(plan.bake)}; then completed")
    for r in spec.routers:
        if r.ttl is not None:
            print(
                f"DNS router {r.name}: each change reaches clients {r.ttl}s (its TTL) after it is "
                "written at the earliest, a rollback included; a longer published TTL is first "
                "lowered and waited out before stage 1"
            )
    print("on rollback, every router at once to 0%:")
    for name, router in readable.items():
        state = ", ".join(f"{k}={v}" for k, v in router.expected(0, evacuate=True).items())
        print(f"  {name}: {state}")
    for check in plan.checks:
        print(
            f"check {check.name}: every {check.interval:g}s, rollback at {check.failure_limit} "
            f"fails in {check.window}, initial delay {check.initial_delay:g}s"
            + (" (dry run)" if check.dry_run else "")
        )
    return EXIT_OK


def _json(answer: BaseModel) -> str:
    """The answer as the daemon sent it (the fields it held), indented for a person."""
    return answer.model_dump_json(indent=2, by_alias=True, exclude_unset=True)


async def _current(client: Client, service: str) -> Cutover:
    answer = await client.read(Service, "GET", f"/v1/services/{service}")
    if answer.cutover is None:
        raise ClientError(f"service {service} has had no cutover yet (live: {answer.live})")
    return answer.cutover


async def _follow(client: Client, cutover_id: str, limit: float | None) -> int:
    """Redraw the cutover live (plain event lines when not on a terminal) until it ends or
    ``limit`` seconds pass; the exit code says how it ended."""
    c = await follow(lambda: client.read(Cutover, "GET", f"/v1/cutovers/{cutover_id}"), limit=limit)
    if c.state in TERMINAL_EXIT:
        return TERMINAL_EXIT[c.state]
    print(f"cutover: --timeout reached; {cutover_id} is still {c.state}", file=sys.stderr)
    return EXIT_TIMEOUT


async def cmd_start(args: argparse.Namespace, client: Client) -> int:
    c = await client.read(Cutover, "POST", f"/v1/services/{args.service}/cutovers")
    print(f"started {c.id}: {c.service} {c.from_} -> {c.to}", flush=True)
    if not args.wait:
        return EXIT_OK
    return await _follow(client, c.id, args.timeout)


async def cmd_status(args: argparse.Namespace, client: Client) -> int:
    if args.watch and not args.json:
        if args.service:
            await _follow(client, (await _current(client, args.service)).id, None)
            return EXIT_OK
        await watch_services(lambda: client.read(ServiceList, "GET", "/v1/services"))
    while True:
        if args.service:
            c = await _current(client, args.service)
            out = _json(c) if args.json else render_cutover(c)
        else:
            services = await client.read(ServiceList, "GET", "/v1/services")
            if args.json:
                out = _json(services)
            else:
                out = "\n".join(
                    f"{s.name}: live {s.live}"
                    + (
                        f"; {s.cutover.id} {s.cutover.state} at "
                        f"{s.cutover.stages[s.cutover.stage].weight}%"
                        if s.cutover
                        else "; no cutover yet"
                    )
                    for s in services.services
                )
        if not args.watch:
            print(out)
            return EXIT_OK
        print("\x1b[2J\x1b[H" + out, flush=True)
        await asyncio.sleep(1.0)


async def cmd_action(args: argparse.Namespace, client: Client) -> int:
    c = await _current(client, args.service)
    # the flag that overrides the action's refusal (409 checks_not_passing / drift)
    flag = {"force": getattr(args, "force", False), "reapply": getattr(args, "reapply", False)}
    body = {name: True for name, given in flag.items() if given} or None
    after = await client.read(Cutover, "POST", f"/v1/cutovers/{c.id}/{args.command}", body)
    print(f"{args.command}: {after.id} is now {after.state} ({after.phase})")
    return EXIT_OK


async def cmd_undo(args: argparse.Namespace, client: Client) -> int:
    c = await client.read(Cutover, "POST", f"/v1/services/{args.service}/undo")
    # an undo is shown as the cutover it rolls back: ``from`` is the color traffic returns to
    print(f"undo {c.id} started: {c.service} back to {c.from_} (rolling back {c.from_} -> {c.to})")
    return EXIT_OK


async def cmd_history(args: argparse.Namespace, client: Client) -> int:
    history = await client.read(
        CutoverHistory, "GET", f"/v1/services/{args.service}/cutovers?limit={args.limit}"
    )
    if args.json:
        print(_json(history))
        return EXIT_OK
    for c in history.cutovers:
        print(render_cutover(c))
        print(render_events(c.events))
        print()
    if not history.cutovers:
        print(f"{args.service}: no cutovers yet")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    """``token new``: the token goes to the client only; the config keeps its hash."""
    token, spec = TokenSpec.generate(name=args.name, role=args.role)
    print(f"token for {spec.name} ({spec.role}), shown only now; the client's CUTOVER_TOKEN:")
    print(f"  {token}")
    print("add under api.tokens in the daemon's config, then reload the daemon (SIGHUP):")
    print(f"  {spec.config_line()}")
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    # the server side is imported only here: client commands start faster without it
    from cutover.daemon import run_daemon
    from cutover.observability.logging import configure_logging

    config = load_config(args.config)
    redactor = configure_logging(args.log_level, json=args.log_format == "json")
    asyncio.run(
        run_daemon(config, config_path=args.config, secrets=redactor, act_delay=args.test_act_delay)
    )
    return EXIT_OK


ASYNC_COMMANDS = {
    "start": cmd_start,
    "status": cmd_status,
    "pause": cmd_action,
    "resume": cmd_action,
    "promote": cmd_action,
    "abort": cmd_action,
    "undo": cmd_undo,
    "history": cmd_history,
    "plan": cmd_plan,
}
SYNC_COMMANDS = {"daemon": cmd_daemon, "validate": cmd_validate, "token": cmd_token}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in SYNC_COMMANDS:
            return SYNC_COMMANDS[args.command](args)
        client = Client.from_env()
        return asyncio.run(ASYNC_COMMANDS[args.command](args, client))
    except ConfigError as exc:
        print(f"cutover: {len(exc.errors)} config error(s):", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except CutoverError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
