"""The vectorized path of a match step, for the common shape: single stages one after another, each entered
with `next` or `followed_by`, expression conditions, no skip strategy. There every partial match has
exactly one way on, so the NFA reduces to joins: a partial waiting for a relaxed stage takes the first later
event of its key that satisfies the stage (an as-of join forward in handling order), one waiting for a
strict stage looks at the key's very next event. A partial whose next event comes at or after its deadline
(`within`) times out instead, as the NFA would; a strict partial whose next event does not satisfy the
stage dies. The output equals the NFA's row for row (tests/cep/test_flink_semantics.py checks both).

State: one row per partial match (keys, stages taken, start/last time and position, a struct per stage).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from sluice.cep.pattern import Pattern

POS, STAGE, START_T, START_POS, LAST_T, LAST_POS = "__sq_pos", "__sq_k", "__sq_st", "__sq_sp", "__sq_lt", "__sq_lp"
EV = "__sq_ev"


def eligible(pattern: Pattern, skip: str) -> bool:
    return skip == "no_skip" and not pattern.groups and all(
        not s.negative and not s.quantified and not s.optional and not s.until
        and s.contiguity in ("strict", "relaxed") and all(isinstance(c, pl.Expr) for c in s.conditions)
        for s in pattern.stages)


class SequenceMatcher:
    def __init__(self, pattern: Pattern, key_cols: list[str], cond_cols: list[str | None], time_col: str) -> None:
        self.stages = pattern.stages
        self.names = [s.name for s in self.stages]
        self.key_cols = key_cols
        self.cond = cond_cols  # per stage: its boolean column (None: always true)
        self.time = time_col
        self.within = pattern.within_ms
        self.prev_gap = pattern.within_between == "previous_and_current"
        self.partials: pl.DataFrame | None = None

    def _deadline(self) -> pl.Expr:
        assert self.within is not None
        return (pl.col(LAST_T) if self.prev_gap else pl.col(START_T)) + self.within

    def _holds(self, k: int) -> pl.Expr:
        c = self.cond[k]
        return pl.lit(True) if c is None else pl.col(c)

    def step(self, ready: pl.DataFrame, first_pos: int, user_cols: list[str]) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
        """Feed events released in (time, arrival) order; (match frames, timeout frames) with a `__sq_end`
        position column to order them (matches) and the time each ends at."""
        ev = ready.with_columns(pl.int_range(first_pos, first_pos + ready.height, dtype=pl.Int64).alias(POS),
                                pl.struct(user_cols).alias(EV))
        matches: list[pl.DataFrame] = []
        timeouts: list[pl.DataFrame] = []
        starts = ev.filter(self._holds(0)).select(
            *self.key_cols, pl.lit(1, pl.Int32).alias(STAGE), pl.col(self.time).alias(START_T),
            pl.col(POS).alias(START_POS), pl.col(self.time).alias(LAST_T), pl.col(POS).alias(LAST_POS),
            pl.col(EV).alias(self.names[0]),
            *[pl.lit(None).alias(n) for n in self.names[1:]])
        waiting = starts if self.partials is None else pl.concat([self.partials, starts], how="diagonal_relaxed")
        if len(self.stages) == 1:
            matches.append(waiting.with_columns(pl.col(LAST_POS).alias("__sq_end"), pl.col(LAST_T).alias("__sq_t")))
            waiting = waiting.clear()
        keep: list[pl.DataFrame] = []
        for k in range(1, len(self.stages)):
            here = waiting.filter(pl.col(STAGE) == k)
            later = waiting.filter(pl.col(STAGE) != k)
            if here.height == 0:
                continue
            strict = self.stages[k].contiguity == "strict"
            pool = ev if strict else ev.filter(self._holds(k))
            right = pool.select(*self.key_cols, pl.col(POS).alias("__r_pos"), pl.col(self.time).alias("__r_t"),
                                self._holds(k).alias("__r_ok"), pl.col(EV).alias("__r_ev")).sort("__r_pos")
            joined = here.sort(LAST_POS).join_asof(right, left_on=LAST_POS, right_on="__r_pos", by=self.key_cols,
                                                   strategy="forward", allow_exact_matches=False,
                                                   check_sortedness=False)
            found = pl.col("__r_pos").is_not_null()
            late = found & (pl.col("__r_t") >= self._deadline()) if self.within is not None else pl.lit(False)
            # no next event yet: still waiting
            keep.append(joined.filter(~found).select(here.columns))
            out = joined.filter(late).select(here.columns)
            if out.height:
                timeouts.append(out)
            go = joined.filter(found & ~late & pl.col("__r_ok"))  # strict and not satisfied: the partial dies
            advanced = go.with_columns(pl.col("__r_ev").alias(self.names[k]), pl.col("__r_t").alias(LAST_T),
                                       pl.col("__r_pos").alias(LAST_POS), pl.lit(k + 1, pl.Int32).alias(STAGE)
                                       ).select(here.columns)
            if k == len(self.stages) - 1:
                if advanced.height:
                    matches.append(advanced.with_columns(pl.col(LAST_POS).alias("__sq_end"), pl.col(LAST_T).alias("__sq_t")))
                waiting = later
            else:
                waiting = pl.concat([later, advanced], how="vertical_relaxed")
        rest = [f for f in keep if f.height]
        self.partials = pl.concat(rest, how="vertical_relaxed") if rest else None
        return matches, timeouts

    def expire(self, watermark: int) -> pl.DataFrame | None:
        """Partials whose deadline has passed (≤ watermark) leave as timeouts."""
        if self.partials is None or self.within is None:
            return None
        due = self._deadline() <= watermark
        out = self.partials.filter(due)
        self.partials = self.partials.filter(~due)
        return out if out.height else None

    def drop_all(self) -> None:
        self.partials = None

    def rows(self, frame: pl.DataFrame, end_name: str, end: pl.Expr) -> pl.DataFrame:
        """Partials or matches as output rows: keys, match_start, the end column, one struct per stage."""
        return frame.select(*self.key_cols, pl.col(START_T).alias("match_start"), end.alias(end_name),
                            *[pl.col(n) for n in self.names])

    def deadline(self) -> pl.Expr:
        return self._deadline()

    def snapshot(self) -> dict[str, Any]:
        return {} if self.partials is None else {"sequence": self.partials}

    def restore(self, state: dict[str, Any]) -> None:
        self.partials = state.get("sequence")
