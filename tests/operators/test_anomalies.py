"""z-score anomaly detection against DuckDB window functions, at several batch sizes."""

from __future__ import annotations

import random
from datetime import timedelta

import duckdb
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

DELAY = 4_000
rows = st.lists(st.tuples(st.integers(0, 120).map(lambda s: s * 1000), st.sampled_from(["a", "b"]),
                          st.one_of(st.none(), st.integers(0, 100).map(float))), min_size=1, max_size=80)


def run(recs, batch_size, window_ms=20_000, min_count=3):
    flow = sl.Flow("z")
    df = pl.DataFrame(recs, schema={"t": pl.Int64, "k": pl.String, "v": pl.Float64}, orient="row").with_row_index("i")
    scored = flow.read("in", testing.rows(df)).event_time("t", timedelta(milliseconds=DELAY)).key_by("k").detect_anomalies(
        "z", "v", window=timedelta(milliseconds=window_ms), threshold=1.5, min_count=min_count)
    out, late = testing.collect(scored), testing.collect(scored.late)
    sl.run(flow, batch_size=batch_size)
    return df, out.frame(), late.frame()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=rows, seed=st.integers(0, 100))
def test_zscores_equal_duckdb(recs, seed):
    rng = random.Random(seed)
    recs = sorted(recs, key=lambda r: r[0] + rng.uniform(0, DELAY - 1))  # disorder within the delay: none late
    first = None
    for batch_size in (1, 5, 1000):
        df, out, late = run(recs, batch_size)
        assert late.height == 0
        con = duckdb.connect()
        con.register("r", df.to_arrow())
        exp = con.sql("""
            select i, avg(v) over w as mean, stddev_samp(v) over w as sd, count(v) over w as n
            from r window w as (partition by k order by t range between 20000 preceding and 1 preceding)
        """).pl().sort("i")
        got = out.sort("i")
        assert got["i"].to_list() == exp["i"].to_list()
        for g, e, v in zip(got.iter_rows(named=True), exp.iter_rows(named=True), df.sort("i")["v"], strict=True):
            for a, b in ((g["mean"], e["mean"]), (g["stddev"], e["sd"])):
                assert (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-9 * max(1, abs(b))), (g, e)
            z = None if e["sd"] in (None, 0) or v is None else (v - e["mean"]) / e["sd"]
            assert g["is_anomaly"] == (z is not None and e["n"] >= 3 and abs(z) > 1.5), (g, e)
        if first is None:
            first = out
        else:
            assert out.select("i", "is_anomaly").equals(first.select("i", "is_anomaly"))


def test_a_spike_is_flagged():
    recs = [(i * 1000, "api", 10.0 + (i % 3)) for i in range(30)] + [(30_000, "api", 95.0)]
    _, out, _ = run(recs, 7, window_ms=60_000)
    assert out.filter(pl.col("is_anomaly"))["v"].to_list() == [95.0]
