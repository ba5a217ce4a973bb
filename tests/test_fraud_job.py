"""The fraud job (sluice/examples/fraud.py, run by examples/fraud.py and `sluice demo`) end to end: each of its three results checked against DuckDB or
the risk-score reference."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

import oracle
import sluice as sl
from conftest import generate
from sluice.examples import fraud


@pytest.fixture(scope="module")
def transactions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("transactions", 30_000, tmp_path_factory.mktemp("fraud") / "tx.jsonl", users=100, span_s=7200)


def test_fraud_job(transactions: Path, tmp_path: Path) -> None:
    result = sl.run(fraud.build(sl.JsonLinesSource(transactions), tmp_path), batch_size=2048)
    alerts = pl.read_ndjson(tmp_path / "alerts.jsonl")
    expected = oracle.w4(str(transactions))
    assert alerts.height == expected.height > 10
    assert alerts.select("user_id", "small_tx_id", "large_tx_id").sort("large_tx_id").equals(
        expected.select("user_id", "small_tx_id", "large_tx_id").sort("large_tx_id"))
    stats = pl.read_parquet(tmp_path / "user_5min" / "**" / "*.parquet")
    exp_stats = duckdb.sql(f"""select user_id, (timestamp // 300000) * 300000 as window_start, count(*) as transactions,
                                      sum(amount) as total_amount from read_json('{transactions}') group by all""").pl()
    oracle.assert_frames_match(stats.select(exp_stats.columns), exp_stats, ["user_id", "window_start"])
    scores = pl.read_parquet(tmp_path / "risk_scores" / "*.parquet").filter(pl.col("tx_id").is_not_null())
    assert scores.height == 30_000 and result.rows("bad_transactions") == 0
