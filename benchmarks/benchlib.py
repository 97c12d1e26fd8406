"""Small helpers the benchmarks share: percentiles, a fixed-width table, and the specs of the
DNS routers they drive (imported after the script put the project root on ``sys.path``)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from cutover.routers.powerdns import PowerDNSSpec
from cutover.routers.rfc2136 import Rfc2136Spec

__all__ = ["pct", "powerdns_spec", "rfc2136_spec", "row", "summary"]


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


def rfc2136_spec(
    *,
    server: str,
    key_name: str,
    secret_file: str,
    zone: str,
    record: str,
    blue: Sequence[str],
    green: Sequence[str],
) -> Rfc2136Spec:
    return Rfc2136Spec.model_validate(
        {
            "type": "rfc2136",
            "name": "bind",
            "server": server,
            "zone": zone,
            "record": record,
            "ttl": 30,
            "tsig": {"name": key_name, "secret_file": secret_file},
            "blue": list(blue),
            "green": list(green),
        }
    )


def powerdns_spec(
    *,
    api_url: str,
    api_key_file: str,
    dns_server: str,
    zone: str,
    record: str,
    blue: Sequence[str],
    green: Sequence[str],
) -> PowerDNSSpec:
    return PowerDNSSpec.model_validate(
        {
            "type": "powerdns",
            "name": "pdns",
            "api_url": api_url,
            "api_key_file": api_key_file,
            "zone": zone,
            "record": record,
            "ttl": 30,
            "dns_server": dns_server,
            "blue": list(blue),
            "green": list(green),
        }
    )
