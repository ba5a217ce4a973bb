"""Helpers for the tests against the real Kafka broker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
from confluent_kafka.admin import AdminClient, NewTopic

import sluice as sl
from sluice.connectors.kafka import KafkaSink


def create_topic(bootstrap: str, name: str, partitions: int, config: dict[str, str] | None = None,
                 topic_config: dict[str, str] | None = None, replication: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, **(config or {})})  # alive until the future resolves
    admin.create_topics([NewTopic(name, partitions, replication, config=topic_config or {})])[name].result(30)


def load(bootstrap: str, path: Path, topic: str, key: str = "user_id") -> int:
    """A JSON Lines file into a topic, keyed by `key` (not transactional)."""
    flow = sl.Flow("load")
    flow.read("file", sl.JsonLinesSource(path)).write("topic", KafkaSink(topic, bootstrap, key=key))
    return sl.run(flow).rows_read


def read_committed(bootstrap: str, topic: str, config: dict[str, str] | None = None,
                   timeout_s: float = 90) -> list[tuple[bytes, dict]]:
    """Every committed message of a topic: (value, headers). Waits until no transaction is open on it
    (a killed producer's transaction holds the last stable offset back until the broker aborts it)."""
    from sluice.connectors.kafka import read_all_committed

    return [(m.value(), dict(m.headers() or [])) for m in read_all_committed(bootstrap, topic, config or {}, timeout_s)]


def frame(messages: list[tuple[bytes, dict]]) -> pl.DataFrame:
    return pl.read_ndjson(b"\n".join(v for v, _ in messages) + b"\n")


# --- runs of the Kafka runtime under a fault (tests/kafka/test_broker_faults.py, test_network_loss.py,
# test_cluster_faults.py): workers of tests/kafka/workload_pipeline.py, the committed output against the oracle

PIPELINE = Path(__file__).resolve().parent / "kafka" / "workload_pipeline.py"


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in got)
    except KafkaException:  # the group coordinator is still loading
        return 0
    finally:
        c.close()


def worker(bootstrap: str, app: str, name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "sluice.cli.main", "run", str(PIPELINE), "--broker", f"kafka://{bootstrap}",
            "--app-id", app, "--instance", name, "--until-end", "--quiet", "--batch-size", "2000",
            "--commit-interval", "0.2"]
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_committed(bootstrap: str, app: str, topic: str, at_least: int, total: int, partitions: int = 4) -> int:
    deadline = time.monotonic() + 180
    done = 0
    while time.monotonic() < deadline:
        done = committed_total(bootstrap, app, topic, partitions)
        if done > at_least:
            return done
        time.sleep(0.05)
    raise AssertionError(f"committed {done} of {total} before the fault")


def finish(bootstrap: str, app: str, env: dict[str, str], procs: dict[str, subprocess.Popen],
           tmp_path: Path) -> list[str]:
    """Wait for the workers; a worker that failed must say why in words (no traceback); then workers are
    started again until the job is done. Returns the failure lines seen."""
    failures: list[str] = []
    for name, p in procs.items():
        code = p.wait(600)
        if code != 0:
            text = (tmp_path / f"{name}.log").read_text()
            assert "Traceback" not in text, text[-4000:]
            assert "sluice run:" in text or "error" in text.lower(), text[-4000:]
            failures.append(text.strip().splitlines()[-1])
    for attempt in range(2 if failures else 0):  # a restart finishes the job
        name = f"r{attempt}"
        if worker(bootstrap, app, name, env, tmp_path / f"{name}.log").wait(600) == 0:
            break
        text = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in text, text[-4000:]
        failures.append(text.strip().splitlines()[-1])
    return failures


def report(fault: str, down_s: float, failures: list[str], tmp_path: Path, got: pl.DataFrame | None,
           expected: pl.DataFrame, error: str | None) -> None:
    """One BROKER-FAULT line for the bench/chaos scripts: windows lost and doubled, sweeps, worker failures."""
    keys = ["user_id", "window_start"]
    lost = duplicated = None
    if got is not None:
        counts = got.group_by(keys).len()
        duplicated = int((counts["len"] - 1).clip(lower_bound=0).sum())
        lost = expected.join(counts, on=keys, how="anti").height
    sweeps = sum(json.loads(line).get("sweeps", 0) for f in tmp_path.glob("*.log")
                 for line in f.read_text().splitlines() if line.startswith("{"))
    print("BROKER-FAULT " + json.dumps({"fault": fault, "down_s": down_s, "lost": lost, "duplicated": duplicated,
                                        "unreadable": error, "sweeps": sweeps, "worker_failures": failures}))


def run_faulted(bootstrap: str, events: Path, tmp_path: Path, tag: str, fault: str, down_s: float,
                inject: Callable[[], None], workers: int = 2, partitions: int = 4,
                replication: int = 1) -> list[str]:
    """`workers` workers run w1 over `partitions` partitions; once an eighth is committed, `inject()` makes
    the fault (and ends it); the workers that stop are started again until the job is done. The committed
    output must equal the oracle. Returns the workers' failure lines."""
    import oracle

    inp, out, app = f"bf-{tag}-in", f"bf-{tag}-out", f"bf-{tag}"
    create_topic(bootstrap, inp, partitions, replication=replication)
    create_topic(bootstrap, out, partitions, replication=replication)
    total = load(bootstrap, events, inp)
    env = {**os.environ, "W_INPUT": inp, "W_OUTPUT": out}
    procs = {f"w{i}": worker(bootstrap, app, f"w{i}", env, tmp_path / f"w{i}.log") for i in range(workers)}
    try:
        wait_committed(bootstrap, app, inp, total // 8, total, partitions)
        inject()
        failures = finish(bootstrap, app, env, procs, tmp_path)
    finally:
        for p in procs.values():  # a failed assertion leaves no worker behind
            if p.poll() is None:
                p.kill()
                p.wait()
    expected = oracle.w1(oracle.flat_events(str(events)))
    try:
        got = frame(read_committed(bootstrap, out, timeout_s=120))
    except Exception as exc:  # a hanging transaction: the committed output cannot even be read whole
        report(fault, down_s, failures, tmp_path, None, expected, str(exc))
        raise
    report(fault, down_s, failures, tmp_path, got, expected, None)
    oracle.assert_frames_match(got, expected, ["user_id", "window_start"])  # nothing lost, nothing twice
    return failures


# --- a private network namespace: the broker, the workers and the checker inside, its loopback cut with tc

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed (root is needed for network namespaces)")


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A new network namespace with its loopback up; deleted on exit with every process left in it."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:  # only this test's processes live in it (its broker, its workers)
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """This thread (so the processes and the Kafka clients it starts) in namespace `name`, back after."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def cut_loopback() -> None:
    """Every packet on this namespace's loopback dropped (open connections stall; nothing is refused)."""
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "pfifo", "limit", "0"], check=True)


def restore_loopback() -> None:
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=True)


@contextlib.contextmanager
def partitioned(prefix: str) -> Iterator[dict[str, str]]:
    """Three namespaces, clients ─ router ─ broker, joined by veth pairs on private addresses:
    {"clients", "router", "broker", "broker_host"}. Cutting the router's links (`cut_router`) drops packets
    in transit, as a failed switch does: the senders' TCP sees lost packets, never a local error, and the
    broker's own loopback (its controller) stays up. Deleted on exit, with every process left in them."""
    c, r, b = f"{prefix}c", f"{prefix}r", f"{prefix}b"
    with netns(c), netns(r), netns(b):
        def ip(ns: str, *args: str) -> None:
            subprocess.run(["ip", "-n", ns, *args], check=True)

        ip(c, "link", "add", "to-router", "type", "veth", "peer", "name", "to-clients", "netns", r)
        ip(r, "link", "add", "to-broker", "type", "veth", "peer", "name", "to-router", "netns", b)
        ip(c, "addr", "add", "10.213.1.1/30", "dev", "to-router")
        ip(r, "addr", "add", "10.213.1.2/30", "dev", "to-clients")
        ip(r, "addr", "add", "10.213.2.1/30", "dev", "to-broker")
        ip(b, "addr", "add", "10.213.2.2/30", "dev", "to-router")
        for ns, dev in ((c, "to-router"), (r, "to-clients"), (r, "to-broker"), (b, "to-router")):
            ip(ns, "link", "set", dev, "up")
        ip(c, "route", "add", "default", "via", "10.213.1.2")
        ip(b, "route", "add", "default", "via", "10.213.2.1")
        subprocess.run(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        yield {"clients": c, "router": r, "broker": b, "broker_host": "10.213.2.2"}


def cut_router(router: str) -> None:
    """The router drops every packet it would forward, both ways (its links stay up)."""
    for dev in ("to-clients", "to-broker"):
        subprocess.run(["ip", "netns", "exec", router, "tc", "qdisc", "add", "dev", dev, "root", "pfifo", "limit", "0"],
                       check=True)


def restore_router(router: str) -> None:
    for dev in ("to-clients", "to-broker"):
        subprocess.run(["ip", "netns", "exec", router, "tc", "qdisc", "del", "dev", dev, "root"], check=True)
