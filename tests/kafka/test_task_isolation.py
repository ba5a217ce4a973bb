"""Every task of a worker has its own process function: keyed state is never shared between the
partitions one worker owns (the README's pattern keeps a state handle from `open`)."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import polars as pl
import pytest

import sluice as sl
from kafka_util import create_topic, frame, read_committed


class RunningCount(sl.KeyedProcessFunction):
    def open(self, ctx: sl.StateContext) -> None:
        self.count = ctx.value_state("count")

    def process(self, record: dict, ctx: sl.ProcessContext) -> list[dict]:
        n = (self.count.value() or 0) + 1
        self.count.update(n)
        return [{"user_id": record["user_id"], "seq": record["seq"], "n": n}]


def counting_flow(source: str, sink: str, bootstrap: str) -> sl.Flow:
    flow = sl.Flow("counts")
    (flow.read("events", sl.KafkaSource(source, bootstrap, key="user_id"), schema={"user_id": str, "seq": int, "ts": int})
         .event_time("ts", watermark=timedelta(seconds=0)).key_by("user_id")
         .process("count", RunningCount(), schema={"user_id": str, "seq": int, "n": int})
         .write("out", sl.KafkaSink(sink, bootstrap, key="user_id")))
    return flow


def produce(bootstrap: str, topic: str, users: int, per_user: int) -> pl.DataFrame:
    rows = [{"user_id": f"u{u}", "seq": i, "ts": 1_000 * i} for i in range(per_user) for u in range(users)]
    df = pl.DataFrame(rows)
    flow = sl.Flow("load")
    flow.read("rows", sl.MemorySource(df)).write("topic", sl.KafkaSink(topic, bootstrap, key="user_id"))
    sl.run(flow)
    return df


def expected(df: pl.DataFrame) -> pl.DataFrame:
    """Per key, records in event-time order count 1, 2, 3, …"""
    return (df.sort("seq").with_columns(n=pl.int_range(1, pl.len() + 1).over("user_id"))
              .select("user_id", "seq", "n").sort("user_id", "seq"))


@pytest.mark.parametrize("partitions", [1, 2, 3])
def test_each_task_has_its_own_function(kafka_bootstrap: str, partitions: int) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out = f"iso-in-{tag}", f"iso-out-{tag}"
    create_topic(kafka_bootstrap, src, partitions)
    create_topic(kafka_bootstrap, out, partitions)
    df = produce(kafka_bootstrap, src, users=12, per_user=40)
    sl.run_worker(counting_flow(src, out, kafka_bootstrap),
                  sl.KafkaRuntime(app_id=f"iso-{tag}", bootstrap=kafka_bootstrap, until_end=True))
    got = frame(read_committed(kafka_bootstrap, out)).sort("user_id", "seq")
    assert got.equals(expected(df))


def test_each_task_has_its_own_function_after_a_rebalance(kafka_bootstrap: str) -> None:
    """A second worker joins while the first holds all three partitions; tasks move, counts stay exact."""
    tag = uuid.uuid4().hex[:6]
    src, out = f"isor-in-{tag}", f"isor-out-{tag}"
    create_topic(kafka_bootstrap, src, 3)
    create_topic(kafka_bootstrap, out, 3)
    df = produce(kafka_bootstrap, src, users=12, per_user=40)
    rt = sl.KafkaRuntime(app_id=f"isor-{tag}", bootstrap=kafka_bootstrap, until_end=True, commit_interval_s=0.2,
                         poll_records=5)
    first = threading.Thread(target=sl.run_worker, args=(counting_flow(src, out, kafka_bootstrap), rt))
    first.start()
    second = sl.run_worker(counting_flow(src, out, kafka_bootstrap), rt)
    first.join(120)
    assert not first.is_alive()
    got = frame(read_committed(kafka_bootstrap, out)).sort("user_id", "seq")
    assert got.equals(expected(df))
    assert second.tasks_started >= 1
