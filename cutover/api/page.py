"""The on-call status page (PRODUCT.md, ``GET /``): one self-contained HTML document.

The page is plain HTML + a little JavaScript that polls the same JSON API everyone else uses,
so it shows nothing the API would not, and needs no build step. Its three source files in
``static/`` are put together once, when the app is assembled, into one document served at
``GET /``: one route, nothing read from disk per request, no path from a request ever reaching
the disk, and no asset routes beside the API. The page itself is open; with tokens configured
its ``/v1`` calls carry the viewer token it asks for.

The Content-Security-Policy allows exactly this script and this style (by their sha256, CSP
Level 2 hash sources) and API calls to this origin, nothing else: the data the page draws
comes from config names and error texts, and the script puts it into the DOM as text only.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources

from aiohttp import web

__all__ = ["add_routes", "render_page"]

_CSS_SLOT = "<!-- status.css -->"
_JS_SLOT = "<!-- status.js -->"


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def render_page() -> tuple[bytes, dict[str, str]]:
    """The page's body and headers, from the files in ``cutover/api/static``."""
    static = resources.files("cutover.api") / "static"
    html, css, js = (
        (static / n).read_text("utf-8") for n in ("status.html", "status.css", "status.js")
    )
    # An end tag inside would close the element early (HTML §13.1.2.6).
    if "</style" in css.lower() or "</script" in js.lower():
        raise ValueError("status.css / status.js must not contain </style or </script")
    body = html.replace(_CSS_SLOT, f"<style>{css}</style>").replace(
        _JS_SLOT, f"<script>{js}</script>"
    )
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # a new daemon version must not run an old cached script against its API
        "Cache-Control": "no-cache",
    }
    return body.encode("utf-8"), headers


def add_routes(app: web.Application) -> None:
    """Register ``GET /`` (and so ``HEAD /``) on ``app``."""
    body, headers = render_page()

    async def status_page(_: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app.router.add_get("/", status_page)
