"""The demo job: generated events → embedded log → windowed analytics → Parquet by date/hour."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

import polars as pl

import sluice as sl


def producer(log_root: Path, events: int) -> sl.Flow:
    flow = sl.Flow("produce_events")
    flow.read("generator", sl.GeneratorSource("events", n=events)).write(
        "events_topic", sl.LogSink("events", root=log_root, partitions=2, key="user_id"))
    return flow


def analytics(log_root: Path, out: Path) -> sl.Flow:
    flow = sl.Flow("realtime_analytics")
    schema = {"event_id": str, "event_type": str, "timestamp": int, "user_id": sl.Optional(str),
              "metrics": {"value": float, "response_time": float}}
    raw = flow.read("events", sl.LogSource("events", root=log_root), schema=schema, on_error="dead_letter")
    raw.dead_letters.write("dead_letters", sl.JsonLinesSink(out / "dead_letters.jsonl"))
    events = raw.event_time("timestamp", timedelta(seconds=5))

    user_stats = events.key_by("user_id").window(
        "user_minute", sl.Tumbling(timedelta(minutes=1)),
        events=sl.agg.count(), value_sum=sl.agg.sum("metrics.value"), value_avg=sl.agg.mean("metrics.value"),
        value_max=sl.agg.max("metrics.value"), event_types=sl.agg.count_distinct("event_type"))
    user_stats.write("user_minute_parquet", sl.ParquetSink(out / "user_minute", partition_by="hour", time_column="window_start"))

    by_type = events.key_by("event_type").window(
        "type_5m_sliding", sl.Sliding(timedelta(minutes=5), timedelta(minutes=1)),
        events=sl.agg.count(), avg_response_ms=sl.agg.mean("metrics.response_time"),
        p99_response_ms=sl.agg.percentile("metrics.response_time", 0.99))
    by_type.write("type_sliding_parquet", sl.ParquetSink(out / "type_sliding", partition_by="hour", time_column="window_start"))

    sessions = events.key_by("user_id").window(
        "user_sessions", sl.Session(timedelta(minutes=2)), events=sl.agg.count(),
        first_event=sl.agg.first("event_type"), last_event=sl.agg.last("event_type"))
    sessions.write("sessions_parquet", sl.ParquetSink(out / "sessions", partition_by="hour", time_column="window_start"))

    for name, stream in (("user_minute", user_stats), ("type_5m_sliding", by_type), ("user_sessions", sessions)):
        stream.late.write(f"{name}_late", sl.JsonLinesSink(out / "late" / f"{name}.jsonl"))
    return flow


def fraud(log_root: Path, out: Path) -> sl.Flow:
    """The fraud job (sluice/examples/fraud.py) over the transactions topic."""
    from sluice.examples.fraud import build

    return build(sl.LogSource("transactions", root=log_root), out)


def run_demo(directory: Path, events: int, batch_size: int) -> int:
    log_root, out = directory / "log", directory / "results"
    for d in (log_root, out):
        shutil.rmtree(d, ignore_errors=True)
    print(f"Sluice demo — {events:,} generated events through the embedded log at {log_root}")
    t0 = time.perf_counter()
    produced = sl.run(producer(log_root, events), batch_size=batch_size)
    print(f"  1. produced {produced.rows_read:,} events to topic 'events' (2 partitions, keyed by user_id) "
          f"in {produced.seconds:.2f} s")
    flow = analytics(log_root, out)
    result = sl.run(flow, batch_size=batch_size)
    rate = result.rows_read / result.seconds
    print(f"  2. analytics read {result.rows_read:,} events in {result.seconds:.2f} s ({rate:,.0f} events/s):")
    for step in ("user_minute", "type_5m_sliding", "user_sessions"):
        print(f"       {step:<16} {result.rows(step):>9,} windows, {result.rows(step, 'late'):,} late records")
    print(f"     dead letters: {result.rows('events', 'dead_letters'):,}")
    print(f"  3. results (Parquet, partitioned date=/hour=) under {out}:")
    for sub in ("user_minute", "type_sliding", "sessions"):
        files = sorted((out / sub).rglob("*.parquet"))
        rows = pl.scan_parquet(files).select(pl.len()).collect().item() if files else 0
        print(f"       {sub + '/':<16} {len(files):>3} files, {rows:,} rows")
    top = (pl.scan_parquet(sorted((out / "type_sliding").rglob("*.parquet")))
           .group_by("event_type").agg(pl.col("p99_response_ms").max().round(1).alias("worst_p99_ms"),
                                       pl.col("events").sum().alias("window_events"))
           .sort("worst_p99_ms", descending=True).head(3).collect())
    print("     slowest event types by worst 5-minute p99 response time:")
    for row in top.to_dicts():
        print(f"       {row['event_type']:<12} p99 {row['worst_p99_ms']} ms")
    transactions = max(events // 5, 1000)
    produce_tx = sl.Flow("produce_transactions")
    produce_tx.read("generator", sl.GeneratorSource("transactions", n=transactions)).write(
        "transactions_topic", sl.LogSink("transactions", root=log_root, partitions=2, key="user_id"))
    sl.run(produce_tx, batch_size=batch_size)
    fraud_out = directory / "fraud"
    shutil.rmtree(fraud_out, ignore_errors=True)
    fr = sl.run(fraud(log_root, fraud_out), batch_size=batch_size)
    print(f"  4. fraud job over {fr.rows_read:,} transactions in {fr.seconds:.2f} s: "
          f"{fr.rows('small_then_large'):,} small-then-large alerts, {fr.rows('risk', 'high_risk'):,} high-risk "
          f"scores, {fr.rows('user_5min'):,} user 5-minute windows → {fraud_out}")
    print(f"  done in {time.perf_counter() - t0:.1f} s. Read the results with e.g. "
          f"polars.read_parquet('{out}/user_minute/**/*.parquet')")
    return 0
