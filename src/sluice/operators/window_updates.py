"""Fixed windows that emit more than once: early results, updates for late records within an allowed
lateness, and a final result. The output is an upsert changelog keyed by (keys, window_start): each row is
the window's whole current result, `_op` is +I on a window's first row and +U on every later one, and
`is_final` is true on its last (docs/design/time.md, "Updates").

A window is emitted, in the emission round at the end of a batch, when
- its end + allowed lateness ≤ W for the first time: the final row (is_final), after which it is dropped;
- its end ≤ W for the first time (the on-time firing; the same row as the final one without lateness);
- it changed since it was last emitted, and either its end ≤ W (a late record within the lateness, or a
  record of the batch in which W passed its end), or the mode fires early: `each_batch` in every round,
  `every` in the first round after its interval of processing time has passed since the last such round.

Panes are kept until every window holding them is final (pane + size + lateness ≤ W), so every row is
put together from the panes afresh: means and percentiles are recomputed, never patched.

With `Emit(updates="deltas")` each pane partial also carries the emission round it arrived in (ROUND),
and each live window the round of its last row (LAST): a window's row takes its additive aggregates
(count, sum, mean) from the partials of rounds after LAST only — exactly the records since its last
row, summed afresh, never subtracted — and everything else from all of them. A window comes out only
when such records exist. After each round the rounds of a pane's partials are coarsened to the next
LAST of a window holding the pane (or the current round): partials that no window tells apart merge,
so the state stays one row per pane and distinct boundary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from sluice.core.batch import END_OF_TIME, NO_WATERMARK
from sluice.core.changelog import INSERT, OP, UPDATE_AFTER
from sluice.core.plan import Window
from sluice.operators.window import BUCKET, LO, PANE, WE, WS, FixedWindowOperator

IS_FINAL = "is_final"
SEEN = "__sl_seen"
ROUND = "__sl_round"  # deltas: the emission round a pane partial arrived in
LAST = "__sl_last_round"  # deltas: the round of a live window's last row


class UpdatingWindowOperator(FixedWindowOperator):
    """Tumbling and sliding windows with `emit` other than on close, or an allowed lateness."""

    native_ok = False  # it reads and rewrites the pane state itself

    def __init__(self, step: Window, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(step)
        emit = step.emit
        self.mode: str = emit.mode if emit is not None else "on_close"
        self.interval_ms: int | None = emit.interval_ms if emit is not None else None
        self.clock = clock  # processing time in seconds; tests inject their own
        self.last_tick: float | None = None
        # closed_upto (inherited): windows ending at or before it are final (end + lateness ≤ W)
        self.fired_upto = NO_WATERMARK  # windows ending at or before it have had their on-time firing
        self.emitted: pl.DataFrame | None = None  # keys, WS (deltas: and LAST): live windows emitted at least once
        self.dirty: pl.DataFrame | None = None  # keys, WS: changed since they were last emitted
        self.deltas = step.emits_deltas
        self.round = 0  # deltas: emission rounds so far

    # --- what changed ---------------------------------------------------------------------------
    def _merge_state(self, parts: pl.DataFrame, sketches: dict[str, pl.DataFrame], by: list[str]) -> None:
        if self.deltas:
            parts = parts.with_columns(pl.lit(self.round, pl.Int64).alias(ROUND))
            frames = [parts] if self.state is None else [self.state, parts]
            merged = pl.concat(frames, how="diagonal_relaxed")
            with_round = [*by, ROUND]
            self.state = merged.group_by(with_round).agg(self.aggs.merge()) if self.aggs.rows else merged.unique(with_round)
            for out, sk in sketches.items():
                prev = self.sketch_state.get(out)
                both = sk if prev is None else pl.concat([prev, sk], how="diagonal_relaxed")
                self.sketch_state[out] = both.group_by([*by, BUCKET]).agg(n=pl.col("n").sum())
        else:
            super()._merge_state(parts, sketches, by)
        self._touch(parts.select(*self.key_cols, PANE, LO))

    def _touch(self, rows: pl.DataFrame) -> None:
        """Remember the windows that new pane partials (keys, PANE, LO) changed."""
        if self.mode == "on_close":
            # only a window that had its on-time firing needs a round of its own to be re-emitted
            rows = rows.filter(pl.col(PANE) < self.fired_upto)
            if rows.height == 0:
                return
        # LO is the first window start (on the grid) the partial counts for; the pane's last one is ≤ PANE
        copies = [rows.with_columns((pl.col(LO) + j * self.slide).alias(WS)) for j in range(self.fan)]
        touched = pl.concat(copies).filter(pl.col(WS) <= pl.col(PANE)).select(*self.key_cols, WS)
        if self.mode == "on_close":
            touched = touched.filter(pl.col(WS) + self.size <= self.fired_upto)
        both = touched if self.dirty is None else pl.concat([self.dirty, touched], how="vertical_relaxed")
        self.dirty = both.unique()

    def _tick(self) -> bool:
        """Whether early firings are due now (Emit.every): its interval has passed since the last ones."""
        if self.mode != "every":
            return self.mode == "each_batch"
        now = self.clock()
        if self.last_tick is None:
            self.last_tick = now
            return False
        assert self.interval_ms is not None
        if (now - self.last_tick) * 1000 >= self.interval_ms:
            self.last_tick = now
            return True
        return False

    # --- emission ---------------------------------------------------------------------------------
    def _close(self, watermark: int, wms: pl.Series | np.ndarray) -> pl.DataFrame | None:
        w = watermark
        final_upto = w if w >= END_OF_TIME else w - self.lateness
        final_after, fired_after = self.closed_upto, self.fired_upto
        early = self._tick()
        self.closed_upto = max(self.closed_upto, final_upto)
        self.fired_upto = max(self.fired_upto, w)
        if self.state is None or self.state.height == 0:
            self.dirty = None
            return None
        size = self.size
        # windows due by range: final ones, ends in (final_after, final_upto]; on-time ones, (fired_after, w]
        lo_pane, hi_pane = int(self.state[PANE].min()), int(self.state[PANE].max())  # type: ignore[arg-type]
        pairs = []
        if final_upto > final_after:
            pairs.append(self._closing_panes(final_after, final_upto, lo_pane, hi_pane))
        on_time_after = max(fired_after, final_upto)
        if w > on_time_after:
            pairs.append(self._closing_panes(on_time_after, w, lo_pane, hi_pane))
        in_range = ((pl.col(WS) + size > final_after) & (pl.col(WS) + size <= final_upto)) | (
            (pl.col(WS) + size > on_time_after) & (pl.col(WS) + size <= w))
        # windows due because they changed
        chosen = None
        if self.dirty is not None and self.dirty.height:
            due = pl.lit(True) if early else pl.col(WS) + size <= w
            chosen = self.dirty.filter(due & ~in_range)
            self.dirty = self.dirty.filter(~due & (pl.col(WS) + size > w)) if self.mode == "every" else None
        by = [*self.key_cols, WS]
        frames = [self._window_rows(self.state, pl.concat(pairs))] if pairs else []
        sk_frames: dict[str, list[pl.DataFrame]] = {n: [self._window_rows(sk, pl.concat(pairs))] if pairs else []
                                                    for n, sk in self.sketch_state.items()}
        if chosen is not None and chosen.height:
            panes = chosen.join(pl.DataFrame({"__sl_off": np.arange(0, size, self.pane, dtype=np.int64)}), how="cross")
            panes = panes.with_columns((pl.col(WS) + pl.col("__sl_off")).alias(PANE)).drop("__sl_off")
            on = [*self.key_cols, PANE]
            frames.append(self._changed_rows(self.state, panes, on))
            for n, sk in self.sketch_state.items():
                sk_frames[n].append(self._changed_rows(sk, panes, on))
        out = None
        rows = pl.concat(frames, how="vertical_relaxed") if frames else None
        if rows is not None and rows.height:
            if self.deltas:
                closing = self._deltas(rows, by)
            else:
                closing = rows.group_by(by).agg(self.aggs.merge()) if self.aggs.rows else rows.unique(by)
            closing = closing.with_columns((pl.col(WS) + size).alias(WE))
            closing = self._mark(closing, final_upto)
            sketches = {n: pl.concat(fs, how="vertical_relaxed").group_by([*by, BUCKET]).agg(n=pl.col("n").sum())
                        for n, fs in sk_frames.items()}
            if self.deltas:
                out = self._emit(closing.drop(IS_FINAL, OP), wms, sketches) if closing.height else None
            else:
                out = self._emit(closing, wms, sketches, (IS_FINAL, OP))
        done = pl.col(PANE) + size <= final_upto  # every window holding this pane is final
        self.state = self.state.filter(~done)
        for name, sk in self.sketch_state.items():
            self.sketch_state[name] = sk.filter(~done)
        if self.deltas:
            self._coarsen()
            self.round += 1
        return out

    def _deltas(self, rows: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        """Rows (keys, WS, ROUND, partials) of the windows due → one row per window with records since its
        last row: additive partials over those records, the others over all."""
        new = rows
        if self.emitted is not None and self.emitted.height:
            new = rows.join(self.emitted, on=by, how="left", nulls_equal=True)
            new = new.filter(pl.col(LAST).is_null() | (pl.col(ROUND) > pl.col(LAST))).drop(LAST)
        if not self.aggs.rows:
            return new.unique(by)
        delta = new.group_by(by).agg(self.aggs.merge())
        additive = [f"{out}.{part}" for out, agg in self.aggs.rows.items() if agg.additive
                    for part in agg.merge(pl.col)]
        if len(additive) == len(delta.columns) - len(by):
            return delta
        whole = rows.group_by(by).agg(self.aggs.merge()).drop(additive)
        return delta.select(*by, *additive).join(whole, on=by, how="inner", nulls_equal=True)

    def _coarsen(self) -> None:
        """Deltas: give each pane partial the first round ≥ its own that a window holding the pane last
        emitted in (or the current round), and merge those that then share one; no window's delta changes,
        since each LAST separates the same partials before and after."""
        if self.state is None or self.state.height == 0 or self.state[ROUND].n_unique() == 1:
            return
        k = self.key_cols
        bounds = [self.state.select(*k, PANE).unique().with_columns(pl.lit(self.round, pl.Int64).alias(LAST))]
        if self.emitted is not None and self.emitted.height:
            offsets = pl.DataFrame({"__sl_off": np.arange(0, self.size, self.pane, dtype=np.int64)})
            panes = self.emitted.join(offsets, how="cross").select(*k, (pl.col(WS) + pl.col("__sl_off")).alias(PANE), LAST)
            bounds.append(panes)
        b = pl.concat(bounds, how="vertical_relaxed")
        rows = self.state.with_row_index("__sl_i")
        first = (rows.select("__sl_i", *k, PANE, ROUND).join(b, on=[*k, PANE], how="inner", nulls_equal=True)
                 .filter(pl.col(LAST) >= pl.col(ROUND)).group_by("__sl_i").agg(pl.col(LAST).min()))
        rows = rows.join(first, on="__sl_i", how="left").with_columns(pl.col(LAST).alias(ROUND)).drop("__sl_i", LAST)
        by = [*k, PANE, LO, ROUND]
        self.state = rows.group_by(by).agg(self.aggs.merge()) if self.aggs.rows else rows.unique(by)

    @staticmethod
    def _changed_rows(state: pl.DataFrame, panes: pl.DataFrame, on: list[str]) -> pl.DataFrame:
        """State rows (keys, PANE, LO, …) of the windows in `panes` (keys, WS, PANE), as (keys, WS, …)."""
        return state.join(panes, on=on, how="inner", nulls_equal=True).filter(pl.col(WS) >= pl.col(LO)).drop(PANE, LO)

    def _mark(self, closing: pl.DataFrame, final_upto: int) -> pl.DataFrame:
        """+I or +U by whether the window was emitted before, is_final by whether it is now; remember it."""
        by = [*self.key_cols, WS]
        if self.emitted is not None and self.emitted.height:
            seen = self.emitted.select(by).with_columns(pl.lit(True).alias(SEEN))
            closing = closing.join(seen, on=by, how="left", nulls_equal=True)
            op = pl.when(pl.col(SEEN)).then(pl.lit(UPDATE_AFTER)).otherwise(pl.lit(INSERT))
            closing = closing.with_columns(op.alias(OP)).drop(SEEN)
        else:
            closing = closing.with_columns(pl.lit(INSERT).alias(OP))
        closing = closing.with_columns((pl.col(WE) <= final_upto).alias(IS_FINAL))
        live = closing.filter(~pl.col(IS_FINAL)).select(by)
        kept = self.emitted.filter(pl.col(WS) + self.size > final_upto) if self.emitted is not None else None
        if self.deltas:  # the round of each live window's last row: this one for those emitted now
            live = live.with_columns(pl.lit(self.round, pl.Int64).alias(LAST))
            if kept is not None:
                kept = kept.join(live, on=by, how="anti", nulls_equal=True)
        both = live if kept is None else pl.concat([kept, live], how="vertical_relaxed")
        self.emitted = both.unique() if both.height else None
        return closing

    # --- checkpoints --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        state = {**super().snapshot(), "fired_upto": self.fired_upto, "round": self.round}
        if self.emitted is not None:
            state["emitted"] = self.emitted
        if self.dirty is not None:
            state["dirty"] = self.dirty
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.fired_upto = int(state["fired_upto"])
        self.round = int(state.get("round", 0))
        self.emitted = state.get("emitted")
        self.dirty = state.get("dirty")
        self.last_tick = None  # processing time starts again with the run

    def reopen(self, watermark: int) -> None:
        """Everything was emitted as final when the input ended; windows after it start afresh."""
        super().reopen(watermark)
        self.closed_upto = max(self.watermark - self.lateness, self.floor)
        self.fired_upto = max(self.watermark, self.floor)
        self.emitted = self.dirty = None
