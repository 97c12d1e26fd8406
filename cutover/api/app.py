"""The aiohttp application: routes, JSON errors, app state under typed ``web.AppKey``s.

Every error leaves as ``{"error": {"code", "message"}}`` with a fitting 4xx; an unexpected
exception is logged (at most once a minute, with a count) and answered 500 without a traceback.
Every answer says ``Server: cutover`` without versions, and under TLS carries HSTS; the
listener's own limits and refusals are in :mod:`cutover.api.listener`.
POSTs take no parameters, except ``promote`` ``{"force": true}`` and ``resume``
``{"reapply": true}`` (a non-boolean flag is 422):
a body larger than :data:`MAX_BODY` is 413; whatever its content type, another body than
nothing, ``{}`` or ``null`` is 400 (``bad_json`` when it does not parse, nested too deeply
included).
With ``api.tokens`` configured, ``/v1`` needs a bearer token (:mod:`cutover.api.auth`) and an
operator action is recorded with the token's name as its actor. Status answers are joined from
the encoded JSON :class:`~cutover.api.views.StatusViews` keeps per cutover; a GET's carries an
ETag, so a poller's ``If-None-Match`` gets 304 while nothing changed.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cutover.api.auth import PRINCIPAL, TokenTable, auth_middleware
from cutover.api.listener import security_headers
from cutover.api.openapi import openapi_spec
from cutover.api.page import add_routes as add_status_page
from cutover.api.views import LIST_STALE_MAX_AGE, Listing, StatusViews, history_json
from cutover.core.machine import Command
from cutover.core.model import Cutover
from cutover.engine.supervisor import Supervisor
from cutover.errors import CutoverError, RequestError
from cutover.observability.logging import RateLimitedLog
from cutover.observability.metrics import Metrics
from cutover.store.base import StateStore

__all__ = [
    "LISTING",
    "LIST_BUILDS",
    "MAX_BODY",
    "METRICS",
    "STORE",
    "SUPERVISOR",
    "TOKENS",
    "VIEWS",
    "accepts_gzip",
    "make_app",
]

SUPERVISOR = web.AppKey("supervisor", Supervisor)
STORE = web.AppKey("store", StateStore)
METRICS = web.AppKey("metrics", Metrics)
VIEWS = web.AppKey("views", StatusViews)
#: The bearer tokens checked, replaced by a config reload (token rotation).
TOKENS = web.AppKey("tokens", TokenTable)
#: One ``GET /v1/services`` build at a time: concurrent builds of a large list take turns with
#: the engine slice by slice and make its timers (a rollback's among them) late.
LISTING = web.AppKey("listing", asyncio.Lock)
LIST_BUILDS = web.AppKey("list_builds", set[asyncio.Task[Listing]])

_ACTOR = re.compile(r"^[A-Za-z0-9@._:/+-]{1,64}$")
_LIMIT = re.compile(r"[0-9]{1,3}")
_ACTIONS = ("pause", "resume", "promote", "abort")
#: The one body field an action takes: it goes ahead where the action is otherwise refused
#: (promote past checks not passing, resume over drift by writing the stage again).
_ACTION_FLAGS = {"promote": "force", "resume": "reapply"}
#: Largest request body read (aiohttp's ``client_max_size``); no endpoint takes parameters.
MAX_BODY = 64 * 1024
#: Longest run of list building on the event loop before it lets other tasks run, seconds.
_SLICE = 0.005


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _answer(
    request: web.Request,
    body: bytes,
    *,
    status: int = 200,
    etag: str = "",
    matches: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An encoded JSON answer. A GET's carries a strong ETag (``etag``, or one derived from its
    bytes) and ``no-cache``, so a poller can revalidate with ``If-None-Match`` and get 304
    without the body while nothing changed (RFC 9110 §8.8.3, §13.1.2: weak comparison, ``*``
    matches any; ``matches`` are further tags of the same content in another coding)."""
    headers = dict(headers or {})
    if request.method in ("GET", "HEAD"):
        etag = etag or hashlib.sha256(body).hexdigest()[:32]
        headers |= {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
        known = (etag, *matches, "*")
        if any(tag.value in known for tag in request.if_none_match or ()):
            return web.Response(status=304, headers=headers)
    return web.Response(
        body=body, status=status, content_type="application/json", charset="utf-8", headers=headers
    )


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (RFC 9110 §12.5.3: ``gzip``,
    ``x-gzip`` or ``*``, with a q-value above 0; an explicit ``gzip;q=0`` refuses it)."""
    allowed: dict[str, bool] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        allowed[coding.strip().lower()] = q > 0
    for coding in ("gzip", "x-gzip"):
        if coding in allowed:
            return allowed[coding]
    return allowed.get("*", False)


def errors_middleware() -> Middleware:
    """The middleware that turns every error into a JSON answer. Failures are logged at most
    once a minute with a count: a client can repeat a request that fails as often as it likes."""
    failed = RateLimitedLog("request failed", level="error")
    unexpected = RateLimitedLog("unexpected error", level="error")

    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except CutoverError as exc:
            if isinstance(exc, RequestError):
                return _error(exc.status, exc.code, str(exc))
            failed.note(path=request.path, error=str(exc))
            return _error(503, "unavailable", str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(exc)
        except Exception as exc:
            unexpected.note(path=request.path, error=repr(exc), exc_info=exc)
            return _error(500, "internal", "internal error; see the daemon's log")

    return answer_errors


def _http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx (no route, wrong method, body too large) as a JSON answer."""
    if exc.status == 413:  # raised by request.read() past client_max_size
        return _error(413, "body_too_large", f"the request body exceeds {MAX_BODY} bytes")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
    answer = _error(exc.status, code, exc.reason)
    if isinstance(exc, web.HTTPMethodNotAllowed):  # RFC 9110 §15.5.6: a 405 lists them
        answer.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    return answer


def _actor(request: web.Request) -> str:
    """Who acts, for the event timeline: the token's name when tokens are configured.

    ``X-Cutover-Actor`` (the CLI sends ``user@host``) cannot override a token's name; it only
    adds who used the token: ``release-bot (via alice@laptop)``. Without tokens it is the actor.
    """
    header = request.headers.get("X-Cutover-Actor")
    if header is not None and not _ACTOR.match(header):
        raise RequestError("X-Cutover-Actor: 1-64 characters of A-Z a-z 0-9 @._:/+-")
    if PRINCIPAL not in request:
        return header or "api"
    principal = request[PRINCIPAL]
    if header is None or header == principal.name:
        return principal.name
    return f"{principal.name} (via {header})"


async def _json_body(request: web.Request) -> object:
    """A POST's parsed JSON body; ``None`` when it has none. A body that does not arrive within
    ``api.header_timeout`` is 408: a trickling client must not hold a connection forever."""
    if not request.can_read_body:
        return None
    timeout = request.app[SUPERVISOR].config.api.header_timeout
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestError(
            f"the request body did not arrive within {timeout:g} s",
            code="body_timeout",
            status=408,
        ) from None
    except web.RequestPayloadError:  # a Content-Encoding it does not decode, a bad chunk
        raise RequestError(
            "the request body cannot be read (its Content-Encoding or framing)", code="bad_body"
        ) from None
    except ConnectionResetError:  # the client left: nobody reads the answer; nothing to log
        raise RequestError("the connection closed before the body arrived") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[… nested too deep
        raise RequestError("the request body must be JSON (or empty)", code="bad_json") from exc


async def _no_body(request: web.Request) -> None:
    """POSTs take no body; an empty object is fine, anything else is refused clearly."""
    if await _json_body(request) not in ({}, None):
        raise RequestError("this endpoint takes no parameters", code="unexpected_body")


async def _action_flag(request: web.Request, action: str) -> dict[str, bool]:
    """The action's flag from its body (``{"force": true}`` for promote, ``{"reapply": true}``
    for resume); no body, ``{}`` or ``null`` is no flag. Anything else is a 400 or 422."""
    body = await _json_body(request)
    if body in ({}, None):
        return {}
    flag = _ACTION_FLAGS.get(action)
    if flag is None:
        raise RequestError("this endpoint takes no parameters", code="unexpected_body")
    if not isinstance(body, dict) or body.keys() != {flag}:
        raise RequestError(
            f'{action} takes no body, {{}} or {{"{flag}": true}}', code="unexpected_body"
        )
    if not isinstance(body[flag], bool):
        raise RequestError(f"{flag} must be true or false", code="invalid_body", status=422)
    return {flag: body[flag]}


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if not request.app[SUPERVISOR].started:
        return _error(503, "not_ready", "the engine is not running yet")
    # not ready while the store cannot write: no cutover can move forward (PRODUCT.md)
    store_error = await request.app[STORE].check_writable()
    if store_error:
        return _error(503, "store_unwritable", f"the state store cannot write: {store_error}")
    return web.json_response({"status": "ready"})


async def metrics_text(request: web.Request) -> web.Response:
    return web.Response(
        body=await request.app[METRICS].scrape(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def _cutover_answer(request: web.Request, c: Cutover, *, status: int = 200) -> web.Response:
    """A cutover with its event timeline (after a POST: the list is built again)."""
    views = request.app[VIEWS]
    if request.method == "POST":
        views.writes += 1
    body = await views.cutover_with_events(c, request.app[STORE])
    return _answer(request, body, status=status)


async def list_services(request: web.Request) -> web.Response:
    """Every service with a brief of its cutover, from a list built at most every
    :data:`~cutover.api.views.LIST_MAX_AGE` seconds, never older than
    :data:`~cutover.api.views.LIST_STALE_MAX_AGE` and built at once after an API write; sent
    gzip-compressed to a client that accepts it (compressed once per list, off the loop)."""
    compressed = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    listing = await _listing(request, compressed=compressed)
    # one content in two codings: a tag each, and either one revalidates
    body, etag, other = listing.body, listing.etag, f"{listing.etag}-gzip"
    headers = {"Vary": "Accept-Encoding"}
    if compressed and listing.gzipped is not None:
        body, etag, other = listing.gzipped, other, etag
        headers["Content-Encoding"] = "gzip"
    return _answer(request, body, etag=etag, matches=(other,), headers=headers)


async def _listing(request: web.Request, *, compressed: bool) -> Listing:
    app = request.app
    views = app[VIEWS]
    now = app[SUPERVISOR].clock.monotonic()
    listing = views.listing(now)
    if listing is not None and (listing.gzipped is not None or not compressed):
        return listing
    last = views.listing(now, max_age=LIST_STALE_MAX_AGE)
    if last is None:
        return await _build_listing(app, compressed=compressed)
    # The last list is served while the next is built in the background (one build at a
    # time), so no request waits for a build however large the list is.
    if not app[LISTING].locked() and not app[LIST_BUILDS]:  # none running or about to
        task = asyncio.create_task(_build_listing(app, compressed=compressed))
        app[LIST_BUILDS].add(task)
        task.add_done_callback(app[LIST_BUILDS].discard)
    return last


async def _build_listing(app: web.Application, *, compressed: bool) -> Listing:
    sup = app[SUPERVISOR]
    views = app[VIEWS]
    async with app[LISTING]:  # one build at a time; who waited reuses it
        now = sup.clock.monotonic()
        listing = views.listing(now)
        if listing is None:
            services = []
            since = time.perf_counter()
            for name in list(sup.config.services):
                latest = await sup.latest(name)
                services.append((name, sup.live(name), views.brief(latest) if latest else None))
                # Encoding every changed cutover of a large list is the loop's for ms: let the
                # engine's steps (a rollback among them) run in between.
                if time.perf_counter() - since > _SLICE:
                    await asyncio.sleep(0)
                    since = time.perf_counter()
            listing = views.build_listing(services, now)
        if compressed and listing.gzipped is None:
            # zlib leaves the GIL while it compresses: the engine's steps go on meanwhile
            listing.gzipped = await asyncio.to_thread(gzip.compress, listing.body, 1, mtime=0)
    return listing


async def _stop_list_builds(app: web.Application) -> None:
    running: set[asyncio.Task[Listing]] = app[LIST_BUILDS]
    builds = list(running)
    for task in builds:
        task.cancel()
    await asyncio.gather(*builds, return_exceptions=True)


async def get_service(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    name = request.match_info["service"]
    latest = await sup.latest(name)
    views = request.app[VIEWS]
    cutover = None
    if latest is not None:
        cutover = await views.cutover_with_events(latest, request.app[STORE])
    return _answer(request, views.service(name, sup.live(name), cutover))


async def start_cutover(request: web.Request) -> web.Response:
    await _no_body(request)
    c = await request.app[SUPERVISOR].start_cutover(
        request.match_info["service"], actor=_actor(request)
    )
    return await _cutover_answer(request, c, status=201)


async def undo(request: web.Request) -> web.Response:
    await _no_body(request)
    c = await request.app[SUPERVISOR].undo(request.match_info["service"], actor=_actor(request))
    return await _cutover_answer(request, c, status=201)


async def service_history(request: web.Request) -> web.Response:
    name = request.match_info["service"]
    sup = request.app[SUPERVISOR]
    sup.config.service(name)
    raw = request.query.get("limit", "20")
    # [0-9] only: int() would also take " 5", "+5", "5_0" and other scripts' digits
    if not (_LIMIT.fullmatch(raw) and 1 <= int(raw) <= 500):
        raise RequestError("limit must be an integer 1..500")
    limit = int(raw)
    store = request.app[STORE]
    views = request.app[VIEWS]
    items = [
        await views.cutover_with_events(await sup.get(c.id), store)
        for c in await store.history(name, limit=limit)
    ]
    return _answer(request, history_json(name, items))


async def get_cutover(request: web.Request) -> web.Response:
    c = await request.app[SUPERVISOR].get(request.match_info["id"])
    return await _cutover_answer(request, c)


async def cutover_action(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in _ACTIONS:
        raise web.HTTPNotFound(reason=f"no action {action!r} (known: {', '.join(_ACTIONS)})")
    flag = await _action_flag(request, action)
    command = Command(
        action=action,  # type: ignore[arg-type]
        actor=_actor(request),
        force=flag.get("force", False),
        reapply=flag.get("reapply", False),
    )
    c = await request.app[SUPERVISOR].command(request.match_info["id"], command)
    return await _cutover_answer(request, c)


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(openapi_spec())


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(security_headers(secure=request.secure))


def make_app(*, supervisor: Supervisor, store: StateStore, metrics: Metrics) -> web.Application:
    tokens = TokenTable(supervisor.config.api.tokens)
    app = web.Application(
        middlewares=[errors_middleware(), auth_middleware(tokens)], client_max_size=MAX_BODY
    )
    app[SUPERVISOR] = supervisor
    app[TOKENS] = tokens
    app[STORE] = store
    app[METRICS] = metrics
    app[VIEWS] = StatusViews()
    app[LISTING] = asyncio.Lock()
    app[LIST_BUILDS] = set()
    app.on_cleanup.append(_stop_list_builds)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/openapi.json", openapi)
    # GET / (the status page shell, open like the probes) is registered here.
    app.router.add_get("/v1/services", list_services)
    app.router.add_get("/v1/services/{service}", get_service)
    app.router.add_post("/v1/services/{service}/cutovers", start_cutover)
    app.router.add_get("/v1/services/{service}/cutovers", service_history)
    app.router.add_post("/v1/services/{service}/undo", undo)
    app.router.add_get("/v1/cutovers/{id}", get_cutover)
    app.router.add_post("/v1/cutovers/{id}/{action}", cutover_action)
    add_status_page(app)
    return app
