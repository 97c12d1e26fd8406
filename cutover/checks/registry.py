"""Every check type, by its config ``type:``. An unknown type is a config error."""

from __future__ import annotations

from cutover.checks.base import CheckSpecBase
from cutover.checks.http import HttpCheckSpec

__all__ = ["CHECK_SPECS"]

CHECK_SPECS: dict[str, type[CheckSpecBase]] = {
    "http": HttpCheckSpec,
}
