"""The transaction state machine's defence against markers a restarting broker skipped (transactions.py),
against a model of a partition's last stable offset: a rolled-back transaction's unmarked records are
swept (an aborted one-record transaction of the same producer id ends them), a commit is verified past
its records, and what cannot be repaired stops the worker with an error naming the partition."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from sluice.core.errors import KafkaError
from sluice.runtime.kafka.transactions import Transactions


class Cluster:
    """Partitions with a high watermark and open transactions (producer id → first offset): the last
    stable offset is the first open offset, else the high watermark. `skip` makes markers go missing."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.counts = partitions
        self.hw = {(t, p): 0 for t, n in partitions.items() for p in range(n)}
        self.open: dict[tuple[str, int], dict[str, int]] = {k: {} for k in self.hw}
        self.skip: set[tuple[str, int]] = set()

    def append(self, pid: str, key: tuple[str, int]) -> int:
        self.open[key].setdefault(pid, self.hw[key])
        self.hw[key] += 1
        return self.hw[key] - 1

    def end(self, pid: str, keys: set[tuple[str, int]]) -> None:
        for key in keys:
            if key in self.skip:
                continue
            if self.open[key].pop(pid, None) is not None:
                self.hw[key] += 1  # the marker

    def lso(self, key: tuple[str, int]) -> int:
        return min(self.open[key].values(), default=self.hw[key])


class Msg:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class Producer:
    def __init__(self, cluster: Cluster, pid: str) -> None:
        self.cluster, self.pid = cluster, pid
        self.txn: set[tuple[str, int]] = set()
        self.reports: list[tuple[Any, Msg]] = []

    def init_transactions(self, timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        self.txn = set()

    def produce(self, topic: str, value: Any = None, key: Any = None, partition: int = 0, headers: Any = None,
                on_delivery: Any = None) -> None:
        offset = self.cluster.append(self.pid, (topic, partition))
        self.txn.add((topic, partition))
        if on_delivery is not None:
            self.reports.append((on_delivery, Msg(topic, partition, offset)))

    def flush(self, timeout: float = 0) -> int:
        reports, self.reports = self.reports, []
        for cb, msg in reports:
            cb(None, msg)
        return 0

    def poll(self, timeout: float = 0) -> int:
        return self.flush()

    def send_offsets_to_transaction(self, *args: Any) -> None:
        pass

    def commit_transaction(self, timeout: float) -> None:
        self.flush()
        self.cluster.end(self.pid, self.txn)

    def abort_transaction(self, timeout: float) -> None:
        self.reports = []
        self.cluster.end(self.pid, self.txn)

    def purge(self) -> None:
        self.reports = []


class Admin:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def list_topics(self, timeout: float) -> Any:
        topics = {t: type("T", (), {"partitions": dict.fromkeys(range(n))})() for t, n in self.cluster.counts.items()}
        return type("Meta", (), {"topics": topics})()

    def list_offsets(self, request: dict, isolation_level: Any, request_timeout: float) -> dict:
        from confluent_kafka import IsolationLevel

        out = {}
        for tp in request:
            key = (tp.topic, tp.partition)
            f: Future = Future()
            offset = self.cluster.lso(key) if isolation_level == IsolationLevel.READ_COMMITTED else self.cluster.hw[key]
            f.set_result(type("R", (), {"offset": offset})())
            out[tp] = f
        return out


def machine(cluster: Cluster, pid: str = "w0") -> Transactions:
    txn = Transactions(lambda: Producer(cluster, pid), pid, lambda: Admin(cluster), settle_s=0.3)
    txn.verify_s = 0.3
    txn.open()
    return txn


def test_a_rollback_whose_markers_were_skipped_is_swept() -> None:
    cluster = Cluster({"out": 4, "state": 4})
    txn = machine(cluster)
    for p in range(4):
        txn.produce("out", b"v", b"k", p, [])
    txn.produce("state", b"s", b"k", 1, [])
    cluster.skip = {("out", 2)}  # the restarted broker skips this partition's abort marker
    txn.abort()
    cluster.skip = set()
    assert cluster.lso(("out", 2)) < cluster.hw[("out", 2)]
    txn.settle({"out", "state"}, 0.3)
    assert txn.sweeps == 1
    assert all(cluster.lso(k) == cluster.hw[k] for k in cluster.hw)  # every partition stable again
    # the next commit commits only its own records
    txn.produce("out", b"v2", b"k", 2, [])
    txn.verify(txn.commit([], None))
    assert cluster.lso(("out", 2)) == cluster.hw[("out", 2)]


def test_nothing_is_swept_when_the_markers_came() -> None:
    cluster = Cluster({"out": 2})
    txn = machine(cluster)
    txn.produce("out", b"v", b"k", 0, [])
    txn.abort()
    txn.settle({"out"}, 0.3)
    assert txn.sweeps == 0


def test_another_producers_hanging_transaction_stops_the_worker() -> None:
    cluster = Cluster({"out": 3})
    cluster.append("dead-worker", ("out", 1))  # its markers were skipped; this worker cannot end it
    txn = machine(cluster)
    txn.produce("out", b"v", b"k", 0, [])
    txn.abort()
    with pytest.raises(KafkaError, match=r"out/1 \(stable up to offset 0, end 3\).*kafka-transactions.sh"):
        txn.settle({"out"}, 0.3)


def test_an_unknown_outcome_is_never_swept() -> None:
    cluster = Cluster({"out": 2})
    txn = machine(cluster)
    txn.produce("out", b"v", b"k", 1, [])
    cluster.skip = {("out", 1)}
    txn.abort()  # as if the commit had timed out: it may have committed
    with pytest.raises(KafkaError, match="leaves unknown whether it committed"):
        txn.settle({"out"}, 0.3, sweep=False)
    assert txn.sweeps == 0


def test_a_commit_is_verified_past_its_records() -> None:
    cluster = Cluster({"out": 2})
    txn = machine(cluster)
    txn.produce("out", b"v", b"k", 0, [])
    written = txn.commit([], None)
    assert written == {("out", 0): 0} and txn.written == {}
    txn.verify(written)  # markers written: verified
    txn.produce("out", b"v", b"k", 1, [])
    cluster.skip = {("out", 1)}  # the commit marker goes missing
    with pytest.raises(KafkaError, match=r"last commit succeeded but its markers never came.*out/1"):
        txn.verify(txn.commit([], None))


def test_a_transactional_call_stuck_past_its_timeout_ends_the_worker_with_a_clear_error() -> None:
    import subprocess
    import sys

    code = """
import time
from sluice.runtime.kafka.transactions import Watchdog
import threading
Watchdog.GRACE_S = 0.5
Watchdog.IDLE_S = 0.5
w = Watchdog("w7")
with w.watch("quick", 5):
    pass  # returns in time: nothing happens
time.sleep(2.5)
# idle: its thread has ended (none outlives a finished run), and the next call is watched by a new one
assert not [t for t in threading.enumerate() if t.name == "sluice-txn-watchdog"], threading.enumerate()
with w.watch("send_offsets_to_transaction", 0.5):
    time.sleep(30)  # as librdkafka was seen blocked
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 75, (r.returncode, r.stderr[-2000:])
    assert "worker w7: the Kafka client is stuck in send_offsets_to_transaction" in r.stderr
    assert "Traceback" not in r.stderr
