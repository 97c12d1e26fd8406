"""Base classes of the typed config specs that router and check modules extend.

Each router or check module defines one spec class (a pydantic model with a ``type`` literal)
that knows how to build its adapter; :mod:`cutover.routers.registry` and
:mod:`cutover.checks.registry` list them, and :mod:`cutover.config` builds its discriminated
unions from those registries, so a new provider is one module plus one registry line.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "Duration",
    "Spec",
    "parse_duration",
    "render",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``90s``, ``5m``, ``1h``, ``250ms`` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 30s, 5m, 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("must be a duration like 30s, 5m, 1h")


#: Seconds, written in the config as ``90s``, ``5m``, ``1h``, ``250ms`` or a number.
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]

_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` placeholders strictly: an unknown name raises ``ValueError``."""

    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            known = ", ".join("{{" + k + "}}" for k in values)
            raise ValueError(f"unknown placeholder {{{{{key}}}}} (known here: {known})")
        return values[key]

    return _PLACEHOLDER.sub(fill, template)


class Spec(BaseModel):
    """Strict: unknown keys are errors, values are not coerced across types silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)
