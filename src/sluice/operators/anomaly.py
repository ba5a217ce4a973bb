"""Streaming z-score anomaly detection per key.

Each record is compared with the records of its key in the preceding `window` of event time,
[t − window, t) (itself and records at the same instant excluded): z = (x − mean) / stddev (sample), and
it is an anomaly when at least `min_count` records are in the window and |z| > threshold. Records are
handled in event-time order (released once the watermark has passed them), so the result does not
depend on arrival order within the watermark delay or on batch size. Polars' rolling kernels do the
work; each key's last `window` of values is kept as history between batches.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from sluice.core.batch import END_OF_TIME, NO_WATERMARK, TIME, WATERMARK, Batch
from sluice.operators.base import SEQ, ArrivalBuffer, Emitted, Operator, require_event_time

VALUE = "__sl_value"
HIST = "__sl_hist"


class ZScoreOperator(Operator):
    def __init__(self, name: str, keys: list[pl.Expr], key_cols: list[str], value: pl.Expr, window_ms: int,
                 threshold: float, min_count: int, only_anomalies: bool) -> None:
        self.name, self.keys, self.key_cols, self.value = name, keys, key_cols, value
        self.window, self.threshold, self.min_count, self.only = window_ms, threshold, max(min_count, 2), only_anomalies
        self.pending = ArrivalBuffer()
        self.history: pl.DataFrame | None = None  # key columns, TIME, VALUE
        self.watermark = NO_WATERMARK
        self.time_dtype: pl.DataType | None = None

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        emitted: Emitted = []
        if batch.height:
            require_event_time("detect_anomalies", self.name, batch)
            self.time_dtype = batch.time_dtype or self.time_dtype
            df, late = ArrivalBuffer.split_late(self.pending.stamp(
                batch.df.with_columns(*self.keys, self.value.cast(pl.Float64).alias(VALUE))))
            if late.height:
                emitted.append(("late", Batch(late.drop(SEQ, VALUE), watermark=batch.watermark, time_dtype=batch.time_dtype)))
            self.pending.add(df)
        wm = batch.watermark if batch.watermark is not None else self.watermark
        return self._advance(wm) + emitted

    def on_end(self) -> Emitted:
        return self._advance(END_OF_TIME)

    def _advance(self, watermark: int) -> Emitted:
        start = self.watermark
        self.watermark = max(self.watermark, watermark)
        out = pl.DataFrame()
        ready = self.pending.release(self.watermark)
        if ready is not None:
            out = self._score(ready).with_columns(pl.lit(start, pl.Int64).alias(WATERMARK))
        return [("out", Batch(out, watermark=self.watermark, time_dtype=self.time_dtype))]

    def _score(self, ready: pl.DataFrame) -> pl.DataFrame:
        k = self.key_cols
        current = ready.select(*k, TIME, VALUE, SEQ).with_columns(pl.lit(False).alias(HIST))
        frames = [current]
        if self.history is not None and self.history.height:
            frames.insert(0, self.history.with_columns(pl.lit(None, pl.Int64).alias(SEQ), pl.lit(True).alias(HIST)))
        both = pl.concat(frames, how="diagonal_relaxed").sort([*k, TIME], maintain_order=True, nulls_last=True)
        size = f"{self.window}i"
        stats = both.with_columns(
            pl.col(VALUE).rolling_mean_by(TIME, window_size=size, closed="left").over(k).alias("mean"),
            pl.col(VALUE).rolling_std_by(TIME, window_size=size, closed="left").over(k).alias("stddev"),
            pl.col(VALUE).is_not_null().cast(pl.Int64).rolling_sum_by(TIME, window_size=size, closed="left")
            .over(k).alias("__sl_n"),
        )
        self.history = both.filter(pl.col(TIME) >= self.watermark - self.window).select(*k, TIME, VALUE)
        scored = stats.filter(~pl.col(HIST)).select(SEQ, "mean", "stddev", "__sl_n")
        z = (pl.col(VALUE) - pl.col("mean")) / pl.col("stddev")
        out = ready.join(scored, on=SEQ, how="left").sort([TIME, SEQ]).with_columns(
            pl.when(pl.col("stddev") > 0).then(z).otherwise(None).alias("zscore"))
        out = out.with_columns(((pl.col("__sl_n") >= self.min_count) & (pl.col("zscore").abs() > self.threshold))
                               .fill_null(False).alias("is_anomaly")).drop(SEQ, VALUE, "__sl_n")
        return out.filter(pl.col("is_anomaly")) if self.only else out

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"watermark": self.watermark}
        self.pending.snapshot(state)
        if self.history is not None:
            state["history"] = self.history
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.watermark = int(state["watermark"])
        self.pending.restore(state)
        self.history = state.get("history")
