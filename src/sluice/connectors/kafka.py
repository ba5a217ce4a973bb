"""Apache Kafka source and sink on confluent-kafka (librdkafka).

In a single process (`sl.run`) the source reads every partition itself: bounded to the end offsets seen
at start (or `follow=True`), with per-partition offsets as checkpoint positions. With the Kafka runtime
(`sluice.runtime.kafka_worker`, `sluice run --kafka ... --workers N`) partitions are assigned by the
consumer group and output, offsets and state are committed in one Kafka transaction.

Values are JSON by default, or Avro / JSON Schema in the Confluent wire format (`sluice.formats.registry`).
Keys, headers and timestamps can be read as columns and written from columns. Settings such as SASL/SSL
pass through `config`; no log line or error message shows them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from sluice.connectors.api import SinkContext, SourceContext, UntransactedWriter
from sluice.core.batch import OFFSET, Batch, Origin, user_columns
from sluice.core.deadletter import dead_letters
from sluice.core.errors import DEAD_LETTER_FIX, DecodeError, PlanError
from sluice.core.errors import KafkaError as KafkaError  # also importable from here, as before
from sluice.core.schema import Schema
from sluice.formats.json import Json

SECRET_KEYS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "ssl.keystore", "token")
HEADERS_DTYPE = pl.List(pl.Struct({"key": pl.String, "value": pl.Binary}))


# Consumer prefetch sized for throughput (measured in bench/kafka_consume.py: 2-3.5x librdkafka's defaults
# on this machine); user config overrides them.
FETCH_TUNING = {"queued.min.messages": 1_000_000, "queued.max.messages.kbytes": 262_144,
                "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 8 << 20, "fetch.wait.max.ms": 100}


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` fit for a log line or an error message: secret values replaced by ***."""
    return {k: ("***" if any(w in k.lower() for w in SECRET_KEYS) else v) for k, v in config.items()}


def client_config(bootstrap: str, config: Mapping[str, Any], **defaults: Any) -> dict[str, Any]:
    """librdkafka settings: ours, then the user's (security settings pass through untouched)."""
    return {"bootstrap.servers": bootstrap, **defaults, **config}


def topic_metadata(client: Any, bootstrap: str, topic: str | None, timeout_s: float) -> Any:
    """Cluster metadata, or a KafkaError that says what went wrong (without any credential)."""
    from confluent_kafka import KafkaException

    try:
        return client.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaError(f"cannot get metadata from {bootstrap} within {timeout_s:g} s: {_error_text(exc.args[0])}. "
                         "Check the address, and for a secured cluster security.protocol, sasl.* and ssl.* "
                         "in config") from None


def _error_text(err: Any) -> str:
    """A librdkafka error for a message: its text, with anything that looks like a credential masked."""
    text = err.str() if hasattr(err, "str") else str(err)
    return re.sub(r"(password|secret)=\S+", r"\1=***", text, flags=re.I)


@dataclass(frozen=True)
class KafkaSource:
    """Records of a topic. `key` names the field the topic is keyed (partitioned) by, so the Kafka
    runtime knows which `key_by` needs no repartitioning. `metadata=True` adds the columns kafka_key,
    kafka_timestamp (ms), kafka_partition and kafka_headers."""

    topic: str
    bootstrap: str
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials: never shown
    format: Any = field(default_factory=Json)
    key: str | None = None
    metadata: bool = False
    connect_timeout_s: float = 30.0
    follow: bool = False
    poll_timeout_s: float = 1.0
    block_records: int = 65_536

    def open(self, ctx: SourceContext) -> _KafkaReader:
        return _KafkaReader(self, ctx, self.schema_for(ctx))

    def schema_for(self, ctx: SourceContext) -> Schema:
        schema = ctx.schema
        if schema is None and hasattr(self.format, "sluice_schema"):
            schema = self.format.sluice_schema()
        if schema is None:
            raise PlanError(f"read step {ctx.step!r}: a Kafka source needs schema= (the fields of its records), "
                            "or a format that carries one (sl.Avro, sl.JsonSchema)")
        return schema


class Decoder:
    """Messages of one partition → batches: values decoded by the format, bad ones to dead letters."""

    def __init__(self, spec: KafkaSource, ctx: SourceContext, schema: Schema) -> None:
        self.spec, self.ctx, self.schema = spec, ctx, schema
        self.format = spec.format.bind(spec.topic, reading=True) if hasattr(spec.format, "bind") else spec.format

    def decode(self, origin: Origin, msgs: list[Any]) -> Iterator[tuple[str, Batch]]:
        values = [m.value() for m in msgs]
        offs = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=len(msgs))
        keep = None
        empty = [i for i, v in enumerate(values) if not v]
        bad_pos: list[str] = []
        bad_reason: list[str] = []
        bad_raw: list[bytes] = []
        if empty:  # tombstones and empty values are not records of the schema
            for i in empty:
                bad_pos.append(origin.position(int(offs[i])))
                bad_reason.append("the message has no value (a tombstone)")
                bad_raw.append(b"")
            drop = set(empty)
            keep = np.asarray([i for i in range(len(values)) if i not in drop], dtype=np.int64)
            values = [values[i] for i in keep]
        df, bad, index = self.format.decode_values(values, self.schema) if values else (
            pl.DataFrame(schema=self.schema.polars), [], [])
        rows = keep if keep is not None else np.arange(len(msgs), dtype=np.int64)
        if bad:
            for b in bad:
                bad_pos.append(origin.position(int(offs[rows[b.index]])))
                bad_reason.append(b.reason)
                bad_raw.append(b.raw)
            rows = rows[np.asarray(index, dtype=np.int64)]
        if bad_pos:
            if self.ctx.on_error != "dead_letter":
                raw = bad_raw[0][:200]
                raise DecodeError(self.ctx.step, bad_pos[0], f"{bad_reason[0]}; the record reads {raw!r}", DEAD_LETTER_FIX)
            yield "dead_letters", dead_letters(self.ctx.step, bad_pos, bad_reason, bad_raw)
        if self.spec.metadata:
            chosen = [msgs[i] for i in rows]
            df = df.with_columns(
                pl.Series("kafka_key", [m.key() for m in chosen], dtype=pl.Binary),
                pl.Series("kafka_timestamp", [m.timestamp()[1] for m in chosen], dtype=pl.Int64),
                pl.Series("kafka_partition", [m.partition() for m in chosen], dtype=pl.Int32),
                pl.Series("kafka_headers", [[{"key": k, "value": v} for k, v in (m.headers() or [])] for m in chosen],
                          dtype=HEADERS_DTYPE),
            )
        df = df.with_columns(pl.Series(OFFSET, offs[rows], dtype=pl.Int64))
        size = self.ctx.batch_size
        for start in range(0, df.height, size):
            yield "out", Batch(df.slice(start, size), origin=origin)


class _KafkaReader:
    def __init__(self, spec: KafkaSource, ctx: SourceContext, schema: Schema) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.spec, self.ctx, self.schema = spec, ctx, schema
        self.decoder = Decoder(spec, ctx, schema)
        conf = client_config(spec.bootstrap, spec.config, **FETCH_TUNING, **{
            "group.id": f"sluice-{ctx.step}", "enable.auto.commit": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        self.consumer = Consumer(conf)
        meta = topic_metadata(self.consumer, spec.bootstrap, spec.topic, spec.connect_timeout_s)
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
                msgs, after = self._read(p)
                if not msgs:
                    self.positions[p] = after
                    continue
                for port, batch in self.decoder.decode(origin, msgs):
                    if port == "out" and batch.height:
                        # resume after this batch's last row (rows between batches are dead letters,
                        # which are emitted before the good rows of the block)
                        self.positions[p] = int(batch.df[OFFSET][-1]) + 1
                    yield port, batch
                self.positions[p] = after

    def _read(self, p: int) -> tuple[list[Any], int]:
        """Up to block_records messages of partition p from its position (and below its end), and the
        position after them (offsets skip transaction markers, so it is not always the last offset + 1)."""
        self.consumer.assign([self.TopicPartition(self.spec.topic, p, self.positions[p])])
        msgs: list[Any] = []
        end = self.ends[p] if self.ends is not None else None
        after = self.positions[p]
        while len(msgs) < self.spec.block_records:
            got = self.consumer.consume(min(10_000, self.spec.block_records - len(msgs)), self.spec.poll_timeout_s)
            if not got:
                break
            stop = False
            for m in got:
                if m.partition() != p:
                    continue
                err = m.error()
                if err is not None:
                    if err.code() == err._PARTITION_EOF:
                        stop = True
                        after = max(after, int(m.offset() or 0))
                        continue
                    raise KafkaError(f"reading {self.spec.topic}/{p}: {_error_text(err)}")
                offset = int(m.offset() or 0)
                if end is not None and offset >= end:
                    stop = True
                    after = max(after, end)
                    continue
                msgs.append(m)
                after = offset + 1
            if stop:
                break
        return msgs, after


@dataclass(frozen=True)
class KafkaSink:
    """Records to a topic. `key` names the column whose value is the message key (and so picks the
    partition: librdkafka's murmur2, as the Java client); `headers` are sent with every message,
    `header_columns` from columns; `timestamp` names an epoch-ms column for the message timestamp.

    In a single process the producer is idempotent and at-least-once: flushed and checked at every
    checkpoint. Under the Kafka runtime the records join the worker's transaction (exactly-once)."""

    topic: str
    bootstrap: str
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    header_columns: tuple[str, ...] = ()
    timestamp: str | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials: never shown
    format: Any = field(default_factory=Json)

    def open(self, ctx: SinkContext) -> KafkaWriter:
        return KafkaWriter(self, ctx)

    def codec(self) -> Any:
        """The value format, bound to the topic (a registry format registers its schema here)."""
        return self.format.bind(self.topic, reading=False) if hasattr(self.format, "bind") else self.format

    def messages(self, rows: pl.DataFrame, codec: Any) -> Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None, int]]:
        """(key, value, headers, timestamp ms or 0) per row."""
        n = rows.height
        values = codec.encode_values(rows)
        keys: list[Any] = (rows[self.key].cast(pl.String).to_list() if self.key else [None] * n)
        stamps: list[Any] = rows[self.timestamp].cast(pl.Int64).fill_null(0).to_list() if self.timestamp else [0] * n
        fixed = [(k, v.encode()) for k, v in self.headers.items()]
        if self.header_columns:
            cols = [(c, rows[c].cast(pl.String).to_list()) for c in self.header_columns]
            hdrs: list[Any] = [fixed + [(c, (vals[i] or "").encode()) for c, vals in cols] for i in range(n)]
        else:
            hdrs = [fixed or None] * n
        for i in range(n):
            k = keys[i]
            yield (k.encode() if k is not None else None), values[i], hdrs[i], stamps[i]


@dataclass(frozen=True)
class DeadLetterTopic:
    """The dead-letter stream (`stream.dead_letters`) to a topic: the value is the original record; the
    headers say why (sluice.reason), where (sluice.step) and from where (sluice.source.topic,
    sluice.source.partition, sluice.source.offset, or sluice.position for non-Kafka inputs)."""

    topic: str
    bootstrap: str
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials: never shown

    def open(self, ctx: SinkContext) -> KafkaWriter:
        return KafkaWriter(self, ctx)

    def codec(self) -> Any:
        return None

    def messages(self, rows: pl.DataFrame, codec: Any) -> Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None, int]]:
        where = re.compile(r"^kafka:(?P<topic>.+)/(?P<partition>\d+) offset (?P<offset>\d+)$")
        for step, position, reason, raw in rows.select("step", "position", "reason", "raw").iter_rows():
            headers = [("sluice.reason", (reason or "").encode()), ("sluice.step", (step or "").encode()),
                       ("sluice.position", (position or "").encode())]
            m = where.match(position or "")
            if m:
                headers += [("sluice.source.topic", m["topic"].encode()), ("sluice.source.partition", m["partition"].encode()),
                            ("sluice.source.offset", m["offset"].encode())]
            yield None, (raw or "").encode(), headers, 0


class KafkaWriter(UntransactedWriter):
    """Produces a sink's records. With `producer` given, the runtime owns it (and its transaction)."""

    def __init__(self, spec: KafkaSink | DeadLetterTopic, ctx: SinkContext, producer: Any = None) -> None:
        from confluent_kafka import Producer

        self.spec, self.ctx = spec, ctx
        self.codec = spec.codec()  # registers the schema now: an incompatible change fails at startup
        self.errors: list[str] = []
        self.produced = 0
        self.delivered = 0
        self.owned = producer is None
        if producer is None:
            conf = client_config(spec.bootstrap, spec.config, **{
                "enable.idempotence": True, "linger.ms": 20, "compression.type": "lz4",
                "retry.backoff.ms": 100, "retry.backoff.max.ms": 2000})
            producer = Producer(conf)
        self.producer = producer

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}/{msg.partition()}: {_error_text(err)}")
        else:
            self.delivered += 1

    def metrics(self) -> dict[str, int]:
        return {"produced": self.produced, "delivered": self.delivered, "failed": len(self.errors)}

    def write(self, df: pl.DataFrame) -> None:
        rows = user_columns(df)
        if rows.height == 0:
            return
        produce, poll, topic = self.producer.produce, self.producer.poll, self.spec.topic
        report = self._report if self.owned else None
        for key, value, headers, ts in self.spec.messages(rows, self.codec):
            while True:
                try:
                    produce(topic, value=value, key=key, headers=headers, timestamp=ts, on_delivery=report)
                    break
                except BufferError:  # the local queue is full: let it drain (backpressure)
                    poll(0.05)
        self.produced += rows.height
        poll(0)
        self._raise()

    def _raise(self) -> None:
        if self.errors:
            first = self.errors[0]
            raise KafkaError(f"sink {self.ctx.step!r}: {len(self.errors)} record(s) were not delivered, e.g. {first}")

    def prepare(self, epoch: int) -> dict[str, Any]:
        if not self.owned:
            return {}
        left = self.producer.flush(60)
        if left:
            raise KafkaError(f"sink {self.ctx.step!r}: {left} record(s) still undelivered after 60 s")
        self._raise()
        return {}

    def close(self) -> None:
        if self.owned:
            self.producer.flush(30)


def read_all_committed(bootstrap: str, topic: str, config: Mapping[str, Any] | None = None,
                       timeout_s: float = 90) -> list[Any]:
    """Every committed message of a topic, in partition order. Waits until no transaction is open on the
    topic, since records committed after an open transaction stay invisible to read_committed readers
    until it ends (a producer killed mid-transaction holds them back until the broker aborts it)."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    conf = client_config(bootstrap, config or {}, **{"group.id": "sluice-reader", "enable.auto.commit": False,
                                                     "enable.partition.eof": True})
    committed = Consumer({**conf, "isolation.level": "read_committed"})
    raw = Consumer({**conf, "isolation.level": "read_uncommitted"})
    try:
        meta = committed.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaError(f"topic {topic!r} is not available at {bootstrap}")
        parts = sorted(meta.partitions)
        committed.assign([TopicPartition(topic, p, 0) for p in parts])
        out: dict[int, list[Any]] = {p: [] for p in parts}
        waiting = set(parts)
        deadline = time.monotonic() + timeout_s
        while waiting:
            if time.monotonic() > deadline:
                raise KafkaError(f"{topic}: partitions {sorted(waiting)} still have an open transaction after {timeout_s} s")
            for m in committed.consume(10_000, 0.5):
                err, p = m.error(), int(m.partition() or 0)
                if err is None:
                    out[p].append(m)
                elif err.code() == err._PARTITION_EOF:
                    high = raw.get_watermark_offsets(TopicPartition(topic, p), 30, cached=False)[1]
                    if int(m.offset() or 0) >= high:
                        waiting.discard(p)
                else:
                    raise KafkaError(f"reading {topic}/{p}: {_error_text(err)}")
        return [m for p in parts for m in out[p]]
    finally:
        committed.close()
        raw.close()
