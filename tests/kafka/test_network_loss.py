"""Network loss to the broker under the Kafka runtime: the broker, two or three workers (w1, four
partitions) and the checker run in a network namespace of this module's own; while the workers run,
every packet on that namespace's loopback is dropped (`tc qdisc add dev lo root pfifo limit 0`) for 3 to
20 s, then let through again. Open connections stall (nothing is refused, as on a real link that goes
down), including the broker's own link to its KRaft controller, so the broker is also fenced when the
cut outlasts its session. Cuts longer than the runtime's transaction timeout (10 s) and the group's
session timeout (10 s) are among them.

The committed output (read_committed) must equal the DuckDB oracle; a worker that cannot go on must stop
with a clear error (no traceback), and a restarted worker then finishes the job exactly once.

NETWORK_LOSS_CUTS="3:2,8:3,15:2" (seconds:workers, the default) sets the cuts; bench/chaos/network.py
runs many."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, generate
from kafka_util import cut_loopback, inside, netns, restore_loopback, run_faulted

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "kafka.sh"
CUTS = [(float(s), int(w)) for s, w in (c.split(":") for c in os.environ.get("NETWORK_LOSS_CUTS", "3:2,8:3,15:2").split(","))]


@pytest.fixture(scope="module")
def ns_broker(tmp_path_factory: pytest.TempPathFactory):
    """A broker in a network namespace of its own: {"bootstrap", "dir", "ns"}; the namespace (and every
    process left in it) is deleted afterwards, also when a test fails."""
    directory = tmp_path_factory.mktemp("kafka-net")
    with netns(f"slnet{os.getpid()}") as ns:
        with inside(ns):
            r = subprocess.run(["bash", str(SCRIPT), "up", str(directory)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        try:
            yield {"bootstrap": r.stdout.strip().splitlines()[-1].removeprefix("bootstrap="), "dir": directory, "ns": ns}
        finally:
            with inside(ns):
                subprocess.run(["bash", str(SCRIPT), "down", str(directory)], timeout=120)


@pytest.fixture(scope="module")
def events_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("events", 200_000, tmp_path_factory.mktemp("ev") / "net.jsonl", users=1000, span_s=3600)


def cut(down_s: float) -> None:
    cut_loopback()
    try:
        time.sleep(down_s)
    finally:
        restore_loopback()


@pytest.mark.parametrize(("i", "down_s", "workers"), [(i, s, w) for i, (s, w) in enumerate(CUTS)],
                         ids=[f"{s:g}s-{w}workers" for s, w in CUTS])
def test_network_cut(ns_broker: dict, events_net: Path, tmp_path: Path, i: int, down_s: float, workers: int) -> None:
    tag = f"net{i}-{down_s:g}s{workers}w".replace(".", "_")
    with inside(ns_broker["ns"]):
        failures = run_faulted(ns_broker["bootstrap"], events_net, tmp_path, tag, "network", down_s,
                               lambda: cut(down_s), workers=workers)
    print(f"cut {down_s:g} s, {workers} workers: failures {failures}")
