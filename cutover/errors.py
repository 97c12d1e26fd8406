"""The project's own exceptions.

Adapters translate third-party exceptions at their boundary (``raise ... from exc``) into
:class:`TransientError` (worth retrying: refused socket, timeout, 5xx) or
:class:`PermanentError` (retrying cannot help: no such server, bad key). Messages name the
router/server/backend involved and never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "ConfigError",
    "ConflictError",
    "CutoverError",
    "NotFoundError",
    "PermanentError",
    "PreflightError",
    "RequestError",
    "StaleRevisionError",
    "StoreError",
    "TransientError",
]


class CutoverError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(CutoverError):
    """A config that cannot be used; ``errors`` lists every problem with its place."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class RequestError(CutoverError):
    """A request the daemon refuses; carries an API error code and an HTTP status."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NotFoundError(RequestError):
    code = "not_found"
    status = 404


class ConflictError(RequestError):
    code = "conflict"
    status = 409


class PreflightError(RequestError):
    """Preflight refused a start; nothing was changed."""

    code = "preflight_failed"
    status = 422


class StoreError(CutoverError):
    """The state store could not read or write."""


class StaleRevisionError(StoreError):
    """Optimistic concurrency: the record changed since it was read."""


class AdapterError(CutoverError):
    """A router or provider could not do what was asked."""


class TransientError(AdapterError):
    """May succeed when tried again (connection refused, timeout, 5xx)."""


class PermanentError(AdapterError):
    """Will not succeed when tried again (no such server/backend, bad key, bad algorithm)."""
