"""The `sluice` command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
SLUICE = [sys.executable, "-m", "sluice.cli.main"]


def sluice(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([*SLUICE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    r = sluice("--help", cwd=tmp_path)
    assert r.returncode == 0
    for word in ("run", "explain", "demo", "log"):
        assert word in r.stdout


def test_run_and_explain_the_readme_example(tmp_path: Path) -> None:
    example = ROOT / "examples" / "clicks.py"
    r = sluice("explain", str(example), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "clicks: window [stateful]" in r.stdout
    r = sluice("run", str(example), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "200,000 records read" in r.stdout
    out = pl.read_parquet(tmp_path / "out" / "clicks" / "**" / "*.parquet")
    assert out.columns == ["user_id", "window_start", "window_end", "clicks", "p99_ms", "date", "hour"]  # partition columns too
    assert out["clicks"].sum() > 15_000


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ts": 1}\n{"ts": \n')
    pipeline = tmp_path / "p.py"
    pipeline.write_text(
        "import sluice as sl\n"
        "flow = sl.Flow('p')\n"
        f"flow.read('src', sl.JsonLinesSource({str(bad)!r}), schema={{'ts': int}}).write('out', sl.ConsoleSink())\n"
    )
    r = sluice("run", str(pipeline), "-q", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith(f"sluice: error: step 'src' failed at {bad}:2")
    assert "Traceback" not in r.stderr


def test_missing_pipeline_file(tmp_path: Path) -> None:
    r = sluice("run", "nope.py", cwd=tmp_path)
    assert r.returncode != 0 and "no such pipeline file" in r.stderr


def test_demo_runs_and_log_can_be_inspected(tmp_path: Path) -> None:
    r = sluice("demo", "--events", "60000", "--dir", "demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "analytics read 60,000 events" in r.stdout
    files = list((tmp_path / "demo" / "results" / "user_minute").rglob("*.parquet"))
    assert files and all("hour=" in str(f) for f in files)
    r = sluice("log", "topics", "--root", "demo/log", cwd=tmp_path)
    assert "events: 2 partition(s), 60,000 records" in r.stdout
    r = sluice("log", "tail", "events", "-n", "2", "--root", "demo/log", cwd=tmp_path)
    assert r.stdout.count('"event_id"') == 4


PIPELINE_WITH_ARGS = """
import argparse
from datetime import timedelta

import sluice as sl

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--output", required=True)
args = ap.parse_args()


class Running(sl.KeyedProcessFunction):
    def open(self, ctx):
        self.total = ctx.value_state("total")

    def process(self, record, ctx):
        total = self.total.value(0) + record["n"]
        self.total.update(total)
        yield {"user": record["user"], "total": total}


flow = sl.Flow("args")
(flow.read("src", sl.JsonLinesSource(args.input), schema={"ts": int, "user": str, "n": int})
     .event_time("ts", timedelta(0)).key_by("user").process("running", Running(), schema={"user": str, "total": int})
     .write("out", sl.JsonLinesSink(args.output)))
"""


def test_arguments_after_a_double_dash_go_to_the_pipeline_and_state_can_be_rocksdb(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"ts": 1, "user": "a", "n": 2}\n{"ts": 2, "user": "a", "n": 3}\n')
    pipeline = tmp_path / "p.py"
    pipeline.write_text(PIPELINE_WITH_ARGS)
    r = sluice("explain", str(pipeline), "--", "--input", "in.jsonl", "--output", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = sluice("run", str(pipeline), "-q", "--state", "rocksdb", "--state-dir", "state",
               "--", "--input", "in.jsonl", "--output", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = pl.read_ndjson(list((tmp_path / "out").rglob("*.jsonl"))).sort("total")
    assert rows.to_dicts() == [{"user": "a", "total": 2}, {"user": "a", "total": 5}]
    assert (tmp_path / "state" / "args" / "running" / "CURRENT").exists()  # a RocksDB directory
    r = sluice("run", str(pipeline), "--state", "lmdb", "--", "--input", "in.jsonl", "--output", "out", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice: 'lmdb'" in r.stderr


def test_progress_starts_at_once_and_ticks_while_the_first_block_is_processed(tmp_path: Path) -> None:
    pipeline = tmp_path / "slow.py"
    pipeline.write_text(
        "import time\n"
        "import sluice as sl\n"
        "def slow(r):\n"
        "    if r['i'] == 0:\n"
        "        time.sleep(2.5)  # the first (and only) block takes a while\n"
        "    return r\n"
        "flow = sl.Flow('slow')\n"
        "flow.read('src', sl.MemorySource({'i': list(range(10))})).map(slow).write('out', sl.CollectSink())\n"
    )
    r = sluice("run", str(pipeline), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "  running flow 'slow'"
    ticks = [line for line in lines if line.startswith("  … 0 records in ")]
    assert len(ticks) >= 2, r.stderr  # one a second while the block is still in the pipeline
    assert "10 records read" in r.stdout


def test_a_workers_progress_lines_carry_its_name(capsys) -> None:
    from sluice.cli.main import Progress

    with Progress("flow 'f' as worker w1", prefix="[w1]", interval_s=0.05) as progress:
        progress(42, 0.1)
        import time

        time.sleep(0.2)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[w1]  running flow 'f' as worker w1"
    assert any(line.startswith("[w1]  … 42 records in ") for line in err[1:]), err


def test_allow_rename_is_taken_on_kafka_and_checked_before_joining(tmp_path: Path) -> None:
    """`--allow-rename` reaches the Kafka runtime (it was refused there before); a pair whose old name is
    still in the flow, or whose new one is not, is one clear line before any broker is contacted (the
    broker given here does not exist)."""
    pipeline = tmp_path / "p.py"
    pipeline.write_text(
        "import sluice as sl\n"
        "flow = sl.Flow('p')\n"
        "flow.read('src', sl.KafkaSource('in', '127.0.0.1:9', key='k'), schema={'k': str}).write(\n"
        "    'out', sl.KafkaSink('out', '127.0.0.1:9', key='k'))\n")
    for pair, said in (("src=out", "allow_rename src=out: the flow still has a step 'src'"),
                       ("old=new", "allow_rename old=new: the flow has no step 'new'")):
        r = sluice("run", str(pipeline), "-q", "--broker", "kafka://127.0.0.1:9", "--allow-rename", pair, cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"sluice: error: {said}"), r.stderr
        assert "Traceback" not in r.stderr
