"""Windows that emit deltas (`Emit(updates="deltas")`), applied by the MERGE users bring from Spark:

    event_count = target.event_count + source.event_count
    avg         = (target.avg * target.event_count + source.avg * source.event_count)
                  / (target.event_count + source.event_count)
    max         = GREATEST(target.max, source.max)
    p99         = source.p99

The table ends equal to a DuckDB batch computation over the records each window holds, on out-of-order
input with late records inside and outside the allowed lateness, in every emit mode and at batch sizes
1, 7 and 65536. Which (record, window) pairs are late is computed here from the watermark's definition
(W_prev = max of the earlier times − delay; late when end + lateness ≤ W_prev), not taken from the step."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_upsert_table_equals_batch import events as upsert_events

import sluice as sl
from sluice import testing

MIN = 60_000
DELAY = 5_000
TYPES = ["click", "view", "error", "buy"]


def events(n: int, disorder_ms: int, seed: int = 7) -> pl.DataFrame:
    """test_upsert_table_equals_batch's events, numbered in arrival order (`id`)."""
    df = upsert_events(n, disorder_ms, seed)
    return df.select(pl.int_range(df.height, dtype=pl.Int64).alias("id"), pl.all())


def run(df: pl.DataFrame, emit: sl.Emit, size: int, slide: int, lateness: int, batch_size: int,
        ) -> tuple[pl.DataFrame, pl.DataFrame]:
    flow = sl.Flow("spark_job")
    w = flow.read("events", testing.rows(df)).event_time("timestamp", timedelta(milliseconds=DELAY)).key_by(
        "event_type").window(
        "per_type", sl.Sliding(timedelta(milliseconds=size), timedelta(milliseconds=slide)), emit=emit,
        allowed_lateness=timedelta(milliseconds=lateness),
        event_count=sl.agg.count(), avg=sl.agg.mean("response_time"), max=sl.agg.max("response_time"),
        p99=sl.agg.percentile("response_time", 0.99))
    if emit.deltas:
        assert flow.plan_so_far().changelog_key(w.ref) is None  # increments, not a changelog
    out, late = testing.collect(w), testing.collect(w.late)
    sl.run(flow, batch_size=batch_size)
    return out.frame(), late.frame()


def merge(deltas: pl.DataFrame) -> pl.DataFrame:
    """Apply the rows one by one as the Spark job's MERGE does (insert when not matched)."""
    table: dict[tuple[str, int], dict[str, Any]] = {}
    for row in deltas.iter_rows(named=True):
        key = (row["event_type"], row["window_start"])
        assert row["event_count"] > 0  # a row only when records came in
        t = table.get(key)
        if t is None:
            table[key] = dict(row)
            continue
        n = t["event_count"] + row["event_count"]
        t["avg"] = (t["avg"] * t["event_count"] + row["avg"] * row["event_count"]) / n
        t["event_count"] = n
        t["max"] = max(t["max"], row["max"])
        t["p99"] = row["p99"]
    return pl.DataFrame(list(table.values())).sort("event_type", "window_start")


def held(df: pl.DataFrame, size: int, slide: int, lateness: int) -> pl.DataFrame:
    """(id, window_start) of every record and window that holds it, by the watermark's definition."""
    t = df["timestamp"].to_numpy()
    w_prev = np.concatenate([[np.iinfo(np.int64).min // 2], np.maximum.accumulate(t)[:-1] - DELAY])
    ids, starts = [], []
    for i, ti in enumerate(t):
        first = (ti - size) // slide * slide + slide
        for s in range(int(first), int(ti) + 1, slide):
            if s <= ti < s + size and not s + size + lateness <= w_prev[i]:
                ids.append(int(df["id"][i]))
                starts.append(s)
    return pl.DataFrame({"id": ids, "window_start": starts}, schema={"id": pl.Int64, "window_start": pl.Int64})


def batch_result(df: pl.DataFrame, size: int, slide: int, lateness: int) -> pl.DataFrame:
    con = duckdb.connect()
    con.register("e", df.to_arrow())
    con.register("h", held(df, size, slide, lateness).to_arrow())
    return con.sql(f"""
        select event_type, h.window_start, h.window_start + {size} as window_end, count(*)::bigint as event_count,
               avg(response_time) as avg, max(response_time) as max,
               list_sort(list(response_time))[greatest(ceil(count(*) * 0.99), 1)::bigint] as exact_p99
        from e join h using (id) group by all order by event_type, window_start""").pl()


def check(table: pl.DataFrame, expected: pl.DataFrame, what: str) -> None:
    keys = ["event_type", "window_start", "window_end", "event_count", "max"]
    assert table.select(keys).equals(expected.select(keys)), what
    assert ((table["avg"] - expected["avg"]).abs() <= 1e-9 * expected["avg"].abs()).all(), what
    # DDSketch: within its relative accuracy (0.5%) of the exact nearest-rank p99: the last row's is the whole window's
    assert ((table["p99"] - expected["exact_p99"]).abs() <= 0.005 * expected["exact_p99"] + 1e-12).all(), what


MODES = {"each_batch": sl.Emit.each_batch(updates="deltas"),
         "every": sl.Emit.every(timedelta(milliseconds=1), updates="deltas"),
         "on_close": sl.Emit.on_close(updates="deltas")}


@pytest.mark.parametrize("mode", list(MODES))
def test_accumulating_merge_of_deltas_equals_a_batch_computation(mode: str) -> None:
    # up to 2.5 minutes out of order behind a 5-second watermark, 2 minutes of lateness: many records
    # update windows after they ended, some come too late even for that
    df = events(700, disorder_ms=150_000)
    size, slide, lateness = 5 * MIN, MIN, 2 * MIN
    expected = batch_result(df, size, slide, lateness)
    for batch_size in (1, 7, 65536):
        out, late = run(df, MODES[mode], size, slide, lateness, batch_size)
        assert late.height > 0, "no record came later than the lateness: the test input is too tame"
        if batch_size < df.height:  # (one batch: one emission round)
            assert out.select("event_type", "window_start").is_duplicated().any(), "no window got a second row"
        assert "_op" not in out.columns and "is_final" not in out.columns
        check(merge(out), expected, f"{mode}, batch size {batch_size}")


def test_deltas_count_each_record_once_per_window_and_replaying_full_rows_would_not() -> None:
    df = events(300, disorder_ms=100_000, seed=3)
    size, slide, lateness = 5 * MIN, MIN, 2 * MIN
    deltas, _ = run(df, MODES["each_batch"], size, slide, lateness, 1)
    full, _ = run(df, sl.Emit.each_batch(), size, slide, lateness, 1)
    want = held(df, size, slide, lateness).height
    assert deltas["event_count"].sum() == want
    assert full["event_count"].sum() > want  # the accumulating MERGE of full rows double-counts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    times=st.lists(st.integers(0, 40), min_size=1, max_size=60),
    types=st.lists(st.sampled_from(["a", "b"]), min_size=60, max_size=60),
    shape=st.sampled_from([(4, 1), (3, 3), (6, 2), (5, 5)]),
    lateness=st.integers(0, 8),
    mode=st.sampled_from(list(MODES)),
    batch_size=st.sampled_from([1, 2, 3, 7, 65536]),
)
def test_property_any_input_any_split(times: list[int], types: list[str], shape: tuple[int, int], lateness: int,
                                      mode: str, batch_size: int) -> None:
    unit = 1000
    df = pl.DataFrame({"id": list(range(len(times))), "timestamp": [t * unit for t in times],
                       "event_type": types[:len(times)],
                       "response_time": [float((i * 37) % 11 + 1) for i in range(len(times))]})
    size, slide, lateness_ms = shape[0] * unit, shape[1] * unit, lateness * unit
    out, _ = run(df, MODES[mode], size, slide, lateness_ms, batch_size)
    expected = batch_result(df, size, slide, lateness_ms)
    if expected.height == 0:
        assert out.height == 0
        return
    check(merge(out), expected, f"{mode}, batch size {batch_size}")


def test_updates_is_checked_and_part_of_the_state_fingerprint() -> None:
    with pytest.raises(sl.PlanError, match=r"updates must be 'full'.*or 'deltas'"):
        sl.Emit.each_batch(updates="delta")

    def step(emit: sl.Emit) -> Any:
        flow = sl.Flow("f")
        w = flow.read("in", testing.rows([{"t": 0, "k": "a"}])).event_time("t", timedelta(0)).key_by("k").window(
            "w", sl.Tumbling(timedelta(minutes=1)), emit=emit, allowed_lateness=timedelta(minutes=1), n=sl.agg.count())
        return next(s for s in flow.plan_so_far().steps if s.name == w.ref.step)

    full, deltas = step(sl.Emit.on_close()), step(sl.Emit.on_close(updates="deltas"))
    assert full.state_fields() != deltas.state_fields()  # a checkpoint of one is refused by the other
    assert deltas.emits_deltas and not full.emits_deltas
