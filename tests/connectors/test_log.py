"""The embedded log: durable, ordered, CRC-checked, torn tails cut on open, retention by size."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import sluice as sl
from log_util import wait_for
from sluice import testing
from sluice.connectors.log import Log
from sluice.connectors.log.connector import partition_of
from sluice.connectors.log.store import LogSettings
from sluice.core.errors import CorruptSegmentError, LogError


def append_values(part, values: list[bytes], t0: int = 0) -> int:
    blob = b"".join(v + b"\n" for v in values)
    offs = np.concatenate([[0], np.cumsum([len(v) + 1 for v in values])]).astype(np.uint32)
    return part.append(np.arange(t0, t0 + len(values), dtype=np.int64), blob, offs, flags=1)


def test_append_and_read_back_in_order(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.create_topic("t", 1)
    part = log.partition("t", 0, writable=True)
    assert append_values(part, [b"a", b"b"]) == 0
    assert append_values(part, [b"c"]) == 2
    part.close()
    reader = Log(tmp_path).partition("t", 0)
    got = [(b.base_offset + i, b.value(i)) for b, skip in reader.read(1) for i in range(skip, b.count)]
    assert got == [(1, b"b"), (2, b"c")]
    assert reader.end_offset == 3


def test_one_writer_per_partition(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.create_topic("t", 1)
    first = log.partition("t", 0, writable=True)
    with pytest.raises(LogError, match="another process"):
        log.partition("t", 0, writable=True)
    first.close()


def test_torn_tail_is_cut_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = Log(tmp_path)
    log.create_topic("t", 1)
    part = log.partition("t", 0, writable=True)
    append_values(part, [b"one", b"two"])
    append_values(part, [b"three"])
    part.close()
    seg = next((tmp_path / "t" / "0").glob("*.seg"))
    data = seg.read_bytes()
    seg.write_bytes(data[:-5])  # the last frame was cut short by a crash
    part = log.partition("t", 0, writable=True)
    assert "torn tail" in caplog.text
    assert part.end_offset == 2
    assert append_values(part, [b"four"]) == 2  # writing resumes at the cut
    part.close()
    values = [b.value(i) for b, s in Log(tmp_path).partition("t", 0).read(0) for i in range(s, b.count)]
    assert values == [b"one", b"two", b"four"]


def test_corruption_in_the_middle_is_reported(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.create_topic("t", 1)
    part = log.partition("t", 0, writable=True)
    append_values(part, [b"x" * 100])
    append_values(part, [b"y" * 100])
    part.close()
    seg = next((tmp_path / "t" / "0").glob("*.seg"))
    data = bytearray(seg.read_bytes())
    data[60] ^= 0xFF  # flip a byte inside the first frame's body
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptSegmentError, match="offset 0"):
        list(Log(tmp_path).partition("t", 0).read(0))


def test_segments_roll_and_retention_drops_the_oldest(tmp_path: Path) -> None:
    log = Log(tmp_path, LogSettings(segment_bytes=400, retention_bytes=1000, fsync="always"))
    log.create_topic("t", 1)
    part = log.partition("t", 0, writable=True)
    for i in range(20):
        append_values(part, [f"record-{i:03d}".encode() * 5])
    segs = sorted((tmp_path / "t" / "0").glob("*.seg"))
    assert sum(s.stat().st_size for s in segs) <= 1000 + 400
    assert part.start_offset > 0 and part.end_offset == 20
    first = next(part.read(part.start_offset))[0]
    assert first.value(0).startswith(f"record-{part.start_offset:03d}".encode())
    part.close()


def test_key_partitioning_is_stable() -> None:
    keys = pl.Series(["u1", "u2", "u1", None, "u3"])
    where = partition_of(keys, 4)
    assert where[0] == where[2]
    assert list(where) == list(partition_of(keys, 4))
    import zlib
    assert where[1] == zlib.crc32(b"u2") % 4  # documented: CRC-32 of the key text


def test_flow_round_trip_through_the_log(tmp_path: Path) -> None:
    rows = [{"ts": i * 1000, "user": f"u{i % 3}", "v": float(i)} for i in range(100)]
    produce = sl.Flow("produce")
    produce.read("in", testing.rows(rows)).write("topic", sl.LogSink("events", root=tmp_path, partitions=3, key="user"))
    sl.run(produce, batch_size=10)
    assert Log(tmp_path).partition_count("events") == 3

    consume = sl.Flow("consume")
    src = consume.read("events", sl.LogSource("events", root=tmp_path), schema={"ts": int, "user": str, "v": float})
    win = src.event_time("ts", timedelta(0)).key_by("user").window("w", sl.Tumbling(timedelta(seconds=10)), n=sl.agg.count())
    out, late = testing.collect(win), testing.collect(win.late)
    sl.run(consume, batch_size=7)
    # each user's records sit in one partition, in order; the watermark is the minimum over partitions
    assert late.frame().height == 0
    assert out.frame()["n"].sum() == 100
    expected = pl.DataFrame(rows).group_by(pl.col("user"), (pl.col("ts") // 10000).alias("w")).len().height
    assert out.frame().height == expected


def test_log_source_reports_bad_records_by_offset(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.create_topic("t", 1)
    part = log.partition("t", 0, writable=True)
    append_values(part, [b'{"ts": 1}', b'{"ts": oops}', b'{"ts": 3}'])
    part.close()
    flow = sl.Flow("c")
    testing.collect(flow.read("src", sl.LogSource("t", root=tmp_path), schema={"ts": int}))
    with pytest.raises(sl.DecodeError) as err:
        sl.run(flow)
    assert err.value.position == "log:t/0 offset 1"


def test_log_sink_is_exactly_once_across_a_crash(tmp_path: Path) -> None:
    """A commit cut short (records half appended) is taken back and redone on recovery."""
    from sluice.connectors.api import SinkContext

    sink = sl.LogSink("out", root=tmp_path, partitions=2, key="k")
    frame = pl.DataFrame({"k": [f"k{i % 5}" for i in range(50)], "v": list(range(50))})
    w = sink.open(SinkContext("snk", exactly_once=True))
    w.recover(None)
    w.write(frame.head(20))
    txn1 = w.prepare(1)
    w.commit(txn1)
    w.write(frame.tail(30))
    txn2 = w.prepare(2)
    # crash in the middle of commit 2: only partition 0 got its records
    w._append_rows(frame.tail(30).filter(pl.Series(partition_of(frame.tail(30)["k"], 2)) == 0))
    w.close()
    w = sink.open(SinkContext("snk", exactly_once=True))
    w.recover(txn2)  # the newest checkpoint's transaction: redone from the staged copy
    w.close()
    log = Log(tmp_path)
    values = [b.value(i) for p in range(2) for b, s in log.partition("out", p).read(0) for i in range(s, b.count)]
    got = sorted(pl.read_ndjson(b"\n".join(values))["v"].to_list())
    assert got == list(range(50))  # each record once


FOLLOW_RUN = """
import sys
import sluice as sl
root, checkpoints = sys.argv[1], sys.argv[2]
flow = sl.Flow("follow")
flow.read("in", sl.LogSource("in", root=root, follow=True, poll_interval_s=0.05), schema={"ts": int, "v": int}) \\
    .write("out", sl.LogSink("out", root=root, partitions=1))
sl.run(flow, checkpoint_dir=checkpoints, checkpoint_interval=2.0)
"""


def test_followed_log_commits_its_last_records_while_the_input_is_idle(tmp_path: Path) -> None:
    """The run takes its timed checkpoints while a followed source has nothing new, so records read just
    after a checkpoint are committed without waiting for more input."""
    log = Log(tmp_path)
    log.create_topic("in", 1)
    part = log.partition("in", 0, writable=True)
    append_values(part, [b'{"ts": 1, "v": 1}'])  # read at once: the first checkpoint is not due yet
    run = subprocess.Popen([sys.executable, "-c", FOLLOW_RUN, str(tmp_path), str(tmp_path / "ckpt")],
                           stderr=subprocess.PIPE)
    try:
        assert wait_for(tmp_path, [1], run) == [1]
        append_values(part, [b'{"ts": 2, "v": 2}'], t0=2)  # read right after the checkpoint that published 1
        assert wait_for(tmp_path, [1, 2], run) == [1, 2]
        assert run.poll() is None, run.stderr.read().decode() if run.stderr else ""
    finally:
        part.close()
        run.terminate()
        run.wait(30)


def linear_read(part, from_offset: int, until_offset: int | None) -> list[tuple[int, int, int]]:
    """The reference: walk every frame of the index (what Partition.read did before it bisected)."""
    out = []
    for base, _seg, _pos, n in part.index:
        if base + n <= from_offset:
            continue
        if until_offset is not None and base >= until_offset:
            break
        out.append((base, n, max(0, from_offset - base)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_read_from_any_offset_matches_a_walk_of_the_whole_index(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    settings = LogSettings(segment_bytes=300, retention_bytes=2000 if seed == 2 else None)  # rolls (and drops)
    log = Log(tmp_path, settings)
    log.create_topic("t", 1)
    part = log.partition("t", 0, writable=True)
    for i in range(50):
        append_values(part, [b'{"v": %d}' % i] * int(rng.integers(1, 6)))
    if seed == 2:
        assert part.start_offset > 0  # retention dropped the oldest segments
    reader = log.partition("t", 0)
    bounds = sorted({e[0] for e in reader.index} | {reader.end_offset})
    offsets = sorted(set(range(reader.end_offset + 2)))  # every offset, so every frame boundary and its neighbours
    untils = [None, *bounds[:: max(1, len(bounds) // 8)], *(b + 1 for b in bounds[:: max(1, len(bounds) // 8)])]
    for f in offsets:
        for u in untils:
            got = [(b.base_offset, b.count, skip) for b, skip in reader.read(f, u)]
            assert got == linear_read(reader, f, u), (f, u)
    reader.close()
    part.close()
