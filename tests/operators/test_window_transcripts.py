"""Transcripts: records in, watermark after each, and exactly which windows come out at that moment."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

import sluice as sl
from sluice import testing
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


# --- the session late boundary (docs/design/time.md: late when t + gap < W_prev) ----------------------

GAP = 3000


def _sessions(recs, batch_size):
    """recs: (t, k) with no delay; returns (sessions as (k, start, end, n), late records as (t, k))."""
    flow = sl.Flow("s")
    src = flow.read("in", testing.rows({"t": [r[0] for r in recs], "k": [r[1] for r in recs]}))
    win = src.event_time("t", timedelta(0)).key_by("k").window("w", sl.Session(timedelta(milliseconds=GAP)),
                                                              n=sl.agg.count())
    out, late = testing.collect(win), testing.collect(win.late)
    sl.run(flow, batch_size=batch_size)
    sessions = sorted((r["k"], r["window_start"], r["window_end"], r["n"]) for r in out.frame().to_dicts())
    return sessions, sorted((r["t"], r["k"]) for r in late.frame().to_dicts())


@pytest.mark.parametrize("batch_size", [1, 2, 3, 65536])
def test_session_record_exactly_gap_behind_the_watermark_is_on_time(batch_size):
    # W_prev = 10000 for the second record; 7000 + gap == W_prev: its own session would close only
    # when W > 10000, so it is on time and forms a session of its own
    sessions, late = _sessions([(10_000, "a"), (7_000, "z")], batch_size)
    assert late == []
    assert sessions == [("a", 10_000, 13_000, 1), ("z", 7_000, 10_000, 1)]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 65536])
def test_session_record_one_ms_further_behind_is_late(batch_size):
    # 6999 + gap + 1 == W_prev: its session would have closed already
    sessions, late = _sessions([(10_000, "a"), (6_999, "z")], batch_size)
    assert late == [(6_999, "z")]
    assert sessions == [("a", 10_000, 13_000, 1)]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 65536])
def test_session_record_exactly_gap_behind_joins_the_open_session_of_its_key(batch_size):
    # a's session [1000] is still open at W = 4000 (it closes when W > 1000 + gap); a record at 1000 joins
    # it, and one at 999 (999 + gap + 1 == W_prev) is late
    sessions, late = _sessions([(1_000, "a"), (4_000, "b"), (1_000, "a"), (999, "a")], batch_size)
    assert late == [(999, "a")]
    assert sessions == [("a", 1_000, 4_000, 2), ("b", 4_000, 7_000, 1)]


def test_late_rows_keep_the_stream_s_column_types() -> None:
    """Text keys group as categoricals inside the window; the late stream gives them back as text."""
    flow = sl.Flow("late_types")
    rows = [{"ts": 100_000, "user": "a"}, {"ts": 1_000, "user": "a"}]
    win = (flow.read("in", testing.rows(rows)).event_time("ts", timedelta(0)).key_by("user")
               .window("w", sl.Tumbling(timedelta(seconds=10)), n=sl.agg.count()))
    late = testing.collect(win.late)
    testing.collect(win)
    sl.run(flow)
    assert late.frame().schema["user"] == pl.String and late.frame()["user"].to_list() == ["a"]


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("batch", [1, 7, 10_000])
@pytest.mark.parametrize("shape", [sl.Tumbling(timedelta(seconds=10)),
                                   sl.Sliding(timedelta(seconds=30), timedelta(seconds=10))])
def test_an_emitted_window_carries_its_last_millisecond_and_the_watermark_before_its_closing_record(
        monkeypatch, native, batch, shape):
    """Each output row's TIME is its window's end − 1 and its WATERMARK is the last per-record watermark
    below that end (the one before the record that closed it), whatever the batch split; what downstream
    steps judge lateness by."""
    monkeypatch.setenv("SLUICE_NATIVE_WINDOW", native)
    rng = np.random.default_rng(batch)
    # out of order within the delay; on a 500 ms grid, so that watermarks land on window ends too
    times = (np.sort(rng.integers(0, 400, 400)) + rng.integers(-6, 1, 400)) * 500
    keys = [f"k{i}" for i in rng.integers(0, 5, 400)]
    step = Window("w", (), (pl.col("k"),), shape, {"n": sl.agg.count()})
    op = window_operator(step)
    maxt, delay, out = NO_WATERMARK, 3_000, []
    all_wms = []
    for i in range(0, len(times), batch):
        t = times[i:i + batch]
        wm, maxt = running_watermarks(t, maxt, delay)
        all_wms += list(wm)
        df = pl.DataFrame({"k": keys[i:i + batch], TIME: t, WATERMARK: wm})
        out += [b.df for p, b in op.on_batch(0, Batch(df, watermark=maxt - delay)) if p == "out" and b.height]
    out += [b.df for p, b in op.on_end() if p == "out" and b.height]
    rows = pl.concat(out)
    assert rows.height > 20
    for end, t, w in rows.select("window_end", TIME, WATERMARK).iter_rows():
        assert t == end - 1
        below = [x for x in all_wms if x < end]
        assert w == (max(below) if below else NO_WATERMARK)


@pytest.mark.parametrize("shape", [sl.Tumbling(timedelta(seconds=10)),
                                   sl.Sliding(timedelta(seconds=20), timedelta(seconds=10))])
def test_restored_state_with_a_null_key_stays_apart_from_the_empty_key(shape):
    """A null key sends a step to the Polars path; restored, the step may take the native kernel again for
    batches without one, and the state's null-key rows stay on the Polars path: null and "" stay two keys."""
    def fresh():
        return window_operator(Window("w", (), (pl.col("k"),), shape,
                                      {"n": sl.agg.count(), "s": sl.agg.sum("v"), "p": sl.agg.percentile("v", 0.5)}))

    def batch(rows, maxt):
        t = np.array([r[0] for r in rows], dtype=np.int64)
        wm, maxt = running_watermarks(t, maxt, 0)
        df = pl.DataFrame({"k": [r[1] for r in rows], "v": [float(r[0] % 7) for r in rows], TIME: t, WATERMARK: wm},
                          schema_overrides={"k": pl.String})
        return Batch(df, watermark=maxt), maxt

    first = [(1000, None), (2000, ""), (3000, "a"), (4000, None)]
    second = [(5000, ""), (6000, "a"), (7000, "b"), (25000, "a")]
    outputs = []
    for restore in (False, True):
        op, maxt, out = fresh(), NO_WATERMARK, []
        b, maxt = batch(first, maxt)
        out += op.on_batch(0, b)
        if restore:
            op2 = fresh()
            op2.restore(op.snapshot())
            op = op2
        b, maxt = batch(second, maxt)
        out += op.on_batch(0, b)
        out += op.on_end()
        rows = pl.concat([x.df for p, x in out if p == "out" and x.height])
        outputs.append(sorted(rows.select("k", "window_start", "n", "s", "p").rows(), key=repr))
    assert outputs[0] == outputs[1]
    assert any(r[0] is None for r in outputs[1]) and any(r[0] == "" for r in outputs[1])
