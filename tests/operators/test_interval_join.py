"""Interval join against DuckDB on out-of-order input, at several batch sizes; late records set aside."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle
import sluice as sl
from sluice import testing
from workloads import file_flow

DELAY = 8_000
side = st.lists(st.tuples(st.integers(0, 60).map(lambda s: s * 1000), st.sampled_from(["a", "b"])), max_size=40)


def shuffle_within_delay(rows: list[tuple[int, str]], seed: int) -> list[tuple[int, str]]:
    """Arrival order = time order disturbed by at most DELAY, so no record is late."""
    rng = random.Random(seed)
    keyed = sorted(rows, key=lambda r: r[0] + rng.uniform(0, DELAY - 1))
    return keyed


def run(left, right, lower, upper, how, batch_size):
    flow = sl.Flow("ij")
    lf = pl.DataFrame(left, schema=["t", "k"], orient="row").with_row_index("lid").with_columns(pl.col("lid").cast(pl.Int64))
    rf = pl.DataFrame(right, schema=["t", "k"], orient="row").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    l_s = flow.read("l", testing.rows(lf)).event_time("t", timedelta(milliseconds=DELAY))
    r_s = flow.read("r", testing.rows(rf)).event_time("t", timedelta(milliseconds=DELAY))
    joined = l_s.interval_join("j", r_s, by="k", lower=timedelta(milliseconds=lower), upper=timedelta(milliseconds=upper), how=how)
    out, late = testing.collect(joined), testing.collect(joined.late)
    sl.run(flow, batch_size=batch_size)
    return lf, rf, out.frame(), late.frame()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(left=side, right=side, bounds=st.sampled_from([(-5000, 5000), (0, 10_000), (-10_000, -2000), (0, 0)]),
       how=st.sampled_from(["inner", "left"]), seed=st.integers(0, 1000))
def test_interval_join_equals_duckdb(left, right, bounds, how, seed):
    lower, upper = bounds
    left, right = shuffle_within_delay(left, seed), shuffle_within_delay(right, seed + 1)
    for batch_size in (1, 4, 1000):
        lf, rf, got, late = run(left, right, lower, upper, how, batch_size)
        assert late.height == 0
        con = duckdb.connect()
        con.register("l", lf.to_arrow())
        con.register("r", rf.to_arrow())
        join = "left join" if how == "left" else "join"
        expected = con.sql(f"""select l.lid, r.rid from l {join} r on l.k = r.k
                               and r.t between l.t + {lower} and l.t + {upper}""").pl()
        if got.height and "rid" not in got.columns:  # nothing ever arrived on the right: no right columns
            got = got.with_columns(pl.lit(None, pl.Int64).alias("rid"))
        want = sorted(expected.rows(), key=lambda x: (x[0], -1 if x[1] is None else x[1]))
        have = sorted(got.select("lid", "rid").rows(), key=lambda x: (x[0], -1 if x[1] is None else x[1])) if got.height else []
        assert have == want, (batch_size, have, want)


def test_records_behind_the_watermark_are_late():
    flow = sl.Flow("ij")
    l_s = flow.read("l", testing.rows({"t": [10_000, 20_000, 1_000], "k": ["a", "a", "a"]})).event_time("t", timedelta(0))
    r_s = flow.read("r", testing.rows({"t": [10_500, 20_500], "k": ["a", "a"]})).event_time("t", timedelta(0))
    joined = l_s.interval_join("j", r_s, by="k", lower=timedelta(0), upper=timedelta(seconds=1))
    out, late = testing.collect(joined), testing.collect(joined.late)
    sl.run(flow, batch_size=1)
    assert sorted(out.frame().select("t", "t_right").rows()) == [(10_000, 10_500), (20_000, 20_500)]
    assert late.frame()["t"].to_list() == [1_000]


def test_right_records_are_kept_while_a_later_left_record_may_still_need_them():
    """With a negative lower bound, a right record older than the watermark can still pair with a left
    record that arrives later (on time): r at 6000 must survive until W passes 6000 + 5000."""
    flow = sl.Flow("ij")
    l_s = flow.read("l", testing.rows({"t": [14_000, 14_500, 10_000], "k": ["b", "b", "a"]})).event_time("t", timedelta(seconds=5))
    r_s = flow.read("r", testing.rows({"t": [6_000, 20_000], "k": ["a", "b"]})).event_time("t", timedelta(seconds=5))
    joined = l_s.interval_join("j", r_s, by="k", lower=timedelta(seconds=-5), upper=timedelta(0))
    out, late = testing.collect(joined), testing.collect(joined.late)
    sl.run(flow, batch_size=1)  # arrivals: l14000, r6000, l14500, r20000 (W = 9500), l10000
    assert late.frame().height == 0
    assert out.frame().select("t", "t_right").rows() == [(10_000, 6_000)]


@pytest.mark.parametrize("batch_size", [100, 65536])
def test_w5_equals_duckdb(events_medium: Path, batch_size: int, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    sl.run(file_flow("w5", events_medium, out), batch_size=batch_size)
    got = pl.read_ndjson(out).sort("search_id", "click_id")
    expected = oracle.w5(str(events_medium)).sort("search_id", "click_id")
    assert expected.height > 100
    assert got.equals(expected.cast(got.schema))
