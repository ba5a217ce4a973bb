"""A followed Kafka source hands control back while its topic is quiet, so the run's timed checkpoints
commit the records it read just before (the output does not wait for more input)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from confluent_kafka import Producer

from kafka_util import create_topic
from log_util import wait_for

FOLLOW_RUN = """
import sys
import sluice as sl
bootstrap, topic, root, checkpoints = sys.argv[1:5]
flow = sl.Flow("follow")
flow.read("in", sl.KafkaSource(topic, bootstrap, follow=True, poll_timeout_s=0.2), schema={"v": int}) \\
    .write("out", sl.LogSink("out", root=root, partitions=1))
sl.run(flow, checkpoint_dir=checkpoints, checkpoint_interval=2.0)
"""


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
