"""One webhook endpoint: its identity, its bearer token and a POST retried a bounded number of
times.

A POST is acknowledged by any 2xx answer. Timeouts, connection errors, 408, 425, 429 and 5xx
are worth another try within the cycle (tenacity, exponential backoff, at most
``RetryPolicy.attempts`` POSTs); any other answer (a 401 for a wrong token, a 404) is not, and
the event waits for the next cycle like a failed one. Nothing is ever skipped: delivery is at
least once.

Secrets: the token is read from its file or environment variable at each cycle (so it can be
rotated without a restart) and goes only into the ``Authorization`` header. The URL is not
logged or used as a metric label either, since a Slack incoming-webhook URL's path *is* a
secret: logs and metrics name the webhook by its place in the config (``notify[0]``) and its
``scheme://host:port``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from cutover.config import NotifySpec
from cutover.observability.metrics import Metrics
from cutover.resources import SecretSink

__all__ = ["DeliveryError", "RetryPolicy", "Webhook"]

#: Answers worth another try within a cycle (RFC 9110 §15.5.9 408, RFC 8470 425, RFC 6585 429).
_RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How hard one webhook is tried. A cycle makes at most ``attempts`` POSTs per event,
    ``first``, 2·``first``, … (at most ``cap``) seconds apart, each bounded by ``timeout``; a
    failed cycle keeps the cursor and the next one starts ``pause`` seconds later, doubling up
    to ``pause_max`` while the webhook keeps failing."""

    timeout: float = 5.0
    attempts: int = 4
    first: float = 0.5
    cap: float = 8.0
    pause: float = 5.0
    pause_max: float = 300.0


class DeliveryError(Exception):
    """A POST that was not acknowledged; the message never holds the token or the URL path."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Webhook:
    """The ``index``-th ``notify:`` entry."""

    def __init__(
        self,
        *,
        spec: NotifySpec,
        index: int,
        policy: RetryPolicy,
        secrets: SecretSink,
        metrics: Metrics | None = None,
    ) -> None:
        self.spec = spec
        self._secrets = secrets
        self.name = f"notify[{index}]"
        parts = urlsplit(spec.url)
        self.target = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        #: The key of its delivery cursors: the same URL and format keep them across restarts
        #: and config reorderings; a changed URL is a new webhook (it is not sent the past).
        self.key = "webhook:" + hashlib.sha256(f"{spec.format} {spec.url}".encode()).hexdigest()
        self._policy = policy
        self._metrics = metrics
        if metrics is not None:
            metrics.add_webhook(self.name)

    def _token(self) -> str | None:
        if self.spec.token_file is not None:
            try:
                token = Path(self.spec.token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise self._failed(
                    f"cannot read token_file {self.spec.token_file}: {reason}", retryable=False
                ) from None
        elif self.spec.token_env is not None:
            token = os.environ.get(self.spec.token_env, "").strip()
        else:
            return None
        if not token:
            where = self.spec.token_file or f"${self.spec.token_env}"
            raise self._failed(f"the token in {where} is empty", retryable=False)
        self._secrets.add(token)  # the log redactor masks it wherever it might appear
        return token

    async def post(self, session: aiohttp.ClientSession, event_id: str, body: Any) -> None:
        """POST ``body`` until a 2xx answer, at most ``attempts`` times; raises the last
        :class:`DeliveryError` when every try failed."""
        headers = {"X-Cutover-Event-Id": event_id}
        token = self._token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        p = self._policy
        retrying = AsyncRetrying(
            stop=stop_after_attempt(p.attempts),
            wait=wait_exponential(multiplier=p.first, max=p.cap),
            retry=retry_if_exception(lambda exc: isinstance(exc, DeliveryError) and exc.retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._post_once(session, headers, body)

    async def _post_once(
        self, session: aiohttp.ClientSession, headers: dict[str, str], body: Any
    ) -> None:
        try:
            async with session.post(
                self.spec.url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._policy.timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
        except TimeoutError:
            raise self._failed(
                f"no answer within {self._policy.timeout:g}s", retryable=True
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise self._failed(
                f"cannot connect to {self.target}: {exc.os_error.strerror or exc.os_error}",
                retryable=True,
            ) from None
        except aiohttp.ClientError as exc:
            # the class name only: some aiohttp messages quote the URL
            raise self._failed(f"{type(exc).__name__}", retryable=True) from None
        if 200 <= status < 300:
            if self._metrics is not None:
                self._metrics.webhook_deliveries.labels(self.name).inc()
            return
        retryable = status >= 500 or status in _RETRYABLE_STATUS
        raise self._failed(f"HTTP {status}", retryable=retryable)

    def _failed(self, message: str, *, retryable: bool) -> DeliveryError:
        if self._metrics is not None:
            self._metrics.webhook_failures.labels(self.name).inc()
        return DeliveryError(message, retryable=retryable)
