#!/usr/bin/env python3
"""Keyed state at scale: a running count per key (a process function with value state) over N records
and K keys, on the memory and RocksDB backends; then the time to checkpoint that state and to restore it.

    python bench/state_bench.py --records 2000000 --keys 1000000 [--backends memory,rocksdb]

Prints one JSON line per backend: records_per_s, checkpoint_s, restore_s, checkpoint_mb.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

import sluice as sl
from sluice.runtime.executor import CheckpointSettings, Executor


class RunningCount(sl.KeyedProcessFunction):
    def open(self, ctx):
        self.n = ctx.value_state("n")

    def process(self, record, ctx):
        n = (self.n.value() or 0) + 1
        self.n.update(n)
        return ()


def flow(records: int, keys: int) -> sl.Flow:
    rng = np.random.default_rng(1)
    df = pl.DataFrame({"ts": np.arange(records, dtype=np.int64), "k": rng.integers(0, keys, records)})
    f = sl.Flow("running_count")
    (f.read("in", sl.MemorySource(df)).event_time("ts", timedelta(0)).key_by("k")
      .process("count", RunningCount(), schema={"k": int}).write("out", sl.CollectSink()))
    return f


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--backends", default="memory,rocksdb")
    a = ap.parse_args()
    for backend in a.backends.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="sluice-state-bench-"))
        try:
            plan = flow(a.records, a.keys).plan()
            ex = Executor(plan, 65_536, None, CheckpointSettings(tmp / "ck", None), backend, tmp / "state")
            t0 = time.perf_counter()
            streams = {n: r.batches() for n, r in ex.readers.items()}
            ex.rows_read = 0
            for name, it in streams.items():
                for port, batch in it:
                    ex._push(name, port, batch)
            for step in plan.steps:
                for port, out in ex.ops[step.name].on_end():
                    ex._push(step.name, port, out)
            run_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            ex._checkpoint()
            ck_s = time.perf_counter() - t1
            for op in ex.ops.values():
                op.close()
            size = sum(p.stat().st_size for p in (tmp / "ck").rglob("*") if p.is_file()) / 2**20
            ex2 = Executor(flow(a.records, a.keys).plan(), 65_536, None, CheckpointSettings(tmp / "ck", None), backend,
                           tmp / "state2")
            t2 = time.perf_counter()
            ex2._restore()
            restore_s = time.perf_counter() - t2
            for op in ex2.ops.values():
                op.close()
            print(json.dumps({"backend": backend, "records": a.records, "keys": a.keys,
                              "records_per_s": round(a.records / run_s), "checkpoint_s": round(ck_s, 2),
                              "restore_s": round(restore_s, 2), "checkpoint_mb": round(size, 1)}), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
