"""Share -> HAProxy weights: table tests and properties (exact ends, exact ratio, range, order)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.core.weights import (
    MAX_WEIGHT,
    effective_share,
    realized_share,
    split_weights,
)

BLUE = [("blue1", 10), ("blue2", 10)]
GREEN = [("green1", 10), ("green2", 10)]


@pytest.mark.parametrize(
    ("share", "old", "new", "want"),
    [
        (0, BLUE, GREEN, {"blue1": 10, "blue2": 10, "green1": 0, "green2": 0}),
        (100, BLUE, GREEN, {"blue1": 0, "blue2": 0, "green1": 10, "green2": 10}),
        (50, BLUE, GREEN, {"blue1": 256, "blue2": 256, "green1": 256, "green2": 256}),
        # 10:90 = 1:9, k = 512 // 9 = 56 -> old 504, new 56
        (10, BLUE, GREEN, {"blue1": 252, "blue2": 252, "green1": 28, "green2": 28}),
        # 33:67, k = 512 // 67 = 7 -> old 469 (235 + 234), new 231 (116 + 115)
        (33, BLUE, GREEN, {"blue1": 235, "blue2": 234, "green1": 116, "green2": 115}),
        (90, BLUE, GREEN, {"blue1": 28, "blue2": 28, "green1": 252, "green2": 252}),
        # 1:99 against one old server: k = 256 // 99 = 2
        (1, [("b", 5)], [("g", 5)], {"b": 198, "g": 2}),
        (99, [("b", 5)], [("g", 5)], {"b": 2, "g": 198}),
        # unequal configured weights: blue 3:1, green 1:4; 25:75 = 1:3,
        # old cap 256*40//30 = 341, new cap 256*25//20 = 320 -> k = min(320, 113) = 113
        (
            25,
            [("blue1", 30), ("blue2", 10)],
            [("green1", 5), ("green2", 20)],
            {"blue1": 254, "blue2": 85, "green1": 23, "green2": 90},
        ),
        # all configured 0 -> treated as equal
        (0, [("b1", 0), ("b2", 0)], [("g", 7)], {"b1": 1, "b2": 1, "g": 0}),
        (50, [("b1", 0), ("b2", 0)], [("g", 7)], {"b1": 128, "b2": 128, "g": 256}),
        # a configured 0 next to a non-zero server stays 0
        (50, [("b1", 0), ("b2", 4)], [("g", 7)], {"b1": 0, "b2": 256, "g": 256}),
    ],
)
def test_table(
    share: int, old: list[tuple[str, int]], new: list[tuple[str, int]], want: dict[str, int]
) -> None:
    got = split_weights(share, old=old, new=new)
    assert got == want
    assert realized_share(got, [n for n, _ in new]) == pytest.approx(share)


@pytest.mark.parametrize(
    ("share", "old", "new", "message"),
    [
        (-1, BLUE, GREEN, "share"),
        (101, BLUE, GREEN, "share"),
        (True, BLUE, GREEN, "share"),
        (50, [], GREEN, "at least one"),
        (50, BLUE, [], "at least one"),
        (50, [("blue1", 257)], GREEN, "outside"),
        (50, [("blue1", -1)], GREEN, "outside"),
        (50, [("x", 1)], [("x", 1)], "twice"),
    ],
)
def test_rejects(
    share: int, old: list[tuple[str, int]], new: list[tuple[str, int]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        split_weights(share, old=old, new=new)


@pytest.mark.parametrize(
    ("servers", "want"),
    [
        ([], None),
        ([(True, 10, True, False), (False, 30, True, False)], 25.0),
        ([(True, 10, False, False), (False, 30, True, False)], 0.0),  # new server down
        ([(True, 10, True, True), (False, 30, True, False)], 0.0),  # new server maint/drain
        ([(True, 10, True, False), (False, 30, False, False)], 100.0),
        ([(True, 10, False, False), (False, 30, False, False)], None),  # nothing up
        ([(True, 0, True, False), (False, 0, True, False)], None),  # all weight 0
        ([(True, 1, True, False), (True, 2, True, False), (False, 1, True, False)], 75.0),
    ],
)
def test_effective_share(servers: list[tuple[bool, int, bool, bool]], want: float | None) -> None:
    assert effective_share(servers) == want


# --- properties -----------------------------------------------------------------------------

weight = st.integers(min_value=0, max_value=MAX_WEIGHT)
color = st.lists(weight, min_size=1, max_size=12)
shares = st.integers(min_value=0, max_value=100)


def _servers(prefix: str, weights: list[int]) -> list[tuple[str, int]]:
    return [(f"{prefix}{i}", w) for i, w in enumerate(weights)]


@given(share=shares, old=color, new=color)
def test_properties(share: int, old: list[int], new: list[int]) -> None:
    olds, news = _servers("b", old), _servers("g", new)
    got = split_weights(share, old=olds, new=news)
    assert set(got) == {n for n, _ in olds + news}
    assert all(0 <= w <= MAX_WEIGHT for w in got.values())
    old_total = sum(got[n] for n, _ in olds)
    new_total = sum(got[n] for n, _ in news)
    if share == 0:
        assert new_total == 0 and old_total > 0
    elif share == 100:
        assert old_total == 0 and new_total > 0
    else:
        assert any(got[n] >= 1 for n, _ in news)
        assert any(got[n] >= 1 for n, _ in olds)
    # the share is exact, not merely within a bound
    assert Fraction(new_total, new_total + old_total) == Fraction(share, 100)


@given(share=shares, old=color, new=color)
def test_within_color_proportional(share: int, old: list[int], new: list[int]) -> None:
    """Each server is less than one unit from its exact quota of its color's total."""
    got = split_weights(share, old=_servers("b", old), new=_servers("g", new))
    for prefix, configured in (("b", old), ("g", new)):
        ws = configured if sum(configured) else [1] * len(configured)
        total = sum(got[f"{prefix}{i}"] for i in range(len(ws)))
        for i, w in enumerate(ws):
            quota = Fraction(total * w, sum(ws))
            assert abs(got[f"{prefix}{i}"] - quota) < 1


@given(a=shares, b=shares, old=color, new=color)
def test_monotone_in_share(a: int, b: int, old: list[int], new: list[int]) -> None:
    lo, hi = sorted((a, b))
    olds, news = _servers("b", old), _servers("g", new)
    names = [n for n, _ in news]
    share_lo = realized_share(split_weights(lo, old=olds, new=news), names)
    share_hi = realized_share(split_weights(hi, old=olds, new=news), names)
    assert share_lo is not None and share_hi is not None
    assert share_lo <= share_hi
    if lo < hi:
        assert share_lo < share_hi


@given(
    servers=st.lists(st.tuples(st.booleans(), weight, st.booleans(), st.booleans()), max_size=10)
)
def test_effective_share_bounds(servers: list[tuple[bool, int, bool, bool]]) -> None:
    got = effective_share(servers)
    counted = [s for s in servers if s[2] and not s[3] and s[1] > 0]
    if not counted:
        assert got is None
    else:
        assert got is not None and 0.0 <= got <= 100.0
        if all(s[0] for s in counted):
            assert got == 100.0
        if not any(s[0] for s in counted):
            assert got == 0.0
