"""The fixed-window operator's native kernel (native/src/panes.rs) against the Polars path it stands in
for, and against a naive per-record reference aggregated by DuckDB: out-of-order input, late records,
text and integer keys, null values, tumbling (with an offset) and sliding windows, batch sizes 1, 7 and
65,536; a batch the kernel cannot take (a null key, a NaN) hands its state to the Polars path; a
checkpoint written on one path restores on the other."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import sluice as sl
from sluice import testing
from sluice.operators import window as window_mod

pytest.importorskip("sluice_native")

SHAPES = {
    "tumbling": sl.Tumbling(timedelta(seconds=10)),
    "tumbling_offset": sl.Tumbling(timedelta(seconds=10), offset=timedelta(seconds=3)),
    "sliding": sl.Sliding(timedelta(seconds=30), timedelta(seconds=10)),
    "sliding_panes": sl.Sliding(timedelta(seconds=25), timedelta(seconds=10)),  # 5 s panes
}

# times on a 1-second grid (records land exactly on window ends and watermarks reach them exactly),
# a few off the grid; values with nulls
records = st.lists(
    st.tuples(st.integers(0, 120).map(lambda s: s * 1000) | st.integers(0, 120_000), st.sampled_from(["a", "b", "c", "dd" * 10]),
              st.none() | st.floats(-50, 50, allow_nan=False, allow_infinity=False)),
    min_size=1, max_size=60,
)


class Spy:
    """Counts the batches the kernel took."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches = 0
        original = window_mod.NativePanes.ingest

        def ingest(inner: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(inner, *args, **kwargs)
            if result is not True:
                self.batches += 1
            return result

        monkeypatch.setattr(window_mod.NativePanes, "ingest", ingest)


def run(recs: list[tuple], shape: Any, delay_ms: int, batch_size: int, int_keys: bool = False,
        datetimes: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    df = pl.DataFrame(recs, schema={"t": pl.Int64, "k": pl.String, "v": pl.Float64}, orient="row")
    if datetimes:
        df = df.with_columns(pl.col("t").cast(pl.Datetime("ms", "UTC")))
    if int_keys:
        df = df.with_columns(pl.col("k").str.len_bytes().cast(pl.Int32))
    flow = sl.Flow("native")
    win = flow.read("in", testing.rows(df)).event_time("t", timedelta(milliseconds=delay_ms)).key_by("k").window(
        "w", shape, n=sl.agg.count(), s=sl.agg.sum("v"), lo=sl.agg.min("v"), hi=sl.agg.max("v"), avg=sl.agg.mean("v"),
        p90=sl.agg.percentile("v", 0.9, relative_accuracy=0.01))
    out, late = testing.collect(win), testing.collect(win.late)
    sl.run(flow, batch_size=batch_size)
    return out.frame(), late.frame()


def polars_path(monkeypatch: pytest.MonkeyPatch, *args: Any, **kwargs: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    with monkeypatch.context() as m:
        m.setenv("SLUICE_NATIVE_WINDOW", "0")
        return run(*args, **kwargs)


def reference(recs: list[tuple], size: int, slide: int, offset: int, delay: int, int_keys: bool) -> pl.DataFrame:
    """Per record in arrival order, each window holding it that had not ended by the watermark before it
    (written without the engine's code), aggregated by DuckDB."""
    maxt = None
    pairs = []
    for t, k, v in recs:
        wprev = maxt - delay if maxt is not None else float("-inf")
        start = ((t - offset) // slide) * slide + offset
        while start > t - size:
            if start + size > wprev:
                pairs.append((len(k) if int_keys else k, start, v))
            start -= slide
        maxt = t if maxt is None else max(maxt, t)
    frame = pl.DataFrame(pairs, schema={"k": pl.Int64 if int_keys else pl.String, "ws": pl.Int64, "v": pl.Float64},
                         orient="row")
    con = duckdb.connect()
    con.register("pairs", frame)
    # p90: the exact nearest-rank quantile (rank ceil(0.9 n) of the sorted values), which the sketch is within 1% of
    return con.sql(f"select k, ws as window_start, ws + {size} as window_end, count(*) as n, sum(v) as s, min(v) as lo, "
                   "max(v) as hi, avg(v) as avg, list_sort(list(v) filter (v is not null))"
                   "[greatest(ceil(0.9 * count(v)), 1)::bigint] as p90 "
                   "from pairs group by k, ws order by window_end, k, ws").pl()


def assert_matches_reference(out: pl.DataFrame, ref: pl.DataFrame) -> None:
    got = out.select(ref.columns).with_columns(pl.col("k").cast(ref["k"].dtype))
    assert_frame_equal(got.drop("p90"), ref.drop("p90"), check_dtypes=False, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)
    assert (got["p90"].is_null() == ref["p90"].is_null()).all()
    assert ((got["p90"] - ref["p90"]).abs() <= 0.01 * ref["p90"].abs() + 1e-12).all()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records, delay=st.integers(0, 30).map(lambda s: s * 1000), shape=st.sampled_from(sorted(SHAPES)),
       batch_size=st.sampled_from([1, 7, 65536]), int_keys=st.booleans())
def test_kernel_equals_polars_path_and_reference(monkeypatch: pytest.MonkeyPatch, recs: list[tuple], delay: int,
                                                shape: str, batch_size: int, int_keys: bool) -> None:
    spy = Spy(monkeypatch)
    out, late = run(recs, SHAPES[shape], delay, batch_size, int_keys)
    assert spy.batches > 0  # the kernel ran
    want_out, want_late = polars_path(monkeypatch, recs, SHAPES[shape], delay, batch_size, int_keys=int_keys)
    assert_frame_equal(out, want_out, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)  # same rows, same order
    assert_frame_equal(late, want_late)
    w = SHAPES[shape]
    assert_matches_reference(out, reference(recs, w.size_ms, w.slide_ms, w.offset_ms, delay, int_keys))


# each shape's boundaries: a record whose (first) window ended exactly at the watermark before it (late, or
# partly late under a sliding window), one a millisecond before it (on time), records on window starts
BOUNDARY = [(10_000, "a", 1.0), (25_000, "a", 2.0), (12_000, "a", 3.0), (26_000, "b", 4.0), (19_999, "b", 5.0),
            (31_000, "a", 6.0), (20_000, "b", 7.0), (45_000, "c", 8.0), (30_000, "c", 9.0), (39_999, "a", 10.0),
            (40_000, "a", 11.0), (3_000, "a", 12.0), (13_000, "b", 13.0), (60_000, "c", 14.0)]


@pytest.mark.parametrize("batch_size", [1, 7, 65536])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_boundaries(monkeypatch: pytest.MonkeyPatch, batch_size: int, shape: str) -> None:
    spy = Spy(monkeypatch)
    out, late = run(BOUNDARY, SHAPES[shape], 5000, batch_size)
    assert spy.batches > 0 and late.height > 0
    want_out, want_late = polars_path(monkeypatch, BOUNDARY, SHAPES[shape], 5000, batch_size)
    assert_frame_equal(out, want_out, check_exact=False, rel_tol=1e-9)
    assert_frame_equal(late, want_late)
    w = SHAPES[shape]
    assert_matches_reference(out, reference(BOUNDARY, w.size_ms, w.slide_ms, w.offset_ms, 5000, False))


@pytest.mark.parametrize("batch_size", [1, 65536])
def test_datetime_event_time_keeps_its_type(monkeypatch: pytest.MonkeyPatch, batch_size: int) -> None:
    spy = Spy(monkeypatch)
    out, late = run(BOUNDARY, SHAPES["sliding"], 5000, batch_size, datetimes=True)
    assert spy.batches > 0 and out.schema["window_start"] == pl.Datetime("ms", "UTC")
    want_out, want_late = polars_path(monkeypatch, BOUNDARY, SHAPES["sliding"], 5000, batch_size, datetimes=True)
    assert_frame_equal(out, want_out, check_exact=False, rel_tol=1e-9)
    assert_frame_equal(late, want_late)


@pytest.mark.parametrize("batch_size", [1, 7, 65536])
@pytest.mark.parametrize("poison", ["null_key", "nan", "nan_and_null"])
def test_a_batch_the_kernel_cannot_take_hands_over_to_polars(monkeypatch: pytest.MonkeyPatch, batch_size: int,
                                                             poison: str) -> None:
    recs = [(i * 700, "abc"[i % 3], float(i % 11)) for i in range(200)]
    recs[150] = (150 * 700, None, 1.0) if poison == "null_key" else (150 * 700, "a", float("nan"))  # type: ignore[assignment]
    if poison == "nan_and_null":  # the NaN's batch also holds a null value (the kernel's nullable path)
        recs[149] = (149 * 700, "c", None)  # type: ignore[assignment]
    spy = Spy(monkeypatch)
    out, late = run(recs, SHAPES["sliding_panes"], 2000, batch_size)
    assert (spy.batches > 0) == (batch_size < 150)  # the kernel took the batches before the poisoned one
    want_out, want_late = polars_path(monkeypatch, recs, SHAPES["sliding_panes"], 2000, batch_size)
    assert_frame_equal(out, want_out, check_exact=False, rel_tol=1e-9)
    assert_frame_equal(late, want_late)
    assert out.height > 20 and (out["k"].is_null().any() if poison == "null_key" else out["s"].is_nan().any())


class Crash(Exception):
    pass


CRASH_AT: list[int] = []  # the sink raises at this write (counted across a run), when set


class CrashingSink(sl.JsonLinesSink):
    def open(self, ctx: Any) -> Any:
        writer = super().open(ctx)
        write = writer.write

        def counted(df: pl.DataFrame) -> None:
            if CRASH_AT:
                CRASH_AT[0] -= 1
                if CRASH_AT[0] == 0:
                    CRASH_AT.clear()
                    raise Crash
            write(df)

        writer.write = counted
        return writer


def crash_flow(src: Path, out: Path) -> sl.Flow:
    """A sliding-window w1 over `src` into a JSON Lines sink that raises where CRASH_AT says."""
    sink = CrashingSink(out)
    flow = sl.Flow("w1")
    ev = flow.read("ev", sl.JsonLinesSource(src), schema={"timestamp": pl.Int64, "user_id": pl.String,
                                                         "metrics": {"value": pl.Float64}})
    ev.event_time("timestamp", timedelta(seconds=5)).key_by("user_id").window(
        "w", sl.Sliding(timedelta(seconds=60), timedelta(seconds=20)), n=sl.agg.count(), s=sl.agg.sum("metrics.value"),
        lo=sl.agg.min("metrics.value"), hi=sl.agg.max("metrics.value"),
        p99=sl.agg.percentile("metrics.value", 0.99)).write("out", sink)
    return flow


@pytest.mark.parametrize(("before", "after"), [("1", "0"), ("0", "1"), ("1", "1")])
def test_checkpoint_restores_across_paths(monkeypatch: pytest.MonkeyPatch, events_small: Path, tmp_path: Path,
                                          before: str, after: str) -> None:
    """Killed mid-way with the kernel on (or off), resumed with it off (or on): the output equals an
    uninterrupted run's."""
    ref = tmp_path / "ref.jsonl"
    sl.run(crash_flow(events_small, ref), batch_size=100)
    out, ck = tmp_path / "out.jsonl", tmp_path / "ck"
    monkeypatch.setenv("SLUICE_NATIVE_WINDOW", before)
    CRASH_AT[:] = [6]
    with pytest.raises(sl.SinkError):
        sl.run(crash_flow(events_small, out), batch_size=100, checkpoint_dir=ck, checkpoint_interval=0.0)
    monkeypatch.setenv("SLUICE_NATIVE_WINDOW", after)
    sl.run(crash_flow(events_small, out), batch_size=100, checkpoint_dir=ck, checkpoint_interval=0.0)
    want, got = pl.read_ndjson(ref), pl.read_ndjson(out)
    assert want.height > 100
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-12)
    if before == after == "1":  # the kernel takes the restored state back: the same bits as an uninterrupted run
        assert out.read_bytes() == ref.read_bytes()


def test_kernel_forgets_a_pane_once_every_window_holding_it_closed() -> None:
    import numpy as np
    from sluice_native import Panes

    from sluice.core.batch import NO_WATERMARK

    panes = Panes(30_000, 10_000, 0, 10_000, [(0, 0)], [], False)  # sliding 30 s every 10 s
    t = np.array([0, 10_000, 20_000, 30_000, 40_000, 5_000], np.int64)
    wm = np.full(len(t), NO_WATERMARK, np.int64)
    assert panes.ingest(np.zeros(len(t), np.int64).view(np.uint8), t.view(np.uint8), wm.view(np.uint8), [], [], 0,
                        NO_WATERMARK) is None
    assert len(panes) == 5 and panes.pane_range() == (0, 40_000)
    n, _keys, starts, counts = panes.close(NO_WATERMARK, 40_000, False)  # windows ending at or before 40 s
    assert n == 4 and np.frombuffer(starts, np.int64).tolist() == [-20_000, -10_000, 0, 10_000]
    assert np.frombuffer(counts, np.int64).tolist() == [2, 3, 4, 3]
    assert len(panes) == 3 and panes.pane_range() == (20_000, 40_000)  # panes 0 and 10 s: every window closed


@pytest.mark.parametrize("int_keys", [False, True])
def test_keys_without_panes_are_forgotten_and_come_back_right(monkeypatch: pytest.MonkeyPatch, int_keys: bool) -> None:
    """A stream of ever-new keys does not grow the kernel: keys that hold no pane are forgotten (and
    renumbered); a key seen again later aggregates from scratch, as on the Polars path."""
    # each key three records in a row (so some straddle a batch, and a close that forgets keys), 9,000 keys
    # in turn, short and long (held in the view itself, or in the text)
    keys = [(i // 3) % 9000 for i in range(30_000)]
    recs = [(i * 10, f"key-{k:05d}" + ("-long-suffix" if k % 2 else ""), float(i % 7)) for i, k in enumerate(keys)]
    if int_keys:
        recs = [(t, str(k), v) for k, (t, _k, v) in zip(keys, recs, strict=True)]
    df = pl.DataFrame(recs, schema={"t": pl.Int64, "k": pl.String, "v": pl.Float64}, orient="row")
    if int_keys:
        df = df.with_columns(pl.col("k").cast(pl.Int64))
    sizes: list[int] = []
    original = window_mod.NativePanes.close_finished

    def close_finished(inner: Any, after: int, upto: int) -> pl.DataFrame:
        out = original(inner, after, upto)
        sizes.append(inner.panes.keys())
        return out

    monkeypatch.setattr(window_mod.NativePanes, "close_finished", close_finished)

    def windows() -> pl.DataFrame:
        flow = sl.Flow("many_keys")
        win = flow.read("in", testing.rows(df)).event_time("t", timedelta(0)).key_by("k").window(
            "w", sl.Tumbling(timedelta(seconds=1)), n=sl.agg.count(), s=sl.agg.sum("v"))
        out = testing.collect(win)
        sl.run(flow, batch_size=997)  # batches end inside windows: a window's keys are held across a forgetting close
        return out.frame()

    got = windows()
    assert sizes and max(sizes) <= 2 * 100 + 4096 + 1000  # held keys: 100 a window, plus a batch's new ones
    with monkeypatch.context() as m:
        m.setenv("SLUICE_NATIVE_WINDOW", "0")
        want = windows()
    assert got.height == df.select(pl.col("t") // 1000, "k").unique().height  # one row per key and window
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-12)
