#!/usr/bin/env python3
"""Scale-out under rebalance churn (issue #13): many Kafka-runtime worker processes of one consumer group
on this machine, workers added, stopped (SIGTERM) and killed -9 every few seconds, then the committed
output is compared with the DuckDB oracle, and the rebalance pauses are measured.

    python bench/chaos/scale_out.py --partitions 64 --workers 16 --churn-s 60 --events 1000000 --seed 1

The job (one flow, two sinks, exactly-once): events from a topic keyed by user_id, then
  * w1: per user and minute count/sum/min/max (keyed like the input: no repartition), and
  * per (event_type, country) and minute count/sum, through the internal repartition topic,
both sensitive to duplicates (a record counted twice changes a count; a window emitted twice is an extra row).

Churn: 5 % of the input is in the topic when the workers start; the rest is produced evenly over --churn-s
seconds (default 60), so the job runs all along the churn whatever the machine's speed. Meanwhile, every 1-5 s
(--every, random, seeded) one change: start a worker, stop one with SIGTERM (it commits and leaves the group)
or kill one with -9 (its transaction is aborted by the broker, the group notices after the session timeout),
keeping between --min-alive and --max-alive alive. A worker that exits with an error is counted ("stopped")
and replaced. The workers follow the topic; after the churn and a quiet period (so that the last change is
measured whole), --min-alive workers that finish the input (`until_end`) start and the following ones are
stopped with SIGTERM: they finish the job.

Rebalance pauses, measured from the workers' logs (wall clock, one machine): each worker logs when a task
(partition p of the input and of the repartition topic) starts, after its state is restored, and when it
stops (revoked, after its last commit); a killed worker's tasks stop at the kill. A partition is *processed*
while some live worker has its task. A *stall* is a maximal interval in which at least one of the P
partitions is not processed. For each membership change at time t: "whole again" = the end of the first stall
that contains t or starts after it, minus t (for a start, this includes the new process's start-up and
joining the group; for a kill -9, the session timeout). Reported: p50/p95/max of "whole again" per kind of
change and overall, and of the stall lengths.

Prints progress lines, one JSON line per run, then the CHAOS-ROW line (docs/guarantees.md's chaos table) and
a totals line. Without --bootstrap it starts its own broker (scripts/kafka.sh) in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"timestamp": int, "user_id": str, "event_type": str, "metrics": {"value": float},
          "properties": {"country": str}}
USER_KEYS = ["user_id", "window_start"]
TYPE_KEYS = ["event_type", "country", "window_start"]


def build_flow(inp: str, out_users: str, out_types: str, bootstrap: str) -> Any:
    """The job: w1 per user (no repartition) and a count per (event_type, country) (repartitioned)."""
    import polars as pl

    import sluice as sl

    flow = sl.Flow("scale_out")
    events = (flow.read("events", sl.KafkaSource(inp, bootstrap, key="user_id"), schema=SCHEMA)
              .event_time("timestamp", timedelta(seconds=5)))
    (events.key_by("user_id")
           .window("per_user_minute", sl.Tumbling(timedelta(seconds=60)), count=sl.agg.count(),
                   sum=sl.agg.sum("metrics.value"), min=sl.agg.min("metrics.value"), max=sl.agg.max("metrics.value"))
           .write("per_user", sl.KafkaSink(out_users, bootstrap, key="user_id")))
    (events.select("timestamp", "event_type", country=pl.col("properties").struct.field("country"),
                   value=pl.col("metrics").struct.field("value"))
           .key_by("event_type", "country")
           .window("per_type_minute", sl.Tumbling(timedelta(seconds=60)), count=sl.agg.count(), sum=sl.agg.sum("value"))
           .write("per_type", sl.KafkaSink(out_types, bootstrap, key="event_type")))
    return flow


# --- one worker process -------------------------------------------------------------------------
def worker_main(a: argparse.Namespace) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the harness asks a hung worker for its stacks
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(created).3f %(name)s %(levelname)s %(message)s")
    import sluice as sl

    rt = sl.KafkaRuntime(app_id=a.app, bootstrap=a.bootstrap, until_end=a.until_end, instance=a.name,
                         commit_interval_s=a.commit_interval, session_timeout_ms=a.session_timeout_ms,
                         transaction_timeout_ms=a.session_timeout_ms)
    r = sl.run_worker(build_flow(a.input, a.out_users, a.out_types, a.bootstrap), rt)
    print(json.dumps({"worker": a.name, "records": r.records, "commits": r.commits, "rewinds": r.rewinds,
                      "tasks_started": r.tasks_started, "finished": r.finished, "late": r.late}), flush=True)
    return 0


# --- the oracle -----------------------------------------------------------------------------------
def oracle(events: Path) -> tuple[Any, Any]:
    import duckdb

    con = duckdb.connect()
    src = (f"read_json('{events}', format='newline_delimited', columns={{timestamp: 'BIGINT', user_id: 'VARCHAR', "
           "event_type: 'VARCHAR', metrics: 'STRUCT(value DOUBLE)', properties: 'STRUCT(country VARCHAR)'})")
    users = con.sql(f"""
        select user_id, (timestamp // 60000) * 60000 as window_start, (timestamp // 60000) * 60000 + 60000 as window_end,
               count(*) as count, sum(metrics.value) as sum, min(metrics.value) as min, max(metrics.value) as max
        from {src} group by all""").pl()
    types = con.sql(f"""
        select event_type, properties.country as country, (timestamp // 60000) * 60000 as window_start,
               (timestamp // 60000) * 60000 + 60000 as window_end, count(*) as count, sum(metrics.value) as sum
        from {src} group by all""").pl()
    return users, types


def compare(got: Any, expected: Any, keys: list[str]) -> dict[str, int]:
    """lost: expected windows missing from the output or with other values (e.g. a count short);
    duplicated: windows emitted more than once, or not expected at all, or with other values (counted twice)."""
    import polars as pl

    if got.height == 0:
        return {"lost": expected.height, "duplicated": 0, "wrong": 0, "rows": 0}
    got = got.select(expected.columns)
    per_key = got.group_by(keys).agg(pl.len().alias("n"), *[pl.col(c).first() for c in expected.columns if c not in keys])
    extra = int(per_key["n"].sum() - per_key.height)
    j = expected.join(per_key, on=keys, how="full", suffix="_got", coalesce=True)
    missing = int(j["n"].is_null().sum())
    unexpected = int(j["window_end"].is_null().sum())
    both = j.filter(pl.col("n").is_not_null() & pl.col("window_end").is_not_null())
    bad = pl.lit(False)
    for c in expected.columns:
        if c in keys:
            continue
        x, y = pl.col(c), pl.col(f"{c}_got")
        if expected[c].dtype.is_float():
            bad = bad | ((x - y).abs() > 1e-9 * pl.max_horizontal(x.abs(), y.abs(), pl.lit(1.0)))
        else:
            bad = bad | (x != y)
    wrong = int(both.filter(bad).height)
    return {"lost": missing + wrong, "duplicated": extra + unexpected + wrong, "wrong": wrong, "rows": got.height}


# --- measuring the pauses -----------------------------------------------------------------------
LINE = re.compile(r"^(\d+\.\d+) \S+ \S+ worker (\S+): task (\d+) (starts|stops) at")


def ownership(logs: dict[str, Path], killed: dict[str, float],
              frozen: dict[str, list[tuple[float, float]]] | None = None) -> dict[int, list[tuple[float, float]]]:
    """partition → intervals in which a live worker, not frozen (SIGSTOP), had its task."""
    spans: dict[int, list[tuple[float, float]]] = {}
    frozen = frozen or {}

    def add(name: str, p: int, s: float, e: float) -> None:
        for fs, fe in sorted(frozen.get(name, [])):
            if fs < e and fe > s:  # the frozen interval cuts this one
                if fs > s:
                    spans.setdefault(p, []).append((s, fs))
                s = max(s, fe)
        if e >= s:
            spans.setdefault(p, []).append((s, e))

    for name, path in logs.items():
        opened: dict[int, float] = {}
        last = 0.0
        for line in path.read_text(errors="replace").splitlines():
            m = LINE.match(line)
            if not m:
                continue
            t, p, what = float(m.group(1)), int(m.group(3)), m.group(4)
            last = max(last, t)
            if what == "starts":
                opened[p] = t
            elif p in opened:
                add(name, p, opened.pop(p), t)
        end = killed.get(name, last)
        for p, t in opened.items():
            add(name, p, t, max(t, end))
    return spans


def stalls(spans: dict[int, list[tuple[float, float]]], partitions: int, t0: float, t1: float) -> list[tuple[float, float]]:
    """Maximal intervals within [t0, t1] in which at least one partition has no live owner."""
    gaps: list[tuple[float, float]] = []
    for p in range(partitions):
        cur = t0
        for s, e in sorted(spans.get(p, [])):
            if s > cur and s > t0:
                gaps.append((cur, min(s, t1)))
            cur = max(cur, e)
            if cur >= t1:
                break
        if cur < t1:
            gaps.append((cur, t1))
    merged: list[tuple[float, float]] = []
    for s, e in sorted(g for g in gaps if g[1] > g[0]):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def unowned_fraction(spans: dict[int, list[tuple[float, float]]], partitions: int, t0: float, t1: float) -> float:
    """The share of partition-seconds in [t0, t1] with no live owner (1.0: nothing processed at all)."""
    if t1 <= t0:
        return 0.0
    owned = 0.0
    for p in range(partitions):
        cur = t0
        for s, e in sorted(spans.get(p, [])):
            s, e = max(s, cur), min(e, t1)
            if e > s:
                owned += e - s
                cur = e
    return round(1 - owned / (partitions * (t1 - t0)), 3)


def whole_again(t: float, gaps: list[tuple[float, float]]) -> float | None:
    for _, e in gaps:
        if e > t:
            return e - t
    return None


def quantiles(xs: list[float]) -> dict[str, float | int | None]:
    if not xs:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    s = sorted(xs)

    def q(f: float) -> float:  # nearest rank
        return round(s[max(0, min(len(s) - 1, int(-(-f * len(s) // 1)) - 1))], 2)
    return {"n": len(s), "p50": q(0.5), "p95": q(0.95), "max": round(s[-1], 2)}


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        f.result(30)


def load(bootstrap: str, path: Path, topic: str) -> int:
    """The events file into the input topic, keyed by user_id (not transactional, not timed)."""
    import sluice as sl

    flow = sl.Flow("load")
    flow.read("file", sl.JsonLinesSource(path)).write("topic", sl.KafkaSink(topic, bootstrap, key="user_id"))
    return int(sl.run(flow).rows_read)


# --- the controller -----------------------------------------------------------------------------
@dataclass
class Run:
    a: argparse.Namespace
    bootstrap: str
    events: Path
    total: int
    seed: int
    work: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    changes: list[tuple[float, str, str]] = field(default_factory=list)  # (time, add|term|kill, worker)
    killed: dict[str, float] = field(default_factory=dict)
    frozen: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # SIGSTOP ... SIGCONT
    paused: set[str] = field(default_factory=set)
    timers: list[threading.Timer] = field(default_factory=list)
    ours: set[str] = field(default_factory=set)  # workers we signalled
    failures: list[str] = field(default_factory=list)
    n: int = 0
    finishing: bool = False  # the churn is over: workers started now finish the input (until_end)
    fed: int = 0
    hang_report: list[str] = field(default_factory=list)  # what the workers were doing when the run hung

    def __post_init__(self) -> None:
        tag = f"so-{self.seed}-{uuid.uuid4().hex[:6]}"
        self.app, self.inp, self.out_users, self.out_types = tag, f"{tag}-in", f"{tag}-users", f"{tag}-types"

    def start(self, kind: str = "add", until_end: bool = False) -> str:
        name = f"w{self.n}"
        self.n += 1
        path = self.work / f"{self.app}-{name}.log"
        args = [sys.executable, str(Path(__file__).resolve()), "worker", "--bootstrap", self.bootstrap, "--app", self.app,
                "--input", self.inp, "--out-users", self.out_users, "--out-types", self.out_types, "--name", name,
                "--commit-interval", str(self.a.commit_interval), "--session-timeout-ms", str(self.a.session_timeout_ms)]
        if until_end:
            args.append("--until-end")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.procs[name] = subprocess.Popen(args, stdout=path.open("w"), stderr=subprocess.STDOUT, env=env)
        self.logs[name] = path
        self.changes.append((time.time(), kind, name))
        return name

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def reap(self) -> None:
        """Workers that ended on their own with an error: counted and replaced."""
        for n, p in list(self.procs.items()):
            rc = p.poll()
            if rc is not None and rc != 0 and n not in self.ours and n not in {f.split(":")[0] for f in self.failures}:
                text = self.logs[n].read_text(errors="replace").strip().splitlines()
                tail = [x for x in text if "Error" in x or "error" in x][-3:] or text[-3:]
                self.failures.append(f"{n}: exit {rc}: {' | '.join(tail)}")
                progress(f"worker {n} failed (exit {rc}); starting a replacement")
                self.start("replace", until_end=self.finishing)

    def committed(self) -> int:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.app, "enable.auto.commit": False})
        try:
            got = c.committed([TopicPartition(self.inp, p) for p in range(self.a.partitions)], timeout=10)
            return sum(max(tp.offset, 0) for tp in got)
        except KafkaException:
            return -1
        finally:
            c.close()

    def pause(self, name: str, seconds: float) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGSTOP)
        t = time.time()
        self.paused.add(name)
        self.changes.append((t, "pause", name))

        def resume() -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
            self.frozen.setdefault(name, []).append((t, time.time()))
            self.paused.discard(name)
        timer = threading.Timer(seconds, resume)
        timer.daemon = True
        timer.start()
        self.timers.append(timer)

    def churn(self, rng: random.Random, t_start: float) -> None:
        a = self.a
        while time.monotonic() - t_start < a.churn_s:
            time.sleep(rng.uniform(*a.every))
            self.reap()
            done = self.committed()
            alive = self.alive()
            free = [n for n in alive if n not in self.paused]
            removals = [k for k in ("term", "kill") if k in a.kinds]
            if len(alive) <= a.min_alive or not free:
                kind = "add"
            elif len(alive) >= a.max_alive:
                kind = rng.choice(removals + [k for k in ("pause",) if k in a.kinds])
            else:
                kind = rng.choice(a.kinds)
            if kind == "add":
                name = self.start()
            else:
                name = rng.choice(free)
                if kind == "term":
                    self.ours.add(name)
                    self.procs[name].send_signal(signal.SIGTERM)
                    self.changes.append((time.time(), "term", name))
                elif kind == "kill":
                    self.ours.add(name)
                    self.procs[name].send_signal(signal.SIGKILL)
                    self.killed[name] = time.time()
                    self.changes.append((self.killed[name], "kill", name))
                else:  # a zombie: frozen past its session timeout, then it runs on as if nothing happened
                    self.pause(name, a.session_timeout_ms / 1000 + rng.uniform(1.0, 4.0))
            progress(f"t={time.monotonic() - t_start:5.1f}s {kind:4s} {name}: {len(self.alive())} alive, "
                     f"{max(done, 0):,} input committed of {self.fed:,} produced so far")

    def feed(self, lines: list[bytes], keys: list[bytes], start: int, seconds: float) -> None:
        """Produce lines[start:] into the input topic evenly over `seconds` (keyed by user_id, partitioned
        as KafkaSink does)."""
        from confluent_kafka import Producer

        from sluice.connectors.kafka import PARTITIONER

        # idempotent, and the topic's metadata known before the first record: a plain producer was seen to
        # put the first 50k records of a partition out of order (blocks swapped; records > 5 s behind the
        # watermark are late and dropped, which the oracle does not expect)
        producer = Producer({"bootstrap.servers": self.bootstrap, "partitioner": PARTITIONER, "linger.ms": 20,
                             "compression.type": "lz4", "queue.buffering.max.messages": 2_000_000,
                             "enable.idempotence": True})
        producer.list_topics(self.inp, timeout=30)
        t0 = time.monotonic()
        n = len(lines)
        i = start
        while i < n:
            due = start + int((n - start) * min(1.0, (time.monotonic() - t0) / seconds)) if seconds > 0 else n
            due = min(n, max(due, i + 1))
            while i < due:
                try:
                    producer.produce(self.inp, value=lines[i], key=keys[i])
                    i += 1
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            self.fed = i
            if i < n:
                time.sleep(0.05)
        if producer.flush(60):
            raise RuntimeError("the input was not delivered to the broker within 60 s")
        self.fed = n

    def run(self) -> dict[str, Any]:
        import orjson

        a = self.a
        rng = random.Random(self.seed)
        create_topics(self.bootstrap, [self.inp, self.out_users, self.out_types], a.partitions)
        lines = self.events.read_bytes().splitlines()
        keys = [orjson.loads(x)["user_id"].encode() for x in lines]
        assert len(lines) == self.total, (len(lines), self.total)
        # 5 % of the input first, so that the group is working when the churn starts; the rest is produced
        # during the churn (the job runs all along, whatever this machine's speed), then finished
        head = self.total // 20
        self.feed(lines[:head], keys[:head], 0, 0.0)
        for _ in range(a.workers):
            self.start("initial")
        self.changes.clear()  # the initial workers are not changes
        progress(f"run seed={self.seed}: {a.workers} workers started on {a.partitions} partitions ({self.app})")
        deadline = time.monotonic() + a.finish_timeout
        while self.committed() < head:
            self.reap()
            if time.monotonic() > deadline:
                self.stop_hung(f"the group did not commit the first {head:,} records within {a.finish_timeout:.0f} s")
                return self.result(0.0, time.time(), time.time(), True)
            time.sleep(0.5)
        feeder = threading.Thread(target=self.feed, args=(lines, keys, head, a.churn_s), daemon=True)
        feeder.start()
        t_start = time.monotonic()
        churn_wall = time.time()
        self.churn(rng, t_start)
        feeder.join()
        for timer in self.timers:  # every frozen worker runs again before the quiet period
            timer.join()
        churn_s = time.monotonic() - t_start
        # a quiet period, so that the last change's pause is measured whole, then the hand-over: workers
        # that finish the input (until_end) start and the following ones are stopped
        settle_end = time.monotonic() + max(10.0, 2 * a.session_timeout_ms / 1000)
        while time.monotonic() < settle_end:
            self.reap()
            time.sleep(0.2)
        handoff = time.time()
        self.finishing = True
        following = self.alive()
        for _ in range(a.min_alive):
            self.start("finish", until_end=True)
        for n in following:
            self.ours.add(n)
            self.procs[n].send_signal(signal.SIGTERM)
        changes = [c for c in self.changes if c[0] < handoff]
        progress(f"churn over after {churn_s:.1f}s and {len(changes)} changes; {a.min_alive} workers finish the input")
        hang = False
        last = time.monotonic()
        deadline = last + a.finish_timeout
        while self.alive():
            self.reap()
            if time.monotonic() > deadline:
                hang = True
                self.stop_hung(f"the workers did not finish the input within {a.finish_timeout:.0f} s of the hand-over")
                break
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                progress(f"finishing: {len(self.alive())} alive, {max(self.committed(), 0):,}/{self.total:,} committed")
            time.sleep(0.2)
        self.changes = changes
        self.reap()
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
            if p.poll() is None:  # e.g. frozen, resumed after the others finished: nothing of it may outlive the run
                p.kill()
                p.wait(30)
        return self.result(churn_s, churn_wall, handoff, hang)

    def stop_hung(self, what: str) -> None:
        """A hang: every live worker prints its threads' stacks (faulthandler, SIGUSR1) into its log, the report
        keeps each one's last lines and committed offsets, then they are killed."""
        progress(f"{what}: a hang; asking the workers for their stacks, then stopping them")
        alive = self.alive()
        for n in alive:
            with contextlib.suppress(ProcessLookupError):
                self.procs[n].send_signal(signal.SIGCONT)  # a frozen one answers too
                self.procs[n].send_signal(signal.SIGUSR1)
        time.sleep(3)
        self.hang_report = [what, f"input committed {max(self.committed(), 0):,} of {self.total:,}; alive: {alive}"]
        for n in alive:
            lines = self.logs[n].read_text(errors="replace").splitlines()
            self.hang_report.append(f"--- {n} (started as {self.kind_of(n)}), last lines of its log:")
            self.hang_report.extend("    " + x[:300] for x in lines[-60:])
            with contextlib.suppress(ProcessLookupError):
                self.procs[n].send_signal(signal.SIGKILL)
        for x in self.hang_report:
            print(x, file=sys.stderr, flush=True)

    def kind_of(self, name: str) -> str:
        return next((k for _, k, n in self.changes if n == name), "initial")

    def result(self, churn_s: float, churn_wall: float, end_wall: float, hang: bool) -> dict[str, Any]:
        import polars as pl

        from sluice.connectors.kafka import read_all_committed

        def frame(topic: str) -> pl.DataFrame:
            msgs = read_all_committed(self.bootstrap, topic, {}, 120)
            return pl.read_ndjson(b"\n".join(m.value() for m in msgs) + b"\n") if msgs else pl.DataFrame()

        exp_users, exp_types = oracle(self.events)
        users = compare(frame(self.out_users), exp_users, USER_KEYS)
        types = compare(frame(self.out_types), exp_types, TYPE_KEYS)
        spans = ownership(self.logs, self.killed, self.frozen)
        # the measured period: from the first moment every partition is processed to the hand-over
        firsts = [min(s for s, _ in spans[p]) for p in range(self.a.partitions) if spans.get(p)]
        t0 = max(firsts) if len(firsts) == self.a.partitions else churn_wall
        t1 = end_wall
        gaps = stalls(spans, self.a.partitions, t0, t1)
        per_kind: dict[str, list[float]] = {}
        for t, kind, _ in self.changes:
            if t0 <= t < t1:
                w = whole_again(t, gaps)
                if w is not None:
                    per_kind.setdefault(kind, []).append(w)
        return {
            "seed": self.seed, "events": self.total, "partitions": self.a.partitions, "initial_workers": self.a.workers,
            "churn_s": round(churn_s, 1), "changes": {k: sum(1 for c in self.changes if c[1] == k)
                                                     for k in ("add", "term", "kill", "pause", "replace")},
            "max_workers_started": self.n, "hang": hang, "hang_report": self.hang_report, "worker_failures": self.failures,
            "lost": users["lost"] + types["lost"], "duplicated": users["duplicated"] + types["duplicated"],
            "per_user": users, "per_type": types,
            "whole_again_s": {"all": quantiles([x for xs in per_kind.values() for x in xs]),
                              **{k: quantiles(v) for k, v in per_kind.items()}},
            "stall_s": quantiles([e - s for s, e in gaps]),
            "stalled_fraction": round(sum(e - s for s, e in gaps) / max(t1 - t0, 1e-9), 3),
            "unowned_fraction": unowned_fraction(spans, self.a.partitions, t0, t1),
            "measured_s": round(t1 - t0, 1),
            # rows dropped as late, as the workers that exited cleanly report them: the input is produced in
            # event-time order (disorder < the watermark delay), so anything here is an input problem
            "late_rows": sum(sum(json.loads(x).get("late", {}).values()) for path in self.logs.values()
                             for x in path.read_text(errors="replace").splitlines() if x.startswith("{")),
        }


def progress(text: str) -> None:
    print(f"[scale_out {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    d = Path(tempfile.mkdtemp(prefix="scale-out-kafka-"))
    script = ROOT / "scripts" / "kafka.sh"
    r = subprocess.run(["bash", str(script), "up", str(d)], capture_output=True, text=True, timeout=600, check=True)
    try:
        yield r.stdout.strip().splitlines()[-1].removeprefix("bootstrap=")
    finally:
        subprocess.run(["bash", str(script), "down", str(d)], timeout=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="(internal) one worker process")
    for opt in ("--bootstrap", "--app", "--input", "--out-users", "--out-types", "--name"):
        w.add_argument(opt, required=True)
    w.add_argument("--commit-interval", type=float, default=1.0)
    w.add_argument("--until-end", action="store_true", help="finish the input and exit (default: follow it)")
    w.add_argument("--session-timeout-ms", type=int, default=10_000)
    ap.add_argument("--bootstrap", help="HOST:PORT of a Kafka broker (default: start one with scripts/kafka.sh)")
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--workers", type=int, default=16, help="workers at the start (default 16)")
    ap.add_argument("--min-alive", type=int, default=4)
    ap.add_argument("--max-alive", type=int, default=16)
    ap.add_argument("--churn-s", type=float, default=60.0, help="how long the group changes (default 60)")
    ap.add_argument("--every", type=lambda x: tuple(float(v) for v in x.split(",")), default=(1.0, 5.0),
                    help="seconds between changes, drawn uniformly from MIN,MAX (default 1,5)")
    ap.add_argument("--kinds", type=lambda x: x.split(","), default=["add", "term", "kill", "pause"],
                    help="the changes to draw from (default add,term,kill,pause; pause = SIGSTOP past the session "
                         "timeout, then SIGCONT: a zombie)")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--commit-interval", type=float, default=1.0)
    ap.add_argument("--session-timeout-ms", type=int, default=10_000,
                    help="the group's session timeout, also the transaction timeout (default 10000, the runtime's)")
    ap.add_argument("--finish-timeout", type=float, default=900.0, help="seconds before the run counts as a hang")
    ap.add_argument("--work", help="where the events file and worker logs go (default: a temporary directory)")
    a = ap.parse_args(argv)
    if a.cmd == "worker":
        return worker_main(a)
    work = Path(a.work or tempfile.mkdtemp(prefix="scale-out-"))
    work.mkdir(parents=True, exist_ok=True)
    events = work / f"events-{a.events}-{a.seed}.jsonl"
    if not events.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_events.py"), "events", "--n", str(a.events),
                        "--users", str(a.users), "--span-s", str(max(600, a.events // 500)), "--seed", str(a.seed),
                        "--out", str(events)], check=True)
    rows = []
    with broker(a.bootstrap) as bootstrap:
        for i in range(a.runs):
            r = Run(a, bootstrap, events, a.events, a.seed + i, work).run()
            print(json.dumps(r), flush=True)
            rows.append(r)
    survived = sum(1 for r in rows if r["lost"] == 0 and r["duplicated"] == 0 and not r["hang"])
    stopped = sum(1 for r in rows if r["worker_failures"] and r["lost"] == 0 and r["duplicated"] == 0)
    changes = {k: sum(r["changes"][k] for r in rows) for k in ("add", "term", "kill", "pause")}
    cmd = (f"python bench/chaos/scale_out.py --partitions {a.partitions} --workers {a.workers} --churn-s {a.churn_s:g} "
           f"--events {a.events} --runs {a.runs} --seed {a.seed}")
    every = "-".join(f"{x:g}" for x in a.every)
    if a.every != (1.0, 5.0):
        cmd += f" --every {a.every[0]:g},{a.every[1]:g}"
    if a.kinds != ["add", "term", "kill", "pause"]:
        cmd += f" --kinds {','.join(a.kinds)}"
    words = {"add": "started", "term": "stopped (SIGTERM)", "kill": "killed -9",
             "pause": "frozen past its session timeout (SIGSTOP, then SIGCONT: a zombie)"}
    fault = (f"rebalance churn: {a.partitions} partitions, {a.workers} worker processes, for {a.churn_s:g} s every "
             f"{every} s a worker {', '.join(words[k] for k in a.kinds)}; {a.min_alive}-{a.max_alive} alive "
             f"({changes['add']} starts, {changes['term']} stops, {changes['kill']} kills, {changes['pause']} freezes)")
    print("CHAOS-ROW " + json.dumps({"fault": fault, "runs": len(rows), "survived": survived,
                                     "lost": sum(r["lost"] for r in rows), "duplicated": sum(r["duplicated"] for r in rows),
                                     "stopped": stopped, "command": cmd}))
    print(json.dumps({"totals": {"runs": len(rows), "survived": survived, "changes": changes,
                                 "whole_again_s": [r["whole_again_s"]["all"] for r in rows],
                                 "stall_s": [r["stall_s"] for r in rows]}}))
    return 0 if survived == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
