"""Every check type, by its config ``type:``. An unknown type is a config error."""

from __future__ import annotations

from cutover.checks.base import CheckSpecBase
from cutover.checks.compare import CompareCheckSpec
from cutover.checks.http import HttpCheckSpec
from cutover.checks.prometheus import PrometheusCheckSpec

__all__ = ["CHECK_SPECS"]

CHECK_SPECS: dict[str, type[CheckSpecBase]] = {
    "http": HttpCheckSpec,
    "prometheus": PrometheusCheckSpec,
    "compare": CompareCheckSpec,
}
