"""The Kafka runtime with real worker processes: partitions assigned by the consumer group, output,
state and offsets committed in one transaction, a worker killed -9 mid-run, another joining."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import oracle
from conftest import generate
from kafka_util import committed_total, create_topic, frame, load, read_committed

PIPELINE = Path(__file__).with_name("workload_pipeline.py")


def worker(bootstrap: str, app: str, name: str, env: dict[str, str], log: Path, batch_size: int = 2000) -> subprocess.Popen:
    args = [sys.executable, "-m", "sluice.cli.main", "run", str(PIPELINE), "--broker", f"kafka://{bootstrap}",
            "--app-id", app, "--instance", name, "--until-end", "--quiet", "--batch-size", str(batch_size),
            "--commit-interval", "0.2"]
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def events_large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("events", 400_000, tmp_path_factory.mktemp("ev") / "large.jsonl", users=2000, span_s=3600)


def test_three_workers_one_killed_another_joins(kafka_bootstrap: str, events_large: Path, tmp_path: Path) -> None:
    inp, out, app = "w1-in-6", "w1-out-6", "w1-kill"
    create_topic(kafka_bootstrap, inp, 6)
    create_topic(kafka_bootstrap, out, 6)
    total = load(kafka_bootstrap, events_large, inp)
    env = {**os.environ, "W_INPUT": inp, "W_OUTPUT": out}
    procs = {f"w{i}": worker(kafka_bootstrap, app, f"w{i}", env, tmp_path / f"w{i}.log") for i in range(3)}
    # kill one once the group has committed some of the input, well before the end
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline:
        done = committed_total(kafka_bootstrap, app, inp, 6)
        if done > total // 10:
            break
        time.sleep(0.05)
    assert total // 10 < done < total, f"committed {done} of {total} before the kill"
    procs["w1"].send_signal(signal.SIGKILL)
    assert procs["w1"].wait(10) == -signal.SIGKILL
    procs["w3"] = worker(kafka_bootstrap, app, "w3", env, tmp_path / "w3.log")
    for name, p in procs.items():
        if name != "w1":
            assert p.wait(240) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in procs}
    assert "starts at" in logs["w1"]  # the killed worker held partitions
    restored = [line for n in ("w0", "w2", "w3") for line in logs[n].splitlines() if "(restored)" in line]
    assert restored, "no partition resumed from committed state on another worker"
    summaries = [json.loads(line) for n in ("w0", "w2", "w3") for line in logs[n].splitlines() if line.startswith("{")]
    assert len(summaries) == 3 and sum(s["records"] for s in summaries) > 0
    got = frame(read_committed(kafka_bootstrap, out))
    expected = oracle.w1(oracle.flat_events(str(events_large)))
    oracle.assert_frames_match(got, expected, ["user_id", "window_start"])  # nothing lost, nothing twice


def test_sluice_run_workers_two(kafka_bootstrap: str, events_medium: Path) -> None:
    """`sluice run --workers 2` starts two worker processes of one group; together they do the job once."""
    inp, out = "w1-cli-in", "w1-cli-out"
    create_topic(kafka_bootstrap, inp, 4)
    create_topic(kafka_bootstrap, out, 4)
    load(kafka_bootstrap, events_medium, inp)
    env = {**os.environ, "W_INPUT": inp, "W_OUTPUT": out}
    r = subprocess.run([sys.executable, "-m", "sluice.cli.main", "run", str(PIPELINE), "--broker", f"kafka://{kafka_bootstrap}",
                        "--app-id", "w1-cli", "--workers", "2", "--until-end", "--quiet"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["worker"] for s in summaries) == ["w0", "w1"]
    assert sum(s["records"] for s in summaries) >= 60_000  # partitions may move once while the group forms
    got = frame(read_committed(kafka_bootstrap, out))
    oracle.assert_frames_match(got, oracle.w1(oracle.flat_events(str(events_medium))), ["user_id", "window_start"])


def test_sigterm_commits_and_a_restart_finishes_exactly(kafka_bootstrap: str, events_medium: Path, tmp_path: Path) -> None:
    """A following worker stopped with SIGTERM commits what it did and exits 0 at once; the windows it emitted
    are right, and a worker started again finishes the job with nothing lost or doubled."""
    inp, out, app = "w1-term-in", "w1-term-out", "w1-term"
    create_topic(kafka_bootstrap, inp, 3)
    create_topic(kafka_bootstrap, out, 3)
    total = load(kafka_bootstrap, events_medium, inp)
    env = {**os.environ, "W_INPUT": inp, "W_OUTPUT": out}
    args = [sys.executable, "-m", "sluice.cli.main", "run", str(PIPELINE), "--broker", f"kafka://{kafka_bootstrap}",
            "--app-id", app, "--instance", "follow", "--quiet"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while committed_total(kafka_bootstrap, app, inp, 3) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert json.loads(stdout.strip().splitlines()[-1])["worker"] == "follow"
    assert proc.returncode == 0, stderr[-3000:]
    assert time.monotonic() - started < 15
    expected = oracle.w1(oracle.flat_events(str(events_medium)))
    partial = frame(read_committed(kafka_bootstrap, out))
    assert 0 < partial.height < expected.height  # the last windows stay open while following
    inside = expected.join(partial.select("user_id", "window_start"), on=["user_id", "window_start"])
    oracle.assert_frames_match(partial, inside, ["user_id", "window_start"])
    finish = subprocess.run([*args[:-3], "--instance", "again", "--until-end", "--quiet"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr[-3000:]
    oracle.assert_frames_match(frame(read_committed(kafka_bootstrap, out)), expected, ["user_id", "window_start"])
