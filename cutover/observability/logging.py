"""structlog set-up: JSON lines on stderr, secrets redacted.

Every line of a runner carries ``service`` and ``cutover`` (bound by the engine). The standard
library's loggers (aiohttp, asyncio) go through the same processors, so their lines are JSON
and redacted too.

Redaction (:class:`Redactor`, the last processor before rendering, so it also sees formatted
tracebacks) works three ways, recursively through dicts and lists:

* a key that names a secret (token, secret, password, api_key, authorization, cookie) has its
  value replaced, wherever a caller put one by mistake;
* a credential with a recognizable shape in any string (``Bearer …``/``Basic …`` as in an
  ``Authorization`` header, RFC 6750 §2.1; the password of a ``scheme://user:pass@`` URL) is
  masked, so a bearer token is never logged even in an exception's text;
* a secret *value* added to it when it is loaded (a TSIG secret, an API key, a webhook token) is
  masked wherever it appears.

The values live in the :class:`Redactor` that :func:`configure_logging` installs and returns; the
daemon hands that redactor to adapters as their secret sink
(:class:`cutover.resources.SecretSink`), so nothing registers secrets through a global.

Events any client can cause at will (a refused token, a malformed request, an accept that ran
out of descriptors) go through a :class:`RateLimitedLog`: a line per interval with a count, so
a flood of them cannot fill the disk or hold the event loop writing lines.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["RateLimitedLog", "Redactor", "configure_logging"]

REDACTED = "[redacted]"
_SECRET_KEYS = re.compile(r"secret|passw|token|api_?key|authorization|cookie", re.IGNORECASE)
_CREDENTIAL_SHAPES = (
    # 8+ characters: a credential, not prose such as "a bearer token"
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/-]{8,}=*", re.IGNORECASE), rf"\1 {REDACTED}"),
    (re.compile(r"(://[^/\s:@]*:)[^/\s@]+@"), rf"\1{REDACTED}@"),
)


class Redactor:
    """The structlog processor that masks secrets by key, by shape and by known value."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, secret: str) -> None:
        if secret:
            self._values.add(secret)

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event):
            event[key] = self._clean(key, event[key])
        return event

    def _clean(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and _SECRET_KEYS.search(key) and value is not None:
            return REDACTED
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, dict):
            return {k: self._clean(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(None, v) for v in value]
        if isinstance(value, BaseException):
            return self._text(repr(value))
        return value

    def _text(self, text: str) -> str:
        for pattern, replacement in _CREDENTIAL_SHAPES:
            text = pattern.sub(replacement, text)
        # longest first, so a secret that contains another is masked whole
        for secret in sorted(self._values, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text


class RateLimitedLog:
    """An event (a warning by default) that is logged at most once per ``interval`` seconds.

    The first event of an interval is logged at once with its fields; the ones after it in the
    same interval are only counted, and one line with ``repeated`` (their count) and the last
    one's fields follows when the interval ends (a timer on the running loop, or the next
    event, whichever comes first)."""

    def __init__(
        self,
        event: str,
        *,
        interval: float = 60.0,
        level: str = "warning",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.interval = interval
        self.level = level
        self._clock = clock
        self._interval_end = float("-inf")
        self._repeated = 0
        self._last: dict[str, object] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, **fields: object) -> None:
        """One more event; logged now only if it is the first of its interval."""
        now = self._clock()
        if now >= self._interval_end:
            self.flush()
            self._interval_end = now + self.interval
            self._log(**fields)
            return
        self._repeated += 1
        self._last = fields
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: the next event flushes
                return
            self._timer = loop.call_later(self._interval_end - now, self.flush)

    def flush(self) -> None:
        """Log the count of the events not logged yet, if any."""
        self.close()
        if self._repeated:
            self._log(repeated=self._repeated, seconds=self.interval, **self._last)
            self._repeated = 0
            self._last = {}

    def _log(self, **fields: object) -> None:
        structlog.get_logger().log(
            logging.getLevelNamesMapping()[self.level.upper()], self.event, **fields
        )

    def close(self) -> None:
        """Stop the pending timer (at shutdown); a later event still logs."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so configuring again replaces it."""


def configure_logging(
    level: str = "info", *, json: bool = True, stream: TextIO | None = None
) -> Redactor:
    """Configure structlog and the stdlib root logger to write to ``stream`` (stderr).

    Returns the installed :class:`Redactor`: the secret sink of the daemon's resources."""
    out = sys.stderr if stream is None else stream
    redactor = Redactor()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redactor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = _StdlibHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return redactor
