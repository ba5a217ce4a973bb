"""Window aggregates, as `sl.agg`: `count=sl.agg.count()`, `total=sl.agg.sum("amount")`, …

Every aggregate is exact and mergeable except `percentile`/`median` (a DDSketch with a guaranteed
relative error). To write your own, subclass `Aggregate` (see sluice/time/aggregates.py).
"""

from sluice.time.aggregates import (
    Aggregate,
    Partial,
    Percentile,
    avg,
    collect_list,
    count,
    count_distinct,
    first,
    last,
    max,
    mean,
    median,
    min,
    percentile,
    stddev,
    sum,
    variance,
)

__all__ = [
    "Aggregate",
    "Partial",
    "Percentile",
    "avg",
    "collect_list",
    "count",
    "count_distinct",
    "first",
    "last",
    "max",
    "mean",
    "median",
    "min",
    "percentile",
    "stddev",
    "sum",
    "variance",
]
