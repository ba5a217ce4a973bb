"""or_where (Flink's `or()` condition): transcripts with hand-derived matches, nulls, Python functions, and
a property: `where(is_in(A)).or_where(is_in(B))` against the brute-force matcher run on the same pattern
written with one condition, `is_in(A ∪ B)`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_flink_semantics import (
    SKIP_CHOICES,
    VALUES,
    P,
    assert_equals_matcher,
    inputs,
    lit,
    matches,
)

import sluice as sl
from sluice import testing
from sluice.core.errors import PlanError


def test_or_where_takes_either():
    p = P.begin("s").where(lit("a")).or_where(lit("b")).followed_by("e").where(lit("e"))
    assert matches(p, "a1 x b1 e1") == ["a1 e1", "b1 e1"]


def test_where_before_or_where_binds_tighter_and_after_applies_to_all():
    """where(a).where(b).or_where(c) is (a and b) or c; a where() after it applies to the whole."""
    rows = pl.DataFrame({"t": [1000, 2000, 3000, 4000], "k": ["x"] * 4, "v": ["a", "a", "c", "c"],
                         "w": [1, -1, -1, 1]})

    def found(p: sl.Pattern) -> list[int]:
        flow = sl.Flow("or")
        out = testing.collect(flow.read("in", testing.rows(rows)).event_time("t", timedelta(0)).key_by("k")
                              .match("m", p))
        sl.run(flow)
        return sorted(r["s"]["t"] for r in out.frame().to_dicts())

    base = P.begin("s").where(pl.col("v") == "a").where(pl.col("w") > 0).or_where(pl.col("v") == "c")
    assert found(base) == [1000, 3000, 4000]
    assert found(base.where(pl.col("w") > 0)) == [1000, 4000]


def test_a_null_on_one_side_is_false_there():
    rows = pl.DataFrame({"t": [1000, 2000, 3000], "k": ["x"] * 3, "v": [None, "b", None], "w": [1, None, None]},
                        schema={"t": pl.Int64, "k": pl.String, "v": pl.String, "w": pl.Int64})
    flow = sl.Flow("or")
    p = P.begin("s").where(pl.col("v") == "b").or_where(pl.col("w") > 0)
    out = testing.collect(flow.read("in", testing.rows(rows)).event_time("t", timedelta(0)).key_by("k").match("m", p))
    sl.run(flow)
    assert sorted(r["s"]["t"] for r in out.frame().to_dicts()) == [1000, 2000]


def is_a(event: dict[str, Any], matched: dict[str, list[dict[str, Any]]]) -> bool:
    return str(event["v"]).startswith("a")


def is_b(event: dict[str, Any], matched: dict[str, list[dict[str, Any]]]) -> bool:
    return str(event["v"]).startswith("b")


def test_or_where_with_python_functions():
    p = P.begin("s").where(is_a).or_where(is_b).followed_by("e").where(lit("e"))
    assert matches(p, "a1 x b1 e1") == ["a1 e1", "b1 e1"]
    assert "where((is_a) or (is_b))" in str(p)


def test_what_or_where_refuses():
    with pytest.raises(PlanError, match="needs a where"):
        P.begin("s").or_where(lit("a"))
    with pytest.raises(PlanError, match="Polars expression and a Python function"):
        P.begin("s").where(is_a).or_where(lit("b"))
    with pytest.raises(PlanError, match="group pattern"):
        P.begin(P.begin("a").where(lit("a"))).or_where(lit("b"))


@st.composite
def or_patterns(draw: Any) -> tuple[sl.Pattern, sl.Pattern]:
    """(pattern with or_where, the same with each stage's condition as one is_in)."""
    p: Any = None
    q: Any = None
    for k in range(draw(st.integers(1, 3))):
        verb = "begin" if k == 0 else draw(st.sampled_from(["next", "followed_by", "followed_by_any"]))
        a = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True))
        b = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=1))
        p = P.begin(f"s{k}") if p is None else getattr(p, verb)(f"s{k}")
        q = P.begin(f"s{k}") if q is None else getattr(q, verb)(f"s{k}")
        p = p.where(pl.col("v").is_in(a)).or_where(pl.col("v").is_in(b))
        q = q.where(pl.col("v").is_in(sorted({*a, *b})))
        if draw(st.booleans()):
            p, q = p.one_or_more(), q.one_or_more()
    if draw(st.booleans()):
        w = timedelta(seconds=draw(st.integers(2, 6)))
        p, q = p.within(w), q.within(w)
    return p, q


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pq=or_patterns(), recs=inputs, skip=st.sampled_from(SKIP_CHOICES), seed=st.integers(0, 9))
def test_or_where_equals_the_brute_force_matcher_on_the_joined_condition(pq, recs, skip, seed):
    p, q = pq
    assert_equals_matcher(p, recs, skip, seed, oracle_pattern=q)


