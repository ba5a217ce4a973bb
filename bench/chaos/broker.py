#!/usr/bin/env python3
"""Broker-fault soak for the Kafka runtime: tests/kafka/test_broker_faults.py repeated (its own KRaft
broker; two workers, four partitions, w1): the broker killed -9 and started again after 2, 3 or 1 s, N
times, and paused 5 s once. Each round's committed output is compared with the DuckDB oracle.

    python bench/chaos/broker.py --rounds 10

Per round: {"fault", "down_s", "lost", "duplicated", "unreadable", "sweeps", "worker_failures"}. Last
lines: a CHAOS-ROW per fault (runs, survived, lost, duplicated, stopped with an error: the contract of
bench/chaos/table.py, which puts them in docs/guarantees.md), then the totals as JSON (with sweeps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="broker kills (default 5)")
    ap.add_argument("--log", default="chaos_broker.log", help="pytest's whole output (default chaos_broker.log)")
    a = ap.parse_args()
    env = {**os.environ, "BROKER_FAULT_ROUNDS": str(a.rounds)}
    r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests/kafka/test_broker_faults.py"), "-q", "-s",
                        "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True)
    (Path(a.log)).write_text(r.stdout + r.stderr)
    # pytest's progress characters may precede the line
    rows = [json.loads(line.split("BROKER-FAULT ", 1)[1]) for line in r.stdout.splitlines() if "BROKER-FAULT " in line]
    for row in rows:
        print(json.dumps(row))
    totals = {}
    setup = "Kafka runtime, 2 workers, 4 partitions, w1, one KRaft broker"
    for fault, label in (("kill", f"broker kill -9, restart after 1-3 s ({setup})"),
                         ("pause", f"broker paused 5 s with SIGSTOP ({setup})")):
        mine = [x for x in rows if x["fault"] == fault]
        whole = [x for x in mine if x["lost"] == 0 and x["duplicated"] == 0]
        lost = sum(x["lost"] or 0 for x in mine)
        dup = sum(x["duplicated"] or 0 for x in mine)
        stopped = sum(1 for x in mine if x["worker_failures"])
        sweeps = sum(x["sweeps"] for x in mine)
        unreadable = sum(1 for x in mine if x["unreadable"])
        totals[fault] = {"runs": len(mine), "survived": len(whole), "lost": lost, "duplicated": dup,
                         "stopped_with_error": stopped, "unreadable": unreadable, "sweeps": sweeps}
        print("CHAOS-ROW " + json.dumps({"fault": label, "runs": len(mine), "survived": len(whole), "lost": lost,
                                         "duplicated": dup, "stopped": stopped,
                                         "command": f"python bench/chaos/broker.py --rounds {a.rounds}"}))
    print(json.dumps({"totals": totals}))
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
