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
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from sluice.connectors.kafka import KafkaError, _error_text

log = logging.getLogger("sluice.kafka")


class State(enum.Enum):
    OPEN = "open"  # a transaction is open: records and offsets may be added
    COMMITTING = "committing"
    FAILED = "failed"  # the last commit failed: abort or restart before anything else


class Transactions:
    def __init__(self, make_producer: Callable[[], Any], name: str) -> None:
        self.make_producer = make_producer  # a configured, transactional Producer (not yet initialised)
        self.name = name
        self.producer: Any = None
        self.state = State.FAILED
        self.restarts = 0

    def open(self) -> None:
        """A producer with its transactions initialised (fencing earlier instances) and one begun."""
        producer = self.make_producer()
        producer.init_transactions(30)
        producer.begin_transaction()
        self.producer, self.state = producer, State.OPEN

    def produce(self, topic: str, value: bytes, key: bytes, partition: int, headers: list[Any]) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)

    def commit(self, offsets: list[Any], group_metadata: Any) -> None:
        """Add the offsets and commit; on success a new transaction is begun. Raises KafkaException (the
        state is then FAILED)."""
        assert self.state is State.OPEN, f"commit in state {self.state}"
        self.state = State.COMMITTING
        try:
            self.producer.send_offsets_to_transaction(offsets, group_metadata, 60)
            self.commit_transaction()
        except BaseException:
            self.state = State.FAILED
            raise
        self.producer.begin_transaction()
        self.state = State.OPEN

    def commit_transaction(self) -> None:
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
            self.producer.abort_transaction(30)
            self.producer.begin_transaction()
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
        self.restarts += 1

    def close(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                self.producer.abort_transaction(10)  # the open (empty) transaction
            self.producer.flush(10)


def fatal(name: str, failures: int, text: str) -> KafkaError:
    return KafkaError(f"worker {name}: {failures} commits in a row failed, the last with {text}; is the cluster "
                      "reachable and does the principal have the transactional and group ACLs?")
