#!/usr/bin/env python3
"""w1–w4 as batch queries over the whole file, one engine per process, for bench/batch_limit.py:
DuckDB (all cores), Polars (all cores) and a plain-Python loop (orjson + dicts, one record at a time,
streaming with the same watermark rules as Sluice: delay 5 s, emit when the watermark passes a window).

    python bench/batch_engines.py duckdb w1 --input events.jsonl --output out.jsonl

Each writes its result as JSON Lines with the columns Sluice writes, so every run can be checked.
"""

from __future__ import annotations

import argparse
import bisect
import sys

W4_COLUMNS = ["user_id", "small_tx_id", "large_tx_id", "small_ts", "large_ts"]
SOURCE = {
    "w1": "read_json('{f}', format='newline_delimited', columns={{timestamp:'BIGINT', user_id:'VARCHAR', "
          "metrics:'STRUCT(value DOUBLE)'}})",
    "w2": "read_json('{f}', format='newline_delimited', columns={{timestamp:'BIGINT', event_type:'VARCHAR', "
          "metrics:'STRUCT(response_time DOUBLE)'}})",
    "w3": "read_json('{f}', format='newline_delimited', columns={{timestamp:'BIGINT', user_id:'VARCHAR'}})",
    "w4": "read_json('{f}', format='newline_delimited', columns={{tx_id:'VARCHAR', user_id:'VARCHAR', "
          "amount:'DOUBLE', timestamp:'BIGINT'}})",
}
DUCK = {
    "w1": """select user_id, (timestamp // 60000) * 60000 as window_start, (timestamp // 60000) * 60000 + 60000 as window_end,
                    count(*) as count, sum(metrics.value) as sum, min(metrics.value) as min, max(metrics.value) as max
             from {src} group by all""",
    "w2": """select event_type, ws as window_start, ws + 300000 as window_end, count(*) as count,
                    avg(rt) as avg_response_time, quantile_disc(rt, 0.99) as p99_response_time from (
               select event_type, metrics.response_time rt, (timestamp // 60000) * 60000 - j * 60000 ws
               from {src}, range(5) t(j)) group by all""",
    "w3": """select user_id, count(*) as count, min(timestamp) as session_start, max(timestamp) + 60000 as session_end
             from (select user_id, timestamp, sum(b) over (partition by user_id order by timestamp
                          rows between unbounded preceding and current row) sid from (
                     select user_id, timestamp, case when timestamp - lag(timestamp) over (partition by user_id
                            order by timestamp) <= 60000 then 0 else 1 end b from {src})) group by user_id, sid""",
    # DuckDB's own as-of join (the latest small one strictly earlier; ties at one time to the larger tx_id, so
    # the small side is one row per user and time first). tests/oracle.py's w4, which checks it, is a range join.
    "w4": """with tx as materialized (select * from {src}), l as (select * from tx where amount > 1000),
                  s as (select user_id, timestamp, max(tx_id) as tx_id from tx where amount < 10 group by all)
             select l.user_id, s.tx_id as small_tx_id, l.tx_id as large_tx_id, s.timestamp as small_ts,
                    l.timestamp as large_ts
             from l asof join s on l.user_id = s.user_id and l.timestamp > s.timestamp
             where l.timestamp - s.timestamp <= 600000""",
}


def duckdb_run(w: str, src: str, out: str) -> None:
    import duckdb

    query = DUCK[w].format(src=SOURCE[w].format(f=src))
    con = duckdb.connect()
    # read_json's row estimate is tiny, and below this threshold DuckDB runs an as-of join as a nested loop
    # (8.5 s instead of 0.13 s on 1M transactions): its sort-merge as-of join is its real speed
    con.sql("set asof_loop_join_threshold = 0")
    con.sql("set enable_progress_bar = false")
    con.sql(f"copy ({query}) to '{out}' (format json)")


def polars_run(w: str, src: str, out: str) -> None:
    import polars as pl

    if w == "w4":
        tx = pl.scan_ndjson(src, schema={"tx_id": pl.String, "user_id": pl.String, "amount": pl.Float64,
                                         "timestamp": pl.Int64})
        small = (tx.filter(pl.col("amount") < 10).select("user_id", small_tx_id="tx_id", small_ts="timestamp")
                 .sort("small_ts", "small_tx_id"))
        large = tx.filter(pl.col("amount") > 1000).select("user_id", large_tx_id="tx_id", large_ts="timestamp").sort("large_ts")
        q = (large.join_asof(small, left_on="large_ts", right_on="small_ts", by="user_id", strategy="backward",
                             tolerance=600000, allow_exact_matches=False)
             .filter(pl.col("small_ts").is_not_null()).select(W4_COLUMNS))
        q.collect().write_ndjson(out)
        return
    metrics = {"w1": {"value": pl.Float64}, "w2": {"response_time": pl.Float64}}
    schema: dict = {"timestamp": pl.Int64, "user_id" if w != "w2" else "event_type": pl.String}
    if w in metrics:
        schema["metrics"] = pl.Struct(metrics[w])
    ev = pl.scan_ndjson(src, schema=schema)
    ws = (pl.col("timestamp") // 60000) * 60000
    if w == "w1":
        v = pl.col("metrics").struct.field("value")
        q = ev.group_by("user_id", ws.alias("window_start")).agg(
            pl.len().alias("count"), v.sum().alias("sum"), v.min().alias("min"), v.max().alias("max"))
        q = q.with_columns(window_end=pl.col("window_start") + 60000).select(
            "user_id", "window_start", "window_end", "count", "sum", "min", "max")
    elif w == "w2":
        rt = pl.col("metrics").struct.field("response_time").alias("rt")
        q = (ev.select("event_type", rt, (ws - pl.lit([0, 60000, 120000, 180000, 240000])).alias("window_start"))
             .explode("window_start")
             .group_by("event_type", "window_start")
             .agg(pl.len().alias("count"), pl.col("rt").mean().alias("avg_response_time"),
                  pl.col("rt").sort().get((pl.len() * 0.99).ceil().cast(pl.Int64) - 1)  # nearest rank
                  .alias("p99_response_time"))
             .with_columns(window_end=pl.col("window_start") + 300000)
             .select("event_type", "window_start", "window_end", "count", "avg_response_time", "p99_response_time"))
    else:
        q = (ev.sort("user_id", "timestamp")
             .with_columns(sid=((pl.col("timestamp").diff().over("user_id").fill_null(60001)) > 60000).cum_sum())
             .group_by("user_id", "sid")
             .agg(pl.len().alias("count"), pl.col("timestamp").min().alias("session_start"),
                  (pl.col("timestamp").max() + 60000).alias("session_end"))
             .select("user_id", "count", "session_start", "session_end"))
    q.collect().write_ndjson(out)


# --- the plain-Python loop ----------------------------------------------------------------------

DELAY = 5000
LOW = -(2**62)


def py_w1(lines, emit) -> None:
    size = 60_000
    state: dict[tuple[str, int], list] = {}
    maxt, emitted_upto = LOW, LOW
    for line in lines:
        r = loads(line)
        t, v = r["timestamp"], r["metrics"]["value"]
        key = (r["user_id"], t - t % size)
        s = state.get(key)
        if s is None:
            state[key] = [1, v, v, v]
        else:
            s[0] += 1
            s[1] += v
            if v < s[2]:
                s[2] = v
            if v > s[3]:
                s[3] = v
        if t > maxt:
            maxt = t
            wm = maxt - DELAY
            if wm - wm % size > emitted_upto:
                emitted_upto = wm - wm % size
                for k in [k for k in state if k[1] + size <= wm]:
                    c, sm, mn, mx = state.pop(k)
                    emit({"user_id": k[0], "window_start": k[1], "window_end": k[1] + size,
                          "count": c, "sum": sm, "min": mn, "max": mx})
    for k, (c, sm, mn, mx) in state.items():
        emit({"user_id": k[0], "window_start": k[1], "window_end": k[1] + size, "count": c, "sum": sm, "min": mn, "max": mx})


def py_w2(lines, emit) -> None:
    size, slide = 300_000, 60_000
    state: dict[tuple[str, int], list] = {}
    maxt, emitted_upto = LOW, LOW

    def out(k: tuple[str, int], vals: list[float]) -> None:
        vals.sort()
        n = len(vals)
        emit({"event_type": k[0], "window_start": k[1], "window_end": k[1] + size, "count": n,
              "avg_response_time": sum(vals) / n, "p99_response_time": vals[-(-99 * n // 100) - 1]})

    for line in lines:
        r = loads(line)
        t, v, et = r["timestamp"], r["metrics"]["response_time"], r["event_type"]
        last = t - t % slide
        for ws in range(last - size + slide, last + 1, slide):
            vals = state.get((et, ws))
            if vals is None:
                state[(et, ws)] = [v]
            else:
                vals.append(v)
        if t > maxt:
            maxt = t
            wm = maxt - DELAY
            if wm - wm % slide > emitted_upto:
                emitted_upto = wm - wm % slide
                for k in [k for k in state if k[1] + size <= wm]:
                    out(k, state.pop(k))
    for k, vals in list(state.items()):
        out(k, vals)


def py_w3(lines, emit) -> None:
    gap = 60_000
    sessions: dict[str, list[list[int]]] = {}  # per user: [start, last, count], sorted by start
    maxt, emitted_upto = LOW, LOW
    for line in lines:
        r = loads(line)
        t, u = r["timestamp"], r["user_id"]
        ss = sessions.get(u)
        if ss is None:
            sessions[u] = [[t, t, 1]]
        else:
            hit = [s for s in ss if t <= s[1] + gap and t >= s[0] - gap]
            if not hit:
                ss.append([t, t, 1])
                ss.sort()
            else:
                keep = hit[0]
                keep[0], keep[1] = min(keep[0], t), max(keep[1], t)
                keep[2] += 1
                for other in hit[1:]:
                    keep[0], keep[1] = min(keep[0], other[0]), max(keep[1], other[1])
                    keep[2] += other[2]
                    ss.remove(other)
        if t > maxt:
            maxt = t
            wm = maxt - DELAY
            if wm - gap > emitted_upto:  # a session ends `gap` after its last record
                emitted_upto = wm
                for user in list(sessions):
                    ss = sessions[user]
                    while ss and ss[0][1] + gap <= wm:
                        s = ss.pop(0)
                        emit({"user_id": user, "count": s[2], "session_start": s[0], "session_end": s[1] + gap})
                    if not ss:
                        del sessions[user]
    for user, ss in sessions.items():
        for s in ss:
            emit({"user_id": user, "count": s[2], "session_start": s[0], "session_end": s[1] + gap})


def py_w4(lines, emit) -> None:
    within = 600_000
    smalls: dict[str, list[tuple[int, str]]] = {}  # per user, sorted (timestamp, tx_id)
    pending: list[tuple[int, str, str]] = []  # large transactions waiting for the watermark to pass them
    maxt, pruned = LOW, LOW

    def match(ts: int, tx: str, user: str) -> None:
        ss = smalls.get(user)
        if not ss:
            return
        i = bisect.bisect_left(ss, (ts, "")) - 1  # the last one strictly earlier (ties: the larger tx_id)
        if i >= 0 and ts - ss[i][0] <= within:
            emit({"user_id": user, "small_tx_id": ss[i][1], "large_tx_id": tx, "small_ts": ss[i][0], "large_ts": ts})

    for line in lines:
        r = loads(line)
        t, a = r["timestamp"], r["amount"]
        if a < 10:
            bisect.insort(smalls.setdefault(r["user_id"], []), (t, r["tx_id"]))
        elif a > 1000:
            pending.append((t, r["tx_id"], r["user_id"]))
        if t > maxt:
            maxt = t
            wm = maxt - DELAY
            if pending and min(p[0] for p in pending) <= wm:
                ready = [p for p in pending if p[0] <= wm]
                pending = [p for p in pending if p[0] > wm]
                for p in ready:
                    match(*p)
            if wm - pruned > 60_000:  # drop the smalls no later large can reach, once a minute of event time
                pruned = wm
                for ss in smalls.values():
                    cut = bisect.bisect_left(ss, (wm - within - DELAY, ""))
                    if cut:
                        del ss[:cut]
    for p in pending:
        match(*p)


def python_run(w: str, src: str, out: str) -> None:
    global loads
    import orjson

    loads = orjson.loads
    dumps = orjson.dumps
    with open(out, "wb") as f, open(src, "rb") as lines:
        buf: list[bytes] = []
        {"w1": py_w1, "w2": py_w2, "w3": py_w3, "w4": py_w4}[w](lines, lambda row: buf.append(dumps(row)))
        f.write(b"\n".join(buf) + (b"\n" if buf else b""))


loads = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine", choices=["duckdb", "polars", "python"])
    ap.add_argument("workload", choices=["w1", "w2", "w3", "w4"])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    {"duckdb": duckdb_run, "polars": polars_run, "python": python_run}[a.engine](a.workload, a.input, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
