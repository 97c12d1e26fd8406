"""Drift classification (cutover.core.drift): a read-back against the target and the last write."""

from __future__ import annotations

import pytest

from cutover.core.drift import Standing, standing

TARGET = {"blue-1": "128", "green-1": "128"}
WRITTEN = {"blue-1": "192", "green-1": "64"}


@pytest.mark.parametrize(
    ("state", "written", "expected"),
    [
        (TARGET, WRITTEN, "at_target"),
        (TARGET, None, "at_target"),
        (WRITTEN, WRITTEN, "ours"),
        ({"blue-1": "256", "green-1": "0"}, WRITTEN, "drift"),
        ({"blue-1": "256", "green-1": "0"}, None, "drift"),
        ({}, None, "ours"),  # nothing written yet stands for an empty state
        ({"blue-1": "192"}, WRITTEN, "drift"),  # a server gone counts: states compare whole
        ({**WRITTEN, "extra": "1"}, WRITTEN, "drift"),
    ],
)
def test_standing(
    state: dict[str, str], written: dict[str, str] | None, expected: Standing
) -> None:
    assert standing(state, target=TARGET, written=written) == expected
