"""The native one-pass watermarks (native/src/wm.rs) equal the Polars path's, record by record."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.core.batch import NO_WATERMARK
from sluice.time import watermark as wmod

pytestmark = pytest.mark.skipif(not wmod._NATIVE, reason="the native module is not built")

T = st.integers(-(2**61) + 1, 2**61 - 1)


def polars_path(times: list[int], prev_max: int, delay: int, floor: int, current: int) -> tuple[list[int], int]:
    own, new_max = wmod.running_watermarks(pl.Series(times, dtype=pl.Int64), prev_max, delay)
    wm = own.clip(upper_bound=floor) if floor < 2**62 else own
    return wm.clip(lower_bound=current).to_list(), new_max


@settings(max_examples=400, deadline=None)
@given(times=st.lists(st.one_of(T, st.integers(0, 100)), min_size=1, max_size=60),
       prev_max=st.one_of(st.just(NO_WATERMARK), st.integers(-50, 150)), delay=st.integers(0, 40),
       floor=st.one_of(st.just(2**62), st.integers(-60, 160)), current=st.one_of(st.just(NO_WATERMARK), st.integers(-60, 160)))
def test_native_watermarks_equal_the_polars_path(times: list[int], prev_max: int, delay: int, floor: int,
                                                 current: int) -> None:
    wm, new_max = wmod._native_watermarks(pl.Series(times, dtype=pl.Int64), prev_max, delay, floor, current)
    assert (wm.to_list(), new_max) == polars_path(times, prev_max, delay, floor, current)
    assert wm.dtype == pl.Int64 and wm.null_count() == 0


def test_a_record_is_judged_by_the_watermark_before_it() -> None:
    # the first record sees only prev_max; a record equal to the running max does not raise it
    wm, new_max = wmod._native_watermarks(pl.Series([10, 5, 20, 20], dtype=pl.Int64), 7, 3, 2**62, NO_WATERMARK)
    assert wm.to_list() == [4, 7, 7, 17] and new_max == 20


def test_partition_watermarks_take_the_native_path_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    for native in (True, False):
        monkeypatch.setattr(wmod, "_NATIVE", native)
        p = wmod.PartitionWatermarks(5, None)
        p.declare(2, 0.0)
        got = [p.advance(0, pl.Series([100, 90, 130], dtype=pl.Int64), 1.0),
               p.advance(1, pl.Series([50, 200], dtype=pl.Int64), 1.0),
               p.advance(0, pl.Series([300], dtype=pl.Int64), 1.0)]
        runs.append([(w.to_list(), a) for w, a in got])
    assert runs[0] == runs[1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wms=st.lists(st.integers(-5, 60), max_size=40).map(sorted), ends=st.lists(st.integers(-10, 70), min_size=1, max_size=30),
       carry=st.integers(-20, 5))
def test_an_emitted_windows_watermark_natively_equals_the_polars_path(monkeypatch: pytest.MonkeyPatch, wms: list[int],
                                                                     ends: list[int], carry: int) -> None:
    from sluice.operators import window

    op = type("Op", (), {"carry_wm": carry})()
    got = []
    for native in (True, False):
        monkeypatch.setattr(window, "_NATIVE_TIMES", native)
        cols = window.WindowOperator._time_columns(op, pl.Series(ends, dtype=pl.Int64), pl.Series(wms, dtype=pl.Int64))
        got.append([c.to_list() for c in cols])
    assert got[0] == got[1]
    # the last watermark below each end (the one before the record that closed the window), else the carry
    assert got[0][1] == [max([w for w in wms if w < e], default=carry) for e in ends]


@pytest.mark.parametrize("batch_size", [1, 7, 65536])
def test_a_window_job_writes_the_same_rows_with_native_watermarks_or_without(monkeypatch: pytest.MonkeyPatch,
                                                                             batch_size: int) -> None:
    import random
    from datetime import timedelta

    import sluice as sl
    from sluice.operators import window

    rng = random.Random(7)
    # on a 1 s grid: records land exactly on window ends and watermarks, where an off-by-one shows
    rows = [{"k": f"u{rng.randint(0, 9)}", "t": 1_000_000 + 1000 * rng.randint(0, 600), "v": rng.random()} for _ in range(3000)]
    outs = []
    for native in (True, False):
        monkeypatch.setattr(wmod, "_NATIVE", native)
        monkeypatch.setattr(window, "_NATIVE_TIMES", native)
        flow = sl.Flow("wm")
        ev = flow.read("in", sl.MemorySource(pl.DataFrame(rows))).event_time("t", timedelta(seconds=20))
        w = ev.key_by("k").window("w", sl.Tumbling(timedelta(seconds=30)), n=sl.agg.count(), s=sl.agg.sum("v"))
        out, late = sl.CollectSink(), sl.CollectSink()
        w.write("out", out)
        w.late.write("late", late)
        sl.run(flow, batch_size=batch_size)
        outs.append((out.frame(), late.frame()))
    assert outs[0][0].equals(outs[1][0]) and outs[0][1].equals(outs[1][1])
    assert outs[0][0].height > 0 and outs[0][1].height > 0  # windows, and late records, both seen
