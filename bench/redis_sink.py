#!/usr/bin/env python3
"""Rows/s into Redis hashes (HSET key id user_id amount ts): Sluice's RedisSink against a hand-written loop
with the same driver (a redis-py pipeline, executed every 10,000 commands). Whole processes, alternately:

    python bench/sink_input.py --n 1000000 --out /tmp/rows.parquet
    python bench/redis_sink.py sluice        --input /tmp/rows.parquet --url redis://127.0.0.1:6379/0  # exactly-once
    python bench/redis_sink.py sluice-at-end --input /tmp/rows.parquet --url ...   # no checkpoints: sent as it comes
    python bench/redis_sink.py plain         --input /tmp/rows.parquet --url ...

Each prints `<mode> <rows> rows <seconds> s <rows/s> rows/s`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pyarrow.parquet as pq

BATCH = 100_000


def plain(src: str, url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    n = 0
    for batch in pq.ParquetFile(src).iter_batches(batch_size=BATCH):
        for row in batch.to_pylist():
            pipe.hset(f"plain:{row['id']}", mapping=row)
            n += 1
            if n % 10_000 == 0:
                pipe.execute()
    pipe.execute()
    return n


def sluice(src: str, url: str, checkpoints: bool) -> int:
    import sluice as sl

    flow = sl.Flow("bench_redis")
    flow.read("in", sl.ParquetSource(src)).write("to_redis", sl.RedisSink(url, key="sluice:{id}"))
    if not checkpoints:
        return sl.run(flow, batch_size=BATCH).rows_read
    with tempfile.TemporaryDirectory() as ck:
        return sl.run(flow, batch_size=BATCH, checkpoint_dir=ck, checkpoint_interval=0.0).rows_read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sluice", "sluice-at-end", "plain"])
    ap.add_argument("--input", required=True)
    ap.add_argument("--url", required=True)
    a = ap.parse_args()
    import redis

    redis.Redis.from_url(a.url).flushdb()
    start = time.perf_counter()
    n = plain(a.input, a.url) if a.mode == "plain" else sluice(a.input, a.url, a.mode == "sluice")
    s = time.perf_counter() - start
    print(f"{a.mode} {n} rows {s:.2f} s {n / s:,.0f} rows/s")


if __name__ == "__main__":
    main()
