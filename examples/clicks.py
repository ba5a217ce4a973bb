"""Clicks per user per minute, from a JSON Lines file: the README's first example.

    sluice run examples/clicks.py
"""

from datetime import timedelta

import sluice as sl

flow = sl.Flow("clicks_per_minute")
events = flow.read(
    "events",
    sl.GeneratorSource("events", n=200_000),  # or sl.JsonLinesSource("events.jsonl")
    schema={"timestamp": int, "user_id": str, "event_type": str, "metrics": {"response_time": float}},
)
per_user = (
    events.filter(sl.col("event_type") == "click")
    .event_time("timestamp", watermark=timedelta(seconds=5))
    .key_by("user_id")
    .window("clicks", sl.Tumbling(timedelta(minutes=1)),
            clicks=sl.agg.count(), p99_ms=sl.agg.percentile("metrics.response_time", 0.99))
)
per_user.write("to_parquet", sl.ParquetSink("out/clicks", partition_by="hour", time_column="window_start"))
per_user.late.write("late", sl.JsonLinesSink("out/clicks-late.jsonl"))
