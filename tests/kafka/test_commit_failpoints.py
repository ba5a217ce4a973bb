"""Exactly-once across the epoch commit, under the Kafka runtime and under sl.run, for every kind of
participant. Under the Kafka runtime a worker
reads a topic and writes its windows to a Kafka topic (the worker's transaction) and to a directory of
JSON Lines part files, and its click records to a directory of CSV part files (the task's own sinks,
committed after the Kafka transaction that records them). The worker is killed (SIGKILL) at each named
failpoint of the commit path; a restart then finishes, and every output equals the DuckDB oracle: nothing
lost, nothing twice. Under sl.run the same flow runs with a checkpoint directory and the Kafka sink is a
participant too (staged, then committed with a marker in its own transaction: connectors/kafka_staged.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import ROOT
from kafka_util import create_topic, frame, load, read_committed

pytestmark = pytest.mark.slow

PIPELINE = '''
import sys
from datetime import timedelta
import sluice as sl

bootstrap, src, out, windows_dir, clicks_dir = sys.argv[1:6]
flow = sl.Flow("eo")
events = flow.read("in", sl.KafkaSource(src, bootstrap, key="user_id"),
                   schema={"timestamp": int, "user_id": str, "event_type": str, "metrics": {"value": float}})
windows = (events.event_time("timestamp", timedelta(seconds=5)).key_by("user_id")
                 .window("per_minute", sl.Tumbling(timedelta(minutes=1)), n=sl.agg.count(),
                         total=sl.agg.sum("metrics.value")))
windows.write("to_kafka", sl.KafkaSink(out, bootstrap, key="user_id"))
windows.write("to_files", sl.JsonLinesSink(windows_dir, rows_per_file=500))
events.filter(sl.col("event_type") == "click").select("timestamp", "user_id").write(
    "clicks", sl.CsvSink(clicks_dir, rows_per_file=300))
'''


def sluice_run(pipeline: Path, bootstrap: str, app: str, args: list[str], failpoints: str | None,
               checkpoints: Path | None = None) -> int:
    """`sluice run` as a process: under the Kafka runtime, or (with `checkpoints`) under sl.run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SLUICE_FAILPOINTS", None)
    if failpoints:
        env["SLUICE_FAILPOINTS"] = failpoints
    cmd = [sys.executable, "-m", "sluice.cli.main", "run", str(pipeline), "--batch-size", "2000", "--quiet"]
    if checkpoints is None:
        cmd += ["--broker", f"kafka://{bootstrap}", "--app-id", app, "--instance", "w0", "--until-end",
                "--commit-interval", "0.1"]
    else:
        cmd += ["--checkpoint-dir", str(checkpoints), "--checkpoint-interval", "0"]
    return subprocess.run([*cmd, "--", bootstrap, *args], env=env, timeout=300).returncode


def parts(directory: Path, suffix: str) -> pl.DataFrame:
    files = sorted(directory.rglob(f"part-*{suffix}"))
    assert not list(directory.rglob("*.stage")), "staged files left behind"
    read = pl.read_ndjson if suffix == ".jsonl" else pl.read_csv
    return pl.concat([read(f) for f in files if f.stat().st_size]) if files else pl.DataFrame()


@pytest.mark.parametrize(("runtime", "crashes"), [
    # under the Kafka runtime, the first commit: how many commits a worker makes before its input ends
    # depends on the machine's speed (they are timed); sl.run checkpoints after every batch here
    ("kafka", ["after_prepare@1"]),
    ("kafka", ["after_kafka_commit@1"]),
    ("kafka", ["between_sink_commits@1"]),
    ("kafka", ["after_commit@1"]),
    ("kafka", ["after_kafka_commit@1", "during_restore"]),
    ("sl.run", ["after_prepare@3"]),
    ("sl.run", ["after_manifest@3"]),
    ("sl.run", ["between_sink_commits@3"]),
    ("sl.run", ["between_sink_commits@5"]),
    ("sl.run", ["after_commit@3"]),
    ("sl.run", ["after_manifest@2", "during_restore"]),
])
def test_killed_at_each_failpoint_then_restarted_is_exactly_once(kafka_bootstrap: str, events_medium: Path,
                                                                  tmp_path: Path, runtime: str,
                                                                  crashes: list[str]) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out = f"eo-in-{tag}", f"eo-out-{tag}"
    create_topic(kafka_bootstrap, src, 2)
    create_topic(kafka_bootstrap, out, 2)
    load(kafka_bootstrap, events_medium, src)
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE)
    windows_dir, clicks_dir = tmp_path / "windows", tmp_path / "clicks"
    args = [src, out, str(windows_dir), str(clicks_dir)]
    checkpoints = tmp_path / "checkpoints" if runtime == "sl.run" else None
    for fp in crashes:
        code = sluice_run(pipeline, kafka_bootstrap, f"eo-{tag}", args, fp, checkpoints)
        assert code == -9, f"the run did not die at {fp}"
    assert sluice_run(pipeline, kafka_bootstrap, f"eo-{tag}", args, None, checkpoints) == 0

    events = pl.read_ndjson(events_medium)
    con = duckdb.connect()
    con.register("ev", events.select("timestamp", "user_id", "event_type", pl.col("metrics").struct.field("value")).to_arrow())
    want = con.sql("""SELECT user_id, (timestamp // 60000) * 60000 AS window_start, count(*) AS n, sum(value) AS total
                      FROM ev GROUP BY ALL ORDER BY user_id, window_start""").pl()
    want_clicks = con.sql("SELECT timestamp, user_id FROM ev WHERE event_type = 'click' ORDER BY ALL").pl()
    assert want.height > 1000 and want_clicks.height > 1000

    def same_windows(got: pl.DataFrame, where: str) -> None:
        got = got.select("user_id", "window_start", "n", "total").sort("user_id", "window_start")
        assert got.height == want.height, f"{where}: {got.height} windows, the oracle {want.height}"
        assert got.drop("total").equals(want.drop("total").cast(got.drop("total").schema)), where
        assert ((got["total"] - want["total"]).abs() <= 1e-6 * want["total"].abs().clip(lower_bound=1)).all(), where

    same_windows(frame(read_committed(kafka_bootstrap, out)), "the Kafka topic")
    same_windows(parts(windows_dir, ".jsonl"), "the JSON Lines part files")
    got_clicks = parts(clicks_dir, ".csv").sort("timestamp", "user_id")
    assert got_clicks.equals(want_clicks.cast(got_clicks.schema)), "the CSV part files"
