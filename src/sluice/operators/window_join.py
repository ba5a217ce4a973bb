"""Window join: records of two streams with the same key in the same window are paired, once, when the
window closes (the operator's watermark, the minimum of both inputs', reaches its end). A record is late
for a window when that window's end ≤ the watermark it arrived under: its own input's watermark just
before it, which is never below the operator's, so a window that has closed never takes a record, and
the result does not depend on how the two inputs interleave (batch sizes, a branch's output order); late records go to the `late` port, one row per window
missed. Output rows come in (window end, keys, window start, left arrival, right arrival) order, the same
for any batch size.
"""

from __future__ import annotations

import polars as pl

from sluice.core.batch import END_OF_TIME, OFFSET, TIME, WATERMARK, Batch
from sluice.operators.base import SEQ, Emitted, Operator, TwoInputState, require_event_time
from sluice.time.windows import FixedWindow

WS = "__sl_ws"


class WindowJoinOperator(TwoInputState, Operator):
    def __init__(self, name: str, by: list[str], window: FixedWindow, suffix: str) -> None:
        self.name, self.by, self.suffix = name, by, suffix
        self.size, self.slide, self.offset = window.size_ms, window.slide_ms, window.offset_ms
        self._init_inputs()

    def _windows(self, df: pl.DataFrame) -> pl.DataFrame:
        """One row per (record, window containing it)."""
        t = pl.col(TIME)
        last = ((t - self.offset) // self.slide) * self.slide + self.offset
        fan = -(-self.size // self.slide)
        copies = [df.with_columns((last - j * self.slide).alias(WS)) for j in range(fan)]
        out = pl.concat(copies) if fan > 1 else copies[0]
        return out.filter(pl.col(WS) + self.size > pl.col(TIME))

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        emitted: Emitted = []
        if batch.height:
            require_event_time("window_join", self.name, batch)
            self.time_dtype = batch.time_dtype or self.time_dtype
            df = batch.df.with_columns(pl.int_range(self.seq, self.seq + batch.height, dtype=pl.Int64).alias(SEQ))
            self.seq += batch.height
            arrived_under = pl.col(WATERMARK)  # its own input's watermark just before it
            rows = self._windows(df)
            late = rows.filter(pl.col(WS) + self.size <= arrived_under)
            if late.height:
                emitted.append(("late", Batch(late.with_columns(pl.col(WS).alias("missed_window_start")).drop(WS, SEQ),
                                              watermark=self.watermark, time_dtype=batch.time_dtype)))
            rows = rows.filter(pl.col(WS) + self.size > arrived_under).drop(WATERMARK, OFFSET, strict=False)
            self._append(index, rows)
        return self._advance(self._input_watermark(index, batch)) + emitted

    def on_end(self) -> Emitted:
        return self._advance(END_OF_TIME)

    def _advance(self, watermark: int) -> Emitted:
        start = self.watermark
        self.watermark = max(self.watermark, watermark)
        closed = pl.col(WS) + self.size <= self.watermark
        out = pl.DataFrame()
        if self.left is not None and self.right is not None:
            left, right = self.left.filter(closed), self.right.filter(closed)
            if left.height and right.height:
                clash = set(left.columns)
                r = right.rename({c: f"{c}{self.suffix}" for c in right.columns if c in clash and c not in (*self.by, WS)})
                joined = left.join(r, on=[*self.by, WS], how="inner")
                joined = joined.sort([WS, *self.by, SEQ, f"{SEQ}{self.suffix}"]).with_columns(
                    pl.col(WS).alias("window_start"), (pl.col(WS) + self.size).alias("window_end"),
                    (pl.col(WS) + self.size - 1).alias(TIME), pl.lit(start, pl.Int64).alias(WATERMARK))
                out = joined.drop(WS, SEQ, f"{SEQ}{self.suffix}", f"{TIME}{self.suffix}", strict=False)
        for side in ("left", "right"):
            frame = getattr(self, side)
            if frame is not None:
                setattr(self, side, frame.filter(~closed))
        return [("out", Batch(out, watermark=self.watermark, time_dtype=self.time_dtype))]
