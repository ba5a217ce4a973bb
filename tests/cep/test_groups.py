"""Group patterns with quantifiers (Flink's GroupPattern): transcripts ported from Flink's GroupITCase, each
checked against the brute-force matcher (which writes groups out as flat repeats) at batch sizes 1, 7, 65536,
and a hypothesis property over random group patterns."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from brute_force import oracle_matches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_flink_semantics import (
    SKIP_CHOICES,
    VALUES,
    P,
    assert_equals_matcher,
    canonical,
    check_checkpoint_cut,
    lit,
    matches,
    run,
)

from sluice.core.errors import PlanError


def ab() -> Any:
    return P.begin("m1").where(lit("a")).followed_by("m2").where(lit("b"))


def c_then(verb: str, group: Any) -> Any:
    return getattr(P.begin("start").where(lit("c")), verb)(group)


def then_d(p: Any) -> Any:
    return p.followed_by("end").where(lit("d"))


# --- GroupITCase ---------------------------------------------------------------------------------------
def test_group_times():  # testGroupFollowedByTimes: c (a b){2} d
    assert matches(then_d(c_then("followed_by", ab()).times(2)), "c a1 b1 a2 b2 d") == ["c a1 b1 a2 b2 d"]


def test_group_optional():  # testGroupFollowedByOptional: c (a b)? d
    assert matches(then_d(c_then("followed_by", ab()).optional()), "c a1 a2 b d") == ["c a1 b d", "c d"]


def test_group_times_optional():  # testFollowedByGroupTimesOptional: c (a b){2}? d
    assert matches(then_d(c_then("followed_by", ab()).times(2).optional()), "c a d") == ["c d"]


def test_group_one_or_more():  # testGroupFollowedByOneOrMore: c (a b)+ d
    assert matches(then_d(c_then("followed_by", ab()).one_or_more()), "c a1 b1 a2 b2 d") == \
        ["c a1 b1 a2 b2 d", "c a1 b1 d"]


def test_group_zero_or_more():  # testGroupFollowedByZeroOrMore: c (a b)* d
    assert matches(then_d(c_then("followed_by", ab()).one_or_more().optional()), "c a1 b1 a2 b2 d") == \
        ["c a1 b1 a2 b2 d", "c a1 b1 d", "c d"]


def test_group_followed_by_any_times_combinations():  # testGroupFollowedByAnyTimesCombinations
    p = then_d(c_then("followed_by_any", ab()).times(2).allow_combinations())
    assert matches(p, "c a1 b1 a2 b2 a3 b3 d") == ["c a1 b1 a2 b2 d", "c a1 b1 a3 b3 d", "c a2 b2 a3 b3 d"]


def test_group_followed_by_any_times_optional():  # testGroupFollowedByAnyTimesOptional
    p = then_d(c_then("followed_by_any", ab()).times(2).optional())
    assert matches(p, "c a1 b1 a2 b2 a3 b3 d") == ["c a1 b1 a2 b2 d", "c a2 b2 a3 b3 d", "c d"]


def test_group_followed_by_any_one_or_more():  # testGroupFollowedByAnyOneOrMore: c any (a b){1,} d
    p = then_d(c_then("followed_by_any", ab()).one_or_more())
    assert matches(p, "c a1 b1 a2 b2 a3 b3 d") == [
        "c a1 b1 a2 b2 a3 b3 d", "c a1 b1 a2 b2 d", "c a1 b1 d", "c a2 b2 a3 b3 d", "c a2 b2 d", "c a3 b3 d"]


def test_group_next_zero_or_more_consecutive():  # testGroupNextZeroOrMore: c next (a b)* consecutive d
    p = then_d(c_then("next", ab()).one_or_more().optional().consecutive())
    assert matches(p, "c a1 b1 a2 b2 a3 b3 d") == [
        "c a1 b1 a2 b2 a3 b3 d", "c a1 b1 a2 b2 d", "c a1 b1 d", "c d"]


def test_group_first_in_the_pattern_and_output_lists():
    p = P.begin(ab()).times(1, 2).followed_by("end").where(lit("d"))
    df, out, _ = run([(1000, "x", "a1"), (2000, "x", "b1"), (3000, "x", "a2"), (4000, "x", "b2"),
                      (5000, "x", "d")], p)
    # a stage inside a repeated group takes a list of events, as a quantified stage does
    rows = sorted((tuple(e["v"] for e in r["m1"]), tuple(e["v"] for e in r["m2"])) for r in out.to_dicts())
    assert rows == [(("a1",), ("b1",)), (("a1", "a2"), ("b1", "b2")), (("a2",), ("b2",))]
    assert canonical(out, p) == oracle_matches(p, df, "k")


def test_group_pattern_str_round_trips():
    p = then_d(c_then("next", ab()).one_or_more().optional().consecutive())
    assert str(p) == ("Pattern.begin('start').where(col(\"v\").str.starts_with([\"c\"]))"
                      ".next(Pattern.begin('m1').where(col(\"v\").str.starts_with([\"a\"]))"
                      ".followed_by('m2').where(col(\"v\").str.starts_with([\"b\"])))"
                      ".one_or_more().consecutive().optional().followed_by('end')"
                      ".where(col(\"v\").str.starts_with([\"d\"]))")


def test_what_a_group_pattern_refuses():
    g = c_then("followed_by", ab())
    with pytest.raises(PlanError, match="group pattern takes times"):
        g.where(lit("a"))
    with pytest.raises(PlanError, match="group pattern takes times"):
        g.one_or_more().greedy()
    with pytest.raises(PlanError, match="already has a quantifier"):
        g.times(2).one_or_more()
    with pytest.raises(PlanError, match="needs a quantifier"):
        g.consecutive()
    with pytest.raises(PlanError, match="optional first stage"):
        c_then("followed_by", P.begin("m1").where(lit("a")).optional().followed_by("m2")).times(2)
    with pytest.raises(PlanError, match="negative stage"):
        c_then("followed_by", P.begin("m1").not_next("n").followed_by("m2")).times(2)
    with pytest.raises(PlanError, match="inside a group pattern"):
        c_then("followed_by", P.begin(ab()).times(2)).followed_by("z")
    with pytest.raises(PlanError, match="right after a quantified group"):
        g.times(2).not_followed_by("n").followed_by("z").check("m")


# --- property against the brute-force matcher -----------------------------------------------------------
def _stage(draw: Any, p: Any, verb: str, name: str, quantify: bool) -> Any:
    p = P.begin(name) if p is None else getattr(p, verb)(name)
    p = p.where(pl.col("v").is_in(draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True)))
                if draw(st.booleans()) else pl.col("v") == draw(st.sampled_from(VALUES)))
    if quantify:
        q = draw(st.sampled_from(["one", "one", "times2", "more", "opt"]))
        p = {"one": p, "times2": p.times(2), "more": p.one_or_more(), "opt": p.optional()}[q]
    return p


VERBS = ["next", "followed_by", "followed_by_any"]


@st.composite
def group_patterns(draw: Any) -> Any:
    inner = _stage(draw, None, "begin", "g0", False)
    for k in range(1, draw(st.integers(1, 2)) + 1):
        inner = _stage(draw, inner, draw(st.sampled_from(VERBS)), f"g{k}", True)
    before = draw(st.booleans())
    p = _stage(draw, None, "begin", "s0", False) if before else None
    p = P.begin(inner) if p is None else getattr(p, draw(st.sampled_from(VERBS)))(inner)
    q = draw(st.sampled_from(["times2", "times13", "more", "more2", "opt"]))
    p = {"times2": p.times(2), "times13": p.times(1, 3), "more": p.one_or_more(), "more2": p.times_or_more(2),
         "opt": p.optional()}[q]
    if q != "opt":
        inner_c = draw(st.sampled_from(["relaxed", "relaxed", "strict", "any"]))
        p = {"relaxed": p, "strict": p.consecutive(), "any": p.allow_combinations()}[inner_c]
        if draw(st.integers(0, 2)) == 0:
            p = p.optional()
    if draw(st.booleans()) or not before:
        p = _stage(draw, p, draw(st.sampled_from(VERBS)), "s1", True)
    if draw(st.booleans()):
        p = p.within(timedelta(seconds=draw(st.integers(2, 6))),
                     between=draw(st.sampled_from(["first_and_last", "previous_and_current"])))
    if all(p.skippable(k) for k in range(len(p.stages))):
        p = p.followed_by("z").where(pl.col("v") == "c")
    return p


# one key mostly, and enough events for a group to repeat
group_inputs = st.lists(st.tuples(st.integers(0, 12).map(lambda s: s * 1000), st.sampled_from(["x", "x", "x", "y"]),
                                  st.sampled_from(VALUES)), min_size=3, max_size=10)
GROUP_SKIPS = [*SKIP_CHOICES[:3], "skip_to_first:g0", "skip_to_last:g0"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=group_patterns(), recs=group_inputs, skip=st.sampled_from(GROUP_SKIPS), seed=st.integers(0, 9))
def test_random_group_patterns_equal_the_brute_force_matcher(pattern, recs, skip, seed):
    assert_equals_matcher(pattern, recs, skip, seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=group_patterns(), recs=group_inputs, skip=st.sampled_from(GROUP_SKIPS[:3]), cut=st.integers(0, 9))
def test_group_state_survives_a_checkpoint_at_any_point(pattern, recs, skip, cut):
    check_checkpoint_cut(pattern, recs, skip, cut)
