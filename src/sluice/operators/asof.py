"""As-of (temporal) join: each left record is paired with the latest right record of the same key that
is earlier (or not later, when `strict=False`) and at most `tolerance` before it.

Exact in event time: a left record is joined once its time is complete (the operator's watermark, the
minimum of both inputs', has passed it), so every right record that could match has arrived; released
left records are joined in one vectorized pass. Right records are kept while a future left record could
still match them (time ≥ W − tolerance). A record that arrives behind the operator's watermark could no
longer be joined exactly and goes to the `late` port.

The pass is the native kernel `asof_match` (native/src/asof.rs: the released rows' order and the right row
of each, as positions the output is gathered with) where it applies: one key column of text or integers,
no nulls in the key or `right_order`, an `asof_join` (not a temporal join's deletions). Elsewhere, or when
the module is not built or SLUICE_NATIVE_ASOF=0, Polars' `join_asof` over the sorted buffers does it; the
two give the same rows (tests/operators/test_asof_native.py). The state is the same frames either way.
"""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from sluice.core.batch import END_OF_TIME, OFFSET, TIME, WATERMARK, Batch, with_series
from sluice.operators.base import Emitted, Operator, TwoInputState, require_event_time

SEQ = "__sl_seq"
RTIME = "__sl_rtime"
DELETED = "__sl_deleted"

try:  # the matching pass in native code (native/src/asof.rs), when the module is built
    import sluice_native as _sn

    NATIVE = hasattr(_sn, "asof_match") and os.environ.get("SLUICE_NATIVE_ASOF", "1") != "0"
except ImportError:
    NATIVE = False

_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
STALE_KEPT = 1024  # right rows past the tolerance kept behind a newer one before the buffer is filtered


def _append(buffer: pl.DataFrame | None, df: pl.DataFrame) -> pl.DataFrame:
    """`df` under `buffer`: stacked as a new chunk when the columns agree, else aligned by name."""
    if buffer is None:
        return df
    if buffer.columns == df.columns and buffer.dtypes == df.dtypes:
        return buffer.vstack(df)
    return pl.concat([buffer, df], how="diagonal_relaxed")


def _positions(raw: bytes) -> pl.Series:
    """uint32 row positions from their bytes."""
    n = len(raw) // 4
    return pl.Series(_sn.frame([("", "I", n, [None, raw])], n)).struct.unnest().to_series()


def _evict(right: pl.DataFrame, keep_from: int) -> pl.DataFrame:
    """The right rows without those before `keep_from`, which no future left record can match. The buffer
    is in arrival order, nearly time order: the stale rows at its head are sliced off; the few behind a
    newer row are only filtered out once there are more than STALE_KEPT (kept, they never match: a match
    is checked against the tolerance)."""
    times = right.get_column(TIME)
    if times.min() >= keep_from:  # type: ignore[operator]
        return right
    stale = times < keep_from
    n = stale.sum()
    head = right.height if n == right.height else stale.index_of(False)
    assert head is not None
    if n - head > STALE_KEPT:
        return right.filter(pl.col(TIME) >= keep_from)
    return right.slice(head)


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
            # Series and column calls, not frame expressions: these run in place, without a query plan
            seq = pl.int_range(self.seq, self.seq + batch.height, dtype=pl.Int64, eager=True).alias(SEQ)
            df = with_series(batch.df, [seq])
            self.seq += batch.height
            behind = df.get_column(TIME) < df.get_column(WATERMARK)  # judged by its own input's watermark before it
            if behind.any():
                emitted.append(("late", Batch(df.filter(behind).drop(SEQ), watermark=self.watermark,
                                              time_dtype=batch.time_dtype)))
                df = df.filter(~behind)
            if index == 0:
                self.left = _append(self.left, df)
            else:
                df = df[[c for c in df.columns if c not in (WATERMARK, OFFSET)]]
                if self.deleted is not None:
                    df = df.with_columns(self.deleted.fill_null(False).alias(DELETED))
                self.right = _append(self.right, df)
        return self._advance(self._input_watermark(index, batch)) + emitted

    def on_end(self) -> Emitted:
        return self._advance(END_OF_TIME)

    def _advance(self, watermark: int) -> Emitted:
        start = self.watermark
        self.watermark = max(self.watermark, watermark)
        out = None
        if self.left is not None and self.left.height and self.left.get_column(TIME).min() < self.watermark:  # type: ignore[operator]
            native = self._native_inputs()
            if native is not None:
                out = self._release_native(native, start)
            else:
                due = pl.col(TIME) < self.watermark
                ready = self.left.filter(due).sort([TIME, SEQ])
                self.left = self.left.filter(~due)
                if ready.height:
                    out = self._join(ready).with_columns(pl.lit(start, pl.Int64).alias(WATERMARK))
        if self.right is not None and self.right.height and self.watermark < END_OF_TIME:
            if self.tolerance is not None:
                self.right = _evict(self.right, self.watermark - self.tolerance)
            else:  # a table: of the versions before the watermark only the latest per key can still match
                old = pl.col(TIME) < self.watermark
                order = [TIME, self.right_order] if self.right_order else [TIME, SEQ]
                latest = self.right.filter(old).sort(order).unique(subset=self.by, keep="last", maintain_order=True)
                self.right = pl.concat([latest, self.right.filter(~old)], how="diagonal_relaxed")
        df = out if out is not None else pl.DataFrame()
        return [("out", Batch(df, watermark=self.watermark, time_dtype=self.time_dtype))]

    def _native_inputs(self) -> tuple[list[Any], ...] | None:
        """The buffers the native pass reads, or None where it does not apply (see the module's doc)."""
        left, right = self.left, self.right
        if not NATIVE or self.deleted is not None or len(self.by) != 1 or right is None or right.height == 0:
            return None
        assert left is not None
        (by,) = self.by
        lk, rk = left.get_column(by), right.get_column(by)
        if lk.dtype != rk.dtype or lk.has_nulls() or rk.has_nulls():
            return None
        if lk.dtype == pl.String:
            text = True
        elif any(lk.dtype == t for t in _INTS):
            text = False
        else:
            return None
        ro = right.get_column(self.right_order) if self.right_order is not None else None
        order_text = False
        if ro is not None:
            if ro.has_nulls():
                return None
            if ro.dtype == pl.String:
                order_text = True
            elif not any(ro.dtype == t for t in _INTS):
                return None
        # the kernel reads single-chunk columns: buffered batches are joined into one chunk here
        if max(left.n_chunks("all")) > 1:
            self.left = left = left.rechunk()
        if max(right.n_chunks("all")) > 1:
            self.right = right = right.rechunk()
        lk, rk = left.get_column(by), right.get_column(by)
        if not text:
            lk, rk = lk.cast(pl.Int64), rk.cast(pl.Int64)
        order: list[Any] | None = None
        if self.right_order is not None:
            ro = right.get_column(self.right_order)
            order = _sn.buffers(ro if order_text else ro.cast(pl.Int64))
        cols = [_sn.buffers(s) for s in (lk, left.get_column(TIME), left.get_column(SEQ), rk,
                                         right.get_column(TIME), right.get_column(SEQ))]
        return (*cols, [text], order, [order_text])

    def _release_native(self, native: tuple[list[Any], ...], start: int) -> pl.DataFrame | None:
        """Release the due left rows and join them, by the native pass's positions."""
        left, right = self.left, self.right
        assert left is not None and right is not None
        lk, lt, ls, rk, rt, rs, (text,), order, (order_text,) = native
        found, waiting = _sn.asof_match(lk, lt, ls, rk, rt, rs, text, order, order_text, self.watermark,
                                        self.tolerance, self.strict, self.how == "inner")
        held = len(waiting) // 4
        self.left = left.clear() if held == 0 else left[_positions(waiting)]
        if held == left.height:
            return None
        pos = pl.Series(found).struct.unnest()
        lpos, rpos = pos.get_column("left"), pos.get_column("right")
        out = left[[c for c in left.columns if c != SEQ]][lpos]
        wm = pl.Series(WATERMARK, [start], dtype=pl.Int64).new_from_index(0, out.height)
        if WATERMARK in out.columns:
            out.replace_column(out.get_column_index(WATERMARK), wm)
        rename = {c: f"{c}{self.suffix}" for c in right.columns if c in left.columns and c not in self.by}
        kept = [c for c in right.columns if c not in (SEQ, TIME, *self.by)]
        matched = right[kept][rpos]
        matched.columns = [rename.get(c, c) for c in kept]
        out = out.hstack(matched)
        return out if WATERMARK in left.columns else out.hstack([wm])

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
