"""Broker faults under the Kafka runtime: the (single, KRaft) broker killed -9 and started again, or
paused (SIGSTOP / SIGCONT), while two workers run a windowed count over four partitions. The committed
output (read_committed) must equal the oracle; a worker that cannot make its output whole must stop with
a clear error (never exit 0), and a restarted worker then finishes the job exactly once.

These tests start their own broker (they kill it), in their own directory; BROKER_FAULT_ROUNDS (default
1) repeats the kill test for soak runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

import oracle
from conftest import ROOT, generate
from kafka_util import create_topic, frame, load, read_committed

pytestmark = pytest.mark.slow

PIPELINE = Path(__file__).with_name("workload_pipeline.py")
SCRIPT = ROOT / "scripts" / "kafka.sh"


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory):
    """A broker of this module's own, which the tests kill and start again: {"bootstrap", "dir"}."""
    directory = tmp_path_factory.mktemp("kafka-faults")
    r = subprocess.run(["bash", str(SCRIPT), "up", str(directory)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    yield {"bootstrap": r.stdout.strip().splitlines()[-1].removeprefix("bootstrap="), "dir": directory}
    subprocess.run(["bash", str(SCRIPT), "down", str(directory)], timeout=120)


def broker_pid(broker: dict) -> int:
    return int((broker["dir"] / "kafka.pid").read_text())


def kill_broker(broker: dict) -> None:
    pid = broker_pid(broker)
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):  # the JVM is gone (its ports free) before it starts again
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def start_broker(broker: dict) -> None:
    r = subprocess.run(["bash", str(SCRIPT), "start", str(broker["dir"])], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.fixture(scope="module")
def events_faults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("events", 300_000, tmp_path_factory.mktemp("ev") / "faults.jsonl", users=1500, span_s=3600)


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
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


def wait_committed(bootstrap: str, app: str, topic: str, at_least: int, total: int) -> int:
    deadline = time.monotonic() + 180
    done = 0
    while time.monotonic() < deadline:
        done = committed_total(bootstrap, app, topic, 4)
        if done > at_least:
            return done
        time.sleep(0.05)
    raise AssertionError(f"committed {done} of {total} before the fault")


def finish(broker: dict, app: str, env: dict[str, str], procs: dict[str, subprocess.Popen], tmp_path: Path) -> list[str]:
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
        if worker(broker["bootstrap"], app, name, env, tmp_path / f"{name}.log").wait(600) == 0:
            break
        failures.append((tmp_path / f"{name}.log").read_text().strip().splitlines()[-1])
    return failures


def run_with_fault(broker: dict, events: Path, tmp_path: Path, tag: str, fault: str, down_s: float) -> list[str]:
    bootstrap = broker["bootstrap"]
    inp, out, app = f"bf-{tag}-in", f"bf-{tag}-out", f"bf-{tag}"
    create_topic(bootstrap, inp, 4)
    create_topic(bootstrap, out, 4)
    total = load(bootstrap, events, inp)
    env = {**os.environ, "W_INPUT": inp, "W_OUTPUT": out}
    procs = {f"w{i}": worker(bootstrap, app, f"w{i}", env, tmp_path / f"w{i}.log") for i in range(2)}
    wait_committed(bootstrap, app, inp, total // 8, total)
    if fault == "kill":
        kill_broker(broker)
        time.sleep(down_s)
        start_broker(broker)
    else:
        pid = broker_pid(broker)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(down_s)
        os.kill(pid, signal.SIGCONT)
    failures = finish(broker, app, env, procs, tmp_path)
    expected = oracle.w1(oracle.flat_events(str(events)))
    try:
        got = frame(read_committed(bootstrap, out, timeout_s=120))
    except Exception as exc:  # a hanging transaction: the committed output cannot even be read whole
        report(fault, down_s, failures, tmp_path, None, expected, str(exc))
        raise
    report(fault, down_s, failures, tmp_path, got, expected, None)
    oracle.assert_frames_match(got, expected, ["user_id", "window_start"])  # nothing lost, nothing twice
    return failures


def report(fault: str, down_s: float, failures: list[str], tmp_path: Path, got: pl.DataFrame | None,
           expected: pl.DataFrame, error: str | None) -> None:
    """One line for bench/chaos/broker.py: windows lost and doubled, sweeps, worker failures."""
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


@pytest.mark.parametrize("round_", range(int(os.environ.get("BROKER_FAULT_ROUNDS", "1"))))
def test_broker_killed_and_restarted(own_broker: dict, events_faults: Path, tmp_path: Path, round_: int) -> None:
    # restarted within its broker session timeout (9 s), the broker comes up while its old registration
    # still stands: the window in which its coordinator skips markers
    failures = run_with_fault(own_broker, events_faults, tmp_path, f"kill{round_}", "kill", (2, 3, 1)[round_ % 3])
    print(f"round {round_}: failures {failures}")


def test_broker_paused(own_broker: dict, events_faults: Path, tmp_path: Path) -> None:
    failures = run_with_fault(own_broker, events_faults, tmp_path, "pause", "pause", 5)
    assert not failures, failures  # a 5 s pause is ridden out: no worker stops
