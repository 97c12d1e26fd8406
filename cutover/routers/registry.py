"""Every router type, by its config ``type:``. An unknown type is a config error."""

from __future__ import annotations

from cutover.routers.base import RouterSpecBase
from cutover.routers.haproxy import HAProxySpec
from cutover.routers.powerdns import PowerDNSSpec
from cutover.routers.rfc2136 import Rfc2136Spec

__all__ = ["ROUTER_SPECS"]

ROUTER_SPECS: dict[str, type[RouterSpecBase]] = {
    "haproxy": HAProxySpec,
    "rfc2136": Rfc2136Spec,
    "powerdns": PowerDNSSpec,
}
