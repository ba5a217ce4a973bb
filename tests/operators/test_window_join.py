"""Window join against DuckDB on out-of-order input; late records set aside."""

from __future__ import annotations

import random
from datetime import timedelta

import duckdb
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

DELAY = 3_000
side = st.lists(st.tuples(st.integers(0, 40).map(lambda s: s * 1000), st.sampled_from(["a", "b"])), max_size=30)


def arrive(rows, seed):
    rng = random.Random(seed)
    return sorted(rows, key=lambda r: r[0] + rng.uniform(0, DELAY - 1))


def run(left, right, window, batch_size):
    flow = sl.Flow("wj")
    lf = pl.DataFrame(left, schema=["t", "k"], orient="row").with_row_index("lid").with_columns(pl.col("lid").cast(pl.Int64))
    rf = pl.DataFrame(right, schema=["t", "k"], orient="row").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    l_s = flow.read("l", testing.rows(lf)).event_time("t", timedelta(milliseconds=DELAY))
    r_s = flow.read("r", testing.rows(rf)).event_time("t", timedelta(milliseconds=DELAY))
    joined = l_s.window_join("j", r_s, by="k", window=window)
    out, late = testing.collect(joined), testing.collect(joined.late)
    sl.run(flow, batch_size=batch_size)
    return lf, rf, out.frame(), late.frame()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(left=side, right=side, sliding=st.booleans(), seed=st.integers(0, 99))
def test_window_join_equals_duckdb(left, right, sliding, seed):
    window = sl.Sliding(timedelta(seconds=10), timedelta(seconds=4)) if sliding else sl.Tumbling(timedelta(seconds=10))
    starts = "range(-8000, 48000, 4000)" if sliding else "range(-10000, 50000, 10000)"
    left, right = arrive(left, seed), arrive(right, seed + 1)
    first = None
    for batch_size in (1, 4, 1000):
        lf, rf, out, late = run(left, right, window, batch_size)
        assert late.height == 0
        con = duckdb.connect()
        con.register("l", lf.to_arrow())
        con.register("r", rf.to_arrow())
        expected = sorted(con.sql(f"""
            select l.lid, r.rid, w.s from l, r, {starts} w(s)
            where l.k = r.k and l.t >= w.s and l.t < w.s + 10000 and r.t >= w.s and r.t < w.s + 10000""").fetchall())
        have = sorted(out.select("lid", "rid", "window_start").rows()) if out.height else []
        assert have == expected, batch_size
        if first is None:
            first = out
        else:
            assert out.equals(first)


def test_late_record_misses_its_window():
    flow = sl.Flow("wj")
    l_s = flow.read("l", testing.rows({"t": [1_000, 25_000, 2_000], "k": ["a", "a", "a"]})).event_time("t", timedelta(0))
    r_s = flow.read("r", testing.rows({"t": [1_500, 26_000], "k": ["a", "a"]})).event_time("t", timedelta(0))
    joined = l_s.window_join("j", r_s, by="k", window=sl.Tumbling(timedelta(seconds=10)))
    out, late = testing.collect(joined), testing.collect(joined.late)
    sl.run(flow, batch_size=1)
    assert sorted(out.frame().select("t", "t_right").rows()) == [(1_000, 1_500), (25_000, 26_000)]
    assert late.frame()["t"].to_list() == [2_000]
