"""The input of the sink benchmarks: `n` rows (id, user_id, amount, ts) in one Parquet file.

    python bench/sink_input.py --n 1000000 --out rows.parquet
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl


def make(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    return pl.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "user_id": pl.Series(rng.integers(0, 10_000, n)).cast(pl.String).str.zfill(5).alias("user_id").to_numpy(),
        "amount": rng.random(n).round(4),
        "ts": np.int64(1_767_225_600_000) + np.arange(n, dtype=np.int64) * 10,
    })


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    make(a.n).write_parquet(a.out)
