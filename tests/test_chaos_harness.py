"""The counting of the chaos suite's harness (bench/chaos/): a soak whose comparison cannot see a lost, a
doubled or a wrong row would prove nothing, so each is planted here and must be counted; and the table of
docs/guarantees.md reads back what it wrote."""

from __future__ import annotations

import sys

import polars as pl

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench" / "chaos"))

import kill_soak
import table

WANT = pl.DataFrame({"user_id": ["a", "a", "b", "c"], "window_start": [0, 60_000, 0, 0], "count": [3, 1, 2, 5],
                     "sum": [1.5, 2.0, 0.25, 10.0]})


def test_a_whole_output_counts_nothing() -> None:
    got = WANT.sample(fraction=1.0, shuffle=True, seed=1).with_columns(pl.col("sum") * (1 + 1e-12))
    assert kill_soak.compare("w1", got, WANT) == {"rows": 4, "lost": 0, "duplicated": 0, "wrong": 0}


def test_lost_duplicated_and_wrong_rows_are_each_counted() -> None:
    got = pl.concat([WANT.slice(0, 3), WANT.slice(1, 1)]).with_columns(
        count=pl.when(pl.col("user_id") == "b").then(9).otherwise(pl.col("count")))
    assert kill_soak.compare("w1", got, WANT) == {"rows": 4, "lost": 1, "duplicated": 1, "wrong": 1}
    assert kill_soak.compare("w1", pl.DataFrame(), WANT)["lost"] == 4


def test_an_epoch_merged_twice_into_an_accumulating_table_counts_as_duplicated() -> None:
    got = WANT.with_columns(count=pl.when(pl.col("user_id") == "c").then(15).otherwise(pl.col("count")))
    assert kill_soak.compare("w1", got, WANT, accumulated="count") == {"rows": 4, "lost": 0, "duplicated": 2,
                                                                       "wrong": 0}
    assert kill_soak.compare("w1", got, WANT)["wrong"] == 1  # without accumulation it is a wrong value


def test_rows_without_a_key_compare_as_a_multiset() -> None:
    want = pl.DataFrame({"tx_id": ["t1", None, "t1"], "amount": [1.0, None, 1.0]})
    got = pl.DataFrame({"tx_id": ["t1", None, None], "amount": [1.0, None, None]})
    assert kill_soak.compare("risk", got, want) == {"rows": 3, "lost": 1, "duplicated": 1, "wrong": 0}


def test_every_job_meets_several_sinks_and_every_sink_several_jobs() -> None:
    pairs = kill_soak.matrix()
    for job in kill_soak.JOBS:
        assert sum(j == job for j, _ in pairs) >= 5, job
    for sink in kill_soak.SINKS:
        assert sum(s == sink for _, s in pairs) >= 3, sink


def test_the_table_reads_back_what_it_wrote() -> None:
    rows = [{"fault": "kill -9 | twice", "runs": 3, "survived": 2, "lost": None, "duplicated": 0, "stopped": 1,
             "command": "python bench/chaos/x.py --n 3", "source": "kill-soak"},
            {"fault": "broker paused", "runs": 1, "survived": 1, "lost": 0, "duplicated": 0, "stopped": 0,
             "command": "python bench/chaos/broker.py", "source": "broker"}]
    assert table.parse(table.render(rows, [], "2026-12-07")) == rows
