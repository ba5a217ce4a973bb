"""Keys land where the Java client puts them: the sink's partitioner and the repartition topic's are
murmur2 (positive, modulo the partition count), checked against the real KafkaProducer of the Kafka
release the test broker runs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import polars as pl
import pytest
from confluent_kafka import Consumer, TopicPartition

import sluice as sl
from kafka_util import create_topic
from sluice.runtime.repartition import destinations

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 7
KEYS = ([f"user-{i}" for i in range(200)] + [f"ключ-{i}" for i in range(50)] + [f"k{'x' * n}" for n in range(40)]
        + ["", "a", "ab", "abc", "abcd", "😀", "s p a c e"])


def kafka_libs() -> Path:
    version = re.search(r"^VERSION=(\S+)", (ROOT / "scripts" / "kafka.sh").read_text(), re.M)
    assert version
    cache = Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice"))
    libs = cache / f"kafka-{version[1]}" / "libs"
    assert list(libs.glob("kafka-clients-*.jar")), f"no kafka-clients jar in {libs} (scripts/kafka.sh install)"
    return libs


@pytest.fixture(scope="module")
def java_partitions(kafka_bootstrap: str) -> dict[str, int]:
    """key → partition, as the Java producer placed each key on a real topic."""
    create_topic(kafka_bootstrap, "keys-java", PARTITIONS)
    source = Path(__file__).parent / "java" / "KeyPartitions.java"
    r = subprocess.run(["java", "-cp", f"{kafka_libs()}/*", str(source), kafka_bootstrap, "keys-java"],
                       input="\n".join(KEYS) + "\n", capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    placed = dict(line.rsplit("\t", 1) for line in r.stdout.splitlines())
    assert set(placed) == set(KEYS)
    return {k: int(p) for k, p in placed.items()}


def placed_by_broker(bootstrap: str, topic: str) -> dict[str, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keys-check", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    placed: dict[str, int] = {}
    done: set[int] = set()
    while len(done) < PARTITIONS:
        for m in consumer.consume(1000, 5):
            if m.error() is None:
                placed[m.key().decode()] = m.partition()
            elif m.error().code() == m.error()._PARTITION_EOF:
                done.add(m.partition())
    consumer.close()
    return placed


def test_the_sink_places_keys_as_the_java_client(kafka_bootstrap: str, java_partitions: dict[str, int]) -> None:
    create_topic(kafka_bootstrap, "keys-sluice", PARTITIONS)
    flow = sl.Flow("keys")
    flow.read("rows", sl.MemorySource([{"k": k, "v": i} for i, k in enumerate(KEYS)])).write(
        "out", sl.KafkaSink("keys-sluice", kafka_bootstrap, key="k"))
    sl.run(flow)
    placed = placed_by_broker(kafka_bootstrap, "keys-sluice")
    assert set(placed) == set(KEYS)
    wrong = {k: (placed[k], java_partitions[k]) for k in KEYS if placed[k] != java_partitions[k]}
    assert not wrong, f"{len(wrong)} of {len(KEYS)} keys elsewhere than the Java client puts them: {list(wrong.items())[:5]}"


def test_the_kafka_runtime_places_keys_as_the_java_client(kafka_bootstrap: str,
                                                          java_partitions: dict[str, int]) -> None:
    create_topic(kafka_bootstrap, "keys-in", PARTITIONS)
    create_topic(kafka_bootstrap, "keys-eos", PARTITIONS)
    load = sl.Flow("load")
    load.read("rows", sl.MemorySource([{"k": k} for k in KEYS])).write("out", sl.KafkaSink("keys-in", kafka_bootstrap))
    sl.run(load)
    flow = sl.Flow("keys-eos")
    flow.read("in", sl.KafkaSource("keys-in", kafka_bootstrap), schema={"k": str}).write(
        "out", sl.KafkaSink("keys-eos", kafka_bootstrap, key="k"))
    sl.run_worker(flow, sl.KafkaRuntime(app_id="keys-eos", until_end=True))
    placed = placed_by_broker(kafka_bootstrap, "keys-eos")
    assert {k: placed[k] for k in KEYS} == {k: java_partitions[k] for k in KEYS}


def test_the_repartition_topic_places_keys_as_the_java_client(java_partitions: dict[str, int]) -> None:
    where = destinations(pl.DataFrame({"k": KEYS}), ("k",), PARTITIONS)
    assert [int(p) for p in where] == [java_partitions[k] for k in KEYS]
