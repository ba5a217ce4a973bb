"""Shared by bench/chaos/network.py and cluster.py: run a fault test module of tests/kafka with its cuts in
the environment, collect its BROKER-FAULT lines (tests/kafka_util.report) and print CHAOS-ROW lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_tests(module: str, env: dict[str, str], log: str) -> tuple[list[dict], int]:
    r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "kafka" / module), "-q", "-s",
                        "-p", "no:cacheprovider"], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    Path(log).write_text(r.stdout + r.stderr)
    # pytest's progress characters may precede the line
    rows = [json.loads(line.split("BROKER-FAULT ", 1)[1]) for line in r.stdout.splitlines() if "BROKER-FAULT " in line]
    return rows, r.returncode


def chaos_row(fault: str, planned: int, rows: list[dict], command: str) -> dict:
    """`planned` runs; a run without a row (the test failed before comparing) counts as not survived.
    survived: committed output equal to the oracle (0 lost, 0 duplicated), whether or not a worker had to
    stop; stopped: runs in which a worker stopped with a clear error and a restarted one finished the job."""
    whole = [x for x in rows if x["lost"] == 0 and x["duplicated"] == 0 and not x["unreadable"]]
    return {"fault": fault, "runs": planned, "survived": len(whole),
            "lost": sum(x["lost"] or 0 for x in rows), "duplicated": sum(x["duplicated"] or 0 for x in rows),
            "stopped": sum(1 for x in whole if x["worker_failures"]), "command": command}


def print_rows(per_round: list[dict], chaos: list[dict]) -> None:
    for row in per_round:
        print(json.dumps(row))
    for row in chaos:
        print("CHAOS-ROW " + json.dumps(row))
