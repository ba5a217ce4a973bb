"""The topics a worker needs before it starts: its inputs (co-partitioned), its outputs, and the internal
ones it creates (the state topic; the repartition topic)."""

from __future__ import annotations

from typing import Any

from sluice.connectors.kafka import DeadLetterTopic, KafkaError, KafkaSink, client_config, topic_metadata
from sluice.core.plan import Plan, Write


def create_topic(admin: Any, topic: str, partitions: int, config: dict[str, str], what: str) -> None:
    """Create an internal topic; another worker creating it first is fine. Its replication factor is the
    cluster's default.replication.factor (-1): on a cluster, task state must survive the loss of a broker
    as the outputs do (with a fixed 1, a state partition on a dead broker stops the job until it returns,
    and is gone with its disk)."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    try:
        admin.create_topics([NewTopic(topic, partitions, -1, config=config)])[topic].result(30)
    except Exception as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise KafkaError(f"cannot create the {what} topic {topic!r}: {exc}") from None


def prepare_topics(plan: Plan, bootstrap: str, config: dict[str, Any], inputs: list[str], state_topic: str,
                   repartition_topic: str | None) -> int:
    """Check the inputs and outputs, create the internal topics; returns the number of partitions (tasks)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(bootstrap, config))
    meta = topic_metadata(admin, bootstrap, None, 30)
    counts = {}
    for topic in inputs:
        t = meta.topics.get(topic)
        if t is None or t.error is not None:
            raise KafkaError(f"input topic {topic!r} is not available at {bootstrap}")
        counts[topic] = len(t.partitions)
    if len(set(counts.values())) != 1:
        raise KafkaError(f"the input topics must have the same number of partitions (co-partitioned): {counts}")
    for st in plan.steps:
        if isinstance(st, Write) and isinstance(st.sink, KafkaSink | DeadLetterTopic) and st.sink.topic not in meta.topics:
            raise KafkaError(f"write step {st.name!r}: output topic {st.sink.topic!r} does not exist at "
                             f"{bootstrap}; create it first (e.g. with as many partitions as the input)")
    n = next(iter(counts.values()))
    if repartition_topic is not None and repartition_topic not in meta.topics:
        create_topic(admin, repartition_topic, n, {"retention.ms": str(7 * 86_400_000)}, "repartition")
    state = meta.topics.get(state_topic)
    if state is None:
        create_topic(admin, state_topic, n,
                     {"cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}, "state")
    elif len(state.partitions) < n:
        raise KafkaError(f"state topic {state_topic!r} has {len(state.partitions)} partitions, the input {n}")
    return n


def watermarks(consumer: Any, topic: str, partition: int, what: str, wait_s: float = 120.0,
               cached: bool = False) -> tuple[int, int]:
    """(low, high) offsets of a partition, asked again while the cluster moves its leader (a broker lost:
    "Unknown partition", "Leader not available" for some seconds); a KafkaError naming it otherwise."""
    import contextlib
    import time

    from confluent_kafka import KafkaException, TopicPartition

    from sluice.connectors.kafka import _error_text

    deadline = time.monotonic() + wait_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30, cached=cached)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            if time.monotonic() > deadline or (hasattr(err, "fatal") and err.fatal()):
                raise KafkaError(f"cannot read the offsets of {what} {topic}/{partition} for {wait_s:g} s "
                                 f"({_error_text(err)}); does the partition have a leader? Start the worker again "
                                 "once the cluster is whole: it resumes from the last commit, exactly once") from None
            # the client's metadata can keep the lost broker as the leader ("Unknown partition"): refresh it
            with contextlib.suppress(Exception):
                consumer.list_topics(topic, timeout=10)
            time.sleep(0.5)
