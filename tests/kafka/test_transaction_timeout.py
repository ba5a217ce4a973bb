"""A worker whose transaction outlives `transaction_timeout_ms` (one batch that takes too long: a slow
function, an overloaded machine) is fenced by the broker, which aborts the transaction. Seen in the
rebalance-churn soak (bench/chaos/scale_out.py, 16 workers on 2 cores): the worker died with a raw
`SystemError ... returned a result with an exception set` from librdkafka's fatal error. It must instead
make a new producer, rewind its tasks to the last commit and go on: output exactly once."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import polars as pl

import sluice as sl
from kafka_util import create_topic, frame, read_committed

SLEPT: set[str] = set()


class SlowOnce(sl.KeyedProcessFunction):
    """A running count per key that, the first time it sees record `slow_at` of its tag, sleeps `sleep_s`."""

    def __init__(self, tag: str, slow_at: int, sleep_s: float) -> None:
        self.tag, self.slow_at, self.sleep_s = tag, slow_at, sleep_s

    def open(self, ctx: sl.StateContext) -> None:
        self.count = ctx.value_state("count")

    def process(self, record: dict, ctx: sl.ProcessContext) -> list[dict]:
        if record["seq"] == self.slow_at and self.tag not in SLEPT:
            SLEPT.add(self.tag)
            time.sleep(self.sleep_s)
        n = (self.count.value() or 0) + 1
        self.count.update(n)
        return [{"user_id": record["user_id"], "seq": record["seq"], "n": n}]


def test_a_transaction_that_times_out_is_redone(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out = f"tto-in-{tag}", f"tto-out-{tag}"
    create_topic(kafka_bootstrap, src, 2)
    create_topic(kafka_bootstrap, out, 16)  # records after the pause go to partitions new to the transaction
    rows = [{"user_id": f"u{u}", "seq": i, "ts": 1_000 * i} for i in range(40) for u in range(64)]
    df = pl.DataFrame(rows)
    load = sl.Flow("load")
    load.read("rows", sl.MemorySource(df)).write("topic", sl.KafkaSink(src, kafka_bootstrap, key="user_id"))
    sl.run(load)
    flow = sl.Flow("slow")
    (flow.read("events", sl.KafkaSource(src, kafka_bootstrap, key="user_id"), schema={"user_id": str, "seq": int, "ts": int})
         .event_time("ts", watermark=timedelta(seconds=0)).key_by("user_id")
         .process("count", SlowOnce(tag, slow_at=20, sleep_s=10.0), schema={"user_id": str, "seq": int, "n": int})
         .write("out", sl.KafkaSink(out, kafka_bootstrap, key="user_id")))
    # the broker aborts transactions older than 4 s (it looks every 2 s: scripts/kafka.sh); the sleep is 10 s,
    # and records are produced for up to 2 s after it before the next commit
    rt = sl.KafkaRuntime(app_id=f"tto-{tag}", bootstrap=kafka_bootstrap, until_end=True, transaction_timeout_ms=4000,
                         commit_interval_s=2.0, poll_records=50, batch_size=7)
    result = sl.run_worker(flow, rt)
    assert tag in SLEPT
    got = frame(read_committed(kafka_bootstrap, out)).sort("user_id", "seq")
    expected = (df.sort("seq").with_columns(n=pl.int_range(1, pl.len() + 1).over("user_id"))
                  .select("user_id", "seq", "n").sort("user_id", "seq"))
    assert got.equals(expected)
    assert result.producer_restarts >= 1  # fenced: a new producer, the tasks rewound


def test_fenced_while_sending_watermarks_to_the_repartition_topic(kafka_bootstrap: str, monkeypatch) -> None:
    """The path the churn soak hit: the broker aborted the worker's transaction (it outlived its timeout on
    an overloaded machine), and the client learned it while the commit sent the upstream watermarks to the
    repartition topic: `KafkaException: Unable to produce message: Local: Fatal error` killed the worker.
    Now it is one more failed commit: a new producer, the tasks rewind, the output is exact."""
    from sluice.runtime.repartition import RepartitionWriter

    tag = uuid.uuid4().hex[:6]
    src, out = f"ttr-in-{tag}", f"ttr-out-{tag}"
    create_topic(kafka_bootstrap, src, 2)
    create_topic(kafka_bootstrap, out, 2)
    rows = [{"user_id": f"u{u}", "grp": f"g{u % 5}", "seq": i, "ts": 1_000 * i} for i in range(120) for u in range(16)]
    df = pl.DataFrame(rows)
    load = sl.Flow("load")
    load.read("rows", sl.MemorySource(df)).write("topic", sl.KafkaSink(src, kafka_bootstrap, key="user_id"))
    sl.run(load)
    flow = sl.Flow("regroup")
    (flow.read("events", sl.KafkaSource(src, kafka_bootstrap, key="user_id"),
               schema={"user_id": str, "grp": str, "seq": int, "ts": int})
         .event_time("ts", watermark=timedelta(seconds=0)).key_by("grp")
         .window("per_grp", sl.Tumbling(timedelta(seconds=10)), count=sl.agg.count())
         .write("out", sl.KafkaSink(out, kafka_bootstrap, key="grp")))
    original = RepartitionWriter.marker
    calls = {"n": 0, "stalled": 0}

    def stalled(self: RepartitionWriter, kind: str, watermark: int) -> None:
        calls["n"] += 1
        if calls["n"] != 3:
            return original(self, kind, watermark)
        calls["stalled"] += 1
        time.sleep(10)  # the broker aborts the open transaction (older than 4 s) and bumps the epoch
        for p in range(self.partitions):
            self._send(p, b"", kind, watermark)
            time.sleep(0.5)  # meanwhile the client learns that it was fenced
        return None

    monkeypatch.setattr(RepartitionWriter, "marker", stalled)
    rt = sl.KafkaRuntime(app_id=f"ttr-{tag}", bootstrap=kafka_bootstrap, until_end=True, transaction_timeout_ms=4000,
                         commit_interval_s=0.05, poll_records=40, batch_size=7)
    result = sl.run_worker(flow, rt)
    assert calls["stalled"] == 1
    got = frame(read_committed(kafka_bootstrap, out))
    expected = (df.with_columns(window_start=(pl.col("ts") // 10_000) * 10_000)
                  .group_by("grp", "window_start").agg(count=pl.len())
                  .with_columns(window_end=pl.col("window_start") + 10_000))
    assert got.select(expected.columns).sort("grp", "window_start").equals(expected.sort("grp", "window_start"))
    assert result.producer_restarts >= 1


def test_which_errors_need_a_new_producer() -> None:
    """A fatal error or an erroneous state, raised or wrapped by a write step (SinkError from it), is a
    producer failure; a record the broker refuses is not."""
    from confluent_kafka import KafkaError as KErr
    from confluent_kafka import KafkaException

    from sluice.core.errors import SinkError
    from sluice.runtime.kafka.transactions import producer_failed

    for code in (KErr._FATAL, KErr._FENCED, KErr._STATE):
        raw = KafkaException(KErr(code))
        assert producer_failed(raw) is raw
        try:
            raise SinkError("write step 'out' (KafkaWriter): writing 3 rows failed") from raw
        except SinkError as wrapped:
            assert producer_failed(wrapped) is raw
    assert producer_failed(KafkaException(KErr(KErr.MSG_SIZE_TOO_LARGE))) is None
    assert producer_failed(SinkError("a sink that raised")) is None
    assert producer_failed(ValueError("x")) is None


class _StaleClient:
    """A client whose metadata does not know a new topic for its first `stale` calls."""

    def __init__(self, stale: int) -> None:
        self.stale, self.calls, self.refreshes = stale, 0, 0

    def get_watermark_offsets(self, tp, timeout, **kwargs):
        from confluent_kafka import KafkaError as KErr
        from confluent_kafka import KafkaException

        self.calls += 1
        if self.calls <= self.stale:
            raise KafkaException(KErr(KErr._UNKNOWN_PARTITION, "Failed to get watermark offsets: Local: Unknown partition"))
        return (3, 17)

    def list_topics(self, topic, timeout):
        self.refreshes += 1


def test_offsets_of_a_topic_another_worker_just_made() -> None:
    """Seen with 16 workers starting at once: a client that does not know the just-created repartition or
    state topic yet answered "Unknown partition" and the worker died with librdkafka's raw KafkaError."""
    from sluice.connectors.kafka import KafkaError
    from sluice.runtime.kafka.admin import watermarks

    client = _StaleClient(stale=3)
    assert watermarks(client, "app-state", 5, "the state topic") == (3, 17)
    assert client.calls == 4 and client.refreshes == 3
    never = _StaleClient(stale=10**9)
    try:
        watermarks(never, "app-state", 5, "the state topic", wait_s=0.5)
    except KafkaError as exc:
        assert "app-state/5" in str(exc) and "Unknown partition" in str(exc)
    else:
        raise AssertionError("no error for a partition that never appears")
