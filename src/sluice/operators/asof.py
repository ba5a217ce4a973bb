"""As-of (temporal) join: each left record is paired with the latest right record of the same key that
is earlier (or not later, when `strict=False`) and at most `tolerance` before it.

Exact in event time: a left record is joined once its time is complete (the operator's watermark, the
minimum of both inputs', has passed it), so every right record that could match has arrived; released
left records are joined in one vectorized Polars `join_asof`. Right records are kept while a future
left record could still match them (time ≥ W − tolerance). A record that arrives behind the operator's
watermark could no longer be joined exactly and goes to the `late` port.
"""

from __future__ import annotations

import polars as pl

from sluice.core.batch import END_OF_TIME, OFFSET, TIME, WATERMARK, Batch
from sluice.operators.base import Emitted, Operator, TwoInputState, require_event_time

SEQ = "__sl_seq"
RTIME = "__sl_rtime"
DELETED = "__sl_deleted"


class AsofJoinOperator(TwoInputState, Operator):
    def __init__(self, name: str, by: list[str], tolerance_ms: int | None, strict: bool, how: str,
                 right_order: str | None, suffix: str, deleted: pl.Expr | None = None) -> None:
        self.name = name
        self.by = by
        self.tolerance = tolerance_ms
        self.strict = strict
        self.how = how
        self.right_order = right_order
        self.suffix = suffix
        self.deleted = deleted
        self._init_inputs()

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        emitted: Emitted = []
        if batch.height:
            require_event_time("asof_join", self.name, batch)
            self.time_dtype = batch.time_dtype or self.time_dtype
            df = batch.df.with_columns(pl.int_range(self.seq, self.seq + batch.height, dtype=pl.Int64).alias(SEQ))
            self.seq += batch.height
            behind = pl.col(TIME) < pl.col(WATERMARK)  # judged by its own input's watermark just before it
            late = df.filter(behind)
            if late.height:
                emitted.append(("late", Batch(late.drop(SEQ), watermark=self.watermark, time_dtype=batch.time_dtype)))
                df = df.filter(~behind)
            if index == 0:
                self.left = df if self.left is None else pl.concat([self.left, df], how="diagonal_relaxed")
            else:
                df = df.drop(WATERMARK, OFFSET, strict=False)
                if self.deleted is not None:
                    df = df.with_columns(self.deleted.fill_null(False).alias(DELETED))
                self.right = df if self.right is None else pl.concat([self.right, df], how="diagonal_relaxed")
        return self._advance(self._input_watermark(index, batch)) + emitted

    def on_end(self) -> Emitted:
        return self._advance(END_OF_TIME)

    def _advance(self, watermark: int) -> Emitted:
        start = self.watermark
        self.watermark = max(self.watermark, watermark)
        out = None
        if self.left is not None and self.left.height:
            due = pl.col(TIME) < self.watermark
            ready = self.left.filter(due).sort([TIME, SEQ])
            self.left = self.left.filter(~due)
            if ready.height:
                out = self._join(ready)
        if self.right is not None and self.watermark < END_OF_TIME:
            if self.tolerance is not None:
                self.right = self.right.filter(pl.col(TIME) >= self.watermark - self.tolerance)
            else:  # a table: of the versions before the watermark only the latest per key can still match
                old = pl.col(TIME) < self.watermark
                order = [TIME, self.right_order] if self.right_order else [TIME, SEQ]
                latest = self.right.filter(old).sort(order).unique(subset=self.by, keep="last", maintain_order=True)
                self.right = pl.concat([latest, self.right.filter(~old)], how="diagonal_relaxed")
        df = out.with_columns(pl.lit(start, pl.Int64).alias(WATERMARK)) if out is not None else pl.DataFrame()
        return [("out", Batch(df, watermark=self.watermark, time_dtype=self.time_dtype))]

    def _join(self, ready: pl.DataFrame) -> pl.DataFrame:
        left = ready.drop(SEQ)
        if self.right is None or self.right.height == 0:
            return left.clear() if self.how == "inner" else left  # nothing to match: no right columns
        else:
            order = [TIME, self.right_order] if self.right_order else [TIME, SEQ]
            right = self.right.sort(order).drop(SEQ).rename({TIME: RTIME})
            rename = {c: f"{c}{self.suffix}" for c in right.columns if c in left.columns and c not in self.by}
            right = right.rename(rename).with_columns(pl.col(RTIME).alias(TIME))
            joined = left.join_asof(right.select([*self.by, TIME, *[c for c in right.columns if c not in (*self.by, TIME)]]),
                                    on=TIME, by=self.by, strategy="backward", tolerance=self.tolerance,
                                    allow_exact_matches=not self.strict, check_sortedness=False)
            if DELETED in joined.columns:  # the version in force was a deletion: no row
                gone = pl.col(DELETED).fill_null(False)
                right_cols = [c for c in right.columns if c not in (*self.by, TIME, DELETED)]
                joined = joined.with_columns([pl.when(gone).then(None).otherwise(pl.col(c)).alias(c) for c in right_cols])
                joined = joined.drop(DELETED)
            if self.how == "inner":
                joined = joined.filter(pl.col(RTIME).is_not_null())
            return joined.drop(RTIME)
