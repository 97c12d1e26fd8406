"""Pieces the HTTP-based checks share: URL validation, how a URL and a duration are shown in a
measurement's detail, and a short human reason for a request that got no HTTP answer."""

from __future__ import annotations

import errno
import socket

import aiohttp
from yarl import URL

__all__ = ["check_url", "no_answer_reason", "shown_seconds", "shown_url"]


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
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return "host name does not resolve"
        code = exc.os_error.errno
        if code == errno.ECONNREFUSED:
            return "connection refused"
        if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "host unreachable"
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
