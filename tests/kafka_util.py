"""Helpers for the tests against the real Kafka broker."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from confluent_kafka.admin import AdminClient, NewTopic

import sluice as sl
from sluice.connectors.kafka import KafkaSink


def create_topic(bootstrap: str, name: str, partitions: int, config: dict[str, str] | None = None,
                 topic_config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, **(config or {})})  # alive until the future resolves
    admin.create_topics([NewTopic(name, partitions, 1, config=topic_config or {})])[name].result(30)


def load(bootstrap: str, path: Path, topic: str, key: str = "user_id") -> int:
    """A JSON Lines file into a topic, keyed by `key` (not transactional)."""
    flow = sl.Flow("load")
    flow.read("file", sl.JsonLinesSource(path)).write("topic", KafkaSink(topic, bootstrap, key=key))
    return sl.run(flow).rows_read


def read_committed(bootstrap: str, topic: str, config: dict[str, str] | None = None,
                   timeout_s: float = 90) -> list[tuple[bytes, dict]]:
    """Every committed message of a topic: (value, headers). Waits until no transaction is open on it
    (a killed producer's transaction holds the last stable offset back until the broker aborts it)."""
    from sluice.connectors.kafka import read_all_committed

    return [(m.value(), dict(m.headers() or [])) for m in read_all_committed(bootstrap, topic, config or {}, timeout_s)]


def frame(messages: list[tuple[bytes, dict]]) -> pl.DataFrame:
    return pl.read_ndjson(b"\n".join(v for v, _ in messages) + b"\n")
