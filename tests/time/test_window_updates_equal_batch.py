"""The central property (streaming equals batch) for windows that emit updates: with an allowed lateness
and with early firings, the *last* row of every (key, window) — the one with is_final — equals a DuckDB
group-by over the records that were on time for it (end + allowed lateness > W_prev), whatever the batch
size; the late stream holds exactly the others; the rows form an upsert changelog keyed by
(key, window_start) that a table applying them ends equal to that group-by.

At batch size 1 every row is checked, not only the last: `reference_rows` simulates the emission rules of
docs/design/time.md ("Updates") record by record, without the engine's code.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

NEG_INF = float("-inf")

records = st.lists(
    st.tuples(st.integers(0, 120).map(lambda s: s * 1000), st.sampled_from(["a", "b", "c"]), st.integers(-5, 50)),
    min_size=1, max_size=60,
)
delays = st.integers(0, 20).map(lambda s: s * 1000)
lateness = st.sampled_from([0, 1000, 5000, 20000])
shapes = st.sampled_from([(20_000, 20_000), (10_000, 10_000), (30_000, 10_000), (30_000, 12_000)])
modes = st.sampled_from(["on_close", "each_batch"])


def reference_pairs(recs, size, slide, delay, allowed):
    """Per record, in arrival order: (t, k, v, start, on_time) for each window containing it. A record is
    on time for a window while that window's end + allowed lateness > W_prev."""
    maxt = None
    out = []
    for t, k, v in recs:
        wprev = maxt - delay if maxt is not None else NEG_INF
        s = (t // slide) * slide
        while s > t - size:
            out.append((t, k, v, s, s + size + allowed > wprev))
            s -= slide
        maxt = t if maxt is None else max(maxt, t)
    return out


def reference_rows(recs, size, slide, delay, allowed, mode):
    """Every row a run with batch size 1 emits: (k, start, end, n, s, is_final, op), in order."""
    maxt = None
    held: dict[tuple[str, int], list[int]] = {}
    emitted: set[tuple[str, int]] = set()
    fired, closed = NEG_INF, NEG_INF
    rows = []

    def round_(w, touched):
        nonlocal fired, closed
        final_upto = w - allowed
        due = []
        for k, s in held:
            end = s + size
            if (closed < end <= final_upto) or (fired < end <= w) or ((k, s) in touched and (mode == "each_batch" or end <= w)):
                due.append((end, k, s))
        for end, k, s in sorted(due):
            vs = held[(k, s)]
            final = end <= final_upto
            rows.append((k, s, end, len(vs), sum(vs), final, "+U" if (k, s) in emitted else "+I"))
            emitted.add((k, s))
            if final:
                del held[(k, s)]
                emitted.discard((k, s))
        fired, closed = max(fired, w), max(closed, final_upto)

    for t, k, v in recs:
        wprev = maxt - delay if maxt is not None else NEG_INF
        touched = set()
        s = (t // slide) * slide
        while s > t - size:
            if s + size + allowed > wprev:
                held.setdefault((k, s), []).append(v)
                touched.add((k, s))
            s -= slide
        maxt = t if maxt is None else max(maxt, t)
        round_(maxt - delay, touched)
    round_(float("inf"), set())
    return rows


def run_stream(recs, shape, delay, batch_size, allowed, mode):
    flow = sl.Flow("prop")
    src = flow.read("in", testing.rows(pl.DataFrame(recs, schema=["t", "k", "v"], orient="row")))
    emit = sl.Emit.each_batch() if mode == "each_batch" else sl.Emit.on_close()
    win = src.event_time("t", timedelta(milliseconds=delay)).key_by("k").window(
        "w", shape, emit=emit, allowed_lateness=timedelta(milliseconds=allowed),
        n=sl.agg.count(), s=sl.agg.sum("v"), lo=sl.agg.min("v"), avg=sl.agg.mean("v"))
    out, late = testing.collect(win), testing.collect(win.late)
    sl.run(flow, batch_size=batch_size)
    return out.frame(), late.frame()


def duck(pairs: pl.DataFrame, sql: str) -> pl.DataFrame:
    con = duckdb.connect()
    con.register("p", pairs.to_arrow())
    return con.sql(sql).pl()


def upsert(rows: pl.DataFrame, key: tuple[str, ...]) -> pl.DataFrame:
    """A tiny upsert sink: a dict keyed by the changelog key, each +I/+U row replacing the last."""
    table: dict[tuple, dict] = {}
    for r in rows.iter_rows(named=True):
        assert r["_op"] in ("+I", "+U")
        k = tuple(r[c] for c in key)
        assert (r["_op"] == "+I") == (k not in table), (r, "+I exactly for a key's first row")
        table[k] = {c: v for c, v in r.items() if c not in ("_op", "is_final")}
    return pl.DataFrame(list(table.values())) if table else rows.drop("_op", "is_final").clear()


GROUP = """select k, start as window_start, start + {size} as window_end, count(*)::bigint as n,
                  sum(v)::bigint as s, min(v)::bigint as lo, avg(v)::double as avg
           from p where on_time group by all order by window_end, k, window_start"""


def spec(size, slide):
    ms = timedelta(milliseconds=1)
    return sl.Tumbling(size * ms) if size == slide else sl.Sliding(size * ms, slide * ms)


def same(got: pl.DataFrame, expected: pl.DataFrame) -> bool:
    cols = ["k", "window_start", "window_end", "n", "s", "lo"]
    g = got.select(*cols[:4], pl.col("s").cast(pl.Int64), pl.col("lo").cast(pl.Int64), "avg")
    e = expected.cast(g.schema)
    return g.select(cols).equals(e.select(cols)) and ((g["avg"] - e["avg"]).abs() <= 1e-9 * (1 + e["avg"].abs())).all()


# the boundary, for [60000, 80000) with 1 s lateness and 19 s delay: (60000, a) arrives at W_prev = 80000,
# after the window's end and before end + lateness: it updates the window; (61000, a) arrives at
# W_prev = 81000 = end + lateness: it is late
BOUNDARY = [(99000, "b", 3), (60000, "a", 2), (100000, "a", 1), (61000, "a", 4)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, delay=delays, shape=shapes, allowed=lateness, mode=modes)
@example(recs=BOUNDARY, delay=19000, shape=(20000, 20000), allowed=1000, mode="on_close")
@example(recs=BOUNDARY, delay=19000, shape=(30000, 10000), allowed=1000, mode="each_batch")
def test_final_rows_equal_batch(recs, delay, shape, allowed, mode):
    size, slide = shape
    ref = pl.DataFrame(reference_pairs(recs, size, slide, delay, allowed),
                       schema=["t", "k", "v", "start", "on_time"], orient="row")
    expected = duck(ref, GROUP.format(size=size))
    expected_late = ref.filter(~pl.col("on_time")).select("t", "k", "v", missed_window_start="start").sort(pl.all())
    finals = None
    for batch_size in (1, 3, 1000):
        out, late = run_stream(recs, spec(size, slide), delay, batch_size, allowed, mode)
        updates = allowed > 0 or mode != "on_close"
        if not updates:  # the default: emitted once, no changelog columns
            assert "_op" not in out.columns and "is_final" not in out.columns
            final = out
        else:
            final = out.filter("is_final")
            # each (key, window) has exactly one final row, and it is its last
            last = out.with_row_index("i").group_by("k", "window_start").agg(pl.col("i").max(), pl.col("is_final").last())
            assert last["is_final"].all() and final.height == last.height
            table = upsert(out, ("k", "window_start")).sort("window_end", "k", "window_start")
            assert same(table, expected), (batch_size, table, expected)
        assert same(final, expected), (batch_size, final, expected)
        got_late = (late.select("t", "k", "v", "missed_window_start").sort(pl.all())
                    if late.height else expected_late.clear())
        assert got_late.with_columns(pl.col("k").cast(pl.String)).equals(expected_late.cast(got_late.schema)
                                                                          .with_columns(pl.col("k").cast(pl.String))), batch_size
        f = final.drop("_op", "is_final", strict=False).drop("avg")
        if finals is None:
            finals = f
        else:
            assert f.equals(finals)  # final rows identical, and in the same order, at every batch size


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, delay=delays, shape=shapes, allowed=lateness, mode=modes)
@example(recs=BOUNDARY, delay=19000, shape=(20000, 20000), allowed=1000, mode="on_close")
def test_every_row_at_batch_size_one(recs, delay, shape, allowed, mode):
    size, slide = shape
    if allowed == 0 and mode == "on_close":
        allowed = 1000
    out, _ = run_stream(recs, spec(size, slide), delay, 1, allowed, mode)
    got = [(r["k"], r["window_start"], r["window_end"], r["n"], r["s"], r["is_final"], r["_op"])
           for r in out.iter_rows(named=True)]
    assert got == reference_rows(recs, size, slide, delay, allowed, mode)
