"""The Spark job as written, end to end: 5-minute windows sliding by 1 minute, count, average, max and p99
per event type, emitted as deltas and MERGEd into a Delta table and into PostgreSQL with accumulating
expressions — at batch sizes 1, 7 and 65536, with epochs of one or many batches (an epoch then holds
several rows of one window, which the sinks apply in turn). The tables end equal to DuckDB's batch
computation over the records each window holds (late records within the lateness included, those
beyond it not)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from test_window_deltas import DELAY, MIN, batch_result, check, events

import sluice as sl
from sluice import testing

SIZE, SLIDE, LATENESS = 5 * MIN, MIN, 2 * MIN

DELTA_MERGE = sl.DeltaMerge(on=["event_type", "window_start"], update={
    "event_count": "target.event_count + source.event_count",
    "avg": "(target.avg * target.event_count + source.avg * source.event_count)"
           " / (target.event_count + source.event_count)",
    "max": "GREATEST(target.max, source.max)",
    "p99": "source.p99"})

PG_MERGE = {"event_count": "t.event_count + excluded.event_count",
            "avg": "(t.avg * t.event_count + excluded.avg * excluded.event_count) / (t.event_count + excluded.event_count)",
            "max": "GREATEST(t.max, excluded.max)",
            "p99": "excluded.p99"}


def flow_into(df: pl.DataFrame, sink: object, emit: sl.Emit) -> sl.Flow:
    flow = sl.Flow("spark_job")
    w = flow.read("events", testing.rows(df)).event_time("timestamp", timedelta(milliseconds=DELAY)).key_by(
        "event_type").window(
        "per_type", sl.Sliding(timedelta(minutes=5), timedelta(minutes=1)), emit=emit,
        allowed_lateness=timedelta(minutes=2),
        event_count=sl.agg.count(), avg=sl.agg.mean("response_time"), max=sl.agg.max("response_time"),
        p99=sl.agg.percentile("response_time", 0.99))
    w.write("table", sink)
    w.late.write("late", sl.CollectSink())
    return flow


CASES = [(1, 0.0), (7, 0.0), (7, 0.05), (65536, 0.0)]  # (batch size, checkpoint interval: 0 = an epoch per batch)


@pytest.mark.parametrize(("batch_size", "interval"), CASES)
def test_delta_table_merged_from_deltas_equals_the_batch_computation(tmp_path: Path, batch_size: int,
                                                                    interval: float) -> None:
    df = events(500, disorder_ms=150_000, seed=11)
    path = tmp_path / "windows"
    flow = flow_into(df, sl.DeltaSink(path, mode="merge", merge=DELTA_MERGE), sl.Emit.each_batch(updates="deltas"))
    sl.run(flow, checkpoint_dir=tmp_path / "ck", checkpoint_interval=interval, batch_size=batch_size)
    table = pl.read_delta(str(path)).sort("event_type", "window_start")
    check(table, batch_result(df, SIZE, SLIDE, LATENESS), f"batch size {batch_size}")


def test_delta_table_without_checkpoints_one_commit_of_every_delta(tmp_path: Path) -> None:
    df = events(300, disorder_ms=150_000, seed=5)
    path = tmp_path / "windows"
    flow = flow_into(df, sl.DeltaSink(path, mode="merge", merge=DELTA_MERGE),
                     sl.Emit.every(timedelta(milliseconds=1), updates="deltas"))
    sl.run(flow, batch_size=3)
    table = pl.read_delta(str(path)).sort("event_type", "window_start")
    check(table, batch_result(df, SIZE, SLIDE, LATENESS), "one commit")


@pytest.mark.slow  # needs the PostgreSQL server
@pytest.mark.parametrize(("batch_size", "interval"), CASES)
def test_postgres_table_merged_from_deltas_equals_the_batch_computation(postgres_dsn: str, tmp_path: Path,
                                                                       batch_size: int, interval: float) -> None:
    from pg_util import fresh_database, table

    dsn = fresh_database(postgres_dsn)
    df = events(500, disorder_ms=150_000, seed=11)
    sink = sl.PostgresSink("windows", dsn, key=["event_type", "window_start"], merge=PG_MERGE, create=True)
    flow = flow_into(df, sink, sl.Emit.each_batch(updates="deltas"))
    sl.run(flow, checkpoint_dir=tmp_path / "ck", checkpoint_interval=interval, batch_size=batch_size)
    got = table(dsn, "windows", "event_type, window_start")
    check(got, batch_result(df, SIZE, SLIDE, LATENESS), f"batch size {batch_size}")
