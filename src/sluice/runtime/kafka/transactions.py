"""The worker's transactional producer, as an explicit state machine.

    ┌──────── begin ────────┐
    ▼                       │
  OPEN ── commit ──► COMMITTING ──ok──► (begin) OPEN
    ▲                   │ failed
    │                   ▼
    └── abort ◄──── FAILED ── fatal / timed out ──► RESTARTED (a new producer, same transactional.id:
                                                   init_transactions fences the old one) ──► OPEN

librdkafka's rules decide the way out of FAILED: a retriable error is retried inside `commit` (a timeout
is not: without KIP-890 a timed-out commit may or may not have happened, so only a new producer makes
the state certain); an abortable error aborts; anything else makes a new producer. Either way the caller
rewinds its tasks to their last committed snapshots.

A rolled-back transaction is not over until the broker has written its abort markers. A broker that
restarts can skip them (its transaction coordinator loads before the partitions have a leader again: "Couldn't
find leader endpoint … likely deleted already and hence can be skipped"), leaving the records unmarked:
read_committed readers stop at them (a hanging transaction), and the next transaction of the same producer id
on that partition would end, and so commit, them too. So after a rollback `settle` waits until every partition
the transaction wrote to is stable (its last stable offset at its end, as read_committed readers see it); a
partition that stays unstable gets a sweep: a one-record transaction from this producer, aborted, whose abort
marker ends the unmarked records too. A partition still unstable after that stops the worker with an error
that names it (the job never ends "done" with committed output that is not whole).

The newer transaction protocol (KIP-890 part 2, transaction.version=2: an epoch bump per transaction, which
fences such records) is finalized by Kafka 4.x brokers but not spoken by librdkafka (up to 2.16, the version
used here); the brokers' part-1 defence (transaction.partition.verification.enable, on by default) is active.
confluent-kafka has no admin call to list or abort transactions, so a transaction hanging from another
producer id is reported with the command that aborts it (kafka-transactions.sh).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sluice.connectors.kafka import KafkaError, _error_text

log = logging.getLogger("sluice.kafka")


class State(enum.Enum):
    OPEN = "open"  # a transaction is open: records and offsets may be added
    COMMITTING = "committing"
    FAILED = "failed"  # the last commit failed: abort or restart before anything else


class Watchdog:
    """librdkafka's transactional calls take a timeout, yet one was seen blocked for good after a broker
    restart (send_offsets_to_transaction waiting on its reply with no deadline). A blocked worker holds its
    partitions until the group gives up on it, then hangs forever. So each call is watched: one that
    overruns its own timeout by `GRACE_S` ends the process with a clear error (exit code 75). That is as
    safe as a kill -9: the open transaction is aborted by the broker and the work resumes from the last
    commit, exactly once, in a restarted worker."""

    GRACE_S = 60.0
    IDLE_S = 30.0  # a watchdog thread with nothing to watch for this long ends (the next call starts one again)

    def __init__(self, name: str) -> None:
        self.name = name
        self.what: str | None = None
        self.deadline = 0.0
        self.last_call = 0.0
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, what: str, timeout_s: float) -> Iterator[None]:
        with self.lock:
            self.what, self.deadline = what, time.monotonic() + timeout_s + self.GRACE_S
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="sluice-txn-watchdog", daemon=True)
                self.thread.start()
        try:
            yield
        finally:
            with self.lock:
                self.what, self.last_call = None, time.monotonic()

    def _run(self) -> None:
        while True:
            time.sleep(1.0)
            with self.lock:
                what, late = self.what, self.what is not None and time.monotonic() > self.deadline
                if what is None and time.monotonic() - self.last_call > self.IDLE_S:
                    self.thread = None  # no thread outlives a finished run (sl.run in a long-lived process)
                    return
            if late:
                text = (f"sluice: error: worker {self.name}: the Kafka client is stuck in {what} well past its timeout "
                        "(a librdkafka call that never returned, seen after a broker restart or a network cut); stopping this "
                        "worker: start it again, it resumes from the last commit, exactly once")
                log.error("%s", text)
                print(text, file=sys.stderr, flush=True)
                os._exit(STUCK_EXIT)


STUCK_EXIT = 75
SWEEP_KEY = b"sluice.sweep"
SWEEP_AFTER_S = 5.0
READ_RETRY_S = 60.0


class Transactions:
    def __init__(self, make_producer: Callable[[], Any], name: str, admin: Callable[[], Any] | None = None,
                 settle_s: float = 35.0) -> None:
        self.make_producer = make_producer  # a configured, transactional Producer (not yet initialised)
        self.name = name
        self.make_admin = admin
        self.admin: Any = None
        self.producer: Any = None
        self.state = State.FAILED
        self.restarts = 0
        self.sweeps = 0
        self.topics: set[str] = set()  # the topics the open transaction wrote to
        self.written: dict[tuple[str, int], int] = {}  # its delivered records: partition → last offset
        self.ending = False  # commit_transaction was called: a failure leaves the outcome unknown
        self.settle_s = settle_s
        self.watchdog = Watchdog(name)
        self.verify_s = max(settle_s, 120.0)  # a commit's markers may wait for a restarting broker

    def open(self) -> None:
        """A producer with its transactions initialised (fencing earlier instances) and one begun."""
        producer = self.make_producer()
        deadline = time.monotonic() + 120
        while True:  # a restarting cluster answers "coordinator loading" / times out for a while
            try:
                with self.watchdog.watch("init_transactions", 30):
                    producer.init_transactions(30)
                break
            except Exception as exc:
                err = exc.args[0] if exc.args else None
                if err is None or not (hasattr(err, "retriable") and err.retriable()) or time.monotonic() > deadline:
                    raise
                log.info("worker %s: initialising transactions failed (%s); retrying", self.name, _error_text(err))
        producer.begin_transaction()
        self.producer, self.state = producer, State.OPEN

    def touch(self, topic: str) -> None:
        self.topics.add(topic)

    def record(self, err: Any, msg: Any) -> None:
        """Delivery report: the partitions and offsets of this transaction, to verify its commit."""
        if err is None:
            key = (msg.topic(), msg.partition())
            self.written[key] = max(self.written.get(key, -1), msg.offset())

    def reporting(self, callback: Any) -> Any:
        """A delivery callback that records the record's offset, then calls `callback` (if any)."""
        if callback is None:
            return self.record

        def both(err: Any, msg: Any) -> None:
            self.record(err, msg)
            callback(err, msg)
        return both

    def produce(self, topic: str, value: bytes, key: bytes, partition: int, headers: list[Any]) -> None:
        self.topics.add(topic)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, partition=partition, headers=headers,
                                      on_delivery=self.record)
                return
            except BufferError:
                self.producer.poll(0.05)

    def commit(self, offsets: list[Any], group_metadata: Any) -> dict[tuple[str, int], int]:
        """Add the offsets and commit; on success a new transaction is begun. Raises KafkaException (the
        state is then FAILED). Returns the partitions written and their last offsets, for `verify`."""
        assert self.state is State.OPEN, f"commit in state {self.state}"
        self.state = State.COMMITTING
        self.ending = False
        try:
            with self.watchdog.watch("send_offsets_to_transaction", 60):
                self.producer.send_offsets_to_transaction(offsets, group_metadata, 60)
            self.ending = True
            self.commit_transaction()
        except BaseException:
            self.state = State.FAILED
            raise
        done, self.written = self.written, {}
        self.producer.begin_transaction()
        self.topics = set()
        self.state = State.OPEN
        return done

    def verify(self, done: dict[tuple[str, int], int]) -> None:
        """A commit is done when its markers are written: each partition's last stable offset is past the
        transaction's records. A restarting broker can skip them; then the worker stops (KafkaError)."""
        from confluent_kafka import KafkaException, TopicPartition

        if not done or self.make_admin is None:
            return
        tps = [TopicPartition(t, p) for t, p in done]
        deadline = time.monotonic() + self.verify_s
        pause = 0.005
        failed: str | None = None
        while True:
            try:
                stable = self._offsets(tps, committed=True)
                left = {k: (stable[k], off + 1) for k, off in done.items() if stable[k] <= off}
                failed = None
                if any(stable[k] < 0 for k in left):  # -1001: no leader to ask yet (a broker was lost)
                    failed = "a partition has no leader"
                    self.admin = None  # a new client asks the new leader (an old one keeps the dead broker)
            except KafkaException as exc:
                failed = _error_text(exc.args[0])
                left = {k: (-1, off + 1) for k, off in done.items()}
                log.info("worker %s: reading offsets failed (%s); retrying", self.name, failed)
                self.admin = None  # seen: an admin client stuck on stale metadata ("Leader epoch is older …")
            if not left:
                return
            if time.monotonic() > deadline:
                if failed is not None:
                    raise KafkaError(f"worker {self.name}: cannot verify the last commit: the offsets of "
                                     f"{len(tps)} partitions could not be read for {self.verify_s:g} s ({failed}); "
                                     "is the cluster reachable? Start the worker again: it resumes from the last "
                                     "commit") from None
                raise hanging(self.name, left, committed=True)
            time.sleep(pause)
            pause = min(0.5, pause * 2)

    def commit_transaction(self) -> None:
        from confluent_kafka import KafkaError as KErr
        from confluent_kafka import KafkaException

        for attempt in range(5):
            try:
                with self.watchdog.watch("commit_transaction", 60):
                    self.producer.commit_transaction(60)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and err.code() != KErr._TIMED_OUT and attempt < 4:
                    time.sleep(0.2 * 2**attempt)
                    continue
                raise

    def recover(self, exc: Exception) -> str:
        """Leave FAILED after `exc`: "aborted" (the transaction is rolled back, the producer kept) or
        "restarted" (a new producer). Returns which."""
        from confluent_kafka import KafkaError as KErr

        err = exc.args[0] if exc.args else None
        timed_out = err is not None and hasattr(err, "code") and err.code() == KErr._TIMED_OUT
        abortable = err is not None and hasattr(err, "txn_requires_abort") and err.txn_requires_abort()
        if abortable and not timed_out and self.abort():
            return "aborted"
        self.restart()
        return "restarted"

    def abort(self) -> bool:
        """Roll back the open transaction; False if that failed (the caller makes a new producer)."""
        from confluent_kafka import KafkaException

        try:
            with self.watchdog.watch("abort_transaction", 30):
                self.producer.abort_transaction(30)
            self.producer.begin_transaction()
            self.topics, self.written = set(), {}
        except KafkaException as exc:
            log.warning("worker %s: abort failed (%s); making a new producer", self.name, _error_text(exc.args[0]))
            self.state = State.FAILED
            return False
        self.state = State.OPEN
        return True

    def restart(self) -> None:
        old, self.producer = self.producer, None
        if old is not None:
            with contextlib.suppress(Exception):  # the old producer may already be unusable
                old.purge()
            del old
        self.open()  # init_transactions fences the old instance's transaction
        self.topics, self.written = set(), {}
        self.restarts += 1

    # --- after a rollback: the partitions written to must become stable ---------------------------
    def _admin(self) -> Any:
        if self.admin is None:
            assert self.make_admin is not None
            self.admin = self.make_admin()
        return self.admin

    def partitions(self, topics: set[str]) -> list[Any]:
        from confluent_kafka import TopicPartition

        meta = self._admin().list_topics(timeout=30)
        return [TopicPartition(t, p) for t in sorted(topics) if t in meta.topics for p in sorted(meta.topics[t].partitions)]

    def _offsets(self, tps: list[Any], committed: bool) -> dict[tuple[str, int], int]:
        from confluent_kafka import IsolationLevel, TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        level = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = self._admin().list_offsets({TopicPartition(tp.topic, tp.partition): latest for tp in tps},
                                             isolation_level=level, request_timeout=30)
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    def unstable(self, tps: list[Any], timeout_s: float) -> dict[tuple[str, int], tuple[int, int]]:
        """Waits until each partition's last stable offset reaches its end as of now (transactions open
        elsewhere end meanwhile); returns those that do not: (topic, partition) → (stable offset, end)."""
        from confluent_kafka import KafkaException

        if not tps:
            return {}
        deadline = time.monotonic() + timeout_s
        # offsets that cannot be read yet are asked again for longer: a cluster that lost a broker has no
        # leader for its partitions until the controller notices (its broker session timeout, 9 s)
        read_deadline = time.monotonic() + max(timeout_s, READ_RETRY_S)
        ends: dict[tuple[str, int], int] | None = None
        stable: dict[tuple[str, int], int] = {}
        while True:
            try:
                if ends is None:
                    ends = self._offsets(tps, committed=False)
                stable = self._offsets(tps, committed=True)
            except KafkaException as exc:  # the cluster is still settling: ask again
                log.info("worker %s: reading offsets failed (%s); retrying", self.name, _error_text(exc.args[0]))
                self.admin = None  # a new client: one stuck on stale metadata never recovers
                if time.monotonic() > read_deadline:
                    raise KafkaError(f"worker {self.name}: cannot read the offsets of {len(tps)} partitions to check "
                                     f"that they are stable: {_error_text(exc.args[0])}") from None
                time.sleep(0.5)
                continue
            if any(v < 0 for v in (*ends.values(), *stable.values())) and time.monotonic() <= read_deadline:
                ends = None  # a partition without a leader answers -1001 (no offset): ask again
                self.admin = None  # with a new client, which asks the new leader
                time.sleep(0.5)
                continue
            left = {k: (stable[k], end) for k, end in ends.items() if stable[k] < end}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def sweep(self, stuck: list[tuple[str, int]]) -> None:
        """A one-record transaction on each stuck partition, aborted: its abort marker ends the unmarked
        records this producer id left there (an aborted record: read_committed readers never see it)."""
        assert self.state is State.OPEN
        for topic, p in stuck:
            self.produce(topic, None, SWEEP_KEY, p, [("sluice.sweep", b"1")])  # type: ignore[arg-type]
        if self.producer.flush(30):
            raise KafkaError(f"worker {self.name}: the sweep records were not delivered within 30 s")
        self.sweeps += 1
        if not self.abort():
            self.restart()

    def settle(self, topics: set[str], timeout_s: float, sweep: bool = True) -> None:
        """After a rollback: every partition of `topics` becomes stable, with a sweep if needed (`sweep`:
        the rolled-back transaction certainly did not commit); raises a KafkaError naming the partitions
        that stay unstable."""
        tps = self.partitions(topics)
        # a few seconds let transactions open elsewhere (and this one's abort markers) end; a sweep of a
        # partition that is only held back by another producer's open transaction is harmless
        left = self.unstable(tps, min(SWEEP_AFTER_S, timeout_s))
        if not left:
            return
        if not sweep:  # the transaction may have committed: aborting its records could lose output
            left = self.unstable([tp for tp in tps if (tp.topic, tp.partition) in left], timeout_s)
            if left:
                raise hanging(self.name, left, committed=None)
            return
        log.warning("worker %s: partitions %s hold unmarked transactional records (a broker that restarted "
                    "skipped their markers); sweeping them", self.name, sorted(left))
        self.sweep(sorted(left))
        left = self.unstable([tp for tp in tps if (tp.topic, tp.partition) in left], timeout_s)
        if left:
            raise hanging(self.name, left)

    def close(self) -> None:
        if self.producer is not None:
            # cleanup only: after a fatal error (e.g. fenced because a transaction outlived its timeout)
            # flush raises too ("SystemError: ... returned a result with an exception set"), which would
            # hide the error that stopped the worker
            with contextlib.suppress(Exception):
                self.producer.abort_transaction(10)  # the open (empty) transaction
            with contextlib.suppress(Exception):
                self.producer.flush(10)


def hanging(name: str, left: dict[tuple[str, int], tuple[int, int]], committed: bool | None = False) -> KafkaError:
    where = ", ".join(f"{t}/{p} (stable up to offset {lso}, end {end})" for (t, p), (lso, end) in sorted(left.items()))
    first = min(left)
    if committed is not False:
        what = ("this worker's last commit succeeded but its markers never came" if committed else
                "this worker's last commit failed in a way that leaves unknown whether it committed")
        return KafkaError(
            f"worker {name}: committed output is not whole: {what}; a transaction hangs on {where} and "
            "read_committed readers see nothing past it (a broker that restarted skipped its markers). Stopped "
            "rather than guess. kafka-transactions.sh --bootstrap-server HOST:PORT describe --transactional-id "
            f"<app_id>-{name} says whether it committed: if it aborted, abort the hanging records (kafka-transactions.sh "
            "abort, with find-hanging's offsets) and start the workers again; if it committed, do not abort them: "
            "start this worker again with the same --instance, whose next commit on that partition completes them")
    return KafkaError(
        f"worker {name}: committed output is not whole: a transaction hangs on {where}; read_committed readers "
        "see nothing past it. A broker restart skipped its markers, and no transaction of this worker ends it. "
        "Find and abort it with Kafka's tool: kafka-transactions.sh --bootstrap-server HOST:PORT find-hanging "
        f"--broker-id ID, then kafka-transactions.sh --bootstrap-server HOST:PORT abort --topic {first[0]} "
        f"--partition {first[1]} --start-offset OFFSET (the one find-hanging shows); then start the workers again: "
        "they resume from the last commit, exactly once")


def producer_failed(exc: BaseException) -> BaseException | None:
    """The KafkaException that only a new producer gets past, if `exc` is one or was caused by one (a
    write step wraps its sink's errors): librdkafka's fatal error, e.g. fenced after the broker aborted a
    transaction that outlived its timeout, or the erroneous state a producer is left in."""
    from confluent_kafka import KafkaError as KErr
    from confluent_kafka import KafkaException

    seen: BaseException | None = exc
    while seen is not None:
        err = seen.args[0] if isinstance(seen, KafkaException) and seen.args else None
        if err is not None and hasattr(err, "code") and (
                err.fatal() or err.code() in (KErr._FATAL, KErr._FENCED, KErr._STATE)):
            return seen
        seen = seen.__cause__
    return None


def fatal(name: str, failures: int, text: str) -> KafkaError:
    return KafkaError(f"worker {name}: {failures} commits in a row failed, the last with {text}; is the cluster "
                      "reachable and does the principal have the transactional and group ACLs?")
