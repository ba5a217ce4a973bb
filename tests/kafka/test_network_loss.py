"""Network loss to the broker under the Kafka runtime, during a w1 run of two or three workers over four
partitions, in private network namespaces of this module's own (deleted afterwards, also when a test fails):

- "partition": workers and checker in one namespace, the broker in another, joined through a router
  namespace by veth pairs (10.213.x.x); the router drops every packet it would forward, both ways
  (`tc qdisc add dev … root pfifo limit 0` on its two links), as a failed switch would. The senders see
  lost packets (TCP retransmits with its back-off), never a local error, and the broker keeps its own
  loopback link to its KRaft controller: the clients lose the broker, the broker stays healthy.
- "loopback": broker, workers and checker in one namespace whose loopback drops every packet. The
  broker's link to its own controller goes down too, so a cut longer than its session (9 s) fences it
  and its partitions are re-led when the link returns: the host's whole network gone, the harsher case.

Cuts last 3 to 20 s, some longer than the runtime's transaction timeout (10 s) and group session (10 s).
The committed output (read_committed) must equal the DuckDB oracle; a worker that cannot go on must stop
with a clear error (no traceback), and a restarted worker then finishes the job exactly once.

NETWORK_LOSS_CUTS="partition:3:2,partition:15:3,loopback:3:3" (kind:seconds:workers, the default) sets
the cuts; bench/chaos/network.py runs many with random lengths."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ROOT, generate
from kafka_util import (
    cut_loopback,
    cut_router,
    inside,
    netns,
    partitioned,
    restore_loopback,
    restore_router,
    run_faulted,
)

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "kafka.sh"
CUTS = [(k, float(s), int(w)) for k, s, w in
        (c.split(":") for c in os.environ.get("NETWORK_LOSS_CUTS", "partition:3:2,partition:15:3,loopback:3:3").split(","))]



def start_broker(directory: Path, host: str) -> str:
    r = subprocess.run(["bash", str(SCRIPT), "up", str(directory)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "SLUICE_KAFKA_HOST": host})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1].removeprefix("bootstrap=")


@pytest.fixture(scope="module")
def partition_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Clients ─ router ─ broker: {"bootstrap", "clients", "cut", "restore"}."""
    directory = tmp_path_factory.mktemp("kafka-partition")
    with partitioned(f"slp{os.getpid()}") as ns:
        try:
            with inside(ns["broker"]):
                bootstrap = start_broker(directory, ns["broker_host"])
            yield {"bootstrap": bootstrap, "clients": ns["clients"], "cut": lambda: cut_router(ns["router"]),
                   "restore": lambda: restore_router(ns["router"])}
        finally:
            with inside(ns["broker"]):
                subprocess.run(["bash", str(SCRIPT), "down", str(directory)], timeout=120)


@pytest.fixture(scope="module")
def loopback_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Broker and clients in one namespace: {"bootstrap", "clients", "cut", "restore"}."""
    directory = tmp_path_factory.mktemp("kafka-loopback")
    with netns(f"sll{os.getpid()}") as ns:
        try:
            with inside(ns):
                bootstrap = start_broker(directory, "127.0.0.1")
            yield {"bootstrap": bootstrap, "clients": ns, "cut": lambda: in_ns(ns, cut_loopback),
                   "restore": lambda: in_ns(ns, restore_loopback)}
        finally:
            with inside(ns):
                subprocess.run(["bash", str(SCRIPT), "down", str(directory)], timeout=120)


def in_ns(ns: str, fn: Callable[[], None]) -> None:
    with inside(ns):
        fn()


@pytest.fixture(scope="module")
def events_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("events", 200_000, tmp_path_factory.mktemp("ev") / "net.jsonl", users=1000, span_s=3600)


@pytest.mark.parametrize(("i", "kind", "down_s", "workers"), [(i, *c) for i, c in enumerate(CUTS)],
                         ids=[f"{k}-{s:g}s-{w}workers" for k, s, w in CUTS])
def test_network_cut(request: pytest.FixtureRequest, events_net: Path, tmp_path: Path, i: int, kind: str,
                     down_s: float, workers: int) -> None:
    net = request.getfixturevalue(f"{kind}_net")
    tag = f"net{i}-{kind[0]}{down_s:g}s{workers}w".replace(".", "_")

    def cut() -> None:
        net["cut"]()
        try:
            time.sleep(down_s)
        finally:
            net["restore"]()

    with inside(net["clients"]):
        failures = run_faulted(net["bootstrap"], events_net, tmp_path, tag, f"network-{kind}", down_s, cut,
                               workers=workers)
    print(f"{kind} cut {down_s:g} s, {workers} workers: failures {failures}")
