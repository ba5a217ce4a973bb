"""Changelog streams: Debezium-style c/u/d rows become +I/-U/+U/-D rows; the temporal join reads them as
a table (deletes end a row, update-befores are not versions), checked against DuckDB's ASOF JOIN; sinks
get `_op`; bad kinds are refused with the step and the position."""

from __future__ import annotations

import random
from datetime import timedelta

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

DELAY = 2_000


@st.composite
def scenario(draw):  # type: ignore[no-untyped-def]
    """Debezium-like change rows per product (distinct times per key: DuckDB's ASOF has no tie rule); an
    update also brings its before-image as a separate row (-U), as Flink's changelog does."""
    changes = []
    for k in ("a", "b"):
        times = sorted(draw(st.lists(st.integers(0, 40), unique=True, max_size=8)))
        exists = False
        for t in times:
            op = draw(st.sampled_from(["u", "d"])) if exists else "c"
            changes.append((t * 1000, k, draw(st.integers(1, 99)), op))
            exists = op != "d"
    orders = draw(st.lists(st.tuples(st.integers(0, 45).map(lambda s: s * 1000 + 500), st.sampled_from(["a", "b"])),
                           max_size=30))
    return changes, orders, draw(st.integers(0, 99))


def arrive(rows, seed):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return sorted(rows, key=lambda r: r[0] + rng.uniform(0, DELAY - 1))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario())
def test_temporal_join_over_a_changelog_equals_duckdb_asof(case) -> None:  # type: ignore[no-untyped-def]
    changes, orders, seed = case
    table = pl.DataFrame(arrive(changes, seed), schema={"t": pl.Int64, "k": pl.String, "price": pl.Int64, "op": pl.String},
                         orient="row")
    # before-images of updates, arriving just before their update: they must not count as versions
    feed_rows = []
    for t, k, price, kind in table.rows():
        feed_rows.append((t, k, price, kind))
        if kind == "u":  # a retraction is never a version, whatever order it comes in: put it after
            feed_rows.append((t, k, -1, "before"))
    feed = pl.DataFrame(feed_rows, schema=table.schema, orient="row")
    stream = pl.DataFrame(arrive(orders, seed + 1), schema={"t": pl.Int64, "k": pl.String}, orient="row").with_row_index("oid")
    con = duckdb.connect()
    con.register("o", stream.to_arrow())
    con.register("p", table.to_arrow())
    expected = sorted(con.sql("""SELECT o.oid, CASE WHEN p.op = 'd' THEN NULL ELSE p.price END
                                 FROM o ASOF LEFT JOIN p ON o.k = p.k AND o.t >= p.t""").fetchall())
    op = pl.when(pl.col("op") == "before").then(pl.lit("-U")).otherwise(sl.changelog.from_debezium(pl.col("op")))
    for batch_size in (1, 3, 1000):
        flow = sl.Flow("tj")
        s = flow.read("orders", testing.rows(stream)).event_time("t", timedelta(milliseconds=DELAY))
        t = flow.read("prices", testing.rows(feed)).event_time("t", timedelta(milliseconds=DELAY)).changelog("k", op=op)
        out = testing.collect(s.temporal_join("price_at_order", t, by="k"))
        sl.run(flow, batch_size=batch_size)
        got = out.frame()
        have = sorted(got.select("oid", "price").rows()) if got.height and "price" in got.columns else \
            sorted((r["oid"], None) for r in got.to_dicts())  # an empty table adds no columns
        assert have == expected, batch_size


def test_changelog_rows_carry_their_kind_to_sinks() -> None:
    flow = sl.Flow("cl")
    rows = [{"id": 1, "v": "x", "op": "c"}, {"id": 1, "v": "y", "op": "u"}, {"id": 1, "v": None, "op": "d"},
            {"id": 2, "v": "z", "op": "r"}]
    out = testing.collect(flow.read("in", testing.rows(rows)).changelog("id", op=sl.changelog.from_debezium(pl.col("op"))))
    sl.run(flow)
    assert out.frame().select("id", "_op").rows() == [(1, "+I"), (1, "+U"), (1, "-D"), (2, "+I")]
    assert "changelog" in flow.explain()


@pytest.mark.parametrize(("rows", "message"), [
    ([{"id": 1, "op": "t"}], r"failed at .*row's kind is None.*truncate"),
    ([{"id": 1, "_op": "+X"}], r"failed at .*'\+X', not one of \+I, -U, \+U, -D"),
])
def test_a_bad_kind_names_the_step_and_the_row(rows: list[dict], message: str) -> None:
    flow = sl.Flow("bad")
    src = flow.read("in", testing.rows(rows))
    op = sl.changelog.from_debezium(pl.col("op")) if "op" in rows[0] else None
    testing.collect(src.changelog("id", op=op, name="cdc"))
    with pytest.raises(sl.StepError, match=message) as err:
        sl.run(flow)
    assert "'cdc'" in str(err.value)
