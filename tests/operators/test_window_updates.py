"""Transcripts for windows that emit updates: records in, the watermark after each batch, the processing
time where it matters (an injected clock), and exactly which rows come out at that moment."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

import sluice as sl
from sluice import testing
from sluice.core.batch import NO_WATERMARK, TIME, WATERMARK, Batch
from sluice.core.plan import Ref, Window
from sluice.operators.window import window_operator
from sluice.time.watermark import running_watermarks

S = 1000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Driver:
    def __init__(self, shape, emit=None, lateness_s=0, delay_ms=0):
        step = Window("w", (), (pl.col("k"),), shape, {"n": sl.agg.count()}, emit, lateness_s * S)
        self.op = window_operator(step)
        self.clock = Clock()
        self.op.clock = self.clock  # type: ignore[attr-defined]
        self.maxt = NO_WATERMARK
        self.delay = delay_ms

    def send(self, *records, at=None):
        """Feed records (t, k) as one batch at processing time `at` (seconds); return the rows emitted as
        (k, start, end, n, is_final, op), and the late ones as (t, k)."""
        if at is not None:
            self.clock.now = at
        t = np.array([r[0] for r in records], dtype=np.int64)
        wm, self.maxt = running_watermarks(t, self.maxt, self.delay)
        df = pl.DataFrame({"k": [r[1] for r in records], TIME: t, WATERMARK: wm})
        return _rows(self.op.on_batch(0, Batch(df, watermark=self.maxt - self.delay)))

    def end(self):
        return _rows(self.op.on_end())


def _rows(emitted):
    rows = []
    for port, b in emitted:
        if port == "out" and b.height:
            rows += [(r["k"], r["window_start"], r["window_end"], r["n"], r["is_final"], r["_op"]) for r in b.df.to_dicts()]
        if port == "late" and b.height:
            rows += [("late", r[TIME], r["k"]) for r in b.df.to_dicts()]
    return rows


TEN = sl.Tumbling(timedelta(seconds=10))


def test_every_fires_changed_windows_when_the_interval_has_passed():
    d = Driver(TEN, emit=sl.Emit.every(timedelta(seconds=5)))
    assert d.send((1 * S, "a"), at=100.0) == []  # the clock starts with the first batch
    assert d.send((2 * S, "a"), (3 * S, "b"), at=104.9) == []  # 4.9 s: not yet
    assert d.send((4 * S, "a"), at=105.0) == [("a", 0, 10 * S, 3, False, "+I"), ("b", 0, 10 * S, 1, False, "+I")]
    assert d.send((5 * S, "b"), at=106.0) == []  # changed, but the next early firing is at 110
    assert d.send((6 * S, "c"), at=109.0) == []
    # at 110: b and c changed since they were last emitted; a did not
    assert d.send((7 * S, "d"), at=110.0) == [("b", 0, 10 * S, 2, False, "+U"), ("c", 0, 10 * S, 1, False, "+I"),
                                              ("d", 0, 10 * S, 1, False, "+I")]
    assert d.send((8 * S, "a"), at=111.0) == []
    # the watermark passes the end: every window is emitted, final, whatever the clock says
    assert d.send((10 * S, "e"), at=111.5) == [("a", 0, 10 * S, 4, True, "+U"), ("b", 0, 10 * S, 2, True, "+U"),
                                               ("c", 0, 10 * S, 1, True, "+U"), ("d", 0, 10 * S, 1, True, "+U")]
    assert d.end() == [("e", 10 * S, 20 * S, 1, True, "+I")]


def test_each_batch_re_emits_what_the_batch_changed():
    d = Driver(TEN, emit=sl.Emit.each_batch())
    assert d.send((1 * S, "a"), (2 * S, "b")) == [("a", 0, 10 * S, 1, False, "+I"), ("b", 0, 10 * S, 1, False, "+I")]
    assert d.send((3 * S, "a")) == [("a", 0, 10 * S, 2, False, "+U")]  # b did not change
    assert d.send((12 * S, "a")) == [("a", 0, 10 * S, 2, True, "+U"), ("b", 0, 10 * S, 1, True, "+U"),
                                     ("a", 10 * S, 20 * S, 1, False, "+I")]
    assert d.send((4 * S, "a")) == [("late", 4 * S, "a")]  # no lateness allowed: [0, 10) is final


def test_allowed_lateness_updates_the_window_until_end_plus_lateness():
    d = Driver(TEN, lateness_s=5)
    assert d.send((1 * S, "a")) == []
    assert d.send((10 * S, "b")) == [("a", 0, 10 * S, 1, False, "+I")]  # on time: W = end
    assert d.send((2 * S, "a")) == [("a", 0, 10 * S, 2, False, "+U")]  # late, within the lateness
    assert d.send((11 * S, "b")) == []  # nothing changed for [0, 10)
    assert d.send((3 * S, "c")) == [("c", 0, 10 * S, 1, False, "+I")]  # a window first seen late is an insert
    # W = 15 = end + lateness: [0, 10) is final and leaves state
    assert d.send((15 * S, "b")) == [("a", 0, 10 * S, 2, True, "+U"), ("c", 0, 10 * S, 1, True, "+U")]
    assert d.send((4 * S, "a")) == [("late", 4 * S, "a")]
    assert d.end() == [("b", 10 * S, 20 * S, 3, True, "+I")]


def test_sliding_panes_are_kept_until_their_last_window_is_final():
    # 20 s windows every 10 s: the pane [10, 20) belongs to [0, 20) and [10, 30)
    d = Driver(sl.Sliding(timedelta(seconds=20), timedelta(seconds=10)), lateness_s=5)
    assert d.send((12 * S, "a"), (20 * S, "x")) == [("a", 0, 20 * S, 1, False, "+I")]
    assert d.send((26 * S, "x")) == [("a", 0, 20 * S, 1, True, "+U")]  # W = 26 > 25: [0, 20) final
    # late for [0, 20) (25 ≤ W = 26), on time for [10, 30), which has not reached its end yet
    assert d.send((13 * S, "a")) == [("late", 13 * S, "a")]
    assert d.send((31 * S, "x")) == [("a", 10 * S, 30 * S, 2, False, "+I"), ("x", 10 * S, 30 * S, 2, False, "+I")]
    assert d.send((14 * S, "a")) == [("a", 10 * S, 30 * S, 3, False, "+U"), ("late", 14 * S, "a")]
    assert d.send((35 * S, "x")) == [("a", 10 * S, 30 * S, 3, True, "+U"), ("x", 10 * S, 30 * S, 2, True, "+U")]
    assert d.op.state is not None and d.op.state["__sl_pane"].min() == 20 * S  # panes before 20 s are gone


def test_the_default_stays_one_row_per_window_without_changelog_columns():
    flow = sl.Flow("f")
    src = flow.read("in", testing.rows(pl.DataFrame({"t": [1000, 12000], "k": ["a", "a"]})))
    win = src.event_time("t", timedelta(0)).key_by("k").window("w", TEN, n=sl.agg.count())
    out = testing.collect(win)
    sl.run(flow)
    assert out.frame().columns == ["k", "window_start", "window_end", "n"]
    assert flow.plan().changelog_key(Ref("w")) is None


def test_the_plan_knows_the_output_is_a_changelog_keyed_by_keys_and_window_start():
    flow = sl.Flow("f")
    timed = flow.read("in", testing.rows(pl.DataFrame({"t": [1000], "k": ["a"]}))).event_time("t", timedelta(0))
    keyed = timed.key_by("k").window("w", TEN, allowed_lateness=timedelta(seconds=5), n=sl.agg.count())
    alone = timed.window("all", TEN, emit=sl.Emit.each_batch(), n=sl.agg.count())
    keyed.write("o1", sl.CollectSink())
    alone.write("o2", sl.CollectSink())
    plan = flow.plan()
    assert plan.changelog_key(Ref("w")) == ("k", "window_start")
    assert plan.changelog_key(Ref("all")) == ("window_start",)
    assert plan.changelog_key(Ref("w", "late")) is None
    assert "allowed_lateness_ms=5000" in plan.explain()


def test_sessions_refuse_lateness_and_early_emission():
    flow = sl.Flow("f")
    keyed = flow.read("in", testing.rows(pl.DataFrame({"t": [1000], "k": ["a"]}))).event_time("t", timedelta(0)).key_by("k")
    with pytest.raises(sl.PlanError, match="session windows are emitted once"):
        keyed.window("s", sl.Session(timedelta(seconds=5)), allowed_lateness=timedelta(seconds=1), n=sl.agg.count())
    with pytest.raises(sl.PlanError, match="session windows are emitted once"):
        keyed.window("s", sl.Session(timedelta(seconds=5)), emit=sl.Emit.each_batch(), n=sl.agg.count())
    with pytest.raises(sl.PlanError, match="emit must be"):
        keyed.window("s", TEN, emit="each_batch", n=sl.agg.count())  # type: ignore[arg-type]
    with pytest.raises(sl.PlanError, match="positive interval"):
        sl.Emit.every(timedelta(0))
