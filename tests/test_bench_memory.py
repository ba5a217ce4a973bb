"""bench/memory.py's scalable oracles (as-of and bucketed equi-joins) equal the tests' oracles (w4, w5) and
the relaxed-contiguity CEP query of tests/cep, on skewed, out-of-order generated input."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

import oracle
from conftest import generate
from memory import KEYS, oracle_of

CEP_PAIRS = """
    with tx as (select * from read_json('{f}', format='newline_delimited',
                columns={{tx_id: 'VARCHAR', user_id: 'VARCHAR', amount: 'DOUBLE', timestamp: 'BIGINT'}})),
         s as (select * from tx where amount < 10), l as (select * from tx where amount > 1000)
    select user_id, small_tx_id, large_tx_id from (
        select s.user_id, s.tx_id as small_tx_id, arg_min(l.tx_id, (l.timestamp, l.tx_id)) as large_tx_id,
               min(l.timestamp) as large_ts, any_value(s.timestamp) as small_ts
        from s join l on s.user_id = l.user_id and (l.timestamp, l.tx_id) > (s.timestamp, s.tx_id)
        group by s.user_id, s.tx_id)
    where large_ts - small_ts <= 600000"""


@pytest.fixture(scope="module")
def transactions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # few users and a short span: many ties in event time and many pairs per user
    return generate("transactions", 40_000, tmp_path_factory.mktemp("mem") / "tx.jsonl", users=50, span_s=1800)


def test_w4_oracle_equals_the_quadratic_one(transactions: Path) -> None:
    got, want = oracle_of("w4", transactions), oracle.w4(str(transactions))
    assert want.height > 500
    assert got.sort(KEYS["w4"]).equals(want.select(got.columns).sort(KEYS["w4"]))


def test_cep_oracle_equals_the_pairwise_query(transactions: Path) -> None:
    got, want = oracle_of("cep", transactions), duckdb.sql(CEP_PAIRS.format(f=transactions)).pl()
    assert want.height > 500
    assert got.sort(KEYS["cep"]).equals(want.select(got.columns).sort(KEYS["cep"]))


def test_w5_oracle_equals_the_quadratic_one(events_medium: Path) -> None:
    got, want = oracle_of("w5", events_medium), oracle.w5(str(events_medium))
    assert want.height > 100
    assert got.sort(KEYS["w5"]).equals(want.select(got.columns).sort(KEYS["w5"]))


def test_oracles_at_their_boundaries(tmp_path: Path) -> None:
    t0 = 1767225600000
    rows = [  # (tx_id, user, amount, ms after t0), in arrival order
        ("t000000000", "a", 5.0, 0), ("t000000001", "a", 2000.0, 600_000),  # exactly 10 minutes: a pair
        ("t000000002", "b", 5.0, 0), ("t000000003", "b", 2000.0, 600_001),  # 1 ms more: none
        ("t000000004", "c", 5.0, 1000), ("t000000005", "c", 2000.0, 1000),  # same time, small first: a pair
        ("t000000006", "c", 2000.0, 2000),
        ("t000000007", "d", 3.0, 500), ("t000000008", "d", 4.0, 500), ("t000000009", "d", 1500.0, 900),
    ]
    path = tmp_path / "tx.jsonl"
    pl.DataFrame(rows, schema=["tx_id", "user_id", "amount", "timestamp"], orient="row").with_columns(
        pl.col("timestamp") + t0).write_ndjson(path)
    cep = oracle_of("cep", path).sort("small_tx_id").rows()
    assert cep == [("a", "t000000000", "t000000001"), ("c", "t000000004", "t000000005"),
                   ("d", "t000000007", "t000000009"), ("d", "t000000008", "t000000009")]
    assert cep == duckdb.sql(CEP_PAIRS.format(f=path)).pl().sort("small_tx_id").rows()
    w4 = oracle_of("w4", path).sort("large_tx_id").select("small_tx_id", "large_tx_id").rows()
    # c: the small at the large's own time is not before it, but is before the next large; d: ties, larger id
    assert w4 == [("t000000000", "t000000001"), ("t000000004", "t000000006"), ("t000000008", "t000000009")]
    assert w4 == oracle.w4(str(path)).sort("large_tx_id").select("small_tx_id", "large_tx_id").rows()
