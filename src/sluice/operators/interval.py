"""Interval join: pairs (l, r) of the same key with l.t + lower ≤ r.t ≤ l.t + upper (Flink's semantics).

Both sides are kept while a future record of the other side could still pair with them: a future right
record has t ≥ W, so a left record is dropped once l.t + upper < W, a right record once r.t − lower < W...
precisely r.t < W + lower. Each arrival is joined with the other side's state (which includes records of
the same batch that arrived before it on that side's turn: new left rows join right state plus new right
rows; new right rows then join only the left rows that were already there), so every pair comes out once.
A record behind its own input's watermark (the one just before it, never below the operator's) could
miss partners already dropped: it goes to `late`. Judging each record by its own input's watermark makes
the result independent of how the two inputs interleave (batch sizes, a branch's output order).
With how="left", a left record that found no partner by the time it is dropped comes out alone.
"""

from __future__ import annotations

import polars as pl

from sluice.core.batch import END_OF_TIME, OFFSET, TIME, WATERMARK, Batch
from sluice.core.errors import PlanError
from sluice.operators.base import Emitted, Operator, TwoInputState, require_event_time

SEQ = "__sl_seq"
MATCHED = "__sl_matched"
RT = "__sl_rt"


class IntervalJoinOperator(TwoInputState, Operator):
    def __init__(self, name: str, by: list[str], lower_ms: int, upper_ms: int, how: str, suffix: str) -> None:
        if lower_ms > upper_ms:
            raise PlanError(f"interval_join {name!r}: lower bound {lower_ms} ms is above upper bound {upper_ms} ms")
        self.name, self.by, self.lower, self.upper, self.how, self.suffix = name, by, lower_ms, upper_ms, how, suffix
        self._init_inputs()

    def _pairs(self, left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
        """Pairs in range. Times are cut into buckets as wide as the interval, so a left record meets only
        the right records of the (at most two) buckets its interval touches, not every record of its key:
        a hot key does not turn the join into a cartesian product."""
        if left.height == 0 or right.height == 0:
            return pl.DataFrame()
        width = max(self.upper - self.lower, 1)
        clash = set(left.columns)
        r = right.rename({c: f"{c}{self.suffix}" for c in right.columns if c in clash and c not in self.by and c != TIME})
        r = r.rename({TIME: RT}).with_columns((pl.col(RT) // width).alias("__sl_bucket"))
        first = (pl.col(TIME) + self.lower) // width
        last = (pl.col(TIME) + self.upper) // width
        lb = left.drop(MATCHED, strict=False).with_columns(pl.concat_list(first, last).list.unique().alias("__sl_bucket"))
        lb = lb.explode("__sl_bucket")
        joined = lb.join(r, on=[*self.by, "__sl_bucket"], how="inner").drop("__sl_bucket")
        return joined.filter((pl.col(RT) >= pl.col(TIME) + self.lower) & (pl.col(RT) <= pl.col(TIME) + self.upper))

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        emitted: Emitted = []
        frames: list[pl.DataFrame] = []
        if batch.height:
            require_event_time("interval_join", self.name, batch)
            self.time_dtype = batch.time_dtype or self.time_dtype
            df = batch.df.with_columns(pl.int_range(self.seq, self.seq + batch.height, dtype=pl.Int64).alias(SEQ))
            self.seq += batch.height
            behind = pl.col(TIME) < pl.col(WATERMARK)  # judged by its own input's watermark just before it
            late = df.filter(behind)
            if late.height:
                emitted.append(("late", Batch(late.drop(SEQ), watermark=self.watermark, time_dtype=batch.time_dtype)))
                df = df.filter(~behind)
            df = df.drop(WATERMARK)
            if index == 0:
                new = df.with_columns(pl.lit(False).alias(MATCHED))
                pairs = self._pairs(new, self.right.drop(OFFSET, strict=False)) if self.right is not None else pl.DataFrame()
                if pairs.height:
                    hit = pairs.select(SEQ).unique()
                    new = new.with_columns(pl.col(SEQ).is_in(hit[SEQ].implode()).alias(MATCHED))
                    frames.append(pairs)
                self._append(0, new)
            else:
                new = df.drop(OFFSET, strict=False)
                if self.left is not None:
                    pairs = self._pairs(self.left, new)
                    if pairs.height:
                        hit = pairs.select(SEQ).unique()
                        self.left = self.left.with_columns((pl.col(MATCHED) | pl.col(SEQ).is_in(hit[SEQ].implode())).alias(MATCHED))
                        frames.append(pairs)
                self._append(1, new)
        return self._advance(self._input_watermark(index, batch), frames) + emitted

    def on_end(self) -> Emitted:
        return self._advance(END_OF_TIME, [])

    def _advance(self, watermark: int, frames: list[pl.DataFrame]) -> Emitted:
        start = self.watermark
        self.watermark = max(self.watermark, watermark)
        if self.left is not None:
            gone = pl.col(TIME) + self.upper < self.watermark
            if self.how == "left":
                lonely = self.left.filter(gone & ~pl.col(MATCHED))
                if lonely.height:
                    frames.append(lonely.drop(MATCHED))
            self.left = self.left.filter(~gone)
        if self.right is not None:
            self.right = self.right.filter(pl.col(TIME) >= self.watermark + self.lower)
        frames = [f for f in frames if f.height]
        if frames:
            out = pl.concat(frames, how="diagonal_relaxed").sort([TIME, SEQ, RT] if any(RT in f.columns for f in frames) else [TIME, SEQ],
                                                                  nulls_last=True)
            out = out.drop(SEQ, f"{SEQ}{self.suffix}", RT, strict=False).with_columns(pl.lit(start, pl.Int64).alias(WATERMARK))
        else:
            out = pl.DataFrame()
        return [("out", Batch(out, watermark=self.watermark, time_dtype=self.time_dtype))]
