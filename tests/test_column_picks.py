"""`with_picks` (plain columns and struct fields appended without a Polars query) equals `with_columns` on
the same expressions: the same frame, column order and types, or the same error."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from sluice.core.batch import column_picks, with_picks

SOURCES = ["a", "b", "x", "m", "m.v", "m.w", "m.n", "m.n.z", "m.q", "nm", "nm.v", "a.v"]
OUTS = ["a", "b", "x", "m", "v", "nm", "__sl_v_s"]
FRAME = pl.DataFrame({
    "a": [1, 2, None],
    "b": ["p", None, "q"],
    "m": [{"v": 0.5, "w": "s", "n": {"z": 1}}, {"v": float("nan"), "w": None, "n": None},
          {"v": None, "w": "t", "n": {"z": 3}}],
    "nm": [{"v": 1.0}, None, {"v": 2.0}],  # a null struct row: its field is null
})


def expr(source: str, out: str | None) -> pl.Expr:
    root, *fields = source.split(".")
    e = pl.col(root)
    for f in fields:
        e = e.struct.field(f)
    return e if out is None else e.alias(out)


def outcome(run: object) -> pl.DataFrame | type[BaseException]:
    try:
        return run()  # type: ignore[operator, no-any-return]
    except pl.exceptions.PolarsError as exc:
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SOURCES), st.none() | st.sampled_from(OUTS)), max_size=5))
def test_with_picks_equals_with_columns(spec: list[tuple[str, str | None]]) -> None:
    exprs = [expr(s, o) for s, o in spec]
    picks = column_picks(exprs)
    want = outcome(lambda: FRAME.with_columns(exprs))
    got = outcome(lambda: with_picks(FRAME, picks, exprs) if picks is not None else FRAME.with_columns(exprs))
    if isinstance(want, pl.DataFrame):
        assert isinstance(got, pl.DataFrame)
        assert_frame_equal(got, want)
    else:
        assert got is want


def test_only_plain_columns_and_struct_fields_with_distinct_names_are_picked() -> None:
    assert column_picks([pl.col("a"), pl.col("c").alias("v")]) == [("a", (), "a"), ("c", (), "v")]
    assert column_picks([pl.col("m").struct.field("n").struct.field("z").alias("z")]) == [("m", ("n", "z"), "z")]
    assert column_picks([pl.col("c").cast(pl.Float64).alias("v")]) is None  # computed: a query
    assert column_picks([pl.col("a").alias("v"), pl.col("c").alias("v")]) is None  # Polars' duplicate error
    assert column_picks([pl.col("a") + 1]) is None
    assert column_picks([pl.col("a").map_elements(lambda v: v)]) is None
