"""The central property: for any input order (late records included) and any batch size, the windows a
stream emits equal a DuckDB group-by over the records that were on time, and the late stream holds
exactly the others.

Which (record, window) pairs are on time is decided by `reference_*`: a deliberately naive per-record
simulation of DESIGN.md §3, written without the engine's code. DuckDB then aggregates those pairs.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

NEG_INF = float("-inf")

# Times, delays and sizes on a 1-second grid, so that records land exactly on window ends and
# watermarks reach them exactly: the boundaries (end ≤ W, gap ≤ distance) are where bugs hide.
records = st.lists(
    st.tuples(st.integers(0, 120).map(lambda s: s * 1000), st.sampled_from(["a", "b", "c"]), st.integers(-5, 50)),
    min_size=1, max_size=60,
)
delays = st.integers(0, 30).map(lambda s: s * 1000)


def reference_fixed(recs, size, slide, delay):
    """Per record, in arrival order: (t, k, v, start, on_time) for each window containing it."""
    maxt = None
    out = []
    for t, k, v in recs:
        wprev = maxt - delay if maxt is not None else NEG_INF
        s = (t // slide) * slide
        while s > t - size:
            out.append((t, k, v, s, s + size > wprev))
            s -= slide
        maxt = t if maxt is None else max(maxt, t)
    return out


def reference_sessions(recs, gap, delay):
    """Per record: on time or late, simulating session emission record by record."""
    maxt = None
    open_s: dict[str, list[list[int]]] = {}
    emitted_last: dict[str, int] = {}
    flags = []
    for t, k, _v in recs:
        wprev = maxt - delay if maxt is not None else NEG_INF
        late = t + gap + 1 <= wprev or (k in emitted_last and t <= emitted_last[k] + gap)
        flags.append(not late)
        if not late:
            sessions = open_s.setdefault(k, [])
            touching = [s for s in sessions if s[0] - gap <= t <= s[1] + gap]
            first = min([t, *(s[0] for s in touching)])
            last = max([t, *(s[1] for s in touching)])
            open_s[k] = [s for s in sessions if s not in touching] + [[first, last]]
        maxt = t if maxt is None else max(maxt, t)
        w = maxt - delay
        for key, sessions in open_s.items():
            for s in [s for s in sessions if s[1] + gap + 1 <= w]:
                sessions.remove(s)
                emitted_last[key] = max(emitted_last.get(key, s[1]), s[1])
    return flags


def run_stream(recs, shape, delay, batch_size):
    flow = sl.Flow("prop")
    src = flow.read("in", testing.rows(pl.DataFrame(recs, schema=["t", "k", "v"], orient="row")))
    win = src.event_time("t", timedelta(milliseconds=delay)).key_by("k").window(
        "w", shape, n=sl.agg.count(), s=sl.agg.sum("v"), lo=sl.agg.min("v"))
    out, late = testing.collect(win), testing.collect(win.late)
    sl.run(flow, batch_size=batch_size)
    return out.frame(), late.frame()


def duck(pairs: pl.DataFrame, sql: str) -> pl.DataFrame:
    con = duckdb.connect()
    con.register("p", pairs.to_arrow())
    return con.sql(sql).pl()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, delay=delays, shape=st.sampled_from([(20_000, 20_000), (10_000, 10_000), (30_000, 10_000), (30_000, 12_000)]))
def test_fixed_windows_equal_batch(recs, delay, shape):
    size, slide = shape
    ref = pl.DataFrame(reference_fixed(recs, size, slide, delay), schema=["t", "k", "v", "start", "on_time"], orient="row")
    expected = duck(ref, f"""
        select k, start as window_start, start + {size} as window_end, count(*)::bigint as n, sum(v)::bigint as s, min(v)::bigint as lo
        from p where on_time group by all order by window_end, k, window_start""")
    expected_late = ref.filter(~pl.col("on_time")).select("t", "k", "v", missed_window_start="start").sort("t", "k", "v", "missed_window_start")
    shape_spec = sl.Tumbling(timedelta(milliseconds=size)) if size == slide else sl.Sliding(timedelta(milliseconds=size), timedelta(milliseconds=slide))
    first = None
    for batch_size in (1, 3, 1000):
        out, late = run_stream(recs, shape_spec, delay, batch_size)
        got = out.select("k", "window_start", "window_end", pl.col("n"), pl.col("s").cast(pl.Int64), pl.col("lo").cast(pl.Int64))
        assert got.equals(expected.cast(got.schema)), (batch_size, got, expected)
        got_late = (late.select("t", "k", "v", "missed_window_start").sort("t", "k", "v", "missed_window_start")
                    if late.height else expected_late.clear())
        assert got_late.equals(expected_late.cast(got_late.schema)), batch_size
        if first is None:
            first = (out, late)
        else:
            assert out.equals(first[0]) and late.equals(first[1])  # identical across batch sizes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, delay=delays, gap=st.sampled_from([3_000, 10_000]))
def test_sessions_equal_batch(recs, delay, gap):
    flags = reference_sessions(recs, gap, delay)
    ref = pl.DataFrame([(*r, f) for r, f in zip(recs, flags, strict=True)], schema=["t", "k", "v", "on_time"], orient="row")
    expected = duck(ref, f"""
        with o as (select k, t, v, case when t - lag(t) over (partition by k order by t) <= {gap} then 0 else 1 end as brk
                   from p where on_time),
             s as (select *, sum(brk) over (partition by k order by t rows between unbounded preceding and current row) as sid from o)
        select k, min(t) as window_start, max(t) + {gap} as window_end, count(*)::bigint as n, sum(v)::bigint as s, min(v)::bigint as lo
        from s group by k, sid order by window_end, k, window_start""")
    expected_late = ref.filter(~pl.col("on_time")).select("t", "k", "v").sort("t", "k", "v")
    first = None
    for batch_size in (1, 3, 1000):
        out, late = run_stream(recs, sl.Session(timedelta(milliseconds=gap)), delay, batch_size)
        got = out.select("k", "window_start", "window_end", "n", pl.col("s").cast(pl.Int64), pl.col("lo").cast(pl.Int64))
        assert got.equals(expected.cast(got.schema)), (batch_size, got, expected)
        got_late = late.select("t", "k", "v").sort("t", "k", "v") if late.height else expected_late.clear()
        assert got_late.equals(expected_late.cast(got_late.schema)), batch_size
        if first is None:
            first = (out, late)
        else:
            assert out.equals(first[0]) and late.equals(first[1])


def test_session_boundaries_to_the_millisecond():
    """A record exactly `gap` after the last one joins its session, one `gap + 1` after starts a new one, and
    a key change always does: in one batch (the vectorized split) and record by record (the merge)."""
    gap = 10_000
    recs = [(0, "a", 1), (gap, "a", 2), (2 * gap + 1, "a", 3), (2 * gap + 1 + gap, "a", 4),
            (5, "b", 5), (gap + 5, "b", 6), (2 * gap + 6, "b", 7), (2 * gap + 7, "c", 8)]
    ref = pl.DataFrame([(*r, True) for r in recs], schema=["t", "k", "v", "on_time"], orient="row")
    expected = duck(ref, f"""
        with o as (select k, t, v, case when t - lag(t) over (partition by k order by t) <= {gap} then 0 else 1 end as brk
                   from p),
             s as (select *, sum(brk) over (partition by k order by t rows between unbounded preceding and current row) as sid from o)
        select k, min(t) as window_start, max(t) + {gap} as window_end, count(*)::bigint as n
        from s group by k, sid order by window_end, k, window_start""")
    assert expected["n"].to_list() == [2, 2, 1, 1, 2]
    for batch_size in (1, 3, 1000):
        out, late = run_stream(recs, sl.Session(timedelta(milliseconds=gap)), 100 * gap, batch_size)
        assert late.height == 0
        assert out.select("k", "window_start", "window_end", "n").equals(expected.cast(out.select("k", "window_start", "window_end", "n").schema))
