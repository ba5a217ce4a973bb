"""kill -9 a checkpointed `sl.run` of the Spark job as written: a file of out-of-order events → 5-minute
windows sliding by 1 minute that emit deltas (count, average, max, p99 per event type) → a Delta table
MERGEd with `event_count = target.event_count + source.event_count` and a count-weighted average, the late
records (beyond the allowed lateness) appended to a second table. At each failpoint of the commit path,
and at random moments: after a restart the tables equal the DuckDB oracle, so no delta was applied twice
(an accumulating MERGE would show it) and none was lost."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

MIN = 60_000
DELAY, SIZE, SLIDE, LATENESS = 5_000, 5 * MIN, MIN, 2 * MIN

PIPELINE = '''
import sys
from datetime import timedelta
import sluice as sl

events, windows, late = sys.argv[1:4]
flow = sl.Flow("deltas")
w = (flow.read("in", sl.JsonLinesSource(events),
               schema={"id": int, "timestamp": int, "event_type": str, "response_time": float})
         .event_time("timestamp", timedelta(seconds=5)).key_by("event_type")
         .window("per_type", sl.Sliding(timedelta(minutes=5), timedelta(minutes=1)),
                 emit=sl.Emit.each_batch(updates="deltas"), allowed_lateness=timedelta(minutes=2),
                 event_count=sl.agg.count(), avg=sl.agg.mean("response_time"), max=sl.agg.max("response_time"),
                 p99=sl.agg.percentile("response_time", 0.99)))
w.write("windows", sl.DeltaSink(windows, mode="merge", merge=sl.DeltaMerge(
    on=["event_type", "window_start"], update={
        "event_count": "target.event_count + source.event_count",
        "avg": "(target.avg * target.event_count + source.avg * source.event_count)"
               " / (target.event_count + source.event_count)",
        "max": "GREATEST(target.max, source.max)",
        "p99": "source.p99"})))
w.late.select("id", "missed_window_start").write("late", sl.DeltaSink(late))
'''


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24,000 events, 0.25 s apart, up to 150 s out of order (many beyond the 5 s watermark delay, some
    beyond the 2 minutes of lateness), 12 event types."""
    rnd = random.Random(23)
    path = tmp_path_factory.mktemp("deltas") / "events.jsonl"
    with path.open("w") as f:
        for i in range(24_000):
            t = 1_767_225_600_000 + i * 250 - (rnd.randrange(0, 150_000, 100) if rnd.random() < 0.1 else 0)
            f.write(json.dumps({"id": i, "timestamp": t, "event_type": f"t{rnd.randrange(12)}",
                                "response_time": round(rnd.lognormvariate(3, 1), 3)}) + "\n")
    return path


def oracle(events: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per (event type, window): count, mean, max over the records the window holds; and the (id, window)
    pairs that came later than the lateness — from the watermark's definition."""
    df = pl.read_ndjson(events)
    t = df["timestamp"].to_numpy()
    w_prev = np.concatenate([[np.iinfo(np.int64).min // 2], np.maximum.accumulate(t)[:-1] - DELAY])
    pairs = df.select("id", "timestamp", "event_type", "response_time").with_columns(
        pl.Series("w_prev", w_prev),
        pl.int_ranges(0, SIZE // SLIDE).alias("j")).explode("j").with_columns(
        ((pl.col("timestamp") // SLIDE - pl.col("j")) * SLIDE).alias("window_start"))
    late = pl.col("window_start") + SIZE + LATENESS <= pl.col("w_prev")
    con = duckdb.connect()
    con.register("held", pairs.filter(~late).to_arrow())
    want = con.sql("SELECT event_type, window_start, count(*) AS event_count, avg(response_time) AS avg, "
                   "max(response_time) AS max FROM held GROUP BY ALL ORDER BY ALL").pl()
    missed = pairs.filter(late).select("id", missed_window_start="window_start").sort("id", "missed_window_start")
    return want, missed


class Job:
    def __init__(self, tmp: Path, events: Path) -> None:
        self.tmp, self.events = tmp, events
        (tmp / "pipeline.py").write_text(PIPELINE)
        self.args = [str(events), str(tmp / "windows"), str(tmp / "late")]

    def command(self, interval: str, batch_size: int) -> list[str]:
        return [sys.executable, "-m", "sluice.cli.main", "run", str(self.tmp / "pipeline.py"), "--batch-size",
                str(batch_size), "--quiet", "--checkpoint-dir", str(self.tmp / "ck"), "--checkpoint-interval",
                interval, "--", *self.args]

    def env(self, failpoints: str | None) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        env.pop("SLUICE_FAILPOINTS", None)
        if failpoints:
            env["SLUICE_FAILPOINTS"] = failpoints
        return env

    def run(self, failpoints: str | None) -> int:
        return subprocess.run(self.command("0", 1500), env=self.env(failpoints), timeout=300).returncode

    def check(self) -> None:
        want, missed = oracle(self.events)
        assert missed.height > 0 and want["event_count"].sum() > 100_000
        got = pl.read_delta(str(self.tmp / "windows")).sort("event_type", "window_start")
        assert got.height == want.height
        keys = ["event_type", "window_start", "event_count", "max"]
        assert got.select(keys).equals(want.select(keys).cast(got.select(keys).schema)), "the accumulating MERGE"
        assert ((got["avg"] - want["avg"]).abs() <= 1e-9 * want["avg"].abs()).all(), "the count-weighted average"
        late = pl.read_delta(str(self.tmp / "late")).sort("id", "missed_window_start")
        assert late.equals(missed.cast(late.schema)), "the late records"
        assert not list((self.tmp / "ck" / "staging").rglob("*.arrow")), "staged files left behind"


@pytest.mark.parametrize("crashes", [
    ["after_prepare@3"], ["after_manifest@3"], ["between_sink_commits@3"], ["after_sink_commit@5"],
    ["after_commit@3"], ["after_manifest@2", "during_restore"],
], ids=lambda c: "+".join(c))
def test_killed_at_a_failpoint_then_resumed_applies_every_delta_once(events: Path, tmp_path: Path,
                                                                     crashes: list[str]) -> None:
    job = Job(tmp_path, events)
    for fp in crashes:
        assert job.run(fp) == -9, f"the run did not die at {fp}"
    assert job.run(None) == 0
    job.check()


def test_killed_at_random_moments_many_times_applies_every_delta_once(events: Path, tmp_path: Path) -> None:
    job = Job(tmp_path, events)
    rng = random.Random("window-delta-kills")
    kills = 0
    ck = tmp_path / "ck"

    def newest() -> int:
        return max((int(p.parent.name[4:]) for p in ck.glob("chk-*/manifest.json")), default=0)

    while True:
        seen = newest()
        proc = subprocess.Popen(job.command("0.02", batch_size=500), env=job.env(None), stderr=subprocess.PIPE)
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
