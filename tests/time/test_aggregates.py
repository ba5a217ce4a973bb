"""Every aggregate against DuckDB, on random out-of-order input, at several batch sizes."""

from __future__ import annotations

import math
from datetime import timedelta

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

rows = st.lists(
    st.tuples(st.integers(0, 59_999), st.sampled_from(["a", "b"]),
              st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False).filter(lambda x: x == 0 or abs(x) > 1e-6))),
    min_size=1, max_size=80,
)


def stream(recs, batch_size):
    df = pl.DataFrame(recs, schema={"t": pl.Int64, "k": pl.String, "v": pl.Float64}, orient="row").with_row_index("i")
    flow = sl.Flow("aggs")
    # the watermark only moves at the end: every record is on time, so the oracle is a plain group-by
    win = flow.read("in", testing.rows(df)).event_time("t", timedelta(minutes=5)).key_by("k").window(
        "w", sl.Tumbling(timedelta(minutes=1)),
        n=sl.agg.count(), nv=sl.agg.count("v"), s=sl.agg.sum("v"), lo=sl.agg.min("v"), hi=sl.agg.max("v"),
        mean=sl.agg.mean("v"), var=sl.agg.variance("v"), sd=sl.agg.stddev("v"), pvar=sl.agg.variance("v", ddof=0),
        first=sl.agg.first("i"), last=sl.agg.last("i"), distinct=sl.agg.count_distinct("v"),
        values=sl.agg.collect_list("i"), p50=sl.agg.percentile("v", 0.5), p99=sl.agg.percentile("v", 0.99, relative_accuracy=0.01))
    out = testing.collect(win)
    sl.run(flow, batch_size=batch_size)
    return df, out.frame().sort("k")


def close(a, b, rel):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


@pytest.mark.slow  # ~30 s
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=rows)
def test_aggregates_match_duckdb(recs):
    for batch_size in (1, 5, 1000):
        df, got = stream(recs, batch_size)
        con = duckdb.connect()
        con.register("r", df.to_arrow())
        exp = con.sql("""
            select k, count(*) n, count(v) nv, sum(v) s, min(v) lo, max(v) hi, avg(v) mean, var_samp(v) var,
                   stddev_samp(v) sd, var_pop(v) pvar,
                   arg_min(i, (t, i)) "first", arg_max(i, (t, i)) "last", count(distinct v) "distinct",
                   list(i order by t, i) "values",
                   list_sort(list(v) filter (v is not null)) sorted_v
            from r group by k order by k""").pl()
        assert got["k"].to_list() == exp["k"].to_list()
        for g, e in zip(got.to_dicts(), exp.to_dicts(), strict=True):
            assert (g["n"], g["nv"], g["first"], g["last"], g["distinct"]) == (e["n"], e["nv"], e["first"], e["last"], e["distinct"])
            assert g["values"] == e["values"]
            scale = max([abs(x) for x in e["sorted_v"] or []] + [1.0])
            for col in ("s", "lo", "hi", "mean"):
                assert close(g[col], e[col], 1e-9) or abs(g[col] - e[col]) <= 1e-9 * scale * max(e["nv"], 1), col
            for col in ("var", "sd", "pvar"):
                if e[col] is None:
                    assert g[col] is None, col
                else:
                    assert abs(g[col] - e[col]) <= 1e-7 * max(abs(e[col]), scale * scale if col != "sd" else scale), col
            values = e["sorted_v"] or []
            for col, q, acc in (("p50", 0.5, 0.005), ("p99", 0.99, 0.01)):
                if not values:
                    assert g[col] is None
                    continue
                exact = values[max(math.ceil(q * len(values)), 1) - 1]  # nearest rank
                assert abs(g[col] - exact) <= acc * abs(exact) + 1e-9, (col, g[col], exact)


magnitudes = st.one_of(
    st.just(0.0), st.just(-0.0), st.just(math.inf), st.just(-math.inf),
    st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False, allow_subnormal=False),  # subnormals count as 0
    st.floats(-1e-300, 1e-300, allow_nan=False, allow_subnormal=False),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 2)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(values=[0.0, 1.0, -2.5], q=0.5, batch_size=7)
@given(values=st.lists(magnitudes, min_size=1, max_size=60),
       q=st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0]), batch_size=st.sampled_from([1, 7, 1000]))
def test_percentile_of_a_struct_field_with_zeros_and_negatives(values, q, batch_size):
    # through a window on a struct field, as users write it: `metrics.value`
    rows = [{"ts": i, "metrics": {"value": v}} for i, v in enumerate(values)]
    flow = sl.Flow("p")
    win = flow.read("in", testing.rows(rows)).event_time("ts", timedelta(0)).window(
        "w", sl.Tumbling(timedelta(minutes=1)), p=sl.agg.percentile("metrics.value", q))
    out = testing.collect(win)
    sl.run(flow, batch_size=batch_size)
    got = out.frame()["p"][0]
    con = duckdb.connect()
    con.register("r", pl.DataFrame({"v": values}).to_arrow())
    exact = float(np.quantile(np.array(values), q, method="inverted_cdf"))  # nearest rank
    assert con.sql(f"select quantile_disc(v, {q}) from r").fetchall()[0][0] == exact  # DuckDB agrees
    assert got == exact or abs(got - exact) <= 0.005 * abs(exact) * (1 + 1e-9), (got, exact)
