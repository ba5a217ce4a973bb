"""One setting moves a pipeline between the embedded log and Kafka: the same flow of sl.Topic streams,
run on both, writes the same results."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from kafka_util import create_topic, frame, read_committed


def flow_of_topics() -> sl.Flow:
    flow = sl.Flow("topic-minutes")
    (flow.read("events", sl.Topic("tp-events", key="user_id", partitions=2),
               schema={"timestamp": int, "user_id": str, "metrics": {"value": float}})
         .event_time("timestamp", timedelta(seconds=5)).key_by("user_id")
         .window("per_minute", sl.Tumbling(timedelta(minutes=1)), n=sl.agg.count(), total=sl.agg.sum("metrics.value"))
         .write("out", sl.Topic("tp-minutes", key="user_id", partitions=2)))
    return flow


def fill(events: Path) -> sl.Flow:
    flow = sl.Flow("fill")
    flow.read("file", sl.JsonLinesSource(events)).write("topic", sl.Topic("tp-events", key="user_id", partitions=2))
    return flow


def test_same_flow_on_the_embedded_log_and_on_kafka(kafka_bootstrap: str, events_medium: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_BROKER", str(tmp_path / "log"))
    sl.run(fill(events_medium))
    sl.run(flow_of_topics())
    on_log = sl.CollectSink()
    check = sl.Flow("check")
    check.read("r", sl.LogSource("tp-minutes", tmp_path / "log"), schema={
        "user_id": str, "window_start": int, "window_end": int, "n": int, "total": float}).write("c", on_log)
    sl.run(check)

    monkeypatch.setenv("SLUICE_BROKER", f"kafka://{kafka_bootstrap}")
    for t in ("tp-events", "tp-minutes"):
        create_topic(kafka_bootstrap, t, 2)
    sl.run(fill(events_medium))
    sl.run_worker(flow_of_topics(), sl.KafkaRuntime(app_id="tp-minutes", bootstrap=kafka_bootstrap, until_end=True))
    on_kafka = frame(read_committed(kafka_bootstrap, "tp-minutes"))

    keys = ["user_id", "window_start"]
    a = on_log.frame().select(on_kafka.columns).sort(keys)
    b = on_kafka.sort(keys)
    assert a.height > 1000 and a.drop("total").equals(b.drop("total"))
    assert ((a["total"] - b["total"]).abs() <= 1e-9 * b["total"].abs().clip(lower_bound=1)).all()
    assert pl.Series(a["n"]).sum() == 60_000
