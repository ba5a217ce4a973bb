"""Under the Kafka runtime too, a run resumed after its topic gained records goes on from the last real
watermark: the new records are counted, not lost to `late` (nor skipped)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import polars as pl

import sluice as sl
from kafka_util import create_topic, frame, read_committed
from test_resume_grown_input import oracle


def rows(times_s: range) -> pl.DataFrame:
    return pl.DataFrame([{"ts": t * 1000 + k * 7, "k": f"k{k}"} for t in times_s for k in range(3)])


def load(bootstrap: str, topic: str, df: pl.DataFrame) -> None:
    flow = sl.Flow("load")
    flow.read("rows", sl.MemorySource(df)).write("topic", sl.KafkaSink(topic, bootstrap, key="k"))
    sl.run(flow)


def test_a_grown_topic_goes_on_from_the_last_real_watermark(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out, late = f"grow-in-{tag}", f"grow-out-{tag}", f"grow-late-{tag}"
    for t in (src, out, late):
        create_topic(kafka_bootstrap, t, 1)

    def run() -> None:
        flow = sl.Flow("grow")
        w = (flow.read("in", sl.KafkaSource(src, kafka_bootstrap, key="k"), schema={"ts": int, "k": str})
                 .event_time("ts", timedelta(seconds=5)).key_by("k")
                 .window("w", sl.Tumbling(timedelta(seconds=60)), n=sl.agg.count()))
        w.write("out", sl.KafkaSink(out, kafka_bootstrap, key="k"))
        w.late.write("late", sl.KafkaSink(late, kafka_bootstrap, key="k"))
        sl.run_worker(flow, sl.KafkaRuntime(app_id=f"grow-{tag}", bootstrap=kafka_bootstrap, until_end=True))

    first = rows(range(0, 300))
    load(kafka_bootstrap, src, first)
    run()
    got1 = frame(read_committed(kafka_bootstrap, out))
    assert got1.sort("k", "window_start").equals(oracle(first, 60, 60).cast({"window_start": pl.Int64, "window_end": pl.Int64})
                                                 .select(got1.columns).sort("k", "window_start"))
    emitted_upto = int(got1["window_end"].max())  # type: ignore[arg-type]

    second = rows(range(280, 600))
    load(kafka_bootstrap, src, second)
    run()
    got2 = frame(read_committed(kafka_bootstrap, out)).slice(got1.height).sort("k", "window_start")
    want2 = oracle(second, 60, 60).cast({"window_start": pl.Int64, "window_end": pl.Int64})
    assert got2.equals(want2.filter(pl.col("window_end") > emitted_upto).select(got2.columns).sort("k", "window_start"))
    assert len(read_committed(kafka_bootstrap, late)) == int(want2.filter(pl.col("window_end") <= emitted_upto)["n"].sum())
