"""Aggregates for windows: vectorized, mergeable, and exact unless they say otherwise.

An aggregate is three column-expression builders, evaluated by the window operator with Polars:

    update(value, time) -> {partial: expr}   rows of one group (of one batch) → a partial row
    merge(p)            -> {partial: expr}   several partial rows of one group → one partial row
    finish(p)           -> expr              a partial row → the result

`p(name)` is the column of one of this aggregate's partials. "create" is the first `update` of a
group. Because partials merge, results do not depend on how input is cut into batches. To write
your own, subclass `Aggregate` (see `Mean` for a small example).

`Percentile` is different: a mergeable DDSketch kept as (bucket, count) rows, with a guaranteed
relative error (see its docstring).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from sluice.core.errors import PlanError
from sluice.core.schema import column

Partial = Callable[[str], pl.Expr]


class Aggregate:
    """Base of the row aggregates. `of` is the input column (None: the aggregate counts rows).

    `additive`: under `Emit(updates="deltas")` a window's row carries this aggregate over the records
    since its last row (count, sum, mean), so that a MERGE can fold it into the table's row; otherwise
    (the default, for your own aggregates too) the window's whole current value."""

    of: pl.Expr | None = None
    additive: ClassVar[bool] = False

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        raise NotImplementedError

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        raise NotImplementedError

    def finish(self, p: Partial) -> pl.Expr:
        raise NotImplementedError

    def needs_value(self) -> bool:
        return True


def _of(ref: str | pl.Expr) -> pl.Expr:
    return column(ref)


@dataclass(frozen=True, eq=False)
class Count(Aggregate):
    """Rows in the window, or non-null values of `of` when given."""

    additive: ClassVar[bool] = True
    of: pl.Expr | None = None

    def needs_value(self) -> bool:
        return self.of is not None

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        return {"n": (value.count() if self.of is not None else pl.len()).cast(pl.Int64)}

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        return {"n": p("n").sum()}

    def finish(self, p: Partial) -> pl.Expr:
        return p("n")


@dataclass(frozen=True, eq=False)
class Sum(Aggregate):
    """Sum of the non-null values; null when there are none (as in SQL)."""

    additive: ClassVar[bool] = True
    of: pl.Expr

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        return {"s": value.sum(), "n": value.count().cast(pl.Int64)}

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        return {"s": p("s").sum(), "n": p("n").sum()}

    def finish(self, p: Partial) -> pl.Expr:
        return pl.when(p("n") > 0).then(p("s")).otherwise(None)


@dataclass(frozen=True, eq=False)
class Min(Aggregate):
    """Least of the non-null values; null when there are none."""

    of: pl.Expr

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        return {"m": value.min()}

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        return {"m": p("m").min()}

    def finish(self, p: Partial) -> pl.Expr:
        return p("m")


@dataclass(frozen=True, eq=False)
class Max(Aggregate):
    """Greatest of the non-null values; null when there are none."""

    of: pl.Expr

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        return {"m": value.max()}

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        return {"m": p("m").max()}

    def finish(self, p: Partial) -> pl.Expr:
        return p("m")


@dataclass(frozen=True, eq=False)
class Mean(Aggregate):
    """Mean of the non-null values; null when there are none."""

    additive: ClassVar[bool] = True
    of: pl.Expr

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        return {"s": value.cast(pl.Float64).sum(), "n": value.count().cast(pl.Int64)}

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        return {"s": p("s").sum(), "n": p("n").sum()}

    def finish(self, p: Partial) -> pl.Expr:
        return pl.when(p("n") > 0).then(p("s") / p("n")).otherwise(None)


@dataclass(frozen=True, eq=False)
class Variance(Aggregate):
    """Variance with `ddof` (1: sample variance, like SQL var_samp). Partials merge by Chan's formula,
    which stays accurate where the naive sum-of-squares loses digits."""

    of: pl.Expr
    ddof: int = 1
    sqrt: bool = False

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        v = value.cast(pl.Float64)
        return {
            "n": v.count().cast(pl.Int64),
            "mean": v.mean().fill_null(0.0),
            "m2": ((v - v.mean()) ** 2).sum(),
        }

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        n = p("n").sum()
        mean = pl.when(n > 0).then((p("n") * p("mean")).sum() / n).otherwise(0.0)
        return {"n": n, "mean": mean, "m2": p("m2").sum() + (p("n") * (p("mean") - mean) ** 2).sum()}

    def finish(self, p: Partial) -> pl.Expr:
        var = pl.when(p("n") > self.ddof).then(p("m2") / (p("n") - self.ddof)).otherwise(None)
        return var.sqrt() if self.sqrt else var


@dataclass(frozen=True, eq=False)
class First(Aggregate):
    """The value of the earliest record by event time (ties: the one that arrived first)."""

    of: pl.Expr
    last: bool = False

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        return self._pick(value, time)

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        return self._pick(p("v"), p("t"))

    def _pick(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        if self.last:
            # the latest time, and among equal times the latest arrival
            idx = pl.int_range(pl.len()).filter(time == time.max()).last()
        else:
            idx = pl.int_range(pl.len()).filter(time == time.min()).first()
        return {"v": value.get(idx), "t": time.get(idx)}

    def finish(self, p: Partial) -> pl.Expr:
        return p("v")


@dataclass(frozen=True, eq=False)
class CountDistinct(Aggregate):
    """Exact number of distinct non-null values (keeps the set; use a sketch for huge cardinalities)."""

    of: pl.Expr

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        return {"u": value.drop_nulls().unique()}

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        return {"u": p("u").explode().drop_nulls().unique()}

    def finish(self, p: Partial) -> pl.Expr:
        return p("u").list.len().cast(pl.Int64)


@dataclass(frozen=True, eq=False)
class CollectList(Aggregate):
    """All values, in event-time order (ties in arrival order)."""

    of: pl.Expr

    def update(self, value: pl.Expr, time: pl.Expr) -> dict[str, pl.Expr]:
        return {"v": value, "t": time}

    def merge(self, p: Partial) -> dict[str, pl.Expr]:
        return {"v": p("v").explode(), "t": p("t").explode()}

    def finish(self, p: Partial) -> pl.Expr:
        # ordinal ranks are distinct and keep ties in arrival order, so sorting them is stable
        order = p("t").list.eval(pl.element().rank("ordinal").arg_sort())
        return p("v").list.gather(order)


SKETCH_OFFSET = 1 << 40
MIN_INDEXABLE = sys.float_info.min  # the smallest normal double; anything smaller in magnitude is the zero bucket
INF_KEY = 1 << 62  # ±inf get their own buckets beyond every finite one


@dataclass(frozen=True, eq=False)
class Percentile:
    """Approximate quantile by a DDSketch with logarithmic buckets.

    Guarantee: the result is within `relative_accuracy` (default 0.5%) relative error of the exact
    nearest-rank quantile (the value at rank ceil(q·n) of the sorted values), for any input size and
    order, because each bucket (γ^(k−1), γ^k] with γ = (1+α)/(1−α) is reported by its midpoint in
    relative terms. As in DDSketch, negative values have a mirrored store (bucket −k) and zero has a
    bucket of its own (0), so zeros and values of both signs are exact in the same sense; only
    magnitudes below the smallest normal double (~2.2e-308) count as zero. ±inf are kept as ±inf.
    Nulls and NaN are ignored.

    Sketches merge by adding bucket counts, so they are kept as (group, bucket, count) rows.
    """

    of: pl.Expr
    q: float
    relative_accuracy: float = 0.005

    def __post_init__(self) -> None:
        if not 0.0 <= self.q <= 1.0:
            raise PlanError(f"percentile q must be in [0, 1], got {self.q}")
        if not 0.0 < self.relative_accuracy < 1.0:
            raise PlanError(f"relative_accuracy must be in (0, 1), got {self.relative_accuracy}")

    @property
    def gamma(self) -> float:
        a = self.relative_accuracy
        return (1 + a) / (1 - a)

    def bucket(self, value: pl.Expr) -> pl.Expr:
        v = value.cast(pl.Float64)
        inv_log_gamma = 1.0 / math.log(self.gamma)
        # Polars evaluates every branch of a when/then, so the logarithm must be finite for every value
        # (zero, tiny, inf and NaN included), not only for those whose branch is taken.
        mag = v.abs().fill_nan(1.0).clip(MIN_INDEXABLE, sys.float_info.max)
        pos = (mag.log() * inv_log_gamma).ceil().cast(pl.Int64) + SKETCH_OFFSET
        return (
            pl.when(v.is_null() | v.is_nan())
            .then(pl.lit(None, pl.Int64))
            .when(v == math.inf)
            .then(pl.lit(INF_KEY, pl.Int64))
            .when(v == -math.inf)
            .then(pl.lit(-INF_KEY, pl.Int64))
            .when(v >= MIN_INDEXABLE)
            .then(pos)
            .when(v <= -MIN_INDEXABLE)
            .then(-pos)
            .otherwise(pl.lit(0, pl.Int64))
        )

    def bucket_value(self, key: pl.Expr) -> pl.Expr:
        g = self.gamma
        mag = (key.abs() - SKETCH_OFFSET).cast(pl.Float64)
        # γ^k · 2/(γ+1) as one exponential, so that the top buckets do not overflow on the way
        rep = (mag * math.log(g) + math.log(2.0 / (g + 1.0))).exp().clip(upper_bound=sys.float_info.max)
        return (
            pl.when(key == INF_KEY).then(math.inf).when(key == -INF_KEY).then(-math.inf)
            .when(key > 0).then(rep).when(key < 0).then(-rep).otherwise(0.0)
        )


AnyAggregate = Aggregate | Percentile


# The public constructors: sl.agg.count(), sl.agg.sum("metrics.value"), …


def count(of: str | pl.Expr | None = None) -> Count:
    return Count(None if of is None else _of(of))


def sum(of: str | pl.Expr) -> Sum:
    return Sum(_of(of))


def min(of: str | pl.Expr) -> Min:
    return Min(_of(of))


def max(of: str | pl.Expr) -> Max:
    return Max(_of(of))


def mean(of: str | pl.Expr) -> Mean:
    return Mean(_of(of))


avg = mean


def variance(of: str | pl.Expr, ddof: int = 1) -> Variance:
    return Variance(_of(of), ddof)


def stddev(of: str | pl.Expr, ddof: int = 1) -> Variance:
    return Variance(_of(of), ddof, sqrt=True)


def first(of: str | pl.Expr) -> First:
    return First(_of(of))


def last(of: str | pl.Expr) -> First:
    return First(_of(of), last=True)


def count_distinct(of: str | pl.Expr) -> CountDistinct:
    return CountDistinct(_of(of))


def collect_list(of: str | pl.Expr) -> CollectList:
    return CollectList(_of(of))


def percentile(of: str | pl.Expr, q: float, relative_accuracy: float = 0.005) -> Percentile:
    return Percentile(_of(of), q, relative_accuracy)


def median(of: str | pl.Expr, relative_accuracy: float = 0.005) -> Percentile:
    return Percentile(_of(of), 0.5, relative_accuracy)
