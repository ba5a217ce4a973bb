"""Under the Kafka runtime, late and dead-lettered records of streams nobody writes are counted per step
in the worker's result (summed over its tasks), as under sl.run."""

from __future__ import annotations

import json
import logging
import random
import uuid
from datetime import timedelta

import pytest
from confluent_kafka import Producer

import sluice as sl
from kafka_util import create_topic, frame, read_committed

DELAY, SIZE = 2_000, 5_000


def test_late_and_dead_letters_are_counted_per_step(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out = f"aside-in-{tag}", f"aside-out-{tag}"
    create_topic(kafka_bootstrap, src, 2)
    create_topic(kafka_bootstrap, out, 2)
    rng = random.Random(3)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    late = bad = 0
    for part, key in enumerate("ab"):  # a task per partition, each with its own watermark
        times = sorted(range(0, 60_000, 200), key=lambda t: t + rng.uniform(0, 6_000))
        high = None
        for i, t in enumerate(times):
            if i % 50 == 7:
                p.produce(src, key=key.encode(), value=b'{"k": "' + key.encode() + b'", "t": ', partition=part)
                bad += 1
                continue
            late += high is not None and (t // SIZE + 1) * SIZE <= high - DELAY
            high = t if high is None else max(high, t)
            p.produce(src, key=key.encode(), value=json.dumps({"k": key, "t": t}).encode(), partition=part)
    assert p.flush(30) == 0
    assert late > 10

    flow = sl.Flow("aside")
    events = flow.read("events", sl.KafkaSource(src, kafka_bootstrap, key="k"), schema={"k": str, "t": int},
                       on_error="dead_letter")
    counts = events.event_time("t", timedelta(milliseconds=DELAY)).key_by("k").window(
        "w", sl.Tumbling(timedelta(milliseconds=SIZE)), n=sl.agg.count())
    counts.write("out", sl.KafkaSink(out, kafka_bootstrap, key="k"))
    with caplog.at_level(logging.WARNING, logger="sluice"):
        result = sl.run_worker(flow, sl.KafkaRuntime(app_id=f"aside-{tag}", until_end=True, batch_size=64))
    assert result.late == {"w": late}
    assert result.dead_letters == {"events": bad}
    assert sum(frame(read_committed(kafka_bootstrap, out))["n"]) == 2 * 300 - bad - late
    said = [r.getMessage() for r in caplog.records if "go nowhere" in r.getMessage()]
    assert len(said) == 2 and any("step 'w'" in m for m in said) and any("step 'events'" in m for m in said)
