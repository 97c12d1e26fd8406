"""The check interface: ``measure()`` returns a Measurement; provider errors are data.

A check never raises for a provider problem: an unreachable health URL is a ``fail``
measurement, an unreachable metrics provider an ``error`` one (PRODUCT.md, Checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from pydantic import Field

from cutover.core.model import CheckPolicy, Color, Measurement
from cutover.resources import Resources
from cutover.specs import Duration, Spec

__all__ = ["Check", "CheckSpecBase", "MeasureContext", "Placeholders"]

#: Values for ``{{new}}``, ``{{old}}``, ``{{service}}`` when a check is built.
Placeholders = dict[str, str]

DEFAULT_INTERVAL = 10.0
MAX_DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True)
class MeasureContext:
    """What the cutover knows when it asks for a measurement.

    ``share`` is the new color's share the current stage asks for (0 at preflight);
    ``baseline`` the newest old-color value this check recorded, which a compare check uses
    once the old color has no traffic left to measure (share 100)."""

    share: int = 0
    baseline: float | None = None


class Check(Protocol):
    @property
    def name(self) -> str: ...

    async def measure(self, ctx: MeasureContext) -> Measurement: ...

    async def aclose(self) -> None: ...


class CheckSpecBase(Spec):
    """Fields every check has; the defaults are PRODUCT.md's table."""

    #: Placeholders a kind fills beyond new/old/service (a compare check: ``color``).
    extra_placeholders: ClassVar[tuple[str, ...]] = ()

    type: str
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    interval: Duration = DEFAULT_INTERVAL
    timeout: Duration | None = None  # default min(interval, 5s)
    failure_limit: int = Field(default=2, ge=1)
    window: int = Field(default=5, ge=1)
    inconclusive_limit: int = Field(default=3, ge=1)
    on_inconclusive: Literal["pause", "rollback"] = "pause"
    error_limit: int = Field(default=3, ge=1)
    on_error: Literal["pause", "rollback"] = "pause"
    initial_delay: Duration | None = None  # default: the longest DNS TTL of the service
    dry_run: bool = False

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout is not None else min(self.interval, MAX_DEFAULT_TIMEOUT)

    def policy(self, *, default_initial_delay: float) -> CheckPolicy:
        return CheckPolicy(
            name=self.name,
            interval=self.interval,
            failure_limit=self.failure_limit,
            window=self.window,
            inconclusive_limit=self.inconclusive_limit,
            error_limit=self.error_limit,
            on_inconclusive=self.on_inconclusive,
            on_error=self.on_error,
            initial_delay=(
                self.initial_delay if self.initial_delay is not None else default_initial_delay
            ),
            dry_run=self.dry_run,
        )

    def template_fields(self) -> dict[str, str]:
        """The string fields placeholders render in, by field name (for validation)."""
        return {
            name: value
            for name, value in self.__dict__.items()
            if isinstance(value, str) and name not in ("type", "name")
        }

    def build(self, *, placeholders: Placeholders, resources: Resources) -> Check:
        raise NotImplementedError  # each check module's spec overrides this


def color_placeholders(*, service: str, new: Color) -> Placeholders:
    old: Color = "blue" if new == "green" else "green"
    return {"new": new, "old": old, "service": service}
