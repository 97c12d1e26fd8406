"""Small helpers the benchmarks share: percentiles and a fixed-width table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["pct", "row", "summary"]


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest rank of the sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(seconds: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return statistics.median(ms), pct(ms, 0.99)


def row(cells: Sequence[object], widths: Sequence[int]) -> str:
    """Cells padded to ``widths`` (negative: left-aligned)."""
    return " ".join(
        f"{c!s:<{-w}}" if w < 0 else f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=True)
    )
