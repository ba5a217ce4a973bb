"""Broker faults under the Kafka runtime: the (single, KRaft) broker killed -9 and started again, or
paused (SIGSTOP / SIGCONT), while two workers run a windowed count over four partitions. The committed
output (read_committed) must equal the oracle; a worker that cannot make its output whole must stop with
a clear error (never exit 0), and a restarted worker then finishes the job exactly once.

These tests start their own broker (they kill it), in their own directory; BROKER_FAULT_ROUNDS (default
1) repeats the kill test for soak runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, generate
from kafka_util import run_faulted

pytestmark = pytest.mark.slow

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


def run_with_fault(broker: dict, events: Path, tmp_path: Path, tag: str, fault: str, down_s: float) -> list[str]:
    def inject() -> None:
        if fault == "kill":
            kill_broker(broker)
            time.sleep(down_s)
            start_broker(broker)
        else:
            pid = broker_pid(broker)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(down_s)
            os.kill(pid, signal.SIGCONT)

    return run_faulted(broker["bootstrap"], events, tmp_path, tag, fault, down_s, inject)


@pytest.mark.parametrize("round_", range(int(os.environ.get("BROKER_FAULT_ROUNDS", "1"))))
def test_broker_killed_and_restarted(own_broker: dict, events_faults: Path, tmp_path: Path, round_: int) -> None:
    # restarted within its broker session timeout (9 s), the broker comes up while its old registration
    # still stands: the window in which its coordinator skips markers
    failures = run_with_fault(own_broker, events_faults, tmp_path, f"kill{round_}", "kill", (2, 3, 1)[round_ % 3])
    print(f"round {round_}: failures {failures}")


def test_broker_paused(own_broker: dict, events_faults: Path, tmp_path: Path) -> None:
    failures = run_with_fault(own_broker, events_faults, tmp_path, "pause", "pause", 5)
    assert not failures, failures  # a 5 s pause is ridden out: no worker stops
