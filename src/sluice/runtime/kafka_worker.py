"""The Kafka runtime: one flow, many worker processes, partitions assigned by a consumer group.

Each input partition is a *task* (as in Kafka Streams): its own operators, state and watermark, fed
only by that partition (and the same partition of every other, co-partitioned, input topic). A worker
runs the tasks the group gives it. Every `commit_interval_s` it commits, in one Kafka transaction:

    the output its tasks produced  +  each task's state (to the compacted topic <app_id>-state,
    partition = task)  +  the input offsets (sendOffsetsToTransaction, with the group's metadata)

so the output, the state and the positions move together or not at all. On assignment a task reads its
newest committed state and starts at the committed offsets (which are the ones saved with that state);
a worker that dies leaves an open transaction that the broker aborts after `transaction_timeout_ms`,
and its partitions resume elsewhere from the last commit. Consumers of the output must read with
isolation.level=read_committed.

A failed commit is handled as librdkafka asks: retriable errors are retried, abortable ones abort and
rewind the tasks to the last commit, and anything else, a timeout included (librdkafka lacks KIP-890),
is fatal for the producer: a new one is made with the same transactional.id (which fences the old one)
and the tasks rewind.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from sluice.checkpoint.store import pack_state, unpack_state
from sluice.connectors.api import SinkContext, SourceContext
from sluice.connectors.kafka import (
    FETCH_TUNING,
    PARTITIONER,
    DeadLetterTopic,
    Decoder,
    KafkaError,
    KafkaSink,
    KafkaSource,
    KafkaWriter,
    _error_text,
    bootstrap_servers,
    client_config,
    topic_metadata,
)
from sluice.core.batch import END_OF_TIME, NO_WATERMARK, Batch, Origin
from sluice.core.errors import PlanError
from sluice.core.failpoints import failpoint
from sluice.core.plan import Plan, Read, Step, Write
from sluice.operators.stateless import EventTimeOperator
from sluice.runtime.commit import EpochCommit
from sluice.runtime.executor import DEFAULT_BATCH_SIZE, Executor, warn_unrouted
from sluice.runtime.repartition import (
    RepartitionReader,
    RepartitionSink,
    RepartitionSource,
    RepartitionWriter,
    split,
)

log = logging.getLogger("sluice.kafka")
CHUNK_BYTES = 900_000  # state messages stay under the broker's default 1 MB limit


@dataclass(frozen=True)
class KafkaRuntime:
    """How a flow runs over Kafka. Workers with the same `app_id` share the work."""

    app_id: str
    bootstrap: str | None = None  # default: the sources' bootstrap
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # security settings etc.; never shown
    commit_interval_s: float = 1.0
    transaction_timeout_ms: int = 10_000
    session_timeout_ms: int = 10_000
    until_end: bool = False  # stop once every input partition is committed at its end offset (as of start)
    instance: str | None = None  # this worker's name (its transactional.id suffix); default random
    max_failed_commits: int = 8  # consecutive failed commits (each retried after a growing pause) before giving up
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_records: int = 20_000

    def __post_init__(self) -> None:
        if self.bootstrap is not None:  # kafka://HOST:PORT or HOST:PORT[,HOST:PORT]
            object.__setattr__(self, "bootstrap", bootstrap_servers(self.bootstrap))


@dataclass
class WorkerResult:
    records: int = 0
    seconds: float = 0.0
    commits: int = 0
    rewinds: int = 0
    producer_restarts: int = 0
    tasks_started: int = 0
    produced: int = 0  # records sent to output and dead-letter topics (committed or rewound)
    first_assigned: float = 0.0  # wall clock (time.time()) of the first assignment
    finished: float = 0.0  # wall clock when the work was done (before closing the clients)
    late: dict[str, int] = field(default_factory=dict)  # step → rows put on its late stream (committed work)
    dead_letters: dict[str, int] = field(default_factory=dict)  # step → records dead-lettered (committed work)


@dataclass(frozen=True)
class _FeedSource:
    """Stands in for a Kafka source inside a task: the worker reads and decodes, then feeds the task."""

    topic: str

    def open(self, ctx: SourceContext) -> _FeedReader:
        return _FeedReader()


class _FeedReader:
    def partitions(self) -> int:
        return 1

    def batches(self) -> Any:
        return iter(())

    def position(self) -> dict[str, Any]:
        return {}

    def seek(self, position: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _SharedSink:
    """Stands in for a Kafka sink inside a task: records go to the worker's transactional producer."""

    writer: Any  # KafkaWriter | RepartitionWriter

    def open(self, ctx: SinkContext) -> Any:
        return self.writer


def check_partitioning(plan: Plan, keys: set[str | None] | None = None) -> None:
    """Tasks see one partition each, so every keyed step must be keyed by what the topics are keyed by."""
    if keys is None:
        keys = {st.source.key for st in plan.steps if isinstance(st, Read)}
    for st in plan.steps:
        if isinstance(st, Read | Write) or not st.stateful:
            continue
        names = list(st.key_columns() or ())
        if not names:
            raise PlanError(f"step {st.name!r} keeps state over all records; under the Kafka runtime each partition "
                            "is processed on its own. Key the step (key_by) by the input topics' key")
        if len(keys) != 1 or None in keys or ",".join(names) != next(iter(keys)):
            declared = ", ".join(sorted(k or "none" for k in keys))
            raise PlanError(
                f"step {st.name!r} is keyed by {names} but the input topics are keyed by {declared}. Under the Kafka "
                "runtime a task sees one partition, so state must be keyed as the topic is partitioned: declare the "
                "topic's key (KafkaSource(..., key='field')), or first write the stream to a topic keyed by "
                f"{names[0]!r} (KafkaSink(..., key={names[0]!r})) and read that")


def _create_topic(admin: Any, topic: str, partitions: int, config: dict[str, str], what: str) -> None:
    """Create an internal topic; another worker creating it first is fine."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    try:
        admin.create_topics([NewTopic(topic, partitions, 1, config=config)])[topic].result(30)
    except Exception as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise KafkaError(f"cannot create the {what} topic {topic!r}: {exc}") from None


def _resolve_topics(plan: Plan, rt: KafkaRuntime) -> Plan:
    """sl.Topic sources and sinks, on Kafka at rt.bootstrap."""
    from sluice.connectors.topic import Topic

    steps: list[Step] = []
    for st in plan.steps:
        spec = st.source if isinstance(st, Read) else st.sink if isinstance(st, Write) else None
        if isinstance(spec, Topic):
            if not rt.bootstrap:
                raise PlanError(f"step {st.name!r} uses sl.Topic({spec.name!r}); say which Kafka cluster: "
                                "KafkaRuntime(bootstrap=...) or sluice run --broker kafka://HOST:PORT")
            broker = f"kafka://{rt.bootstrap}"
            if isinstance(st, Read):
                st = replace(st, source=spec.source(broker))
            elif isinstance(st, Write):
                st = replace(st, sink=spec.sink(broker))
        steps.append(st)
    return Plan(plan.name, tuple(steps))


class _Task:
    """One partition number: the upstream part reads that partition of every input topic, the downstream
    part (if the flow repartitions) that partition of the internal topic. Each part has its executor."""

    def __init__(self, worker: Worker, partition: int) -> None:
        self.p = partition
        self.worker = worker
        self.parts = [Executor(plan, worker.rt.batch_size, task=partition, instance=worker.instance, exactly_once=True)
                      for plan in worker.task_plans]
        # the task's own sinks (files, databases …): participants in the epoch commit whose prepared
        # transactions travel in the task's snapshot, inside the Kafka transaction (runtime/commit.py)
        self.commit = EpochCommit({name: w for ex in self.parts for name, w in ex.writers.items()
                                   if name not in worker.writers})
        self.prepared: dict[str, dict[str, Any]] = {}
        self.restored_sinks: dict[str, Any] | None = None
        self.decoders: dict[str, tuple[str, Decoder, Origin]] = {}
        for name, spec in worker.reads.items():
            step = worker.plan.step(name)
            assert isinstance(step, Read)
            ctx = SourceContext(name, step.schema, worker.rt.batch_size, step.on_error)
            self.decoders[spec.topic] = (name, Decoder(spec, ctx, spec.schema_for(ctx)),
                                         Origin(name, 0, f"kafka:{spec.topic}/{partition}"))
        self.shuffle: RepartitionReader | None = None
        if worker.shuffle_read is not None:
            step = worker.shuffle_read
            self.shuffle = RepartitionReader(step.source, step.name, partition, worker.partitions)
        self.positions: dict[str, int] = {}
        self.ended: set[str] = set()
        self.finished_up = False
        self.finished = False
        self.sent_wm = NO_WATERMARK
        self.sid = 0
        self.dirty = False

    def _check(self, topic: str, msgs: list[Any]) -> list[Any]:
        start = self.positions.get(topic, 0)
        if msgs[0].offset() < start:  # fetched before a rewind: already in the state
            msgs = [m for m in msgs if m.offset() >= start]
        return msgs

    def feed(self, topic: str, msgs: list[Any]) -> None:
        msgs = self._check(topic, msgs)
        if not msgs:
            return
        if self.shuffle is not None and topic == self.shuffle.spec.topic:
            name = self.worker.shuffle_read.name  # type: ignore[union-attr]
            for batch in self.shuffle.decode(msgs):
                self.parts[1].feed(name, "out", batch)
            if self.shuffle.ended and not self.finished:
                self.parts[1].finish()
                self.finished = self.finished_up
        else:
            self.worker.aim_shuffle(self.p)
            name, decoder, origin = self.decoders[topic]
            for port, batch in decoder.decode(origin, msgs):
                self.parts[0].feed(name, port, batch)
        self.positions[topic] = msgs[-1].offset() + 1
        self.dirty = True

    def at_least(self, topic: str, offset: int) -> None:
        """The consumer reached `offset` (end of partition): offsets past transaction markers count as read."""
        if offset > self.positions.get(topic, 0):
            self.positions[topic] = offset
            self.dirty = True

    def upstream_watermark(self) -> int | None:
        """The watermark where the upstream part hands records to the internal topic."""
        wms = [op.wms.current for op in self.parts[0].ops.values() if isinstance(op, EventTimeOperator)]
        return min(wms) if wms else None

    def end(self, topic: str) -> None:
        if topic in self.ended or self.finished_up:
            return
        self.ended.add(topic)
        name, _, origin = self.decoders[topic]
        self.worker.aim_shuffle(self.p)
        self.parts[0].feed(name, "out", Batch(pl.DataFrame(), origin=origin, end_of_partition=True))
        if self.ended == set(self.decoders):
            self.parts[0].finish()
            self.finished_up = True
            if self.shuffle is not None:
                self.worker.shuffle_marker(self.p, "end", END_OF_TIME)
                self.finished = self.shuffle.ended
            else:
                self.finished = True
        self.dirty = True

    def records(self) -> int:
        return self.parts[0].rows_read

    def prepare(self) -> None:
        """Phase one for the task's own sinks: stage the epoch durably (recorded by `snapshot`)."""
        self.prepared = self.commit.prepare(self.sid + 1) if self.commit.writers else {}

    def commit_sinks(self) -> None:
        """Phase two, once the Kafka transaction holding the snapshot has committed."""
        if self.prepared:
            self.commit.commit(self.prepared)
        self.prepared = {}

    def abort_sinks(self) -> None:
        if self.prepared:
            self.commit.abort(self.prepared)
        self.prepared = {}

    def recover_sinks(self) -> None:
        """The task starts (restored or new): commit its last recorded epoch again, drop later staging."""
        if self.commit.writers:
            self.commit.recover(self.restored_sinks)

    def close(self) -> None:
        for ex in self.parts:
            for name, writer in ex.writers.items():
                if name in self.commit.writers:
                    writer.close()
            for op in ex.ops.values():
                op.close()

    def snapshot(self) -> bytes:
        self.sid += 1
        meta = {"partition": self.p, "sid": self.sid, "positions": self.positions, "ended": sorted(self.ended),
                "finished_up": self.finished_up, "finished": self.finished, "flow": self.worker.plan.name,
                "sent_wm": self.sent_wm, "shuffle": self.shuffle.state() if self.shuffle is not None else None,
                "sinks": self.prepared}
        steps = {f"{i}/{name}": v for i, ex in enumerate(self.parts) for name, v in ex.snapshot_state().items()}
        return pack_state(steps, meta)

    def restore(self, data: bytes) -> None:
        meta, steps, load = unpack_state(data)
        for i, ex in enumerate(self.parts):
            mine = {k.split("/", 1)[1]: v for k, v in steps.items() if k.startswith(f"{i}/")}
            prefix = f"{i}/"
            ex.apply_state(mine, lambda name, prefix=prefix: load(prefix + name),  # type: ignore[misc]
                           f"the state of task {self.p} in topic {self.worker.state_topic}")
        self.sid = int(meta["sid"])
        self.positions = {t: int(o) for t, o in meta["positions"].items()}
        self.ended = set(meta["ended"])
        self.finished_up = bool(meta["finished_up"])
        self.finished = bool(meta["finished"])
        self.sent_wm = int(meta["sent_wm"])
        self.restored_sinks = meta.get("sinks") or None
        if self.shuffle is not None and meta["shuffle"] is not None:
            self.shuffle.restore(meta["shuffle"])
        if self.shuffle is None and self.finished:
            # the input had ended (until_end); the topic may have gained records since: go on with them,
            # event time from the last real watermark (Executor.apply_state reopened the operators)
            self.ended, self.finished_up, self.finished = set(), False, False


class Worker:
    """Runs a flow's tasks for the partitions its consumer group assigns to it."""

    def __init__(self, flow: Any, rt: KafkaRuntime, progress: Callable[[int, float], None] | None = None) -> None:
        plan = flow.plan() if hasattr(flow, "plan") else flow
        if not isinstance(plan, Plan):
            raise PlanError(f"the Kafka runtime takes a Flow or a Plan, got {type(flow).__name__}")
        plan = _resolve_topics(plan, rt)
        plan.validate()
        self.plan, self.rt, self.progress = plan, rt, progress
        self.reads: dict[str, KafkaSource] = {}
        for st in plan.steps:
            if isinstance(st, Read):
                if not isinstance(st.source, KafkaSource):
                    raise PlanError(f"read step {st.name!r} reads {type(st.source).__name__}; under the Kafka runtime "
                                    "every source is a Kafka topic (KafkaSource, or sl.Topic with a Kafka broker)")
                self.reads[st.name] = st.source
        if len({s.topic for s in self.reads.values()}) != len(self.reads):
            raise PlanError("two read steps read the same topic; read it once and branch the stream")
        keys = {s.key for s in self.reads.values()}
        up, down = split(plan, next(iter(keys)) if len(keys) == 1 else None, rt.app_id)
        check_partitioning(up, keys)
        self.subplans = [up]
        self.shuffle_read: Read | None = None
        self.shuffle_writer: RepartitionWriter | None = None
        if down is not None:
            read = down.steps[0]
            assert isinstance(read, Read) and isinstance(read.source, RepartitionSource)
            check_partitioning(down, {",".join(read.source.keys)})
            self.subplans.append(down)
            self.shuffle_read = read
        first = next(iter(self.reads.values()))
        self.bootstrap = rt.bootstrap or first.bootstrap
        self.config = {**first.config, **rt.config}
        self.state_topic = f"{rt.app_id}-state"
        self.instance = rt.instance or uuid.uuid4().hex[:8]
        self.topics = {s.topic: name for name, s in self.reads.items()}
        self.all_topics = list(self.topics)
        if self.shuffle_read is not None:
            self.all_topics.append(self.shuffle_read.source.topic)
        self.writers: dict[str, Any] = {}
        self.task_plans: list[Plan] = []
        self.partitions = 0
        self.tasks: dict[int, _Task] = {}
        self.result = WorkerResult()
        self.failed_commits = 0
        self.stopping = False  # stop(): finish the current batch, commit, leave the group
        self.closing = False  # the consumer is closing: rebalance callbacks must not start tasks
        self.broken = False  # an error is propagating: commit nothing more
        self.ends: dict[tuple[str, int], int] = {}
        self.producer: Any = None
        self.consumer: Any = None
        self.state_reader: Any = None

    # --- setup ----------------------------------------------------------------------------------
    def _task_plan(self, plan: Plan) -> Plan:
        steps: list[Step] = []
        for st in plan.steps:
            if isinstance(st, Read):
                steps.append(replace(st, source=_FeedSource(getattr(st.source, "topic", st.name))))
            elif isinstance(st, Write) and isinstance(st.sink, RepartitionSink):
                self.shuffle_writer = RepartitionWriter(st.sink, self.partitions, _ProducerRef(self))
                self.writers[st.name] = self.shuffle_writer
                steps.append(replace(st, sink=_SharedSink(self.shuffle_writer)))
            elif isinstance(st, Write) and isinstance(st.sink, KafkaSink | DeadLetterTopic):
                writer = KafkaWriter(st.sink, SinkContext(st.name, exactly_once=True, flow=plan.name,
                                                          instance=self.instance), producer=_ProducerRef(self))
                self.writers[st.name] = writer
                steps.append(replace(st, sink=_SharedSink(writer)))
            else:
                steps.append(st)
        return Plan(plan.name, tuple(steps))

    def aim_shuffle(self, task: int) -> None:
        """Records written to the internal topic from now on come from `task`."""
        if self.shuffle_writer is not None:
            self.shuffle_writer.task = task

    def shuffle_marker(self, task: int, kind: str, watermark: int) -> None:
        if self.shuffle_writer is not None:
            self.shuffle_writer.task = task
            self.shuffle_writer.marker(kind, watermark)

    def _admin_setup(self) -> int:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(client_config(self.bootstrap, self.config))
        meta = topic_metadata(admin, self.bootstrap, None, 30)
        counts = {}
        for topic in self.topics:
            t = meta.topics.get(topic)
            if t is None or t.error is not None:
                raise KafkaError(f"input topic {topic!r} is not available at {self.bootstrap}")
            counts[topic] = len(t.partitions)
        if len(set(counts.values())) != 1:
            raise KafkaError(f"the input topics must have the same number of partitions (co-partitioned): {counts}")
        for st in self.plan.steps:
            if isinstance(st, Write) and isinstance(st.sink, KafkaSink | DeadLetterTopic) and st.sink.topic not in meta.topics:
                raise KafkaError(f"write step {st.name!r}: output topic {st.sink.topic!r} does not exist at "
                                 f"{self.bootstrap}; create it first (e.g. with as many partitions as the input)")
        n = next(iter(counts.values()))
        if self.shuffle_read is not None and self.shuffle_read.source.topic not in meta.topics:
            _create_topic(admin, self.shuffle_read.source.topic, n, {"retention.ms": str(7 * 86_400_000)}, "repartition")
        state = meta.topics.get(self.state_topic)
        if state is None:
            _create_topic(admin, self.state_topic, n,
                          {"cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}, "state")
        elif len(state.partitions) < n:
            raise KafkaError(f"state topic {self.state_topic!r} has {len(state.partitions)} partitions, the input {n}")
        return n

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        conf = client_config(self.bootstrap, self.config, **{
            "transactional.id": f"{self.rt.app_id}-{self.instance}", "enable.idempotence": True,
            "transaction.timeout.ms": self.rt.transaction_timeout_ms, "linger.ms": 20, "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000, "partitioner": PARTITIONER})
        producer = Producer(conf)
        producer.init_transactions(30)
        producer.begin_transaction()
        return producer

    def _open(self) -> None:
        from confluent_kafka import Consumer

        n = self._admin_setup()
        self.partitions = n
        self.task_plans = [self._task_plan(plan) for plan in self.subplans]
        self.producer = self._new_producer()
        group = client_config(self.bootstrap, self.config, **FETCH_TUNING, **{
            "group.id": self.rt.app_id, "isolation.level": "read_committed", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest", "enable.partition.eof": True,
            "partition.assignment.strategy": "range", "session.timeout.ms": self.rt.session_timeout_ms,
            "heartbeat.interval.ms": max(self.rt.session_timeout_ms // 5, 500)})
        self.consumer = Consumer(group)
        self.state_reader = Consumer(client_config(self.bootstrap, self.config, **{
            "group.id": f"{self.rt.app_id}-state-reader", "isolation.level": "read_committed",
            "enable.auto.commit": False, "enable.partition.eof": True}))
        if self.rt.until_end:
            from confluent_kafka import TopicPartition

            for topic in self.topics:
                for p in range(n):
                    self.ends[(topic, p)] = int(self.consumer.get_watermark_offsets(TopicPartition(topic, p), 30)[1])

    # --- tasks ----------------------------------------------------------------------------------
    def _read_states(self, ps: list[int]) -> dict[int, bytes]:
        """The newest committed snapshot of each task in `ps` (tasks without one are left out)."""
        from confluent_kafka import TopicPartition

        todo: dict[int, int] = {}
        for p in ps:
            low, high = self.state_reader.get_watermark_offsets(TopicPartition(self.state_topic, p), 30)
            if high > low:
                todo[p] = int(low)
        found: dict[int, bytes] = {}
        if not todo:
            return found
        self.state_reader.assign([TopicPartition(self.state_topic, p, o) for p, o in todo.items()])
        latest: dict[int, tuple[int, int, dict[int, bytes]]] = {p: (-1, 0, {}) for p in todo}
        waiting = set(todo)
        deadline = time.monotonic() + 120
        while waiting:
            if time.monotonic() > deadline:
                raise KafkaError(f"reading the state topic {self.state_topic} (partitions {sorted(waiting)}) timed out")
            for m in self.state_reader.consume(10_000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == err._PARTITION_EOF:
                        waiting.discard(m.partition())
                        continue
                    raise KafkaError(f"reading the state topic {self.state_topic}/{m.partition()}: {_error_text(err)}")
                h = dict(m.headers() or [])
                sid, i, n = int(h["sid"]), int(h["i"]), int(h["n"])
                best = latest[m.partition()]
                if sid > best[0]:
                    best = latest[m.partition()] = (sid, n, {})
                if sid == best[0]:
                    best[2][i] = m.value()
        self.state_reader.unassign()
        for p, (sid, n, chunks) in latest.items():
            if sid >= 0 and len(chunks) == n:
                found[p] = b"".join(chunks[i] for i in range(n))
        return found

    def _build_tasks(self, partitions: list[Any]) -> list[Any]:
        """Tasks for newly assigned partitions, restored from committed state; returns the partitions with
        the offsets to start from (the ones committed with that state)."""
        from confluent_kafka import TopicPartition

        if not self.result.first_assigned:
            self.result.first_assigned = time.time()
        committed = self._committed(partitions)
        offsets = {(tp.topic, tp.partition): tp.offset for tp in committed}
        out = []
        ps = sorted({tp.partition for tp in partitions})
        want = {p: {t: o for (t, q), o in offsets.items() if q == p and o >= 0} for p in ps}
        tasks: dict[int, _Task] = {}
        deadline = time.monotonic() + 60
        todo = list(ps)
        while todo:
            states = self._read_states(todo)
            for p in list(todo):
                task = _Task(self, p)
                if p in states:
                    task.restore(states[p])
                if task.positions == want[p] or (not want[p] and p not in states):
                    tasks[p] = task
                    todo.remove(p)
                else:
                    task.close()
            if todo and time.monotonic() > deadline:
                raise KafkaError(f"tasks {todo}: the committed offsets and the newest state in {self.state_topic} "
                                 "disagree (was the state topic deleted or written by another application?)")
            if todo:
                time.sleep(0.2)  # a commit's markers are still on their way
        for p in ps:
            task = tasks[p]
            task.recover_sinks()  # its own sinks: the recorded epoch committed (again), later staging dropped
            for topic in self.all_topics:
                if topic not in task.positions:
                    low = self.consumer.get_watermark_offsets(TopicPartition(topic, p), 30)[0]
                    task.positions[topic] = int(low)
                out.append(TopicPartition(topic, p, task.positions[topic]))
            self.tasks[p] = task
            self.result.tasks_started += 1
            log.info("worker %s: task %d starts at %s%s", self.instance, p, task.positions,
                     " (restored)" if want[p] else "")
        return out

    def _committed(self, tps: list[Any]) -> list[Any]:
        """The group's committed offsets (stable: waits for transactions in flight), retrying while the
        group coordinator moves or loads."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + 120
        while True:
            try:
                return list(self.consumer.committed(tps, timeout=30))
            except KafkaException as exc:
                # transient while the group coordinator moves, loads, or its connection is replaced
                # (seen: "Broker handle destroyed" during a rebalance); give up only after the deadline
                err = exc.args[0]
                if time.monotonic() > deadline or err.fatal():
                    raise KafkaError(f"cannot read the committed offsets of group {self.rt.app_id!r}: "
                                     f"{_error_text(err)}") from None
                log.info("worker %s: reading committed offsets failed (%s); retrying", self.instance, _error_text(err))
                time.sleep(0.2)

    def _drop_tasks(self, partitions: list[Any] | None = None) -> None:
        ps = set(self.tasks) if partitions is None else {tp.partition for tp in partitions}
        for p in ps:
            task = self.tasks.pop(p, None)
            if task is not None:
                self.result.records += task.records()
                task.close()

    # --- rebalance callbacks --------------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if self.closing:  # an assignment served while the consumer closes: it is leaving, take nothing
            return
        consumer.assign(self._build_tasks(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        if self.tasks and not self.broken:
            self._commit()
        self._drop_tasks(partitions)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        log.warning("worker %s lost its partitions; uncommitted work is aborted", self.instance)
        self._drop_tasks(partitions)
        self._abort()

    # --- transactions ---------------------------------------------------------------------------
    def _commit(self) -> bool:
        from confluent_kafka import KafkaException, TopicPartition

        if self.shuffle_writer is not None:
            for t in self.tasks.values():  # upstream watermarks to every downstream task
                wm = t.upstream_watermark() if not t.finished_up else None
                if wm is not None and wm > t.sent_wm:
                    self.shuffle_marker(t.p, "wm", wm)
                    t.sent_wm = wm
                    t.dirty = True
        dirty = [t for t in self.tasks.values() if t.dirty]
        if not dirty:
            return True
        try:
            for t in dirty:
                t.prepare()
            for t in dirty:
                blob = t.snapshot()
                chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
                for i, chunk in enumerate(chunks):
                    headers = [("sid", str(t.sid).encode()), ("i", str(i).encode()), ("n", str(len(chunks)).encode())]
                    self._produce(self.state_topic, chunk, f"{t.p}/{i}".encode(), t.p, headers)
            offsets = [TopicPartition(topic, t.p, pos) for t in dirty for topic, pos in t.positions.items()]
            self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 60)
            self._commit_transaction()
        except KafkaException as exc:
            for t in dirty:
                t.abort_sinks()
            self._failed(exc)
            return False
        except BaseException:
            for t in dirty:
                t.abort_sinks()
            raise
        failpoint("after_kafka_commit")
        for t in dirty:  # the snapshots (with the prepared transactions) are committed: publish
            t.commit_sinks()
        for t in dirty:
            t.dirty = False
            for ex in t.parts:  # counted once committed: work rewound after a failed commit is done again
                ex.take_set_aside(self.result.late, self.result.dead_letters)
        self.result.commits += 1
        self.failed_commits = 0
        self.producer.begin_transaction()
        return True

    def _produce(self, topic: str, value: bytes, key: bytes, partition: int, headers: list[Any]) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _commit_transaction(self) -> None:
        from confluent_kafka import KafkaError as KErr
        from confluent_kafka import KafkaException

        for attempt in range(5):
            try:
                self.producer.commit_transaction(60)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and err.code() != KErr._TIMED_OUT and attempt < 4:
                    time.sleep(0.2 * 2**attempt)
                    continue
                raise

    def _failed(self, exc: Exception) -> None:
        """A commit failed: abort (or, if that is not possible, make a new producer) and rewind the tasks."""
        from confluent_kafka import KafkaError as KErr

        err = exc.args[0] if exc.args else None
        text = _error_text(err) if err is not None else str(exc)
        self.failed_commits += 1
        if self.failed_commits > self.rt.max_failed_commits:
            raise KafkaError(f"worker {self.instance}: {self.failed_commits} commits in a row failed, the last with "
                             f"{text}; is the cluster reachable and does the principal have the transactional "
                             "and group ACLs?") from None
        pause = min(10.0, 0.1 * 2 ** (self.failed_commits - 1))
        log.warning("worker %s: commit failed (%s); rewinding to the last commit and retrying in %.1f s",
                    self.instance, text, pause)
        time.sleep(pause)
        timed_out = err is not None and hasattr(err, "code") and err.code() == KErr._TIMED_OUT
        if err is not None and hasattr(err, "txn_requires_abort") and err.txn_requires_abort() and not timed_out:
            self._abort()
        else:
            self._restart_producer()
        self._rewind()

    def _abort(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self.producer.abort_transaction(30)
            self.producer.begin_transaction()
        except KafkaException as exc:
            log.warning("worker %s: abort failed (%s); making a new producer", self.instance, _error_text(exc.args[0]))
            self._restart_producer()

    def _restart_producer(self) -> None:
        old, self.producer = self.producer, None
        if old is not None:
            with contextlib.suppress(Exception):  # the old producer may already be unusable
                old.purge()
            del old
        self.producer = self._new_producer()  # init_transactions fences the old instance's transaction
        self.result.producer_restarts += 1

    def _rewind(self) -> None:
        """Back to the last commit: tasks restored from their committed state, the consumer seeks."""
        assigned = self.consumer.assignment()
        self._drop_tasks()
        for tp in self._build_tasks(assigned):
            self.consumer.seek(tp)
        self.result.rewinds += 1

    # --- the loop -------------------------------------------------------------------------------
    def _dispatch(self, msgs: list[Any]) -> None:
        groups: dict[tuple[str, int], list[Any]] = {}
        eofs: list[tuple[str, int, int]] = []
        single = self.all_topics[0] if len(self.all_topics) == 1 else None
        run_key: tuple[str, int] | None = None
        run: list[Any] = []
        for m in msgs:  # messages come in runs of one partition
            err = m.error()
            if err is not None:
                if err.code() == err._PARTITION_EOF:
                    eofs.append((m.topic(), m.partition(), int(m.offset())))
                    continue
                raise KafkaError(f"reading {m.topic()}/{m.partition()}: {_error_text(err)}")
            key = (single or m.topic(), m.partition())
            if key != run_key:
                run_key = key
                run = groups.setdefault(key, [])
            run.append(m)
        for (topic, p), group in groups.items():
            task = self.tasks.get(p)
            if task is not None and not task.finished:
                task.feed(topic, group)
        for topic, p, offset in eofs:  # after the messages before them
            task = self.tasks.get(p)
            if task is not None:
                task.at_least(topic, offset)

    def _check_ends(self) -> bool:
        """Under until_end: end the tasks whose partitions are read to the end; True if one finished."""
        finished = False
        for task in self.tasks.values():
            if task.finished:
                continue
            for topic in self.topics:
                if task.positions.get(topic, 0) >= self.ends[(topic, task.p)]:
                    task.end(topic)
            finished |= task.finished
        return finished

    def _all_done(self) -> bool:
        """Every input partition is committed at its end: ours are (finished and committed), the others'
        committed offsets say so. A failed lookup means "not yet": it is asked again shortly."""
        from confluent_kafka import KafkaException

        try:
            return self._all_done_now()
        except (KafkaException, KafkaError) as exc:
            log.info("worker %s: cannot tell yet whether the job is done: %s", self.instance, exc)
            return False

    def _all_done_now(self) -> bool:
        from confluent_kafka import TopicPartition

        if not self.result.first_assigned or not all(t.finished and not t.dirty for t in self.tasks.values()):
            return False
        others = [TopicPartition(t, p) for (t, p) in self.ends if p not in self.tasks]
        if not others:
            return True
        if not all(tp.offset >= self.ends[(tp.topic, tp.partition)] for tp in self._committed(others)):
            return False
        if self.shuffle_read is None:
            return True
        # every input is committed at its end, so the internal topic is complete: read to its end?
        topic = self.shuffle_read.source.topic
        rest = [TopicPartition(topic, p) for p in range(self.partitions) if p not in self.tasks]
        for tp in self._committed(rest):
            high = self.consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), 30, cached=False)[1]
            if tp.offset < high:
                return False
        return True

    def run(self) -> WorkerResult:
        warn_unrouted(self.plan)
        start = time.perf_counter()
        self._open()
        self.consumer.subscribe(self.all_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        last_commit = last_check = last_report = time.perf_counter()
        try:
            while not self.stopping:
                msgs = self.consumer.consume(self.rt.poll_records, 0.1)
                if msgs:
                    self._dispatch(msgs)
                now = time.perf_counter()
                ended = self.rt.until_end and self._check_ends()
                if ended or now - last_commit >= self.rt.commit_interval_s:
                    self._commit()
                    last_commit = time.perf_counter()
                if self.rt.until_end and now - last_check >= 0.5:
                    last_check = now
                    if self._all_done():
                        self.result.finished = time.time()
                        break
                if self.progress is not None and now - last_report >= 1.0:
                    last_report = now
                    self.progress(self.records(), now - start)
        except BaseException:
            # a task may have taken part of a batch: commit nothing more, the open transaction is aborted
            self.broken = True
            raise
        finally:
            self._close()
        self.result.seconds = time.perf_counter() - start
        self.result.produced = sum(w.produced for w in self.writers.values() if isinstance(w, KafkaWriter))
        return self.result

    def stop(self) -> None:
        """Stop after the current batch: the last commit happens as the worker leaves the group (safe to
        call from a signal handler)."""
        self.stopping = True

    def records(self) -> int:
        return self.result.records + sum(t.records() for t in self.tasks.values())

    def _close(self) -> None:
        self.closing = True
        if self.consumer is not None:
            try:
                self.consumer.close()  # revokes: the tasks commit
            finally:
                self._drop_tasks()
        if self.state_reader is not None:
            self.state_reader.close()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                self.producer.abort_transaction(10)  # the open (empty) transaction
            self.producer.flush(10)


class _ProducerRef:
    """The worker's current producer, for writers made before it (it is replaced after a fatal error)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.worker.producer.produce(*args, **kwargs)

    def poll(self, timeout: float) -> int:
        return int(self.worker.producer.poll(timeout))


def run_worker(flow: Any, rt: KafkaRuntime, progress: Callable[[int, float], None] | None = None) -> WorkerResult:
    """Run one worker of `flow` over Kafka until the input ends (`until_end`) or it is stopped: SIGTERM
    or Ctrl-C stop it gracefully (the work done so far is committed and its partitions are handed over
    at once)."""
    import signal
    import threading

    worker = Worker(flow, rt, progress)
    if threading.current_thread() is not threading.main_thread():
        return worker.run()
    previous = {sig: signal.signal(sig, lambda *_: worker.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
