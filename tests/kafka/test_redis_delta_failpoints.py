"""Exactly-once into Delta Lake and Redis under the Kafka runtime: a worker reads a two-partition topic and
writes each task's windows to a Delta table (append), an accumulating Delta MERGE (target.n + source.n: an
epoch applied twice would show) and Redis hashes. Each task stages its epoch where a task's next owner
finds it (Delta: <table>/_sluice_staging/; Redis: a staging list in Redis), its prepared transaction rides
in the task's snapshot inside the Kafka transaction, and the commit is fenced by the Delta app transaction
and the Redis epoch key. The worker is killed (SIGKILL) at each failpoint of the commit path and at random
moments; after a restart every target equals the DuckDB oracle."""

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
import redis

from conftest import ROOT
from kafka_util import create_topic, load

pytestmark = pytest.mark.slow

PIPELINE = '''
import sys
from datetime import timedelta
import sluice as sl

bootstrap, src, appended, totals, redis_url, tag = sys.argv[1:7]
flow = sl.Flow("eo")
events = flow.read("in", sl.KafkaSource(src, bootstrap, key="user_id"),
                   schema={"timestamp": int, "user_id": str, "event_type": str})
windows = (events.event_time("timestamp", timedelta(seconds=5)).key_by("user_id")
                 .window("per_minute", sl.Tumbling(timedelta(minutes=1)), n=sl.agg.count()))
windows.write("appended", sl.DeltaSink(appended))
windows.select("user_id", "n").write("totals", sl.DeltaSink(totals, mode="merge", merge=sl.DeltaMerge(
    on="user_id", update={"n": "target.n + source.n"}, combine={"n": "sum"})))
windows.write("cache", sl.RedisSink(redis_url, key=tag + ":{user_id}:{window_start}", value=["n"]))
'''


class Job:
    def __init__(self, tmp: Path, bootstrap: str, events: Path, redis_url: str) -> None:
        self.tmp, self.bootstrap, self.events, self.redis_url = tmp, bootstrap, events, redis_url
        self.tag = uuid.uuid4().hex[:6]
        self.src = f"rd-in-{self.tag}"
        create_topic(bootstrap, self.src, 2)
        load(bootstrap, events, self.src)
        (tmp / "pipeline.py").write_text(PIPELINE)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sluice.cli.main", "run", str(self.tmp / "pipeline.py"), "--batch-size", "2000",
                "--quiet", "--broker", f"kafka://{self.bootstrap}", "--app-id", f"rd-{self.tag}", "--instance", "w0",
                "--until-end", "--commit-interval", "0.1", "--", self.bootstrap, self.src,
                str(self.tmp / "appended"), str(self.tmp / "totals"), self.redis_url, self.tag]

    def env(self, failpoints: str | None) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        env.pop("SLUICE_FAILPOINTS", None)
        if failpoints:
            env["SLUICE_FAILPOINTS"] = failpoints
        return env

    def run(self, failpoints: str | None) -> int:
        return subprocess.run(self.command(), env=self.env(failpoints), timeout=300).returncode

    def check(self) -> None:
        con = duckdb.connect()
        con.register("ev", pl.read_ndjson(self.events).select("timestamp", "user_id").to_arrow())
        want = con.sql("SELECT user_id, (timestamp // 60000) * 60000 AS window_start, count(*) AS n "
                       "FROM ev GROUP BY ALL ORDER BY ALL").pl()
        want_totals = con.sql("SELECT user_id, count(*) AS n FROM ev GROUP BY ALL ORDER BY ALL").pl()
        got = pl.read_delta(str(self.tmp / "appended")).select("user_id", "window_start", "n").sort("user_id", "window_start")
        assert got.height == want.height, f"appended: {got.height} windows, the oracle {want.height}"
        assert got.equals(want.cast(got.schema)), "the appended Delta table"
        totals = pl.read_delta(str(self.tmp / "totals")).sort("user_id")
        assert totals.equals(want_totals.cast(totals.schema)), "the accumulating MERGE"
        r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        keys = list(r.scan_iter(match=f"{self.tag}:*", count=5000))
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, "n")
        cache = pl.DataFrame({"key": keys, "n": [int(v) for v in pipe.execute()]}).sort("key")
        want_cache = want.select((pl.lit(self.tag + ":") + pl.col("user_id") + ":" + pl.col("window_start").cast(pl.String))
                                 .alias("key"), "n").sort("key")
        assert cache.equals(want_cache.cast(cache.schema)), "the Redis hashes"
        assert not list((self.tmp / "appended" / "_sluice_staging").rglob("*.arrow")), "Delta staging left behind"
        assert not r.keys("sluice:staged:eo-cache-*"), "Redis staging left behind"


@pytest.mark.parametrize("crashes", [
    # the first commit: how many commits a worker makes before its input ends depends on the machine's speed
    ["after_prepare@1"], ["after_kafka_commit@1"], ["between_sink_commits@1"], ["after_commit@1"],
    ["after_kafka_commit@1", "during_restore"],
])
def test_killed_at_each_failpoint_then_restarted_is_exactly_once(kafka_bootstrap: str, events_medium: Path,
                                                                  redis_url: str, tmp_path: Path,
                                                                  crashes: list[str]) -> None:
    job = Job(tmp_path, kafka_bootstrap, events_medium, redis_url)
    for fp in crashes:
        assert job.run(fp) == -9, f"the worker did not die at {fp}"
    assert job.run(None) == 0
    job.check()


def test_killed_at_random_moments_then_restarted_is_exactly_once(kafka_bootstrap: str, events_medium: Path,
                                                                 redis_url: str, tmp_path: Path) -> None:
    job = Job(tmp_path, kafka_bootstrap, events_medium, redis_url)
    rng = random.Random("kafka-redis-delta")
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(job.command(), env=job.env(None), stderr=subprocess.PIPE)
        time.sleep(rng.uniform(3.0, 8.0))  # worker start-up (group join) takes a few seconds
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            kills += 1
    assert job.run(None) == 0
    # how many land before the job is done depends on the machine's speed; at least one must land mid-run
    assert kills >= 1, "the job finished before it could be killed; make the input larger"
    job.check()
