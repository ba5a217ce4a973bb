#!/usr/bin/env python3
"""Rows/s into one Cassandra table, side by side, on one server in one run:

    hand: execute_concurrent_with_args   a prepared INSERT per row, 64 in flight (the driver's own fast path)
    hand: batches per partition          the same rows grouped per partition key into UNLOGGED batches
                                         of 100, 64 in flight
    sluice batch=row                     sl.CassandraSink(batch="row"), no checkpoints (rows as they come)
    sluice batch=partition               sl.CassandraSink() (the default), no checkpoints
    sluice exactly-once                  sl.CassandraSink() in a checkpointed sl.run (staged per epoch,
                                         fenced; checkpoint every 5 s)

    python bench/cassandra_sink.py [--contact HOST:PORT] [--rows 1000000] [--rounds 1] [--only NAME,…]

Without --contact a server is started (scripts/cassandra.sh) and stopped at the end. The table is
(user_id text, ts bigint, value double, n int, PRIMARY KEY ((user_id), ts)), 2,000 users; it is truncated
before each run. Prints a table of rows/s (median of --rounds) and one JSON line with every run last.
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
from typing import Any

import polars as pl

HERE = Path(__file__).resolve().parent
KS, TABLE = "bench", "events"


def rows(n: int) -> pl.DataFrame:
    i = pl.int_range(0, n, eager=True)
    return pl.DataFrame({"user_id": ("u" + (i * 7919 % 2000).cast(pl.String)), "ts": 1_700_000_000_000 + i,
                         "value": (i % 1000).cast(pl.Float64) / 10, "n": (i % 100).cast(pl.Int32)})


def session(contact: str) -> tuple[Any, Any]:
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    host, port = contact.rsplit(":", 1)
    for attempt in range(60):
        cluster = Cluster([(host, int(port))], auth_provider=PlainTextAuthProvider("cassandra", "cassandra"))
        try:
            cql = cluster.connect()
            cql.default_timeout = 30.0  # as the sink's requests (the driver's 10 s trips on a flush here)
            return cluster, cql
        except Exception:
            cluster.shutdown()
            if attempt == 59:
                raise
            time.sleep(1)
    raise AssertionError


def hand_rows(cql: Any, df: pl.DataFrame) -> None:
    from cassandra.concurrent import execute_concurrent_with_args

    insert = cql.prepare(f"INSERT INTO {KS}.{TABLE} (user_id, ts, value, n) VALUES (?, ?, ?, ?)")
    execute_concurrent_with_args(cql, insert, df.rows(), concurrency=64)


def hand_batches(cql: Any, df: pl.DataFrame) -> None:
    from cassandra.concurrent import execute_concurrent
    from cassandra.query import BatchStatement, BatchType

    insert = cql.prepare(f"INSERT INTO {KS}.{TABLE} (user_id, ts, value, n) VALUES (?, ?, ?, ?)")
    batches = []
    for part in df.partition_by("user_id", maintain_order=True):
        values = part.rows()
        for start in range(0, len(values), 100):
            b = BatchStatement(batch_type=BatchType.UNLOGGED)
            for v in values[start:start + 100]:
                b.add(insert, v)
            batches.append((b, None))
    execute_concurrent(cql, batches, concurrency=64)


def sluice_run(contact: str, df: pl.DataFrame, batch: str, checkpointed: bool) -> None:
    import sluice as sl
    from sluice import testing

    flow = sl.Flow("bench_cassandra")
    flow.read("in", testing.rows(df)).write("out", sl.CassandraSink(contact, KS, TABLE, batch=batch,
                                                                      username="cassandra", password="cassandra"))
    if checkpointed:
        with tempfile.TemporaryDirectory() as ck:
            sl.run(flow, checkpoint_dir=ck, checkpoint_interval=5.0, batch_size=10_000)
    else:
        sl.run(flow, batch_size=10_000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contact", help="HOST:PORT of a Cassandra (user cassandra/cassandra); default: start one")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated names of the runs to do")
    a = ap.parse_args(argv)
    server_dir = None
    contact = a.contact
    if contact is None:
        server_dir = tempfile.mkdtemp(prefix="bench-cassandra-")
        t = time.perf_counter()
        out = subprocess.run(["bash", str(HERE.parent / "scripts" / "cassandra.sh"), "up", server_dir],
                             capture_output=True, text=True, check=True).stdout
        contact = out.strip().splitlines()[-1].removeprefix("contact=")
        print(f"server up at {contact} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    cluster, cql = session(contact)
    try:
        cql.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        cql.execute(f"CREATE TABLE IF NOT EXISTS {KS}.{TABLE} "
                    "(user_id text, ts bigint, value double, n int, PRIMARY KEY ((user_id), ts))")
        df = rows(a.rows)
        runs = {
            "hand: execute_concurrent_with_args": lambda: hand_rows(cql, df),
            "hand: batches per partition": lambda: hand_batches(cql, df),
            "sluice batch=row": lambda: sluice_run(contact, df, "row", False),
            "sluice batch=partition": lambda: sluice_run(contact, df, "partition", False),
            "sluice exactly-once": lambda: sluice_run(contact, df, "partition", True),
        }
        only = [o.strip() for o in a.only.split(",") if o.strip()]
        results: dict[str, list[float]] = {}
        for _ in range(a.rounds):
            for name, fn in runs.items():  # interleaved, so that the machine's load hits every run alike
                if only and not any(o in name for o in only):
                    continue
                cql.execute(f"TRUNCATE {KS}.{TABLE}")
                t = time.perf_counter()
                fn()
                seconds = time.perf_counter() - t
                count = cql.execute(f"SELECT count(*) FROM {KS}.{TABLE}", timeout=300).one()[0]
                assert count == a.rows, f"{name}: {count} rows in the table for {a.rows}"
                results.setdefault(name, []).append(a.rows / seconds)
                print(f"{name}: {a.rows / seconds:,.0f} rows/s ({seconds:.1f} s)", file=sys.stderr)
        print(f"\n{a.rows:,} rows, median of {a.rounds}:")
        for name, rates in results.items():
            print(f"  {name:<38} {statistics.median(rates):>10,.0f} rows/s")
        print(json.dumps({"rows": a.rows, "runs": results}))
    finally:
        cluster.shutdown()
        if server_dir is not None:
            subprocess.run(["bash", str(HERE.parent / "scripts" / "cassandra.sh"), "down", server_dir], timeout=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
