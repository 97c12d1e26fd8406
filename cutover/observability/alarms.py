"""An alarm log line paced for a fault that repeats: one line per interval, with a count.

A full disk fails every write of every cutover: at a thousand cutovers that is hundreds of
identical lines a second, which bury the rest of the log and fill what is left of the disk. So a
fault that persists gets one ``alarm`` line when it starts, then at most one per ``every``
seconds saying how many times it happened since the last line, and one line when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["PacedAlarm"]


class PacedAlarm:
    """The log lines of one kind of fault. Not thread-safe: call it from one thread."""

    def __init__(
        self,
        *,
        message: str,
        cleared: str,
        every: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        log: Any = None,
    ) -> None:
        """``message`` is the alarm line's text and ``cleared`` the text of the line that says
        the fault is over; ``log`` is a structlog logger (default: the module's)."""
        self._message = message
        self._cleared = cleared
        self._every = every
        self._monotonic = monotonic
        self._log = log if log is not None else structlog.get_logger()
        self._since_line = 0  # faults since the last alarm line
        self._total = 0  # faults since the fault began
        self._last_line: float | None = None
        #: The latest fault's error text; "" while there is no fault.
        self.error = ""

    def fault(self, error: str) -> None:
        """One more occurrence of the fault; logs an alarm if none was logged for ``every`` s."""
        self.error = error
        self._since_line += 1
        self._total += 1
        now = self._monotonic()
        if self._last_line is not None and now - self._last_line < self._every:
            return
        self._log.error(
            self._message, error=error, count=self._since_line, since_start=self._total, alarm=True
        )
        self._last_line = now
        self._since_line = 0

    def clear(self) -> None:
        """The fault is over (a no-op when there is none): one line with the count."""
        if not self.error:
            return
        self._log.warning(self._cleared, failed=self._total, last_error=self.error)
        self.error = ""
        self._since_line = self._total = 0
        self._last_line = None
