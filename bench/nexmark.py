#!/usr/bin/env python3
"""Nexmark q0–q8, q11, q12 on Sluice: events/s per core, every run checked against its DuckDB oracle.

    python bench/nexmark.py                          # 10M events, every query, 3 rounds
    python bench/nexmark.py --events 1000000 --queries q0,q5,q7 --rounds 1

The stream (sluice.testing.nexmark: persons, auctions and bids 1:3:46 at Flink's 10M events/s of event
time, Beam's held-back events) is generated once into bench/data/nexmark-<events>-<seed>.parquet. Each
run is a fresh process that reads that file with sl.ParquetSource, runs the query into an in-memory sink
(Flink's benchmark writes to a blackhole) and measures the run: wall time and the process's CPU time
(user + sys, every thread: Polars' pool and the Parquet reader too). Per core = events / CPU seconds,
which is what a machine shared with other jobs does not distort much. After the timing, the same process
computes the DuckDB oracle over the file and compares (as multisets); a mismatch fails the benchmark.
Rounds alternate the queries (q0 q1 … q0 q1 …); medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHORS = {  # published events/s per core (issue 12): Flink 2.0, Feldera (DBSP)
    "q0": "Flink 379k; Feldera 0.94–1.17M", "q5": "Flink 74.5k; Feldera 0.87M", "q7": "Flink 22.9k",
}
GOALS = {"q0": 1_000_000, "q1": 1_000_000, "q2": 1_000_000, "q5": 150_000, "q7": 150_000}


def child(query: str, path: str, batch_size: int, check: bool) -> None:
    import sluice as sl
    from sluice.testing import nexmark_queries as nq

    flow, sink, late = nq.build_with_late(query, sl.ParquetSource(path))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = sl.run(flow, batch_size=batch_size)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    import resource

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the oracle runs in this process
    got = sink.frame()
    out: dict[str, object] = {"query": query, "events": result.rows_read, "wall": wall, "cpu": cpu, "rss_mb": rss_mb,
                              "rows": got.height, "late": {k: v.frame().height for k, v in late.items() if v.frame().height}}
    if check:
        t = time.perf_counter()
        want = nq.oracle(query, path)
        out["check"] = nq.same_rows(got, want) or "equal"
        out["oracle_s"] = time.perf_counter() - t
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--queries", default="q0,q1,q2,q3,q4,q5,q6,q7,q8,q11,q12")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=10_000_000, help="events per second of event time")
    ap.add_argument("--batch-size", type=int, default=65_536)
    ap.add_argument("--data", default=str(HERE / "data"))
    ap.add_argument("--no-check", action="store_true", help="skip the oracle (not for published figures)")
    ap.add_argument("--child", nargs=2, metavar=("QUERY", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.batch_size, not a.no_check)
        return 0

    from sluice.testing import nexmark as nx

    rate = f"-{a.rate:g}" if a.rate != 10_000_000 else ""
    path = Path(a.data) / f"nexmark-{a.events}-{a.seed}{rate}.parquet"
    if not path.exists():
        t = time.perf_counter()
        nx.write_parquet(nx.NexmarkConfig(a.events, seed=a.seed, events_per_second=a.rate), path)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    queries = a.queries.split(",")
    runs: dict[str, list[dict]] = {q: [] for q in queries}
    failed = False
    for r in range(a.rounds):
        for q in queries:
            cmd = [sys.executable, __file__, "--child", q, str(path), "--batch-size", str(a.batch_size)]
            if a.no_check:
                cmd.append("--no-check")
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            whole = time.perf_counter() - t
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["process"] = whole - float(res.get("oracle_s", 0.0))
            runs[q].append(res)
            bad = res.get("check", "equal") != "equal" or res["late"]
            failed |= bool(bad)
            print(f"round {r + 1} {q}: {res['events'] / res['cpu']:,.0f} events/s per core, "
                  f"{res['events'] / res['wall']:,.0f} events/s wall ({res['cpu'] / res['wall']:.2f} cores), "
                  f"{res['rows']:,} rows, check {res.get('check', 'skipped')}"
                  + (f", LATE {res['late']}" if res["late"] else ""), file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"\nNexmark, {a.events:,} events, batch size {a.batch_size}, medians of {a.rounds}; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    print("| query | events/s per core (CPU time) | events/s wall | cores used | whole process s | output rows | peak RSS MB | oracle | goal | published per core |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for q in queries:
        rs = runs[q]
        per_core = statistics.median(x["events"] / x["cpu"] for x in rs)
        wall = statistics.median(x["events"] / x["wall"] for x in rs)
        cores = statistics.median(x["cpu"] / x["wall"] for x in rs)
        proc_s = statistics.median(x["process"] for x in rs)
        rss = max(x["rss_mb"] for x in rs)
        check = "equal" if all(x.get("check") == "equal" for x in rs) else ",".join({str(x.get("check", "skipped"))[:40] for x in rs})
        goal = f"≥ {GOALS[q] / 1e3:,.0f}k" if q in GOALS else ""
        print(f"| {q} | {per_core / 1e3:,.0f}k | {wall / 1e3:,.0f}k | {cores:.2f} | {proc_s:.1f} | {rs[0]['rows']:,} | "
              f"{rss:,.0f} | {check} | {goal} | {ANCHORS.get(q, '')} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
