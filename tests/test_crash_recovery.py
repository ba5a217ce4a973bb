"""kill -9 a real worker process at random moments, start it again, and compare the committed output
with an uninterrupted run's: byte for byte, so nothing is lost and nothing is duplicated."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, generate

pytestmark = pytest.mark.slow  # 600,000-event runs killed and restarted many times: about 1.5 minutes

RUN = [sys.executable, str(ROOT / "bench" / "run.py")]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("events", 600_000, tmp_path_factory.mktemp("crash") / "events.jsonl", users=500, span_s=3600)


@pytest.fixture(scope="module")
def transactions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("transactions", 200_000, tmp_path_factory.mktemp("crash") / "tx.jsonl", users=500, span_s=3600)


def run_to_completion_with_kills(workload: str, events: Path, out: Path, ckpt: Path, kills: int, rng: random.Random,
                                 extra: tuple[str, ...] = ()) -> int:
    """Start the run, kill -9 it `kills` times at random moments, then let it finish. Returns kills done.

    Each kill lands mid-run whatever the machine's speed: after the restarted process has written a new
    checkpoint (so it has made progress), at a random moment up to 0.02 s later (one checkpoint interval:
    a whole w1 run over this input now takes about a second, and a later kill found it finished)."""
    args = [*RUN, workload, "--input", str(events), "--output", str(out), "--checkpoint-dir", str(ckpt),
            "--checkpoint-interval", "0.02", "--batch-size", "1024", *extra]
    done = 0
    while True:
        seen = max((int(p.parent.name[4:]) for p in ckpt.glob("chk-*/manifest.json")), default=0)
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if done < kills:
            while proc.poll() is None and max(
                    (int(p.parent.name[4:]) for p in ckpt.glob("chk-*/manifest.json")), default=0) <= seen:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.02))
            if proc.poll() is None:
                proc.kill()  # SIGKILL: no cleanup, no flush
                proc.wait()
                done += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        return done


@pytest.mark.parametrize("workload", ["w1", "w3"])
def test_kill_minus_nine_loses_and_duplicates_nothing(workload: str, events: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.jsonl"
    # same batch size as the killed runs: recovery resumes at the same batch cuts, so even float sums match
    subprocess.run([*RUN, workload, "--input", str(events), "--output", str(reference), "--batch-size", "1024"], check=True,
                   capture_output=True)
    rng = random.Random(f"{workload}-kills")
    out = tmp_path / "out.jsonl"
    kills = run_to_completion_with_kills(workload, events, out, tmp_path / "ckpt", kills=10, rng=rng)
    assert kills >= 5, "the run finished before it could be killed; make the input larger"
    assert out.read_bytes() == reference.read_bytes()
    assert not list(tmp_path.glob(".out.jsonl.stage-*"))  # nothing staged is left visible


@pytest.mark.parametrize("state", ["memory", "rocksdb"])
def test_process_function_job_survives_kill_minus_nine(state: str, transactions: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.jsonl"
    subprocess.run([*RUN, "risk", "--input", str(transactions), "--output", str(reference), "--batch-size", "1024"],
                   check=True, capture_output=True)
    out = tmp_path / "out.jsonl"
    kills = run_to_completion_with_kills("risk", transactions, out, tmp_path / "ckpt", kills=5,
                                         rng=random.Random(f"risk-{state}"), extra=("--state", state))
    assert kills >= 3, "the run finished before it could be killed; make the input larger"
    assert out.read_bytes() == reference.read_bytes()
    alerts = tmp_path / "out-alerts.jsonl"
    assert alerts.read_bytes() == (tmp_path / "reference-alerts.jsonl").read_bytes()


def test_rerun_after_completion_changes_nothing(events: Path, tmp_path: Path) -> None:
    out, ckpt = tmp_path / "out.jsonl", tmp_path / "ckpt"
    args = [*RUN, "w1", "--input", str(events), "--output", str(out), "--checkpoint-dir", str(ckpt)]
    subprocess.run(args, check=True, capture_output=True)
    first = out.read_bytes()
    subprocess.run(args, check=True, capture_output=True)
    assert out.read_bytes() == first


def test_full_disk_fails_clearly_and_resumes_when_space_returns(events: Path, tmp_path: Path) -> None:
    """Output and checkpoints on a 3 MiB tmpfs: the run stops with a clear error, what was committed stays
    whole, and once the file system is given room the same command finishes with the exact output."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(small)], check=True)
    try:
        reference = tmp_path / "reference.jsonl"
        subprocess.run([*RUN, "w1", "--input", str(events), "--output", str(reference), "--batch-size", "4096"],
                       check=True, capture_output=True)
        args = [*RUN, "w1", "--input", str(events), "--output", str(small / "out.jsonl"), "--batch-size", "4096",
                "--checkpoint-dir", str(small / "ck"), "--checkpoint-interval", "0.05"]
        r = subprocess.run(args, capture_output=True, text=True)
        assert r.returncode == 1
        assert "no space left on the device" in r.stderr and "run again with the same checkpoint directory" in r.stderr
        assert "Traceback" not in r.stderr
        committed = (small / "out.jsonl").read_bytes() if (small / "out.jsonl").exists() else b""
        full = reference.read_bytes()
        assert len(committed) < len(full)
        subprocess.run(["mount", "-o", "remount,size=256M", str(small)], check=True)
        r = subprocess.run(args, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert (small / "out.jsonl").read_bytes() == full
    finally:
        subprocess.run(["umount", str(small)], check=False)
