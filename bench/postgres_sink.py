"""Rows per second into PostgreSQL from a 1M-row stream: Sluice's PostgresSink against a plain hand-written
loop with the same driver (psycopg 3 `executemany`, which pipelines the statements), same SQL, same table.

    python bench/postgres_sink.py gen --rows 1000000 --keys 250000 --out /tmp/pg-bench.parquet
    python bench/postgres_sink.py sluice --dsn DSN --input /tmp/pg-bench.parquet --what upsert [--checkpoint-dir D]
    python bench/postgres_sink.py loop   --dsn DSN --input /tmp/pg-bench.parquet --what upsert

`--what`: `upsert` (each key takes its latest row: INSERT … ON CONFLICT (id) DO UPDATE SET name, amount,
ts = excluded.*), `merge` (an accumulating summary: n = t.n + 1, amount = t.amount + excluded.amount,
ts = GREATEST(t.ts, excluded.ts); every row counts), `append` (INSERT, COPY for Sluice). Each run empties
the table first and checks the final table (count and sums) against the input, so both sides did the
same work. It prints `rows/s` of its own; time whole processes from outside to include start-up. The
loop commits every `--batch` rows (10,000), as a careful hand-written job would.
"""

from __future__ import annotations

import argparse
import sys
import time

import polars as pl

TABLE = "bench_pg"
SQL = {
    "upsert": "INSERT INTO bench_pg AS t (id, name, n, amount, ts) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) "
              "DO UPDATE SET name = excluded.name, n = excluded.n, amount = excluded.amount, ts = excluded.ts",
    "merge": "INSERT INTO bench_pg AS t (id, name, n, amount, ts) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) "
             "DO UPDATE SET name = excluded.name, n = t.n + 1, amount = t.amount + excluded.amount, "
             "ts = GREATEST(t.ts, excluded.ts)",
    "append": "INSERT INTO bench_pg (id, name, n, amount, ts) VALUES (%s, %s, %s, %s, %s)",
}
MERGE = {"n": "t.n + 1", "amount": "t.amount + excluded.amount", "ts": "GREATEST(t.ts, excluded.ts)"}


def gen(rows: int, keys: int, out: str) -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    ids = rng.integers(0, keys, rows)
    pl.DataFrame({"id": ids, "name": [f"user-{i}" for i in ids], "n": np.ones(rows, dtype=np.int64),
                  "amount": rng.integers(1, 10_000, rows) / 100, "ts": np.arange(rows, dtype=np.int64) * 10}
                 ).write_parquet(out, row_group_size=65_536)


def reset(dsn: str, what: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        key = "" if what == "append" else " PRIMARY KEY"
        conn.execute(f"CREATE TABLE {TABLE} (id bigint{key}, name text, n bigint, amount double precision, ts bigint)")
        conn.execute("CHECKPOINT")  # the previous run's dirty pages are written now, not during this one


def check(dsn: str, what: str, data: pl.DataFrame) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn:
        got = conn.execute(f"SELECT count(*), sum(n), round(sum(amount)::numeric, 2), sum(ts) FROM {TABLE}").fetchone()
    assert got is not None
    if what == "append":
        want = (data.height, data.height, round(data["amount"].sum(), 2), int(data["ts"].sum()))
    elif what == "merge":
        per = data.group_by("id").agg(pl.len(), pl.col("amount").sum(), pl.col("ts").max())
        want = (per.height, data.height, round(per["amount"].sum(), 2), int(per["ts"].sum()))
    else:
        last = data.unique("id", keep="last")
        want = (last.height, last.height, round(last["amount"].sum(), 2), int(last["ts"].sum()))
    assert (got[0], got[1], float(got[2]), got[3]) == (want[0], want[1], float(want[2]), want[3]), (got, want)


def run_sluice(dsn: str, path: str, what: str, checkpoint_dir: str | None, batch: int) -> None:
    import sluice as sl

    sink = (sl.PostgresSink(TABLE, dsn) if what == "append" else
            sl.PostgresSink(TABLE, dsn, key="id", merge=MERGE if what == "merge" else None))
    flow = sl.Flow("pgbench")
    flow.read("in", sl.ParquetSource(path)).write("db", sink)
    if checkpoint_dir:
        sl.run(flow, batch_size=batch, checkpoint_dir=checkpoint_dir, checkpoint_interval=1.0)
    else:
        sl.run(flow, batch_size=batch)


def run_loop(dsn: str, path: str, what: str, batch: int) -> None:
    import psycopg

    data = pl.read_parquet(path)
    statement = SQL[what]
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for start in range(0, data.height, batch):
            cur.executemany(statement, data.slice(start, batch).rows())
            conn.commit()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("side", choices=["gen", "sluice", "loop"])
    ap.add_argument("--dsn")
    ap.add_argument("--input", default="/tmp/pg-bench.parquet")
    ap.add_argument("--out", default="/tmp/pg-bench.parquet")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=250_000)
    ap.add_argument("--what", choices=sorted(SQL), default="upsert")
    ap.add_argument("--checkpoint-dir")
    ap.add_argument("--batch", type=int, default=0, help="micro-batch (Sluice, default 65536) / commit size (loop, 10000)")
    args = ap.parse_args(argv)
    if args.side == "gen":
        gen(args.rows, args.keys, args.out)
        return
    reset(args.dsn, args.what)
    if args.checkpoint_dir:
        import shutil

        shutil.rmtree(args.checkpoint_dir, ignore_errors=True)
    start = time.perf_counter()
    if args.side == "sluice":
        run_sluice(args.dsn, args.input, args.what, args.checkpoint_dir, args.batch or 65_536)
    else:
        run_loop(args.dsn, args.input, args.what, args.batch or 10_000)
    seconds = time.perf_counter() - start
    data = pl.read_parquet(args.input)
    check(args.dsn, args.what, data)
    print(f"{args.side} {args.what}: {data.height} rows in {seconds:.2f} s = {data.height / seconds:,.0f} rows/s")


if __name__ == "__main__":
    main(sys.argv[1:])
