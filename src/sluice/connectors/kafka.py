"""Apache Kafka source and sink on confluent-kafka (librdkafka).

This is the first slice: JSON values, bounded reads (from the earliest offset to the end offsets seen at
start, or `follow=True`), per-partition offsets as checkpoint positions, and an idempotent producer
that partitions by key and surfaces delivery errors. Consumer-group assignment, transactions
(exactly-once to Kafka), Avro and the schema registry come next (issue #4).
Settings such as SASL/SSL pass through `config`; they are never logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from sluice.connectors.api import SinkContext, SourceContext
from sluice.core.batch import OFFSET, Batch, Origin, user_columns
from sluice.core.deadletter import dead_letters
from sluice.core.errors import DEAD_LETTER_FIX, DecodeError, PlanError, SluiceError
from sluice.core.schema import Schema
from sluice.formats.json import Json


class KafkaError(SluiceError):
    """Kafka refused or failed an operation."""


@dataclass(frozen=True)
class KafkaSource:
    topic: str
    bootstrap: str
    config: dict[str, Any] = field(default_factory=dict)
    format: Json = field(default_factory=Json)
    follow: bool = False
    poll_timeout_s: float = 1.0
    block_records: int = 65_536

    def open(self, ctx: SourceContext) -> _KafkaReader:
        if ctx.schema is None:
            raise PlanError(f"read step {ctx.step!r}: a Kafka source needs schema= (the fields of its JSON records)")
        return _KafkaReader(self, ctx, ctx.schema)


class _KafkaReader:
    def __init__(self, spec: KafkaSource, ctx: SourceContext, schema: Schema) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.spec, self.ctx, self.schema = spec, ctx, schema
        conf = {"bootstrap.servers": spec.bootstrap, "group.id": f"sluice-{ctx.step}", "enable.auto.commit": False,
                "enable.partition.eof": True, "auto.offset.reset": "earliest", **spec.config}
        self.consumer = Consumer(conf)
        meta = self.consumer.list_topics(spec.topic, timeout=30)
        topic = meta.topics.get(spec.topic)
        if topic is None or topic.error is not None:
            raise KafkaError(f"topic {spec.topic!r} is not available at {spec.bootstrap}: {topic.error if topic else 'missing'}")
        self.parts = sorted(topic.partitions)
        self.TopicPartition = TopicPartition
        self.positions = {p: self._low(p) for p in self.parts}
        self.ends = None if spec.follow else {p: self._high(p) for p in self.parts}
        self.live = set(self.parts)

    def _low(self, p: int) -> int:
        return int(self.consumer.get_watermark_offsets(self.TopicPartition(self.spec.topic, p), timeout=30)[0])

    def _high(self, p: int) -> int:
        return int(self.consumer.get_watermark_offsets(self.TopicPartition(self.spec.topic, p), timeout=30)[1])

    def partitions(self) -> int:
        return len(self.parts)

    def position(self) -> dict[str, Any]:
        return {"offsets": {str(p): o for p, o in self.positions.items()}, "live": sorted(self.live)}

    def seek(self, position: dict[str, Any]) -> None:
        self.positions = {int(p): int(o) for p, o in position["offsets"].items()}
        self.live = {int(p) for p in position["live"]}

    def close(self) -> None:
        self.consumer.close()

    def batches(self) -> Iterator[tuple[str, Batch]]:
        while self.live:
            for p in sorted(self.live):
                origin = Origin(self.ctx.step, p, f"kafka:{self.spec.topic}/{p}")
                if self.ends is not None and self.positions[p] >= self.ends[p]:
                    self.live.discard(p)
                    yield "out", Batch(pl.DataFrame(), origin=origin, end_of_partition=True)
                    continue
                values, offsets = self._read(p)
                if not values:
                    continue
                yield from self._decode(p, origin, values, offsets)

    def _read(self, p: int) -> tuple[list[bytes], list[int]]:
        """Up to block_records values of partition p from its position (and below its end)."""
        tp = self.TopicPartition(self.spec.topic, p, self.positions[p])
        self.consumer.assign([tp])
        values: list[bytes] = []
        offsets: list[int] = []
        end = self.ends[p] if self.ends is not None else None
        while len(values) < self.spec.block_records:
            msgs = self.consumer.consume(min(10_000, self.spec.block_records - len(values)), self.spec.poll_timeout_s)
            if not msgs:
                break
            stop = False
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == err._PARTITION_EOF:
                        stop = True
                        continue
                    raise KafkaError(f"reading {self.spec.topic}/{p}: {err.str()}")
                offset = int(m.offset() or 0)
                if end is not None and offset >= end:
                    stop = True
                    continue
                values.append(m.value() or b"")
                offsets.append(offset)
            if stop:
                break
        return values, offsets

    def _decode(self, p: int, origin: Origin, values: list[bytes], offsets: list[int]) -> Iterator[tuple[str, Batch]]:
        blob = b"".join(v + b"\n" for v in values)
        df, bad, index = self.spec.format.decode_block(blob, self.schema)
        offs = np.asarray(offsets, dtype=np.int64)
        if bad:
            positions = [origin.position(int(offs[b.index])) for b in bad]
            if self.ctx.on_error != "dead_letter":
                raise DecodeError(self.ctx.step, positions[0], f"{bad[0].reason}; the record reads {bad[0].raw[:200]!r}",
                                  DEAD_LETTER_FIX)
            yield "dead_letters", dead_letters(self.ctx.step, positions, [b.reason for b in bad], [b.raw for b in bad])
            offs = offs[np.asarray(index, dtype=np.int64)]
        df = df.with_columns(pl.Series(OFFSET, offs, dtype=pl.Int64))
        size = self.ctx.batch_size
        last = int(offsets[-1]) + 1
        for start in range(0, df.height, size):
            after = start + size
            self.positions[p] = int(offs[after]) if after < df.height else last
            yield "out", Batch(df.slice(start, size), origin=origin)
        self.positions[p] = last


@dataclass(frozen=True)
class KafkaSink:
    """JSON records to a topic with an idempotent producer; `key` picks the partition (librdkafka's
    murmur2, as the Java client). At-least-once: flushed and checked at every checkpoint."""

    topic: str
    bootstrap: str
    key: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    format: Json = field(default_factory=Json)

    def open(self, ctx: SinkContext) -> _KafkaWriter:
        return _KafkaWriter(self, ctx)


class _KafkaWriter:
    def __init__(self, spec: KafkaSink, ctx: SinkContext) -> None:
        from confluent_kafka import Producer

        self.spec, self.ctx = spec, ctx
        self.errors: list[str] = []
        self.delivered = 0
        conf = {"bootstrap.servers": spec.bootstrap, "enable.idempotence": True, "linger.ms": 20,
                "compression.type": "lz4", **spec.config}
        self.producer = Producer(conf)

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}/{msg.partition()}: {err.str()}")
        else:
            self.delivered += 1

    def write(self, df: pl.DataFrame) -> None:
        rows = user_columns(df)
        if rows.height == 0:
            return
        lines = self.spec.format.encode(rows).split(b"\n")[: rows.height]
        keys = rows[self.spec.key].cast(pl.String).to_list() if self.spec.key else [None] * rows.height
        for k, v in zip(keys, lines, strict=True):
            while True:
                try:
                    self.producer.produce(self.spec.topic, value=v, key=k, on_delivery=self._report)
                    break
                except BufferError:  # the local queue is full: let it drain (backpressure)
                    self.producer.poll(0.1)
            self.producer.poll(0)
        self._raise()

    def _raise(self) -> None:
        if self.errors:
            first = self.errors[0]
            raise KafkaError(f"sink {self.ctx.step!r}: {len(self.errors)} record(s) were not delivered, e.g. {first}")

    def prepare(self, epoch: int) -> dict[str, Any]:
        left = self.producer.flush(60)
        if left:
            raise KafkaError(f"sink {self.ctx.step!r}: {left} record(s) still undelivered after 60 s")
        self._raise()
        return {}

    def commit(self, txn: dict[str, Any]) -> None:
        pass

    def recover(self, txn: dict[str, Any] | None) -> None:
        pass

    def close(self) -> None:
        self.producer.flush(30)
