"""A union never widens types or fills in columns: its inputs must have the same columns (names and
types, in any order). Known from the plan, the run refuses before any record; otherwise at the first
batch of the second input. The error names both inputs, the differing columns and the fix."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

import sluice as sl
from sluice import testing

NARROW = pl.DataFrame({"id": [1, 2], "metrics": [{"a": 1.0}, {"a": 2.0}]})
WIDE = pl.DataFrame({"id": [3], "metrics": [{"a": 3.0, "b": 4.0}]})


def union_of(left: pl.DataFrame, right: pl.DataFrame, *, hide_schemas: bool = False) -> tuple[sl.Flow, sl.CollectSink]:
    flow = sl.Flow("u")
    a, b = flow.read("a", testing.rows(left)), flow.read("b", testing.rows(right))
    if hide_schemas:  # a map without a schema: the plan does not say the columns, the first batch does
        a, b = a.map(lambda r: r, name="from_a"), b.map(lambda r: r, name="from_b")
    out = testing.collect(a.union(b, name="both"))
    return flow, out


@pytest.mark.parametrize("hide_schemas", [False, True])
@pytest.mark.parametrize(("right", "says"), [
    (WIDE, ["'metrics' is Struct({'a': Float64}) in '{a}' but Struct({'a': Float64, 'b': Float64}) in '{b}'"]),
    (pl.DataFrame({"id": [3.5], "metrics": [{"a": 3.0}]}), ["'id' is Int64 in '{a}' but Float64 in '{b}'"]),
    (pl.DataFrame({"id": [3]}), ["'metrics' is only in '{a}'"]),
    (NARROW.with_columns(extra=pl.lit("x")), ["'extra' is only in '{b}'"]),
])
def test_different_columns_are_refused_with_both_inputs_named(right: pl.DataFrame, says: list[str],
                                                               hide_schemas: bool) -> None:
    flow, _ = union_of(NARROW, right, hide_schemas=hide_schemas)
    a, b = ("from_a", "from_b") if hide_schemas else ("a", "b")
    with pytest.raises(sl.PlanError) as err:
        sl.run(flow, batch_size=1)
    text = str(err.value)
    assert text.startswith("union step 'both': its inputs have different columns")
    for piece in says:
        assert piece.replace("{a}", a).replace("{b}", b) in text
    assert ".with_columns(pl.col(name).cast(type))" in text and "select the same columns" in text
    assert "__sl_" not in text


@pytest.mark.parametrize("hide_schemas", [False, True])
def test_the_same_columns_in_another_order_are_merged_in_one_order(hide_schemas: bool) -> None:
    right = pl.DataFrame({"metrics": [{"a": 3.0}], "id": [3]})
    flow, out = union_of(NARROW, right, hide_schemas=hide_schemas)
    sl.run(flow, batch_size=1)
    got = out.frame()
    assert got.columns == ["id", "metrics"]
    assert sorted(got["id"].to_list()) == [1, 2, 3]


def test_a_cast_before_the_union_is_the_fix() -> None:
    flow = sl.Flow("u")
    ints = flow.read("ints", testing.rows({"t": [1_000, 2_000], "x": [1, 2]}))
    floats = flow.read("floats", testing.rows({"t": [1_500], "x": [0.5]}))
    both = ints.with_columns(pl.col("x").cast(pl.Float64)).union(floats).event_time("t", timedelta(0))
    out = testing.collect(both.key_by(pl.lit(1).alias("k")).window("w", sl.Tumbling(timedelta(seconds=10)),
                                                                   total=sl.agg.sum("x")))
    sl.run(flow, batch_size=1)
    assert out.frame()["total"].to_list() == [3.5]
