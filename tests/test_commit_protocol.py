"""The epoch commit under sl.run, for every kind of participant at once: a directory of part files, a
single JSON Lines file, the embedded log, and a user-written sink (SQLite with a marker row, as in
docs/sinks.md). The run is killed (SIGKILL) at each failpoint of the commit path, then resumed with the
same checkpoint directory; every output equals the DuckDB oracle: nothing lost, nothing twice."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import ROOT

PIPELINE = '''
import sqlite3, sys
from dataclasses import dataclass
from datetime import timedelta
import sluice as sl

events, windows_dir, clicks_file, log_dir, db = sys.argv[1:6]


@dataclass(frozen=True)
class SqliteSink:
    path: str

    def open(self, ctx):
        return SqliteWriter(self.path, ctx)


class SqliteWriter:
    def __init__(self, path, ctx):
        self.ctx, self.rows = ctx, []
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS w (user_id TEXT, window_start INTEGER, n INTEGER)")
        self.db.execute("CREATE TABLE IF NOT EXISTS marks (writer TEXT PRIMARY KEY, epoch INTEGER)")

    def write(self, df):
        self.rows += df.select("user_id", "window_start", "n").rows()

    def prepare(self, epoch):
        txn, self.rows = {"epoch": epoch, "rows": self.rows}, []
        return txn

    def commit(self, txn):
        if not txn:
            return
        with self.db:
            done = self.db.execute("SELECT epoch FROM marks WHERE writer = ?", (self.ctx.txn_prefix,)).fetchone()
            if done and done[0] >= txn["epoch"]:
                return
            self.db.executemany("INSERT INTO w VALUES (?, ?, ?)", txn["rows"])
            self.db.execute("INSERT INTO marks VALUES (?, ?) ON CONFLICT (writer) DO UPDATE SET epoch = excluded.epoch",
                            (self.ctx.txn_prefix, txn["epoch"]))

    def abort(self, txn):
        pass

    def recover(self, txn):
        self.rows = []
        if txn:
            self.commit(txn)

    def close(self):
        self.db.close()


flow = sl.Flow("eo")
ev = flow.read("in", sl.JsonLinesSource(events), schema={"timestamp": int, "user_id": str, "event_type": str})
windows = (ev.event_time("timestamp", timedelta(seconds=5)).key_by("user_id")
             .window("per_minute", sl.Tumbling(timedelta(minutes=1)), n=sl.agg.count()))
windows.write("to_dir", sl.JsonLinesSink(windows_dir, rows_per_file=400))
windows.write("to_log", sl.LogSink("windows", log_dir))
windows.write("to_db", SqliteSink(db))
ev.filter(sl.col("event_type") == "click").select("timestamp", "user_id").write("clicks", sl.JsonLinesSink(clicks_file))
'''


def run(tmp: Path, args: list[str], failpoints: str | None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SLUICE_FAILPOINTS", None)
    if failpoints:
        env["SLUICE_FAILPOINTS"] = failpoints
    cmd = [sys.executable, "-m", "sluice.cli.main", "run", str(tmp / "pipeline.py"), "--batch-size", "3000", "--quiet",
           "--checkpoint-dir", str(tmp / "ck"), "--checkpoint-interval", "0", "--", *args]
    return subprocess.run(cmd, env=env, timeout=300).returncode


@pytest.mark.parametrize("crashes", [
    ["after_prepare@3"], ["after_manifest@3"], ["between_sink_commits@3"], ["between_sink_commits@6"],
    ["after_commit@3"], ["after_manifest@2", "during_restore"], ["after_manifest@2", "after_prepare@4"],
])
def test_killed_at_each_failpoint_then_resumed_is_exactly_once(events_medium: Path, tmp_path: Path,
                                                                crashes: list[str]) -> None:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    args = [str(events_medium), str(tmp_path / "windows"), str(tmp_path / "clicks.jsonl"), str(tmp_path / "log"),
            str(tmp_path / "w.db")]
    for fp in crashes:
        assert run(tmp_path, args, fp) == -9, f"the run did not die at {fp}"
    assert run(tmp_path, args, None) == 0

    con = duckdb.connect()
    con.register("ev", pl.read_ndjson(events_medium).select("timestamp", "user_id", "event_type").to_arrow())
    want = con.sql("SELECT user_id, (timestamp // 60000) * 60000 AS window_start, count(*) AS n "
                   "FROM ev GROUP BY ALL ORDER BY ALL").pl()
    want_clicks = con.sql("SELECT timestamp, user_id FROM ev WHERE event_type = 'click' ORDER BY ALL").pl()

    def check(got: pl.DataFrame, where: str) -> None:
        got = got.select("user_id", "window_start", "n").sort("user_id", "window_start")
        assert got.equals(want.cast(got.schema)), f"{where}: {got.height} rows, the oracle {want.height}"

    parts = sorted((tmp_path / "windows").glob("part-*.jsonl"))
    assert not list((tmp_path / "windows").glob(".*stage*"))
    check(pl.concat([pl.read_ndjson(p) for p in parts]), "the part files")
    check(pl.DataFrame(sqlite3.connect(tmp_path / "w.db").execute("SELECT * FROM w").fetchall(),
                       schema=["user_id", "window_start", "n"], orient="row"), "the SQLite sink")
    import sluice as sl

    on_log = sl.CollectSink()
    read = sl.Flow("check")
    read.read("r", sl.LogSource("windows", tmp_path / "log"),
              schema={"user_id": str, "window_start": int, "n": int}).write("c", on_log)
    sl.run(read)
    check(on_log.frame(), "the embedded log")
    got_clicks = pl.read_ndjson(tmp_path / "clicks.jsonl").sort("timestamp", "user_id")
    assert got_clicks.equals(want_clicks.cast(got_clicks.schema)), "the single JSON Lines file"
