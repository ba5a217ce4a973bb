"""The Kafka runtime's internal topics (state, repartition) take the cluster's default replication factor
(-1 in CreateTopics), not 1: on a cluster a lost broker must not take task state with it
(tests/kafka/test_cluster_faults.py runs the real thing on three nodes)."""

from __future__ import annotations

from typing import Any

from sluice.runtime.kafka.admin import create_topic


class Done:
    def result(self, timeout: float) -> None:
        return None


class Admin:
    def __init__(self) -> None:
        self.created: list[Any] = []

    def create_topics(self, topics: list[Any]) -> dict[str, Done]:
        self.created += topics
        return {t.topic: Done() for t in topics}


def test_internal_topics_use_the_cluster_replication_factor() -> None:
    admin = Admin()
    create_topic(admin, "app-state", 4, {"cleanup.policy": "compact"}, "state")
    (topic,) = admin.created
    assert (topic.topic, topic.num_partitions, topic.replication_factor) == ("app-state", 4, -1)
    assert topic.config == {"cleanup.policy": "compact"}
