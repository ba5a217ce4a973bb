"""Window aggregation in event time, exact per record, vectorized per batch (DESIGN.md §3).

Each record is judged against the watermark before it (column __sl_wm). A window [start, end) takes the
records that arrived while W < end, is emitted once when W ≥ end, and records that arrive later go to
the `late` port, one row per window they missed. Emitted rows are sorted by (end, keys, start); since
every emission round covers a later range of ends than the one before, the output sequence is the same
for any batch size.

Fixed windows (tumbling, sliding) aggregate per *pane* (gcd of size and slide) first, so a record costs
one group-by row however many windows overlap it; panes then fan out to windows as partials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import polars as pl

from sluice.core.batch import NO_WATERMARK, TIME, WATERMARK, Batch, column_picks, with_picks
from sluice.core.errors import StepError, polars_detail
from sluice.core.plan import Window
from sluice.core.plan import key_names as key_names  # its home was here; kept for importers
from sluice.operators.base import Emitted, Operator, check_columns
from sluice.time.aggregates import Aggregate, Count, Max, Mean, Min, Percentile, Sum
from sluice.time.windows import Session, pane_ms

if TYPE_CHECKING:
    import numpy as np

    from sluice.operators import session_kernel

WS = "__sl_ws"  # window start (ms)
WE = "__sl_we"  # window end, exclusive (ms)
PANE = "__sl_pane"
LO = "__sl_lo"  # earliest window start this record is not late for
S0 = "__sl_s0"  # earliest window start that contains this record
BUCKET = "__sl_bucket"
ROW = "__sl_row"


def _sessions() -> Any:
    """The session kernel's module, loaded by session windows only (it needs numpy)."""
    from sluice.operators import session_kernel

    return session_kernel


_NO_WMS = pl.Series(WATERMARK, [], dtype=pl.Int64)


try:  # an emitted window's watermark found natively (native/src/wm.rs), when the module is built
    import sluice_native as _sn

    _NATIVE_TIMES = hasattr(_sn, "window_watermarks") and os.environ.get("SLUICE_NATIVE_WATERMARKS", "1") != "0"
except ImportError:
    _NATIVE_TIMES = False


def _buffer(s: pl.Series) -> Any:
    """The values of a Series without nulls (Int64, Float64) as a bytes-like buffer, not copied."""
    from sluice_native import buffers

    return buffers(s.rechunk())[0]


def _any_nan(values: Any) -> bool:
    """Whether a float64 buffer (`_buffer`) holds a NaN."""
    from sluice_native import any_nan

    return bool(any_nan(values))


def _int64s(name: str, raw: Any, valid: Any = None, kind: str = "l") -> pl.Series:
    """A Series of the int64 ("l"), float64 ("g") or uint32 ("I") values in the bytes `raw` (copied)."""
    from sluice_native import frame

    n = len(raw) // (4 if kind == "I" else 8)
    return pl.Series(frame([(name, kind, n, [valid, raw])], n)).struct.unnest().to_series()


def _ceil_div(a: pl.Expr, b: int) -> pl.Expr:
    return -((-a) // b)



class _Aggregation:
    """The aggregates of one window step, split into row partials and sketches."""

    def __init__(self, aggregates: Mapping[str, object]) -> None:
        self.rows: dict[str, Aggregate] = {}
        self.sketches: dict[str, Percentile] = {}
        for out, agg in aggregates.items():
            if isinstance(agg, Percentile):
                self.sketches[out] = agg
            elif isinstance(agg, Aggregate):
                self.rows[out] = agg
            else:
                raise TypeError(f"aggregate {out!r} is {agg!r}; use sl.agg.* or subclass sl.agg.Aggregate")

    def value_columns(self) -> list[pl.Expr]:
        cols = [agg.of.alias(f"__sl_v_{out}") for out, agg in self.rows.items() if agg.of is not None]
        cols += [agg.bucket(agg.of).alias(f"__sl_b_{out}") for out, agg in self.sketches.items()]
        return cols

    def update(self) -> list[pl.Expr]:
        exprs = []
        for out, agg in self.rows.items():
            value = pl.col(f"__sl_v_{out}") if agg.of is not None else pl.lit(None)
            for part, e in agg.update(value, pl.col(TIME)).items():
                exprs.append(e.alias(f"{out}.{part}"))
        return exprs

    def merge(self) -> list[pl.Expr]:
        exprs = []
        for out, agg in self.rows.items():
            for part, e in agg.merge(lambda n, o=out: pl.col(f"{o}.{n}")).items():  # type: ignore[misc]
                exprs.append(e.alias(f"{out}.{part}"))
        return exprs

    def finish(self) -> list[pl.Expr]:
        return [agg.finish(lambda n, o=out: pl.col(f"{o}.{n}")).alias(out) for out, agg in self.rows.items()]  # type: ignore[misc]


class WindowOperator(Operator):
    """Shared by fixed and session windows: state, emission, output shaping."""

    def __init__(self, step: Window) -> None:
        self.name = step.name
        self.step = step
        self.keys = list(step.keys)
        self.key_cols = key_names(step.keys)
        self.aggs = _Aggregation(step.aggregates)
        self.state: pl.DataFrame | None = None  # keys, WS, WE, partials
        self.sketch_state: dict[str, pl.DataFrame] = {}  # keys, WS, BUCKET, n
        self.watermark = NO_WATERMARK
        self.carry_wm = NO_WATERMARK  # the last per-record watermark seen
        self.flushed_end = NO_WATERMARK  # the end of the last window emitted when the input ended
        self.floor = NO_WATERMARK  # resumed after the input ended: windows ending at or before this are final
        self.time_dtype: pl.DataType | None = None
        self._pending: list[pl.DataFrame] = []  # emitted mid-batch (sessions), sent with the batch's output
        self.text_keys: list[str] = []
        self.categorical_keys = not isinstance(step.window, Session)
        self.columns_checked = False
        # the keys and aggregated values as plain columns to append (None: not yet looked at), and their exprs
        self.picks: tuple[list[tuple[str, tuple[str, ...], str]] | None, list[pl.Expr]] | None = None

    # --- input ---------------------------------------------------------------------------------
    def _prepare(self, batch: Batch) -> pl.DataFrame:
        df = self._evaluate(batch)
        # text keys group several times faster as categoricals; outputs turn them back into text
        text = [k for k in self.key_cols if df.schema[k] == pl.String] if self.categorical_keys else []
        if text:
            self.text_keys = text
            df = df.with_columns(pl.col(text).cast(pl.Categorical))
        return df

    def _evaluate(self, batch: Batch) -> pl.DataFrame:
        """The batch with its key and aggregated value columns."""
        if TIME not in batch.df.columns:
            from sluice.core.errors import PlanError

            raise PlanError(f"window {self.name!r} needs event time: call .event_time(column, watermark) before it")
        if batch.time_dtype is not None:
            self.time_dtype = batch.time_dtype
        if not self.columns_checked:
            reads = {f"aggregate {out!r}": getattr(agg, "of", None) for out, agg in self.step.aggregates.items()}
            check_columns("window", self.name, batch, {**{f"key {k!r}": e for k, e in zip(self.key_cols, self.keys, strict=True)}, **reads})
            self.columns_checked = True
        try:
            if self.picks is None:
                exprs = [*self.keys, *self.aggs.value_columns()]
                self.picks = (column_picks(exprs), exprs)
            picks, exprs = self.picks
            df = batch.df.with_columns(exprs) if picks is None else with_picks(batch.df, picks, exprs)
        except pl.exceptions.PolarsError as exc:
            raise StepError(self.name, f"a batch starting at {batch.position_of(0)}", polars_detail(exc),
                            "check the keys and aggregates against the stream's columns and types") from exc
        return df

    def _narrow(self, df: pl.DataFrame, extra: list[str]) -> pl.DataFrame:
        cols = [*self.key_cols, TIME, *extra]
        cols += [f"__sl_v_{o}" for o, a in self.aggs.rows.items() if a.of is not None]
        cols += [f"__sl_b_{o}" for o in self.aggs.sketches]
        return df.select(list(dict.fromkeys(cols)))  # keeps order, drops duplicates

    def _partials(self, rows: pl.DataFrame, by: list[str]) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
        """Row partials grouped by `by`, and per sketch the (by, bucket) counts."""
        parts = rows.group_by(by).agg(self.aggs.update()) if self.aggs.rows else rows.group_by(by).agg()
        sketches = {}
        for out in self.aggs.sketches:
            b = f"__sl_b_{out}"
            sketches[out] = (
                rows.filter(pl.col(b).is_not_null())
                .group_by([*by, b])
                .agg(n=pl.len().cast(pl.Int64))
                .rename({b: BUCKET})
            )
        return parts, sketches

    def _merge_state(self, parts: pl.DataFrame, sketches: dict[str, pl.DataFrame], by: list[str]) -> None:
        frames = [parts] if self.state is None else [self.state, parts]
        merged = pl.concat(frames, how="diagonal_relaxed")
        self.state = merged.group_by(by).agg(self.aggs.merge()) if self.aggs.rows else merged.unique(by)
        for out, sk in sketches.items():
            prev = self.sketch_state.get(out)
            both = sk if prev is None else pl.concat([prev, sk], how="diagonal_relaxed")
            self.sketch_state[out] = both.group_by([*by, BUCKET]).agg(n=pl.col("n").sum())

    # --- output --------------------------------------------------------------------------------
    def _emit(self, closing: pl.DataFrame, wms: pl.Series | np.ndarray, sketches: dict[str, pl.DataFrame],
              extra: tuple[str, ...] = (), presorted: bool = False) -> pl.DataFrame:
        """Finish the closing windows (keys, WS, WE, partials; sketches: keys, WS, BUCKET, n) into output
        rows; `extra` columns of `closing` come last. `presorted`: `closing` is in output order already."""
        by = [*self.key_cols, WS]
        out = closing.select(*self.key_cols, WS, WE, *self._bounds(closing), *self.aggs.finish(), *extra)
        if self.text_keys:
            out = out.with_columns(pl.col(self.text_keys).cast(pl.String))
            sketches = {k: v.with_columns(pl.col(self.text_keys).cast(pl.String)) for k, v in sketches.items()}
        for name, agg in self.aggs.sketches.items():
            mine = sketches.get(name)
            if mine is None:
                out = out.with_columns(pl.lit(None, pl.Float64).alias(name))
                continue
            ranked = mine.sort([*by, BUCKET]).with_columns(
                cum=pl.col("n").cum_sum().over(by), total=pl.col("n").sum().over(by)
            )
            rank = (pl.col("total") * agg.q).ceil().clip(lower_bound=1)
            picked = ranked.group_by(by).agg(pl.col(BUCKET).filter(pl.col("cum") >= rank).min())
            picked = picked.select(*by, agg.bucket_value(pl.col(BUCKET)).alias(name))
            out = out.join(picked, on=by, how="left", nulls_equal=True, maintain_order="left")
        if extra:
            out = out.select(pl.exclude(list(extra)), *extra)
        if not presorted:
            out = out.sort([WE, *self.key_cols, WS], nulls_last=True)
        return out.with_columns(*self._time_columns(out[WE], wms)).drop(WS, WE)

    def _time_columns(self, ends: pl.Series | np.ndarray, wms: pl.Series | np.ndarray) -> list[pl.Series]:
        """An emitted window's event time (its last millisecond) and watermark (the one before the record
        that closed it: the last of `wms`, the batch's watermarks in order, below the window's end)."""
        ends = ends if isinstance(ends, pl.Series) else pl.Series(ends, dtype=pl.Int64)
        wms = wms if isinstance(wms, pl.Series) else pl.Series(wms, dtype=pl.Int64)
        if len(wms) and len(ends) and _NATIVE_TIMES and not ends.has_nulls() and not wms.has_nulls():
            from sluice_native import frame, window_watermarks

            n = len(ends)
            got = window_watermarks(_buffer(wms.cast(pl.Int64)), _buffer(ends.cast(pl.Int64)), self.carry_wm)
            wm_out = pl.Series(frame([("wm", "l", n, [None, got])], n)).struct.unnest().to_series()
        elif len(wms):
            below = wms.search_sorted(ends, side="left").cast(pl.Int64) - 1
            wm_out = pl.select(pl.when(below >= 0).then(wms.gather(below.clip(lower_bound=0)))
                               .otherwise(self.carry_wm)).to_series()
        else:
            wm_out = pl.repeat(self.carry_wm, len(ends), dtype=pl.Int64, eager=True)
        return [(ends - 1).cast(pl.Int64).alias(TIME), wm_out.cast(pl.Int64).alias(WATERMARK)]

    def _bounds(self, closing: pl.DataFrame) -> list[pl.Expr]:
        start, end = self._reported_bounds()
        return [self._as_time(start).alias("window_start"), self._as_time(end).alias("window_end")]

    def _as_time(self, e: pl.Expr) -> pl.Expr:
        """Window bounds have the event-time column's type: epoch ms stays ms, datetimes stay datetimes."""
        if self.time_dtype is None:
            return e
        tz = getattr(self.time_dtype, "time_zone", None)
        return e.cast(pl.Datetime("ms", tz)).cast(self.time_dtype)

    def _reported_bounds(self) -> tuple[pl.Expr, pl.Expr]:
        return pl.col(WS), pl.col(WE)

    def _close(self, watermark: int, wms: pl.Series | np.ndarray) -> pl.DataFrame | None:
        if self.state is None or self.state.height == 0:
            return None
        done = pl.col(WE) <= watermark
        closing = self.state.filter(done)
        if closing.height == 0:
            return None
        self.state = self.state.filter(~done)
        self._on_closed(closing)
        by = [*self.key_cols, WS]
        sketches = {}
        for name, sk in self.sketch_state.items():
            sketches[name] = sk.join(closing.select(by), on=by, how="semi", nulls_equal=True)
            self.sketch_state[name] = sk.join(closing.select(by), on=by, how="anti", nulls_equal=True)
        return self._emit(closing, wms, sketches)

    def _on_closed(self, closing: pl.DataFrame) -> None:
        """Hook: sessions remember what they emitted."""

    def _note_flush(self, watermark: int) -> None:
        """The input has ended: remember how far the windows emitted now reach."""
        from sluice.core.batch import END_OF_TIME

        if watermark >= END_OF_TIME and self._holds():
            self.flushed_end = max(self.flushed_end, self._held_end())

    def _holds(self) -> bool:
        """Whether any window is open."""
        return self.state is not None and self.state.height > 0

    def _held_end(self) -> int:
        """The end of the last window that the state holds a record for."""
        return int(self.state[WE].max()) if self.state is not None else NO_WATERMARK  # type: ignore[arg-type,unused-ignore]

    def reopen(self, watermark: int) -> None:
        """What was emitted when the input ended is final: a record for a window that ended by then is late."""
        from sluice.core.batch import END_OF_TIME

        if self.watermark == END_OF_TIME:
            self.watermark = max(watermark, NO_WATERMARK)
        self.floor = max(self.floor, self.flushed_end)

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"watermark": self.watermark, "carry_wm": self.carry_wm, "text_keys": self.text_keys,
                                 "flushed_end": self.flushed_end, "floor": self.floor}
        if self.state is not None:
            state["state"] = self.state
        for name, sk in self.sketch_state.items():
            state[f"sketch.{name}"] = sk
        if self.time_dtype is not None:
            state["time_dtype"] = pl.DataFrame(schema={"t": self.time_dtype})
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.watermark = int(state["watermark"])
        self.carry_wm = int(state["carry_wm"])
        self.flushed_end = int(state.get("flushed_end", NO_WATERMARK))
        self.floor = int(state.get("floor", NO_WATERMARK))
        self.text_keys = list(state["text_keys"])
        self.state = state.get("state")
        self.sketch_state = {k[len("sketch."):]: v for k, v in state.items() if k.startswith("sketch.")}
        if "time_dtype" in state:
            self.time_dtype = state["time_dtype"].schema["t"]

    def _out_batch(self, frames: list[pl.DataFrame], like: Batch | None, watermark: int) -> Batch:
        frames = [f for f in frames if f is not None and f.height > 0]
        df = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
        return Batch(df, watermark=watermark, origin=None, time_dtype=self.time_dtype)

    def _advance(self, batch: Batch, late: pl.DataFrame | None) -> Emitted:
        """Move the watermark to the batch's, emit what closed, pass late rows on."""
        wms = batch.df[WATERMARK] if batch.height else _NO_WMS
        watermark = batch.watermark if batch.watermark is not None else self.watermark
        self.watermark = max(self.watermark, watermark)
        self._note_flush(self.watermark)
        emitted = self._close(self.watermark, wms)
        if len(wms):
            self.carry_wm = int(wms[-1])
        frames = [*self._pending, *([emitted] if emitted is not None else [])]
        self._pending = []
        result: Emitted = [("out", self._out_batch(frames, batch, self.watermark))]
        if late is not None:
            result.append(("late", Batch(late, watermark=self.watermark, origin=batch.origin, time_dtype=batch.time_dtype)))
        return result

    def on_end(self) -> Emitted:
        from sluice.core.batch import END_OF_TIME

        self._note_flush(END_OF_TIME)
        out = self._close(END_OF_TIME, _NO_WMS)
        self.watermark = END_OF_TIME
        return [("out", self._out_batch([out] if out is not None else [], None, END_OF_TIME))]


class FixedWindowOperator(WindowOperator):
    """Tumbling and sliding windows.

    Where it can, the state is kept by the native kernel (`NativePanes`, native/src/panes.rs): one key,
    count/sum/mean/min/max of Float64 values, percentiles. Records that missed a window, and whatever the
    kernel does not cover, take the Polars path, whose state (`self.state`) closes beside the kernel's;
    checkpoints hold both as the Polars path's frames, so either path restores them."""

    native_ok = True  # subclasses that work on `self.state` directly turn the kernel off

    def __init__(self, step: Window) -> None:
        super().__init__(step)
        self.native: NativePanes | None = None
        self.native_checked = False  # decided at the first batch; once off, off for good
        w = step.window
        self.size = w.size_ms
        self.slide = w.slide_ms
        self.offset = w.offset_ms
        self.pane = pane_ms(w)
        self.fan = (self.size - self.pane) // self.slide + 1  # windows that contain one pane
        self.lateness = step.allowed_lateness_ms
        self.closed_upto = NO_WATERMARK  # every window ending at or before this has been emitted

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        late = self._ingest(batch) if batch.height else None
        return self._advance(batch, late)

    def _ingest(self, batch: Batch) -> pl.DataFrame | None:
        if self.native is not None or not self.native_checked:
            df = self._evaluate(batch)
            if not self.native_checked:
                self.native_checked = True
                self.native = NativePanes.make(self, df)
                if self.native is not None and self.state is not None and self.state.height:
                    self.native.take_state(self)  # restored state: the kernel goes on as if never stopped
            if self.native is not None:
                rest = self.native.ingest(df, self.lateness, self.floor)
                if rest is not True:
                    return None if rest is None else self._ingest_polars(batch.with_df(batch.df[rest]))
                self._leave_native()  # a batch the kernel cannot take (a null key, a NaN): Polars from now on
        return self._ingest_polars(batch)

    def _leave_native(self) -> None:
        assert self.native is not None
        held, sketches = self.native.state_rows(self)
        self.native = None
        self.state, self.sketch_state = self._with_held(held, sketches)

    def _with_held(self, held: pl.DataFrame, sketches: dict[str, pl.DataFrame]
                   ) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
        """The Polars path's state and sketch state with the kernel's rows added."""
        by = [*self.key_cols, PANE, LO]
        state = held
        if self.state is not None and self.state.height:
            merged = pl.concat([self.state, held], how="diagonal_relaxed")
            state = merged.group_by(by, maintain_order=True).agg(self.aggs.merge()) if self.aggs.rows else merged.unique(by)
        out = {}
        for name, sk in sketches.items():
            prev = self.sketch_state.get(name)
            if prev is not None and prev.height:
                sk = pl.concat([prev, sk], how="diagonal_relaxed").group_by([*by, BUCKET], maintain_order=True).agg(
                    n=pl.col("n").sum())
            out[name] = sk
        return state, out

    def _holds(self) -> bool:
        return super()._holds() or (self.native is not None and len(self.native) > 0)

    def _ingest_polars(self, batch: Batch) -> pl.DataFrame | None:
        df = self._prepare(batch)
        size, slide, off, g = self.size, self.slide, self.offset, self.pane
        t = pl.col(TIME)
        pane = ((t - off) // g) * g + off
        s0 = _ceil_div(pl.col(PANE) + (g - size - off), slide) * slide + off
        # a window is still open for a record while its end + allowed lateness > W_prev; what was final
        # when an ended input was resumed (floor) stays final whatever the lateness
        wm = pl.col(WATERMARK) - self.lateness if self.lateness else pl.col(WATERMARK)
        wp = pl.max_horizontal(wm, pl.col(PANE) - 2 * size, pl.lit(self.floor, pl.Int64))
        not_late = _ceil_div(wp - (size - 1 + off), slide) * slide + off
        df = df.with_columns(pane.alias(PANE)).with_columns(s0.alias(S0), not_late.alias(LO))
        df = df.with_columns(pl.max_horizontal(S0, LO).alias(LO))

        late = self._late_rows(batch, df)
        by = [*self.key_cols, PANE, LO]
        if late is None:
            # the usual case: no record missed any window, so lo = s0 is a function of the pane
            parts, sketches = self._partials(self._narrow(df, [PANE]), [*self.key_cols, PANE])
            lo = _ceil_div(pl.col(PANE) + (g - size - off), slide) * slide + off
            parts = parts.with_columns(lo.alias(LO))
            sketches = {k: v.with_columns(lo.alias(LO)) for k, v in sketches.items()}
            self._merge_state(parts, sketches, by)
            return None
        ontime = self._narrow(df.filter(pl.col(LO) <= pl.col(PANE)), [PANE, LO])
        if ontime.height:
            parts, sketches = self._partials(ontime, by)
            self._merge_state(parts, sketches, by)
        return late

    def _closing_panes(self, after: int, upto: int, min_pane: int, max_pane: int) -> pl.DataFrame:
        """(pane, window start) for each window ending in (after, upto] that holds a pane in state."""
        size, slide, off, g = self.size, self.slide, self.offset, self.pane
        lowest_end = max(after, min_pane) + 1
        first = -((-(lowest_end - size - off)) // slide) * slide + off  # smallest start on the grid
        last = min(max_pane, upto - size)
        per = size // g  # panes in a window
        n = max(0, (last - first) // slide + 1) if last >= first else 0
        i = pl.int_range(0, n * per, dtype=pl.Int64, eager=True)  # start-major, as the panes of each start
        starts = (i // per) * slide + first
        return pl.DataFrame([(starts + (i % per) * g).alias(PANE), starts.alias(WS)])

    def _window_rows(self, parts: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
        """Pane rows → rows of the closing windows they belong to (a pane counts for starts ≥ its lo)."""
        return parts.join(pairs, on=PANE, how="inner").filter(pl.col(WS) >= pl.col(LO)).drop(PANE, LO)

    def _close(self, watermark: int, wms: pl.Series | np.ndarray) -> pl.DataFrame | None:
        """State is kept per pane; windows are put together from their panes only when they close."""
        after = self.closed_upto
        if watermark <= after or not self._holds():
            return None
        self.closed_upto = watermark
        native_only = self.native is not None and not (self.state is not None and self.state.height)
        if native_only and self.native is not None:  # the kernel finishes the windows itself, in output order
            return self._emit_finished(self.native.close_finished(after, watermark), wms)
        by = [*self.key_cols, WS]
        native, native_sketches = self.native.close(after, watermark) if self.native is not None and len(self.native) else (None, {})
        closing = None
        sketches: dict[str, pl.DataFrame] = {}
        if self.state is not None and self.state.height:
            pairs = self._closing_panes(after, watermark, int(self.state[PANE].min()), int(self.state[PANE].max()))  # type: ignore[arg-type]
            rows = self._window_rows(self.state, pairs)
            if rows.height:
                closing = rows.group_by(by).agg(self.aggs.merge()) if self.aggs.rows else rows.unique(by)
                sketches = {
                    name: self._window_rows(sk, pairs).group_by([*by, BUCKET]).agg(n=pl.col("n").sum())
                    for name, sk in self.sketch_state.items()
                }
            done = pl.col(PANE) + self.size <= watermark  # every window holding this pane has closed
            self.state = self.state.filter(~done)
            for name, sk in self.sketch_state.items():
                self.sketch_state[name] = sk.filter(~done)
        presorted = False
        if native is not None and native.height:
            if closing is None:
                closing, sketches, presorted = native, native_sketches, True  # the kernel gives them in output order
            else:  # both paths held panes of these windows: one row per window
                text = [pl.col(self.text_keys).cast(pl.String)] if self.text_keys else []
                both = pl.concat([closing.with_columns(*text), native], how="diagonal_relaxed")
                closing = both.group_by(by).agg(self.aggs.merge()) if self.aggs.rows else both.unique(by)
                for name, sk in native_sketches.items():
                    mine = sketches.get(name)
                    if mine is not None and mine.height:
                        sk = pl.concat([mine.with_columns(*text), sk], how="diagonal_relaxed").group_by(
                            [*by, BUCKET]).agg(n=pl.col("n").sum())
                    sketches[name] = sk
        if closing is None:
            return None
        return self._emit(closing.with_columns((pl.col(WS) + self.size).alias(WE)), wms, sketches, presorted=presorted)

    def _emit_finished(self, rows: pl.DataFrame, wms: pl.Series | np.ndarray) -> pl.DataFrame | None:
        """Output rows from the kernel's finished windows (key, WS, results), as `_emit` makes them."""
        if rows.height == 0:
            return None
        ends = rows[WS] + self.size
        # select_seq: on this thread (a select waits for a thread of Polars' pool, which the parse threads
        # hold off the cores); the closed windows of one batch are few rows
        return rows.select_seq(
            self.key_cols[0], self._as_time(pl.col(WS)).alias("window_start"),
            self._as_time(pl.col(WS) + self.size).alias("window_end"), *self.aggs.rows,
            *[pl.when(pl.col(name).is_not_null()).then(agg.bucket_value(pl.col(name))).alias(name)
              for name, agg in self.aggs.sketches.items()],
            *self._time_columns(ends, wms),
        )

    def snapshot(self) -> dict[str, Any]:
        snap = {**super().snapshot(), "closed_upto": self.closed_upto}
        if self.native is not None:  # one state frame, as the Polars path keeps it (empty too: its schema)
            snap["state"], sketches = self._with_held(*self.native.state_rows(self))
            snap.update({f"sketch.{name}": sk for name, sk in sketches.items()})
        return snap

    def _held_end(self) -> int:
        panes = []
        if self.state is not None and self.state.height:
            panes.append(int(self.state[PANE].max()))  # type: ignore[arg-type]
        if self.native is not None and (span := self.native.pane_range()) is not None:
            panes.append(span[1])
        last_pane = max(panes)
        last_start = ((last_pane - self.offset) // self.slide) * self.slide + self.offset
        return int(last_start + self.size)

    def reopen(self, watermark: int) -> None:
        super().reopen(watermark)
        self.closed_upto = max(self.watermark, self.floor)

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.closed_upto = int(state["closed_upto"])
        self.native = None  # what was restored stays on the Polars path; new records may take the kernel
        self.native_checked = False

    def _late_rows(self, batch: Batch, df: pl.DataFrame) -> pl.DataFrame | None:
        late = df.filter(pl.col(LO) > pl.col(S0))
        if late.height == 0:
            return None
        late = late.with_row_index(ROW)
        copies = [late.with_columns((pl.col(S0) + j * self.slide).alias(WS)) for j in range(self.fan)]
        missed = pl.concat(copies).filter((pl.col(WS) < pl.col(LO)) & (pl.col(WS) <= pl.col(PANE)))
        missed = missed.sort([ROW, WS]).with_columns((pl.col(WS) + self.size).alias(WE))
        # the columns as the stream had them (text keys were made categorical only to group faster)
        return missed.select(
            *[pl.col(c).cast(t) for c, t in batch.df.schema.items()],
            self._as_time(pl.col(WS)).alias("missed_window_start"),
            self._as_time(pl.col(WE)).alias("missed_window_end"),
        )



LAST = "__sl_last"


class SessionWindowOperator(WindowOperator):
    """Per-key sessions. Exact per record: a record that sits behind the watermark (t < W) is handled
    at the exact moment it arrived, because only such a record can touch a session that has closed;
    batches without one (the usual case) are merged in one vectorized pass."""

    def __init__(self, step: Window) -> None:
        super().__init__(step)
        assert isinstance(step.window, Session)
        self.gap = step.window.gap_ms
        self.emitted_last: pl.DataFrame | None = None  # keys, LAST of the newest emitted session
        # the native kernel holds the state instead while this step and its batches fit it (session_kernel.py)
        self.native: session_kernel.SessionKernel | None = None
        self.native_ok = _sessions().fits(self.key_cols, step.aggregates)

    def _reported_bounds(self) -> tuple[pl.Expr, pl.Expr]:
        return pl.col(WS), pl.col(LAST) + self.gap

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if not batch.height:
            return self._advance(batch, None)
        df = self._prepare(batch)
        if self.native_ok and self._native_takes(df[self.key_cols[0]]):
            return self._native_batch(batch, df)
        import numpy as np

        times = df[TIME].to_numpy()
        wms = np.maximum(df[WATERMARK].to_numpy(), self.floor)
        behind = np.flatnonzero(times < wms)
        starts = [0, *[int(i) for i in behind if i > 0], df.height]
        late_rows = []
        for a, b in pairwise(starts):
            seg = df.slice(a, b - a)
            if times[a] < wms[a]:
                emitted = self._close(int(wms[a]), wms)
                if emitted is not None:
                    self._pending.append(emitted)
                first = seg.head(1)
                if self._is_late(first, int(times[a]), int(wms[a])):
                    late_rows.append(first)
                    seg = seg.slice(1)
            if seg.height:
                self._ingest(seg)
        late = None
        if late_rows:
            late = pl.concat(late_rows).select(
                *batch.df.columns,
                pl.lit(None, pl.Int64).alias("missed_window_start"),
                pl.lit(None, pl.Int64).alias("missed_window_end"),
            )
        return self._advance(batch, late)

    # --- the native kernel --------------------------------------------------------------------------
    def _native_takes(self, keys: pl.Series) -> bool:
        """Whether this batch goes to the kernel; the first batch that does not fit it hands the state over
        to the Polars path for good."""
        if self.native is None:
            if self.state is None and self.emitted_last is None and keys.null_count() == 0 \
                    and _sessions().SessionKernel.takes_dtype(keys.dtype):
                self.native = _sessions().SessionKernel(self.gap, self.key_cols[0], keys.dtype, list(self.aggs.rows))
                return True
        elif self.native.takes(keys):
            return True
        self._hand_over()
        return False

    def _hand_over(self) -> None:
        if self.native is not None:
            self.state, self.emitted_last = self.native.export(NO_WATERMARK)
        self.native = None
        self.native_ok = False

    def _native_batch(self, batch: Batch, df: pl.DataFrame) -> Emitted:
        assert self.native is not None
        import numpy as np

        wms = np.maximum(df[WATERMARK].to_numpy(), self.floor)
        self.native.compact(self._reachable_from())
        late_at, closed = self.native.ingest(df[self.key_cols[0]], df[TIME].to_numpy(), wms)
        if len(closed):
            # one emission round per record behind the watermark that closed sessions, as on the Polars path
            rounds = closed.round
            cuts = [0, *(np.flatnonzero(rounds[1:] != rounds[:-1]) + 1).tolist(), len(rounds)]
            for a, b in pairwise(cuts):
                self._pending.append(self._native_emit(closed.slice(a, b), wms))
        late = None
        if len(late_at):
            late = df[late_at].select(
                *batch.df.columns,
                pl.lit(None, pl.Int64).alias("missed_window_start"),
                pl.lit(None, pl.Int64).alias("missed_window_end"),
            )
        return self._advance(batch, late)

    def _close(self, watermark: int, wms: pl.Series | np.ndarray) -> pl.DataFrame | None:
        if self.native is None:
            return super()._close(watermark, wms)
        closing = self.native.close(watermark)
        return self._native_emit(closing, wms) if len(closing) else None

    def _native_emit(self, closing: session_kernel.Closed, wms: pl.Series | np.ndarray) -> pl.DataFrame:
        """`_emit` for the kernel's closed sessions, which come sorted and hold nothing to finish but counts:
        the same rows, put together from arrays (a Polars query per round cost more than the rows)."""
        counts = pl.Series(closing.n, dtype=pl.Int64)
        return pl.DataFrame([
            closing.keys,
            self._time_series("window_start", closing.ws),
            self._time_series("window_end", closing.last + self.gap),
            *[counts.alias(c) for c in self.aggs.rows],
            *self._time_columns(closing.last + (self.gap + 1), wms),
        ])

    def _time_series(self, name: str, ms: np.ndarray) -> pl.Series:
        """`_as_time` of epoch milliseconds."""
        s = pl.Series(name, ms, dtype=pl.Int64)
        if self.time_dtype is None:
            return s
        tz = getattr(self.time_dtype, "time_zone", None)
        return s.cast(pl.Datetime("ms", tz)).cast(self.time_dtype)

    def _note_flush(self, watermark: int) -> None:
        if self.native is None:
            super()._note_flush(watermark)
            return
        from sluice.core.batch import END_OF_TIME

        end = self.native.held_end()
        if watermark >= END_OF_TIME and end is not None:
            self.flushed_end = max(self.flushed_end, end)

    def _is_late(self, row: pl.DataFrame, t: int, wm: int) -> bool:
        if t + self.gap + 1 <= wm:
            return True
        if self.emitted_last is None:
            return False
        hit = row.select(self.key_cols).join(self.emitted_last, on=self.key_cols, how="inner", nulls_equal=True)
        return hit.height > 0 and t <= int(hit[LAST][0]) + self.gap

    def _ingest(self, seg: pl.DataFrame) -> None:
        k = self.key_cols
        rows = self._narrow(seg, []).sort([*k, TIME], maintain_order=True, nulls_last=True)
        if self.aggs.sketches:
            parts, sketches = self._sessions_with_sketches(rows)
        else:
            # sorted by key and time, a session starts where the key changes or the gap is exceeded: one
            # group-by of the batch gives each session's bounds and partials (no window expressions, no join)
            same_key = pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(1)) for c in k]) if k else pl.lit(True)
            brk = (~same_key | ((pl.col(TIME) - pl.col(TIME).shift(1)) > self.gap)).fill_null(True)
            parts = (rows.lazy().group_by(brk.cum_sum().alias("__sl_cid"))
                     .agg(*[pl.col(c).first() for c in k], pl.col(TIME).min().alias(WS), *self.aggs.update(),
                          pl.col(TIME).max().alias(LAST))
                     .drop("__sl_cid").collect())
            sketches = {}
        # only the keys this batch has records for can merge sessions: the others' stay as they are, so the
        # cost of a batch follows its keys, not the number of open sessions (when the batch touches most of
        # them anyway, merging everything is cheaper than splitting)
        touched = parts.select(k).unique() if k and self.state is not None else None
        if touched is not None and self.state is not None and self.state.height < 2 * touched.height:
            touched = None
        old, kept = self._split(self.state, touched)
        frames = [parts] if old is None else [old.drop(WE), parts]
        allp = pl.concat(frames, how="diagonal_relaxed").lazy().sort([*k, WS], maintain_order=True, nulls_last=True)
        prev_last = pl.col(LAST).cum_max().shift(1).over(k)
        cid = (pl.col(WS) > prev_last + self.gap).fill_null(True).cum_sum()
        allp = allp.with_columns(pl.col(WS).min().over(cid).alias("__sl_new_ws"))
        merged = allp.drop(WS).rename({"__sl_new_ws": WS})
        state = merged.group_by([*k, WS]).agg(pl.col(LAST).max(), *self.aggs.merge()).with_columns(
            (pl.col(LAST) + self.gap + 1).alias(WE)
        )
        if not sketches:
            self.state = _joined(kept, state.collect())
            return
        new_state, mapping = pl.collect_all([state, allp.select(*k, WS, "__sl_new_ws").unique()])
        self.state = _joined(kept, new_state)
        for out, sk in sketches.items():
            prev, prev_kept = self._split(self.sketch_state.get(out), touched)
            both = sk if prev is None else pl.concat([prev, sk], how="diagonal_relaxed")
            both = both.join(mapping, on=[*k, WS], nulls_equal=True).drop(WS).rename({"__sl_new_ws": WS})
            self.sketch_state[out] = _joined(prev_kept, both.group_by([*k, WS, BUCKET]).agg(n=pl.col("n").sum()))

    def _split(self, frame: pl.DataFrame | None, touched: pl.DataFrame | None
               ) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        """The rows of `frame` whose keys are in `touched`, and the others (all rows when there are no keys)."""
        if frame is None or touched is None:
            return frame, None
        on = self.key_cols
        return (frame.join(touched, on=on, how="semi", nulls_equal=True),
                frame.join(touched, on=on, how="anti", nulls_equal=True))

    def _sessions_with_sketches(self, rows: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
        k = self.key_cols
        brk = ((pl.col(TIME) - pl.col(TIME).shift(1).over(k)) > self.gap).fill_null(True)
        rows = rows.with_columns(brk.cum_sum().alias("__sl_cid"))
        rows = rows.with_columns(pl.col(TIME).min().over("__sl_cid").alias(WS))
        parts, sketches = self._partials(rows, [*k, WS])
        lasts = rows.group_by([*k, WS]).agg(pl.col(TIME).max().alias(LAST))
        return parts.join(lasts, on=[*k, WS], nulls_equal=True), sketches

    def snapshot(self) -> dict[str, Any]:
        if self.native is not None:
            # the Polars path's frames, so that either path restores it
            self.state, self.emitted_last = self.native.export(self._reachable_from())
            try:
                return self._snapshot()
            finally:
                self.state = self.emitted_last = None
        return self._snapshot()

    def _reachable_from(self) -> int:
        """Emitted sessions a coming record can still reach end at or after this (LAST ≥ W − 2·gap, with W
        no later than any coming record's watermark)."""
        return max(min(self.watermark, self.carry_wm) - 2 * self.gap, NO_WATERMARK)

    def _snapshot(self) -> dict[str, Any]:
        state = super().snapshot()
        if self.emitted_last is not None:
            state["emitted_last"] = self.emitted_last
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.emitted_last = state.get("emitted_last")
        self.native = None
        self.native_ok = _sessions().fits(self.key_cols, self.step.aggregates)
        if not self.native_ok:
            return
        key, counts = self.key_cols[0], list(self.aggs.rows)
        if not _sessions().SessionKernel.loadable(key, counts, self.state, self.emitted_last):
            self.native_ok = False
            return
        held = [f for f in (self.state, self.emitted_last) if f is not None]
        if held:
            self.native = _sessions().SessionKernel(self.gap, key, held[0].schema[key], counts)
            self.native.load(self.state, self.emitted_last)
            self.state = self.emitted_last = None

    def _held_end(self) -> int:
        assert self.state is not None
        return int(self.state[LAST].max()) + self.gap + 1  # type: ignore[arg-type]

    def _on_closed(self, closing: pl.DataFrame) -> None:
        done = closing.select(*self.key_cols, LAST)
        both = done if self.emitted_last is None else pl.concat([self.emitted_last, done])
        both = both.group_by(self.key_cols).agg(pl.col(LAST).max())
        self.emitted_last = both.filter(pl.col(LAST) > self.watermark - 2 * self.gap - 1)


class NativePanes:
    """The native pane kernel of one fixed-window step (native/src/panes.rs), and the frames it gives back in
    the Polars path's columns: keys, PANE or WS, each aggregate's partials ("out.n", "out.s", "out.m"), and
    per percentile its (keys, PANE or WS, BUCKET, n) rows."""

    KINDS: ClassVar[dict[type, int]] = {Sum: 1, Min: 2, Max: 3, Mean: 4}
    NO_BUCKET = -(2**63)

    def __init__(self, panes: Any, key: str, key_dtype: pl.DataType, values: list[str],
                 parts: list[tuple[str, list[str]]], sketches: list[str]) -> None:
        self.panes = panes
        self.key = key
        self.key_dtype = key_dtype
        self.text = key_dtype == pl.String
        self.values = values  # value columns, in the kernel's order
        self.parts = parts  # per aggregate: its output name and partial names
        self.sketches = sketches  # the percentiles' output names

    @classmethod
    def make(cls, op: FixedWindowOperator, df: pl.DataFrame) -> NativePanes | None:
        """The kernel for `op` when it covers the step (one key; count, sum, mean, min, max of Float64,
        percentiles), else None."""
        if not type(op).native_ok or os.environ.get("SLUICE_NATIVE_WINDOW", "1") == "0":
            return None
        try:
            from sluice_native import Panes
        except ImportError:
            return None
        if len(op.key_cols) != 1 or df.schema.get(TIME) != pl.Int64 or df.schema.get(WATERMARK) != pl.Int64:
            return None
        key_dtype = df.schema[op.key_cols[0]]
        if not (key_dtype == pl.String or key_dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)):
            return None  # (UInt64 and the 128-bit integers do not fit the kernel's int64)
        kinds: list[tuple[int, int]] = []
        values: list[str] = []
        parts: list[tuple[str, list[str]]] = []
        for out, agg in op.aggs.rows.items():
            if type(agg) is Count and agg.of is None:
                kinds.append((0, 0))
            elif type(agg) in cls.KINDS and df.schema.get(f"__sl_v_{out}") == pl.Float64:
                kinds.append((cls.KINDS[type(agg)], len(values)))
                values.append(f"__sl_v_{out}")
            else:
                return None
            parts.append((out, list(agg.update(pl.lit(0.0), pl.lit(0)))))
        if any(df.schema.get(f"__sl_b_{out}") != pl.Int64 for out in op.aggs.sketches):
            return None
        if key_dtype == pl.String:
            op.text_keys = [op.key_cols[0]]
        quantiles = [agg.q for agg in op.aggs.sketches.values()]
        return cls(Panes(op.size, op.slide, op.offset, op.pane, kinds, quantiles, key_dtype == pl.String),
                   op.key_cols[0], key_dtype, values, parts, list(op.aggs.sketches))

    def __len__(self) -> int:
        return len(self.panes)

    def pane_range(self) -> tuple[int, int] | None:
        return self.panes.pane_range()  # type: ignore[no-any-return]

    def take_state(self, op: FixedWindowOperator) -> None:
        """Move the rows of the Polars path's state that the kernel would hold (records that missed no
        window: LO is the pane's first window start) into the kernel, with their partials as they are, so
        that a restored run adds up floats exactly as an uninterrupted one."""
        assert op.state is not None
        size, slide, off, g = op.size, op.slide, op.offset, op.pane
        canonical = pl.col(LO) == _ceil_div(pl.col(PANE) + (g - size - off), slide) * slide + off
        canonical = canonical & pl.col(self.key).is_not_null()  # the kernel has no null key: those rows stay
        rows = op.state.filter(canonical).with_row_index(ROW)
        if rows.height == 0:
            return
        keyed = [self.key, PANE, LO]
        if self.text:
            rows = rows.with_columns(pl.col(self.key).cast(pl.String))
        parts: list[pl.Series] = []
        for out, names in self.parts:
            if names == ["m"]:  # a min or max: counted as one value where it has one
                m = rows[f"{out}.m"]
                parts += [m.is_not_null().cast(pl.Int64), m.cast(pl.Float64).fill_null(float("nan"))]
            else:
                parts.append(rows[f"{out}.n"].cast(pl.Int64))
                if "s" in names:
                    parts.append(rows[f"{out}.s"].cast(pl.Float64).fill_null(0.0))
        kept_sketches = {}
        for out in self.sketches:
            sk = op.sketch_state.get(out)
            if sk is None or sk.height == 0:
                parts += [pl.Series([], dtype=pl.Int64)] * 3
                continue
            if self.text:
                sk = sk.with_columns(pl.col(self.key).cast(pl.String))
            matched = sk.join(rows.select(*keyed, ROW), on=keyed, how="inner")
            parts += [matched[ROW].cast(pl.Int64), matched[BUCKET].cast(pl.Int64), matched["n"].cast(pl.Int64)]
            kept_sketches[out] = op.sketch_state[out].join(
                rows.select(*keyed).with_columns(pl.col(self.key).cast(op.sketch_state[out].schema[self.key])),
                on=keyed, how="anti")
        self.panes.load(self._keys(rows[self.key]), _buffer(rows[PANE].cast(pl.Int64)), [_buffer(p) for p in parts])
        op.state = op.state.filter(~canonical)
        op.sketch_state.update(kept_sketches)

    def _keys(self, key: pl.Series) -> Any:
        """A key column (without nulls) as the kernel takes it: Polars' string views and data buffers, or
        int64; not copied."""
        if not self.text:
            return _buffer(key.cast(pl.Int64))
        from sluice_native import buffers

        views, *data = buffers(key.cast(pl.String).rechunk())
        return views, data

    def ingest(self, df: pl.DataFrame, lateness: int, floor: int) -> pl.Series | Literal[True] | None:
        """Fold the batch in; the rows left for the Polars path (None: none), or True when the kernel cannot
        take this batch at all (a null key, a NaN value: nothing was folded)."""
        key = df[self.key]
        if key.null_count():
            return True
        raw = []
        for name in self.values:  # Float64 (NativePanes.make checked), each a call or none without nulls
            v = df[name]
            if v.null_count() == 0:
                values = _buffer(v)
                if _any_nan(values):
                    return True
            elif v.is_nan().any():
                return True
            else:
                values = _buffer(v.fill_null(float("nan")))  # the kernel skips NaN as null
            raw.append(values)
        keys = self._keys(key)  # text: Polars' own string views, as they are
        buckets = [_buffer(b if (b := df[f"__sl_b_{out}"]).null_count() == 0 else b.fill_null(self.NO_BUCKET))
                   for out in self.sketches]
        left = self.panes.ingest(keys, _buffer(df[TIME]), _buffer(df[WATERMARK]), raw, buckets, lateness, floor)
        return None if left is None else _int64s(ROW, left, kind="I")

    def close(self, after: int, upto: int) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
        """Windows ending in (after, upto]: keys, WS and merged partials, and per percentile (keys, WS, BUCKET,
        n); forgets the panes no window needs any more."""
        return self._frames(self.panes.close(after, upto, False), WS)

    def close_finished(self, after: int, upto: int) -> pl.DataFrame:
        """As `close`, with each aggregate's result under its output name (a percentile's as its bucket),
        in output order (window start, key)."""
        return self._frames(self.panes.close(after, upto, True), WS, finished=True)[0]

    def state_rows(self, op: FixedWindowOperator) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
        """What the kernel holds as Polars-path state rows (keys, PANE, LO, partials) and sketch rows
        (keys, PANE, LO, BUCKET, n)."""
        rows, sketches = self._frames(self.panes.dump(), PANE)
        size, slide, off, g = op.size, op.slide, op.offset, op.pane
        lo = _ceil_div(pl.col(PANE) + (g - size - off), slide) * slide + off  # records here missed no window
        cat = [pl.col(self.key).cast(pl.Categorical)] if self.text and op.categorical_keys else []
        rows = rows.with_columns(lo.alias(LO), *cat).select(self.key, PANE, LO, pl.exclude(self.key, PANE, LO))
        sketches = {k: v.with_columns(lo.alias(LO), *cat).select(self.key, PANE, LO, BUCKET, "n")
                    for k, v in sketches.items()}
        return rows, sketches

    def _frames(self, cols: list[Any], time_name: str, finished: bool = False
                ) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
        from sluice_native import frame

        n = cols[0]
        columns: list[tuple[str, str, int, list[Any]]] = []
        if self.text:
            views, data, times, *rest = cols[1:]
            columns.append((self.key, "vu", n, [None, views, data]))
        else:
            keys, times, *rest = cols[1:]
            columns.append((self.key, "l", n, [None, keys]))
        columns.append((time_name, "l", n, [None, times]))
        given = iter(rest)

        def ints(name: str) -> tuple[str, str, int, list[Any]]:
            return name, "l", n, [None, next(given)]

        def nullable(name: str, kind: str) -> tuple[str, str, int, list[Any]]:
            values, valid = next(given), next(given)
            return name, kind, n, [valid, values]

        for out, parts in self.parts:
            if finished:  # a count's n; a sum, mean, min or max, null over no value
                columns.append(ints(out) if parts == ["n"] else nullable(out, "g"))
                continue
            cols_of = {"n": ints(f"{out}.n")}
            if parts != ["n"]:  # "s" of a sum or mean, "m" of a min or max (null where it saw no value)
                part = "s" if "s" in parts else "m"
                cols_of[part] = nullable(f"{out}.{part}", "g")
            columns += [cols_of[part] for part in parts]
        sketch_cols: dict[str, tuple[Any, Any, Any]] = {}
        for out in self.sketches:
            if finished:  # the bucket at the percentile's rank, null over no value
                columns.append(nullable(out, "l"))
            else:
                at, buckets, counts = next(given), next(given), next(given)
                sketch_cols[out] = (at, buckets, counts)
        df = pl.Series(frame(columns, n)).struct.unnest()
        if not (self.text or self.key_dtype == pl.Int64):
            df = df.with_columns(pl.col(self.key).cast(self.key_dtype))
        sketches = {}
        for out, (at, buckets, counts) in sketch_cols.items():
            rows = df.select(self.key, time_name)[_int64s(ROW, at)]
            sketches[out] = rows.with_columns(_int64s(BUCKET, buckets), _int64s("n", counts))
        return df, sketches


def _joined(kept: pl.DataFrame | None, merged: pl.DataFrame) -> pl.DataFrame:
    """State rows left alone by a batch, and the ones it merged."""
    if kept is None or kept.height == 0:
        return merged
    return pl.concat([kept, merged], how="diagonal_relaxed")


def window_operator(step: Window) -> WindowOperator:
    if isinstance(step.window, Session):
        return SessionWindowOperator(step)
    if step.emits_updates:
        from sluice.operators.window_updates import UpdatingWindowOperator

        return UpdatingWindowOperator(step)
    return FixedWindowOperator(step)
