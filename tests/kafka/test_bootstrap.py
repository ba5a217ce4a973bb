"""One way to name a Kafka cluster everywhere: `kafka://HOST:PORT` and `HOST:PORT[,HOST:PORT]` are both
accepted by KafkaSource, KafkaSink, DeadLetterTopic, KafkaRuntime and `sluice run --broker`; --broker
takes a directory for the embedded log, and a value that could be either is an error, never a guess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sluice as sl
from kafka_util import create_topic, frame, read_committed

ROOT = Path(__file__).resolve().parents[2]


def sluice(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SLUICE_BROKER", None)
    return subprocess.run([sys.executable, "-m", "sluice.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_sources_sinks_and_runtime_take_both_forms(kafka_bootstrap: str) -> None:
    create_topic(kafka_bootstrap, "bs-both", 2)
    flow = sl.Flow("both")
    flow.read("rows", sl.MemorySource([{"n": i} for i in range(10)])).write(
        "out", sl.KafkaSink("bs-both", f"kafka://{kafka_bootstrap}"))
    sl.run(flow)
    got = sl.CollectSink()
    back = sl.Flow("back")
    back.read("in", sl.KafkaSource("bs-both", f"kafka://{kafka_bootstrap}"), schema={"n": int}).write("c", got)
    sl.run(back)
    assert sorted(got.frame()["n"].to_list()) == list(range(10))
    assert sl.KafkaSource("t", f"kafka://{kafka_bootstrap}").bootstrap == kafka_bootstrap
    assert sl.DeadLetterTopic("t", "kafka://a:1,kafka://b:2").bootstrap == "a:1,b:2"
    assert sl.KafkaRuntime(app_id="x", bootstrap="kafka://a:1,b:2").bootstrap == "a:1,b:2"
    assert sl.KafkaSink("t", "a:1,b:2").bootstrap == "a:1,b:2"


@pytest.mark.parametrize("bad", ["kafka://", "kafka://host", "host:port", "a:1,,b:2", "http://a:1"])
def test_a_malformed_bootstrap_is_a_clear_error(bad: str) -> None:
    with pytest.raises(sl.PlanError, match="HOST:PORT"):
        sl.KafkaSink("t", bad)


def test_broker_host_port_without_the_prefix_runs_on_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    create_topic(kafka_bootstrap, "bs-in", 2)
    create_topic(kafka_bootstrap, "bs-out", 2)
    load = sl.Flow("load")
    load.read("rows", sl.MemorySource([{"n": i} for i in range(50)])).write("out", sl.KafkaSink("bs-in", kafka_bootstrap))
    sl.run(load)
    pipeline = tmp_path / "p.py"
    pipeline.write_text("import sluice as sl\nflow = sl.Flow('bs')\n"
                        "flow.read('in', sl.Topic('bs-in'), schema={'n': int}).write('out', sl.Topic('bs-out'))\n")
    r = sluice("run", str(pipeline), "--broker", kafka_bootstrap, "--app-id", "bs", "--until-end", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["records"] == 50
    assert sorted(frame(read_committed(kafka_bootstrap, "bs-out"))["n"].to_list()) == list(range(50))
    assert not (tmp_path / kafka_bootstrap).exists()  # not taken for a log folder


def test_broker_directory_is_the_embedded_log_and_ambiguity_is_an_error(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.py"
    pipeline.write_text("import sluice as sl\nflow = sl.Flow('bs')\n"
                        "flow.read('in', sl.MemorySource([{'n': 1}])).write('out', sl.Topic('t'))\n")
    r = sluice("run", str(pipeline), "--broker", "./mylog", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mylog" / "t").is_dir()
    r = sluice("run", str(pipeline), "--broker", "kafka1", "-q", cwd=tmp_path)  # a host without port? a new folder?
    assert r.returncode == 1 and r.stderr.startswith("sluice: error:") and "Traceback" not in r.stderr
    assert "kafka1:9092" in r.stderr and "./kafka1" in r.stderr
    assert not (tmp_path / "kafka1").exists()
    (tmp_path / "localhost:9092").mkdir()  # a folder with the name of an address
    r = sluice("run", str(pipeline), "--broker", "localhost:9092", "-q", cwd=tmp_path)
    assert r.returncode == 1 and "kafka://localhost:9092" in r.stderr and "./localhost:9092" in r.stderr
    r = sluice("run", "--help", cwd=tmp_path)
    assert "HOST:PORT" in r.stdout and "kafka://HOST:PORT" in r.stdout and "directory" in r.stdout
