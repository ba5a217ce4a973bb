#!/usr/bin/env python3
"""Randomized kill -9 soak of the embedded runtime (`sl.run` with checkpoints) across jobs and sinks.

Each run picks a job and a sink from a covering matrix (every job with several sinks, every sink with
several jobs), a batch size and a checkpoint interval; starts the job as a process, kills it with SIGKILL
a random number of times (0-5) at random moments (each after the restarted process wrote a new checkpoint,
plus a random delay), sometimes arming a random failpoint of the commit path (core/failpoints.py) for one
attempt, and restarts it until it finishes. Every run writes to its sink and to a JSON Lines directory
(so each commit has two participants and `between_sink_commits` can fire). Then the committed output of
both is compared with an independent oracle:

    w1, w2, w3      DuckDB over the input (tests/oracle.py); w2's p99 is approximate: checked to 2 %
    w4, w5          DuckDB over the input (as-of join, interval join)
    cep             the brute-force matcher of tests/cep/brute_force.py
    risk            (the keyed process function of sluice/examples/risk_score.py) one uninterrupted run

Per row of output: "lost" = oracle rows missing, "duplicated" = rows present more often than the oracle has
them, "wrong" = rows whose key matches but whose values do not. Upsert sinks (Redis SET, Cassandra) cannot
show a duplicate (an epoch applied twice writes the same values); the DeltaMerge target accumulates a column
(`target.c + source.c`), so an epoch merged twice shows as a doubled value and counts as duplicated.

    python bench/chaos/kill_soak.py [--runs 210] [--seed 1] [--only w1:postgres] [--json runs.jsonl]

Servers (PostgreSQL, Redis, Kafka, Cassandra) are started with the project's scripts (scripts/*.sh) as
tests/conftest.py does, only when a chosen sink needs them; a sink whose server cannot start is skipped
and said so. Last lines: one CHAOS-ROW per sink (docs/guarantees.md, bench/chaos/table.py), then totals.
"""

from __future__ import annotations

import argparse
import atexit
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT / "tests" / "cep")]

JOBS = ("w1", "w2", "w3", "w4", "w5", "cep", "risk")
SINKS = ("jsonl_dir", "csv_dir", "parquet_dir", "jsonl_file", "log", "postgres", "redis", "delta", "delta_merge",
         "cassandra", "kafka")
SERVER = {"postgres": "postgres", "redis": "redis", "kafka": "kafka", "cassandra": "cassandra"}
FAILPOINTS = ("after_prepare", "after_manifest", "after_sink_commit", "between_sink_commits", "after_commit",
              "during_restore")
# the columns that name one output row, and the additive column a DeltaMerge accumulates
KEYS = {
    "w1": (("user_id", "window_start"), "count"),
    "w2": (("event_type", "window_start"), "count"),
    "w3": (("user_id", "session_start"), "count"),
    "w4": (("large_tx_id",), "large_ts"),
    "w5": (("search_id", "click_id"), "click_ts"),
    "cep": (("small_tx_id", "large_tx_id"), "match_end"),
    "risk": ((), None),  # rows without a key: every column is the row's identity (not with upsert sinks)
}
UPSERT_SINKS = {"redis", "cassandra", "delta_merge"}
TX_JOBS = {"w4", "cep", "risk"}


def matrix() -> list[tuple[str, str]]:
    """A covering set: each job with 6-7 sinks, each sink with 3-5 jobs (risk has no key: no upsert sink)."""
    pairs = []
    for j, job in enumerate(JOBS):
        for s, sink in enumerate(SINKS):
            if (j + s) % 2 == 0 or (sink == "jsonl_dir" and job in ("w1", "risk")):
                if job == "risk" and sink in UPSERT_SINKS:
                    continue
                pairs.append((job, sink))
    pairs += [("risk", "postgres"), ("risk", "kafka"), ("w2", "delta_merge")]
    return sorted(set(pairs))


# --- the job, in the child process ------------------------------------------------------------------
def make_sink(kind: str, t: dict[str, Any]) -> Any:
    import sluice as sl

    keys, additive = KEYS[t["job"]]
    if kind == "jsonl_dir":
        return sl.JsonLinesSink(t["target"], rows_per_file=300)
    if kind == "csv_dir":
        return sl.CsvSink(t["target"], rows_per_file=300)
    if kind == "parquet_dir":
        return sl.ParquetSink(t["target"], rows_per_file=300)
    if kind == "jsonl_file":
        return sl.JsonLinesSink(t["target"])
    if kind == "log":
        return sl.LogSink(t["name"], root=t["target"], partitions=2)
    if kind == "postgres":
        return sl.PostgresSink(t["name"], t["dsn"], mode="append", create=True)
    if kind == "redis":
        return sl.RedisSink(t["url"], key=t["name"] + ":" + ":".join(f"{{{k}}}" for k in keys), command="set")
    if kind == "delta":
        return sl.DeltaSink(t["target"])
    if kind == "delta_merge":
        return sl.DeltaSink(t["target"], mode="merge", merge=sl.DeltaMerge(
            on=list(keys), update={additive: f"target.{additive} + source.{additive}"}, combine={additive: "sum"}))
    if kind == "cassandra":
        return sl.CassandraSink(t["contact"], "sluice_soak", t["name"], username="cassandra", password="cassandra")
    if kind == "kafka":
        return sl.KafkaSink(t["name"], t["bootstrap"])
    raise ValueError(kind)


def child(spec: dict[str, Any]) -> int:
    import sluice as sl
    import workloads
    from sluice.core import failpoints

    if spec.get("failpoint"):
        failpoints.arm(spec["failpoint"])
    job = spec["job"]
    src = sl.JsonLinesSource(spec["input"])
    sink = make_sink(spec["sink"], spec)
    mirror = sl.JsonLinesSink(spec["mirror"], rows_per_file=300)  # the second participant of every commit
    if job == "risk":
        from sluice.examples import risk_score

        flow = risk_score.build(src, sink, mirror)  # the mirror holds the high-risk side output
    elif job == "w4":
        flow = workloads.fraud_alerts(src, (sink, mirror))
    elif job == "w5":
        flow = workloads.search_to_click(src, (sink, mirror))
    elif job == "cep":
        flow = workloads.small_then_large(src, (sink, mirror))
    else:
        flow = workloads.build(job, src, (sink, mirror))
    try:
        sl.run(flow, batch_size=spec["batch_size"], checkpoint_dir=spec["ckpt"], checkpoint_interval=spec["interval"],
               state=spec["state"], state_dir=Path(spec["ckpt"]) / "state")
    except sl.SluiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# --- servers ------------------------------------------------------------------------------------------
class Servers:
    """The servers the chosen sinks need, started with scripts/*.sh (as tests/conftest.py does) or given."""

    def __init__(self, base: Path, given: dict[str, str]) -> None:
        self.base, self.info, self.down, self.skipped = base, dict(given), [], {}

    def start(self, name: str) -> bool:
        if name in self.info:
            return True
        if name in self.skipped:
            return False
        try:
            self.info[name] = getattr(self, "_" + name)()
        except Exception as exc:  # any reason: the sink is skipped, and the output says why
            self.skipped[name] = f"{type(exc).__name__}: {str(exc).strip()[-300:]}"
            return False
        return True

    def _script(self, script: str, key: str) -> str:
        d = self.base / script
        d.mkdir(exist_ok=True)
        path = ROOT / "scripts" / f"{script}.sh"
        r = subprocess.run(["bash", str(path), "up", str(d)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/{script}.sh up failed: {r.stderr[-500:]}")
        self.down.append(["bash", str(path), "down", str(d)])
        return r.stdout.strip().splitlines()[-1].removeprefix(key + "=")

    def _postgres(self) -> str:
        return self._script("postgres", "dsn")

    def _kafka(self) -> str:
        return self._script("kafka", "bootstrap")

    def _cassandra(self) -> str:
        contact = self._script("cassandra", "contact")
        cluster, _ = cassandra_session(contact)  # answers: its superuser exists
        cluster.shutdown()
        return contact

    def _redis(self) -> str:
        import redis

        server = shutil.which("redis-server")
        if not server:
            raise RuntimeError("redis-server is not installed: run `make services` (scripts/install-services.sh)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        d = self.base / "redis"
        d.mkdir(exist_ok=True)
        proc = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                                 "--dir", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.down.append(["kill", str(proc.pid)])
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                return url
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        for cmd in reversed(self.down):
            subprocess.run(cmd, capture_output=True, timeout=120)
        self.down.clear()


def cassandra_session(contact: str) -> Any:
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    host, port = contact.rsplit(":", 1)
    for attempt in range(60):  # the default superuser is made just after start-up
        cluster = Cluster([(host, int(port))], auth_provider=PlainTextAuthProvider("cassandra", "cassandra"))
        try:
            return cluster, cluster.connect()
        except Exception:
            cluster.shutdown()
            if attempt == 59:
                raise
            time.sleep(1)
    raise AssertionError


# --- oracles -----------------------------------------------------------------------------------------
class Oracles:
    def __init__(self, events: Path, tx: Path, tmp: Path) -> None:
        self.events, self.tx, self.tmp = events, tx, tmp
        self.cache: dict[Any, Any] = {}

    def get(self, job: str, batch_size: int, state: str) -> tuple[Any, Any, str]:
        """(rows of the sink, rows of the mirror, what the oracle is)."""
        key = (job, batch_size, state) if job == "risk" else job
        if key not in self.cache:
            self.cache[key] = self._make(job, batch_size, state)
        return self.cache[key]

    def _make(self, job: str, batch_size: int, state: str) -> tuple[Any, Any, str]:
        import polars as pl

        import oracle

        if job in ("w1", "w2", "w3"):
            flat = oracle.flat_events(str(self.events))
            if job == "w1":
                want = oracle.w1(flat.select("timestamp", "user_id", "value"))
            elif job == "w2":
                want = oracle.w2(flat.select("timestamp", "event_type", "response_time"))
            else:
                want = oracle.w3(flat.select("timestamp", "user_id"))
            return want, want, "DuckDB"
        if job == "w4":
            want = oracle.w4(str(self.tx))
            return want, want, "DuckDB"
        if job == "w5":
            want = oracle.w5(str(self.events))
            return want, want, "DuckDB"
        if job == "cep":
            from brute_force import oracle_matches

            pattern = cep_pattern()  # the pattern of bench/workloads.py small_then_large
            tx = pl.read_ndjson(self.tx).with_row_index("i").with_columns(pl.col("i").cast(pl.Int64),
                                                                           t=pl.col("timestamp"))
            ids = tx["tx_id"].to_list()
            users = dict(zip(tx["tx_id"].to_list(), tx["user_id"].to_list(), strict=True))
            ts = dict(zip(tx["tx_id"].to_list(), tx["timestamp"].to_list(), strict=True))
            rows = []
            for _user, stages, end in oracle_matches(pattern, tx, "user_id"):
                got = dict(stages)
                small, large = ids[got["small"][0]], ids[got["large"][0]]
                rows.append({"user_id": users[small], "match_start": ts[small], "match_end": end,
                             "small_tx_id": small, "large_tx_id": large})
            want = pl.DataFrame(rows)
            return want, want, "brute-force CEP matcher"
        # risk: one uninterrupted run of the same job, batch size and state backend
        d = self.tmp / f"ref-{job}-{batch_size}-{state}"
        spec = {"job": job, "sink": "jsonl_dir", "input": str(self.tx), "target": str(d / "out"),
                "mirror": str(d / "mirror"), "ckpt": str(d / "ck"), "batch_size": batch_size, "interval": 1000.0,
                "state": state}
        r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"the uninterrupted reference run of {job} failed: {r.stderr[-2000:]}")
        return read_dir(d / "out", ".jsonl"), read_dir(d / "mirror", ".jsonl"), "an uninterrupted run"


def cep_pattern() -> Any:
    from datetime import timedelta

    import polars as pl

    import sluice as sl

    return (sl.Pattern.begin("small").where(pl.col("amount") < 10)
            .followed_by("large").where(pl.col("amount") > 1000).within(timedelta(minutes=10)))


# --- reading what was committed -----------------------------------------------------------------------
def read_dir(d: Path, suffix: str) -> Any:
    import polars as pl

    files = sorted(f for f in d.rglob(f"part-*{suffix}") if f.stat().st_size) if d.exists() else []
    if not files:
        return pl.DataFrame()
    read = {".jsonl": pl.read_ndjson, ".csv": pl.read_csv, ".parquet": pl.read_parquet}[suffix]
    return pl.concat([read(f) for f in files], how="diagonal_relaxed")


def read_back(kind: str, t: dict[str, Any], want: Any) -> Any:
    import polars as pl

    if kind in ("jsonl_dir", "csv_dir", "parquet_dir"):
        return read_dir(Path(t["target"]), {"jsonl_dir": ".jsonl", "csv_dir": ".csv", "parquet_dir": ".parquet"}[kind])
    if kind == "jsonl_file":
        p = Path(t["target"])
        return pl.read_ndjson(p) if p.exists() and p.stat().st_size else pl.DataFrame()
    if kind == "log":
        import sluice as sl
        from sluice import testing

        flow = sl.Flow("soak_read")
        got = testing.collect(flow.read("in", sl.LogSource(t["name"], root=t["target"]), schema={c: sl.Optional(d) for c, d in want.schema.items()}))
        sl.run(flow)
        return got.frame()
    if kind == "postgres":
        import psycopg

        with psycopg.connect(t["dsn"]) as con:
            cur = con.execute(f'SELECT * FROM "{t["name"]}"')
            cols = [c.name for c in cur.description or []]
            return pl.DataFrame(cur.fetchall(), schema=cols, orient="row") if cols else pl.DataFrame()
    if kind == "redis":
        import redis

        r = redis.Redis.from_url(t["url"])
        keys = list(r.scan_iter(match=t["name"] + ":*", count=5000))
        values = r.mget(keys) if keys else []
        return pl.DataFrame([json.loads(v) for v in values]) if values else pl.DataFrame()
    if kind in ("delta", "delta_merge"):
        return pl.read_delta(t["target"]) if Path(t["target"], "_delta_log").exists() else pl.DataFrame()
    if kind == "cassandra":
        cluster, session = cassandra_session(t["contact"])
        try:
            rows = list(session.execute(f"SELECT * FROM sluice_soak.{t['name']}"))
        finally:
            cluster.shutdown()
        return pl.DataFrame([r._asdict() for r in rows]) if rows else pl.DataFrame()
    if kind == "kafka":
        from sluice.connectors.kafka import read_all_committed

        msgs = read_all_committed(t["bootstrap"], t["name"], {}, 120)
        return pl.read_ndjson(b"\n".join(m.value() for m in msgs) + b"\n") if msgs else pl.DataFrame()
    raise ValueError(kind)


def prepare(kind: str, t: dict[str, Any], want: Any) -> None:
    """Make what the sink needs before the first attempt: a Kafka topic, a Cassandra table."""
    if kind == "kafka":
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": t["bootstrap"]})
        admin.create_topics([NewTopic(t["name"], 2, 1)])[t["name"]].result(60)
    if kind == "cassandra":
        import polars as pl

        types = {pl.String: "text", pl.Int64: "bigint", pl.Float64: "double"}
        keys, _ = KEYS[t["job"]]
        cols = ", ".join(f"{c} {types[want.schema[c].base_type()]}" for c in want.columns)
        cluster, session = cassandra_session(t["contact"])
        try:
            session.execute("CREATE KEYSPACE IF NOT EXISTS sluice_soak WITH replication = "
                            "{'class': 'SimpleStrategy', 'replication_factor': 1}")
            session.execute(f"CREATE TABLE sluice_soak.{t['name']} ({cols}, PRIMARY KEY (({keys[0]}){''.join(', ' + k for k in keys[1:])}))")
        finally:
            cluster.shutdown()


# --- comparing with the oracle ---------------------------------------------------------------------
def compare(job: str, got: Any, want: Any, accumulated: str | None = None) -> dict[str, int]:
    """lost / duplicated / wrong rows of `got` against `want` (see the module docstring)."""
    import polars as pl

    keys = KEYS[job][0]
    if got.height == 0:
        return {"rows": 0, "lost": want.height, "duplicated": 0, "wrong": 0}
    missing = [c for c in want.columns if c not in got.columns]
    if missing:
        return {"rows": got.height, "lost": want.height, "duplicated": 0, "wrong": got.height}
    got = got.select(want.columns).cast(dict(want.schema), strict=False)
    floats = [c for c in want.columns if want.schema[c].is_float()]
    if not keys:  # every column is the identity; floats as the same computation makes them (same order)
        ident = [c for c in want.columns]
        w = Counter(want.with_columns(pl.col(floats).round(9)).select(ident).iter_rows())
        g = Counter(got.with_columns(pl.col(floats).round(9)).select(ident).iter_rows())
        return {"rows": got.height, "lost": sum((w - g).values()), "duplicated": sum((g - w).values()), "wrong": 0}
    keys_l = list(keys)
    oracle = {r[:len(keys_l)]: r[len(keys_l):] for r in want.select(*keys_l, *[c for c in want.columns if c not in keys])
              .iter_rows()}
    values = [c for c in want.columns if c not in keys]
    g_rows = list(got.select(*keys_l, *values).iter_rows())
    counts: Counter[tuple[Any, ...]] = Counter()
    wrong = 0
    for row in g_rows:
        k, v = row[:len(keys_l)], list(row[len(keys_l):])
        times = 1
        if accumulated and k in oracle:  # an epoch merged n times shows as n × the additive value
            o = oracle[k][values.index(accumulated)]
            a = v[values.index(accumulated)]
            if o and a is not None and a % o == 0 and a // o >= 1:
                times = int(a // o)
                v[values.index(accumulated)] = o
        counts[k] += times
        if k in oracle and not same(values, v, oracle[k], job):
            wrong += 1
    w = Counter(oracle.keys())
    return {"rows": got.height, "lost": sum((w - counts).values()), "duplicated": sum((counts - w).values()),
            "wrong": wrong}


def same(names: list[str], a: list[Any], b: tuple[Any, ...], job: str) -> bool:
    for name, x, y in zip(names, a, b, strict=True):
        if isinstance(y, float) and x is not None:
            rel = 0.02 if name.startswith("p99") else 1e-9
            if abs(x - y) > rel * max(abs(y), 1e-12):
                return False
        elif x != y:
            return False
    return True


# --- one run -------------------------------------------------------------------------------------
def newest(ck: Path) -> int:
    return max((int(p.parent.name[4:]) for p in ck.glob("chk-*/manifest.json")), default=0)


def kill_loop(spec: dict[str, Any], rng: random.Random, kills: int, failpoint: str | None) -> dict[str, Any]:
    """Start the job, kill it `kills` times at random moments (one attempt armed with `failpoint`), restart it
    until it finishes. A run that stops with an error is started again (up to twice): "stopped"."""
    ck = Path(spec["ckpt"])
    armed_at = rng.randint(0, kills) if failpoint else -1
    done = attempts = fired = errors = 0
    err_text = ""
    while attempts < 30:
        attempts += 1
        armed = failpoint is not None and done >= armed_at  # after `armed_at` random kills
        this = {**spec, "failpoint": failpoint if armed else None}
        seen = newest(ck)
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(this)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if armed:
            _, err = proc.communicate(timeout=600)
            failpoint = None  # armed once
            if proc.returncode == -signal.SIGKILL:
                fired += 1
                continue
            if proc.returncode == 0:  # not reached (e.g. during_restore with nothing to restore): the run is done
                return {"attempts": attempts, "kills": done, "failpoint_kills": fired, "rc": 0, "errors": errors,
                        "error": err_text}
        elif done < kills:
            while proc.poll() is None and newest(ck) <= seen:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.25))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                done += 1
                continue
            _, err = proc.communicate(timeout=600)
        else:
            _, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            return {"attempts": attempts, "kills": done, "failpoint_kills": fired, "rc": 0, "errors": errors,
                    "error": err_text}
        errors += 1
        err_text = err.decode(errors="replace")[-1500:]
        if errors > 2:
            break
    return {"attempts": attempts, "kills": done, "failpoint_kills": fired, "rc": proc.returncode, "errors": errors,
            "error": err_text}


def one_run(i: int, job: str, sink: str, rng: random.Random, tmp: Path, inputs: dict[str, Path], servers: Servers,
            oracles: Oracles) -> dict[str, Any]:
    batch_size = rng.choice([300, 1000, 2500])
    interval = rng.choice([0.0, 0.02, 0.1])
    state = rng.choice(["memory", "rocksdb"]) if job == "risk" else "memory"
    kills = rng.randint(0, 5)
    failpoint = None
    if rng.random() < 0.35:
        point = rng.choice(FAILPOINTS)  # a process restores once: during_restore can only fire at its first hit
        failpoint = f"{point}@{1 if point == 'during_restore' else rng.randint(1, 6)}"
    d = tmp / f"run{i:04d}"
    name = f"soak_{i}_{uuid.uuid4().hex[:6]}"
    spec: dict[str, Any] = {"job": job, "sink": sink, "input": str(inputs["tx" if job in TX_JOBS else "events"]),
                            "target": str(d / "target" / ("out.jsonl" if sink == "jsonl_file" else "out")),
                            "mirror": str(d / "mirror"), "ckpt": str(d / "ck"), "batch_size": batch_size,
                            "interval": interval, "state": state, "name": name,
                            "dsn": servers.info.get("postgres"), "url": servers.info.get("redis"),
                            "bootstrap": servers.info.get("kafka"), "contact": servers.info.get("cassandra")}
    want, want_mirror, oracle_kind = oracles.get(job, batch_size, state)
    start = time.perf_counter()
    prepare(sink, spec, want)
    loop = kill_loop(spec, rng, kills, failpoint)
    rec: dict[str, Any] = {"run": i, "job": job, "sink": sink, "batch_size": batch_size, "interval": interval,
                           "state": state, "planned_kills": kills, "failpoint": failpoint, "oracle": oracle_kind,
                           **loop}
    if loop["rc"] == 0:
        res = compare(job, read_back(sink, spec, want), want, KEYS[job][1] if sink == "delta_merge" else None)
        mir = compare(job, read_dir(Path(spec["mirror"]), ".jsonl"), want_mirror)
        rec.update(rows=res["rows"], lost=res["lost"], duplicated=res["duplicated"], wrong=res["wrong"],
                   mirror_lost=mir["lost"], mirror_duplicated=mir["duplicated"], mirror_wrong=mir["wrong"],
                   leftover_staged=len(list((d / "ck" / "staging").rglob("*.arrow"))) if (d / "ck").exists() else 0)
    else:
        rec.update(rows=0, lost=None, duplicated=None, wrong=None)
    rec["stopped"] = loop["errors"] > 0 and loop["rc"] == 0
    rec["survived"] = (loop["rc"] == 0 and rec["lost"] == 0 and rec["duplicated"] == 0 and rec["wrong"] == 0
                       and rec["mirror_lost"] == 0 and rec["mirror_duplicated"] == 0 and rec["mirror_wrong"] == 0)
    rec["seconds"] = round(time.perf_counter() - start, 2)
    if rec["survived"]:
        shutil.rmtree(d, ignore_errors=True)
    return rec


SINK_WORDS = {
    "jsonl_dir": "JSON Lines directory", "csv_dir": "CSV directory", "parquet_dir": "Parquet directory",
    "jsonl_file": "single JSON Lines file", "log": "embedded log (LogSink)", "postgres": "PostgresSink (append)",
    "redis": "RedisSink (SET; upserts)", "delta": "DeltaSink (append)",
    "delta_merge": "DeltaSink DeltaMerge (accumulating)", "cassandra": "CassandraSink (upserts)",
    "kafka": "KafkaSink (sl.run staged)",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=210, help="randomized runs (default 210)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", action="append", default=[],
                    help="job:sink, job:* or *:sink (repeatable); default: the whole covering matrix")
    ap.add_argument("--events", type=int, default=30_000, help="input records per file (default 30000)")
    ap.add_argument("--json", help="write one JSON line per run here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (failed runs are kept anyway)")
    for server in ("postgres-dsn", "redis-url", "kafka-bootstrap", "cassandra-contact"):
        ap.add_argument(f"--{server}", help=f"use this server instead of starting one ({server.split('-')[0]})")
    a = ap.parse_args(argv)
    if a.child:
        return child(json.loads(a.child))
    pairs = matrix()
    if a.only:
        def wanted(p: tuple[str, str]) -> bool:
            return any(all(x in ("*", "", y) for x, y in zip(o.split(":", 1), p, strict=False)) for o in a.only)
        pairs = [p for p in pairs if wanted(p)]
        if not pairs:
            ap.error(f"--only {a.only} matches nothing; jobs: {', '.join(JOBS)}; sinks: {', '.join(SINKS)}")
    rng = random.Random(a.seed)
    plan: list[tuple[str, str]] = []
    while len(plan) < a.runs:
        cycle = pairs[:]
        rng.shuffle(cycle)
        plan += cycle
    plan = plan[:a.runs]
    tmp = Path(tempfile.mkdtemp(prefix="kill-soak-"))
    given = {k: v for k, v in (("postgres", a.postgres_dsn), ("redis", a.redis_url), ("kafka", a.kafka_bootstrap),
                               ("cassandra", a.cassandra_contact)) if v}
    servers = Servers(tmp, given)
    atexit.register(servers.stop)
    for sink in sorted({s for _, s in plan if s in SERVER}):
        t0 = time.perf_counter()
        if servers.start(SERVER[sink]):
            print(f"server {SERVER[sink]} up for {sink} ({time.perf_counter() - t0:.0f} s)", flush=True)
    skipped = {s for _, s in plan if s in SERVER and SERVER[s] in servers.skipped}
    for s in sorted(skipped):
        print(f"SKIPPED sink {s}: its server ({SERVER[s]}) could not start: {servers.skipped[SERVER[s]]}", flush=True)
    plan = [p for p in plan if p[1] not in skipped]
    inputs = {"events": tmp / "events.jsonl", "tx": tmp / "tx.jsonl"}
    gen = [sys.executable, str(ROOT / "bench" / "gen_events.py")]
    subprocess.run([*gen, "events", "--n", str(a.events), "--users", "200", "--span-s", "1800", "--seed",
                    str(a.seed), "--out", str(inputs["events"])], check=True)
    subprocess.run([*gen, "transactions", "--n", str(a.events), "--users", "150", "--span-s", "3600", "--seed",
                    str(a.seed), "--out", str(inputs["tx"])], check=True)
    oracles = Oracles(inputs["events"], inputs["tx"], tmp)
    out = open(a.json, "w") if a.json else None  # noqa: SIM115
    records: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for i, (job, sink) in enumerate(plan):
        try:
            rec = one_run(i, job, sink, rng, tmp, inputs, servers, oracles)
        except Exception as exc:  # a harness failure is a failed run, reported, not a crash of the soak
            rec = {"run": i, "job": job, "sink": sink, "survived": False, "stopped": False, "kills": 0,
                   "failpoint_kills": 0, "lost": None, "duplicated": None, "wrong": None,
                   "error": f"harness: {type(exc).__name__}: {exc}"[:1500]}
        records.append(rec)
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()
        fp = f" +failpoint {rec.get('failpoint')} fired {rec.get('failpoint_kills')}" if rec.get("failpoint") else ""
        print(f"run {i + 1}/{len(plan)} {job}:{sink} batch {rec.get('batch_size')} interval {rec.get('interval')}: "
              f"{rec.get('kills')} kills{fp}, {'ok' if rec['survived'] else 'FAILED'} (rows {rec.get('rows')}, "
              f"lost {rec.get('lost')}, duplicated {rec.get('duplicated')}, wrong {rec.get('wrong')}"
              f"{', mirror lost ' + str(rec.get('mirror_lost')) + ' dup ' + str(rec.get('mirror_duplicated')) if rec.get('mirror_lost') or rec.get('mirror_duplicated') else ''}"
              f"{', stopped then finished' if rec.get('stopped') else ''}) {rec.get('seconds', '')} s", flush=True)
        if not rec["survived"]:
            print(f"  kept {tmp / f'run{i:04d}'}; error: {rec.get('error', '')[-800:]}", flush=True)
    if out:
        out.close()
    cmd = "python bench/chaos/kill_soak.py " + " ".join(
        [f"--runs {a.runs}", f"--seed {a.seed}", *[f"--only {o}" for o in a.only]] + ([f"--events {a.events}"]
                                                                                      if a.events != 30_000 else []))
    total = {"runs": 0, "survived": 0, "lost": 0, "duplicated": 0, "wrong": 0, "stopped": 0, "kills": 0,
             "failpoint_kills": 0}
    rows = []
    for sink in SINKS:
        mine = [r for r in records if r["sink"] == sink]
        if not mine:
            continue
        jobs = sorted({r["job"] for r in mine}, key=JOBS.index)
        row = {"fault": f"kill -9 of sl.run at random moments (0-5 per run, 35% also at a commit failpoint), "
                        f"jobs {', '.join(jobs)} into {SINK_WORDS[sink]} + a JSON Lines directory",
               "runs": len(mine), "survived": sum(r["survived"] for r in mine),
               "lost": sum((r.get("lost") or 0) + (r.get("mirror_lost") or 0) for r in mine),
               "duplicated": sum((r.get("duplicated") or 0) + (r.get("mirror_duplicated") or 0) for r in mine),
               "stopped": sum(bool(r.get("stopped")) for r in mine), "command": cmd}
        rows.append(row)
        for k in ("runs", "survived", "lost", "duplicated", "stopped"):
            total[k] += row[k]
    for r in records:
        total["wrong"] += (r.get("wrong") or 0) + (r.get("mirror_wrong") or 0)
        total["kills"] += r.get("kills") or 0
        total["failpoint_kills"] += r.get("failpoint_kills") or 0
    for s in sorted(skipped):
        print(f"SKIPPED sink {s}: its server ({SERVER[s]}) could not start", flush=True)
    minutes = (time.perf_counter() - t_start) / 60
    print(f"SUMMARY {total['runs']} runs, {total['survived']} survived, {total['kills']} random kills + "
          f"{total['failpoint_kills']} at failpoints, lost {total['lost']}, duplicated {total['duplicated']}, "
          f"wrong {total['wrong']}, stopped {total['stopped']}, {minutes:.1f} min, skipped sinks: "
          f"{', '.join(sorted(skipped)) or 'none'}", flush=True)
    if not a.keep and total["survived"] == total["runs"]:
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for row in rows:
        print("CHAOS-ROW " + json.dumps(row), flush=True)
    print(json.dumps({"totals": total}), flush=True)
    return 0 if total["survived"] == total["runs"] and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
