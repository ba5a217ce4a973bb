"""The public API is what `sluice.__all__` says, and nothing there is stale."""

import sluice


def test_all_names_exist_and_are_sorted():
    missing = [n for n in sluice.__all__ if not hasattr(sluice, n)]
    assert missing == []
    assert len(set(sluice.__all__)) == len(sluice.__all__)


def test_aggregate_constructors_are_public():
    for name in ("count", "sum", "min", "max", "mean", "avg", "variance", "stddev", "first", "last",
                 "count_distinct", "collect_list", "percentile", "median", "Aggregate"):
        assert hasattr(sluice.agg, name), name
