"""`with_picks` (plain columns appended without a Polars query) equals `with_columns` on the same expressions:
the same frame, column order and types, or the same error."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from sluice.core.batch import column_picks, with_picks

NAMES = ["a", "b", "c", "x", "__sl_v_s"]
FRAME = pl.DataFrame({"a": [1, 2, None], "b": ["p", None, "q"], "c": [0.5, float("nan"), 2.0]})


def expr(source: str, out: str | None) -> pl.Expr:
    return pl.col(source) if out is None else pl.col(source).alias(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.none() | st.sampled_from(NAMES)), max_size=5))
def test_with_picks_equals_with_columns(spec: list[tuple[str, str | None]]) -> None:
    exprs = [expr(s, o) for s, o in spec]
    picks = column_picks(exprs)
    try:
        want = FRAME.with_columns(exprs)
    except pl.exceptions.PolarsError as exc:
        with pytest.raises(type(exc)):
            with_picks(FRAME, picks, exprs) if picks is not None else FRAME.with_columns(exprs)
        return
    got = with_picks(FRAME, picks, exprs) if picks is not None else FRAME.with_columns(exprs)
    assert_frame_equal(got, want)


def test_only_plain_columns_with_distinct_names_are_picked() -> None:
    assert column_picks([pl.col("a"), pl.col("c").alias("v")]) == [("a", "a"), ("c", "v")]
    assert column_picks([pl.col("c").cast(pl.Float64).alias("v")]) is None  # computed: a query
    assert column_picks([pl.col("a").alias("v"), pl.col("c").alias("v")]) is None  # Polars' duplicate error
    assert column_picks([pl.col("a") + 1]) is None
