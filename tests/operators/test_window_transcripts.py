"""Transcripts: records in, watermark after each, and exactly which windows come out at that moment."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

import sluice as sl
from sluice.core.batch import NO_WATERMARK, TIME, WATERMARK, Batch
from sluice.core.plan import Window
from sluice.operators.window import window_operator
from sluice.time.watermark import running_watermarks


class Driver:
    def __init__(self, shape, delay_ms=0):
        step = Window("w", (), (pl.col("k"),), shape, {"n": sl.agg.count()})
        self.op = window_operator(step)
        self.maxt = NO_WATERMARK
        self.delay = delay_ms

    def send(self, *records):
        """Feed records (t, k) as one batch; return the windows emitted as (k, start, end, n)."""
        t = np.array([r[0] for r in records], dtype=np.int64)
        wm, self.maxt = running_watermarks(t, self.maxt, self.delay)
        df = pl.DataFrame({"k": [r[1] for r in records], TIME: t, WATERMARK: wm})
        out = self.op.on_batch(0, Batch(df, watermark=self.maxt - self.delay))
        return _rows(out)

    def end(self):
        return _rows(self.op.on_end())


def _rows(emitted):
    rows = []
    for port, b in emitted:
        if port == "out" and b.height:
            rows += [(r["k"], r["window_start"], r["window_end"], r["n"]) for r in b.df.to_dicts()]
    return rows


def test_tumbling_window_is_emitted_when_the_watermark_reaches_its_end():
    d = Driver(sl.Tumbling(timedelta(seconds=10)))
    assert d.send((1000, "a")) == []
    assert d.send((9999, "a")) == []
    assert d.send((10000, "b")) == [("a", 0, 10000, 2)]  # W = 10000 ≥ end: out now, not later
    assert d.send((15000, "b")) == []
    assert d.end() == [("b", 10000, 20000, 2)]


def test_delay_holds_windows_open():
    d = Driver(sl.Tumbling(timedelta(seconds=10)), delay_ms=2000)
    assert d.send((1000, "a"), (11999, "a")) == []
    assert d.send((12000, "a")) == [("a", 0, 10000, 1)]


def test_session_closes_only_after_the_gap_has_passed():
    d = Driver(sl.Session(timedelta(seconds=3)))
    assert d.send((1000, "a")) == []
    assert d.send((4000, "b")) == []  # W = 4000: a record at 4000 could still join a's session
    assert d.send((4001, "b")) == [("a", 1000, 4000, 1)]  # window_end reports last + gap


def test_sliding_windows_emit_in_end_order_within_one_batch():
    d = Driver(sl.Sliding(timedelta(seconds=10), timedelta(seconds=5)))
    out = d.send((1000, "b"), (6000, "a"), (30000, "c"))
    assert out == [("b", -5000, 5000, 1), ("a", 0, 10000, 1), ("b", 0, 10000, 1), ("a", 5000, 15000, 1)]
