"""Stream-table (temporal) join against DuckDB's ASOF JOIN: each order meets the price in force at its time."""

from __future__ import annotations

import random
from datetime import timedelta

import duckdb
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

DELAY = 2_000


@st.composite
def scenario(draw):
    # the table: distinct change times per key (DuckDB's ASOF has no tie rule), some deletions
    changes = []
    for k in ("a", "b"):
        times = draw(st.lists(st.integers(0, 40), unique=True, max_size=8))
        changes += [(t * 1000, k, draw(st.integers(1, 99)), draw(st.booleans()) and draw(st.booleans())) for t in times]
    orders = draw(st.lists(st.tuples(st.integers(0, 45).map(lambda s: s * 1000 + 500), st.sampled_from(["a", "b"])),
                           max_size=30))
    return changes, orders, draw(st.integers(0, 99))


def arrive(rows, seed):
    rng = random.Random(seed)
    return sorted(rows, key=lambda r: r[0] + rng.uniform(0, DELAY - 1))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario())
def test_temporal_join_equals_duckdb_asof(case):
    changes, orders, seed = case
    changes, orders = arrive(changes, seed), arrive(orders, seed + 1)
    table = pl.DataFrame(changes, schema={"t": pl.Int64, "k": pl.String, "price": pl.Int64, "gone": pl.Boolean}, orient="row")
    stream = pl.DataFrame(orders, schema={"t": pl.Int64, "k": pl.String}, orient="row").with_row_index("oid")
    con = duckdb.connect()
    con.register("o", stream.to_arrow())
    con.register("p", table.to_arrow())
    expected = sorted(con.sql("""select o.oid, case when p.gone then null else p.price end
                                 from o asof left join p on o.k = p.k and o.t >= p.t""").fetchall())
    first = None
    for batch_size in (1, 3, 1000):
        flow = sl.Flow("tj")
        s = flow.read("orders", testing.rows(stream)).event_time("t", timedelta(milliseconds=DELAY))
        t = flow.read("prices", testing.rows(table)).event_time("t", timedelta(milliseconds=DELAY))
        out = testing.collect(s.temporal_join("price_at_order", t, by="k", deleted=pl.col("gone")))
        sl.run(flow, batch_size=batch_size)
        got = out.frame()
        have = sorted(got.select("oid", "price").rows()) if got.height and "price" in got.columns else \
            sorted((r["oid"], None) for r in got.to_dicts())
        assert have == expected, batch_size
        first = first if first is not None else got
