#!/usr/bin/env python3
"""Randomized crash soak: run w1, w3 and the risk-score job with checkpoints, kill -9 each at random
moments several times, let it finish, and compare the committed output with an uninterrupted run (large
inputs, 600,000 events, through bench/run.py). bench/chaos/kill_soak.py covers every job and sink with
independent oracles; this one keeps the long-input runs.

    python bench/chaos/crash_soak.py --runs 10 --kills 8 [--events 600000] [--seed 1]

Last lines: a CHAOS-ROW (bench/chaos/table.py), then {"totals": {"runs", "survived", "kills", "records_lost",
"records_duplicated"}}.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # bench/
RUN = [sys.executable, str(HERE / "run.py")]


def lines(path: Path) -> Counter[bytes]:
    return Counter(path.read_bytes().splitlines()) if path.exists() else Counter()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--kills", type=int, default=8, help="kills per run (at most)")
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    totals = {"runs": 0, "survived": 0, "kills": 0, "records_lost": 0, "records_duplicated": 0}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        inputs = {"events": tmp / "events.jsonl", "transactions": tmp / "tx.jsonl"}
        for kind, path in inputs.items():
            n = a.events if kind == "events" else a.events // 3
            subprocess.run([sys.executable, str(HERE / "gen_events.py"), kind, "--n", str(n), "--users", "500",
                            "--span-s", "3600", "--out", str(path)], check=True)
        for i in range(a.runs):
            workload = rng.choice(["w1", "w3", "risk"])
            src = inputs["transactions" if workload == "risk" else "events"]
            batch = str(rng.choice([512, 1024, 4096]))
            state = rng.choice(["memory", "rocksdb"])
            ref, out, ck = tmp / f"ref{i}.jsonl", tmp / f"out{i}.jsonl", tmp / f"ck{i}"
            base = [*RUN, workload, "--input", str(src), "--batch-size", batch, "--state", state]
            subprocess.run([*base, "--output", str(ref)], check=True, capture_output=True)
            args = [*base, "--output", str(out), "--checkpoint-dir", str(ck), "--checkpoint-interval",
                    str(rng.choice([0.05, 0.2, 1.0]))]
            kills, ok = 0, False
            while True:
                proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                if kills < a.kills:
                    time.sleep(rng.uniform(0.6, 1.8))
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                        kills += 1
                        continue
                proc.communicate()
                ok = proc.returncode == 0
                break
            want, got = lines(ref), lines(out)
            lost = sum((want - got).values())
            dup = sum((got - want).values())
            survived = ok and lost == 0 and dup == 0 and out.read_bytes() == ref.read_bytes()
            totals["runs"] += 1
            totals["survived"] += int(survived)
            totals["kills"] += kills
            totals["records_lost"] += lost
            totals["records_duplicated"] += dup
            print(f"run {i}: {workload} batch {batch} state {state}: {kills} kills, "
                  f"{'ok' if survived else 'FAILED'} (lost {lost}, duplicated {dup})", flush=True)
    print("CHAOS-ROW " + json.dumps({
        "fault": f"kill -9 of bench/run.py (w1, w3, risk; {a.events:,} events) up to {a.kills} times per run, "
                 "compared byte for byte with an uninterrupted run",
        "runs": totals["runs"], "survived": totals["survived"], "lost": totals["records_lost"],
        "duplicated": totals["records_duplicated"], "stopped": 0,
        "command": f"python bench/chaos/crash_soak.py --runs {a.runs} --kills {a.kills} --events {a.events}"}))
    print(json.dumps({"totals": totals}))
    return 0 if totals["survived"] == totals["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
