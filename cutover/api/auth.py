"""Bearer-token authorization of the ``/v1`` API (PRODUCT.md, HTTP API).

The config holds tokens only as sha256 hex. A presented token is hashed and compared with
*every* configured hash by :func:`hmac.compare_digest`, with no early exit, so neither the
content nor the position of a match leaks through timing. Roles: ``viewer`` may read (GET,
HEAD), ``operator`` may also act (POST). Answers follow RFC 6750 §3: 401 with
``WWW-Authenticate: Bearer`` for a missing or unknown token, 403 for a viewer's POST.

Only ``/v1/`` needs a token: the probes, ``/metrics``, ``/openapi.json`` and the status page
shell at ``/`` stay open (the page asks for a token and sends it with its own ``/v1`` calls).
With no tokens configured everything is open; the config then refuses a non-loopback listen
address. A token is never logged or echoed: refusals name the token by its configured name
only. Refusals are logged at most once a minute with a count (any client can cause them).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cutover.config import TokenSpec, token_sha256
from cutover.observability.logging import RateLimitedLog

__all__ = [
    "PRINCIPAL",
    "Principal",
    "TokenTable",
    "auth_middleware",
]

Role = Literal["viewer", "operator"]

_READ_METHODS = frozenset({"GET", "HEAD"})
# RFC 6750 §2.1: "Bearer" 1*SP b64token; the scheme name is case-insensitive (RFC 7235 §2.1)
_BEARER = re.compile(r"^bearer +([A-Za-z0-9._~+/-]+=*) *$", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who a request acts as: the configured token's name and role."""

    name: str
    role: Role


PRINCIPAL = web.RequestKey("principal", Principal)


class TokenTable:
    """The configured tokens, by sha256; empty means the API is open."""

    def __init__(self, tokens: Sequence[TokenSpec]) -> None:
        self.replace(tokens)

    def replace(self, tokens: Sequence[TokenSpec]) -> None:
        """Take a reloaded config's tokens (rotation): the next request is checked against
        them. One assignment, so a request sees either the old list or the new one."""
        self._entries = [(t.sha256, Principal(name=t.name, role=t.role)) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def lookup(self, token: str) -> Principal | None:
        """The principal whose hash matches, comparing against every entry in constant time."""
        presented = token_sha256(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found


def _protected(path: str) -> bool:
    # request.path is fully decoded, so an escaped "/v1%2F..." cannot slip past as open
    return path == "/v1" or path.startswith("/v1/")


def _refusal(status: int, code: str, message: str, *, challenge: str | None) -> web.Response:
    headers = {"WWW-Authenticate": challenge} if challenge else None
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def auth_middleware(table: TokenTable) -> Middleware:
    """The middleware that authorizes ``/v1`` requests against ``table``."""
    unknown_tokens = RateLimitedLog("refused an unknown bearer token")
    viewer_actions = RateLimitedLog("refused a viewer's action")

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not table.enabled or not _protected(request.path):
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is None:
            return _refusal(
                401,
                "unauthorized",
                "this needs a bearer token: Authorization: Bearer <token>",
                challenge='Bearer realm="cutover"',
            )
        match = _BEARER.match(header)
        principal = table.lookup(match.group(1)) if match else None
        if principal is None:
            unknown_tokens.note(path=request.path, remote=request.remote)
            return _refusal(
                401,
                "unauthorized",
                "the bearer token is not one of the configured api.tokens",
                challenge='Bearer realm="cutover", error="invalid_token"',
            )
        if request.method not in _READ_METHODS and principal.role != "operator":
            viewer_actions.note(path=request.path, principal=principal.name)
            return _refusal(
                403,
                "forbidden",
                f"token {principal.name!r} is a {principal.role}: this needs an operator token",
                challenge=None,
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    return authorize
