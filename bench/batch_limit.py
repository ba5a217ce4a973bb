#!/usr/bin/env python3
"""Sluice against the batch limit: w1–w4 side by side as whole processes — Sluice (bench/run.py), DuckDB's
and Polars' batch queries over the whole file, and the plain-Python loop (bench/batch_engines.py) —
run in turn (A B C D A B C D …), `--runs` times each; prints the medians of wall and CPU time (user+sys,
less sensitive to a loaded machine) and their ratios to DuckDB. Every run's output (Sluice's and the
others') is checked against a DuckDB oracle of the same file (tests/oracle.py), outside the timing.

    make bench-data   # and: python bench/gen_events.py events --n 10000000 --span-s 72000 --out bench/data/events-10m.jsonl
    python bench/batch_limit.py --runs 5 --sizes 1m,10m --workloads w1,w2,w3,w4

Inputs: bench/data/events-{size}.jsonl (w1–w3) and bench/data/tx-{size}.jsonl (w4). `--sluice-src DIR` runs
Sluice from another source tree (e.g. an older commit: `git archive 5e23fa5 src | tar -x -C /tmp/old`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import oracle  # noqa: E402

ENGINES = ("sluice", "duckdb", "polars", "python")
KEYS = {"w1": ["user_id", "window_start"], "w2": ["event_type", "window_start"], "w3": ["user_id", "session_start"],
        "w4": ["large_tx_id"]}
APPROX = {"w2": {"p99_response_time": 0.01}}  # Sluice's p99 sketch is sized to a 1% relative bound


def command(engine: str, w: str, src: Path, out: Path) -> list[str]:
    if engine.startswith("sluice"):
        return [sys.executable, str(HERE / "run.py"), w, "--input", str(src), "--output", str(out)]
    return [sys.executable, str(HERE / "batch_engines.py"), engine, w, "--input", str(src), "--output", str(out)]


def timed(cmd: list[str], env: dict[str, str] | None) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_utime + usage.ru_stime


def expected(w: str, src: Path) -> pl.DataFrame:
    if w == "w4":
        return oracle.w4(str(src))
    flat = oracle.flat_events(str(src))
    return getattr(oracle, w)(flat)


def check(w: str, engine: str, out: Path, want: pl.DataFrame) -> None:
    got = pl.read_ndjson(out) if out.stat().st_size else pl.DataFrame(schema=want.schema)
    got = got.cast({c: want.schema[c] for c in want.columns if c in got.columns})
    try:
        oracle.assert_frames_match(got, want, KEYS[w], approx=APPROX.get(w))
    except AssertionError as exc:
        raise SystemExit(f"{engine} {w}: output differs from the DuckDB oracle: {exc}") from exc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="1m,10m")
    ap.add_argument("--workloads", default="w1,w2,w3,w4")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--data", default=str(HERE / "data"))
    ap.add_argument("--sluice-src", help="run Sluice from this src/ directory (PYTHONPATH) instead of the installed one")
    ap.add_argument("--before-src", help="also run Sluice from this src/ directory, as the engine sluice-before, "
                    "alternating with the others (an A/B of two versions in one run)")
    ap.add_argument("--before-env", action="append", default=[], metavar="KEY=VALUE",
                    help="run sluice-before with this environment variable set (e.g. SLUICE_NATIVE_JSON=0: Sluice "
                    "without its native JSON decoder); with or without --before-src")
    ap.add_argument("--json", help="append each cell's figures to this file as JSON lines")
    a = ap.parse_args()
    engines = a.engines.split(",")
    env = dict(os.environ)
    if a.sluice_src:
        env["PYTHONPATH"] = str(Path(a.sluice_src).resolve())
    envs = {e: env for e in engines}
    if a.before_src or a.before_env:
        engines.insert(1, "sluice-before")
        envs["sluice-before"] = {**env, **dict(kv.split("=", 1) for kv in a.before_env)}
        if a.before_src:
            envs["sluice-before"]["PYTHONPATH"] = str(Path(a.before_src).resolve())
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"medians of {a.runs}, runs alternating; sluice from {a.sluice_src or 'the venv'}", flush=True)
    print(f"{'size':<5}{'wl':<4}{'engine':<14}{'wall s':>8}{'cpu s':>8}{'wall/duck':>10}{'cpu/duck':>9}"
          f"{'wall min-max':>15}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes.split(","):
            for w in a.workloads.split(","):
                src = Path(a.data) / (f"tx-{size}.jsonl" if w == "w4" else f"events-{size}.jsonl")
                want = expected(w, src)
                walls: dict[str, list[float]] = {e: [] for e in engines}
                cpus: dict[str, list[float]] = {e: [] for e in engines}
                for _ in range(a.runs):
                    for e in engines:
                        out = Path(tmp) / f"{e}-{w}.jsonl"
                        out.unlink(missing_ok=True)
                        wall, cpu = timed(command(e, w, src, out), envs[e])
                        check(w, e, out, want)
                        walls[e].append(wall)
                        cpus[e].append(cpu)
                med = {e: (statistics.median(walls[e]), statistics.median(cpus[e])) for e in engines}
                duck = med.get("duckdb")
                for e in engines:
                    wall, cpu = med[e]
                    ratios = f"{wall / duck[0]:>10.2f}{cpu / duck[1]:>9.2f}" if duck else f"{'':>19}"
                    print(f"{size:<5}{w:<4}{e:<14}{wall:>8.2f}{cpu:>8.2f}{ratios}"
                          f"{min(walls[e]):>7.2f}-{max(walls[e]):<7.2f}", flush=True)
                    if a.json:
                        with open(a.json, "a") as f:
                            f.write(json.dumps({"size": size, "workload": w, "engine": e, "wall": walls[e],
                                                "cpu": cpus[e],
                                            "sluice_src": a.before_src if e == "sluice-before" else a.sluice_src,
                                            "env": a.before_env if e == "sluice-before" else []}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
