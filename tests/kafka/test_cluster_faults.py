"""One broker of a 3-node KRaft cluster (scripts/kafka-cluster.sh: replication factor 3, min.insync.replicas
2, the transaction state log and offsets topic likewise) killed -9 while two or three workers run w1 over
four partitions: the node killed is the transaction coordinator of a worker's transactional id (and, where
it leads them, of output partitions), left down or started again after a few seconds. Two nodes of three
keep the quorum and min ISR, so the run goes on: the committed output must equal the DuckDB oracle (a
worker that stops must say why, and a restart finishes the job exactly once).

CLUSTER_KILLS="0:2:3,8:3:2" (seconds down — 0 = not restarted — : workers : which worker's coordinator,
the default "0:3:0,4:2:1") sets the kills; bench/chaos/cluster.py runs many."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from conftest import ROOT, generate
from kafka_util import run_faulted

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "kafka-cluster.sh"
KILLS = [(float(s), int(w), int(x)) for s, w, x in
         (k.split(":") for k in os.environ.get("CLUSTER_KILLS", "0:3:0,4:2:1").split(","))]
TXN_PARTITIONS = 4  # transaction.state.log.num.partitions in kafka-cluster.sh


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A 3-node cluster of this module's own, which the tests kill nodes of: {"bootstrap", "dir"}."""
    directory = tmp_path_factory.mktemp("kafka-cluster")
    r = subprocess.run(["bash", str(SCRIPT), "up", str(directory), "3"], capture_output=True, text=True, timeout=600)
    try:
        assert r.returncode == 0, r.stderr[-2000:]
        yield {"bootstrap": r.stdout.strip().splitlines()[-1].removeprefix("bootstrap="), "dir": directory}
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(directory)], timeout=180)


@pytest.fixture(scope="module")
def events_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("events", 200_000, tmp_path_factory.mktemp("ev") / "cluster.jsonl", users=1000, span_s=3600)


def java_hash(text: str) -> int:
    """Java's String.hashCode over UTF-16 code units (Kafka places a transactional id by it)."""
    data = text.encode("utf-16-be")
    h = 0
    for k in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[k:k + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator(bootstrap: str, transactional_id: str) -> int:
    """The node id leading the __transaction_state partition of `transactional_id`: its coordinator."""
    h = java_hash(transactional_id)
    part = (0 if h == -(1 << 31) else abs(h)) % TXN_PARTITIONS
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    return int(meta.topics["__transaction_state"].partitions[part].leader)


def leaders(bootstrap: str, topic: str) -> list[int]:
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=30)
    return [int(p.leader) for p in meta.topics[topic].partitions.values()]


def kill_node(cluster: dict, node: int) -> None:
    pid = int(subprocess.run(["bash", str(SCRIPT), "pid", str(cluster["dir"]), str(node)], capture_output=True,
                             text=True, check=True).stdout)
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def start_node(cluster: dict, node: int) -> None:
    r = subprocess.run(["bash", str(SCRIPT), "start", str(cluster["dir"]), str(node)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize(("i", "down_s", "workers", "whose"), [(i, *k) for i, k in enumerate(KILLS)],
                         ids=[f"{'stays-down' if s == 0 else f'restart-{s:g}s'}-{w}workers" for s, w, _ in KILLS])
def test_cluster_node_killed(cluster: dict, events_cluster: Path, tmp_path: Path, i: int, down_s: float,
                             workers: int, whose: int) -> None:
    tag = f"cl{i}-{down_s:g}s{workers}w".replace(".", "_")
    killed: list[int] = []

    def inject() -> None:
        node = coordinator(cluster["bootstrap"], f"bf-{tag}-w{whose % workers}")
        out_leaders = leaders(cluster["bootstrap"], f"bf-{tag}-out")
        print(f"killing node {node} (coordinator of w{whose % workers}; leads output partitions "
              f"{[p for p, n in enumerate(out_leaders) if n == node]})")
        kill_node(cluster, node)
        killed.append(node)
        if down_s:
            time.sleep(down_s)
            start_node(cluster, node)

    try:
        failures = run_faulted(cluster["bootstrap"], events_cluster, tmp_path, tag, "cluster", down_s, inject,
                               workers=workers, replication=3)
    finally:
        for node in killed:  # the next test starts with the whole cluster
            if not down_s:
                start_node(cluster, node)
    print(f"node down {down_s:g} s, {workers} workers: failures {failures}")
