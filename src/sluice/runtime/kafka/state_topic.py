"""The state topic `<app_id>-state`: each task's snapshot, written in the worker's transaction (partition =
task, split in chunks under the broker's message size limit) and read back when a task starts."""

from __future__ import annotations

import time
from typing import Any

from sluice.connectors.kafka import KafkaError, _error_text

CHUNK_BYTES = 900_000  # state messages stay under the broker's default 1 MB limit


def watermarks(client: Any, topic: str, partition: int, timeout_s: float = 60.0, **kwargs: Any) -> tuple[int, int]:
    """(low, high) offsets of a partition, waiting while the client does not know it yet. Seen with 16
    workers starting at once: one creates the state or repartition topic, another's client, whose
    metadata is older, answers "Unknown partition" at once (no retry inside librdkafka)."""
    from confluent_kafka import KafkaError as KErr
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = client.get_watermark_offsets(TopicPartition(topic, partition), 30, **kwargs)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            transient = err.retriable() or err.code() in (KErr._UNKNOWN_PARTITION, KErr.UNKNOWN_TOPIC_OR_PART,
                                                          KErr._UNKNOWN_TOPIC, KErr.LEADER_NOT_AVAILABLE,
                                                          KErr.NOT_LEADER_FOR_PARTITION, KErr._TRANSPORT)
            if not transient or time.monotonic() > deadline:
                raise KafkaError(f"cannot read the offsets of {topic}/{partition}: {_error_text(err)}") from None
            client.list_topics(topic, timeout=10)  # refreshes the client's metadata
            time.sleep(0.2)


class StateTopic:
    def __init__(self, topic: str, reader: Any) -> None:
        self.topic = topic
        self.reader = reader  # a read_committed consumer of its own (not the group's)

    @staticmethod
    def messages(task: int, sid: int, blob: bytes) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
        """(key, value, headers) of a snapshot's chunks; a reader takes the newest sid whose chunks are whole."""
        chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
        return [(f"{task}/{i}".encode(), chunk,
                 [("sid", str(sid).encode()), ("i", str(i).encode()), ("n", str(len(chunks)).encode())])
                for i, chunk in enumerate(chunks)]

    def read(self, ps: list[int]) -> dict[int, bytes]:
        """The newest committed snapshot of each task in `ps` (tasks without one are left out)."""
        from confluent_kafka import TopicPartition

        todo: dict[int, int] = {}
        for p in ps:
            low, high = watermarks(self.reader, self.topic, p)
            if high > low:
                todo[p] = int(low)
        found: dict[int, bytes] = {}
        if not todo:
            return found
        self.reader.assign([TopicPartition(self.topic, p, o) for p, o in todo.items()])
        latest: dict[int, tuple[int, int, dict[int, bytes]]] = {p: (-1, 0, {}) for p in todo}
        waiting = set(todo)
        deadline = time.monotonic() + 120
        while waiting:
            if time.monotonic() > deadline:
                raise KafkaError(f"reading the state topic {self.topic} (partitions {sorted(waiting)}) timed out")
            for m in self.reader.consume(10_000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == err._PARTITION_EOF:
                        waiting.discard(m.partition())
                        continue
                    raise KafkaError(f"reading the state topic {self.topic}/{m.partition()}: {_error_text(err)}")
                h = dict(m.headers() or [])
                sid, i, n = int(h["sid"]), int(h["i"]), int(h["n"])
                best = latest[m.partition()]
                if sid > best[0]:
                    best = latest[m.partition()] = (sid, n, {})
                if sid == best[0]:
                    best[2][i] = m.value()
        self.reader.unassign()
        for p, (sid, n, chunks) in latest.items():
            if sid >= 0 and len(chunks) == n:
                found[p] = b"".join(chunks[i] for i in range(n))
        return found

    def close(self) -> None:
        self.reader.close()
