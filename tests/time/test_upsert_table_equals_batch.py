"""The job users bring from Spark — 5-minute windows every minute, count, average and p99 of the response
time per event type, upserted into a table — run on Sluice with updates: a table that applies the
window's changelog (a dict keyed by (event_type, window_start): +I inserts, +U replaces) ends equal to a
DuckDB group-by over the whole input, late records within the allowed lateness included, at every batch
size. Each row is the window's full current result, so the table *replaces* a row (a MERGE that adds a
row's count to the one already there would count twice)."""

from __future__ import annotations

import random
from datetime import timedelta

import duckdb
import polars as pl
import pytest

import sluice as sl
from sluice import testing

MIN = 60_000
TYPES = ["click", "view", "error", "buy"]


def events(n: int, disorder_ms: int, seed: int = 7) -> pl.DataFrame:
    """n events over ~n·2 s, each up to `disorder_ms` behind the arrival order's clock."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        t = 1_767_225_600_000 + i * 2000 - rnd.randrange(0, disorder_ms + 1, 100)
        rows.append((t, rnd.choice(TYPES), round(rnd.lognormvariate(3, 1), 3)))
    return pl.DataFrame(rows, schema=["timestamp", "event_type", "response_time"], orient="row")


def run(df: pl.DataFrame, emit: sl.Emit, lateness: timedelta, batch_size: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    flow = sl.Flow("spark_job")
    w = flow.read("events", testing.rows(df)).event_time("timestamp", timedelta(seconds=5)).key_by("event_type").window(
        "per_type", sl.Sliding(timedelta(minutes=5), timedelta(minutes=1)), emit=emit, allowed_lateness=lateness,
        event_count=sl.agg.count(), avg_response_time=sl.agg.mean("response_time"),
        p99_response_time=sl.agg.percentile("response_time", 0.99))
    assert flow.plan_so_far().changelog_key(w.ref) == ("event_type", "window_start")
    out, late = testing.collect(w), testing.collect(w.late)
    sl.run(flow, batch_size=batch_size)
    return out.frame(), late.frame()


def apply_upserts(changelog: pl.DataFrame) -> pl.DataFrame:
    table: dict[tuple[str, int], dict] = {}
    for row in changelog.iter_rows(named=True):
        key = (row["event_type"], row["window_start"])
        assert row["_op"] == ("+U" if key in table else "+I")
        table[key] = row
    return pl.DataFrame(list(table.values())).drop("_op", "is_final").sort("event_type", "window_start")


def batch_result(df: pl.DataFrame) -> pl.DataFrame:
    """Count, mean and the exact nearest-rank p99 per event type and window, over the whole input."""
    con = duckdb.connect()
    con.register("e", df.to_arrow())
    return con.sql(f"""
        with w as (select e.*, s.start from e, range(0, 5) r(j),
                   lateral (select (timestamp // {MIN} - r.j) * {MIN} as start) s)
        select event_type, start as window_start, start + {5 * MIN} as window_end, count(*)::bigint as event_count,
               avg(response_time) as avg_response_time,
               list_sort(list(response_time))[greatest(ceil(count(*) * 0.99), 1)::bigint] as exact_p99
        from w group by all order by event_type, window_start""").pl()


@pytest.mark.parametrize("emit", [sl.Emit.on_close(), sl.Emit.each_batch(), sl.Emit.every(timedelta(milliseconds=1))],
                         ids=["on_close", "each_batch", "every"])
def test_upserted_table_equals_a_batch_group_by(emit: sl.Emit) -> None:
    # up to 2 minutes out of order behind a 5-second watermark: many records arrive after their window
    # ended; 3 minutes of allowed lateness take them all
    df = events(600, disorder_ms=2 * MIN)
    expected = batch_result(df)
    for batch_size in (1, 7, 1000):
        out, late = run(df, emit, timedelta(minutes=3), batch_size)
        assert late.height == 0
        assert out.filter(~pl.col("is_final")).height > 0  # there were updates
        table = apply_upserts(out)
        assert table.select("event_type", "window_start", "window_end", "event_count").equals(
            expected.select("event_type", "window_start", "window_end", "event_count")), batch_size
        assert ((table["avg_response_time"] - expected["avg_response_time"]).abs()
                <= 1e-9 * expected["avg_response_time"].abs()).all()
        # DDSketch: within its relative accuracy (0.5%) of the exact nearest-rank p99
        assert ((table["p99_response_time"] - expected["exact_p99"]).abs() <= 0.005 * expected["exact_p99"] + 1e-12).all()


def test_without_enough_lateness_the_table_misses_exactly_the_late_records() -> None:
    df = events(600, disorder_ms=2 * MIN)
    expected = None
    for batch_size in (1, 1000):
        out, late = run(df, sl.Emit.each_batch(), timedelta(seconds=20), batch_size)
        assert late.height > 0
        table = apply_upserts(out).select("event_type", "window_start", "event_count")
        # the records the table holds and the late stream's (record, window) rows make up the whole input
        missed = late.group_by(pl.col("event_type").cast(pl.String), window_start="missed_window_start").len("missed")
        whole = table.join(missed, on=["event_type", "window_start"], how="full", coalesce=True).fill_null(0)
        got = whole.select("event_type", "window_start", (pl.col("event_count") + pl.col("missed")).alias("n")).sort(
            "event_type", "window_start")
        want = batch_result(df).select("event_type", "window_start", n="event_count")
        assert got.equals(want), batch_size
        if expected is None:
            expected = table
        assert table.equals(expected)  # the same final table at every batch size
