"""Kafka message values that start with a UTF-8 byte order mark (as .NET and Windows producers write) are
read as without it, like Jackson (Kafka's JsonConverter) and Python's json.loads of bytes read them;
every other bad value is dead-lettered once, at its offset, with its raw bytes as sent. The values are
made by tests/test_poison_fuzz.py's generator; read by sl.run's KafkaSource and by the Kafka runtime."""

from __future__ import annotations

import uuid

from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings

import sluice as sl
from kafka_util import create_topic
from sluice import testing
from test_poison_fuzz import BOM, SCHEMA, check_messages, message_values


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 16 << 20})
    for v in values:
        producer.produce(topic, v, partition=0)
    assert producer.flush(30) == 0


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=message_values())
def test_kafka_values_with_a_byte_order_mark_are_read_as_without_it(
        kafka_bootstrap: str, data: tuple[list[bytes], list[dict | None]]) -> None:
    values, goods = data
    topic = f"bom-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 1, topic_config={"max.message.bytes": str(16 << 20)})
    produce(kafka_bootstrap, topic, values)
    flow = sl.Flow("bom")
    src = flow.read("in", sl.KafkaSource(topic, kafka_bootstrap), schema=SCHEMA, on_error="dead_letter")
    out, dead = testing.collect(src), testing.collect(src.dead_letters)
    sl.run(flow, batch_size=7)
    check_messages(values, goods, out.frame().drop("kafka_offset", strict=False), dead.frame(),
                   f"kafka:{topic}/0 offset")


def test_kafka_runtime_reads_values_with_a_byte_order_mark(kafka_bootstrap: str) -> None:
    """Under the Kafka runtime (run_worker): a marked good value is output, a marked bad one dead-lettered
    to its topic with its reason, the mark kept in its raw bytes."""
    tag = uuid.uuid4().hex[:6]
    src_topic, out_topic, dlq = f"bomrt-in-{tag}", f"bomrt-out-{tag}", f"bomrt-dlq-{tag}"
    for t in (src_topic, out_topic, dlq):
        create_topic(kafka_bootstrap, t, 1)
    values = [BOM + b'{"id": 0, "name": "a", "v": 1.5}', b'{"id": 1, "name": "b", "v": 2.5}',
              BOM + b'{"id": 2, "name": "c", "v": 3.5', BOM + b" ", BOM + b'{"id": 4, "name": "e", "v": 4.5}']
    produce(kafka_bootstrap, src_topic, values)
    flow = sl.Flow("bomrt")
    rows = flow.read("in", sl.KafkaSource(src_topic, kafka_bootstrap), schema=SCHEMA, on_error="dead_letter")
    rows.write("out", sl.KafkaSink(out_topic, kafka_bootstrap))
    rows.dead_letters.write("dlq", sl.KafkaSink(dlq, kafka_bootstrap))
    sl.run_worker(flow, sl.KafkaRuntime(app_id=f"bomrt-{tag}", bootstrap=kafka_bootstrap, until_end=True))
    from kafka_util import frame, read_committed

    got = frame(read_committed(kafka_bootstrap, out_topic)).sort("id")
    assert got.select("id", "name", "v").rows() == [(0, "a", 1.5), (1, "b", 2.5), (4, "e", 4.5)]
    dead = frame(read_committed(kafka_bootstrap, dlq)).sort("position")
    assert dead["position"].to_list() == [f"kafka:{src_topic}/0 offset 2", f"kafka:{src_topic}/0 offset 3"]
    assert dead["raw"].to_list() == [values[2].decode(), values[3].decode()]
    assert dead["reason"][0].startswith("truncated JSON"), dead["reason"][0]
    assert dead["reason"][1] == "the record is empty: a UTF-8 byte order mark (BOM) and nothing else"
