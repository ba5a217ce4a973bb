"""Renaming steps under the Kafka runtime: a window step and a file sink (a task's own sink) renamed
between two runs of one application. Without `allow_rename` the restarted worker is refused with an
error naming the steps and the fix; with it the state, the recorded sink transactions and the offsets
carry over, and the output (the Kafka topic and the part files) equals the DuckDB oracle over all the
input: nothing lost, nothing twice. A later start without the option goes on (its tasks were migrated)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

import sluice as sl
from kafka_util import create_topic, frame, read_committed
from sluice.checkpoint.store import IncompatibleCheckpointError
from sluice.runtime.kafka import Worker

pytestmark = pytest.mark.slow

USERS = 12


def events(start: int, stop: int) -> pl.DataFrame:
    """Records `start`..`stop` of every user: event time 700 ms apart, out of order by up to 2.8 s."""
    rows = [{"user_id": f"u{u}", "seq": i, "ts": 700 * i + (i * 7919 + u * 31) % 4 * 700}
            for i in range(start, stop) for u in range(USERS)]
    return pl.DataFrame(rows)


def produce(bootstrap: str, topic: str, df: pl.DataFrame) -> None:
    flow = sl.Flow("load")
    flow.read("rows", sl.MemorySource(df)).write("topic", sl.KafkaSink(topic, bootstrap, key="user_id"))
    sl.run(flow)


def build(src: str, out: str, files: Path, bootstrap: str, window: str = "per_user", sink: str = "to_files") -> sl.Flow:
    flow = sl.Flow("renames")
    counted = (flow.read("events", sl.KafkaSource(src, bootstrap, key="user_id"),
                         schema={"user_id": str, "seq": int, "ts": int})
                   .event_time("ts", watermark=timedelta(seconds=5)).key_by("user_id")
                   .window(window, sl.Tumbling(timedelta(seconds=10)), n=sl.agg.count(), total=sl.agg.sum("seq")))
    counted.write("out", sl.KafkaSink(out, bootstrap, key="user_id"))
    counted.write(sink, sl.JsonLinesSink(files, rows_per_file=40))
    return flow


def oracle(df: pl.DataFrame) -> pl.DataFrame:
    con = duckdb.connect()
    con.register("ev", df.to_arrow())
    return con.sql("""SELECT user_id, (ts // 10000) * 10000 AS window_start, count(*) AS n, sum(seq) AS total
                      FROM ev GROUP BY ALL ORDER BY user_id, window_start""").pl()


def windows(df: pl.DataFrame) -> pl.DataFrame:
    return df.select("user_id", "window_start", pl.col("n").cast(pl.Int64), pl.col("total").cast(pl.Int64)).sort(
        "user_id", "window_start")


def run_until_stopped(flow: sl.Flow, rt: sl.KafkaRuntime, records: int) -> None:
    """A worker (not until_end) that is stopped gracefully, as by SIGTERM, once it has read `records`
    records: its windows stay open in its tasks' state, as in a job stopped for a deploy."""
    worker = Worker(flow, rt)
    done: list[BaseException | None] = []

    def go() -> None:
        try:
            worker.run()
            done.append(None)
        except BaseException as exc:  # handed to the test below
            done.append(exc)

    thread = threading.Thread(target=go)
    thread.start()
    while thread.is_alive() and worker.records() < records:
        time.sleep(0.05)
    worker.stop()
    thread.join(120)
    assert done == [None], done


def test_renamed_window_and_sink_carry_over_with_allow_rename(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out = f"ren-in-{tag}", f"ren-out-{tag}"
    create_topic(kafka_bootstrap, src, 2)
    create_topic(kafka_bootstrap, out, 2)
    files = tmp_path / "files"
    rt = sl.KafkaRuntime(app_id=f"ren-{tag}", bootstrap=kafka_bootstrap, until_end=True, commit_interval_s=0.2,
                         batch_size=50, poll_records=100)
    first, second = events(0, 70), events(70, 150)
    data = pl.concat([first, second])
    want = oracle(data)
    assert want.height > 100

    # stopped halfway, once it has read the first part (not at an end of the input: its open windows are
    # kept in the tasks' state); the rest arrives while it is stopped
    produce(kafka_bootstrap, src, first)
    run_until_stopped(build(src, out, files, kafka_bootstrap), replace(rt, until_end=False), first.height)
    produce(kafka_bootstrap, src, second)
    before = frame(read_committed(kafka_bootstrap, out)) if read_committed(kafka_bootstrap, out) else pl.DataFrame()
    assert 0 < before.height < want.height

    renamed = build(src, out, files, kafka_bootstrap, window="counts", sink="files_out")
    with pytest.raises(IncompatibleCheckpointError) as err:  # without the option: refused, nothing written
        sl.run_worker(renamed, rt)
    message = str(err.value)
    assert "step 'per_user' (window) is in the state of task" in message, message
    assert "'counts', a window step like it, is new: renamed?" in message, message
    assert "allow_rename={'per_user': 'counts'}" in message and "--allow-rename per_user=counts" in message, message
    # a renamed file sink alone is refused too: as a new sink it would replace the part files
    with pytest.raises(IncompatibleCheckpointError, match=r"write step 'to_files' is in the state of task \d+ .* "
                                                          r"'files_out' is a new sink like it .*renamed\?"):
        sl.run_worker(build(src, out, files, kafka_bootstrap, sink="files_out"), rt)
    # the same refusals as sl.run for a wrong rename
    with pytest.raises(IncompatibleCheckpointError, match="allow_rename per_user=nope: the flow has no step 'nope'"):
        sl.run_worker(renamed, rt, allow_rename={"per_user": "nope"})
    with pytest.raises(IncompatibleCheckpointError, match="allow_rename out=counts: the flow still has a step 'out'"):
        sl.run_worker(renamed, rt, allow_rename={"out": "counts"})
    with pytest.raises(IncompatibleCheckpointError, match=r"allow_rename gone=counts: the state of task \d+ .* has "
                                                          r"no step 'gone'"):
        sl.run_worker(renamed, rt, allow_rename={"gone": "counts", "to_files": "files_out"})
    assert len(read_committed(kafka_bootstrap, out)) == before.height  # the refused starts wrote nothing

    sl.run_worker(renamed, rt, allow_rename={"per_user": "counts", "to_files": "files_out"})
    got = windows(frame(read_committed(kafka_bootstrap, out)))
    diff = got.join(want.cast(got.schema), on=["user_id", "window_start"], how="full", suffix="_want").filter(
        (pl.col("n") != pl.col("n_want")) | (pl.col("total") != pl.col("total_want")) | pl.col("n").is_null()
        | pl.col("n_want").is_null())
    assert got.equals(want.cast(got.schema)), f"the Kafka topic: {diff}"
    parts = sorted(files.rglob("part-*.jsonl"))
    got_files = windows(pl.concat([pl.read_ndjson(p) for p in parts if p.stat().st_size]))
    assert got_files.equals(want.cast(got_files.schema)), "the part files"

    # its tasks were migrated: a later start needs no option (and finds nothing more to do)
    sl.run_worker(renamed, rt)
    assert len(read_committed(kafka_bootstrap, out)) == want.height


def test_renamed_postgres_sink_keeps_its_markers(kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> None:
    """A PostgreSQL sink (append) renamed with allow_rename keeps the name its commit markers have, in the
    restore and in every later snapshot: its recorded epoch is not applied again, so the table holds
    every record exactly once (the same with a read step renamed too)."""
    from pg_util import fresh_database, query

    dsn = fresh_database(postgres_dsn)
    tag = uuid.uuid4().hex[:6]
    src = f"renpg-in-{tag}"
    create_topic(kafka_bootstrap, src, 2)
    first, second = events(0, 70), events(70, 150)
    data = pl.concat([first, second])
    produce(kafka_bootstrap, src, first)
    rt = sl.KafkaRuntime(app_id=f"renpg-{tag}", bootstrap=kafka_bootstrap, until_end=True, commit_interval_s=0.2,
                         batch_size=50, poll_records=100)

    def flow(read: str, sink: str) -> sl.Flow:
        f = sl.Flow("renpg")
        (f.read(read, sl.KafkaSource(src, kafka_bootstrap, key="user_id"), schema={"user_id": str, "seq": int, "ts": int})
          .write(sink, sl.PostgresSink("rows", dsn, mode="append", create=True)))
        return f

    run_until_stopped(flow("events", "to_pg"), replace(rt, until_end=False), first.height)
    produce(kafka_bootstrap, src, second)
    written = query(dsn, "SELECT count(*) FROM rows")[0][0]
    assert written == first.height
    with pytest.raises(IncompatibleCheckpointError, match=r"step 'events' \(read\) is in the state of task \d+ .*renamed\?"):
        sl.run_worker(flow("clicks", "pg_rows"), rt)
    sl.run_worker(flow("clicks", "pg_rows"), rt, allow_rename={"events": "clicks", "to_pg": "pg_rows"})
    sl.run_worker(flow("clicks", "pg_rows"), rt)  # later starts: the markers' name is in the snapshots
    got = pl.DataFrame(query(dsn, "SELECT user_id, seq, ts FROM rows"), schema=["user_id", "seq", "ts"], orient="row")
    assert got.sort("user_id", "seq").equals(data.sort("user_id", "seq").cast(got.schema))
    # one marker per task, under the old name (flow-step-task, hashed): none made for the new name
    writers = [w for (w,) in query(dsn, "SELECT writer FROM sluice_commits")]
    assert len(writers) == 2, writers
