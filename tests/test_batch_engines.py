"""The batch references bench/batch_limit.py times Sluice against (bench/batch_engines.py) answer w4 as the range-join
oracle does (tests/oracle.py): DuckDB's as-of join and Polars' join_asof, on generated transactions plus the
boundaries written out (strictly earlier, exactly 600,000 ms, ties at one time to the larger tx_id, another
user's, out of order)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
import pytest

import oracle
from conftest import ROOT, generate

EDGES = [  # user, tx_id, amount, timestamp
    ("e1", "a1", 5.0, 1_000), ("e1", "a2", 5.0, 1_000), ("e1", "L1", 2000.0, 1_000),  # same time: not earlier
    ("e1", "L2", 2000.0, 601_000),  # exactly 600,000 ms after a1/a2: kept, the larger tx_id (a2)
    ("e1", "L3", 2000.0, 601_001),  # 600,001 ms: too late
    ("e2", "b1", 1.0, 50_000), ("e2", "L4", 5000.0, 40_000),  # the small one comes later: no match
    ("e3", "L5", 9000.0, 70_000), ("e3", "c1", 2.0, 10_000), ("e3", "c2", 3.0, 20_000),  # out of order: c2
    ("e4", "d1", 9.99, 5_000), ("e4", "d2", 10.0, 6_000), ("e4", "L6", 1000.01, 7_000),  # 10.0 is not small
]


@pytest.mark.parametrize("engine", ["duckdb", "polars"])
def test_w4_reference_equals_the_range_join_oracle(engine: str, tmp_path: Path) -> None:
    src = generate("transactions", 20_000, tmp_path / "tx.jsonl")
    with src.open("ab") as f:
        for user, tx, amount, ts in EDGES:
            f.write(orjson.dumps({"tx_id": tx, "user_id": user, "amount": amount, "timestamp": ts}) + b"\n")
    out = tmp_path / "out.jsonl"
    subprocess.run([sys.executable, str(ROOT / "bench" / "batch_engines.py"), engine, "w4", "--input", str(src),
                    "--output", str(out)], check=True)
    want = oracle.w4(str(src))
    got = pl.read_ndjson(out).cast({c: want.schema[c] for c in want.columns}).select(want.columns)
    edges = want.filter(pl.col("user_id").str.starts_with("e")).sort("large_tx_id")
    assert edges.select("large_tx_id", "small_tx_id").rows() == [("L2", "a2"), ("L5", "c2"), ("L6", "d1")]
    assert want.height > 100
    oracle.assert_frames_match(got, want, ["large_tx_id"])
