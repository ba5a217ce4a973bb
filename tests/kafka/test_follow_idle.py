"""A followed Kafka source hands control back while its topic is quiet, so the run's timed checkpoints
commit the records it read just before (the output does not wait for more input)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from confluent_kafka import Producer

from kafka_util import create_topic
from sluice.connectors.log import Log

FOLLOW_RUN = """
import sys
import sluice as sl
bootstrap, topic, root, checkpoints = sys.argv[1:5]
flow = sl.Flow("follow")
flow.read("in", sl.KafkaSource(topic, bootstrap, follow=True, poll_timeout_s=0.2), schema={"v": int}) \\
    .write("out", sl.LogSink("out", root=root, partitions=1))
sl.run(flow, checkpoint_dir=checkpoints, checkpoint_interval=2.0)
"""


def committed_values(root: Path) -> list[int]:
    if not (root / "out" / "topic.json").exists():
        return []
    part = Log(root).partition("out", 0)
    try:
        values = [b.value(i) for b, s in part.read(0) for i in range(s, b.count)]
    finally:
        part.close()
    return sorted(pl.read_ndjson(b"\n".join(values))["v"].to_list()) if values else []


def wait_for(root: Path, expected: list[int], run: subprocess.Popen[bytes]) -> list[int]:
    deadline = time.monotonic() + 90  # generous: the run commits every 2 s; this only bounds a broken run
    got = committed_values(root)
    while got != expected and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
        got = committed_values(root)
    return got


def test_followed_kafka_source_commits_its_last_records_while_the_topic_is_idle(kafka_bootstrap: str,
                                                                                tmp_path: Path) -> None:
    topic = "follow-idle"
    create_topic(kafka_bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    run = subprocess.Popen([sys.executable, "-c", FOLLOW_RUN, kafka_bootstrap, topic, str(tmp_path),
                            str(tmp_path / "ckpt")], stderr=subprocess.PIPE)
    try:
        producer.produce(topic, b'{"v": 1}')
        producer.flush(30)
        assert wait_for(tmp_path, [1], run) == [1]
        producer.produce(topic, b'{"v": 2}')  # read just after the checkpoint that published 1
        producer.flush(30)
        assert wait_for(tmp_path, [1, 2], run) == [1, 2]
        assert run.poll() is None, run.stderr.read().decode() if run.stderr else ""
    finally:
        run.terminate()
        run.wait(30)
