"""Flink CEP's semantics: a transcript per bug of issue 11 and per feature, and hypothesis properties
against the brute-force matcher in brute_force.py (random patterns and inputs, out of order, batch sizes 1, 7,
65536)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from brute_force import canon, oracle_matches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing
from sluice.core.errors import PlanError

DELAY = 3_000
P = sl.Pattern


def is_(v: str) -> pl.Expr:
    return pl.col("v") == v


def run(recs: list[tuple[int, str, str]], pattern: sl.Pattern, batch_size: int = 1, skip: str = "no_skip",
        order_by: tuple[str, ...] = (), seed: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """recs: (t, key, v) in arrival order (row i is the i-th to arrive); seed shuffles arrival within DELAY."""
    if seed is not None:
        rng = random.Random(seed)
        order = sorted(range(len(recs)), key=lambda i: recs[i][0] + rng.uniform(0, DELAY - 1))
        recs = [recs[i] for i in order]
    df = pl.DataFrame(recs, schema={"t": pl.Int64, "k": pl.String, "v": pl.String}, orient="row").with_row_index("i")
    df = df.with_columns(pl.col("i").cast(pl.Int64), w=pl.lit(0, pl.Int64))
    flow = sl.Flow("cep")
    m = flow.read("in", testing.rows(df)).event_time("t", timedelta(milliseconds=DELAY)).key_by("k").match(
        "m", pattern, skip=skip, **({"order_by": order_by} if order_by else {}))
    out, timeouts, late = testing.collect(m), testing.collect(m.timeouts), testing.collect(m.late)
    sl.run(flow, batch_size=batch_size)
    assert late.frame().height == 0
    return df, out.frame(), timeouts.frame()


def ids(cell: Any) -> tuple[int, ...]:
    if cell is None:
        return ()
    if isinstance(cell, list):
        return tuple(e["i"] for e in cell)
    return (cell["i"],)


def canonical(out: pl.DataFrame, pattern: sl.Pattern) -> list[tuple[Any, ...]]:
    names = [s.name for s in pattern.stages if not s.negative]
    rows = []
    for r in out.to_dicts():
        got = {n: ids(r[n]) for n in names if ids(r[n])}
        rows.append(canon(r["k"], got, r["match_end"]))
    return sorted(rows)


def seqs(out: pl.DataFrame, pattern: sl.Pattern) -> list[str]:
    """Each match as its events' v values in event order, e.g. 'c a1 a2 b'."""
    names = [s.name for s in pattern.stages if not s.negative]
    res = []
    for r in out.to_dicts():
        evs = sorted((e for n in names for e in (r[n] if isinstance(r[n], list) else [r[n]] if r[n] else [])),
                     key=lambda e: (e["t"], e["i"]))
        res.append(" ".join(e["v"] for e in evs))
    return sorted(res)


def transcript(vs: str, key: str = "x") -> list[tuple[int, str, str]]:
    """'c a1 a2 b' → one event per second with v = the word's letters ('a1' → 'a')."""
    return [((n + 1) * 1000, key, w) for n, w in enumerate(vs.split())]


def assert_equals_matcher(pattern: sl.Pattern, recs: list[tuple[int, str, str]], skip: str, seed: int,
                          oracle_pattern: sl.Pattern | None = None) -> None:
    """The engine's matches at batch sizes 1, 7 and 65536 equal the brute-force matcher's for
    `oracle_pattern` (the same pattern unless given: a pattern the matcher reads as equivalent)."""
    expected = None
    for bs in (1, 7, 65536):
        df, out, _ = run(recs, pattern, bs, skip, seed=seed)
        if expected is None:
            expected = oracle_matches(oracle_pattern or pattern, df, "k", skip)
        assert canonical(out, pattern) == expected, (str(pattern), skip, bs)


def lit(word: str) -> pl.Expr:
    return pl.col("v").str.starts_with(word)


def matches(pattern: sl.Pattern, vs: str, skip: str = "no_skip", batch_sizes: tuple[int, ...] = (1, 7, 65536)) -> list[str]:
    """The matches at every batch size (which must agree), each checked against the oracle too."""
    recs = transcript(vs)
    found = None
    for bs in batch_sizes:
        df, out, _ = run(recs, pattern, bs, skip)
        got = seqs(out, pattern)
        assert canonical(out, pattern) == oracle_matches(pattern, df, "k", skip), (bs, got)
        assert found is None or got == found, (bs, got, found)
        found = got
    assert found is not None
    return found


# --- the bugs of issue 11, each failed before the redesign ----------------------------------------------
def test_a_taken_event_does_not_kill_the_branch_that_leaves_the_loop():
    p = P.begin("c").where(lit("c")).followed_by("a").where(lit("a")).one_or_more().followed_by("b").where(lit("b"))
    assert matches(p, "c a1 a2 b") == ["c a1 a2 b", "c a1 b"]


def test_an_optional_stage_may_be_skipped_even_when_an_event_could_take_it():
    p = P.begin("c").where(lit("c")).followed_by("a").where(lit("a")).optional().followed_by("b").where(lit("b"))
    assert matches(p, "c a b") == ["c a b", "c b"]


def test_optional_in_front_of_a_strict_stage():
    p = P.begin("s").where(lit("s")).followed_by_any("m").where(lit("m")).optional().next("e").where(lit("e"))
    assert matches(p, "s m1 m2 e") == ["s m2 e"]


def test_strict_entry_then_relaxed_loop():
    p = P.begin("c").where(lit("c")).next("a").where(lit("a")).one_or_more().followed_by("b").where(lit("b"))
    assert matches(p, "c a x b") == ["c a b"]


def test_optional_times_means_none_or_n_to_m():
    p = P.begin("c").where(lit("c")).followed_by("a").where(lit("a")).times(2, 3).optional().followed_by("b").where(lit("b"))
    got = matches(p, "c a1 b")  # one a: neither none (an a came first? no: skipping is allowed) nor 2..3
    assert got == ["c b"]
    assert matches(p, "c a1 a2 b") == ["c a1 a2 b", "c b"]


def test_skip_past_last_event_starts_after_the_last_event():
    p = P.begin("a").where(lit("a")).times(3)
    assert matches(p, "a1 a2 a3 a4 a5 a6", skip="skip_past_last_event") == ["a1 a2 a3", "a4 a5 a6"]
    _, out, _ = run(transcript("a1 a2 a3 a4 a5 a6"), p, 1, "skip_past_last_event")
    assert sorted(tuple(e["i"] for e in r["a"]) for r in out.to_dicts()) == [(0, 1, 2), (3, 4, 5)]


def test_within_is_strictly_less_than_the_duration():
    p = P.begin("a").where(lit("a")).followed_by("b").where(lit("b")).within(timedelta(seconds=2))
    assert matches(p, "a x b") == []  # b is exactly 2 s after a
    assert matches(p, "a b") == ["a b"]


def test_the_match_kept_by_a_skip_strategy_is_the_one_that_started_first():
    p = P.begin("a").where(lit("a")).followed_by_any("b").where(lit("b"))
    _, out, _ = run(transcript("a1 a2 b"), p, 1, "skip_past_last_event")
    assert [r["a"]["i"] for r in out.to_dicts()] == [0]  # (a1 b) started first; it prunes (a2 b)
    # same start, same end: the match whose events come first is kept, it prunes the other
    q = P.begin("a").where(lit("a")).followed_by_any("m").where(lit("m")).followed_by("b").where(lit("b"))
    assert matches(q, "a m1 m2 b") == ["a m1 b", "a m2 b"]
    assert matches(q, "a m1 m2 b", skip="skip_to_next") == ["a m1 b"]


def test_event_times_whose_windows_would_end_past_the_end_of_time_are_rejected():
    """The end-of-input watermark is 2^62: a window ending beyond it was never emitted and its records
    appeared nowhere. Event times beyond ±2^61 ms stop the run with the record's position and the fix."""
    for t in (2**62 - 10, 2**61, -(2**61)):
        flow = sl.Flow("far")
        rows = pl.DataFrame({"t": [1000, t], "k": ["x", "x"]})
        flow.read("in", testing.rows(rows)).event_time("t", timedelta(0)).key_by("k").window(
            "w", sl.Tumbling(timedelta(seconds=1)), n=sl.agg.count()).write("out", sl.CollectSink())
        with pytest.raises(sl.MissingTimestampError, match=r"record 1: event time .*2\^61 ms.*unit"):
            sl.run(flow)
    flow = sl.Flow("near")  # the latest time that is accepted still has its window emitted
    rows = pl.DataFrame({"t": [2**61 - 1], "k": ["x"]})
    c = testing.collect(flow.read("in", testing.rows(rows)).event_time("t", timedelta(0)).key_by("k")
                        .window("w", sl.Tumbling(timedelta(seconds=1)), n=sl.agg.count()))
    sl.run(flow)
    assert c.frame()["n"].to_list() == [1]


# --- features ------------------------------------------------------------------------------------------
def test_times_or_more_and_times_zero_to_m():
    p = P.begin("a").where(lit("a")).times_or_more(2).followed_by("b").where(lit("b"))
    assert matches(p, "a1 a2 a3 b") == ["a1 a2 a3 b", "a1 a2 b", "a2 a3 b"]
    q = P.begin("c").where(lit("c")).followed_by("a").where(lit("a")).times(0, 2).followed_by("b").where(lit("b"))
    assert matches(q, "c a1 a2 b") == ["c a1 a2 b", "c a1 b", "c b"]


def test_consecutive_and_allow_combinations():
    base = P.begin("c").where(lit("c")).followed_by("a").where(lit("a")).one_or_more()
    relaxed = base.followed_by("b").where(lit("b"))
    assert matches(relaxed, "c a1 x a2 b") == ["c a1 a2 b", "c a1 b"]
    strict = base.consecutive().followed_by("b").where(lit("b"))
    assert matches(strict, "c a1 x a2 b") == ["c a1 b"]  # x breaks the run after a1: a2 cannot join it
    combos = base.allow_combinations().followed_by("b").where(lit("b"))
    assert matches(combos, "c a1 a2 a3 b") == ["c a1 a2 a3 b", "c a1 a2 b", "c a1 a3 b", "c a1 b"]


def test_until_ends_a_loop():
    p = P.begin("c").where(lit("c")).followed_by("a").where(lit("a")).one_or_more().until(lit("ax")).followed_by(
        "b").where(lit("b"))
    assert matches(p, "c a1 ax a2 b") == ["c a1 b"]  # ax ends the loop: a2 can neither join nor start it


def test_greedy_loop_does_not_leave_while_it_can_take():
    plain = P.begin("a").where(lit("a")).followed_by("b").where(lit("b")).one_or_more().followed_by("c").where(lit("c"))
    assert matches(plain, "a b1 b2 c") == ["a b1 b2 c", "a b1 c"]
    greedy = P.begin("a").where(lit("a")).followed_by("b").where(lit("b")).one_or_more().greedy() \
        .followed_by("c").where(lit("c"))
    assert matches(greedy, "a b1 b2 c") == ["a b1 b2 c"]


def test_optional_first_and_last_stages():
    first = P.begin("a").where(lit("a")).optional().followed_by("b").where(lit("b"))
    assert matches(first, "a b") == ["a b", "b"]
    last = P.begin("a").where(lit("a")).followed_by("b").where(lit("b")).optional()
    assert matches(last, "a b") == ["a", "a b"]


def test_not_next_and_not_followed_by():
    nn = P.begin("a").where(lit("a")).not_next("x").where(lit("x")).followed_by("b").where(lit("b"))
    assert matches(nn, "a x b") == []
    assert matches(nn, "a y x b") == ["a b"]
    nf = P.begin("a").where(lit("a")).not_followed_by("x").where(lit("x")).followed_by("b").where(lit("b"))
    assert matches(nf, "a y x b") == []
    assert matches(nf, "a y b x") == ["a b"]
    # an event that satisfies both the negation and the last stage completes the match (Flink keeps the
    # matches a path made before discarding it); before another stage it ends the partial match
    both = P.begin("a").where(lit("a")).not_followed_by("x").where(lit("x")).followed_by("b").where(lit("xb"))
    assert matches(both, "a xb") == ["a xb"]
    assert matches(both.followed_by("c").where(lit("c")), "a xb c") == []


def test_a_trailing_not_followed_by_is_emitted_when_within_runs_out():
    p = P.begin("a").where(lit("a")).not_followed_by("x").where(lit("x")).within(timedelta(seconds=3))
    recs = [(1000, "k", "a"), (2000, "k", "y"), (3500, "k", "x"), (10_000, "k", "a"), (20_000, "k", "z")]
    for bs in (1, 7, 65536):
        df, out, timeouts = run(recs, p, bs)
        assert [(ids(r["a"]), r["match_end"]) for r in out.to_dicts()] == [((3,), 13_000)]
        assert timeouts.height == 0  # a1 was ended by x; a2's pending match completed
        assert canonical(out, p) == oracle_matches(p, df, "k")


def test_skip_strategies_as_in_flinks_documentation():
    """Flink's docs: pattern b+ c (consecutive b's, then c next) over b1 b2 b3 c."""
    p = P.begin("b").where(lit("b")).one_or_more().consecutive().next("c").where(lit("c"))
    every = ["b1 b2 b3 c", "b2 b3 c", "b3 c"]
    assert matches(p, "b1 b2 b3 c") == every
    assert matches(p, "b1 b2 b3 c", skip="skip_to_next") == every
    assert matches(p, "b1 b2 b3 c", skip="skip_past_last_event") == ["b1 b2 b3 c"]
    assert matches(p, "b1 b2 b3 c", skip="skip_to_first:b") == every
    assert matches(p, "b1 b2 b3 c", skip="skip_to_last:b") == ["b1 b2 b3 c", "b3 c"]
    # (a|b|c) (b|c) c+.greedy d over a b c1 c2 c3 d
    abc, bc = lit("a") | lit("b") | lit("c"), lit("b") | lit("c")
    q = (P.begin("x").where(abc).next("y").where(bc).next("z").where(lit("c")).one_or_more().consecutive().greedy()
         .next("d").where(lit("d")))
    assert matches(q, "a b c1 c2 c3 d") == ["a b c1 c2 c3 d", "b c1 c2 c3 d", "c1 c2 c3 d"]
    assert matches(q, "a b c1 c2 c3 d", skip="skip_past_last_event") == ["a b c1 c2 c3 d"]
    assert matches(q, "a b c1 c2 c3 d", skip="skip_to_first:z") == ["a b c1 c2 c3 d", "c1 c2 c3 d"]


def test_within_between_previous_and_current():
    p = P.begin("a").where(lit("a")).followed_by("b").where(lit("b")).followed_by("c").where(lit("c")) \
        .within(timedelta(milliseconds=1500), between="previous_and_current")
    assert matches(p, "a b c") == ["a b c"]  # each step 1 s; the whole match spans 2 s
    assert matches(p, "a x b c") == []


def test_tie_breaker_for_equal_times():
    p = P.begin("a").where(lit("a")).next("b").where(lit("b"))
    recs = [(1000, "x", "b"), (1000, "x", "a")]  # b arrives first
    _, out, _ = run(recs, p)
    assert out.height == 0
    recs2 = [(1000, "x", "b", 2), (1000, "x", "a", 1)]
    df = pl.DataFrame(recs2, schema={"t": pl.Int64, "k": pl.String, "v": pl.String, "rank": pl.Int64}, orient="row")
    df = df.with_row_index("i").with_columns(pl.col("i").cast(pl.Int64))
    flow = sl.Flow("tie")
    m = flow.read("in", testing.rows(df)).event_time("t", timedelta(0)).key_by("k").match("m", p, order_by="rank")
    c = testing.collect(m)
    sl.run(flow)
    assert [(r["a"]["i"], r["b"]["i"]) for r in c.frame().to_dicts()] == [(1, 0)]


def test_group_patterns_without_quantifiers_are_their_stages_in_order():
    inner = P.begin("b").where(lit("b")).next("c").where(lit("c"))
    grouped = P.begin("a").where(lit("a")).followed_by(inner).followed_by("d").where(lit("d"))
    flat = P.begin("a").where(lit("a")).followed_by("b").where(lit("b")).next("c").where(lit("c")) \
        .followed_by("d").where(lit("d"))
    assert matches(grouped, "a x b c y d") == matches(flat, "a x b c y d") == ["a b c d"]
    assert matches(P.begin(inner).followed_by("d").where(lit("d")), "b c d") == ["b c d"]
    with pytest.raises(PlanError, match="group pattern"):  # quantified groups: test_groups.py
        P.begin("a").followed_by(inner).where(lit("a"))


# --- properties against the brute-force matcher ----------------------------------------------------------
VALUES = ["a", "b", "c"]


@st.composite
def patterns(draw: Any) -> sl.Pattern:
    n = draw(st.integers(1, 3))
    p: sl.Pattern | None = None
    for k in range(n):
        name = f"s{k}"
        verb = "begin" if k == 0 else draw(st.sampled_from(["next", "followed_by", "followed_by_any"]))
        p = P.begin(name) if p is None else getattr(p, verb)(name)
        vals = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True))
        p = p.where(pl.col("v").is_in(vals))
        q = draw(st.sampled_from(["one", "one", "times2", "times13", "more", "more2"]))
        if q == "times2":
            p = p.times(2)
        elif q == "times13":
            p = p.times(1, 3)
        elif q == "more":
            p = p.one_or_more()
        elif q == "more2":
            p = p.times_or_more(2)
        if q != "one":
            p = {"relaxed": p, "strict": p.consecutive(), "any": p.allow_combinations()}[
                draw(st.sampled_from(["relaxed", "relaxed", "strict", "any"]))]
            if q in ("more", "more2", "times13") and draw(st.booleans()) and k < n - 1:
                p = p.greedy()
            if q in ("more", "more2") and draw(st.integers(0, 3)) == 0:
                p = p.until(pl.col("v") == draw(st.sampled_from(VALUES)))
        if draw(st.integers(0, 3)) == 0:
            p = p.optional()
    assert p is not None
    if all(s.optional for s in p.stages):
        p = p.followed_by("z").where(pl.col("v") == "c")
    if draw(st.booleans()):
        p = p.within(timedelta(seconds=draw(st.integers(2, 6))),
                     between=draw(st.sampled_from(["first_and_last", "previous_and_current"])))
    return p


inputs = st.lists(st.tuples(st.integers(0, 12).map(lambda s: s * 1000), st.sampled_from(["x", "y"]),
                            st.sampled_from([*VALUES, "d"])), min_size=1, max_size=9)
SKIP_CHOICES = ["no_skip", "skip_to_next", "skip_past_last_event", "skip_to_first:s0", "skip_to_last:s0"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=patterns(), recs=inputs, skip=st.sampled_from(SKIP_CHOICES), seed=st.integers(0, 9))
def test_random_patterns_equal_the_brute_force_matcher(pattern, recs, skip, seed):
    assert_equals_matcher(pattern, recs, skip, seed)


@st.composite
def negated(draw: Any) -> sl.Pattern:
    p = P.begin("s0").where(pl.col("v") == draw(st.sampled_from(VALUES)))
    verb = draw(st.sampled_from(["not_next", "not_followed_by"]))
    p = getattr(p, verb)("n").where(pl.col("v") == draw(st.sampled_from(VALUES)))
    if draw(st.booleans()) or verb == "not_next":
        p = getattr(p, draw(st.sampled_from(["next", "followed_by", "followed_by_any"])))("s1").where(
            pl.col("v").is_in(draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True))))
        if draw(st.booleans()):
            p = p.one_or_more()
    if p.stages[-1].negative or draw(st.booleans()):
        p = p.within(timedelta(seconds=draw(st.integers(2, 6))))
    return p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=negated(), recs=inputs, skip=st.sampled_from(SKIP_CHOICES[:3]), seed=st.integers(0, 9))
def test_negations_equal_the_brute_force_matcher(pattern, recs, skip, seed):
    assert_equals_matcher(pattern, recs, skip, seed)


def always(event: dict[str, Any], matched: dict[str, list[dict[str, Any]]]) -> bool:
    return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verbs=st.lists(st.sampled_from(["next", "followed_by"]), min_size=0, max_size=3),
       vals=st.lists(st.sampled_from(VALUES), min_size=4, max_size=4), recs=inputs, seed=st.integers(0, 9),
       within=st.sampled_from([None, 2, 4]), between=st.sampled_from(["first_and_last", "previous_and_current"]))
def test_the_vectorized_path_equals_the_nfa(verbs, vals, recs, seed, within, between):
    """Single stages entered with next/followed_by run as joins (match_sequence.py); a Python condition
    that is always true sends the same pattern through the NFA. Matches and timeouts agree."""
    fast = P.begin("s0").where(is_(vals[0]))
    for k, verb in enumerate(verbs, 1):
        fast = getattr(fast, verb)(f"s{k}").where(is_(vals[k]))
    if within is not None:
        fast = fast.within(timedelta(seconds=within), between=between)
    slow = sl.Pattern(tuple(replace(s, conditions=(*s.conditions, always)) for s in fast.stages), fast.within_ms,
                      fast.within_between)
    for bs in (1, 7, 65536):
        df, out_fast, to_fast = run(recs, fast, bs, seed=seed)
        _, out_slow, to_slow = run(recs, slow, bs, seed=seed)
        assert canonical(out_fast, fast) == canonical(out_slow, slow) == oracle_matches(fast, df, "k")
        assert sorted(map(str, to_fast.drop("__sl_time", "__sl_wm", strict=False).to_dicts())) == \
            sorted(map(str, to_slow.drop("__sl_time", "__sl_wm", strict=False).to_dicts()))


def _through_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as a checkpoint keeps it: frames as Arrow IPC bytes, everything else as JSON."""
    import io
    import json

    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, pl.DataFrame):
            buf = io.BytesIO()
            v.write_ipc(buf)
            out[k] = pl.read_ipc(io.BytesIO(buf.getvalue()))
        else:
            out[k] = json.loads(json.dumps(v))
    return out


def _feed(op: Any, batches: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for b in batches:
        for port, out in op.on_batch(0, b):
            rows += [{"port": port, **r} for r in out.df.drop("__sl_wm", strict=False).to_dicts()]
    return rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=st.one_of(patterns(), negated()), recs=inputs, skip=st.sampled_from(SKIP_CHOICES[:3]),
       cut=st.integers(0, 9))
def test_state_survives_a_checkpoint_at_any_point(pattern, recs, skip, cut):
    """Snapshot after any batch, through Arrow and JSON, restored into a fresh operator: the output goes on
    exactly as without the interruption (partial matches, held matches, shared node chains)."""
    check_checkpoint_cut(pattern, recs, skip, cut)


def test_matches_held_by_a_skip_strategy_survive_a_checkpoint():
    """A case (found by search) where a match waits on an earlier-started partial match across batches."""
    p = (P.begin("s0").where(pl.col("v").is_in(["a", "c"])).times_or_more(2).greedy().optional()
         .followed_by("s1").where(pl.col("v").is_in(["c", "b"])).one_or_more()
         .within(timedelta(seconds=5), between="previous_and_current"))
    recs = [(2000, "x", "a"), (2000, "y", "c"), (3000, "y", "a"), (4000, "x", "b"), (5000, "x", "b"),
            (6000, "x", "b"), (8000, "y", "b"), (9000, "y", "c"), (10000, "y", "a")]
    held = [check_checkpoint_cut(p, recs, "skip_to_next", cut) for cut in range(6)]
    assert any(held)


def check_checkpoint_cut(pattern: sl.Pattern, recs: list[tuple[int, str, str]], skip: str, cut: int) -> bool:
    """Run with a snapshot/restore after `cut` batches of two; True if matches were held at the cut."""
    from sluice.core.batch import TIME, WATERMARK, Batch
    from sluice.operators.match import MatchOperator

    df = pl.DataFrame(sorted(recs), schema={"t": pl.Int64, "k": pl.String, "v": pl.String}, orient="row")
    df = df.with_row_index("i").with_columns(pl.col("i").cast(pl.Int64))
    df = df.with_columns(pl.col("t").alias(TIME), (pl.col("t").cum_max().shift(1, fill_value=-(2**62)) - 1).alias(WATERMARK))
    batches = [Batch(df[i:i + 2], watermark=int(df["t"][min(i + 1, df.height - 1)]) - 1) for i in range(0, df.height, 2)]

    def make() -> MatchOperator:
        return MatchOperator("m", ["k"], [pl.col("k")], pattern, skip)

    whole = make()
    expected = _feed(whole, batches) + [{"port": p, **r} for p, b in whole.on_end() for r in b.df.drop("__sl_wm", strict=False).to_dicts()]
    cut = min(cut, len(batches))
    first = make()
    got = _feed(first, batches[:cut])
    second = make()
    held = bool(first.held)
    second.restore(_through_checkpoint(first.snapshot()))
    got += _feed(second, batches[cut:]) + [{"port": p, **r} for p, b in second.on_end() for r in b.df.drop("__sl_wm", strict=False).to_dicts()]
    assert sorted(map(str, got)) == sorted(map(str, expected))
    return held


def test_processing_time_patterns():
    """time="processing": arrival order (an event-time column, if any, is not used), `within` and the
    output's times on the clock at arrival."""
    from sluice.core.batch import Batch
    from sluice.operators.match import MatchOperator

    now = [0]
    p = P.begin("a").where(lit("a")).followed_by("b").where(lit("b")).within(timedelta(seconds=2))
    op = MatchOperator("m", ["k"], [pl.col("k")], p, "no_skip", time="processing", clock=lambda: now[0])

    def feed(at: int, vs: list[str]) -> dict[str, list[Any]]:
        now[0] = at
        df = pl.DataFrame({"k": ["x"] * len(vs), "v": vs, "t": [10_000 - n for n in range(len(vs))]})
        got: dict[str, list[Any]] = {}
        for port, b in op.on_batch(0, Batch(df)):
            got.setdefault(port, []).extend(b.df.drop("__sl_time", "__sl_wm", strict=False).to_dicts())
        return got

    assert feed(1000, ["a1"]).get("out", []) == []
    out = feed(1500, ["x", "b1"])["out"]  # b1 arrives after a1, though its t is smaller
    assert [(r["a"]["v"], r["b"]["v"], r["match_start"], r["match_end"]) for r in out] == [("a1", "b1", 1000, 1500)]
    assert feed(2000, ["a2"]).get("out", []) == []
    got = feed(5000, ["b2"])  # a2's time ran out at 4000, before b2 came
    assert got.get("out", []) == [] and [(r["a"]["v"], r["timeout_at"]) for r in got["timeouts"]] == [("a2", 4000)]
    # through a flow: no event_time step needed
    flow = sl.Flow("proc")
    rows = pl.DataFrame({"k": ["x"] * 4, "v": ["a1", "b1", "a2", "b2"]})
    c = testing.collect(flow.read("in", testing.rows(rows)).key_by("k").match(
        "m", P.begin("a").where(lit("a")).followed_by("b").where(lit("b")), time="processing"))
    sl.run(flow, batch_size=1)
    assert sorted((r["a"]["v"], r["b"]["v"]) for r in c.frame().to_dicts()) == [("a1", "b1"), ("a2", "b2")]


def test_flinks_until_condition_transcripts():
    """UntilConditionITCase: c, then a's until a 5 (which ends the loop and is the end event)."""
    five = pl.col("v") == "a5"

    def pattern(loop: Any, verb: str = "followed_by", end: bool = True) -> sl.Pattern:
        p = loop(getattr(P.begin("start").where(lit("c")), verb)("middle").where(lit("a")).one_or_more()).until(five)
        return p.followed_by("end").where(five) if end else p

    plain, optional = (lambda p: p), (lambda p: p.optional())
    assert matches(pattern(plain), "c1 a2 a3 a5 a6") == ["c1 a2 a3 a5", "c1 a2 a5"]
    assert matches(pattern(lambda p: p.allow_combinations()), "c1 a2 a3 a4 a5 a6") == \
        ["c1 a2 a3 a4 a5", "c1 a2 a3 a5", "c1 a2 a4 a5", "c1 a2 a5"]
    assert matches(pattern(lambda p: p.consecutive()), "c1 a2 a3 a5 a6") == ["c1 a2 a3 a5", "c1 a2 a5"]
    assert matches(pattern(optional), "c1 a2 a3 a5 a6") == ["c1 a2 a3 a5", "c1 a2 a5", "c1 a5"]
    assert matches(pattern(lambda p: p.optional().allow_combinations()), "c1 a2 a3 a4 a5 a6") == \
        ["c1 a2 a3 a4 a5", "c1 a2 a3 a5", "c1 a2 a4 a5", "c1 a2 a5", "c1 a5"]
    assert matches(pattern(lambda p: p.optional().consecutive()), "c1 a2 a3 a5 a6") == \
        ["c1 a2 a3 a5", "c1 a2 a5", "c1 a5"]
    assert matches(pattern(plain, "followed_by_any", end=False), "c1 a2 a3 a5 a6") == \
        ["c1 a2", "c1 a2 a3", "c1 a3", "c1 a6"]


def test_flinks_greedy_transcripts():
    """GreedyITCase: c, a greedy a* (one_or_more().optional().greedy()), then d."""
    c, a, d, e = lit("c"), lit("a"), lit("d"), lit("e")

    def loop() -> sl.Pattern:
        return P.begin("start").where(c).followed_by("middle").where(a).one_or_more().optional().greedy()

    cad = loop().followed_by("end").where(d)
    assert matches(cad, "c a1 a2 a3 d") == ["c a1 a2 a3 d"]
    assert matches(cad, "c x1 a1 x2 a2 x3 a3 d") == ["c a1 a2 a3 d"]
    assert matches(cad, "c a1 a2 x d") == ["c a1 a2 d"]
    assert matches(cad, "c x d") == ["c d"]
    cade = loop().followed_by("middle2").where(d).optional().followed_by("end").where(e)
    assert matches(cade, "c a1 a2 x e") == ["c a1 a2 e"]
    assert matches(cade, "c a1 a2 d e") == ["c a1 a2 d e", "c a1 a2 e"]


def test_greedy_zero_or_more_consecutive_end_with_optional_differs_from_flink():
    """GreedyITCase.testGreedyZeroOrMoreConsecutiveEndWithOptional expects only (c a1 a2 a3 d): Flink's
    current compiler guards a greedy stage's exit with the following stages' take condition
    (getGreedyCondition/followingTakeCondition), so `a*` is not left on c, which `d` cannot take. Sluice
    keeps the guard on the next state's edges (updateWithGreedyCondition), and there every stage after c
    is optional, so c alone completes. Pinned here and stated in docs/cep.md."""
    p = (P.begin("start").where(lit("c")).followed_by("middle").where(lit("a")).one_or_more().optional()
         .consecutive().greedy().followed_by("end").where(lit("d")).optional())
    assert matches(p, "c a1 a2 a3 d") == ["c", "c a1 a2 a3 d"]
    # with a required stage after the greedy one, both compilers agree (testGreedyZeroOrMore)
    q = (P.begin("start").where(lit("c")).followed_by("middle").where(lit("a")).one_or_more().optional()
         .greedy().followed_by("end").where(lit("d")))
    assert matches(q, "c a1 a2 a3 d") == ["c a1 a2 a3 d"]
