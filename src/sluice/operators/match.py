"""Pattern matching (CEP): a per-key NFA (`cep.nfa`) fed in event-time order, with Flink CEP's semantics.

Records are buffered until the watermark has passed them (time complete), then handled in (time,
tie-breaker columns, arrival) order. Expression conditions are evaluated for the whole batch at once (one
boolean column per stage); when no stage needs strict contiguity, records that can change no partial
match are dropped before the NFA, so only the few that can take part reach Python.

Per key the NFA keeps its computations: (state, node, start time, start position, previous time), where a
node is one link of a shared chain (parent, stage, position, event). Partial matches that outlive
`within` go to the `timeouts` port when the watermark (or the key's next event) passes their deadline.

After-match skip strategies (Flink's AfterMatchSkipStrategy): with any strategy but no_skip a completed
match waits while a partial match that started earlier is alive; matches leave in order of their first
event (then of their events); each one emitted discards every partial and waiting match that started at or
before its first event (skip_to_next) or its last (skip_past_last_event), or before the first / last event
of a stage (skip_to_first:<stage>, skip_to_last:<stage>).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import polars as pl

from sluice.cep.nfa import (
    FINAL,
    IGNORE,
    PENDING,
    PROCEED,
    STOP,
    TAKE,
    Compiled,
    compile_condition,
    condition_columns,
    may_take_part,
    needs_every_event,
)
from sluice.cep.pattern import Pattern, check_skip
from sluice.core.batch import END_OF_TIME, INTERNAL_PREFIX, NO_WATERMARK, TIME, WATERMARK, Batch
from sluice.core.errors import PlanError
from sluice.operators.base import SEQ, ArrivalBuffer, Emitted, Operator, key_bytes, require_event_time
from sluice.operators.match_sequence import START_POS, SequenceMatcher, eligible

# a node of the shared buffer: (parent, stage index, position, event); a computation: [state, node,
# start time, start position, previous time]
Node = tuple[Any, int, int, dict[str, Any]]


def _wall_clock_ms() -> float:
    return time.time() * 1000


def _no_ctx() -> dict[str, list[dict[str, Any]]]:
    raise AssertionError("a pattern without Python conditions needs no context")


def events_of(node: Node | None) -> list[Node]:
    out = []
    while node is not None:
        out.append(node)
        node = node[0]
    out.reverse()
    return out


class MatchOperator(Operator):
    def __init__(self, name: str, key_cols: list[str], keys: list[pl.Expr], pattern: Pattern, skip: str,
                 order_by: tuple[str, ...] = (), time: str = "event",
                 clock: Callable[[], float] = _wall_clock_ms) -> None:
        check_skip(name, skip, pattern)
        pattern.check(name)
        if time not in ("event", "processing"):
            raise PlanError(f"match {name!r}: time must be 'event' or 'processing', got {time!r}")
        self.processing = time == "processing"
        self.clock = clock  # processing time in epoch ms; tests inject their own
        self.name, self.key_cols, self.keys, self.pattern, self.skip = name, key_cols, keys, pattern, skip
        self.order_by = list(order_by)
        self.stages = pattern.stages
        self.nfa = Compiled(pattern)
        self.cols, self.cond_exprs = condition_columns(self.stages)
        names = {s.name: k for k, s in enumerate(self.stages)}
        self.stage_names = [s.name for s in self.stages]
        self.repeats = [pattern.repeats(k) for k in range(len(self.stages))]
        self.edges = [[(a, t, compile_condition(c, self.stages, self.cols)) for a, t, c in s.edges]
                      for s in self.nfa.states]
        self.kinds = [s.kind for s in self.nfa.states]
        self.start_state = self.nfa.start.id
        self.to_final = self._final_closures()
        self.filter = not needs_every_event(pattern)
        self.needs_ctx = any(not isinstance(c, pl.Expr) for s in self.stages for c in (*s.conditions, *s.until))
        self.within = pattern.within_ms
        self.prev_gap = pattern.within_between == "previous_and_current"
        kind, _, stage = skip.partition(":")
        self.skip_kind, self.skip_stage = kind, names.get(stage, -1)
        self.comps: dict[bytes, list[list[Any]]] = {}
        self.next_deadline: dict[bytes, int] = {}  # per key: the earliest deadline of its computations
        self.held: dict[bytes, list[list[Any]]] = {}  # completed matches waiting on earlier partial ones
        self.pending = ArrivalBuffer()
        self.watermark = NO_WATERMARK
        self.pos = 0  # position of each handled event, increasing in handling order
        self.time_dtype: pl.DataType | None = None
        self.event_schema: dict[str, pl.DataType] | None = None
        self.seq = SequenceMatcher(pattern, key_cols, [self.cols.get(("C", k)) for k in range(len(self.stages))],
                                   TIME) if eligible(pattern, skip) else None

    def _final_closures(self) -> list[list[tuple[list[Any], int]]]:
        """Per state: the PROCEED paths (their conditions) that reach the final state."""

        def walk(sid: int, conds: list[Any], seen: frozenset[int], paths: list[tuple[list[Any], int]]) -> None:
            for a, t, c in self.edges[sid]:
                if a != PROCEED or t in seen:
                    continue
                if self.kinds[t] == FINAL:
                    paths.append(([*conds, c], t))
                else:
                    walk(t, [*conds, c], seen | {t}, paths)

        out: list[list[tuple[list[Any], int]]] = []
        for s in self.nfa.states:
            found: list[tuple[list[Any], int]] = []
            walk(s.id, [], frozenset({s.id}), found)
            out.append(found)
        return out

    # --- input -----------------------------------------------------------------------------------
    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if self.processing:
            return self._on_batch_processing(batch)
        emitted: Emitted = []
        if batch.height:
            require_event_time("match", self.name, batch)
            self.time_dtype = batch.time_dtype or self.time_dtype
            if self.event_schema is None:
                self.event_schema = {c: t for c, t in batch.df.schema.items() if not c.startswith(INTERNAL_PREFIX)}
            self._check_order_by(batch.df)
            df, late = ArrivalBuffer.split_late(self.pending.stamp(batch.df.with_columns(*self.keys, *self.cond_exprs)))
            if late.height:
                emitted.append(("late", Batch(late.drop(SEQ, *self.cols.values()), watermark=batch.watermark,
                                              time_dtype=batch.time_dtype)))
            if self.filter:
                df = df.filter(may_take_part(self.stages, self.cols))
            self.pending.add(df)
        wm = batch.watermark if batch.watermark is not None else self.watermark
        return self._advance(max(self.watermark, wm)) + emitted

    def _on_batch_processing(self, batch: Batch) -> Emitted:
        """Processing time: records are handled as they arrive, in arrival order, stamped with the clock;
        `within` and timeouts run on that clock."""
        now = max(int(self.clock()), self.watermark)
        if batch.height:
            if self.event_schema is None:
                self.event_schema = {c: t for c, t in batch.df.schema.items() if not c.startswith(INTERNAL_PREFIX)}
            df = batch.df.with_columns(*self.keys, *self.cond_exprs, pl.lit(now, pl.Int64).alias(TIME))
            df = self.pending.stamp(df)
            if self.filter:
                df = df.filter(may_take_part(self.stages, self.cols))
            self.pending.add(df)
        return self._advance(now + 1)  # every record so far is before now + 1; nothing later can be

    def _check_order_by(self, df: pl.DataFrame) -> None:
        for c in self.order_by:
            if c not in df.columns:
                have = ", ".join(x for x in df.columns if not x.startswith(INTERNAL_PREFIX))
                raise PlanError(f"match {self.name!r}: order_by column {c!r} is not in the stream; its columns "
                                f"are: {have}. Fix: name one of those columns")

    def on_end(self) -> Emitted:
        return self._advance(END_OF_TIME)

    # --- the NFA ---------------------------------------------------------------------------------
    def _ctx(self, node: Node | None) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for n in events_of(node):
            out.setdefault(self.stage_names[n[1]], []).append(n[3])
        return out

    def _moves(self, sid: int, row: dict[str, Any], ev: dict[str, Any],
               ctx: Callable[[], dict[str, list[dict[str, Any]]]]) -> tuple[list[tuple[int, int, int, int]], bool]:
        """The edges a computation in state `sid` follows on this event, through PROCEED edges: (action,
        stage, target, final reached by proceeding from the target or -1), and whether a negation (STOP)
        was reached."""
        moves: list[tuple[int, int, int, int]] = []
        stopped = False
        stack = [sid]
        while stack:
            s = stack.pop()
            for a, tgt, test in self.edges[s]:
                if not test(row, ev, ctx):
                    continue
                if a == PROCEED:
                    stack.append(tgt)
                elif a == IGNORE:
                    moves.append((IGNORE, -1, tgt, -1))
                elif self.kinds[tgt] == STOP:
                    stopped = True
                else:
                    fid = -1
                    for conds, f in self.to_final[tgt]:
                        if all(c(row, ev, ctx) for c in conds):
                            fid = f
                            break
                    moves.append((TAKE, self.nfa.states[s].stage, tgt, fid))
        return moves, stopped

    def _next(self, comp: list[Any], moves: list[tuple[int, int, int, int]], stopped: bool, ev: dict[str, Any],
              t: int, pos: int, out: list[list[Any]], finals: list[list[Any]]) -> None:
        """The computations that follow `comp` (into `out`, matches into `finals`). A path that reached a
        negation keeps only its matches (Flink discards the rest of what it made from this event)."""
        node = comp[1]
        is_start = node is None
        for a, stage, tgt, fid in moves:
            if a == IGNORE:
                if not is_start and not stopped:
                    if self.kinds[tgt] == FINAL:
                        finals.append([tgt, node, comp[2], comp[3], comp[4]])
                    elif tgt == comp[0]:
                        out.append(comp)  # waits on, unchanged
                    else:
                        out.append([tgt, node, comp[2], comp[3], comp[4]])
                continue
            new: Node = (node, stage, pos, ev)
            start_t, start_pos = (t, pos) if is_start else (comp[2], comp[3])
            if self.kinds[tgt] == FINAL:
                finals.append([tgt, new, start_t, start_pos, t])
                continue
            if not stopped:
                out.append([tgt, new, start_t, start_pos, t])
            if fid >= 0:
                finals.append([fid, new, start_t, start_pos, t])

    def _deadline(self, comp: list[Any]) -> int:
        assert self.within is not None
        return int(comp[4] if self.prev_gap else comp[2]) + self.within

    def _expire(self, kb: bytes, now: int, timeouts: list[dict[str, Any]], matches: list[dict[str, Any]]) -> None:
        """Time out this key's computations whose deadline ≤ now; pending ones become matches."""
        comps = self.comps.get(kb)
        if not comps or self.within is None:
            return
        keep, seen, due = [], set(), []
        for c in comps:
            if self._deadline(c) <= now:
                if self.kinds[c[0]] == PENDING:
                    due.append([*c, self._deadline(c)])
                    continue
                path = tuple(n[2] for n in events_of(c[1]))
                if path not in seen:
                    seen.add(path)
                    timeouts.append(self._row(kb, c, "timeout_at", self._deadline(c)))
            else:
                keep.append(c)
        if len(keep) < len(comps):
            self._set(kb, keep)
            if due:
                self._complete(kb, due, matches)
            else:
                self._release(kb, matches)

    def _set(self, kb: bytes, comps: list[list[Any]]) -> None:
        if comps:
            self.comps[kb] = comps
            if self.within is not None:
                i = 4 if self.prev_gap else 2
                self.next_deadline[kb] = min(c[i] for c in comps) + self.within
        else:
            self.comps.pop(kb, None)
            self.next_deadline.pop(kb, None)

    def _handle(self, kb: bytes, row: dict[str, Any], users: list[str], matches: list[dict[str, Any]],
                timeouts: list[dict[str, Any]]) -> None:
        t = row[TIME]
        pos = self.pos
        self.pos += 1
        if self.within is not None:
            due = self.next_deadline.get(kb)
            if due is not None and due <= t:
                self._expire(kb, t, timeouts, matches)
        ev = {k: row[k] for k in users}
        new: list[list[Any]] = []
        finals: list[list[Any]] = []
        cache: dict[int, tuple[list[tuple[int, int, int, int]], bool]] = {}
        for comp in [*self.comps.get(kb, ()), [self.start_state, None, 0, 0, 0]]:
            if self.needs_ctx:
                node = comp[1]
                memo: list[dict[str, list[dict[str, Any]]]] = []

                def ctx(node: Node | None = node, memo: list[dict[str, list[dict[str, Any]]]] = memo
                        ) -> dict[str, list[dict[str, Any]]]:
                    if not memo:
                        memo.append(self._ctx(node))
                    return memo[0]

                moves, stopped = self._moves(comp[0], row, ev, ctx)
            else:  # without Python conditions the moves depend on the state and the event only
                found = cache.get(comp[0])
                if found is None:
                    found = cache[comp[0]] = self._moves(comp[0], row, ev, _no_ctx)
                moves, stopped = found
            if moves:
                self._next(comp, moves, stopped, ev, t, pos, new, finals)
        self._set(kb, new)
        for f in finals:
            f.append(t)  # match_end
        if finals:
            self._complete(kb, finals, matches)

    def _complete(self, kb: bytes, done: list[list[Any]], matches: list[dict[str, Any]]) -> None:
        """Matches found (each computation ends with its match_end): emitted, or held for the skip strategy."""
        if self.skip_kind == "no_skip":
            for d in sorted(done, key=self._order):
                matches.append(self._row(kb, d, "match_end", d[5]))
            return
        self.held.setdefault(kb, []).extend(done)
        self._release(kb, matches)

    def _order(self, comp: list[Any]) -> tuple[Any, ...]:
        """Matches that end together go out by start, then by their events, then by the stages that took
        them (earlier stages first: with groups, the same events can make two matches)."""
        nodes = events_of(comp[1])
        return (comp[3], tuple(n[2] for n in nodes), tuple(n[1] for n in nodes))

    def _release(self, kb: bytes, matches: list[dict[str, Any]]) -> None:
        """Emit waiting matches that no earlier-started partial match can still prune, in order."""
        held = self.held.get(kb)
        while held:
            m = min(held, key=self._order)
            comps = self.comps.get(kb, [])
            if comps and min(c[3] for c in comps) < m[3]:
                break
            held.remove(m)
            matches.append(self._row(kb, m, "match_end", m[5]))
            bound = self._prune_bound(m)
            held[:] = [h for h in held if h[3] >= bound]
            self._set(kb, [c for c in comps if c[3] >= bound])
        if not held:
            self.held.pop(kb, None)

    def _prune_bound(self, m: list[Any]) -> int:
        """Partial and waiting matches that started before this position are discarded."""
        nodes = events_of(m[1])
        if self.skip_kind == "skip_to_next":
            return nodes[0][2] + 1
        if self.skip_kind == "skip_past_last_event":
            return nodes[-1][2] + 1
        of = [n[2] for n in nodes if n[1] == self.skip_stage]
        if not of:
            return -1
        return of[0] if self.skip_kind == "skip_to_first" else of[-1]

    def _row(self, kb: bytes, comp: list[Any], end_name: str, end: int) -> dict[str, Any]:
        out: dict[str, Any] = dict(zip(self.key_cols, orjson.loads(kb), strict=True))
        out["match_start"] = comp[2]
        out[end_name] = end
        by: dict[int, list[dict[str, Any]]] = {}
        for n in events_of(comp[1]):
            by.setdefault(n[1], []).append(n[3])
        for k, st in enumerate(self.stages):
            if st.negative:
                continue
            evs = by.get(k)
            out[st.name] = (evs or []) if self.repeats[k] else (evs[0] if evs else None)
        return out

    def _advance_sequence(self, watermark: int) -> Emitted:
        """The vectorized path (match_sequence.py)."""
        assert self.seq is not None
        start_wm = self.watermark
        self.watermark = watermark
        matches: list[pl.DataFrame] = []
        timeouts: list[pl.DataFrame] = []
        ready = self.pending.release(watermark)
        if ready is not None:
            if self.order_by:
                ready = ready.sort([TIME, *self.order_by, SEQ], nulls_last=True)
            users = [c for c in ready.columns if not c.startswith(INTERNAL_PREFIX)]
            matches, timeouts = self.seq.step(ready, self.pos, users)
            self.pos += ready.height
        expired = self.seq.expire(watermark)
        if expired is not None:
            timeouts.append(expired)
        if watermark >= END_OF_TIME:
            self.seq.drop_all()
        emitted: Emitted = []
        if matches:
            df = pl.concat(matches, how="vertical_relaxed").sort("__sq_end", START_POS)
            emitted.append(("out", self._frame(self.seq.rows(df, "match_end", pl.col("__sq_t")), "match_end", start_wm)))
        else:
            emitted.append(("out", self._batch([], "match_end", start_wm)))
        if timeouts:
            df = pl.concat(timeouts, how="vertical_relaxed").with_columns(self.seq.deadline().alias("__sq_d"))
            df = df.sort("__sq_d", START_POS)
            emitted.append(("timeouts", self._frame(self.seq.rows(df, "timeout_at", pl.col("__sq_d")), "timeout_at",
                                                     start_wm)))
        return emitted

    def _frame(self, df: pl.DataFrame, time_col: str, wm: int) -> Batch:
        df = df.with_columns(pl.col(time_col).cast(pl.Int64).alias(TIME), pl.lit(wm, pl.Int64).alias(WATERMARK))
        return Batch(df, watermark=self.watermark, time_dtype=self.time_dtype)

    def _advance(self, watermark: int) -> Emitted:
        if self.seq is not None:
            return self._advance_sequence(watermark)
        start_wm = self.watermark
        self.watermark = watermark
        matches: list[dict[str, Any]] = []
        timeouts: list[dict[str, Any]] = []
        ready = self.pending.release(watermark)
        if ready is not None:
            if self.order_by:
                ready = ready.sort([TIME, *self.order_by, SEQ], nulls_last=True)
            kcols = self.key_cols
            users = [c for c in ready.columns if not c.startswith(INTERNAL_PREFIX)]
            for row in ready.iter_rows(named=True):
                self._handle(key_bytes([row[k] for k in kcols]), row, users, matches, timeouts)
        if self.within is not None:
            for kb, due in list(self.next_deadline.items()):
                if due <= watermark:
                    self._expire(kb, watermark, timeouts, matches)
        if watermark >= END_OF_TIME:  # nothing can complete what is left: release what waited on it
            for kb in list(self.comps):
                self._set(kb, [])
                self._release(kb, matches)
            for kb in list(self.held):
                self._release(kb, matches)
        emitted: Emitted = [("out", self._batch(matches, "match_end", start_wm))]
        if timeouts:
            emitted.append(("timeouts", self._batch(timeouts, "timeout_at", start_wm)))
        return emitted

    def _batch(self, rows: list[dict[str, Any]], time_col: str, wm: int) -> Batch:
        if not rows:
            return Batch(pl.DataFrame(), watermark=self.watermark, time_dtype=self.time_dtype)
        return self._frame(pl.from_dicts(rows, infer_schema_length=None), time_col, wm)

    # --- checkpoints: plain tables, no pickled objects --------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        ids: dict[int, int] = {}
        nodes: dict[str, list[Any]] = {"id": [], "parent": [], "stage": [], "pos": []}
        events: list[dict[str, Any]] = []

        def node_id(n: Node | None) -> int | None:
            if n is None:
                return None
            found = ids.get(id(n))
            if found is not None:
                return found
            parent = node_id(n[0])
            nid = len(ids)
            ids[id(n)] = nid
            nodes["id"].append(nid)
            nodes["parent"].append(parent)
            nodes["stage"].append(n[1])
            nodes["pos"].append(n[2])
            events.append(n[3])
            return nid

        comps: dict[str, list[Any]] = {"key": [], "held": [], "state": [], "node": [], "start_t": [],
                                       "start_pos": [], "prev_t": [], "end": []}
        for held, table in ((False, self.comps), (True, self.held)):
            for kb, cs in table.items():
                for c in cs:
                    comps["key"].append(kb)
                    comps["held"].append(held)
                    comps["state"].append(c[0])
                    comps["node"].append(node_id(c[1]))
                    comps["start_t"].append(c[2])
                    comps["start_pos"].append(c[3])
                    comps["prev_t"].append(c[4])
                    comps["end"].append(c[5] if len(c) > 5 else None)
        schema = {"id": pl.Int64, "parent": pl.Int64, "stage": pl.Int32, "pos": pl.Int64}
        state: dict[str, Any] = {
            "watermark": self.watermark, "pos": self.pos,
            "comps": pl.DataFrame(comps, schema={"key": pl.Binary, "held": pl.Boolean, "state": pl.Int32,
                                                 "node": pl.Int64, "start_t": pl.Int64, "start_pos": pl.Int64,
                                                 "prev_t": pl.Int64, "end": pl.Int64}),
            "nodes": pl.DataFrame(nodes, schema=schema),
        }
        if self.seq is not None:
            state.update(self.seq.snapshot())
        if events:
            state["events"] = pl.DataFrame(events, schema=self.event_schema) if self.event_schema \
                else pl.from_dicts(events, infer_schema_length=None)
        self.pending.snapshot(state)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.watermark = int(state["watermark"])
        self.pos = int(state["pos"])
        events = state["events"].to_dicts() if "events" in state else []
        built: dict[int, Node] = {}
        for nid, parent, stage, pos in state["nodes"].iter_rows():
            built[nid] = (None if parent is None else built[parent], stage, pos, events[nid])
        self.comps, self.held = {}, {}
        for kb, held, sid, nid, start_t, start_pos, prev_t, end in state["comps"].iter_rows():
            c: list[Any] = [sid, None if nid is None else built[nid], start_t, start_pos, prev_t]
            if end is not None:
                c.append(end)
            (self.held if held else self.comps).setdefault(kb, []).append(c)
        for kb in list(self.comps):
            self._set(kb, self.comps[kb])
        if self.seq is not None:
            self.seq.restore(state)
        self.pending.restore(state)
