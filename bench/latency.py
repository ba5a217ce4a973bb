#!/usr/bin/env python3
"""End-to-end latency against the commit interval, under the Kafka runtime and on the embedded log.

    python bench/latency.py --bootstrap HOST:PORT [--runtimes kafka,log] [--workloads filter,w1]
                            [--rates 10000,100000] [--intervals 0.1,0.25,0.5,1,2,5]
                            [--seconds 15] [--warmup 3] [--partitions 2] [--out results.jsonl] [--quick]

Each point (runtime, workload, rate, commit interval) runs three processes at once:

- a **producer** (`_produce`) that writes `rate` records/s, paced every 2 ms, for warmup + seconds. Each
  record carries its own produce time, `sent_us` (wall clock, µs, taken just before the produce call), and
  an event time `timestamp` = produce time in ms minus a random 0–200 ms (out of order; the watermark's
  200 ms delay covers it, so no record is late). Users u00000–u00999, user k in partition k % partitions.
  Kafka: confluent-kafka, linger.ms=1. Log: `Partition.append`, one frame per partition per tick.
- a **worker** (`_worker`): Kafka: `sl.run_worker(flow, sl.KafkaRuntime(commit_interval_s=I))`,
  exactly-once, KafkaSource → KafkaSink; log: `sl.run(flow, checkpoint_dir=…, checkpoint_interval=I)`,
  LogSource(follow=True) → LogSink (exactly-once: output staged, appended at each checkpoint).
- a **consumer** (this process): Kafka: `isolation.level=read_committed`, fetch.wait.max.ms=5; log: the
  output partitions re-read every 2 ms. A record's visible time is when the consume call returned it.

Workloads and what is measured:

- `filter`: records with metrics.value ≥ 800 (20%) pass through. Latency = visible − sent_us of the record.
- `w1`: per-user count/sum/min/max over 1 s tumbling windows, watermark delay 200 ms. A window [s, e) is
  emitted when the watermark W ≥ e, W = (largest event time seen) − 200 ms, per task (= partition) under
  the Kafka runtime, the minimum over the partitions on the embedded log. Latency = visible − the moment
  the result became computable: the produce time of the first record (in partition order) whose event
  time is ≥ e + 200 ms (on the log: the latest such moment over the partitions).

The records (filter) or windows (w1) that became due in the `seconds` after the warmup are timed; the
producer then goes on for 2 commit intervals + `--tail` seconds, so their results are committed in steady
state (the embedded-log run commits only while input arrives: see docs/benchmarks.md), and the consumer
reads on until no result came for 2 intervals + 1.5 s (a worker that fell behind works off its backlog). Every point's output
is checked: the filter's is records of the input that pass it, each once, all fields equal, and every one
produced before the tail is there; w1's windows are each there once, equal to a DuckDB group-by over what
was produced, closed by the final watermark, and every window due before the tail is there. Each point
prints a JSON line on stdout (--out appends them to a file) and a table row on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

HERE = Path(__file__).resolve()
USERS = 1000
DISORDER_MS = 200
DELAY_MS = 200
WINDOW_MS = 1000
THRESHOLD = 800.0
SCHEMA = {"seq": pl.Int64, "timestamp": pl.Int64, "user_id": pl.String, "metrics": {"value": pl.Float64},
          "sent_us": pl.Int64}
RECORD = b'{"seq":%d,"timestamp":%d,"user_id":"%s","metrics":{"value":%.3f},"sent_us":%d}'


def build_flow(workload: str, source: object, sink: object) -> Any:
    import sluice as sl

    flow = sl.Flow(f"latency-{workload}")
    events = flow.read("events", source, schema=SCHEMA).event_time("timestamp", timedelta(milliseconds=DELAY_MS))
    if workload == "filter":
        out = events.filter(pl.col("metrics").struct.field("value") >= THRESHOLD)
    else:
        out = events.key_by("user_id").window(
            "per_user_second", sl.Tumbling(timedelta(milliseconds=WINDOW_MS)),
            count=sl.agg.count(), sum=sl.agg.sum("metrics.value"),
            min=sl.agg.min("metrics.value"), max=sl.agg.max("metrics.value"))
    out.write("results", sink)
    return flow


# --- the producer ---------------------------------------------------------------------------------------
def produce(a: argparse.Namespace) -> int:
    n = int(a.rate * a.seconds)
    rng = np.random.default_rng(a.seed)
    users = rng.integers(0, USERS, n)
    values = np.round(rng.uniform(0, 1000, n), 3)
    jitter = rng.integers(0, DISORDER_MS + 1, n)
    parts = users % a.partitions
    names = [b"u%05d" % u for u in range(USERS)]
    if a.runtime == "kafka":
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": a.target, "linger.ms": 1, "enable.idempotence": True,
                             "queue.buffering.max.messages": 2_000_000, "batch.num.messages": 10_000})
        send = producer.produce
    else:
        from sluice.connectors.log.segment import NEWLINE_JOINED
        from sluice.connectors.log.store import Log

        log = Log(a.target)
        writers = [log.partition(a.topic, p, writable=True) for p in range(a.partitions)]
    tick = max(1, int(a.rate * 0.002))
    ul, vl, jl, pl_ = users.tolist(), values.tolist(), jitter.tolist(), parts.tolist()  # Python ints: faster per record
    sent_l: list[int] = []
    ts_l: list[int] = []
    i = 0
    t0 = time.perf_counter()
    while i < n:
        due = min(n, int((time.perf_counter() - t0) * a.rate) + 1)
        if a.runtime == "kafka":
            while i < due:
                now = time.time_ns() // 1000
                t = now // 1000 - jl[i]
                name = names[ul[i]]
                send(a.topic, RECORD % (i, t, name, vl[i], now), name, pl_[i])
                sent_l.append(now)
                ts_l.append(t)
                i += 1
            producer.poll(0)
        else:
            lines: list[list[bytes]] = [[] for _ in range(a.partitions)]
            stamps: list[list[int]] = [[] for _ in range(a.partitions)]
            while i < due:
                now = time.time_ns() // 1000
                t = now // 1000 - jl[i]
                lines[pl_[i]].append(RECORD % (i, t, names[ul[i]], vl[i], now))
                stamps[pl_[i]].append(t)
                sent_l.append(now)
                ts_l.append(t)
                i += 1
            for p, recs in enumerate(lines):
                if recs:
                    blob = b"\n".join(recs) + b"\n"
                    ends = np.cumsum([len(r) + 1 for r in recs]).astype(np.uint32)
                    voffs = np.concatenate([np.zeros(1, dtype=np.uint32), ends])
                    writers[p].append(np.array(stamps[p], dtype=np.int64), blob, voffs, flags=NEWLINE_JOINED)
        nxt = t0 + (i + tick - 1) / a.rate
        pause = nxt - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    sent = np.array(sent_l, dtype=np.int64)
    ts = np.array(ts_l, dtype=np.int64)
    if a.runtime == "kafka":
        left = producer.flush(60)
        if left:
            print(f"producer: {left} records not delivered", file=sys.stderr)
            return 1
    else:
        for w in writers:
            w.close()
    seconds = (sent[-1] - sent[0]) / 1e6
    pl.DataFrame({"seq": np.arange(n), "user_id": [f"u{u:05d}" for u in users], "partition": parts,
                  "timestamp": ts, "value": values, "sent_us": sent}).write_parquet(a.log)
    print(json.dumps({"records": n, "seconds": round(seconds, 3), "rate": round((n - 1) / seconds)}))
    return 0


# --- the worker -----------------------------------------------------------------------------------------
def work(a: argparse.Namespace) -> int:
    import sluice as sl

    if a.runtime == "kafka":
        flow = build_flow(a.workload, sl.KafkaSource(a.topic, a.target, key="user_id"),
                          sl.KafkaSink(a.out_topic, a.target, key="user_id"))
        r = sl.run_worker(flow, sl.KafkaRuntime(app_id=a.app, commit_interval_s=a.interval, instance="w0"))
        print(json.dumps({"records": r.records, "commits": r.commits, "rewinds": r.rewinds, "late": r.late}))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the follow run has no end: stopped from outside
    flow = build_flow(a.workload, sl.LogSource(a.topic, a.target, follow=True, poll_interval_s=a.poll),
                      sl.LogSink(a.out_topic, a.target, partitions=a.partitions, key="user_id"))
    sl.run(flow, checkpoint_dir=a.checkpoints, checkpoint_interval=a.interval)
    return 0


# --- the consumer (in the driver) -----------------------------------------------------------------------
class KafkaReader:
    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"latency-reader-{uuid.uuid4().hex[:6]}",
                           "isolation.level": "read_committed", "enable.auto.commit": False,
                           "fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.values: list[bytes] = []
        self.times: list[int] = []

    def poll(self) -> None:
        msgs = self.c.consume(10_000, 0.02)
        now = time.time_ns() // 1000
        for m in msgs:
            if m.error() is not None:
                raise RuntimeError(f"reading the output: {m.error()}")
            self.values.append(m.value())
        self.times.extend([now] * len(msgs))

    def close(self) -> None:
        self.c.close()


class LogReader:
    def __init__(self, root: str, topic: str, partitions: int) -> None:
        self.root, self.topic, self.n = root, topic, partitions
        self.parts: list[Any] = []
        self.pos = [0] * partitions
        self.values: list[bytes] = []
        self.times: list[int] = []

    def poll(self) -> None:
        from sluice.connectors.log.store import Log

        if not self.parts:
            if not (Path(self.root) / self.topic / "topic.json").exists():
                time.sleep(0.01)
                return
            log = Log(self.root)
            self.parts = [log.partition(self.topic, p) for p in range(self.n)]
        got = 0
        for p, part in enumerate(self.parts):
            part.refresh()
            if part.end_offset <= self.pos[p]:
                continue
            now = time.time_ns() // 1000
            for batch, skip in part.read(self.pos[p]):
                blob = batch.newline_blob(skip)
                k = batch.count - skip
                self.values.append(blob)  # newline-joined: parsed as JSON Lines at the end
                self.times.extend([now] * k)
                got += k
            self.pos[p] = part.end_offset
        if not got:
            time.sleep(0.002)

    def close(self) -> None:
        for p in self.parts:
            p.close()


def received(reader: Any) -> pl.DataFrame:
    if not reader.times:
        return pl.DataFrame()
    sep = b"" if isinstance(reader, LogReader) else b"\n"
    blob = sep.join(reader.values) + (b"" if isinstance(reader, LogReader) else b"\n")
    df = pl.read_ndjson(blob)
    return df.with_columns(pl.Series("visible_us", reader.times, dtype=pl.Int64))


# --- the oracle and the latencies ------------------------------------------------------------------------
def first_passing(produced: pl.DataFrame, ends: np.ndarray, partitions: list[int]) -> np.ndarray:
    """Per window end e: the produce time of the first record of each of `partitions` (in produce order) with
    event time ≥ e + delay, the latest over those partitions (int64 max where none has come)."""
    out = np.full(len(ends), np.iinfo(np.int64).min, dtype=np.int64)
    for p in partitions:
        sub = produced.filter(pl.col("partition") == p).sort("seq")
        cm = np.maximum.accumulate(sub["timestamp"].to_numpy())
        sent = sub["sent_us"].to_numpy()
        idx = np.searchsorted(cm, ends + DELAY_MS, side="left")
        at = np.where(idx < len(sent), sent[np.minimum(idx, len(sent) - 1)], np.iinfo(np.int64).max)
        out = np.maximum(out, at)
    return out


def check_filter(produced: pl.DataFrame, got: pl.DataFrame, cutoff: int) -> tuple[list[str], pl.DataFrame]:
    problems = []
    want = produced.filter(pl.col("value") >= THRESHOLD)
    if got.height == 0:
        return ([f"no output; expected {want.height} records"] if want.height else []), pl.DataFrame()
    got = got.with_columns(pl.col("metrics").struct.field("value").alias("value"))
    dups = got.height - got["seq"].n_unique()
    if dups:
        problems.append(f"{dups} records delivered twice")
    cols = ["seq", "timestamp", "user_id", "value", "sent_us"]
    joined = want.select(cols).join(got.select(*cols, "visible_us").unique("seq"), on="seq", how="full",
                                    suffix="_out", coalesce=True)
    missing = joined.filter(pl.col("visible_us").is_null() & (pl.col("sent_us") < cutoff)).height
    extra = joined.filter(pl.col("sent_us").is_null()).height
    if missing:
        problems.append(f"{missing} of {want.filter(pl.col('sent_us') < cutoff).height} passing records produced "
                        "before the tail not visible")
    if extra:
        problems.append(f"{extra} records in the output that the filter rejects or that were never produced")
    both = joined.drop_nulls()
    for c in ("timestamp", "user_id", "value", "sent_us"):
        bad = both.filter(pl.col(c) != pl.col(f"{c}_out")).height
        if bad:
            problems.append(f"{bad} records with a different {c}")
    return problems, both.select("seq", "sent_us", "visible_us", due_us=pl.col("sent_us"))


def check_w1(produced: pl.DataFrame, got: pl.DataFrame, runtime: str, partitions: int,
             cutoff: int) -> tuple[list[str], pl.DataFrame]:
    import duckdb

    problems = []
    oracle = duckdb.sql(f"""
        select user_id, (timestamp // {WINDOW_MS}) * {WINDOW_MS} as window_start, count(*) as count,
               sum(value) as sum, min(value) as min, max(value) as max, any_value("partition") as "partition"
        from produced group by all""").pl()
    last = produced.group_by("partition").agg(pl.col("timestamp").max().alias("maxts"))
    maxts = dict(zip(last["partition"].to_list(), last["maxts"].to_list(), strict=True))
    ends = (oracle["window_start"] + WINDOW_MS).to_numpy()
    if runtime == "kafka":  # a task per partition, each with its own watermark
        closed = ends <= np.array([maxts[p] for p in oracle["partition"].to_list()]) - DELAY_MS
        due = np.zeros(len(ends), dtype=np.int64)
        for p in range(partitions):
            mask = (oracle["partition"] == p).to_numpy()
            due[mask] = first_passing(produced, ends[mask], [p])
    else:  # one watermark: the minimum over the partitions
        closed = ends <= min(maxts.values()) - DELAY_MS
        due = first_passing(produced, ends, list(range(partitions)))
    want = oracle.with_columns(pl.Series("due_us", due)).filter(pl.Series(closed))
    if got.height == 0:
        return ([f"no output; expected {want.height} windows"] if want.height else []), pl.DataFrame()
    dups = got.height - got.select("user_id", "window_start").n_unique()
    if dups:
        problems.append(f"{dups} windows delivered twice")
    bad_end = got.filter(pl.col("window_end") != pl.col("window_start") + WINDOW_MS).height
    if bad_end:
        problems.append(f"{bad_end} windows with a wrong window_end")
    got = got.unique(["user_id", "window_start"])
    joined = want.join(got, on=["user_id", "window_start"], how="full", suffix="_out", coalesce=True)
    missing = joined.filter(pl.col("visible_us").is_null() & (pl.col("due_us") < cutoff)).height
    extra = joined.filter(pl.col("due_us").is_null()).height
    if missing:
        problems.append(f"{missing} of {want.filter(pl.col('due_us') < cutoff).height} windows due before the tail "
                        "not visible")
    if extra:
        problems.append(f"{extra} windows in the output that the watermark did not close (or that have no input)")
    both = joined.drop_nulls(["due_us", "visible_us"])
    for c in ("count", "min", "max"):
        bad = both.filter(pl.col(c) != pl.col(f"{c}_out")).height
        if bad:
            problems.append(f"{bad} windows with a different {c}")
    bad = both.filter((pl.col("sum") - pl.col("sum_out")).abs() > 1e-9 * pl.col("sum").abs().clip(1)).height
    if bad:
        problems.append(f"{bad} windows with a different sum")
    return problems, both.select("user_id", "window_start", "due_us", "visible_us")


# --- one point ------------------------------------------------------------------------------------------
def wait_for_group(bootstrap: str, group: str, partitions: int, timeout: float, reader: Any) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(5)
            owned = sum(len(m.assignment.topic_partitions) for m in desc.members if m.assignment)
            if str(desc.state).endswith("STABLE") and owned >= partitions:
                return
        except Exception:
            pass
        reader.poll()
    raise RuntimeError(f"the worker did not join group {group!r} within {timeout:.0f} s")


def wait4(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru
        time.sleep(0.05)


def run_point(a: argparse.Namespace, runtime: str, workload: str, rate: int, interval: float, tmp: Path) -> dict:
    run = uuid.uuid4().hex[:6]
    topic, out_topic, app = f"lat-{run}-in", f"lat-{run}-out", f"lat-{run}"
    target = a.bootstrap if runtime == "kafka" else str(tmp / f"log-{run}")
    if runtime == "kafka":
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": a.bootstrap})
        for t in (topic, out_topic):
            admin.create_topics([NewTopic(t, a.partitions, 1)])[t].result(30)
    else:
        from sluice.connectors.log.store import Log

        Log(target).create_topic(topic, a.partitions)
    me = [sys.executable, str(HERE)]
    common = ["--runtime", runtime, "--target", target, "--topic", topic, "--partitions", str(a.partitions)]
    worker = subprocess.Popen([*me, "_worker", *common, "--workload", workload, "--out-topic", out_topic,
                               "--app", app, "--interval", str(interval), "--checkpoints", str(tmp / f"ckpt-{run}"),
                               "--poll", str(a.log_poll)], stdout=subprocess.PIPE)
    reader: Any = KafkaReader(a.bootstrap, out_topic, a.partitions) if runtime == "kafka" else LogReader(target, out_topic, a.partitions)
    try:
        if runtime == "kafka":
            wait_for_group(a.bootstrap, app, a.partitions, 60, reader)
        else:
            deadline = time.monotonic() + 60
            while not reader.parts and time.monotonic() < deadline:
                reader.poll()
        t_start = time.monotonic()
        while time.monotonic() - t_start < 0.5:
            reader.poll()
        plog = tmp / f"produced-{run}.parquet"
        load0 = os.getloadavg()[0]
        tail = 2 * interval + a.tail
        producer = subprocess.Popen([*me, "_produce", *common, "--rate", str(rate), "--seconds",
                                     str(a.warmup + a.seconds + tail), "--log", str(plog)], stdout=subprocess.PIPE)
        w_start = time.monotonic()
        while producer.poll() is None:
            reader.poll()
        pout = producer.stdout.read() if producer.stdout else b""  # type: ignore[union-attr]
        if producer.returncode != 0:
            raise RuntimeError(f"the producer failed (exit {producer.returncode})")
        prod = json.loads(pout.decode().strip().splitlines()[-1])
        produced = pl.read_parquet(plog)
        # a worker that fell behind is still working off its backlog: wait until results stop coming
        quiet = 2 * interval + 1.5
        last_new, seen, give_up = time.monotonic(), len(reader.times), time.monotonic() + a.drain
        while time.monotonic() - last_new < quiet and time.monotonic() < give_up:
            reader.poll()
            if len(reader.times) != seen:
                last_new, seen = time.monotonic(), len(reader.times)
        load1 = os.getloadavg()[0]
    finally:
        wall = time.monotonic() - w_start if "w_start" in locals() else 0.0
        worker.send_signal(signal.SIGTERM)
        code, ru = wait4(worker, 60)
        wout = worker.stdout.read() if worker.stdout else b""  # type: ignore[union-attr]
        reader.close()
    got = received(reader)
    measure_from = int(produced["sent_us"].min()) + int(a.warmup * 1e6)
    cutoff = measure_from + int(a.seconds * 1e6)
    if workload == "filter":
        problems, timed = check_filter(produced, got, cutoff)
    else:
        problems, timed = check_w1(produced, got, runtime, a.partitions, cutoff)
    if code != 0:
        problems.append(f"the worker exited with {code}")
    lat = pl.Series(dtype=pl.Float64)
    if timed.height:
        timed = timed.filter(pl.col("due_us").is_between(measure_from, cutoff, closed="left"))
        lat = ((timed["visible_us"] - timed["due_us"]) / 1000.0).cast(pl.Float64)
    res: dict[str, Any] = {
        "runtime": runtime, "workload": workload, "rate": rate, "interval_s": interval,
        "achieved_rate": prod["rate"], "records": prod["records"], "outputs": got.height, "timed": lat.len(),
        "p50_ms": round(float(lat.quantile(0.5, "nearest")), 1) if lat.len() else None,  # type: ignore[arg-type]
        "p99_ms": round(float(lat.quantile(0.99, "nearest")), 1) if lat.len() else None,  # type: ignore[arg-type]
        "max_ms": round(float(lat.max()), 1) if lat.len() else None,  # type: ignore[arg-type]
        "min_ms": round(float(lat.min()), 1) if lat.len() else None,  # type: ignore[arg-type]
        "worker_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "wall_s": round(wall, 1), "load": [round(load0, 2), round(load1, 2)],
        "ok": not problems, "problems": problems,
    }
    if runtime == "kafka" and wout.strip():
        res["worker"] = json.loads(wout.decode().strip().splitlines()[-1])
    if runtime == "kafka":
        from confluent_kafka.admin import AdminClient

        AdminClient({"bootstrap.servers": a.bootstrap}).delete_topics([topic, out_topic, f"{app}-state"])
    plog.unlink(missing_ok=True)
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_produce", "_worker"):
        sub = argparse.ArgumentParser()
        for opt in ("--runtime", "--target", "--topic", "--out-topic", "--app", "--log", "--checkpoints", "--workload"):
            sub.add_argument(opt)
        sub.add_argument("--partitions", type=int)
        sub.add_argument("--rate", type=int)
        sub.add_argument("--seconds", type=float)
        sub.add_argument("--interval", type=float)
        sub.add_argument("--poll", type=float, default=0.1)
        sub.add_argument("--seed", type=int, default=7)
        s = sub.parse_args(argv[1:])
        return produce(s) if argv[0] == "_produce" else work(s)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="HOST:PORT of the Kafka broker (make kafka-up prints it); needed for kafka")
    ap.add_argument("--runtimes", default="kafka,log")
    ap.add_argument("--workloads", default="filter,w1")
    ap.add_argument("--rates", default="10000,100000")
    ap.add_argument("--intervals", default="0.1,0.25,0.5,1,2,5")
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per point (after the warmup)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds produced first and not timed")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--tail", type=float, default=3.0,
                    help="the producer goes on for 2 commit intervals + this many seconds after the timed part, "
                         "so the timed records' results are committed in steady state (not timed, checked)")
    ap.add_argument("--drain", type=float, default=90.0,
                    help="after the producer ends, wait for results until none came for 2 intervals + 1.5 s, at most this long")
    ap.add_argument("--log-poll", type=float, default=0.1, help="LogSource poll_interval_s (when it finds nothing)")
    ap.add_argument("--out", help="append each point's JSON line here")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10k/s, intervals 0.25 and 1 s, 5 s per point")
    a = ap.parse_args(argv)
    if a.quick:
        a.rates, a.intervals, a.seconds, a.warmup = "10000", "0.25,1", 5.0, 2.0
    runtimes = a.runtimes.split(",")
    if "kafka" in runtimes and not a.bootstrap:
        ap.error("--bootstrap is needed for the kafka runtime (or --runtimes log)")
    failed = 0
    print(f"{'runtime':<7}{'workload':<9}{'rate':>8}{'commit s':>9}{'achieved':>10}{'timed':>8}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'cpu s':>7}  check", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sluice-latency-") as tmp:
        if "kafka" in runtimes:  # a fresh broker loads its transaction log at the first transaction: not timed
            warm = argparse.Namespace(**{**vars(a), "seconds": 1.0, "warmup": 1.0, "tail": 1.0, "drain": 5.0})
            run_point(warm, "kafka", "filter", 1000, 0.1, Path(tmp))
        for runtime in runtimes:
            for workload in a.workloads.split(","):
                for rate in (int(r) for r in a.rates.split(",")):
                    for interval in (float(i) for i in a.intervals.split(",")):
                        r = run_point(a, runtime, workload, rate, interval, Path(tmp))
                        failed += not r["ok"]
                        print(f"{runtime:<7}{workload:<9}{rate:>8}{interval:>9}{r['achieved_rate']:>10}{r['timed']:>8}"
                              f"{r['p50_ms']!s:>9}{r['p99_ms']!s:>9}{r['max_ms']!s:>9}{r['worker_cpu_s']:>7}  "
                              f"{'ok' if r['ok'] else '; '.join(r['problems'])}", file=sys.stderr)
                        print(json.dumps(r), flush=True)
                        if a.out:
                            with open(a.out, "a") as f:
                                f.write(json.dumps(r) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
