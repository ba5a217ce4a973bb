"""Exactly-once into PostgreSQL across crashes, under sl.run and under the Kafka runtime.

The pipeline writes three tables: `summary`, an accumulating merge per user (n = t.n + 1, total =
t.total + excluded.total, last_ts = GREATEST(...)) so an epoch applied twice shows; `windows`, per-minute
counts upserted by (user_id, window_start); `clicks`, appended. The process is killed (SIGKILL) at each
failpoint of the commit path, and at random moments many times; the PostgreSQL server is restarted in the
middle of a run. After a final restart every table equals the DuckDB oracle over the input: nothing lost,
nothing twice."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import ROOT
from pg_util import fresh_database, table

pytestmark = pytest.mark.slow

PIPELINE = '''
import sys
from datetime import timedelta
import sluice as sl

source, dsn = sys.argv[1:3]
flow = sl.Flow("pgeo")
schema = {"timestamp": int, "user_id": str, "event_type": str}
if source.startswith("kafka:"):
    bootstrap, topic = source[6:].split("/")
    events = flow.read("in", sl.KafkaSource(topic, bootstrap, key="user_id"), schema=schema)
else:
    events = flow.read("in", sl.JsonLinesSource(source), schema=schema)
(events.select(sl.col("user_id"), sl.lit(1).alias("n"), (sl.col("timestamp") % 1000).alias("total"),
               sl.col("timestamp").alias("last_ts"))
       .write("summary", sl.PostgresSink("summary", dsn, key="user_id", create=True, merge={
           "n": "t.n + 1", "total": "t.total + excluded.total", "last_ts": "GREATEST(t.last_ts, excluded.last_ts)"})))
(events.event_time("timestamp", timedelta(seconds=5)).key_by("user_id")
       .window("per_minute", sl.Tumbling(timedelta(minutes=1)), n=sl.agg.count())
       .write("windows", sl.PostgresSink("windows", dsn, key=["user_id", "window_start"], create=True,
                                         columns=["user_id", "window_start", "n"])))
(events.filter(sl.col("event_type") == "click").select("timestamp", "user_id")
       .write("clicks", sl.PostgresSink("clicks", dsn, create=True)))
'''


def sluice_cmd(pipeline: Path, source: str, dsn: str, checkpoints: Path | None, app: str = "", batch: int = 3000,
               interval: str = "0") -> list[str]:
    cmd = [sys.executable, "-m", "sluice.cli.main", "run", str(pipeline), "--batch-size", str(batch), "--quiet"]
    if checkpoints is None:
        bootstrap = source[6:].split("/")[0]
        cmd += ["--broker", f"kafka://{bootstrap}", "--app-id", app, "--instance", "w0", "--until-end",
                "--commit-interval", "0.1"]
    else:
        cmd += ["--checkpoint-dir", str(checkpoints), "--checkpoint-interval", interval]
    return [*cmd, "--", source, dsn]


def env(failpoints: str | None = None) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    e.pop("SLUICE_FAILPOINTS", None)
    if failpoints:
        e["SLUICE_FAILPOINTS"] = failpoints
    return e


def check_against_oracle(events: Path, dsn: str) -> None:
    con = duckdb.connect()
    con.register("ev", pl.read_ndjson(events).select("timestamp", "user_id", "event_type").to_arrow())
    want_summary = con.sql("SELECT user_id, count(*) AS n, sum(timestamp % 1000) AS total, max(timestamp) AS last_ts "
                           "FROM ev GROUP BY ALL ORDER BY user_id").pl()
    want_windows = con.sql("SELECT user_id, (timestamp // 60000) * 60000 AS window_start, count(*) AS n "
                           "FROM ev GROUP BY ALL ORDER BY ALL").pl()
    want_clicks = con.sql("SELECT timestamp, user_id FROM ev WHERE event_type = 'click' ORDER BY ALL").pl()
    for name, want, order in [("summary", want_summary, "user_id"), ("windows", want_windows, "user_id, window_start"),
                              ("clicks", want_clicks, "timestamp, user_id")]:
        got = table(dsn, name, order).select(want.columns)
        if name == "windows" and got.schema["window_start"] != pl.Int64:
            got = got.with_columns(pl.col("window_start").str.to_datetime(time_zone="UTC").dt.epoch("ms"))
        assert got.height == want.height, f"{name}: {got.height} rows, the oracle {want.height}"
        assert got.equals(want.cast(got.schema)), f"{name} differs from the oracle"
    from pg_util import query

    assert query(dsn, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'sluice_stage%'") == [(0,)]


@pytest.mark.parametrize("crashes", [
    ["after_prepare@3"], ["after_manifest@3"], ["between_sink_commits@3"], ["between_sink_commits@5"],
    ["after_sink_commit@4"], ["after_commit@3"], ["after_manifest@2", "during_restore"],
    ["after_manifest@2", "after_prepare@4", "after_manifest@5"],
])
def test_sl_run_killed_at_each_failpoint_is_exactly_once(postgres_dsn: str, events_medium: Path, tmp_path: Path,
                                                         crashes: list[str]) -> None:
    dsn = fresh_database(postgres_dsn)
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE)
    cmd = sluice_cmd(pipeline, str(events_medium), dsn, tmp_path / "ck")
    for fp in crashes:
        assert subprocess.run(cmd, env=env(fp), timeout=300).returncode == -9, f"the run did not die at {fp}"
    assert subprocess.run(cmd, env=env(), timeout=300).returncode == 0
    check_against_oracle(events_medium, dsn)


def kill_at_random(cmd: list[str], kills: int, rng: random.Random, progressed, max_s: float = 0.4) -> int:
    """Run `cmd` to the end, killing it (SIGKILL) `kills` times: each time after it made progress
    (`progressed(since)` true), at a random moment up to `max_s` later."""
    done = 0
    while True:
        since = time.monotonic()
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if done < kills:
            while proc.poll() is None and not progressed(since):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, max_s))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                done += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
        return done


def test_sl_run_killed_at_random_many_times_is_exactly_once(postgres_dsn: str, events_medium: Path,
                                                            tmp_path: Path) -> None:
    dsn = fresh_database(postgres_dsn)
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE)
    ck = tmp_path / "ck"
    cmd = sluice_cmd(pipeline, str(events_medium), dsn, ck, batch=500, interval="0.05")

    def progressed(since: float) -> bool:  # a checkpoint written since the process started
        return any(p.stat().st_mtime > time.time() - (time.monotonic() - since) for p in ck.glob("chk-*/manifest.json"))

    kills = kill_at_random(cmd, 10, random.Random(11), progressed, max_s=0.1)  # the run takes a few seconds: kill soon after a checkpoint
    assert kills >= 5
    check_against_oracle(events_medium, dsn)


def test_a_server_restart_mid_run_is_ridden_through_or_stops_clearly(postgres_server: dict, events_medium: Path,
                                                                     tmp_path: Path) -> None:
    dsn = fresh_database(postgres_server["dsn"])
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE)
    ck = tmp_path / "ck"
    cmd = sluice_cmd(pipeline, str(events_medium), dsn, ck, batch=500, interval="0.05")
    outcomes = []
    for mode in ("fast", "immediate"):  # a clean shutdown, then a crash of the server
        def newest() -> int:
            return max((int(p.parent.name[4:]) for p in ck.glob("chk-*/manifest.json")), default=0)

        seen = newest()
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        start = time.monotonic()
        while proc.poll() is None and newest() < seen + 2 and time.monotonic() - start < 120:
            time.sleep(0.02)
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "restart", str(postgres_server["dir"]), mode],
                       check=True, timeout=120)
        _, err = proc.communicate(timeout=300)
        text = err.decode()
        if proc.returncode != 0:
            assert "DatabaseError" in text and "run again" in text, text[-2000:]  # stopped, clearly
        outcomes.append(proc.returncode)
        print(f"server restart ({mode}): the run {'rode through' if proc.returncode == 0 else 'stopped: ' + text[-300:]}")
    if any(outcomes):  # stopped with a clear error: a restart finishes it
        assert subprocess.run(cmd, env=env(), timeout=300).returncode == 0
    check_against_oracle(events_medium, dsn)


# --- the Kafka runtime ------------------------------------------------------------------------------

@pytest.fixture
def kafka_input(kafka_bootstrap: str, events_medium: Path) -> str:
    from kafka_util import create_topic, load

    topic = f"pg-in-{uuid.uuid4().hex[:6]}"
    create_topic(kafka_bootstrap, topic, 2)
    load(kafka_bootstrap, events_medium, topic)
    return f"kafka:{kafka_bootstrap}/{topic}"


@pytest.mark.parametrize("crashes", [
    # early commits: how many a worker makes before its input ends depends on the machine's speed (timed)
    ["after_prepare@1"], ["after_kafka_commit@1"], ["between_sink_commits@1"], ["after_sink_commit@2"],
    ["after_commit@1"], ["after_kafka_commit@1", "during_restore"],
])
def test_kafka_runtime_killed_at_each_failpoint_is_exactly_once(postgres_dsn: str, kafka_input: str,
                                                                events_medium: Path, tmp_path: Path,
                                                                crashes: list[str]) -> None:
    dsn = fresh_database(postgres_dsn)
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE)
    cmd = sluice_cmd(pipeline, kafka_input, dsn, None, app=f"pg-{uuid.uuid4().hex[:6]}", batch=2000)
    for fp in crashes:
        assert subprocess.run(cmd, env=env(fp), timeout=300).returncode == -9, f"the run did not die at {fp}"
    assert subprocess.run(cmd, env=env(), timeout=300).returncode == 0
    check_against_oracle(events_medium, dsn)


def test_kafka_runtime_killed_at_random_many_times_is_exactly_once(postgres_dsn: str, kafka_input: str,
                                                                   events_medium: Path, tmp_path: Path) -> None:
    from pg_util import query

    dsn = fresh_database(postgres_dsn)
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE)
    cmd = sluice_cmd(pipeline, kafka_input, dsn, None, app=f"pg-{uuid.uuid4().hex[:6]}", batch=500)

    def progressed(since: float) -> bool:  # a marker moved since the process started
        rows = query(dsn, "SELECT count(*) FROM sluice_commits WHERE committed_at > now() - make_interval(secs => %s)",
                     (time.monotonic() - since,)) if _has_markers(dsn) else [(0,)]
        return bool(rows[0][0])

    kills = kill_at_random(cmd, 6, random.Random(5), progressed, max_s=0.3)
    # how many kills land before the job is done depends on the machine's speed (a restarted worker
    # rejoins the group for seconds); at least one must land mid-run, after a commit
    assert kills >= 1, "the job finished before it could be killed; make the input larger"
    check_against_oracle(events_medium, dsn)


def _has_markers(dsn: str) -> bool:
    from pg_util import query

    return bool(query(dsn, "SELECT to_regclass('sluice_commits') IS NOT NULL")[0][0])
