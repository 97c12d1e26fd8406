"""``type: prometheus``: one PromQL instant query, its value judged against ``max``/``min``.

The value inside the thresholds (inclusive) passes, outside fails; no data (an empty result or
NaN) is judged by ``on_no_data``; a provider that cannot answer is an error (see
:mod:`cutover.checks.promql` for what counts as which, and why +Inf is data).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field, model_validator

from cutover.checks.base import MeasureContext, Placeholders
from cutover.checks.promql import NoData, PromClient, PromQLSpec, QueryFailed, fmt, single_value
from cutover.core.model import Measurement, Verdict
from cutover.resources import Resources
from cutover.specs import render

__all__ = ["PrometheusCheck", "PrometheusCheckSpec", "judge"]


class PrometheusCheckSpec(PromQLSpec):
    """``type: prometheus``: pass while ``min <= value <= max`` (either bound optional)."""

    type: Literal["prometheus"]
    max: float | None = Field(default=None, allow_inf_nan=False)
    min: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> PrometheusCheckSpec:
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both (the thresholds the value is judged against)")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is greater than max {self.max:g}: nothing passes")
        return self

    def build(self, *, placeholders: Placeholders, resources: Resources) -> PrometheusCheck:
        """Render the URL and the query strictly (an unknown placeholder raises ``ValueError``)."""
        rendered = self.model_copy(
            update={
                "url": render(self.url, placeholders),
                "query": render(self.query, placeholders),
            }
        )
        return PrometheusCheck(spec=rendered, resources=resources)


def judge(value: float, *, high: float | None, low: float | None) -> tuple[Verdict, str]:
    """``value`` against ``max`` (``high``) and ``min`` (``low``), both inclusive."""
    if high is not None and value > high:
        return Verdict.FAIL, f"{fmt(value, unlike=high)} > max {fmt(high)}"
    if low is not None and value < low:
        return Verdict.FAIL, f"{fmt(value, unlike=low)} < min {fmt(low)}"
    if high is not None and low is not None:
        return Verdict.PASS, f"{fmt(value)} within min {fmt(low)} .. max {fmt(high)}"
    if high is not None:
        return Verdict.PASS, f"{fmt(value, unlike=high)} <= max {fmt(high)}"
    assert low is not None  # the spec asks for at least one bound
    return Verdict.PASS, f"{fmt(value, unlike=low)} >= min {fmt(low)}"


class PrometheusCheck:
    """One ``prometheus`` check of one cutover (implements :class:`cutover.checks.base.Check`);
    ``spec`` has its placeholders rendered."""

    def __init__(self, *, spec: PrometheusCheckSpec, resources: Resources) -> None:
        self.spec = spec
        self._client = PromClient(timeout=spec.effective_timeout, resources=resources)

    @property
    def name(self) -> str:
        return self.spec.name

    async def measure(self, ctx: MeasureContext) -> Measurement:
        spec = self.spec
        try:
            value = single_value(await self._client.query(spec.url, spec.query), spec.reduce)
        except QueryFailed as exc:
            return Measurement(verdict=Verdict.ERROR, detail=str(exc), at=time.time())
        if isinstance(value, NoData):
            return spec.no_data(
                f"no data ({value.reason})", expected=ctx.share == 0, at=time.time()
            )
        verdict, detail = judge(value, high=spec.max, low=spec.min)
        return Measurement(verdict=verdict, value=value, detail=detail, at=time.time())

    async def aclose(self) -> None:
        """Nothing of its own to close: its session is the daemon's
        (:data:`~cutover.checks.net.HTTP_SESSION`)."""
