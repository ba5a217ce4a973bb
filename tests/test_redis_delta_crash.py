"""kill -9 a checkpointed `sl.run` that reads a file (with bad lines, dead-lettered) and writes Delta tables
and Redis: at each failpoint of the commit path, and at random moments. After a restart every target equals
the DuckDB oracle over the input: the appended windows once each, the accumulating MERGE (target.n +
source.n, where an epoch applied twice would show) per user, the Redis hashes, and the dead letters."""

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

pytestmark = pytest.mark.slow

PIPELINE = '''
import sys
from datetime import timedelta
import sluice as sl

events, appended, totals, dead, redis_url, tag = sys.argv[1:7]
flow = sl.Flow("eo")
ev = flow.read("in", sl.JsonLinesSource(events), schema={"timestamp": int, "user_id": str, "event_type": str},
               on_error="dead_letter")
windows = (ev.event_time("timestamp", timedelta(seconds=5)).key_by("user_id")
             .window("per_minute", sl.Tumbling(timedelta(minutes=1)), n=sl.agg.count()))
windows.write("appended", sl.DeltaSink(appended))
windows.select("user_id", "n").write("totals", sl.DeltaSink(totals, mode="merge", merge=sl.DeltaMerge(
    on="user_id", update={"n": "target.n + source.n"}, combine={"n": "sum"})))
windows.write("cache", sl.RedisSink(redis_url, key=tag + ":{user_id}:{window_start}", value=["n"]))
ev.dead_letters.write("dead", sl.DeltaSink(dead, mode="merge", merge=sl.DeltaMerge(on="position")))
'''

BAD = ['{"timestamp": "not a number", "user_id": "u1", "event_type": "click"}', "{broken json", "[1, 2, 3]"]


@pytest.fixture(scope="module")
def events(events_medium: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 60,000 events with bad lines spread through them."""
    lines = events_medium.read_text().splitlines()
    for i, at in enumerate(range(5_000, len(lines), 9_000)):
        lines.insert(at, BAD[i % len(BAD)])
    path = tmp_path_factory.mktemp("bad") / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


class Job:
    def __init__(self, tmp: Path, events: Path, redis_url: str) -> None:
        self.tmp, self.events, self.redis_url = tmp, events, redis_url
        self.tag = uuid.uuid4().hex[:8]
        (tmp / "pipeline.py").write_text(PIPELINE)
        self.args = [str(events), str(tmp / "appended"), str(tmp / "totals"), str(tmp / "dead"), redis_url, self.tag]

    def command(self, interval: str, batch_size: int = 3000) -> list[str]:
        return [sys.executable, "-m", "sluice.cli.main", "run", str(self.tmp / "pipeline.py"), "--batch-size", str(batch_size),
                "--quiet", "--checkpoint-dir", str(self.tmp / "ck"), "--checkpoint-interval", interval, "--", *self.args]

    def env(self, failpoints: str | None) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        env.pop("SLUICE_FAILPOINTS", None)
        if failpoints:
            env["SLUICE_FAILPOINTS"] = failpoints
        return env

    def run(self, failpoints: str | None) -> int:
        return subprocess.run(self.command("0"), env=self.env(failpoints), timeout=300).returncode

    def check(self) -> None:
        con = duckdb.connect()
        good = [ln for ln in self.events.read_text().splitlines() if ln not in BAD]
        con.register("ev", pl.read_ndjson("\n".join(good).encode()).select("timestamp", "user_id").to_arrow())
        want = con.sql("SELECT user_id, (timestamp // 60000) * 60000 AS window_start, count(*) AS n "
                       "FROM ev GROUP BY ALL ORDER BY ALL").pl()
        want_totals = con.sql("SELECT user_id, count(*) AS n FROM ev GROUP BY ALL ORDER BY ALL").pl()
        assert want.height > 1000

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

        dead = pl.read_delta(str(self.tmp / "dead"))
        bad_lines = sum(1 for ln in self.events.read_text().splitlines() if ln in BAD)
        assert dead.height == bad_lines and dead["position"].n_unique() == bad_lines, "the dead letters"
        assert not list((self.tmp / "ck" / "staging").rglob("*.arrow")), "staged files left behind"


@pytest.mark.parametrize("crashes", [
    ["after_prepare@3"], ["after_manifest@3"], ["between_sink_commits@3"], ["between_sink_commits@8"],
    ["after_commit@3"], ["after_manifest@2", "during_restore"], ["after_manifest@4", "after_prepare@2"],
])
def test_killed_at_a_failpoint_then_resumed_is_exactly_once(events: Path, redis_url: str, tmp_path: Path,
                                                             crashes: list[str]) -> None:
    job = Job(tmp_path, events, redis_url)
    for fp in crashes:
        assert job.run(fp) == -9, f"the run did not die at {fp}"
    assert job.run(None) == 0
    job.check()


def test_killed_at_random_moments_many_times_is_exactly_once(events: Path, redis_url: str, tmp_path: Path) -> None:
    job = Job(tmp_path, events, redis_url)
    rng = random.Random("redis-delta-kills")
    kills = 0
    ck = tmp_path / "ck"

    def newest() -> int:
        return max((int(p.parent.name[4:]) for p in ck.glob("chk-*/manifest.json")), default=0)

    while True:
        seen = newest()
        # small batches: many epochs, so a kill lands mid-run however fast the machine is
        proc = subprocess.Popen(job.command("0.02", batch_size=1000), env=job.env(None), stderr=subprocess.PIPE)
        if kills < 8:
            while proc.poll() is None and newest() <= seen:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                kills += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
        break
    print(f"killed {kills} times")
    assert kills >= 4, "the run finished before it could be killed often; make the input larger"
    job.check()
