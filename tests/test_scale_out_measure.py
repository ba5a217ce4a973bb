"""The judging and measuring parts of bench/chaos/scale_out.py: lost/duplicated windows against the oracle,
task ownership from worker logs, stalls (some partition without a live owner) and the pause per change."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "chaos"))

import scale_out

KEYS = ["user_id", "window_start"]


def expected() -> pl.DataFrame:
    return pl.DataFrame({"user_id": ["a", "a", "b"], "window_start": [0, 60, 0], "window_end": [60, 120, 60],
                         "count": [2, 1, 3], "sum": [1.5, 2.0, 0.1 + 0.2]})


def test_equal_output_is_whole() -> None:
    got = expected().reverse().with_columns(pl.col("sum") * (1 + 1e-12))  # order and float rounding do not matter
    assert scale_out.compare(got, expected(), KEYS) == {"lost": 0, "duplicated": 0, "wrong": 0, "rows": 3}


def test_a_window_twice_is_duplicated() -> None:
    got = pl.concat([expected(), expected().head(1)])
    assert scale_out.compare(got, expected(), KEYS) == {"lost": 0, "duplicated": 1, "wrong": 0, "rows": 4}


def test_a_missing_window_is_lost() -> None:
    got = expected().tail(2)
    assert scale_out.compare(got, expected(), KEYS) == {"lost": 1, "duplicated": 0, "wrong": 0, "rows": 2}


def test_a_record_counted_twice_is_both() -> None:
    got = expected().with_columns(pl.when(pl.col("user_id") == "b").then(4).otherwise(pl.col("count")).alias("count"))
    assert scale_out.compare(got, expected(), KEYS) == {"lost": 1, "duplicated": 1, "wrong": 1, "rows": 3}


def test_an_unexpected_window_is_duplicated() -> None:
    extra = pl.DataFrame({"user_id": ["c"], "window_start": [0], "window_end": [60], "count": [1], "sum": [1.0]})
    got = pl.concat([expected(), extra])
    assert scale_out.compare(got, expected(), KEYS)["duplicated"] == 1


def test_nothing_committed_is_all_lost() -> None:
    assert scale_out.compare(pl.DataFrame(), expected(), KEYS)["lost"] == 3


def test_ownership_stalls_and_pauses(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("10.000 sluice.kafka INFO worker a: task 0 starts at {}\n"
                 "10.000 sluice.kafka INFO worker a: task 1 starts at {}\n"
                 "some other line\n"
                 "20.000 sluice.kafka INFO worker a: task 1 stops at {}\n")
    # b takes partition 1 at 23; a is killed at 30 holding partition 0, which b takes at 41
    b.write_text("23.000 sluice.kafka INFO worker b: task 1 starts at {}\n"
                 "41.000 sluice.kafka INFO worker b: task 0 starts at {}\n")
    spans = scale_out.ownership({"a": a, "b": b}, {"a": 30.0})
    assert spans == {0: [(10.0, 30.0), (41.0, 41.0)], 1: [(10.0, 20.0), (23.0, 41.0)]}
    gaps = scale_out.stalls(spans, 2, 10.0, 41.0)
    assert gaps == [(20.0, 23.0), (30.0, 41.0)]
    assert scale_out.whole_again(19.0, gaps) == 4.0  # a change just before the first stall
    assert scale_out.whole_again(20.0, gaps) == 3.0  # the stall starts with the change
    assert scale_out.whole_again(30.0, gaps) == 11.0  # a kill: until its partition is taken again
    assert scale_out.whole_again(41.0, gaps) is None  # no stall after it
    # 31 partition-seconds owned of 2 x 31: partition 0 lacks 11 s, partition 1 lacks 3 s
    assert scale_out.unowned_fraction(spans, 2, 10.0, 41.0) == round(14 / 62, 3)


def test_a_frozen_worker_does_not_process(tmp_path: Path) -> None:
    a = tmp_path / "a.log"
    a.write_text("10.000 x INFO worker a: task 0 starts at {}\n"
                 "30.000 x INFO worker a: task 0 stops at {}\n")
    assert scale_out.ownership({"a": a}, {}, {"a": [(12.0, 25.0)]}) == {0: [(10.0, 12.0), (25.0, 30.0)]}
    # frozen until after its task stopped (its partitions were lost meanwhile)
    assert scale_out.ownership({"a": a}, {}, {"a": [(12.0, 31.0)]}) == {0: [(10.0, 12.0)]}


def test_a_partition_never_owned_stalls_the_whole_period() -> None:
    assert scale_out.stalls({0: [(0.0, 10.0)]}, 2, 0.0, 10.0) == [(0.0, 10.0)]


def test_quantiles_nearest_rank() -> None:
    assert scale_out.quantiles([3.0, 1.0, 2.0, 4.0]) == {"n": 4, "p50": 2.0, "p95": 4.0, "max": 4.0}
    assert scale_out.quantiles([]) == {"n": 0, "p50": None, "p95": None, "max": None}
