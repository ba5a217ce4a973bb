"""A compacted topic read as a changelog (upsert-kafka semantics): values are upserts (+U), tombstones are
deletes (-D) with the key from the message key; written back out, deletes become tombstones again; a
temporal join over it sees deleted rows as gone."""

from __future__ import annotations

import uuid
from datetime import timedelta

import orjson
import polars as pl
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import sluice as sl
from kafka_util import create_topic
from sluice import testing

pytestmark = pytest.mark.slow


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, dict | None, int]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for key, value, ts in messages:
        p.produce(topic, key=key, value=None if value is None else orjson.dumps(value), partition=0, timestamp=ts)
    assert p.flush(30) == 0


def raw(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.partition.eof": True,
                  "isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    while True:
        m = c.poll(10)
        assert m is not None, "timed out"
        if m.error():
            break
        out.append((m.key(), m.value()))
    c.close()
    return out


@pytest.mark.parametrize("json_keys", [False, True])
def test_a_compacted_topic_reads_as_a_changelog_and_writes_back_tombstones(kafka_bootstrap: str, json_keys: bool) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out = f"cl-in-{tag}", f"cl-out-{tag}"
    create_topic(kafka_bootstrap, src, 1)
    create_topic(kafka_bootstrap, out, 1)

    def key(i: int) -> bytes:
        return orjson.dumps({"id": i}) if json_keys else str(i).encode()

    produce(kafka_bootstrap, src, [(key(1), {"id": 1, "price": 10, "ts": 1000}, 1000),
                                   (key(2), {"id": 2, "price": 20, "ts": 2000}, 2000),
                                   (key(1), None, 3000),
                                   (key(2), {"id": 2, "price": 25, "ts": 4000}, 4000)])
    flow = sl.Flow("cl")
    prices = flow.read("prices", sl.KafkaSource(src, kafka_bootstrap, key="id", changelog=True, metadata=True,
                                                key_format=sl.Json() if json_keys else None),
                       schema={"id": int, "price": int, "ts": int})
    seen = testing.collect(prices)
    prices.select("id", "price", "ts", "_op").write("out", sl.KafkaSink(out, kafka_bootstrap, key="id"))
    sl.run(flow)
    got = seen.frame().select("id", "price", "_op", "kafka_timestamp")
    assert got.rows() == [(1, 10, "+U", 1000), (2, 20, "+U", 2000), (1, None, "-D", 3000), (2, 25, "+U", 4000)]
    written = raw(kafka_bootstrap, out)
    assert [(k, None if v is None else orjson.loads(v)["price"]) for k, v in written] == \
        [(b"1", 10), (b"2", 20), (b"1", None), (b"2", 25)]


def test_temporal_join_over_a_changelog_topic(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:6]
    src = f"cl-prices-{tag}"
    create_topic(kafka_bootstrap, src, 1)
    produce(kafka_bootstrap, src, [(b"a", {"id": "a", "price": 10, "ts": 1000}, 1000),
                                   (b"a", None, 5000),
                                   (b"a", {"id": "a", "price": 30, "ts": 9000}, 9000),
                                   (b"zz", {"id": "zz", "price": 1, "ts": 60_000}, 60_000)])
    flow = sl.Flow("tj")
    prices = (flow.read("prices", sl.KafkaSource(src, kafka_bootstrap, key="id", changelog=True, metadata=True),
                        schema={"id": str, "price": int, "ts": int})
              .with_columns(at=pl.coalesce("ts", "kafka_timestamp"))  # a tombstone's time: its message's
              .event_time("at", timedelta(0)))
    orders = (flow.read("orders", testing.rows([{"oid": i, "id": "a", "ts": t} for i, t in enumerate([2000, 6000, 10_000])]))
              .event_time("ts", timedelta(0)))
    out = testing.collect(orders.temporal_join("priced", prices, by="id"))
    sl.run(flow)
    assert out.frame().sort("oid").select("oid", "price").rows() == [(0, 10), (1, None), (2, 30)]
