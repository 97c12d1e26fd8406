"""Pieces the HTTP-based checks share: the client session kind, URL validation, how a
URL and a duration are shown in a measurement's detail, a short human reason for a request that
got no HTTP answer, how late the event loop was when a timeout fired, and reading an answer
within a size limit."""

from __future__ import annotations

import errno
import re
import socket

import aiohttp
from yarl import URL

from cutover.checks.http1 import ConnectError, Http1Error
from cutover.resources import Shared

__all__ = [
    "HTTP_SESSION",
    "AnswerTooLarge",
    "check_url",
    "late_by",
    "no_answer_reason",
    "read_capped",
    "shown_seconds",
    "shown_url",
]

#: A timeout that fired this much later than asked (and at least ``LATE_MIN`` seconds) says the
#: daemon's event loop was starved, not that the far side was slow.
LATE_FRACTION = 0.5
LATE_MIN = 0.5


def _new_session() -> aiohttp.ClientSession:
    """The checks' shared aiohttp session.

    A session per check costs a connector, its pools and TLS context each, which adds up over
    a daemon's thousands of checks (docs/performance.md). The shared session has no cookie
    jar (services must not see each other's cookies) and no connection limit: each check has
    at most one request in flight, and a limit would let slow services' requests make the
    others' wait for a connection and time out."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar()
    )


async def _close_session(session: aiohttp.ClientSession) -> None:
    await session.close()


#: The one aiohttp session of every HTTP-based check of a daemon.
HTTP_SESSION: Shared[aiohttp.ClientSession] = Shared(
    "HTTP client session", _new_session, _close_session
)


def late_by(started: float, timeout: float, now: float) -> float:
    """Seconds a ``timeout`` started at monotonic ``started`` fired late, when that is enough to
    blame the daemon's own event loop (0.0 otherwise)."""
    late = now - started - timeout
    return late if late >= max(LATE_MIN, LATE_FRACTION * timeout) else 0.0


class AnswerTooLarge(Exception):
    """An answer's body is larger than its reader's limit."""


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body, at most ``limit`` bytes. A larger one raises :class:`AnswerTooLarge`
    as soon as it shows (by its Content-Length, or while read), so a provider's huge answer
    costs neither memory nor the event loop's time parsing it."""
    if resp.content_length is not None and resp.content_length > limit:
        raise AnswerTooLarge(f"answer of {resp.content_length} bytes, over {limit}")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise AnswerTooLarge(f"answer over {limit} bytes")
    return bytes(body)


def check_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


def shown_url(url: str) -> str:
    """The URL as it may appear in details and logs: without user:password."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return url
    if parsed.user is None and parsed.password is None:
        return url
    return str(parsed.with_user(None))


def shown_seconds(value: float) -> str:
    return f"{value:g}s" if value >= 1 else f"{value * 1000:g}ms"


def no_answer_reason(exc: BaseException) -> str:
    """A short human reason for a request that got no HTTP answer."""
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectError)):
        return _connect_reason(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, Http1Error):  # its text is the reason
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _connect_reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return "host name does not resolve"
    code = error.errno
    if code is None:
        # asyncio (3.11) folds the errors of a name's several addresses into one OSError
        # without errno: "Multiple exceptions: [Errno 111] ..., [Errno 111] ..."
        codes = set(re.findall(r"\[Errno (\d+)\]", str(error)))
        code = int(codes.pop()) if len(codes) == 1 else None
    if code == errno.ECONNREFUSED:
        return "connection refused"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "host unreachable"
    return f"cannot connect ({error.strerror or error})"
