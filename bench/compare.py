#!/usr/bin/env python3
"""Side by side in one run: Sluice w1–w3, the plain-Python baseline, and a DuckDB batch query over the
whole file (the batch ceiling). Each runs `--repeat` times as a fresh process; medians are reported.

    python bench/compare.py --input bench/data/events-1m.jsonl --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

DUCK = {
    "w1": """select user_id, (timestamp // 60000) * 60000 ws, count(*), sum(metrics.value), min(metrics.value), max(metrics.value)
             from read_json('{f}', format='newline_delimited', columns={{timestamp:'BIGINT', user_id:'VARCHAR', metrics:'STRUCT(value DOUBLE)'}}) group by all""",
    "w2": """select event_type, ws, count(*), avg(rt), quantile_disc(rt, 0.99) from (
               select event_type, metrics.response_time rt, (timestamp // 60000) * 60000 - j * 60000 ws
               from read_json('{f}', format='newline_delimited', columns={{timestamp:'BIGINT', event_type:'VARCHAR', metrics:'STRUCT(response_time DOUBLE)'}}), range(5) t(j)) group by all""",
    "w3": """select user_id, sid, count(*) from (select user_id, sum(b) over (partition by user_id order by timestamp) sid from (
               select user_id, timestamp, case when timestamp - lag(timestamp) over (partition by user_id order by timestamp) <= 60000 then 0 else 1 end b
               from read_json('{f}', format='newline_delimited', columns={{timestamp:'BIGINT', user_id:'VARCHAR'}}))) group by all""",
}


def last_json(cmd: list[str]) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def duck(workload: str, path: str) -> dict:
    code = ("import duckdb,json,time,sys; t=time.perf_counter(); "
            f"duckdb.sql({DUCK[workload].format(f=path)!r}).fetchall(); "
            "s=time.perf_counter()-t; print(json.dumps({'seconds': s}))")
    r = last_json([sys.executable, "-c", code])
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workloads", default="w1,w2,w3")
    a = ap.parse_args()
    with open(a.input, "rb") as f:
        events = sum(1 for _ in f)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in a.workloads.split(","):
            runs: dict[str, list[float]] = {"sluice": [], "baseline": [], "duckdb": []}
            rss = []
            for _ in range(a.repeat):
                r = last_json([sys.executable, str(HERE / "run.py"), w, "--input", a.input, "--output", f"{tmp}/{w}.jsonl"])
                runs["sluice"].append(r["events_per_s"])
                rss.append(r["peak_rss_mb"])
                if w == "w1":
                    b = last_json([sys.executable, str(HERE / "baseline.py"), w, "--input", a.input, "--output", f"{tmp}/b.jsonl"])
                    runs["baseline"].append(b["events_per_s"])
                runs["duckdb"].append(events / duck(w, a.input)["seconds"])
            rows.append((w, {k: statistics.median(v) for k, v in runs.items() if v}, max(rss)))
    print(f"{events:,} events, medians of {a.repeat} runs, {time.strftime('%Y-%m-%d')}, this machine")
    print(f"{'workload':<9}{'sluice ev/s':>14}{'plain python':>14}{'duckdb batch':>14}{'peak RSS MB':>13}")
    for w, med, rss in rows:
        print(f"{w:<9}{med['sluice']:>14,.0f}{med.get('baseline', float('nan')):>14,.0f}{med['duckdb']:>14,.0f}{rss:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
