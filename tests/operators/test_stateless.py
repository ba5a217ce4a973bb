"""filter / select / with_columns / map / flat_map / branch / union, and the plan they make."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

import sluice as sl
from sluice import testing

ROWS = {"ts": [1000, 2000, 3000, 4000], "user": ["a", "b", "a", "c"], "amount": [5.0, 1500.0, 20.0, 2000.0],
        "meta": [{"country": "DE"}, {"country": "US"}, {"country": "DE"}, {"country": "FR"}]}


def run(build, batch_size=2):
    flow = sl.Flow("t")
    sinks = build(flow.read("in", testing.rows(ROWS)))
    sl.run(flow, batch_size=batch_size)
    return [s.frame() for s in sinks] if isinstance(sinks, list) else sinks.frame()


def test_filter_select_with_columns_use_column_expressions():
    out = run(lambda s: testing.collect(
        s.filter(pl.col("amount") > 10).with_columns(big=pl.col("amount") > 1000).select("user", "big", country="meta.country")))
    assert out.to_dicts() == [
        {"user": "b", "big": True, "country": "US"},
        {"user": "a", "big": False, "country": "DE"},
        {"user": "c", "big": True, "country": "FR"},
    ]


def test_map_and_flat_map_are_per_record_escape_hatches():
    mapped, flat = run(lambda s: [
        testing.collect(s.map(lambda r: {"user": r["user"].upper()})),
        testing.collect(s.flat_map(lambda r: [{"user": r["user"], "i": i} for i in range(int(r["amount"] > 1000) + 1)])),
    ])
    assert mapped["user"].to_list() == ["A", "B", "A", "C"]
    assert flat.to_dicts() == [{"user": "a", "i": 0}, {"user": "b", "i": 0}, {"user": "b", "i": 1},
                               {"user": "a", "i": 0}, {"user": "c", "i": 0}, {"user": "c", "i": 1}]


def test_map_keeps_event_time_for_windows_downstream():
    def build(s):
        timed = s.event_time("ts", timedelta(0)).map(lambda r: {"user": r["user"], "x": 1})
        return testing.collect(timed.key_by("user").window("w", sl.Tumbling(timedelta(seconds=10)), n=sl.agg.sum("x")))
    out = run(build)
    assert sorted(out.select("user", "n").rows()) == [("a", 2), ("b", 1), ("c", 1)]


def test_branch_routes_each_row_once():
    def build(s):
        b = s.branch("split", large=pl.col("amount") > 1000, german=pl.col("meta").struct.field("country") == "DE")
        return [testing.collect(b.large), testing.collect(b.german), testing.collect(b.other)]
    large, german, other = run(build)
    assert large["user"].to_list() == ["b", "c"]
    assert german["user"].to_list() == ["a", "a"]
    assert other.height == 0


def test_union_watermark_is_the_minimum_of_its_inputs():
    flow = sl.Flow("u")
    fast = flow.read("fast", testing.rows({"ts": [100_000, 200_000], "k": ["x", "x"]})).event_time("ts", timedelta(0))
    slow = flow.read("slow", testing.rows({"ts": [1_000, 2_000], "k": ["x", "x"]})).event_time("ts", timedelta(0))
    win = fast.union(slow).key_by("k").window("w", sl.Tumbling(timedelta(seconds=10)), n=sl.agg.count())
    out, late = testing.collect(win), testing.collect(win.late)
    sl.run(flow, batch_size=1)
    assert late.frame().height == 0  # the slow input's records are not late: it held the watermark back
    assert out.frame()["n"].sum() == 4


def test_explain_names_every_step():
    flow = sl.Flow("shop")
    src = flow.read("orders", testing.rows(ROWS))
    src.filter(pl.col("amount") > 10).key_by("user").event_time("ts", timedelta(seconds=5)).window(
        "totals", sl.Tumbling(timedelta(minutes=1)), total=sl.agg.sum("amount")).write("out", sl.ConsoleSink())
    text = flow.explain()
    for piece in ("flow 'shop'", "orders: read [stateful]", "filter_1: filter <- orders", "totals: window [stateful]",
                  "Tumbling(size=datetime.timedelta(seconds=60)", "out: write [stateful] <- totals"):
        assert piece in text


def test_plan_errors_point_at_the_mistake():
    flow = sl.Flow("t")
    src = flow.read("in", testing.rows(ROWS))
    with pytest.raises(sl.PlanError, match="already has a step named 'in'"):
        flow.read("in", testing.rows(ROWS))
    with pytest.raises(sl.PlanError, match="has no 'late' stream"):
        _ = src.late
    with pytest.raises(sl.PlanError, match="writes nowhere"):
        flow.plan()
    with pytest.raises(sl.PlanError, match="slide"):
        src.window("w", sl.Sliding(timedelta(seconds=1), timedelta(seconds=2)), n=sl.agg.count())
    with pytest.raises(sl.PlanError, match="on_error"):
        src.map(lambda r: r, on_error="ignore")


def test_global_window_without_key():
    out = run(lambda s: testing.collect(s.event_time("ts", timedelta(0)).window(
        "w", sl.Tumbling(timedelta(minutes=1)), n=sl.agg.count(), mean=sl.agg.mean("amount"))))
    assert out.select("window_start", "n", "mean").to_dicts() == [{"window_start": 0, "n": 4, "mean": 881.25}]


def test_generator_is_deterministic_across_batch_sizes():
    frames = []
    for bs in (1000, 65536):
        flow = sl.Flow("g")
        out = testing.collect(flow.read("gen", sl.GeneratorSource("transactions", n=5000)))
        sl.run(flow, batch_size=bs)
        frames.append(out.frame())
    assert frames[0].equals(frames[1])
    assert frames[0].columns == ["tx_id", "user_id", "amount", "timestamp", "location"]
    assert frames[0]["tx_id"][4999] == "t000004999"
    ts = frames[0]["timestamp"]
    assert (ts - ts.cum_max()).min() >= -5000  # disorder stays within the documented 5 s


def test_select_and_with_columns_can_make_a_column_called_name():
    flow = sl.Flow("t")
    src = flow.read("in", testing.rows(ROWS))
    picked = src.select(name=pl.col("user"), step="pick")
    out = testing.collect(picked.with_columns(name=pl.col("name").str.to_uppercase(), step="upper"))
    assert picked.ref.step == "pick"
    sl.run(flow)
    assert out.frame().to_dicts() == [{"name": "A"}, {"name": "B"}, {"name": "A"}, {"name": "C"}]


def test_an_empty_collected_stream_keeps_its_columns():
    out = run(lambda s: testing.collect(s.filter(pl.col("amount") > 1e9).select("user", "amount")))
    assert out.height == 0
    assert out.schema == pl.Schema({"user": pl.String, "amount": pl.Float64})


def test_explain_prints_expressions_step_kinds_optional_fields_and_pattern_quantifiers():
    flow = sl.Flow("shop")
    src = flow.read("orders", testing.rows(ROWS), schema={"ts": int, "user": str, "amount": sl.Optional(float)})
    t = src.filter((pl.col("amount") > 3) & (pl.col("user") != "x")).key_by("user").event_time("ts", timedelta(0))
    t.window("totals", sl.Tumbling(timedelta(minutes=1)), total=sl.agg.sum("amount")).write("w", sl.ConsoleSink())
    t.temporal_join("tj", t, by="user").write("t", sl.ConsoleSink())
    t.asof_join("aj", t, by="user", tolerance=timedelta(seconds=1)).write("a", sl.ConsoleSink())
    pattern = (sl.Pattern.begin("small").where(pl.col("amount") < 1).followed_by("mid").optional()
               .next("big").where(pl.col("amount") > 10).one_or_more().within(timedelta(minutes=1)))
    t.match("m", pattern).write("mo", sl.ConsoleSink())
    text = flow.explain()
    assert " at 0x" not in text and "dyn int" not in text
    for piece in ('predicate=(col("amount") > 3) & (col("user") != "x")', "amount: Optional(Float64)",
                  'total: Sum(of=col("amount"))', "tj: temporal_join [stateful]", "aj: asof_join [stateful]",
                  """Pattern.begin('small').where(col("amount") < 1).followed_by('mid').optional()"""
                  """.next('big').where(col("amount") > 10).one_or_more().within(timedelta(seconds=60))"""):
        assert piece in text, piece
