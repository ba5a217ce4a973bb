"""Stateless steps take row-wise expressions only: an expression that looks at other rows (a window
`.over()`, an aggregate that Polars broadcasts, a cumulative, shifted, ranked, sorted or sliced column)
would compute over each micro-batch, so its result would depend on the batch size. Those are refused
when the step is declared; the row-wise ones give the same output at every batch size."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import sluice as sl
from sluice import testing
from sluice.core.plan import Plan, Read, Ref, WithColumns, Write
from sluice.core.show import show_expr

x, y, s, t = pl.col("x"), pl.col("y"), pl.col("s"), pl.col("t")

ACCEPTED = {
    "arithmetic": (x * 2 + y) / 3 - x % 4,
    "comparison": (x > 3) & ~(y < 0.5) | x.is_null(),
    "str": s.str.to_uppercase() + s.str.slice(0, 2) + s.str.len_chars().cast(pl.String),
    "str_contains": s.str.contains("b"),
    "dt": t.dt.hour() * 60 + t.dt.minute() + t.dt.truncate("1h").dt.day(),
    "when_then": pl.when(x > 5).then(pl.lit("big")).when(x > 2).then(s).otherwise(pl.lit("small")),
    "struct_field": pl.col("st").struct.field("a") + 1,
    "cast": x.cast(pl.Float64).round(1).cast(pl.String),
    "is_in_literal": s.is_in(["a", "bc"]),
    "fill_null_literal": x.fill_null(0),
    "coalesce_clip_abs": pl.coalesce(x, pl.lit(-1)).clip(0, 8).abs(),
    "horizontal": pl.max_horizontal(x, y) + pl.sum_horizontal(x, y),
    "list_within_row": pl.col("l").list.sum() + pl.col("l").list.eval(pl.element().rank()).list.first(),
    "concat_str": pl.concat_str([s, x.cast(pl.String)], separator="-"),
    "struct_make": pl.struct(x, s).struct.field("x"),
}
REFUSED = {
    "over": x.sum().over("k"),
    "plain_over": x.over("k"),
    "sum": x.sum(),
    "mean_in_a_comparison": x > x.mean(),
    "share_of_max": x / x.max(),
    "cum_sum": x.cum_sum(),
    "shift": x.shift(1),
    "diff": x.diff(),
    "rank": x.rank(),
    "rolling_mean": y.rolling_mean(3),
    "sort": x.sort(),
    "unique": x.unique(),
    "first": x.first(),
    "last": x.last(),
    "len": pl.len(),
    "count": x.count(),
    "head": x.head(2),
    "forward_fill": x.fill_null(strategy="forward"),
    "row_index": pl.int_range(pl.len()),
    "n_unique": x.n_unique(),
    "is_duplicated": x.is_duplicated(),
    "python_function_summed": x.map_elements(lambda v: v, return_dtype=pl.Int64).sum(),
}


def frame(n: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    return pl.DataFrame({
        "k": [rng.choice("ab") for _ in range(n)],
        "x": [rng.choice([None, *range(10)]) for _ in range(n)],
        "y": [rng.uniform(-1, 1) for _ in range(n)],
        "s": [rng.choice(["a", "bc", "abc", "zz"]) for _ in range(n)],
        "t": [start + timedelta(minutes=rng.randint(0, 600)) for _ in range(n)],
        "st": [{"a": rng.randint(0, 5), "b": "q"} for _ in range(n)],
        "l": [[rng.randint(0, 9) for _ in range(rng.randint(1, 3))] for _ in range(n)],
    })


@pytest.mark.parametrize("name", REFUSED)
def test_a_batch_dependent_expression_is_refused_naming_the_step_and_the_expression(name: str) -> None:
    expr = REFUSED[name]
    src = sl.Flow("f").read("in", testing.rows(frame(3, 0)))
    with pytest.raises(sl.PlanError) as err:
        src.with_columns(step="enrich", out=expr)
    text = str(err.value)
    assert text.startswith("with_columns step 'enrich': ")
    assert show_expr(expr.alias("out")) in text
    assert "depend on how the input is split into micro-batches" in text
    assert ".key_by(...).process(" in text and ".key_by(...).window(" in text
    assert "__sl_" not in text


@pytest.mark.parametrize("declare", [
    lambda st: st.filter(x.cum_sum() > 3, name="the_step"),
    lambda st: st.select("k", v=x.rank(), step="the_step"),
    lambda st: st.branch("the_step", big=x > x.median()),
    lambda st: st.key_by(x.shift(1), name="the_step"),
])
def test_every_stateless_step_is_checked(declare) -> None:
    src = sl.Flow("f").read("in", testing.rows(frame(3, 0)))
    with pytest.raises(sl.PlanError, match=r"step 'the_step': .* micro-batches"):
        declare(src)


def test_a_plan_built_without_the_flow_api_is_checked_too() -> None:
    from sluice.connectors.memory import CollectSink

    plan = Plan("p", (Read("in", (), testing.rows(frame(3, 0)), None),
                      WithColumns("w", (Ref("in"),), (x.cum_sum().alias("c"),)),
                      Write("out", (Ref("w"),), CollectSink())))
    with pytest.raises(sl.PlanError, match=r"with_columns step 'w': col\(\"x\"\).cum_sum\(\)"):
        sl.run(plan)


@pytest.mark.parametrize("seed", range(3))
def test_accepted_expressions_give_the_same_output_at_every_batch_size(seed: int) -> None:
    data = frame(200, seed)
    outputs = {}
    for size in (1, 1000):
        flow = sl.Flow("f")
        src = flow.read("in", testing.rows(data))
        out = testing.collect(src.with_columns(**ACCEPTED).filter((x > 1) | s.str.starts_with("a")))
        sl.run(flow, batch_size=size)
        outputs[size] = out.frame()
    whole = data.with_columns(**ACCEPTED).filter((x > 1) | s.str.starts_with("a"))  # all rows in one frame
    # floats within rounding: Polars' kernels may round the last bit differently for one row and for many
    assert_frame_equal(outputs[1], whole, check_exact=False, rel_tol=1e-12)
    assert_frame_equal(outputs[1000], whole, check_exact=False, rel_tol=1e-12)
