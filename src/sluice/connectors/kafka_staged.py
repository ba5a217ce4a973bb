"""A Kafka sink under a checkpointed `sl.run`: exactly-once through the epoch commit.

Kafka cannot hold a transaction open across a process crash and let a restarted process commit it (the
Java client can, by reflection; librdkafka cannot). So the epoch's messages are staged locally instead:

    write      the sink encodes each record now (a record its format rejects fails, or goes to the
               dead-letter topic, at its position) and keeps the message
    prepare    the epoch's messages go to an Arrow file in the checkpoint's staging directory (fsync);
               its path is the transaction the checkpoint manifest records
    commit     one Kafka transaction (transactional.id = sluice-<flow>-<step>-<lineage>, the lineage being
               an id made once per checkpoint directory) produces the staged messages and a marker
               (that id → epoch) to the compacted topic `sluice-commits`; then the staged file is deleted
    recover    the recorded epoch is committed again unless the marker says it was: the marker and the
               messages are committed together, so they are both there or both not

Consumers read with isolation.level=read_committed. Records reach the topic at each checkpoint, so the
checkpoint interval bounds the latency. Delivery reports (`on_delivery`) are not given for staged
messages; a record the cluster rejects for good fails the commit with a clear error.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import polars as pl

from sluice.connectors.api import SinkContext, staging_lineage
from sluice.connectors.kafka import (
    PARTITIONER,
    KafkaError,
    KafkaWriter,
    _error_text,
    client_config,
    topic_metadata,
)
from sluice.core.errors import SinkAheadError

MARKERS = "sluice-commits"
_SCHEMA: dict[str, pl.DataType] = {"topic": pl.String(), "key": pl.Binary(), "value": pl.Binary(),
           "headers": pl.List(pl.Struct({"k": pl.String, "v": pl.Binary})), "ts": pl.Int64(),
           "partition": pl.Int64()}


class _StagingProducer:
    """Takes the place of a producer during an epoch: it keeps the messages; nothing reaches Kafka."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, ...]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None,
                timestamp: int = 0, on_delivery: Any = None, partition: int = -1) -> None:
        pairs = [{"k": k, "v": v if isinstance(v, bytes | None) else str(v).encode()} for k, v in (headers or [])]
        self.messages.append((topic, key, value, pairs, int(timestamp or 0), int(partition)))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def purge(self) -> None:
        self.messages = []


class StagedKafkaWriter:
    """KafkaSink / DeadLetterTopic under a checkpointed sl.run (see the module docstring)."""

    def __init__(self, spec: Any, ctx: SinkContext) -> None:
        assert ctx.staging_dir is not None
        self.spec, self.ctx = spec, ctx
        self.staging = _StagingProducer()
        self.inner = KafkaWriter(spec, ctx, producer=self.staging)
        self.dir = Path(ctx.staging_dir) / ctx.step
        # the checkpoint directory's lineage: a new directory is a new job, whose epochs start again at 1
        self.txn_id = f"sluice-{ctx.txn_prefix}-{staging_lineage(ctx.staging_dir)}"
        self.producer: Any = None
        self.last_epoch: int | None = None  # the newest epoch the marker topic says is committed

    def write(self, df: pl.DataFrame) -> None:
        self.inner.write(df)

    def metrics(self) -> dict[str, int]:
        return self.inner.metrics()

    # --- the epoch commit ---------------------------------------------------------------------------
    def prepare(self, epoch: int) -> dict[str, Any]:
        msgs, self.staging.messages = self.staging.messages, []
        if not msgs:
            return {"epoch": epoch}
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{epoch:08d}.arrow"
        pl.DataFrame(msgs, schema=_SCHEMA, orient="row").write_ipc(path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return {"epoch": epoch, "staged": str(path), "messages": len(msgs)}

    def commit(self, txn: dict[str, Any]) -> None:
        staged = txn.get("staged")
        if not staged or not os.path.exists(staged):
            return  # nothing to publish, or published already (the file goes once its transaction commits)
        epoch = int(txn["epoch"])
        producer = self._producer()
        if epoch <= self._committed_epoch():
            os.unlink(staged)  # committed before a crash that came before the file was deleted
            return
        from confluent_kafka import KafkaException

        msgs = pl.read_ipc(staged)
        try:
            producer.begin_transaction()
            for topic, key, value, headers, ts, partition in msgs.iter_rows():
                hs = [(h["k"], h["v"]) for h in headers] if headers else None
                extra = {"partition": partition} if partition >= 0 else {}
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, headers=hs, timestamp=ts, **extra)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.produce(MARKERS, value=str(epoch).encode(), key=self.txn_id.encode(), partition=0)
            producer.commit_transaction(120)
        except KafkaException as exc:
            with contextlib.suppress(Exception):
                producer.abort_transaction(30)
            raise KafkaError(f"write step {self.ctx.step!r}: committing checkpoint {epoch} to {self.spec.topic!r} "
                             f"failed: {_error_text(exc.args[0])}. Nothing of it is visible; run again with the same "
                             "checkpoint directory to retry") from None
        self.last_epoch = epoch
        os.unlink(staged)

    def _has_staged_before(self) -> bool:
        """This checkpoint directory staged epochs for the sink before (a start without a checkpoint then
        means the checkpoints were lost, not a new job)."""
        return self.dir.exists()

    def abort(self, txn: dict[str, Any]) -> None:
        if txn.get("staged"):
            Path(txn["staged"]).unlink(missing_ok=True)

    def recover(self, txn: dict[str, Any] | None) -> None:
        recorded = int(txn["epoch"]) if txn and txn.get("epoch") is not None else 0
        if txn or self._has_staged_before():
            self._producer()
            applied = self._committed_epoch()
            if applied > recorded:
                raise SinkAheadError(self.ctx.step, f"topic {self.spec.topic!r} (marker {self.txn_id!r} in {MARKERS!r})",
                                     applied, recorded)
        if txn:
            self.commit(txn)
        if self.dir.exists():
            for stray in self.dir.glob("*.arrow"):  # staged after the recorded epoch: never committed
                stray.unlink()
        self.staging.messages = []

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(10)

    # --- Kafka --------------------------------------------------------------------------------------
    def _producer(self) -> Any:
        """The transactional producer; `init_transactions` fences any earlier instance of this sink."""
        if self.producer is None:
            from confluent_kafka import Producer

            conf = client_config(self.spec.bootstrap, self.spec.config, **{
                "transactional.id": self.txn_id, "enable.idempotence": True, "linger.ms": 20,
                "compression.type": "lz4", "partitioner": PARTITIONER, "transaction.timeout.ms": 60_000})
            producer = Producer(conf)
            self._ensure_markers(producer)
            producer.init_transactions(60)
            self.producer = producer
        return self.producer

    def _ensure_markers(self, client: Any) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        meta = topic_metadata(client, self.spec.bootstrap, None, 30)
        if MARKERS in meta.topics:
            return
        admin = AdminClient(client_config(self.spec.bootstrap, self.spec.config))
        try:
            admin.create_topics([NewTopic(MARKERS, 1, 1, config={"cleanup.policy": "compact"})])[MARKERS].result(30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise KafkaError(f"write step {self.ctx.step!r}: cannot create the commit-marker topic {MARKERS!r} "
                                 f"at {self.spec.bootstrap}: {exc}") from None

    def _committed_epoch(self) -> int:
        """The newest epoch whose marker is committed (read once; afterwards this writer keeps it)."""
        if self.last_epoch is not None:
            return self.last_epoch
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(client_config(self.spec.bootstrap, self.spec.config, **{
            "group.id": f"{self.txn_id}-markers", "isolation.level": "read_committed",
            "enable.auto.commit": False, "enable.partition.eof": True}))
        last = -1
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(MARKERS, 0), 30)
            if high > low:
                consumer.assign([TopicPartition(MARKERS, 0, low)])
                done = False
                while not done:
                    for m in consumer.consume(1000, 5.0):
                        err = m.error()
                        if err is not None:
                            if err.code() == err._PARTITION_EOF:
                                done = True
                                break
                            raise KafkaError(f"reading {MARKERS}: {_error_text(err)}")
                        if m.key() == self.txn_id.encode():
                            last = int(m.value() or b"-1")
        finally:
            consumer.close()
        self.last_epoch = last
        return last
