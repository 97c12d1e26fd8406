"""What the ``prometheus`` and ``compare`` checks share: the spec fields, one instant query
over HTTP, the answer as plain data, and the rule that turns an answer into one number.

Prometheus answers ``GET /api/v1/query`` with JSON even for errors (HTTP 400 ``bad_data`` for a
PromQL syntax error, 422 ``execution``, 503 ``timeout``; Prometheus docs, "HTTP API", "Format
overview"), so :meth:`PromClient.query` returns Prometheus's own message in the
:class:`QueryFailed` it raises: a typo in a query shows at preflight as Prometheus's
``parse error``. Everything a provider can do wrong — refuse the connection, time out, answer
5xx or something that is not a Prometheus answer — becomes :class:`QueryFailed`, which a check
reports as :attr:`~cutover.core.model.Verdict.ERROR` (PRODUCT.md, Semantics: *a metrics
provider that cannot be reached or answers 5xx is an error*).

No data — an empty result or NaN (``0/0`` when there was no traffic) — is not an error: it is
:class:`NoData`, judged by the check's ``on_no_data``. ``+Inf`` *is* data (e.g.
``histogram_quantile`` when the quantile lies beyond the highest bucket) and is judged against
the thresholds like any number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import AfterValidator, Field

from cutover.checks.base import CheckSpecBase
from cutover.checks.net import (
    HTTP_SESSION,
    AnswerTooLarge,
    check_url,
    no_answer_reason,
    read_capped,
    shown_seconds,
    shown_url,
)
from cutover.core.model import Measurement, Verdict
from cutover.resources import Resources

__all__ = [
    "NO_DATA_VERDICTS",
    "Answer",
    "NoData",
    "OnNoData",
    "PromClient",
    "PromQLSpec",
    "QueryFailed",
    "Reduce",
    "Series",
    "fmt",
    "parse_answer",
    "single_value",
]

OnNoData = Literal["fail", "pass", "inconclusive"]
Reduce = Literal["max", "min", "sum"]

NO_DATA_VERDICTS: Mapping[OnNoData, Verdict] = {
    "fail": Verdict.FAIL,
    "pass": Verdict.PASS,
    "inconclusive": Verdict.INCONCLUSIVE,
}

#: At most this much of a non-Prometheus answer is quoted in a detail.
QUOTED = 120
#: Largest answer read, bytes: one that a check can use is a few series (about 200 bytes
#: each); a larger one is refused before it is parsed on the event loop.
ANSWER_LIMIT = 1024 * 1024


class PromQLSpec(CheckSpecBase):
    """Fields of every check that runs a PromQL instant query (not a check type itself)."""

    url: Annotated[str, AfterValidator(check_url)]
    query: str = Field(min_length=1)
    on_no_data: OnNoData = "inconclusive"
    #: How several series become one value; without it several series are an error, since a
    #: threshold on "some one of them" would judge an arbitrary series.
    reduce: Reduce | None = None

    def no_data(self, detail: str, *, expected: bool, **fields: Any) -> Measurement:
        """The measurement for an empty or NaN answer, per ``on_no_data``.

        ``expected``: the new color cannot have data yet (preflight, share 0). PRODUCT.md,
        Preflight: "a query about the new color's traffic has no data yet, which is fine
        here", so ``on_no_data: fail`` then gives inconclusive instead of refusing every start.
        """
        verdict = NO_DATA_VERDICTS[self.on_no_data]
        if expected and verdict is Verdict.FAIL:
            verdict, detail = Verdict.INCONCLUSIVE, f"{detail}; none expected before stage 1"
        return Measurement(verdict=verdict, detail=detail, **fields)


class QueryFailed(Exception):
    """The query gave no usable answer; ``str()`` is a short detail for people."""


@dataclass(frozen=True, kw_only=True)
class Series:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, kw_only=True)
class Answer:
    """An instant query's result: a vector's series, or one unlabelled series for a scalar."""

    series: tuple[Series, ...]


@dataclass(frozen=True, kw_only=True)
class NoData:
    reason: str  # "empty result", "NaN"


def fmt(value: float, *, unlike: float | None = None) -> str:
    """A value as details show it: 4 significant digits (``0.0312``, ``inf``), more when that
    would print it like the different number ``unlike`` ("0.01 > max 0.01" says nothing)."""
    short = f"{value:.4g}"
    if unlike is not None and value != unlike and short == f"{unlike:.4g}":
        return f"{value:.12g}"
    return short


def _number(raw: Any) -> float:
    """Prometheus sends sample values as strings: ``"0.5"``, ``"NaN"``, ``"+Inf"``."""
    if not isinstance(raw, str):
        raise ValueError(f"sample value {raw!r} is not a string")
    return float(raw)


def parse_answer(status: int, body: Any) -> Answer:
    """Prometheus's decoded JSON (``body``) with the HTTP ``status`` -> :class:`Answer`.

    Raises :class:`QueryFailed` for an error answer or a shape no instant query gives.
    """
    if not isinstance(body, dict):
        raise QueryFailed(f"HTTP {status}, not a Prometheus answer (JSON {type(body).__name__})")
    if body.get("status") != "success":
        kind = body.get("errorType") or "error"
        message = body.get("error") or "no error message"
        raise QueryFailed(f"Prometheus: HTTP {status} {kind}: {message}")
    if status != 200:  # success with another status: not something Prometheus sends
        raise QueryFailed(f"HTTP {status} with a success body")
    data: Any = body.get("data")
    try:
        kind, result = data["resultType"], data["result"]  # TypeError if data is no mapping
        if kind == "scalar":
            return Answer(series=(Series(labels={}, value=_number(result[1])),))
        if kind == "vector":
            return Answer(
                series=tuple(
                    Series(labels=dict(item.get("metric") or {}), value=_number(item["value"][1]))
                    for item in result
                )
            )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise QueryFailed(f"malformed Prometheus answer ({type(exc).__name__}: {exc})") from exc
    if kind == "matrix":
        raise QueryFailed(
            "the query gives a range vector (matrix); a check needs an instant vector or a "
            "scalar, e.g. rate(metric[1m]) instead of metric[1m]"
        )
    raise QueryFailed(f"the query gives a {kind}; a check needs an instant vector or a scalar")


def _series_names(answer: Answer, shown: int = 3) -> str:
    names = [
        "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}"
        for s in answer.series[:shown]
    ]
    more = len(answer.series) - shown
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def single_value(answer: Answer, reduce: Reduce | None) -> float | NoData:
    """The one value a check judges: the only series' value, or ``reduce`` of all series.

    NaN series are left out of a reduce (they carry no data); all NaN, or nothing, is
    :class:`NoData`. Several series without ``reduce`` raise :class:`QueryFailed` naming how
    many, because judging one of them would be arbitrary.
    """
    if not answer.series:
        return NoData(reason="empty result")
    if reduce is None:
        if len(answer.series) > 1:
            raise QueryFailed(
                f"the query gives {len(answer.series)} series ({_series_names(answer)}); "
                "aggregate them in the query (e.g. sum(...)) or set reduce: max|min|sum"
            )
        value = answer.series[0].value
        return NoData(reason="NaN") if math.isnan(value) else value
    values = [s.value for s in answer.series if not math.isnan(s.value)]
    if not values:
        return NoData(reason="NaN")
    reduced = max(values) if reduce == "max" else min(values) if reduce == "min" else sum(values)
    # +Inf and -Inf summed are NaN: no meaningful number either
    return NoData(reason="NaN") if math.isnan(reduced) else reduced


class PromClient:
    """Instant queries over the daemon's shared aiohttp session (:data:`HTTP_SESSION`), so
    connections are kept alive."""

    def __init__(self, *, timeout: float, resources: Resources) -> None:
        self.timeout = timeout
        self._resources = resources

    def _client(self) -> aiohttp.ClientSession:
        return self._resources.get(HTTP_SESSION)

    async def query(self, url: str, promql: str) -> Answer:
        """``GET {url}/api/v1/query`` answered within :attr:`timeout`; raises
        :class:`QueryFailed` for anything that is not a usable answer."""
        endpoint = url.rstrip("/") + "/api/v1/query"
        shown = shown_url(url)
        # Prometheus's own timeout too, so a heavy query stops there when we stop waiting
        # (in float seconds: its API parses "0.5" but not "0.5s").
        params = {"query": promql, "timeout": f"{self.timeout:g}"}
        try:
            async with self._client().get(
                endpoint, params=params, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                status = resp.status
                raw = await read_capped(resp, ANSWER_LIMIT)
            try:
                body: Any = json.loads(raw)
            except ValueError:  # UnicodeDecodeError included
                body = None
            if not isinstance(body, dict):  # a proxy's error page, or not Prometheus at all
                text = raw.decode(errors="replace").strip()
                raise QueryFailed(
                    f"HTTP {status} from {shown}, not a Prometheus answer: {text[:QUOTED]!r}"
                )
        except QueryFailed:
            raise
        except AnswerTooLarge as exc:
            raise QueryFailed(f"{shown}: {exc}; a query should answer with a few series") from None
        except TimeoutError:
            raise QueryFailed(
                f"no answer from {shown} within {shown_seconds(self.timeout)}"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise QueryFailed(f"cannot reach {shown}: {no_answer_reason(exc)}") from exc
        except Exception as exc:  # a check reports, it never raises (checks/base.py)
            raise QueryFailed(f"query to {shown} failed: {no_answer_reason(exc)}") from exc
        return parse_answer(status, body)
