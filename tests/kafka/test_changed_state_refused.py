"""Under the Kafka runtime too, a task's state is restored only if the step it belongs to is unchanged: a
worker started with a changed window is refused with the step and the change named."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from test_task_isolation import produce

import sluice as sl
from kafka_util import create_topic, frame, read_committed
from sluice.checkpoint.store import IncompatibleCheckpointError


def window_flow(source: str, sink: str, bootstrap: str, size_s: int, name: str = "per_user") -> sl.Flow:
    flow = sl.Flow("windows")
    (flow.read("events", sl.KafkaSource(source, bootstrap, key="user_id"), schema={"user_id": str, "seq": int, "ts": int})
         .event_time("ts", watermark=timedelta(seconds=0)).key_by("user_id")
         .window(name, sl.Tumbling(timedelta(seconds=size_s)), n=sl.agg.count())
         .write("out", sl.KafkaSink(sink, bootstrap, key="user_id")))
    return flow


def test_changed_window_is_refused_on_restore(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out = f"fp-in-{tag}", f"fp-out-{tag}"
    create_topic(kafka_bootstrap, src, 2)
    create_topic(kafka_bootstrap, out, 2)
    produce(kafka_bootstrap, src, users=4, per_user=30)
    rt = sl.KafkaRuntime(app_id=f"fp-{tag}", bootstrap=kafka_bootstrap, until_end=True)
    sl.run_worker(window_flow(src, out, kafka_bootstrap, 10), rt)
    first = frame(read_committed(kafka_bootstrap, out))
    assert first.height > 0
    with pytest.raises(IncompatibleCheckpointError, match=r"step 'per_user' changed since the state of task \d+ .*"
                                             r"window\.size: was 10000 ms, now 20000 ms"):
        sl.run_worker(window_flow(src, out, kafka_bootstrap, 20), rt)
    sl.run_worker(window_flow(src, out, kafka_bootstrap, 10), rt)  # unchanged: resumes, nothing new to do
    assert frame(read_committed(kafka_bootstrap, out)).height == first.height


def test_renamed_window_is_refused_on_restore(kafka_bootstrap: str) -> None:
    """A renamed window would start empty on every task (its windows open at the snapshot lost)."""
    tag = uuid.uuid4().hex[:6]
    src, out = f"rn-in-{tag}", f"rn-out-{tag}"
    create_topic(kafka_bootstrap, src, 2)
    create_topic(kafka_bootstrap, out, 2)
    produce(kafka_bootstrap, src, users=4, per_user=30)
    rt = sl.KafkaRuntime(app_id=f"rn-{tag}", bootstrap=kafka_bootstrap, until_end=True)
    sl.run_worker(window_flow(src, out, kafka_bootstrap, 10), rt)
    with pytest.raises(IncompatibleCheckpointError, match=r"step 'per_user' \(window\) is in the state of task \d+ .*"
                                             r"'counts', a window step like it, is new: renamed\?"):
        sl.run_worker(window_flow(src, out, kafka_bootstrap, 10, name="counts"), rt)
