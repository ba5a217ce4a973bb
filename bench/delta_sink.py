#!/usr/bin/env python3
"""Rows/s into a Delta table: Sluice's DeltaSink against a hand-written loop with the same driver
(`write_deltalake` per batch of the input). Run each as a whole process, alternately:

    python bench/sink_input.py --n 1000000 --out /tmp/rows.parquet
    python bench/delta_sink.py sluice    --input /tmp/rows.parquet --table /tmp/t   # exactly-once: a checkpoint per batch
    python bench/delta_sink.py sluice-at-end --input /tmp/rows.parquet --table /tmp/t  # no checkpoints
    python bench/delta_sink.py plain     --input /tmp/rows.parquet --table /tmp/t

Each prints `<mode> <rows> rows <seconds> s <rows/s> rows/s` (its own timing, from start to the last commit).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import pyarrow.parquet as pq

BATCH = 100_000


def plain(src: str, table: str) -> int:
    from deltalake import write_deltalake

    n = 0
    for batch in pq.ParquetFile(src).iter_batches(batch_size=BATCH):
        write_deltalake(table, batch, mode="append")
        n += batch.num_rows
    return n


def sluice(src: str, table: str, checkpoints: bool) -> int:
    import sluice as sl

    flow = sl.Flow("bench_delta")
    flow.read("in", sl.ParquetSource(src)).write("to_delta", sl.DeltaSink(table))
    if not checkpoints:
        return sl.run(flow, batch_size=BATCH).rows_read
    with tempfile.TemporaryDirectory() as ck:
        return sl.run(flow, batch_size=BATCH, checkpoint_dir=ck, checkpoint_interval=0.0).rows_read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sluice", "sluice-at-end", "plain"])
    ap.add_argument("--input", required=True)
    ap.add_argument("--table", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.table, ignore_errors=True)
    start = time.perf_counter()
    n = plain(a.input, a.table) if a.mode == "plain" else sluice(a.input, a.table, a.mode == "sluice")
    s = time.perf_counter() - start
    print(f"{a.mode} {n} rows {s:.2f} s {n / s:,.0f} rows/s")


if __name__ == "__main__":
    main()
