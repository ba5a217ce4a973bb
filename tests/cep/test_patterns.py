"""Patterns against DuckDB (two-stage patterns, each contiguity) and transcripts (quantifiers, skips,
timeouts, conditions on earlier events), on out-of-order input at several batch sizes."""

from __future__ import annotations

import random
from datetime import timedelta

import duckdb
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

DELAY = 3_000
WITHIN = 10_000
events = st.lists(st.tuples(st.integers(0, 20).map(lambda s: s * 1000), st.sampled_from(["x", "y"]),
                            st.sampled_from([5, 50, 95])), min_size=3, max_size=50)


def arrive(recs, seed):
    rng = random.Random(seed)
    return sorted(recs, key=lambda r: r[0] + rng.uniform(0, DELAY - 1))  # within the delay: nothing late


def run(recs, pattern, batch_size, skip="no_skip"):
    df = pl.DataFrame(recs, schema={"t": pl.Int64, "k": pl.String, "v": pl.Int64}, orient="row").with_row_index("i")
    flow = sl.Flow("cep")
    m = flow.read("in", testing.rows(df.with_columns(pl.col("i").cast(pl.Int64)))).event_time(
        "t", timedelta(milliseconds=DELAY)).key_by("k").match("m", pattern, skip=skip)
    out, timeouts, late = testing.collect(m), testing.collect(m.timeouts), testing.collect(m.late)
    sl.run(flow, batch_size=batch_size)
    return df, out.frame(), timeouts.frame(), late.frame()


def pairs(out: pl.DataFrame) -> list[tuple[int, int]]:
    if out.height == 0:
        return []
    return sorted(zip(out["a"].struct.field("i").to_list(), out["b"].struct.field("i").to_list(), strict=True))


def two_stage(contiguity: str) -> sl.Pattern:
    p = sl.Pattern.begin("a").where(pl.col("v") < 10)
    p = {"any": p.followed_by_any("b"), "relaxed": p.followed_by("b"), "strict": p.next("b")}[contiguity]
    return p.where(pl.col("v") > 90).within(timedelta(milliseconds=WITHIN))


ORACLE = {
    "any": """select a.i, b.i from e a join e b on a.k = b.k and (b.t, b.i) > (a.t, a.i)
              where a.v < 10 and b.v > 90 and b.t - a.t < {w}""",
    "relaxed": """select a_i, b_i from (
                    select a.i a_i, arg_min(b.i, (b.t, b.i)) b_i, min(b.t) b_t, any_value(a.t) a_t
                    from e a join e b on a.k = b.k and (b.t, b.i) > (a.t, a.i) and b.v > 90
                    where a.v < 10 group by a.i) where b_t - a_t < {w}""",
    "strict": """select i, ni from (select i, v, t, lead(i) over o ni, lead(v) over o nv, lead(t) over o nt
                 from e window o as (partition by k order by t, i)) where v < 10 and nv > 90 and nt - t < {w}""",
}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=events, contiguity=st.sampled_from(["any", "relaxed", "strict"]), seed=st.integers(0, 99))
def test_two_stage_patterns_equal_duckdb(recs, contiguity, seed):
    recs = arrive(recs, seed)
    first = None
    for batch_size in (1, 3, 1000):
        df, out, _timeouts, late = run(recs, two_stage(contiguity), batch_size)
        assert late.height == 0
        con = duckdb.connect()
        con.register("e", df.to_arrow())
        expected = sorted(con.sql(ORACLE[contiguity].format(w=WITHIN)).fetchall())
        assert pairs(out) == expected, (contiguity, batch_size)
        if first is None:
            first = out
        else:
            assert out.equals(first)


def test_each_contiguity_on_one_transcript():
    recs = [(1000, "x", 5), (2000, "x", 50), (3000, "x", 95), (4000, "x", 5), (5000, "x", 95)]
    assert pairs(run(recs, two_stage("strict"), 1)[1]) == [(3, 4)]  # 50 sits between 5 and the first 95
    assert pairs(run(recs, two_stage("relaxed"), 1)[1]) == [(0, 2), (3, 4)]
    assert pairs(run(recs, two_stage("any"), 1)[1]) == [(0, 2), (0, 4), (3, 4)]


def test_quantifier_and_skip_past_last_event():
    p = sl.Pattern.begin("a").where(pl.col("v") < 10).times(2).followed_by("b").where(pl.col("v") > 90)
    recs = [(1000, "x", 5), (2000, "x", 5), (3000, "x", 5), (4000, "x", 95)]
    _, out, _, _ = run(recs, p, 1)
    got = sorted((tuple(e["i"] for e in r["a"]), r["b"]["i"]) for r in out.to_dicts())
    # relaxed contiguity takes the next matching a: (0, 1) and (1, 2), not (0, 2)
    assert got == [((0, 1), 3), ((1, 2), 3)]
    _, out, _, _ = run(recs, p, 1, skip="skip_past_last_event")
    assert [tuple(e["i"] for e in r["a"]) for r in out.to_dicts()] == [(0, 1)]  # the oldest only


def test_skip_to_next_drops_what_started_with_the_match():
    any_b = sl.Pattern.begin("a").where(pl.col("v") < 10).followed_by_any("b").where(pl.col("v") > 90)
    recs = [(1000, "x", 5), (2000, "x", 5), (3000, "x", 95), (4000, "x", 95)]
    _, out, _, _ = run(recs, any_b, 1)
    assert pairs(out) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    _, out, _, _ = run(recs, any_b, 1, skip="skip_to_next")
    assert pairs(out) == [(0, 2), (1, 2)]  # after a's first match, its other branches are dropped


def test_timeouts_and_conditions_on_earlier_events():
    rising = (sl.Pattern.begin("first").where(pl.col("v") > 0)
              .followed_by("higher").where(lambda e, m: e["v"] > m["first"][0]["v"])
              .within(timedelta(seconds=5)))
    recs = [(0, "x", 5), (1000, "x", 3), (2000, "x", 50), (30_000, "x", 95)]
    _, out, timeouts, _ = run(recs, rising, 2)
    got = sorted((r["first"]["v"], r["higher"]["v"]) for r in out.to_dicts())
    assert got == [(3, 50), (5, 50)]
    assert sorted(timeouts["timeout_at"].to_list()) == [7_000, 35_000]  # 50 started one; so did 95 (never matched)


def _b_runs(pattern, recs):
    """For each match: the row indexes of its `b` events, at every batch size (all must agree)."""
    results = set()
    for batch_size in (1, 2, 3, 1000):
        _, out, _, late = run(recs, pattern, batch_size)
        assert late.height == 0
        results.add(tuple(sorted(tuple(e["i"] for e in r["b"]) for r in out.to_dicts())))
    assert len(results) == 1, results
    return list(results.pop())


A, B, NOISE = 5, 95, 50  # a: v < 10, b: v > 90, noise: neither


def test_consecutive_makes_the_repeats_of_a_stage_strict():
    """`next("b").times(2)` enters b strictly; between the repeats contiguity is relaxed (Flink's default)
    unless `consecutive()`: then an event of the key between the two b's breaks the match."""
    p = sl.Pattern.begin("a").where(pl.col("v") < 10).next("b").where(pl.col("v") > 90).times(2)
    assert _b_runs(p, [(1000, "x", A), (2000, "x", B), (3000, "x", B)]) == [(1, 2)]
    assert _b_runs(p, [(1000, "x", A), (2000, "x", B), (3000, "x", NOISE), (4000, "x", B)]) == [(1, 3)]
    strict = sl.Pattern.begin("a").where(pl.col("v") < 10).next("b").where(pl.col("v") > 90).times(2).consecutive()
    assert _b_runs(strict, [(1000, "x", A), (2000, "x", B), (3000, "x", NOISE), (4000, "x", B)]) == []
    assert _b_runs(strict, [(1000, "x", A), (2000, "x", B), (3000, "x", B)]) == [(1, 2)]


def test_consecutive_one_or_more_stops_at_the_first_other_event():
    p = sl.Pattern.begin("a").where(pl.col("v") < 10).next("b").where(pl.col("v") > 90).one_or_more().consecutive()
    recs = [(1000, "x", A), (2000, "x", B), (3000, "x", B), (4000, "x", NOISE), (5000, "x", B)]
    # a match at each b while the run is unbroken; the b after the noise extends nothing
    assert _b_runs(p, recs) == [(1,), (1, 2)]
    # another key's events do not break the run
    recs = [(1000, "x", A), (2000, "x", B), (2500, "y", NOISE), (3000, "x", B)]
    assert _b_runs(p, recs) == [(1,), (1, 3)]
