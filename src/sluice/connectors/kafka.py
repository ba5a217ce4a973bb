"""Apache Kafka source and sink on confluent-kafka (librdkafka).

In a single process (`sl.run`) the source reads every partition itself: bounded to the end offsets seen
at start (or `follow=True`), with per-partition offsets as checkpoint positions. With the Kafka runtime
(`sluice.runtime.kafka`, `sluice run --kafka ... --workers N`) partitions are assigned by the
consumer group and output, offsets and state are committed in one Kafka transaction.

Values are JSON by default, or Avro / JSON Schema in the Confluent wire format (`sluice.formats.registry`).
Keys, headers and timestamps can be read as columns and written from columns. Settings such as SASL/SSL
pass through `config`; no log line or error message shows them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

from sluice.connectors.api import IDLE, SinkContext, SourceContext, UntransactedWriter
from sluice.core.batch import OFFSET, Batch, Origin, user_columns
from sluice.core.changelog import DELETE, OP, UPDATE_AFTER, UPDATE_BEFORE
from sluice.core.deadletter import rows_as_json
from sluice.core.errors import DecodeError, EncodeError, PlanError
from sluice.core.errors import KafkaError as KafkaError  # also importable from here, as before
from sluice.core.schema import Schema
from sluice.formats.api import Codec, Format
from sluice.formats.decode import decode_values, split
from sluice.formats.json import Json

Message = tuple[bytes | None, bytes, list[tuple[str, bytes]] | None, int]  # key, value, headers, timestamp ms (0: now)
SECRET_KEYS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "ssl.keystore", "token")
HEADERS_DTYPE = pl.List(pl.Struct({"key": pl.String, "value": pl.Binary}))


# Consumer prefetch sized for throughput (measured in bench/kafka_consume.py: 2-3.5x librdkafka's defaults
# on this machine); user config overrides them.
FETCH_TUNING = {"queued.min.messages": 1_000_000, "queued.max.messages.kbytes": 262_144,
                "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 8 << 20, "fetch.wait.max.ms": 100}


# Keyed records go where the Java client and Kafka Streams put them: murmur2 of the key bytes (librdkafka's
# default, "consistent_random", is CRC-32). Records without a key are spread at random.
PARTITIONER = "murmur2_random"


def murmur2(data: bytes) -> int:
    """The Java client's `Utils.murmur2` (seed 0x9747b28c), as an unsigned 32-bit value."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    n = len(data)
    h = (0x9747B28C ^ n) & mask
    end = n - n % 4
    for i in range(0, end, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[end:]
    if tail:
        for i in reversed(range(len(tail))):
            h ^= tail[i] << (8 * i)
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def murmur2_partitions(keys: pl.Series, partitions: int) -> np.ndarray:
    """Partition per key as the Java client computes it (`toPositive(murmur2(utf-8 of the key text)) % n`),
    once per distinct key; a null key counts as the empty string."""
    text = keys.cast(pl.String).fill_null("")
    table = {k: (murmur2(k.encode()) & 0x7FFFFFFF) % partitions for k in text.unique().to_list()}
    return text.replace_strict(table, return_dtype=pl.Int64).to_numpy()


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")
_PROTOCOL = re.compile(r"^(?:plaintext|ssl|sasl_plaintext|sasl_ssl)://", re.I)  # librdkafka takes these


def is_host_port(value: str) -> bool:
    """Whether `value` reads as HOST:PORT[,HOST:PORT...] (a Kafka bootstrap list without the kafka:// prefix)."""
    return all(_HOST_PORT.match(_PROTOCOL.sub("", part.strip())) for part in value.split(","))


def bootstrap_servers(value: str) -> str:
    """The bootstrap list librdkafka takes, `HOST:PORT[,HOST:PORT]`, from that or from `kafka://HOST:PORT`
    (the form `sluice run --broker` and SLUICE_BROKER use); a PlanError naming both forms otherwise."""
    parts = [part.strip().removeprefix("kafka://") for part in value.split(",")]
    if not value.strip() or not is_host_port(",".join(parts)):
        raise PlanError(f"bootstrap {value!r} is not a Kafka address: write HOST:PORT (several comma-separated, "
                        "e.g. 'broker1:9092,broker2:9092') or kafka://HOST:PORT")
    return ",".join(parts)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` fit for a log line or an error message: secret values replaced by ***."""
    return {k: ("***" if any(w in k.lower() for w in SECRET_KEYS) else v) for k, v in config.items()}


CLIENT_LOG = logging.getLogger("sluice.kafka.client")
log = logging.getLogger("sluice.kafka")
_VARYING = re.compile(r"\((after \d+ms|\d+ identical)[^)]*\)")  # parts of a librdkafka line that change each time


class ClientLog:
    """librdkafka's log lines (confluent-kafka's `logger=` setting) into Python logging, as the logger
    `sluice.kafka.client`, instead of stderr. An unreachable broker makes librdkafka repeat the same line
    ~20 times a second, so each distinct line is let through at most once per `every_s`, and the next one
    says how many like it were left out. Anything that looks like a credential is masked."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self.seen: dict[str, tuple[float, int]] = {}  # line without its counters → (last shown, left out since)
        self.lock = threading.Lock()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        # called from librdkafka's threads through C: an exception here would surface later as a
        # SystemError in an unrelated call (seen once in subscribe), so nothing may escape
        try:
            self._log(level, fmt, *args)
        except Exception:
            with contextlib.suppress(Exception):
                CLIENT_LOG.log(level, "%s", _masked(str(fmt)))

    def _log(self, level: int, fmt: str, *args: Any) -> None:
        try:
            text = fmt % args if args else str(fmt)
        except (TypeError, ValueError):  # a line with a stray % in it
            text = " ".join([str(fmt), *map(str, args)])
        text = _masked(text)
        key = _VARYING.sub("", text)
        now = time.monotonic()
        with self.lock:
            shown, left_out = self.seen.get(key, (float("-inf"), 0))
            if now - shown < self.every_s:
                self.seen[key] = (shown, left_out + 1)
                return
            if len(self.seen) > 10_000:
                self.seen.clear()
            self.seen[key] = (now, 0)
        if left_out:
            text += f" ({left_out} more like it in the last {now - shown:.0f} s)"
        CLIENT_LOG.log(level, text)


CLIENT_LOGS = ClientLog()


class ClientErrors:
    """An `error_cb`: keeps the client's last error (e.g. "Connect to ipv4#10.0.0.1:9092 failed:
    Connection refused") so that a timeout can say why."""

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, err: Any) -> None:
        self.last = _error_text(err)

    def cause(self, client: Any) -> str:
        """"; the last client error: ..." (after serving the client's pending callbacks), or ""."""
        with contextlib.suppress(Exception):  # a closed or failed client: keep what is known
            client.poll(0)
        return f"; the last client error: {self.last}" if self.last else ""


def client_config(bootstrap: str, config: Mapping[str, Any], **defaults: Any) -> dict[str, Any]:
    """librdkafka settings: ours, then the user's (security settings pass through untouched). The
    client's log lines go to Python logging (`sluice.kafka.client`), rate-limited."""
    return {"bootstrap.servers": bootstrap, "logger": CLIENT_LOGS, **defaults, **config}


def topic_metadata(client: Any, bootstrap: str, topic: str | None, timeout_s: float,
                   errors: ClientErrors | None = None) -> Any:
    """Cluster metadata, or a KafkaError that says what went wrong (without any credential)."""
    from confluent_kafka import KafkaException

    try:
        return client.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        cause = errors.cause(client) if errors is not None else ""
        raise KafkaError(f"cannot get metadata from {bootstrap} within {timeout_s:g} s: {_error_text(exc.args[0])}"
                         f"{cause}. Check the address (bootstrap=), and for a secured cluster security.protocol, "
                         "sasl.* and ssl.* in config") from None


def _error_text(err: Any) -> str:
    """A librdkafka error for a message: its text, with anything that looks like a credential masked."""
    return _masked(err.str() if hasattr(err, "str") else str(err))


def _masked(text: str) -> str:
    return re.sub(r"(password|secret)=\S+", r"\1=***", text, flags=re.I)


@dataclass(frozen=True)
class KafkaSource:
    """Records of a topic. `key` names the field the topic is keyed (partitioned) by, so the Kafka
    runtime knows which `key_by` needs no repartitioning. `metadata=True` adds the columns kafka_key,
    kafka_timestamp (ms), kafka_partition and kafka_headers.

    `changelog=True` reads the topic as a table's changelog keyed by `key` (as Kafka compaction and Flink's
    upsert-kafka do): a message with a value is the key's new row (`_op` = +U), a tombstone (no value)
    deletes it (`_op` = -D, the key column from the message key, the other columns null). The message key
    is decoded with `key_format`: None takes it as text (cast to the key column's declared type), `sl.Json()`
    as a JSON object holding the key field (or a JSON scalar)."""

    topic: str
    bootstrap: str
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials: never shown
    format: Format = field(default_factory=Json)
    key: str | None = None
    metadata: bool = False
    connect_timeout_s: float = 30.0
    follow: bool = False
    poll_timeout_s: float = 1.0
    block_records: int = 65_536
    changelog: bool = False
    key_format: Format | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", bootstrap_servers(self.bootstrap))
        if self.changelog and not self.key:
            raise PlanError(f"KafkaSource({self.topic!r}, changelog=True) needs key= (the field the message key "
                            "holds): a tombstone says which key is deleted only through it")

    def changelog_key(self) -> tuple[str, ...] | None:
        return (self.key,) if self.changelog and self.key else None

    def open(self, ctx: SourceContext) -> _KafkaReader:
        return _KafkaReader(self, ctx, self.schema_for(ctx))

    def schema_for(self, ctx: SourceContext) -> Schema:
        schema = ctx.schema or self.format.sluice_schema()
        if schema is None:
            raise PlanError(f"read step {ctx.step!r}: a Kafka source needs schema= (the fields of its records), "
                            "or a format that carries one (sl.Avro, sl.JsonSchema)")
        return schema


class Decoder:
    """Messages of one partition → batches: values decoded by the format, bad ones to dead letters."""

    def __init__(self, spec: KafkaSource, ctx: SourceContext, schema: Schema) -> None:
        self.spec, self.ctx, self.schema = spec, ctx, schema
        self.codec = spec.format.bind(spec.topic, reading=True)

    def decode(self, origin: Origin, msgs: list[Any]) -> Iterator[tuple[str, Batch]]:
        offs = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=len(msgs))
        if self.spec.changelog:
            df, rows, dead = self._changelog(msgs, origin, offs)
        else:
            decoded = decode_values(self.codec, [m.value() for m in msgs], self.schema,
                                    empty="the message has no value (a tombstone)")
            df, rows, dead = split(decoded, self.ctx.step, self.ctx.on_error, lambda i: origin.position(int(offs[i])))
        if dead is not None:
            yield "dead_letters", dead
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


    def _changelog(self, msgs: list[Any], origin: Origin, offs: np.ndarray) -> tuple[pl.DataFrame, np.ndarray, Any]:
        """Upsert semantics: values are the key's new row (+U), tombstones delete the key (-D); in offset order."""
        key = self.spec.key
        assert key is not None
        values = [m.value() for m in msgs]
        live = [i for i, v in enumerate(values) if v]
        gone = [i for i, v in enumerate(values) if not v]
        decoded = decode_values(self.codec, [values[i] for i in live], self.schema)
        df, kept, dead = split(decoded, self.ctx.step, self.ctx.on_error,
                               lambda j: origin.position(int(offs[live[j]])))
        rows = np.asarray([live[int(j)] for j in kept], dtype=np.int64)
        df = df.with_columns(pl.lit(UPDATE_AFTER).alias(OP))
        if gone:
            keys = self._keys([msgs[i].key() for i in gone], origin, [int(offs[i]) for i in gone])
            deletes = pl.DataFrame({key: keys}).cast({key: df.schema.get(key, pl.String)}, strict=False)
            df = pl.concat([df, deletes.with_columns(pl.lit(DELETE).alias(OP))], how="diagonal_relaxed")
            rows = np.concatenate([rows, np.asarray(gone, dtype=np.int64)])
            order = np.argsort(rows, kind="stable")
            df, rows = df[order], rows[order]
        return df, rows, dead

    def _keys(self, raw: list[bytes | None], origin: Origin, offsets: list[int]) -> list[Any]:
        """The key field of each tombstone, decoded from the message key."""
        out: list[Any] = []
        for k, off in zip(raw, offsets, strict=True):
            if k is None:
                raise DecodeError(self.ctx.step, origin.position(off), "a tombstone without a message key",
                                  "a changelog topic's producer must key every message by the table's key")
            if self.spec.key_format is None:
                out.append(k.decode("utf-8", "replace"))
                continue
            try:
                value = orjson.loads(k)
            except orjson.JSONDecodeError as exc:
                raise DecodeError(self.ctx.step, origin.position(off), f"the message key is not JSON ({exc})",
                                  "set key_format=None for text keys") from None
            out.append(value.get(self.spec.key) if isinstance(value, dict) else value)
        return out


class _KafkaReader:
    def __init__(self, spec: KafkaSource, ctx: SourceContext, schema: Schema) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.spec, self.ctx, self.schema = spec, ctx, schema
        self.decoder = Decoder(spec, ctx, schema)
        errors = ClientErrors()
        conf = client_config(spec.bootstrap, spec.config, **FETCH_TUNING, **{
            "group.id": f"sluice-{ctx.step}", "enable.auto.commit": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed", "error_cb": errors})
        self.consumer = Consumer(conf)
        meta = topic_metadata(self.consumer, spec.bootstrap, spec.topic, spec.connect_timeout_s, errors)
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
            progressed = False
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
                progressed = True
                for port, batch in self.decoder.decode(origin, msgs):
                    if port == "out" and batch.height:
                        # resume after this batch's last row (rows between batches are dead letters,
                        # which are emitted before the good rows of the block)
                        self.positions[p] = int(batch.df[OFFSET][-1]) + 1
                    yield port, batch
                self.positions[p] = after
            if not progressed and self.ends is None:
                yield IDLE, Batch(pl.DataFrame())  # hand control back: the run's timed checkpoints go on

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
    partition: murmur2 of its UTF-8 text, as the Java client and Kafka Streams place it); `headers` are
    sent with every message, `header_columns` from columns; `timestamp` names an epoch-ms column for the
    message timestamp.

    In a single process the producer is idempotent and at-least-once: flushed and checked at every
    checkpoint. It checks at start, within `connect_timeout_s`, that the cluster answers and the topic
    exists. Under the Kafka runtime the records join the worker's transaction (exactly-once).

    `dead_letters=sl.DeadLetterTopic(...)` sets aside records the format cannot serialize and records the
    cluster rejects for good (too large, invalid), with the reason in headers; without it they stop the
    run. `on_delivery` is called with a `DeliveryReport` for every record (see docs/kafka.md for what a
    report means under each guarantee)."""

    topic: str
    bootstrap: str
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    header_columns: tuple[str, ...] = ()
    timestamp: str | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials: never shown
    format: Format = field(default_factory=Json)
    connect_timeout_s: float = 30.0  # reaching the cluster and finding the topic at start
    delivery_timeout_s: float = 60.0  # a record not acknowledged by then fails (librdkafka's message.timeout.ms)
    dead_letters: DeadLetterTopic | None = None  # where records that cannot be written go
    on_delivery: Callable[[DeliveryReport], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", bootstrap_servers(self.bootstrap))

    def open(self, ctx: SinkContext) -> Any:
        if ctx.exactly_once and ctx.task is None and ctx.staging_dir is not None:  # a checkpointed sl.run
            from sluice.connectors.kafka_staged import StagedKafkaWriter

            return StagedKafkaWriter(self, ctx)
        return KafkaWriter(self, ctx)

    def codec(self) -> Codec:
        """The value format, bound to the topic (a registry format registers its schema here)."""
        return self.format.bind(self.topic, reading=False)

    def messages(self, rows: pl.DataFrame, codec: Codec | None) -> tuple[list[Message], list[tuple[int, str]]]:
        """The message of each row the format can serialize, and (row, reason) for each it cannot."""
        n = rows.height
        assert codec is not None, "a KafkaSink writes with the codec of its format (KafkaSink.codec())"
        values, bad = _encode(codec, rows)
        keys: list[Any] = (rows[self.key].cast(pl.String).to_list() if self.key else [None] * n)
        stamps: list[Any] = rows[self.timestamp].cast(pl.Int64).fill_null(0).to_list() if self.timestamp else [0] * n
        fixed = [(k, v.encode()) for k, v in self.headers.items()]
        if self.header_columns:
            cols = [(c, rows[c].cast(pl.String).to_list()) for c in self.header_columns]
            hdrs: list[Any] = [fixed + [(c, (vals[i] or "").encode()) for c, vals in cols] for i in range(n)]
        else:
            hdrs = [fixed or None] * n
        out: list[Message] = []
        for i in range(n):
            v, k = values[i], keys[i]
            if v is not None:
                out.append(((k.encode() if k is not None else None), v, hdrs[i], stamps[i]))
        return out, bad


def _encode(codec: Codec, rows: pl.DataFrame) -> tuple[list[bytes | None], list[tuple[int, str]]]:
    """Values of the rows; when the batch does not serialize, row by row to find the ones that do not
    (None in their place, with the reason)."""
    try:
        return list(codec.encode_values(rows)), []
    except Exception:  # formats raise their own types (fastavro, jsonschema): find the rows
        pass
    values: list[bytes | None] = []
    bad: list[tuple[int, str]] = []
    for i in range(rows.height):
        try:
            values.append(codec.encode_values(rows.slice(i, 1))[0])
        except Exception as exc:
            values.append(None)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            bad.append((i, f"cannot be serialized: {text}"))
    return values, bad


@dataclass(frozen=True)
class DeliveryReport:
    """What the cluster said about one record of a KafkaSink, for its `on_delivery` callback."""

    topic: str
    partition: int
    offset: int | None  # None when not written
    key: bytes | None
    error: str | None = None  # None: written (under the Kafka runtime: into the open transaction)
    dead_lettered: bool = False  # failed for good and went to the sink's dead-letter topic


@dataclass(frozen=True)
class DeadLetterTopic:
    """The dead-letter stream (`stream.dead_letters`) to a topic: the value is the original record; the
    headers say why (sluice.reason), where (sluice.step) and from where (sluice.source.topic,
    sluice.source.partition, sluice.source.offset, or sluice.position for non-Kafka inputs)."""

    topic: str
    bootstrap: str
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials: never shown
    connect_timeout_s: float = 30.0
    delivery_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", bootstrap_servers(self.bootstrap))

    def open(self, ctx: SinkContext) -> Any:
        if ctx.exactly_once and ctx.task is None and ctx.staging_dir is not None:  # a checkpointed sl.run
            from sluice.connectors.kafka_staged import StagedKafkaWriter

            return StagedKafkaWriter(self, ctx)
        return KafkaWriter(self, ctx)

    def codec(self) -> None:
        return None  # the dead letters' raw text is the value

    def messages(self, rows: pl.DataFrame, codec: Codec | None) -> tuple[list[Message], list[tuple[int, str]]]:
        out: list[Message] = []
        where = re.compile(r"^kafka:(?P<topic>.+)/(?P<partition>\d+) offset (?P<offset>\d+)$")
        for step, position, reason, raw in rows.select("step", "position", "reason", "raw").iter_rows():
            headers = [("sluice.reason", (reason or "").encode()), ("sluice.step", (step or "").encode()),
                       ("sluice.position", (position or "").encode())]
            m = where.match(position or "")
            if m:
                headers += [("sluice.source.topic", m["topic"].encode()), ("sluice.source.partition", m["partition"].encode()),
                            ("sluice.source.offset", m["offset"].encode())]
            out.append((None, (raw or "").encode(), headers, 0))
        return out, []


# Delivery errors about the record itself: it goes to the sink's dead-letter topic, if it has one. Any
# other error (unreachable cluster, missing ACLs, timeouts) would fail every record alike: it stops the run.
RECORD_ERRORS = frozenset({"MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "INVALID_MSG",
                           "INVALID_TIMESTAMP", "POLICY_VIOLATION", "RECORD_LIST_TOO_LARGE"})


# What a topic accepts when its max.message.bytes cannot be read (the broker's default), and what a
# producer sends when its message.max.bytes is not set (librdkafka's default).
BROKER_MESSAGE_LIMIT = 1_048_588
PRODUCER_MESSAGE_LIMIT = 1_000_000
RECORD_OVERHEAD = 4096  # room left for the record batch's and the record's own framing
BIG_RECORD = 64 << 10  # below this, a record fits any sensible limit: no lookup


class DeadLetterFit:
    """Keeps dead letters writable: one larger than the dead-letter topic takes (its max.message.bytes,
    the producer's message.max.bytes) keeps its head only, with its original size and SHA-256 digest in
    headers (sluice.original.size, sluice.original.sha256, sluice.truncated). A dead letter is the record
    that was bad: losing its tail is better than stopping the job on it at every restart."""

    def __init__(self, step: str, topic: str, bootstrap: str, config: Mapping[str, Any]) -> None:
        self.step, self.topic, self.bootstrap, self.config = step, topic, bootstrap, config
        self.limit: int | None = None
        self.truncated = 0

    def _limit(self) -> int:
        if self.limit is None:
            producer = int(self.config.get("message.max.bytes", PRODUCER_MESSAGE_LIMIT))
            self.limit = min(producer, self._topic_limit())
        return self.limit

    def _topic_limit(self) -> int:
        from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

        try:
            admin = AdminClient(client_config(self.bootstrap, self.config))
            res = ConfigResource(ConfigResource.Type.TOPIC, self.topic)
            entries = admin.describe_configs([res], request_timeout=30)[res].result(30)
            return int(entries["max.message.bytes"].value)
        except Exception as exc:  # no DescribeConfigs ACL, or the cluster is away: assume the default
            log.info("dead-letter topic %r: cannot read max.message.bytes (%s); assuming %d", self.topic,
                     exc, BROKER_MESSAGE_LIMIT)
            return BROKER_MESSAGE_LIMIT

    def fit(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> tuple[bytes, list[tuple[str, bytes]]]:
        framing = len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers)
        if len(value) + framing < BIG_RECORD:
            return value, headers
        limit = self._limit()
        if len(value) + framing + RECORD_OVERHEAD <= limit:
            return value, headers
        import hashlib

        marks = [("sluice.truncated", b"true"), ("sluice.original.size", str(len(value)).encode()),
                 ("sluice.original.sha256", hashlib.sha256(value).hexdigest().encode())]
        room = limit - framing - RECORD_OVERHEAD - sum(len(k) + len(v) for k, v in marks)
        if room < 0:
            where = dict(headers).get("sluice.position", b"").decode(errors="replace")
            raise KafkaError(f"step {self.step!r}: a dead letter ({where or 'no position'}) cannot be written to "
                             f"{self.topic!r} even cut short: its key, headers and framing ({framing + RECORD_OVERHEAD} bytes) "
                             f"leave no room within what the topic takes ({limit} bytes); raise the topic's max.message.bytes (kafka-configs.sh "
                             f"--alter --entity-type topics --entity-name {self.topic} --add-config "
                             "max.message.bytes=...) and the producer's message.max.bytes")
        self.truncated += 1
        log.warning("dead-letter topic %r takes records up to %d bytes: a dead letter of %d bytes keeps its first "
                    "%d (its size and SHA-256 are in its headers); raise the topic's max.message.bytes and the "
                    "producer's message.max.bytes to keep whole ones", self.topic, limit, len(value), room)
        return value[:room], headers + marks


def _fingerprint(key: bytes | None, value: bytes) -> bytes:
    import hashlib

    return hashlib.blake2b((key or b"") + b"\x00" + value, digest_size=16).digest()


class KafkaWriter(UntransactedWriter):
    """Produces a sink's records. With `producer` given, the runtime owns it (and its transaction).

    Records that cannot be written go to the sink's dead-letter topic when it has one: those the format
    cannot serialize at once, in the same transaction under the runtime; those the cluster rejects for
    good (RECORD_ERRORS) when their delivery report comes. Under the runtime such a rejection fails the
    transaction (Kafka commits all of it or nothing), so the record is remembered and, when the worker
    replays from the last commit, goes to the dead-letter topic instead."""

    def __init__(self, spec: KafkaSink | DeadLetterTopic, ctx: SinkContext, producer: Any = None) -> None:
        from confluent_kafka import Producer

        self.spec, self.ctx = spec, ctx
        self.codec = spec.codec()  # registers the schema now: an incompatible change fails at startup
        self.dead: DeadLetterTopic | None = getattr(spec, "dead_letters", None)
        self.on_delivery: Callable[[DeliveryReport], None] | None = getattr(spec, "on_delivery", None)
        self.errors: list[str] = []
        self.given = 0  # records given to the sink, for positions
        self.produced = 0
        self.delivered = 0
        self.dead_lettered = 0
        self.rejected: list[tuple[Any, str]] = []  # (message, reason) rejected for good, to dead-letter
        self.poison: set[bytes] = set()  # under the runtime: records to dead-letter when they come again
        self.owned = producer is None
        self.failed = False  # an error was raised: close() drops what is still queued
        if producer is None:
            self.client_errors = ClientErrors()
            conf = client_config(spec.bootstrap, spec.config, **{
                "enable.idempotence": True, "linger.ms": 20, "compression.type": "lz4", "partitioner": PARTITIONER,
                "retry.backoff.ms": 100, "retry.backoff.max.ms": 2000, "error_cb": self.client_errors,
                "message.timeout.ms": int(spec.delivery_timeout_s * 1000)})
            producer = Producer(conf)
            self.producer = producer
            self._check_topic(spec.topic)
            if self.dead is not None:
                if (self.dead.bootstrap, self.dead.config) != (spec.bootstrap, spec.config):
                    raise PlanError(f"write step {ctx.step!r}: the dead-letter topic must be on the sink's cluster "
                                    "(the same bootstrap and config), so one producer writes both")
                self._check_topic(self.dead.topic)
        self.producer = producer
        dead_spec = spec if isinstance(spec, DeadLetterTopic) else self.dead
        self.fit = DeadLetterFit(ctx.step, dead_spec.topic, dead_spec.bootstrap, dead_spec.config) if dead_spec else None
        self.fatal: str | None = None  # under the runtime: a dead letter the cluster refused even cut short
        # a record's report is needed to count it, to pass it on, to dead-letter it, or (a dead letter) to
        # stop with a clear error when even its cut-short form is refused
        self.report = self._report if self.owned or self.on_delivery or self.dead or dead_spec else None

    def _check_topic(self, name: str) -> None:
        """Fail now, with the address and the cause, if the cluster cannot be reached or lacks the topic."""
        spec, step = self.spec, self.ctx.step
        try:
            meta = topic_metadata(self.producer, spec.bootstrap, name, spec.connect_timeout_s, self.client_errors)
        except KafkaError as exc:
            self.failed = True
            raise KafkaError(f"write step {step!r}: {exc}") from None
        topic = meta.topics.get(name)
        if topic is None or topic.error is not None:
            self.failed = True
            reason = _error_text(topic.error) if topic is not None and topic.error is not None else "missing"
            raise KafkaError(f"write step {step!r}: topic {name!r} is not available at {spec.bootstrap} "
                             f"({reason}); create it first, or check the topic name and the principal's ACLs")

    def _report(self, err: Any, msg: Any) -> None:
        key = msg.key()
        if err is not None and isinstance(self.spec, DeadLetterTopic):
            self._dead_report(err, msg)
            return
        if err is None:
            self.delivered += 1
            if self.on_delivery is not None:
                self.on_delivery(DeliveryReport(msg.topic(), msg.partition(), msg.offset(), key))
            return
        text = _error_text(err)
        for_dlq = self.dead is not None and err.name() in RECORD_ERRORS
        if for_dlq and self.owned:
            self.rejected.append((msg, text))
        elif for_dlq:  # the transaction fails; when the record comes again it goes to the dead-letter topic
            self.poison.add(_fingerprint(key, msg.value()))
        elif self.owned:
            fix = ("; to set such records aside, give the sink dead_letters=sl.DeadLetterTopic(...)"
                   if err.name() in RECORD_ERRORS else "")
            self.errors.append(f"{msg.topic()}/{msg.partition()} (key {key!r}): {text}{fix}")
        if self.on_delivery is not None:
            self.on_delivery(DeliveryReport(msg.topic(), msg.partition(), None, key, text, for_dlq and self.owned))

    def metrics(self) -> dict[str, int]:
        counts = {"produced": self.produced, "delivered": self.delivered, "failed": len(self.errors)}
        return {**counts, "dead_lettered": self.dead_lettered} if self.dead is not None else counts

    def write(self, df: pl.DataFrame) -> None:
        rows = user_columns(df)
        if rows.height == 0:
            return
        if self.ctx.changelog_key is not None and OP in rows.columns:
            rows = self._apply_changelog(rows)
            if rows.height == 0:
                return
        msgs, bad = self.spec.messages(rows, self.codec)
        if bad:
            self._unserializable(rows, bad)
        topic = self.spec.topic
        for key, value, headers, ts in msgs:
            if self.fit is not None and isinstance(self.spec, DeadLetterTopic):
                value, headers = self.fit.fit(key, value, list(headers or []))
            if self.poison and _fingerprint(key, value) in self.poison:
                self._dead_letter(key, value, headers, "rejected by the cluster in an earlier attempt of this "
                                  "transaction", f"kafka:{topic}")
                continue
            self._produce(topic, key, value, headers, ts, self.report)
        self.given += rows.height
        self.produced += len(msgs)
        self.producer.poll(0)
        self._flush_rejected()
        self._raise()

    def _apply_changelog(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Upsert semantics, as Kafka compaction and Flink's upsert-kafka read them: a delete is a tombstone
        (the key, no value), an update-before is dropped (the update-after replaces the row), the rest are
        written without `_op`."""
        key = getattr(self.spec, "key", None)
        if key is None:
            raise PlanError(f"write step {self.ctx.step!r} gets a changelog (keyed by {list(self.ctx.changelog_key or ())}); "
                            f"give the sink key={(self.ctx.changelog_key or ('id',))[0]!r} so that a delete can be a "
                            "tombstone of that key")
        deletes = rows.filter(pl.col(OP) == DELETE)
        ts_col = getattr(self.spec, "timestamp", None)
        stamps = deletes[ts_col].cast(pl.Int64).fill_null(0).to_list() if ts_col else [0] * deletes.height
        for k, ts in zip(deletes[key].cast(pl.String).to_list(), stamps, strict=True):
            self._produce(self.spec.topic, None if k is None else k.encode(), None, None, ts, self.report)
        self.produced += deletes.height
        return rows.filter(~pl.col(OP).is_in([DELETE, UPDATE_BEFORE])).drop(OP)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Any, ts: int, report: Any) -> None:
        from confluent_kafka import KafkaError as KafkaErrorCode
        from confluent_kafka import KafkaException

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, timestamp=ts, on_delivery=report)
                return
            except BufferError:  # the local queue is full: let it drain (backpressure)
                self.producer.poll(0.05)
            except KafkaException as exc:  # refused before sending (e.g. larger than message.max.bytes)
                err = exc.args[0]
                if not self.owned and err.code() in (KafkaErrorCode._FATAL, KafkaErrorCode._FENCED, KafkaErrorCode._STATE):
                    raise  # the runtime's producer failed as a whole: the runtime makes a new one and rewinds
                if err.code() == err._STATE:  # not the record: the producer's transaction failed
                    self.failed = True
                    raise KafkaError(f"write step {self.ctx.step!r}: the transaction open on {topic!r} failed "
                                     f"({_error_text(err)}; seen when a broker of the cluster was lost). Nothing "
                                     "of it is committed: run it again, it resumes from the last commit, "
                                     "exactly once") from None
                if self.dead is None or topic == self.dead.topic or err.name() not in RECORD_ERRORS:
                    self.failed = True
                    raise KafkaError(f"write step {self.ctx.step!r}: a record (key {key!r}) cannot be produced to "
                                     f"{topic!r}: {_error_text(err)}; to set such records aside, give the sink "
                                     "dead_letters=sl.DeadLetterTopic(...)") from None
                self._dead_letter(key, value or b"", headers, f"not produced: {_error_text(err)}", f"kafka:{topic}")
                return

    def _unserializable(self, rows: pl.DataFrame, bad: list[tuple[int, str]]) -> None:
        raws = rows_as_json(rows[[i for i, _ in bad]])
        if self.dead is None:
            i, reason = bad[0]
            self.failed = True
            raise EncodeError(self.ctx.step, f"record {self.given + i} written to {self.spec.topic!r}",
                            f"{len(bad)} record(s) cannot be written, the first {reason}; it reads {raws[0][:200]!r}",
                            "correct the records upstream, or set them aside: give the sink "
                            "dead_letters=sl.DeadLetterTopic(...)")
        key = getattr(self.spec, "key", None)
        for (i, reason), raw in zip(bad, raws, strict=True):
            k = rows[key][i] if key else None
            self._dead_letter(None if k is None else str(k).encode(), raw.encode(), None, reason,
                              f"record {self.given + i} written to {self.spec.topic!r}")

    def _flush_rejected(self) -> None:
        rejected, self.rejected = self.rejected, []
        for msg, reason in rejected:
            self._dead_letter(msg.key(), msg.value(), msg.headers(), f"not delivered: {reason}",
                              f"kafka:{msg.topic()}/{msg.partition()}")

    def _dead_letter(self, key: bytes | None, value: bytes, headers: Any, reason: str, position: str) -> None:
        """A record that cannot be written, to the dead-letter topic (in the same transaction under the runtime)."""
        assert self.dead is not None
        marks = [("sluice.reason", reason.encode()), ("sluice.step", self.ctx.step.encode()),
                 ("sluice.position", position.encode()), ("sluice.target.topic", self.spec.topic.encode())]
        assert self.fit is not None
        value, all_headers = self.fit.fit(key, value, marks + list(headers or []))
        self._produce(self.dead.topic, key, value, all_headers, 0, self._dead_report)
        self.dead_lettered += 1

    def _dead_report(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        # a dead letter lost would be a record lost: stop, saying which and how to make room
        where = dict(msg.headers() or []).get("sluice.position", b"").decode(errors="replace")
        text = (f"step {self.ctx.step!r}: a dead letter ({where or 'no position'}, {len(msg.value() or b'')} bytes) "
                f"was not written to {msg.topic()}/{msg.partition()}: {_error_text(err)}")
        if err.name() in RECORD_ERRORS:
            text += ("; raise the dead-letter topic's max.message.bytes (kafka-configs.sh --alter --entity-type topics "
                     f"--entity-name {msg.topic()} --add-config max.message.bytes=...) and the producer's "
                     "message.max.bytes")
            self.fatal = self.fatal or text  # under the runtime every retry would fail alike
        if self.owned:
            self.errors.append(text)

    def _raise(self) -> None:
        if self.errors and self.errors[0].startswith("step "):  # a dead letter not written: its own words
            self.failed = True
            raise KafkaError(self.errors[0])
        if self.errors:
            self.failed = True
            first = self.errors[0]
            raise KafkaError(f"sink {self.ctx.step!r}: {len(self.errors)} record(s) were not delivered to "
                             f"{self.spec.bootstrap}, e.g. {first}")

    def prepare(self, epoch: int) -> dict[str, Any]:
        if not self.owned:
            return {}
        wait_s = self.spec.delivery_timeout_s + 5  # librdkafka fails each record after delivery_timeout_s
        left = self.producer.flush(wait_s)
        if self.rejected:  # their reports came during the flush: send them aside, and wait for those
            self._flush_rejected()
            left = self.producer.flush(wait_s)
        if left:
            self.failed = True
            raise KafkaError(f"sink {self.ctx.step!r}: {left} record(s) not delivered to {self.spec.bootstrap} within "
                             f"{wait_s:g} s{self.client_errors.cause(self.producer)}. Check that the cluster is "
                             "reachable from here; delivery_timeout_s= sets how long to wait")
        self._raise()
        return {}

    def close(self) -> None:
        if not self.owned:
            return
        if self.failed:  # the run stops with an error already: do not wait for the rest
            self.producer.purge()
            self.producer.flush(0)
        else:
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
