"""``type: compare``: the same PromQL query for the new and the old color, new judged against old.

The query says ``{{color}}`` where the color goes; both colors are queried concurrently, within
one timeout. It fails when ``new > old * max_ratio + margin`` (latency, error ratio: new must
not be worse) or ``new < old * min_ratio - margin`` (success rate, throughput: new must not be
lower); the margin keeps tiny absolute values (0.001 vs 0.0004) from failing on noise.

At share 100 the old color has no traffic left to measure (PRODUCT.md, Compare checks): the
check then judges against ``ctx.baseline``, the old value the cutover recorded at the
preceding stage, and records it again as its own baseline so it carries forward (also across
restarts: it lives in the persisted measurements). No baseline then is no data.

Which side had no data or an error is named in the detail: "no data for old (blue)" says the
old color's series are missing, which is a different problem from a new color without
traffic yet.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from cutover.checks.base import MeasureContext, Placeholders
from cutover.checks.promql import NoData, PromClient, PromQLSpec, QueryFailed, fmt, single_value
from cutover.core.model import Measurement, Verdict
from cutover.resources import Resources
from cutover.specs import render

__all__ = ["CompareCheck", "CompareCheckSpec", "Side", "judge"]

#: The placeholder syntax of :func:`cutover.specs.render`.
_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


class CompareCheckSpec(PromQLSpec):
    """``type: compare``: pass while ``old * min_ratio - margin <= new <= old * max_ratio +
    margin`` (either ratio optional)."""

    extra_placeholders: ClassVar[tuple[str, ...]] = ("color",)

    type: Literal["compare"]
    max_ratio: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    min_ratio: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    margin: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ratios(self) -> CompareCheckSpec:
        if self.max_ratio is None and self.min_ratio is None:
            raise ValueError("give max_ratio, min_ratio or both (how new may differ from old)")
        if (
            self.max_ratio is not None
            and self.min_ratio is not None
            and self.min_ratio > self.max_ratio
        ):
            raise ValueError(
                f"min_ratio {self.min_ratio:g} is greater than max_ratio {self.max_ratio:g}: "
                "nothing passes"
            )
        used = set(_PLACEHOLDER.findall(self.query)) | set(_PLACEHOLDER.findall(self.url))
        if "color" not in used:
            # name what it uses instead: "{{colour}}" is most likely meant as {{color}}
            instead = " (it uses " + ", ".join(f"{{{{{n}}}}}" for n in sorted(used)) + ")"
            raise ValueError(
                f"query must use {{{{color}}}}{instead if used else ''}: it runs once per color "
                "(or put {{color}} in the url, for a Prometheus per color)"
            )
        return self

    def build(self, *, placeholders: Placeholders, resources: Resources) -> CompareCheck:
        """Render the URL and the query for each color strictly (an unknown placeholder raises
        ``ValueError``)."""

        def side(role: Literal["new", "old"]) -> Side:
            values = {**placeholders, "color": placeholders[role]}
            return Side(
                role=role,
                color=placeholders[role],
                url=render(self.url, values),
                query=render(self.query, values),
            )

        return CompareCheck(spec=self, new=side("new"), old=side("old"), resources=resources)


@dataclass(frozen=True, kw_only=True)
class Side:
    """One color's rendered query."""

    role: Literal["new", "old"]
    color: str
    url: str
    query: str

    @property
    def shown(self) -> str:
        return f"{self.role} ({self.color})"


def _scaled(old: float, ratio: float, margin: float, sign: str) -> str:
    return f"old {fmt(old)} * {ratio:g}" + (f" {sign} {margin:g}" if margin else "")


def judge(
    new: float,
    old: float,
    *,
    max_ratio: float | None,
    min_ratio: float | None,
    margin: float = 0.0,
) -> tuple[Verdict, str]:
    """``new`` against ``old`` scaled by the ratios, with an absolute ``margin``."""
    holds: list[str] = []
    if max_ratio is not None:
        bound = _scaled(old, max_ratio, margin, "+")
        if new > old * max_ratio + margin:
            return Verdict.FAIL, f"new {fmt(new)} > {bound}"
        holds.append(f"<= {bound}")
    if min_ratio is not None:
        bound = _scaled(old, min_ratio, margin, "-")
        if new < old * min_ratio - margin:
            return Verdict.FAIL, f"new {fmt(new)} < {bound}"
        holds.append(f">= {bound}")
    return Verdict.PASS, f"new {fmt(new)} " + " and ".join(holds)


class CompareCheck:
    """One ``compare`` check of one cutover (implements :class:`cutover.checks.base.Check`)."""

    def __init__(
        self, *, spec: CompareCheckSpec, new: Side, old: Side, resources: Resources
    ) -> None:
        self.spec = spec
        self.new = new
        self.old = old
        self._client = PromClient(timeout=spec.effective_timeout, resources=resources)

    @property
    def name(self) -> str:
        return self.spec.name

    async def _value(self, side: Side) -> float | NoData | QueryFailed:
        """The side's value; a failure is returned, so both sides are always reported."""
        try:
            return single_value(await self._client.query(side.url, side.query), self.spec.reduce)
        except QueryFailed as exc:
            return exc

    async def measure(self, ctx: MeasureContext) -> Measurement:
        carried = ctx.share >= 100
        if carried:  # the old color has no traffic: judge against the preceding stage's value
            new = await self._value(self.new)
            old: float | NoData | QueryFailed = (
                float(ctx.baseline)  # the record's JSON may hold it as an int
                if ctx.baseline is not None
                else NoData(reason="no value recorded at a preceding stage")
            )
        else:
            new, old = await asyncio.gather(self._value(self.new), self._value(self.old))
        at = time.time()
        baseline = old if isinstance(old, float) else None
        sides = ((self.new, new), (self.old, old))

        failed = [(side, r) for side, r in sides if isinstance(r, QueryFailed)]
        if failed:
            messages = {str(exc) for _, exc in failed}
            if len(messages) == 1:  # e.g. Prometheus down: one message for both sides
                detail = f"{' and '.join(side.shown for side, _ in failed)}: {messages.pop()}"
            else:
                detail = "; ".join(f"{side.shown}: {exc}" for side, exc in failed)
            return Measurement(verdict=Verdict.ERROR, detail=detail, baseline=baseline, at=at)

        empty = [(side, r) for side, r in sides if isinstance(r, NoData)]
        if empty:
            return self.spec.no_data(
                "no data for " + ", ".join(f"{side.shown}: {r.reason}" for side, r in empty),
                # before stage 1 only the new color may lack data; the live old one must not
                expected=ctx.share == 0 and all(side is self.new for side, _ in empty),
                baseline=baseline,
                at=at,
            )

        assert isinstance(new, float) and isinstance(old, float)
        verdict, detail = judge(
            new,
            old,
            max_ratio=self.spec.max_ratio,
            min_ratio=self.spec.min_ratio,
            margin=self.spec.margin,
        )
        if carried:
            detail += " (old from the preceding stage)"
        return Measurement(verdict=verdict, value=new, baseline=old, detail=detail, at=at)

    async def aclose(self) -> None:
        """Nothing of its own to close: its session is the daemon's
        (:data:`~cutover.checks.net.HTTP_SESSION`)."""
