"""Against a real Kafka broker: load events into a topic with the Kafka sink, run w1 from it with the
Kafka source, compare with the DuckDB oracle."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

import oracle
import sluice as sl
from sluice.connectors.kafka import KafkaError, KafkaSink, KafkaSource
from workloads import build


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep it alive until the future resolves
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


@pytest.mark.parametrize("batch_size", [1000, 65536])
def test_w1_from_kafka_equals_oracle(kafka_bootstrap: str, events_medium: Path, batch_size: int, tmp_path: Path) -> None:
    topic = f"events-{batch_size}"
    create_topic(kafka_bootstrap, topic, 3)
    load = sl.Flow("load")
    load.read("file", sl.JsonLinesSource(events_medium)).write("topic", KafkaSink(topic, kafka_bootstrap, key="user_id"))
    loaded = sl.run(load)
    assert loaded.rows_read == 60_000
    out = tmp_path / "w1.jsonl"
    sl.run(build("w1", KafkaSource(topic, kafka_bootstrap), sl.JsonLinesSink(out)), batch_size=batch_size)
    expected = oracle.w1(oracle.flat_events(str(events_medium)))
    # per-user order is kept within a partition (keyed); the watermark is the minimum over the 3 partitions
    oracle.assert_frames_match(pl.read_ndjson(out), expected, ["user_id", "window_start"])


def test_missing_topic_is_a_clear_error(kafka_bootstrap: str) -> None:
    flow = sl.Flow("x")
    flow.read("src", KafkaSource("no-such-topic", kafka_bootstrap), schema={"a": int}).write("out", sl.CollectSink())
    with pytest.raises(KafkaError, match="no-such-topic"):
        sl.run(flow)


def test_resume_from_checkpointed_offsets_after_a_crash(kafka_bootstrap: str, events_medium: Path, tmp_path: Path) -> None:
    """The run dies mid-way (its sink raises), starts again with the same checkpoint directory, resumes
    from the Kafka offsets saved in the checkpoint, and writes exactly what an uninterrupted run writes."""
    from test_resume_operators import Crash, CrashingSink

    topic = "events-resume"
    create_topic(kafka_bootstrap, topic, 3)
    load = sl.Flow("load")
    load.read("file", sl.JsonLinesSource(events_medium)).write("topic", KafkaSink(topic, kafka_bootstrap, key="user_id"))
    sl.run(load)
    reference = tmp_path / "reference.jsonl"
    sl.run(build("w1", KafkaSource(topic, kafka_bootstrap), sl.JsonLinesSink(reference)), batch_size=2000)
    out, ckpt = tmp_path / "out.jsonl", tmp_path / "ck"
    Path(str(out) + ".armed").write_text("5")
    with pytest.raises(sl.SinkError) as err:  # the sink's exception, named by its step
        sl.run(build("w1", KafkaSource(topic, kafka_bootstrap), CrashingSink(out)), batch_size=2000,
               checkpoint_dir=ckpt, checkpoint_interval=0.0)
    assert isinstance(err.value.__cause__, Crash)
    sl.run(build("w1", KafkaSource(topic, kafka_bootstrap), CrashingSink(out)), batch_size=2000,
           checkpoint_dir=ckpt, checkpoint_interval=0.0)
    assert out.read_bytes() == reference.read_bytes()


def test_delivery_reports_are_counted_and_shown(kafka_bootstrap: str) -> None:
    create_topic(kafka_bootstrap, "delivered", 2)
    flow = sl.Flow("send")
    flow.read("rows", sl.MemorySource([{"k": str(i % 5), "v": i} for i in range(1000)])).write(
        "out", KafkaSink("delivered", kafka_bootstrap, key="k"))
    result = sl.run(flow)
    assert result.stats["out"].metrics == {"produced": 1000, "delivered": 1000, "failed": 0}
    assert "delivered 1,000" in result.summary()
