"""The frame comparisons the other tests rely on must themselves be able to fail."""

from __future__ import annotations

import polars as pl
import pytest

from oracle import assert_frames_match, assert_same_output


def frames(col: str, a: list, b: list) -> tuple[pl.DataFrame, pl.DataFrame]:  # type: ignore[type-arg]
    return pl.DataFrame({"k": [1, 2, 3], col: a}), pl.DataFrame({"k": [1, 2, 3], col: b})


@pytest.mark.parametrize("a, b", [
    ([1, None, 3], [1, 2, None]),  # as many nulls, in other rows
    (["x", None, "z"], [None, "y", "z"]),
    ([1.5, None, 3.0], [1.5, 2.0, None]),
    ([1.5, None, 3.0], [1.5, 2.0, 3.0]),  # a null against a value
])
def test_nulls_in_different_rows_are_a_difference(a: list, b: list) -> None:  # type: ignore[type-arg]
    x, y = frames("v", a, b)
    with pytest.raises(AssertionError):
        assert_frames_match(x, y, keys=["k"])
    with pytest.raises(AssertionError):
        assert_same_output(x, y)


def test_nulls_in_the_same_rows_and_floats_within_the_bound_match() -> None:
    x = pl.DataFrame({"k": [3, 1, 2], "i": [None, 1, 2], "s": ["c", None, "b"], "f": [3.0, None, 2.0]})
    y = pl.DataFrame({"k": [1, 2, 3], "i": [1, 2, None], "s": [None, "b", "c"], "f": [None, 2.0 * (1 + 1e-13), 3.0]})
    assert_frames_match(x, y, keys=["k"])
    assert_same_output(x.sort("k"), y)


def test_a_value_difference_is_a_difference() -> None:
    x, y = frames("v", [1, 2, 3], [1, 2, 4])
    with pytest.raises(AssertionError, match="column v: 1 rows differ"):
        assert_frames_match(x, y, keys=["k"])
    x, y = frames("v", [1.0, 2.0, 3.0], [1.0, 2.0, 3.1])
    with pytest.raises(AssertionError, match="relative error"):
        assert_frames_match(x, y, keys=["k"])
