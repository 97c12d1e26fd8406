"""The daemon's start-up check of the open-files limit against what its checks keep open."""

from __future__ import annotations

import copy
import resource
from pathlib import Path
from typing import Any

import pytest

from cutover.config import parse_config
from cutover.daemon import (
    FILES_BESIDES_CHECKS,
    few_files_warning,
    kept_connections,
    open_files_soft_limit,
)
from tests.unit.test_supervisor import CONFIG

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            {soft}                524288               files
Max locked memory         8388608              8388608              bytes
"""


def _config(services: int) -> Any:
    raw = copy.deepcopy(CONFIG)
    template = raw["services"].pop("checkout")
    for i in range(services):
        service = copy.deepcopy(template)
        service["routers"][0]["backend"] = f"svc{i}"  # one backend per service
        service["checks"].append(  # kept open only for plain http://
            {"name": "tls", "type": "http", "url": "https://127.0.0.1:1/", "interval": "1s"}
        )
        raw["services"][f"svc{i}"] = service
    return parse_config(raw)


def test_only_plain_http_checks_keep_a_connection() -> None:
    assert kept_connections(_config(3)) == 3


@pytest.mark.parametrize(
    ("services", "soft", "warns"),
    [
        (1000, "1024", True),  # systemd's default soft limit
        (1000, "65536", False),  # what config/cutover.service sets
        (10, "1024", False),
        (1024 - FILES_BESIDES_CHECKS, "1024", False),  # exactly enough
        (1024 - FILES_BESIDES_CHECKS + 1, "1024", True),
        (1000, "unlimited", False),
    ],
)
def test_a_low_open_files_limit_is_named_with_what_the_checks_need(
    services: int, soft: str, warns: bool
) -> None:
    warning = few_files_warning(_config(services), LIMITS.format(soft=soft))
    assert (warning is not None) is warns
    if warning is not None:
        assert f"open-files limit ({soft})" in warning
        assert f"{services} plain-http health check(s)" in warning
        assert "LimitNOFILE" in warning


def test_no_limits_text_is_no_warning() -> None:
    assert few_files_warning(_config(1000), "") is None


def test_this_process_limits_read_as_getrlimit_says() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = None if soft == resource.RLIM_INFINITY else soft
    assert open_files_soft_limit(Path("/proc/self/limits").read_text()) == expected
