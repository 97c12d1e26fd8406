"""HTTP health check: one request per measurement, judged on status (and optionally body).

PRODUCT.md, Semantics: an HTTP health URL that cannot be reached, times out or answers the
wrong status is a *fail* — not an *error*, because the thing being checked (the new color) is
what did not answer. So :meth:`HttpCheck.measure` never raises for a network problem; every
outcome is a :class:`~cutover.core.model.Measurement`.

A plain ``http://`` check asks through its own lean HTTP/1.1 client (:mod:`cutover.checks.http1`:
one keep-alive connection per check, a fraction of aiohttp's CPU per request). Everything that
client does not take on goes through the daemon's shared aiohttp session
(:data:`cutover.checks.net.HTTP_SESSION`, from the resources handed to
:meth:`HttpCheckSpec.build`), so connections are kept alive across measurements and checks:
``https://``, a URL with user:password, headers that change the answer's encoding or framing, and
answers aiohttp would not judge as they came: a redirect (aiohttp follows up to 10 for GET and
HEAD, so the check is judged on where it leads, whatever ``expect_status`` lists) or, when the body
is judged, a compressed body (aiohttp decodes it). Both paths give the same verdicts and details,
judged in one place (:meth:`HttpCheck._judge`).

The whole request, both paths together, is bounded by the check's ``timeout``. A timeout that
fired far later than asked measured the daemon's starved event loop, not green: it is an
*error* (counted by ``error_limit`` / ``on_error``), never a fail.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from cutover.checks.base import CheckSpecBase, MeasureContext, Placeholders
from cutover.checks.http1 import Http1Error, fast_client
from cutover.checks.net import (
    HTTP_SESSION,
    check_url,
    late_by,
    no_answer_reason,
    shown_seconds,
    shown_url,
)
from cutover.core.model import Measurement, Verdict
from cutover.resources import Resources
from cutover.specs import render

__all__ = ["BODY_LIMIT", "HttpCheck", "HttpCheckSpec"]

#: At most this much of a response body is read when ``body_contains`` is set.
BODY_LIMIT = 64 * 1024


def _status_list(value: Any) -> Any:
    """``expect_status: 200`` and ``expect_status: [200, 204]`` both mean a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def _check_statuses(value: list[int]) -> list[int]:
    if not value:
        raise ValueError("must name at least one HTTP status")
    for status in value:
        if not 100 <= status <= 599:
            raise ValueError("HTTP statuses must be 100..599")
    return value


class HttpCheckSpec(CheckSpecBase):
    """``type: http``: pass when the URL answers one of ``expect_status``."""

    type: Literal["http"]
    url: Annotated[str, AfterValidator(check_url)]
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: Annotated[
        list[int], BeforeValidator(_status_list), AfterValidator(_check_statuses)
    ] = Field(default_factory=lambda: [200])
    body_contains: str | None = Field(default=None, min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _body_needs_get(self) -> HttpCheckSpec:
        if self.body_contains is not None and self.method == "HEAD":
            raise ValueError("body_contains needs method: GET (a HEAD answer has no body)")
        return self

    def template_fields(self) -> dict[str, str]:
        fields = super().template_fields()
        # Header values render too ("every string field"); placed as headers.<Name>.
        fields.update({f"headers.{k}": v for k, v in self.headers.items()})
        return fields

    def build(self, *, placeholders: Placeholders, resources: Resources) -> HttpCheck:
        """Render every string field strictly (an unknown placeholder raises ``ValueError``)."""
        return HttpCheck(
            name=self.name,
            url=render(self.url, placeholders),
            method=self.method,
            expect_status=tuple(self.expect_status),
            body_contains=(
                render(self.body_contains, placeholders) if self.body_contains is not None else None
            ),
            headers={k: render(v, placeholders) for k, v in self.headers.items()},
            timeout=self.effective_timeout,
            resources=resources,
        )


class HttpCheck:
    """One HTTP health check of one cutover (implements :class:`cutover.checks.base.Check`)."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        method: Literal["GET", "HEAD"] = "GET",
        expect_status: tuple[int, ...] = (200,),
        body_contains: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
        resources: Resources,
    ) -> None:
        self._name = name
        self._resources = resources
        self.url = url
        self.method = method
        self.expect_status = expect_status
        self.body_contains = body_contains
        self.headers = dict(headers or {})
        self.timeout = timeout
        # per measurement these would be a URL parse and an object each: once per check
        self._shown = shown_url(url)
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._needle = body_contains.encode() if body_contains is not None else None
        self._fast = fast_client(
            url, method, self.headers, read_body=body_contains is not None, limit=BODY_LIMIT
        )

    @property
    def name(self) -> str:
        return self._name

    def _client(self) -> aiohttp.ClientSession:
        return self._resources.get(HTTP_SESSION)

    async def measure(self, ctx: MeasureContext) -> Measurement:
        shown = self._shown
        started = time.monotonic()
        try:
            deadline = asyncio.get_running_loop().time() + self.timeout
            fast = self._fast
            # busy: measured twice at once (the runner does not), the second goes to aiohttp
            if fast is not None and not fast.busy:
                status, body, redo = await fast.ask(deadline)
                if redo:
                    status, body = await self._ask_aiohttp(deadline)
            else:
                status, body = await self._ask_aiohttp(deadline)
        except TimeoutError:
            late = late_by(started, self.timeout, time.monotonic())
            if late:
                return Measurement(
                    verdict=Verdict.ERROR,
                    detail=f"no answer from {shown} within {shown_seconds(self.timeout)}, but "
                    f"the daemon's event loop was {late:.1f}s late: not counted against it",
                    at=time.time(),
                )
            return self._fail(f"no answer from {shown} within {shown_seconds(self.timeout)}")
        except (aiohttp.ClientError, Http1Error, OSError, ValueError) as exc:
            return self._fail(f"cannot reach {shown}: {no_answer_reason(exc)}")
        except Exception as exc:  # a check reports, it never raises (see module docstring)
            return self._fail(f"request to {shown} failed: {no_answer_reason(exc)}")
        return self._judge(status, body, time.monotonic() - started)

    async def _ask_aiohttp(self, deadline: float) -> tuple[int, bytes]:
        """The status and (when judged) the first :data:`BODY_LIMIT` bytes of the body, by
        ``deadline`` (on the loop's clock; else :class:`TimeoutError`)."""
        async with (
            asyncio.timeout_at(deadline),
            self._client().request(
                self.method, self.url, headers=self.headers, timeout=self._client_timeout
            ) as resp,
        ):
            body = await self._read_body(resp) if self._needle is not None else b""
            return resp.status, body

    def _judge(self, status: int, body: bytes, latency: float) -> Measurement:
        shown = self._shown
        if status not in self.expect_status:
            expected = " or ".join(str(s) for s in self.expect_status)
            return self._fail(f"HTTP {status} from {shown} (expected {expected})", value=latency)
        if self._needle is not None and self._needle not in body:
            return self._fail(
                f"HTTP {status} from {shown} without {self.body_contains!r} "
                f"in the first {BODY_LIMIT // 1024} KiB of the body",
                value=latency,
            )
        return Measurement(
            verdict=Verdict.PASS,
            value=latency,
            detail=f"HTTP {status} from {shown} in {latency * 1000:.0f} ms",
            at=time.time(),
        )

    @staticmethod
    async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
        """At most :data:`BODY_LIMIT` bytes; a huge or endless body does not hold us up."""
        chunks: list[bytes] = []
        size = 0
        while size < BODY_LIMIT:
            chunk = await resp.content.read(BODY_LIMIT - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    @staticmethod
    def _fail(detail: str, *, value: float | None = None) -> Measurement:
        return Measurement(verdict=Verdict.FAIL, value=value, detail=detail, at=time.time())

    async def aclose(self) -> None:
        if self._fast is not None:
            self._fast.close()
