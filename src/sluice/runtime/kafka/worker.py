"""The worker: joins the consumer group, runs the tasks it is given, and commits them, output + state +
offsets, in one Kafka transaction every `commit_interval_s` (see the package docstring)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sluice.checkpoint.store import IncompatibleCheckpointError
from sluice.connectors.api import SinkContext
from sluice.connectors.kafka import (
    FETCH_TUNING,
    PARTITIONER,
    DeadLetterTopic,
    KafkaError,
    KafkaSink,
    KafkaSource,
    KafkaWriter,
    _error_text,
    client_config,
)
from sluice.core.errors import PlanError
from sluice.core.failpoints import failpoint
from sluice.core.plan import Plan, Read, Step, Write
from sluice.runtime.executor import warn_unrouted
from sluice.runtime.kafka.admin import prepare_topics, watermarks
from sluice.runtime.kafka.plan import FeedSource, SharedSink, check_partitioning, resolve_topics
from sluice.runtime.kafka.settings import KafkaRuntime, WorkerResult
from sluice.runtime.kafka.state_topic import StateTopic
from sluice.runtime.kafka.task import Task
from sluice.runtime.kafka.transactions import Transactions, fatal, hanging, producer_failed
from sluice.runtime.repartition import RepartitionSink, RepartitionSource, RepartitionWriter, split

log = logging.getLogger("sluice.kafka")
CONSUMER_CLOSE_S = 60.0  # the least time a worker waits for its consumer to close (see Worker._close_consumer)


class Worker:
    """Runs a flow's tasks for the partitions its consumer group assigns to it."""

    def __init__(self, flow: Any, rt: KafkaRuntime, progress: Callable[[int, float], None] | None = None,
                 allow_rename: dict[str, str] | None = None) -> None:
        plan = flow.plan() if hasattr(flow, "plan") else flow
        if not isinstance(plan, Plan):
            raise PlanError(f"the Kafka runtime takes a Flow or a Plan, got {type(flow).__name__}")
        plan = resolve_topics(plan, rt)
        plan.validate()
        self.plan, self.rt, self.progress = plan, rt, progress
        self.renames = dict(allow_rename or {})
        _check_renames(plan, self.renames)
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
            boundary = read.name.removesuffix("__source")
            renamed = [old for old, new in self.renames.items() if new == boundary]
            if renamed:
                raise IncompatibleCheckpointError(
                    f"allow_rename {renamed[0]}={boundary}: {boundary!r} is the key_by where the flow is repartitioned, "
                    f"and its internal topic is named after it ({rt.app_id}-{boundary}-repartition): renamed, the "
                    f"records in the old topic would not be read. Keep the name {renamed[0]!r} for that step")
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
        self.tasks: dict[int, Task] = {}
        self.result = WorkerResult()
        self.failed_commits = 0
        self.stopping = False  # stop(): finish the current batch, commit, leave the group
        self.closing = False  # the consumer is closing: rebalance callbacks must not start tasks
        self.broken = False  # an error is propagating: commit nothing more
        self.ends: dict[tuple[str, int], int] = {}
        self.txn: Transactions | None = None
        self.consumer: Any = None
        self.states: StateTopic | None = None

    # --- setup ----------------------------------------------------------------------------------
    def _task_plan(self, plan: Plan) -> Plan:
        steps: list[Step] = []
        for st in plan.steps:
            if isinstance(st, Read):
                steps.append(replace(st, source=FeedSource(getattr(st.source, "topic", st.name))))
            elif isinstance(st, Write) and isinstance(st.sink, RepartitionSink):
                self.shuffle_writer = RepartitionWriter(st.sink, self.partitions, _ProducerRef(self))
                self.writers[st.name] = self.shuffle_writer
                steps.append(replace(st, sink=SharedSink(self.shuffle_writer)))
            elif isinstance(st, Write) and isinstance(st.sink, KafkaSink | DeadLetterTopic):
                writer = KafkaWriter(st.sink, SinkContext(st.name, exactly_once=True, flow=plan.name,
                                                          instance=self.instance), producer=_ProducerRef(self))
                self.writers[st.name] = writer
                steps.append(replace(st, sink=SharedSink(writer)))
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

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer(client_config(self.bootstrap, self.config, **{
            "transactional.id": f"{self.rt.app_id}-{self.instance}", "enable.idempotence": True,
            "transaction.timeout.ms": self.rt.transaction_timeout_ms, "linger.ms": 20, "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000, "partitioner": PARTITIONER}))

    def _new_admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient(client_config(self.bootstrap, self.config))

    def settle_timeout(self) -> float:
        """How long transactions open elsewhere may hold a partition's last stable offset back: the
        broker aborts an abandoned one after the transaction timeout."""
        return 2 * self.rt.transaction_timeout_ms / 1000 + 15

    def output_topics(self) -> set[str]:
        """Every topic this flow's workers write in their transactions."""
        topics = {w.spec.topic for w in self.writers.values() if isinstance(w, KafkaWriter)}
        topics |= {w.dead.topic for w in self.writers.values() if isinstance(w, KafkaWriter) and w.dead is not None}
        if self.shuffle_writer is not None:
            topics.add(self.shuffle_writer.spec.topic)
        return topics | {self.state_topic}

    @property
    def producer(self) -> Any:
        """The current transactional producer (it is replaced after a fatal error)."""
        assert self.txn is not None
        return self.txn.producer

    def _open(self) -> None:
        from confluent_kafka import Consumer

        n = prepare_topics(self.plan, self.bootstrap, self.config, list(self.topics), self.state_topic,
                           self.shuffle_read.source.topic if self.shuffle_read is not None else None)
        self.partitions = n
        self.task_plans = [self._task_plan(plan) for plan in self.subplans]
        self.txn = Transactions(self._new_producer, self.instance, self._new_admin, self.settle_timeout())
        self.txn.open()
        group = client_config(self.bootstrap, self.config, **FETCH_TUNING, **{
            "group.id": self.rt.app_id, "isolation.level": "read_committed", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest", "enable.partition.eof": True,
            "partition.assignment.strategy": "range", "session.timeout.ms": self.rt.session_timeout_ms,
            "heartbeat.interval.ms": max(self.rt.session_timeout_ms // 5, 500)})
        self.consumer = Consumer(group)
        self.states = StateTopic(self.state_topic, Consumer(client_config(self.bootstrap, self.config, **{
            "group.id": f"{self.rt.app_id}-state-reader", "isolation.level": "read_committed",
            "enable.auto.commit": False, "enable.partition.eof": True})))
        if self.rt.until_end:

            for topic in self.topics:
                for p in range(n):
                    self.ends[(topic, p)] = watermarks(self.consumer, topic, p, "input")[1]

    # --- tasks ----------------------------------------------------------------------------------
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
        tasks: dict[int, Task] = {}
        deadline = time.monotonic() + 60
        todo = list(ps)
        while todo:
            assert self.states is not None
            states = self.states.read(todo)
            for p in list(todo):
                task = Task(self, p, states.get(p))
                if p in states:
                    task.restore()
                if task.positions == want[p] or (not want[p] and p not in states):
                    tasks[p] = task
                    todo.remove(p)
                else:
                    task.close()
            if todo and time.monotonic() > deadline:
                assert self.txn is not None
                held = self.txn.unstable([TopicPartition(self.state_topic, p) for p in todo], 0)
                if held:  # the newest state is behind a transaction that never ended
                    raise hanging(self.instance, held, committed=None)
                raise KafkaError(f"tasks {todo}: the committed offsets and the newest state in {self.state_topic} "
                                 "disagree (was the state topic deleted or written by another application?)")
            if todo:
                time.sleep(0.2)  # a commit's markers are still on their way
                # or another worker owns the partition now (this one's session ended during a network cut,
                # its rewind is behind) and commits both anew: read the committed offsets again as well
                for tp in self._committed([tp for tp in partitions if tp.partition in todo]):
                    offsets[(tp.topic, tp.partition)] = tp.offset
                want.update({p: {t: o for (t, q), o in offsets.items() if q == p and o >= 0} for p in todo})
        for p in ps:
            task = tasks[p]
            task.recover_sinks()  # its own sinks: the recorded epoch committed (again), later staging dropped
            for topic in self.all_topics:
                if topic not in task.positions:
                    task.positions[topic] = watermarks(self.consumer, topic, p, "input")[0]
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
                    raise KafkaError(f"worker {self.instance}: cannot read the committed offsets of group "
                                     f"{self.rt.app_id!r} for 120 s ({_error_text(err)}): the group coordinator did "
                                     "not answer (after a network cut its connection can stay stalled for minutes). "
                                     "Nothing uncommitted was kept: check the network to the cluster, then start "
                                     "the worker again; it resumes from the last commit, exactly once") from None
                log.info("worker %s: reading committed offsets failed (%s); retrying", self.instance, _error_text(err))
                time.sleep(0.2)

    def _drop_tasks(self, partitions: list[Any] | None = None) -> None:
        ps = set(self.tasks) if partitions is None else {tp.partition for tp in partitions}
        for p in ps:
            task = self.tasks.pop(p, None)
            if task is not None:
                self.result.records += task.records()
                task.close()
                log.info("worker %s: task %d stops at %s", self.instance, p, task.positions)

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
            try:
                for t in self.tasks.values():  # upstream watermarks to every downstream task
                    wm = t.upstream_watermark() if not t.finished_up else None
                    if wm is not None and wm > t.sent_wm:
                        self.shuffle_marker(t.p, "wm", wm)
                        t.sent_wm = wm
                        t.dirty = True
            except Exception as exc:  # the producer failed (fenced …): part of this transaction, redo it
                cause = producer_failed(exc)
                if cause is None or not isinstance(cause, Exception):
                    raise
                self._failed(cause)
                return False
        dirty = [t for t in self.tasks.values() if t.dirty]
        if not dirty:
            return True
        txn = self.txn
        assert txn is not None
        try:
            for t in dirty:
                t.prepare()
            for t in dirty:
                blob = t.snapshot()
                for key, value, headers in StateTopic.messages(t.p, t.sid, blob):
                    txn.produce(self.state_topic, value, key, t.p, headers)
            offsets = [TopicPartition(topic, t.p, pos) for t in dirty for topic, pos in t.positions.items()]
            written = txn.commit(offsets, self.consumer.consumer_group_metadata())
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
        # done once its markers are written (a restarting broker can skip them: the worker stops)
        txn.verify(written)
        for t in dirty:
            t.dirty = False
            for ex in t.parts:  # counted once committed: work rewound after a failed commit is done again
                ex.take_set_aside(self.result.late, self.result.dead_letters)
        self.result.commits += 1
        self.failed_commits = 0
        return True

    def _failed(self, exc: Exception) -> None:
        """A commit failed: abort (or, if that is not possible, make a new producer) and rewind the tasks."""
        assert self.txn is not None
        err = exc.args[0] if exc.args else None
        text = _error_text(err) if err is not None else str(exc)
        self.failed_commits += 1
        for w in self.writers.values():  # a dead letter the cluster refuses would fail every retry alike
            if isinstance(w, KafkaWriter) and w.fatal:
                raise KafkaError(w.fatal)
        if self.failed_commits > self.rt.max_failed_commits:
            raise fatal(self.instance, self.failed_commits, text) from None
        pause = min(10.0, 0.1 * 2 ** (self.failed_commits - 1))
        log.warning("worker %s: commit failed (%s); rewinding to the last commit and retrying in %.1f s",
                    self.instance, text, pause)
        time.sleep(pause)
        # commit_transaction failed without librdkafka asking for an abort: it may have committed
        abortable = err is not None and hasattr(err, "txn_requires_abort") and err.txn_requires_abort()
        touched, unknown = set(self.txn.topics), self.txn.ending and not abortable
        if self.txn.recover(exc) == "restarted":
            self.result.producer_restarts += 1
        self._settle(touched, sweep=not unknown)
        self._rewind()

    def _abort(self) -> None:
        assert self.txn is not None
        touched = set(self.txn.topics)
        if not self.txn.abort():
            self.txn.restart()
            self.result.producer_restarts += 1
        self._settle(touched)

    def _settle(self, topics: set[str], sweep: bool = True) -> None:
        """The rolled-back transaction's partitions become stable before anything more is written (see
        transactions.py): unmarked records left by a broker restart are swept, or the worker stops."""
        assert self.txn is not None
        if topics:
            self.txn.settle(topics, self.settle_timeout(), sweep)
            self.result.sweeps = self.txn.sweeps

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
            high = watermarks(self.consumer, topic, tp.partition, "the repartition topic")[1]
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
                try:
                    if msgs:
                        self._dispatch(msgs)
                    ended = self.rt.until_end and self._check_ends()
                except Exception as exc:
                    cause = producer_failed(exc)
                    if cause is None or not isinstance(cause, Exception):
                        raise
                    # the transactional producer failed while the tasks wrote (e.g. fenced: the broker aborted a
                    # transaction that outlived transaction_timeout_ms): a new producer, the tasks rewind
                    assert self.txn is not None
                    self.txn.ending = False
                    self._failed(cause)
                    continue
                now = time.perf_counter()
                if ended or now - last_commit >= self.rt.commit_interval_s:
                    self._commit()
                    last_commit = time.perf_counter()
                if self.rt.until_end and now - last_check >= 0.5:
                    last_check = now
                    if self._all_done():
                        # done only if the committed output is whole: no partition written holds a
                        # transaction that never ends (the other workers' last commits end meanwhile)
                        assert self.txn is not None
                        self.txn.settle(self.output_topics(), self.settle_timeout())
                        self.result.sweeps = self.txn.sweeps
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
                self._close_consumer()  # revokes: the tasks commit
            finally:
                self._drop_tasks()
        if self.states is not None:
            self._bounded("the state topic's reader", self.states.close)
        if self.txn is not None:
            self.txn.close()


    def _close_consumer(self) -> None:
        """`consumer.close()` (which revokes the tasks: they commit), bounded: librdkafka's close was seen
        blocking for good after a rebalance, with the job finished and everything committed (a worker
        that never exits). After the bound the worker leaves without it: the group drops this member at
        its session timeout, and whatever a task had not committed is redone by the next owner, once."""
        assert self.consumer is not None
        self._bounded("the Kafka consumer", self.consumer.close,
                      "leaving the group without it (the broker drops this member after its session timeout; anything "
                      "not committed is redone by another worker, exactly once)")

    def _bounded(self, what: str, close: Callable[[], None], then: str = "going on without it") -> None:
        """`close()` in a thread of its own, waited for at most CONSUMER_CLOSE_S (or 3 session timeouts);
        its exception is raised here. A librdkafka client's close that never returns is left behind (the
        thread is a daemon: the process still exits)."""
        failure: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                close()
            except BaseException as exc:  # raised again below, in the worker's thread
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="sluice-close", daemon=True).start()
        bound = max(CONSUMER_CLOSE_S, 3 * self.rt.session_timeout_ms / 1000)
        if not done.wait(bound):
            log.warning("worker %s: %s did not close within %.0f s; %s", self.instance, what, bound, then)
            return
        if failure:
            raise failure[0]


class _ProducerRef:
    """The worker's current producer, for writers made before it (it is replaced after a fatal error)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def produce(self, *args: Any, **kwargs: Any) -> None:
        assert self.worker.txn is not None
        txn = self.worker.txn
        txn.touch(args[0] if args else kwargs["topic"])
        kwargs["on_delivery"] = txn.reporting(kwargs.get("on_delivery"))
        self.worker.producer.produce(*args, **kwargs)

    def poll(self, timeout: float) -> int:
        return int(self.worker.producer.poll(timeout))


def _check_renames(plan: Plan, renames: dict[str, str]) -> None:
    """Each allow_rename pair names a step the flow no longer has and one it has (as under sl.run)."""
    names = {s.name for s in plan.steps}
    for old, new in renames.items():
        if new not in names:
            raise IncompatibleCheckpointError(f"allow_rename {old}={new}: the flow has no step {new!r}")
        if old in names:
            raise IncompatibleCheckpointError(
                f"allow_rename {old}={new}: the flow still has a step {old!r}; rename it or drop the option")


def run_worker(flow: Any, rt: KafkaRuntime, progress: Callable[[int, float], None] | None = None, *,
               allow_rename: dict[str, str] | None = None) -> WorkerResult:
    """Run one worker of `flow` over Kafka until the input ends (`until_end`) or it is stopped: SIGTERM
    or Ctrl-C stop it gracefully (the work done so far is committed and its partitions are handed over
    at once).

    `allow_rename={"old": "new"}` carries a renamed step's state, a read's position and a sink's recorded
    transactions (its markers keep the old name) over to the new name, task by task as each task restores
    (docs/kafka.md "Renaming a step")."""
    import signal
    import threading

    worker = Worker(flow, rt, progress, allow_rename)
    if threading.current_thread() is not threading.main_thread():
        return worker.run()
    previous = {sig: signal.signal(sig, lambda *_: worker.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
