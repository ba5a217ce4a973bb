"""A key_by on another key than the input topic's goes through an internal repartition topic, with event
time carried across: w2 (per event type) over a topic keyed by user_id equals the oracle, in one worker
and in two worker processes of which one is killed -9 and replaced."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import polars as pl
import pytest
from test_workers import committed_total, worker

import oracle
import sluice as sl
from kafka_util import create_topic, frame, load, read_committed
from workloads import build


def assert_w2(got: pl.DataFrame, events: Path) -> None:
    exp = oracle.w2(oracle.flat_events(str(events)))
    oracle.assert_frames_match(got, exp, ["event_type", "window_start"],
                               approx={"p99_response_time": 0.01 + 1e-12})  # the sketch's documented bound


def test_w2_over_a_user_keyed_topic_in_one_worker(kafka_bootstrap: str, events_medium: Path) -> None:
    inp, out = "rp-events", "rp-w2"
    create_topic(kafka_bootstrap, inp, 4)
    create_topic(kafka_bootstrap, out, 4)
    load(kafka_bootstrap, events_medium, inp)
    flow = build("w2", sl.KafkaSource(inp, kafka_bootstrap, key="user_id"),
                 sl.KafkaSink(out, kafka_bootstrap, key="event_type"))
    sl.run_worker(flow, sl.KafkaRuntime(app_id="rp-one", until_end=True, batch_size=1000))
    assert_w2(frame(read_committed(kafka_bootstrap, out)), events_medium)
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    [name] = [t for t in topics if t.startswith("rp-one-") and t.endswith("-repartition")]
    internal = read_committed(kafka_bootstrap, name)
    assert internal and {h["sl.kind"] for _, h in internal} >= {b"data", b"end"}


def test_two_workers_one_killed_over_the_repartition_topic(kafka_bootstrap: str, events_medium: Path,
                                                          tmp_path: Path) -> None:
    inp, out, app = "rp2-events", "rp2-w2", "rp-two"
    create_topic(kafka_bootstrap, inp, 4)
    create_topic(kafka_bootstrap, out, 4)
    total = load(kafka_bootstrap, events_medium, inp)
    env = {**os.environ, "W_INPUT": inp, "W_OUTPUT": out, "W_WORKLOAD": "w2"}
    procs = {n: worker(kafka_bootstrap, app, n, env, tmp_path / f"{n}.log", batch_size=300) for n in ("a", "b")}
    deadline = time.monotonic() + 120
    while committed_total(kafka_bootstrap, app, inp, 4) <= total // 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    procs["b"].send_signal(signal.SIGKILL)
    assert procs["b"].wait(10) == -signal.SIGKILL
    procs["c"] = worker(kafka_bootstrap, app, "c", env, tmp_path / "c.log", batch_size=300)
    for name in ("a", "c"):
        assert procs[name].wait(240) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    assert_w2(frame(read_committed(kafka_bootstrap, out)), events_medium)


@pytest.mark.parametrize("bad", ["join"])
def test_unsupported_shapes_are_clear_errors(bad: str, kafka_bootstrap: str) -> None:
    from datetime import timedelta

    flow = sl.Flow("x")
    src = flow.read("e", sl.KafkaSource("rp-events", kafka_bootstrap, key="user_id"),
                    schema={"user_id": str, "event_type": str, "timestamp": int}).event_time("timestamp", timedelta(0))
    by_type = src.key_by("event_type")
    by_type.interval_join("j", src.key_by("user_id"), by="user_id", lower=timedelta(0),
                          upper=timedelta(seconds=1)).write("o", sl.KafkaSink("rp-w2", kafka_bootstrap))
    with pytest.raises(sl.PlanError):
        sl.run_worker(flow, sl.KafkaRuntime(app_id="bad", until_end=True))
