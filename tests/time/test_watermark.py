"""Watermarks: per record, minimum over partitions, idle partitions stop holding back."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

import sluice as sl
from sluice import testing
from sluice.core.batch import NO_WATERMARK
from sluice.time.watermark import PartitionWatermarks, running_watermarks


def test_watermark_before_each_record():
    wm, mx = running_watermarks(np.array([5, 3, 9, 7], dtype=np.int64), NO_WATERMARK, 2)
    assert wm[0] <= NO_WATERMARK and list(wm[1:]) == [3, 3, 7]
    assert mx == 9


def test_slowest_partition_holds_the_watermark_until_idle():
    p = PartitionWatermarks(delay_ms=0, idle_timeout_s=10.0)
    p.declare(2, now=0.0)
    wm, after = p.advance(0, np.array([100, 200], dtype=np.int64), now=1.0)
    assert after == NO_WATERMARK  # partition 1 has delivered nothing yet
    wm, after = p.advance(0, np.array([300], dtype=np.int64), now=12.0)
    assert after == 300 and wm[0] == 200  # partition 1 idle for > 10 s: no longer counted
    wm, after = p.advance(1, np.array([50], dtype=np.int64), now=13.0)
    assert after == 300  # it wakes up behind, but the watermark never goes back
    assert p.finish(1, now=14.0) == 300


def test_window_offset_shifts_the_grid():
    flow = sl.Flow("t")
    rows = testing.rows({"ts": [0, 14 * 60_000, 16 * 60_000], "k": ["a", "a", "a"]})
    out = testing.collect(flow.read("in", rows).event_time("ts", timedelta(0)).key_by("k").window(
        "w", sl.Tumbling(timedelta(hours=1), offset=timedelta(minutes=15)), n=sl.agg.count()))
    sl.run(flow)
    assert out.frame().select("window_start", "n").rows() == [(-45 * 60_000, 2), (15 * 60_000, 1)]


def test_generator_rate_limits_wall_time():
    import time

    flow = sl.Flow("g")
    testing.collect(flow.read("gen", sl.GeneratorSource("events", n=2_000, rate=10_000)))
    start = time.perf_counter()
    sl.run(flow, batch_size=500)
    assert time.perf_counter() - start >= 0.15  # 2,000 records at 10,000/s take at least 0.2 s


def test_sliding_offset_and_non_dividing_slide_against_brute_force():
    ts = list(range(0, 200_000, 7_000))
    flow = sl.Flow("t")
    out = testing.collect(flow.read("in", testing.rows({"ts": ts})).event_time("ts", timedelta(0)).window(
        "w", sl.Sliding(timedelta(seconds=50), timedelta(seconds=20), offset=timedelta(seconds=3)), n=sl.agg.count()))
    sl.run(flow, batch_size=4)
    got = dict(out.frame().select("window_start", "n").rows())
    expected = {}
    for s in range(-60_000 + 3_000, 200_000, 20_000):
        n = sum(1 for t in ts if s <= t < s + 50_000)
        if n:
            expected[s] = n
    assert got == expected
    assert pl.Series(list(got)).is_sorted()
