"""Pattern matching (CEP): a per-key NFA fed in event-time order.

Records are buffered until the watermark has passed them (time complete), then handled in (time,
arrival) order. Expression conditions are evaluated for the whole batch at once (one boolean column per
condition); when no stage needs strict contiguity, records that satisfy no stage are dropped before the
NFA, so only the few that can take part reach Python. Partial matches that outlive `within` are emitted
on the `timeouts` port when the watermark passes their deadline.

A partial match is (stage, count in stage, events by stage, start). For each record it may: repeat its
stage (count < max), advance to a later stage (count ≥ min; optional stages may be skipped), or ignore
the record. Ignoring is forbidden when the awaited transition is strict (`next`); with `followed_by`
the record is ignored only if it was not taken; with `followed_by_any` both branches live on.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

from sluice.cep.pattern import Pattern
from sluice.core.batch import END_OF_TIME, NO_WATERMARK, TIME, WATERMARK, Batch
from sluice.core.errors import PlanError
from sluice.operators.base import SEQ, ArrivalBuffer, Emitted, Operator, require_event_time

SKIPS = ("no_skip", "skip_to_next", "skip_past_last_event")


@dataclass
class Partial:
    stage: int
    count: int
    events: dict[str, list[dict[str, Any]]]
    start: int
    start_seq: int


class MatchOperator(Operator):
    def __init__(self, name: str, key_cols: list[str], keys: list[pl.Expr], pattern: Pattern, skip: str) -> None:
        if skip not in SKIPS:
            raise PlanError(f"match {name!r}: skip must be one of {SKIPS}, got {skip!r}")
        if pattern.stages[-1].min == 0:
            raise PlanError(f"match {name!r}: the last stage cannot be optional")
        self.name, self.key_cols, self.keys, self.pattern, self.skip = name, key_cols, keys, pattern, skip
        self.stages = pattern.stages
        self.cond_cols: dict[tuple[int, int], str] = {}
        exprs = []
        for i, st in enumerate(self.stages):
            for j, c in enumerate(st.conditions):
                if isinstance(c, pl.Expr):
                    col = f"__sl_c{i}_{j}"
                    self.cond_cols[(i, j)] = col
                    exprs.append(c.fill_null(False).alias(col))
        self.cond_exprs = exprs
        self.strict = any(s.contiguity == "strict" for s in self.stages[1:])
        self.partials: dict[bytes, list[Partial]] = {}
        self.pending = ArrivalBuffer()
        self.watermark = NO_WATERMARK
        self.time_dtype: pl.DataType | None = None

    # --- input -----------------------------------------------------------------------------------
    def on_batch(self, index: int, batch: Batch) -> Emitted:
        emitted: Emitted = []
        if batch.height:
            require_event_time("match", self.name, batch)
            self.time_dtype = batch.time_dtype or self.time_dtype
            df, late = ArrivalBuffer.split_late(self.pending.stamp(batch.df.with_columns(*self.keys, *self.cond_exprs)))
            if late.height:
                emitted.append(("late", Batch(late.drop(SEQ, *self.cond_cols.values()), watermark=batch.watermark,
                                              time_dtype=batch.time_dtype)))
            if not self.strict:
                df = df.filter(self._may_take_part())
            self.pending.add(df)
        wm = batch.watermark if batch.watermark is not None else self.watermark
        return self._advance(max(self.watermark, wm)) + emitted

    def _may_take_part(self) -> pl.Expr:
        """True where some stage's expression conditions all hold (stages with Python conditions: maybe)."""
        per_stage = []
        for i, st in enumerate(self.stages):
            cols = [pl.col(self.cond_cols[(i, j)]) for j, c in enumerate(st.conditions) if isinstance(c, pl.Expr)]
            per_stage.append(pl.all_horizontal(cols) if cols else pl.lit(True))
        return pl.any_horizontal(per_stage)

    def on_end(self) -> Emitted:
        return self._advance(END_OF_TIME)

    # --- the NFA ---------------------------------------------------------------------------------
    def _holds(self, i: int, row: dict[str, Any], event: dict[str, Any], events: dict[str, list[dict[str, Any]]]) -> bool:
        for j, c in enumerate(self.stages[i].conditions):
            if isinstance(c, pl.Expr):
                if not row[self.cond_cols[(i, j)]]:
                    return False
            elif not c(event, events):
                return False
        return True

    def _step(self, pm: Partial, row: dict[str, Any], event: dict[str, Any]) -> tuple[list[Partial], bool]:
        """The partial matches that follow `pm` after this record, and whether `pm` itself lives on."""
        out: list[Partial] = []
        st = self.stages[pm.stage]
        taken_relaxed = False
        blocked = False
        if pm.count >= 1 and (st.max is None or pm.count < st.max):
            if self._holds(pm.stage, row, event, pm.events):
                out.append(Partial(pm.stage, pm.count + 1, {**pm.events, st.name: [*pm.events[st.name], event]},
                                   pm.start, pm.start_seq))
                taken_relaxed |= st.contiguity != "any"
            elif st.contiguity == "strict":
                blocked = True
        if pm.count >= st.min:
            j = pm.stage + 1
            while j < len(self.stages):
                nxt = self.stages[j]
                if self._holds(j, row, event, pm.events):
                    out.append(Partial(j, 1, {**pm.events, nxt.name: [event]}, pm.start, pm.start_seq))
                    taken_relaxed |= nxt.contiguity != "any"
                elif nxt.contiguity == "strict":
                    blocked = True
                if nxt.min > 0:
                    break
                j += 1
        keeps = not blocked and not taken_relaxed
        return out, keeps

    def _complete(self, pm: Partial) -> bool:
        last = len(self.stages) - 1
        if pm.stage == last:
            return pm.count >= self.stages[last].min
        return all(s.min == 0 for s in self.stages[pm.stage + 1:]) and pm.count >= self.stages[pm.stage].min

    def _handle(self, row: dict[str, Any], matches: list[dict[str, Any]], timeouts: list[dict[str, Any]]) -> None:
        kb = orjson.dumps([row[k] for k in self.key_cols])
        t, seq = row[TIME], row[SEQ]
        event = {k: v for k, v in row.items() if not k.startswith("__sl_")}
        within = self.pattern.within_ms
        survivors: list[Partial] = []
        for pm in self.partials.get(kb, []):
            if within is not None and t - pm.start > within:
                timeouts.append(self._row(row, pm, "timeout_at", pm.start + within))
                continue
            nexts, keeps = self._step(pm, row, event)
            if keeps:
                survivors.append(pm)
            survivors.extend(nexts)
        if self._holds(0, row, event, {}):
            survivors.append(Partial(0, 1, {self.stages[0].name: [event]}, t, seq))
        alive: list[Partial] = []
        matched = False
        emitted_starts: set[int] = set()
        for pm in survivors:
            if self._complete(pm) and pm.events.get(self.stages[-1].name, [None])[-1] is event:
                if matched and self.skip == "skip_past_last_event":
                    continue  # the oldest match wins; the others started before its last event
                matches.append(self._row(row, pm, "match_end", t))
                matched = True
                emitted_starts.add(pm.start_seq)
            if not (pm.stage == len(self.stages) - 1 and self.stages[-1].max is not None
                    and pm.count >= self.stages[-1].max):
                alive.append(pm)
        if matched and self.skip == "skip_to_next":  # drop what started with the same event as a match
            alive = [pm for pm in alive if pm.start_seq not in emitted_starts]
        if matched and self.skip == "skip_past_last_event":
            alive = [pm for pm in alive if pm.start_seq == seq]  # only what this very event started
        if alive:
            self.partials[kb] = alive
        else:
            self.partials.pop(kb, None)

    def _row(self, row: dict[str, Any], pm: Partial, end_name: str, end: int) -> dict[str, Any]:
        out: dict[str, Any] = {k: row[k] for k in self.key_cols}
        out["match_start"] = pm.start
        out[end_name] = end
        for st in self.stages:
            evs = pm.events.get(st.name)
            out[st.name] = (evs[0] if evs else None) if st.max == 1 else (evs or [])
        return out

    def _advance(self, watermark: int) -> Emitted:
        start_wm = self.watermark
        self.watermark = watermark
        matches: list[dict[str, Any]] = []
        timeouts: list[dict[str, Any]] = []
        ready = self.pending.release(watermark)
        if ready is not None:
            for row in ready.iter_rows(named=True):
                self._handle(row, matches, timeouts)
        within = self.pattern.within_ms
        if within is not None:
            for kb in list(self.partials):
                keep = []
                for pm in self.partials[kb]:
                    if pm.start + within < watermark:
                        key_row = dict(zip(self.key_cols, orjson.loads(kb), strict=True))
                        timeouts.append(self._row(key_row, pm, "timeout_at", pm.start + within))
                    else:
                        keep.append(pm)
                if keep:
                    self.partials[kb] = keep
                else:
                    del self.partials[kb]
        emitted: Emitted = [("out", self._batch(matches, "match_end", start_wm))]
        if timeouts:
            emitted.append(("timeouts", self._batch(timeouts, "timeout_at", start_wm)))
        return emitted

    def _batch(self, rows: list[dict[str, Any]], time_col: str, wm: int) -> Batch:
        if not rows:
            return Batch(pl.DataFrame(), watermark=self.watermark, time_dtype=self.time_dtype)
        df = pl.from_dicts(rows, infer_schema_length=None)
        df = df.with_columns(pl.col(time_col).cast(pl.Int64).alias(TIME), pl.lit(wm, pl.Int64).alias(WATERMARK))
        return Batch(df, watermark=self.watermark, time_dtype=self.time_dtype)

    # --- checkpoints -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"watermark": self.watermark,
                                 "partials": pl.DataFrame({"blob": [pickle.dumps(self.partials)]}, schema={"blob": pl.Binary})}
        self.pending.snapshot(state)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.watermark = int(state["watermark"])
        self.partials = pickle.loads(state["partials"]["blob"][0])
        self.pending.restore(state)
