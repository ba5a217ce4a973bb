"""Under the Kafka runtime, a task's own sink whose commit fails (after the Kafka transaction recorded the
epoch) is tried again within the run, as under sl.run (tests/test_sink_commit_retry.py): a transient
failure leaves every sink equal to the oracle (the topic's ids once each); a failure that outlasts the
attempts stops the worker with a SinkError naming the sinks, and the restarted worker brings them level."""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from kafka_util import create_topic
from sluice.core.errors import SinkError
from test_sink_commit_retry import Flaky, json_ids, published


def load_ids(bootstrap: str, topic: str, n: int) -> None:
    df = pl.DataFrame({"id": [i ^ 5 for i in range(n)], "k": [f"k{(i ^ 5) % 5}" for i in range(n)]})
    flow = sl.Flow("load")
    flow.read("rows", sl.MemorySource(df)).write("topic", sl.KafkaSink(topic, bootstrap, key="k"))
    sl.run(flow)


def flow_of(tmp: Path, topic: str, bootstrap: str, service: Flaky) -> sl.Flow:
    f = sl.Flow("retry")
    rows = f.read("in", sl.KafkaSource(topic, bootstrap), schema={"id": int, "k": str})
    rows.write("before", sl.JsonLinesSink(tmp / "before"))
    rows.write("service", service)  # type: ignore[arg-type]
    rows.write("after", sl.JsonLinesSink(tmp / "after"))
    return f


def test_kafka_task_sink_commit_is_retried_then_levelled_by_a_restart(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    n = 400
    transient, permanent = f"sr-in-{tag}", f"sr-in2-{tag}"
    for topic in (transient, permanent):
        create_topic(kafka_bootstrap, topic, 2)
        load_ids(kafka_bootstrap, topic, n)
    want = list(range(n))

    # every task's first epoch fails twice, then publishes: the worker ends with every sink whole
    one = tmp_path / "transient"
    service = Flaky(one / "service", {1: 2})
    rt = sl.KafkaRuntime(app_id=f"sr-{tag}", bootstrap=kafka_bootstrap, until_end=True, sink_commit_backoff_s=0.01)
    sl.run_worker(flow_of(one, transient, kafka_bootstrap, service), rt)
    assert published(one / "service") == want
    assert json_ids(one / "before") == want and json_ids(one / "after") == want
    assert {e for (_, e), tries in service.tries.items() if tries == 3} == {1}

    # every try fails: the worker stops naming the sinks; restarted, it publishes the epoch everywhere
    two = tmp_path / "permanent"
    service = Flaky(two / "service", {1: 3})
    rt = sl.KafkaRuntime(app_id=f"sr2-{tag}", bootstrap=kafka_bootstrap, until_end=True, sink_commit_backoff_s=0.01)
    with pytest.raises(SinkError) as err:
        sl.run_worker(flow_of(two, permanent, kafka_bootstrap, service), rt)
    message = str(err.value)
    assert message.startswith("write step 'service' (FlakyWriter): publishing (commit) failed"), message
    assert "(tried 3 times) 'before' published this epoch already, 'after' did not" in message, message
    assert "restarting the worker" in message, message
    assert len(published(two / "service")) < n
    sl.run_worker(flow_of(two, permanent, kafka_bootstrap, Flaky(two / "service", {})), rt)
    assert published(two / "service") == want
    assert json_ids(two / "before") == want and json_ids(two / "after") == want
