#!/usr/bin/env python3
"""Peak memory and time per event as the input grows, each run's output checked against its oracle.

    python bench/memory.py [--sizes 1000000,10000000] [--workloads w1,w2,w3,w4,w5,cep] [--big 50000000]
                           [--keys 10000000 --extra 1000000 --backends memory,rocksdb --repeat 3] [--data DIR] [--keep]
                           [--out results.jsonl] [--quick]

Workloads: w1–w5 and cep (bench/workloads.py) through `bench/run.py`, one fresh process per run. Inputs come
from bench/gen_events.py with the event-time span growing with the input (7,200 s per million: the same
stream, running longer, so state bounded by time should stay flat); `--big N` adds a run of w1 at N events.
For each run: peak RSS of the whole process (VmHWM, read by the process at its end), its CPU time (user + sys), its wall
time, and the time per event (whole process, and inside the run as bench/run.py reports it). Each output
is compared with an oracle (DuckDB's in tests/oracle.py for w1–w3; for w4, w5 and cep the same answers as
Polars as-of and bucketed equi-joins, which scale to 10M skewed events: ORACLES below). w5's, ~1.2 pairs an
event, is checked in streaming (check_w5): the oracle's pairs made an hour of event time at a time, and both
sides reduced to a row count and a sum of 64-bit row hashes per hour, plus an exact comparison of a sample;
50M events (~58M pairs) fit in a few hundred MB beside the run instead of over 24 GB.

`--keys K`: the state-size-bound job: K distinct integer keys (K + `--extra` records, shuffled: every key
once, `--extra` of them again) through a keyed process function keeping a running count per key in value
state and emitting (k, n) per record, on each state backend (`sl.run(..., state=...)`), with one
checkpoint at the end (timed, its size on disk); a second process resumes from it, which restores the state
(timed) and reads nothing more. `--repeat R` alternates the backends R times and prints the medians.
Checked: every key's emitted counts are 1..(its number of records).

Inputs go to --data (default bench/data/mem, not in git) and, unless --keep, files over 1 GB are deleted
at the end. Prints a table on stderr and a JSON line per run on stdout (--out appends them to a file).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

KIND = {"w1": "events", "w2": "events", "w3": "events", "w5": "events", "w4": "transactions", "cep": "transactions"}
KEYS = {"w1": ["user_id", "window_start"], "w2": ["event_type", "window_start"], "w3": ["user_id", "session_start"],
        "w4": ["large_tx_id"], "w5": ["search_id", "click_id"], "cep": ["small_tx_id"]}
# The tests' oracles (tests/oracle.py) join every small with every large (w4) or search with click (w5)
# of a user: quadratic in a user's records, and the generator's users are zipf-skewed (one has ~25%), so at
# 10M events they do not finish. These give the same answers with Polars as-of joins and a bucketed
# equi-join (checked against the tests' oracles, and at their boundaries, by tests/test_bench_memory.py).
T0 = 1767225600000
TX_SCHEMA = {"tx_id": pl.String, "user_id": pl.String, "amount": pl.Float64, "timestamp": pl.Int64}
EV_SCHEMA = {"event_id": pl.String, "event_type": pl.String, "timestamp": pl.Int64, "user_id": pl.String}


W5_SCHEMA = {"user_id": pl.String, "search_id": pl.String, "click_id": pl.String, "timestamp": pl.Int64,
             "click_ts": pl.Int64}


def ndjson_blocks(path: Path, schema: dict[str, Any], block_bytes: int = 256 << 20) -> Iterator[pl.DataFrame]:
    """A JSON Lines file as frames of whole lines, ~block_bytes of text each: memory bounded by the block, not
    the file (the 50M-event inputs are 8.7 GB of JSON)."""
    with open(path, "rb") as f:
        while lines := f.readlines(block_bytes):
            yield pl.read_ndjson(io.BytesIO(b"".join(lines)), schema=schema)


def _smalls_and_larges(path: Path) -> pl.DataFrame:
    """The transactions w4 and cep look at (amount < 10 or > 1000, ~13%), read block by block."""
    return pl.concat([b.filter((pl.col("amount") < 10) | (pl.col("amount") > 1000))
                      for b in ndjson_blocks(path, TX_SCHEMA)]) if Path(path).stat().st_size else pl.DataFrame(
        schema=TX_SCHEMA)


def _w4(path: Path) -> pl.DataFrame:
    """The latest small strictly before each large (ties: the larger tx_id), at most 10 minutes earlier."""
    tx = _smalls_and_larges(path)
    small = (tx.filter(pl.col("amount") < 10).group_by("user_id", "timestamp")
               .agg(small_tx_id=pl.col("tx_id").max()).with_columns(small_ts=pl.col("timestamp")).sort("timestamp"))
    large = tx.filter(pl.col("amount") > 1000).sort("timestamp")
    j = large.join_asof(small, on="timestamp", by="user_id", strategy="backward", allow_exact_matches=False,
                        check_sortedness=False)
    return j.filter(pl.col("timestamp") - pl.col("small_ts") <= 600_000).select(
        "user_id", "small_tx_id", large_tx_id="tx_id", small_ts="small_ts", large_ts="timestamp")


def _cep(path: Path) -> pl.DataFrame:
    """Every small with the first large after it in (event time, arrival) order, if within 10 minutes."""
    tx = _smalls_and_larges(path).with_columns(
        order=(pl.col("timestamp") - T0) * 1_000_000_000 + pl.col("tx_id").str.slice(1).cast(pl.Int64))
    small = tx.filter(pl.col("amount") < 10).sort("order")
    large = (tx.filter(pl.col("amount") > 1000).select("user_id", "order", large_tx_id="tx_id", large_ts="timestamp")
               .sort("order"))
    j = small.join_asof(large, on="order", by="user_id", strategy="forward", allow_exact_matches=False,
                        check_sortedness=False)
    return j.filter(pl.col("large_ts") - pl.col("timestamp") <= 600_000).select(
        "user_id", small_tx_id="tx_id", large_tx_id="large_tx_id")


def _w5(path: Path) -> pl.DataFrame:
    """Searches with each click of the same user 0–10 s later: an equi-join on 10 s buckets, then the bounds."""
    ev = pl.read_ndjson(path, schema=EV_SCHEMA).with_columns(b=pl.col("timestamp") // 10_000)
    search = ev.filter(pl.col("event_type") == "search")
    click = (ev.filter(pl.col("event_type") == "click").with_columns(sb=pl.concat_list("b", pl.col("b") - 1))
               .explode("sb").select("user_id", "sb", click_id="event_id", click_ts="timestamp"))
    j = search.join(click, left_on=["user_id", "b"], right_on=["user_id", "sb"])
    return j.filter(pl.col("click_ts").is_between(pl.col("timestamp"), pl.col("timestamp") + 10_000)).select(
        "user_id", search_id="event_id", click_id="click_id", timestamp="timestamp", click_ts="click_ts")


ORACLES = {"w4": _w4, "cep": _cep, "w5": _w5}

# w5 in streaming: its pairs (~1.2 an event) do not fit whole at 50M events, nor does the run's output read whole.
W5_CHUNK_MS = 3_600_000  # an hour of search time: ~0.6M pairs at the generator's density
W5_SAMPLE = 1000  # the pairs of 1 search in ~1,000 are compared exactly, beside the digests
HASH_SEED = 0x5EED


def _bucket_pairs(search: pl.DataFrame, click: pl.DataFrame) -> pl.DataFrame:
    """Searches (user_id, search_id, timestamp) with each click (user_id, click_id, click_ts) of the same user
    0–10 s later, both ends included: an equi-join on 10 s buckets (a click in the search's bucket or the
    next), then the bounds."""
    s = search.with_columns(b=pl.col("timestamp") // 10_000)
    c = (click.with_columns(sb=pl.concat_list(pl.col("click_ts") // 10_000, pl.col("click_ts") // 10_000 - 1))
              .explode("sb"))
    j = s.join(c, left_on=["user_id", "b"], right_on=["user_id", "sb"])
    return j.filter(pl.col("click_ts").is_between(pl.col("timestamp"), pl.col("timestamp") + 10_000)).select(
        list(W5_SCHEMA))


def w5_chunks(path: Path, chunk_ms: int = W5_CHUNK_MS) -> Iterator[tuple[int, pl.DataFrame]]:
    """w5's pairs, (c, the pairs whose search is in [c·chunk_ms, (c+1)·chunk_ms)) in order of c: each chunk's
    searches joined with the clicks from its start to 10 s after its end, so every pair is made once, in
    its search's chunk. Only searches and clicks are kept from the input (~20% of it), read block by block."""
    keep = [b.filter(pl.col("event_type").is_in(["search", "click"])) for b in ndjson_blocks(path, EV_SCHEMA)]
    ev = pl.concat(keep) if keep else pl.DataFrame(schema=EV_SCHEMA)
    search = (ev.filter(pl.col("event_type") == "search").select("user_id", "timestamp", search_id="event_id")
                .sort("timestamp"))
    click = (ev.filter(pl.col("event_type") == "click").select("user_id", click_id="event_id", click_ts="timestamp")
               .sort("click_ts"))
    del ev, keep
    s_ts, c_ts = search["timestamp"].to_numpy(), click["click_ts"].to_numpy()
    for c in np.unique(s_ts // chunk_ms):
        lo, hi = int(c) * chunk_ms, (int(c) + 1) * chunk_ms  # searches in [lo, hi); clicks in [lo, hi - 1 + 10 s]
        s0, s1 = np.searchsorted(s_ts, [lo, hi], side="left")
        c0, c1 = np.searchsorted(c_ts, [lo, hi + 10_000], side="left")
        yield int(c), _bucket_pairs(search.slice(s0, s1 - s0), click.slice(c0, c1 - c0))


def _digest(pairs: pl.DataFrame, chunk_ms: int, sample: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per chunk of search time: row count and the exact sums of the low and high 32 bits of each row's
    64-bit hash (order-independent: one row missing, extra or changed moves the count or a sum, unless two
    rows' hashes collide); and the rows in the sample (1 search in `sample`, by a hash of its id)."""
    pairs = pairs.select([pl.col(k).cast(t) for k, t in W5_SCHEMA.items()])
    h = pairs.hash_rows(seed=HASH_SEED).to_numpy()
    d = (pl.DataFrame({"chunk": pairs["timestamp"] // chunk_ms, "lo": h & 0xFFFFFFFF, "hi": h >> 32})
           .group_by("chunk").agg(n=pl.len().cast(pl.Int64), lo=pl.col("lo").sum(), hi=pl.col("hi").sum()))
    return d, pairs.filter(pl.col("search_id").hash(seed=HASH_SEED) % sample == 0)


def _sum_digests(parts: list[pl.DataFrame]) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"chunk": pl.Int64, "n": pl.Int64, "lo": pl.UInt64, "hi": pl.UInt64})
    return pl.concat([empty, *parts]).group_by("chunk").agg(pl.col("n", "lo", "hi").sum())


def _read_pairs(out: Path, chunks: list[int] | None = None, chunk_ms: int = W5_CHUNK_MS) -> Iterator[pl.DataFrame]:
    """The run's output block by block (only the rows whose search is in `chunks`, if given)."""
    if not out.stat().st_size:
        return
    for b in ndjson_blocks(out, W5_SCHEMA):
        yield b if chunks is None else b.filter((pl.col("timestamp") // chunk_ms).is_in(chunks))


def check_w5(inp: Path, out: Path, chunk_ms: int = W5_CHUNK_MS, sample: int = W5_SAMPLE) -> str:
    """'ok (N rows)' or what differs between the run's output and the oracle's pairs, in bounded memory: both
    reduced chunk by chunk to digests (_digest) and a sample; on a difference, the first three chunks that differ
    are compared row by row for the message."""
    want_d, want_s = [], []
    for _, pairs in w5_chunks(inp, chunk_ms):
        d, smp = _digest(pairs, chunk_ms, sample)
        want_d.append(d)
        want_s.append(smp)
    got_d, got_s = [], []
    for block in _read_pairs(out):
        d, smp = _digest(block, chunk_ms, sample)
        got_d.append(d)
        got_s.append(smp)
    want, got = _sum_digests(want_d), _sum_digests(got_d)
    both = want.join(got, on="chunk", how="full", coalesce=True, suffix="_got").fill_null(0).sort("chunk")
    bad = both.filter((pl.col("n") != pl.col("n_got")) | (pl.col("lo") != pl.col("lo_got"))
                      | (pl.col("hi") != pl.col("hi_got")))
    n_want, n_got = int(both["n"].sum()), int(both["n_got"].sum())
    if bad.height:  # the first few chunks that differ, row by row
        first = [int(c) for c in bad["chunk"].head(3)]
        exp_rows = [p for k, p in w5_chunks(inp, chunk_ms) if k in first]
        rows = list(_read_pairs(out, first, chunk_ms))
        have = pl.concat(rows).select(list(W5_SCHEMA)) if rows else pl.DataFrame(schema=W5_SCHEMA)
        exp = pl.concat(exp_rows).cast(have.schema) if exp_rows else pl.DataFrame(schema=have.schema)  # type: ignore[arg-type]
        missing, extra = _multiset_minus(exp, have), _multiset_minus(have, exp)
        spans = ", ".join(f"[{c * chunk_ms}, {(c + 1) * chunk_ms})" for c in first)
        return (f"DIFFERS: {n_got:,} rows, expected {n_want:,}; {bad.height} of {both.height} chunks of search time "
                f"differ; in the first {len(first)} ({spans} ms): {have.height:,} rows, expected {exp.height:,}, "
                f"{int(missing['copies'].sum())} missing, e.g. {missing.head(2).to_dicts()}, "
                f"{int(extra['copies'].sum())} extra, e.g. {extra.head(2).to_dicts()}")
    keys = list(W5_SCHEMA)
    ws = pl.concat(want_s).sort(keys) if want_s else pl.DataFrame(schema=W5_SCHEMA)
    gs = pl.concat(got_s).sort(keys) if got_s else pl.DataFrame(schema=W5_SCHEMA)
    if not gs.equals(ws):
        return f"DIFFERS: the sampled rows differ ({gs.height:,} rows, expected {ws.height:,})"
    return f"ok ({n_got:,} rows; digests of {both.height} chunks and {ws.height:,} sampled rows equal)"


def _multiset_minus(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """The rows of a not in b, counting duplicates (a row twice in a and once in b is once in the result)."""
    keys = list(a.columns)
    ca = a.group_by(keys).agg(n=pl.len())
    cb = b.group_by(keys).agg(m=pl.len())
    j = ca.join(cb, on=keys, how="left", nulls_equal=True).with_columns(pl.col("m").fill_null(0))
    return j.filter(pl.col("n") > pl.col("m")).select(*keys, copies=pl.col("n") - pl.col("m"))


def oracle_of(workload: str, path: Path) -> pl.DataFrame:
    return ORACLES[workload](Path(path))


def peak_mb() -> int:
    """This process's peak resident set since it started (VmHWM). Not ru_maxrss: on Linux a child's
    ru_maxrss starts at its parent's resident set at fork (kept across exec), so a big parent would show."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_job(argv: list[str]) -> int:
    """bench/run.py in this process, then its JSON line with the peak resident set added."""
    import contextlib
    import io

    import run

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = run.main(argv)
    if code:
        return code
    print(json.dumps({**json.loads(buf.getvalue().strip().splitlines()[-1]), "vm_hwm_mb": peak_mb()}))
    return 0


def data_file(data: Path, kind: str, n: int) -> Path:
    path = data / f"{kind}-{n}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        span = max(7200, 7200 * n // 1_000_000)
        print(f"generating {path} ({n:,} {kind} over {span:,} s of event time)", file=sys.stderr)
        subprocess.run([sys.executable, str(HERE / "gen_events.py"), kind, "--n", str(n), "--span-s", str(span),
                        "--out", str(tmp)], check=True)
        tmp.rename(path)
    return path


def measured(cmd: list[str]) -> tuple[dict[str, Any], float, Any, list[int]]:
    """Run cmd as a child; (its last JSON line, wall seconds, its rusage, its largest resident set (MB) in each
    quarter of the run: flat when memory does not grow with the input read so far)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)  # it prints one line: the pipe does not fill
    samples: list[tuple[float, int]] = []
    status = Path(f"/proc/{proc.pid}/status")
    while True:
        pid, code, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            rss = next(int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
            samples.append((time.perf_counter() - t, rss // 1024))
        except (OSError, StopIteration):
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(code)
    out = proc.stdout.read() if proc.stdout else b""  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    quarters = [max((m for s, m in samples if q * wall / 4 <= s < (q + 1) * wall / 4), default=0) for q in range(4)]
    return json.loads(out.decode().strip().splitlines()[-1]), wall, ru, quarters


def check(workload: str, inp: Path, out: Path) -> str:
    """'ok (N rows)' or what differs from the oracle."""
    import oracle

    if workload == "w5":
        return check_w5(Path(inp), Path(out))
    got = pl.read_ndjson(out) if out.stat().st_size else pl.DataFrame()
    try:
        if workload in ("w1", "w2", "w3"):
            expected = getattr(oracle, workload)(oracle.flat_events(str(inp)))
            oracle.assert_frames_match(got, expected, KEYS[workload],
                                       approx={"p99_response_time": 0.01 + 1e-12} if workload == "w2" else None)
        else:
            expected = oracle_of(workload, inp)
            got = got.select(expected.columns)
            assert got.height == expected.height, f"{got.height} rows, expected {expected.height}"
            assert got.sort(KEYS[workload]).equals(expected.cast(got.schema).sort(KEYS[workload])), "rows differ"
    except AssertionError as exc:
        return f"DIFFERS: {exc}"
    return f"ok ({got.height:,} rows)"


# --- the state-size-bound job -----------------------------------------------------------------------------
def keys_job(a: argparse.Namespace) -> int:
    """One whole process: the job to the end of its input and its one checkpoint (at the end), or
    (--restore) a resumed run that only restores that checkpoint. The checkpoint and restore are timed by
    wrapping the executor's own steps; VmHWM is read before the checkpoint too (the run's own peak)."""
    import sluice as sl
    from sluice.runtime.executor import Executor

    timed: dict[str, float] = {}
    hwm: dict[str, int] = {}

    def timing(name: str, step: Any) -> Any:
        def wrapped(self: Any) -> None:
            hwm.setdefault(f"before_{name}", peak_mb())
            t0 = time.perf_counter()
            step(self)
            timed.setdefault(name, time.perf_counter() - t0)  # the first one: a resumed run checkpoints again
        return wrapped

    Executor._checkpoint = timing("checkpoint", Executor._checkpoint)  # type: ignore[method-assign]
    Executor._restore = timing("restore", Executor._restore)  # type: ignore[method-assign]

    class RunningCount(sl.KeyedProcessFunction):
        def open(self, ctx: Any) -> None:
            self.n = ctx.value_state("n")

        def process(self, record: dict[str, Any], ctx: Any) -> Any:
            n = (self.n.value() or 0) + 1
            self.n.update(n)
            yield {"k": ctx.key, "n": n}

    flow = sl.Flow("count_per_key")
    (flow.read("in", sl.ParquetSource(a.input), schema={"k": int, "ts": int}).event_time("ts", timedelta(0))
         .key_by("k").process("count", RunningCount(), schema={"k": int, "n": int})
         .write("out", sl.ParquetSink(a.output)))
    t = time.perf_counter()
    cpu = time.process_time()
    r = sl.run(flow, state=a.backend, state_dir=a.state_dir, checkpoint_dir=a.checkpoint_dir, checkpoint_interval=None)
    ck = Path(a.checkpoint_dir)
    ck_mb = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file()) / 2**20
    print(json.dumps({"workload": f"keys-{a.backend}", "events": r.rows_read, "seconds": round(time.perf_counter() - t, 3),
                      "process_cpu_s": round(time.process_time() - cpu, 2),
                      "run_peak_mb": hwm.get("before_checkpoint"), "checkpoint_s": round(timed["checkpoint"], 2),
                      "checkpoint_mb": round(ck_mb, 1), "restore_s": round(timed.get("restore", 0.0), 2),
                      "vm_hwm_mb": peak_mb()}))
    return 0


def keys_input(data: Path, keys: int, extra: int) -> Path:
    path = data / f"keys-{keys}-{extra}.parquet"
    if not path.exists():
        rng = np.random.default_rng(3)
        k = np.concatenate([np.arange(keys, dtype=np.int64), rng.integers(0, keys, extra)])
        rng.shuffle(k)
        pl.DataFrame({"k": k, "ts": np.arange(len(k), dtype=np.int64)}).write_parquet(path, row_group_size=65_536)
    return path


def check_keys(inp: Path, out: Path) -> str:
    got = pl.scan_parquet(out if out.is_file() else out / "**" / "*.parquet")
    per_key = got.group_by("k").agg(rows=pl.len(), top=pl.col("n").max(), total=pl.col("n").sum())
    want = pl.scan_parquet(inp).group_by("k").agg(want=pl.len())
    j = want.join(per_key, on="k", how="full", coalesce=True).collect()
    bad = j.filter(pl.col("rows").is_null() | pl.col("want").is_null() | (pl.col("rows") != pl.col("want"))
                   | (pl.col("top") != pl.col("want")) | (pl.col("total") != pl.col("want") * (pl.col("want") + 1) // 2))
    if bad.height:
        return f"DIFFERS: {bad.height} keys with wrong counts, e.g. {bad.head(3).to_dicts()}"
    return f"ok ({j.height:,} keys)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_run":
        sys.path.insert(0, str(HERE))
        return run_job(argv[1:])
    if argv and argv[0] == "_keys":
        sub = argparse.ArgumentParser()
        for opt in ("--input", "--output", "--backend", "--state-dir", "--checkpoint-dir"):
            sub.add_argument(opt)
        return keys_job(sub.parse_args(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--workloads", default="w1,w2,w3,w4,w5,cep")
    ap.add_argument("--big", type=int, help="also w1 at this many events (e.g. 50000000)")
    ap.add_argument("--keys", type=int, default=10_000_000, help="distinct keys of the state-size job (0: skip it)")
    ap.add_argument("--only-keys", action="store_true", help="only the state-size job")
    ap.add_argument("--extra", type=int, default=2_000_000, help="records of the state-size job beyond one per key")
    ap.add_argument("--backends", default="memory,rocksdb", help="state backends of the state-size job")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of the state-size job per backend, the backends alternating (medians in the table)")
    ap.add_argument("--data", default=str(HERE / "data" / "mem"))
    ap.add_argument("--keep", action="store_true", help="keep inputs over 1 GB")
    ap.add_argument("--out", help="append each run's JSON line here")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k and 100k events, 100k keys")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.keys, a.extra, a.big = "20000,100000", 100_000, 20_000, None
    data = Path(a.data)
    data.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, int]] = [(w, int(n)) for n in a.sizes.split(",") for w in a.workloads.split(",")]
    if a.only_keys:
        runs = []
    elif a.big:
        runs.append(("w1", a.big))
    results = []
    print(f"{'workload':<15}{'events':>12}{'peak RSS MB':>12}{'wall s':>8}{'CPU s':>8}{'µs/event':>9}"
          f"{'run µs/ev':>10}  check", file=sys.stderr)

    def report(r: dict[str, Any]) -> None:
        results.append(r)
        print(f"{r['workload']:<15}{r['events']:>12,}{r['peak_rss_mb']:>12,}{r['wall_s']:>8}{r['cpu_s']:>8}"
              f"{r['us_per_event']:>9}{r['run_us_per_event']:>10}  {r['check']}", file=sys.stderr)
        print(json.dumps(r), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(r) + "\n")

    for workload, n in runs:
        inp = data_file(data, KIND[workload], n)
        out = data / f"out-{workload}-{n}.jsonl"
        got, wall, ru, quarters = measured([sys.executable, str(HERE / "memory.py"), "_run", workload, "--input", str(inp),
                                  "--output", str(out)])
        cpu = ru.ru_utime + ru.ru_stime
        load = round(os.getloadavg()[0], 1)
        t = time.perf_counter()
        verdict = check(workload, inp, out)
        report({"workload": workload, "events": got["events"], "peak_rss_mb": got["vm_hwm_mb"], "rss_by_quarter_mb": quarters,
                "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "us_per_event": round(wall / n * 1e6, 2),
                "cpu_us_per_event": round(cpu / n * 1e6, 2), "run_us_per_event": round(got["seconds"] / n * 1e6, 2),
                "load": load, "check": verdict, "check_s": round(time.perf_counter() - t, 1),
                "bench_peak_rss_mb": peak_mb()})  # this process's, the oracles' included: its peak so far
        out.unlink(missing_ok=True)
    if a.keys:
        inp = keys_input(data, a.keys, a.extra)
        for rep in range(a.repeat):
            for backend in a.backends.split(","):
                out, state_dir, ck = data / f"out-keys-{backend}", data / f"state-{backend}", data / f"ck-{backend}"
                args = [sys.executable, str(HERE / "memory.py"), "_keys", "--input", str(inp), "--backend", backend,
                        "--state-dir", str(state_dir), "--checkpoint-dir", str(ck)]
                got, wall, ru, quarters = measured([*args, "--output", str(out)])
                verdict = check_keys(inp, out)
                subprocess.run(["rm", "-rf", str(state_dir)], check=True)  # a working copy, rebuilt from the checkpoint
                # a second process resumes from the checkpoint: its input is all read, so it only restores
                again, _, _, _ = measured([*args, "--output", str(out)])
                n = got["events"]
                cpu = ru.ru_utime + ru.ru_stime
                report({"workload": f"keys-{backend}", "events": n, "keys": a.keys, "rep": rep,
                        "peak_rss_mb": got["vm_hwm_mb"], "run_peak_rss_mb": got["run_peak_mb"],
                        "rss_by_quarter_mb": quarters, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                        "us_per_event": round(wall / n * 1e6, 2), "cpu_us_per_event": round(cpu / n * 1e6, 2),
                        "run_us_per_event": round(got["seconds"] / n * 1e6, 2),
                        "records_per_s": round(n / got["seconds"]), "checkpoint_s": got["checkpoint_s"],
                        "checkpoint_mb": got["checkpoint_mb"], "restore_s": again["restore_s"],
                        "restore_peak_rss_mb": again["vm_hwm_mb"], "load": round(os.getloadavg()[0], 1), "check": verdict})
                subprocess.run(["rm", "-rf", str(out), str(state_dir), str(ck)],
                               check=True)
        keyed = [r for r in results if r["workload"].startswith("keys-")]
        if a.repeat > 1:
            fields = ("records_per_s", "peak_rss_mb", "cpu_s", "cpu_us_per_event", "checkpoint_s", "checkpoint_mb",
                      "restore_s", "restore_peak_rss_mb")
            for backend in a.backends.split(","):
                rows = [r for r in keyed if r["workload"] == f"keys-{backend}"]
                med = {f: float(np.median([r[f] for r in rows])) for f in fields}
                print(f"median of {len(rows)} keys-{backend}: " + ", ".join(f"{f}={v:g}" for f, v in med.items()),
                      file=sys.stderr)
                print(json.dumps({"median_of": len(rows), "workload": f"keys-{backend}", **med}), flush=True)
    if not a.keep:
        for f in data.iterdir():
            if f.is_file() and f.stat().st_size > 1 << 30:
                f.unlink()
    return 0 if all(r["check"].startswith("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
