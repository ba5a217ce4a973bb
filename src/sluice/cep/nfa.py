"""A pattern compiled to Flink CEP's NFA, and the per-key run of it.

Compilation follows Flink's NFACompiler, from the last stage back to the first: every stage becomes one or
more states with TAKE (consume the event, move on), IGNORE (skip it, stay waiting) and PROCEED (an epsilon
edge, evaluated with the same event) edges, each guarded by a condition. A loop or optional stage has a
PROCEED edge out at every point where it may be left, so a partial match branches there; the skip strategy
prunes afterwards. Negations become edges into a STOP state (the path is discarded); a trailing
not_followed_by becomes a PENDING state that turns into a match when `within` runs out.

Partial matches share their prefixes: a match is a chain of nodes (parent, stage, position, event), and a
branch is one more node on a shared parent, never a copy of the events before it (Flink's SharedBuffer
keeps the same sharing with versioned edges; a parent pointer per node gives it without versions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sluice.cep.pattern import Group, Pattern, Stage

TAKE, IGNORE, PROCEED = 0, 1, 2
NORMAL, FINAL, STOP, PENDING = 0, 1, 2, 3

# a condition: ("T",) | ("C", stage) | ("U", stage) | ("not", c) | ("and", c, c)
Cond = tuple[Any, ...]
TRUE: Cond = ("T",)


def _and(a: Cond, b: Cond) -> Cond:
    return b if a == TRUE else a if b == TRUE else ("and", a, b)


def _not(a: Cond) -> Cond:
    return a[1] if a[0] == "not" else ("not", a)


@dataclass
class State:
    id: int
    stage: int  # index into pattern.stages (-1: final)
    kind: int = NORMAL
    edges: list[tuple[int, int, Cond]] = field(default_factory=list)  # (action, target id, condition)


class Compiled:
    """The states of a pattern; `start` is the first stage's entry state."""

    def __init__(self, pattern: Pattern) -> None:
        self.pattern = pattern
        self.stages: tuple[Stage, ...] = pattern.stages
        self.states: list[State] = []
        self.final = self._state(-1, FINAL)
        self.stops: dict[int, State] = {}
        self.groups = {g.end: g for g in pattern.groups}
        # the group being compiled: (group, is this the first repeat (Flink's firstOfLoop), is its head optional)
        self.in_group: tuple[Group, bool, bool] | None = None
        sink = self.final
        i = len(self.stages) - 1
        last = self.stages[i]
        if last.contiguity == "not_relaxed":
            pend = self._state(i, PENDING)
            pend.edges.append((PROCEED, self._stop(i).id, ("C", i)))
            pend.edges.append((IGNORE, pend.id, _not(("C", i))))
            sink, i = pend, i - 1
        elif last.contiguity == "not_strict":
            nn = self._state(i, NORMAL)
            nn.edges.append((IGNORE, self.final.id, _not(("C", i))))  # the next event completes the match
            nn.edges.append((PROCEED, self._stop(i).id, ("C", i)))
            sink, i = nn, i - 1
        sink = self._middle(0, i, sink)
        self.start = sink
        self.closure_cache: dict[int, bool] = {}

    def _middle(self, lo: int, hi: int, sink: State) -> State:
        """Stages hi down to lo, each pointing at the states of the one after it (Flink's createMiddleStates)."""
        i = hi
        while i >= lo:
            st = self.stages[i]
            g = self.groups.get(i)
            if g is not None and (self.in_group is None or self.in_group[0] is not g):
                sink = self._convert_group(g, sink)
                i = g.start - 1
                continue
            if st.contiguity == "not_strict":
                nn = self._state(i, NORMAL)
                nn.edges.append((PROCEED, sink.id, _not(("C", i))))
                nn.edges.append((PROCEED, self._stop(i).id, ("C", i)))
                sink = nn
            elif st.contiguity != "not_relaxed":  # not_followed_by: stop edges on the next stage's entry
                sink = self._convert(i, sink)
            i -= 1
        return sink

    # --- group patterns (Flink's createGroupPatternState / createLoopingGroupPatternState) -------------
    def _convert_group(self, g: Group, sink: State) -> State:
        if g.max is None:
            loop = self._looping_group(g, sink)
            return self._times_group(g, loop, sink, g.min, g.min)
        return self._times_group(g, sink, sink, g.min, g.max)

    def _times_group(self, g: Group, sink: State, proceed: State, lo: int, hi: int) -> State:
        last = sink
        for _ in range(lo, hi):
            last = self._group_copy(g, last, proceed, False, True)
        for _ in range(lo - 1):
            last = self._group_copy(g, last, None, False, False)
        return self._group_copy(g, last, proceed, True, g.optional)

    def _group_copy(self, g: Group, sink: State, proceed: State | None, first: bool, optional: bool) -> State:
        """One repeat of the group's stages into `sink`; an optional repeat may be skipped from its head's
        entry state (the head's own IGNORE edges then go to a state without that exit, as for a stage)."""
        saved = self.in_group
        self.in_group = (g, first, optional)
        head = self._middle(g.start, g.end, sink)
        self.in_group = saved
        if optional and proceed is not None:
            head.edges.append((PROCEED, proceed.id, TRUE))
        return head

    def _looping_group(self, g: Group, sink: State) -> State:
        """The group repeated any number of times: its last stage takes into a state that proceeds back to
        its head, whose entry state may also proceed to `sink`."""
        back = self._state(g.start)
        head = self._group_copy(g, back, sink, False, True)
        back.edges.append((PROCEED, head.id, TRUE))
        return head

    def _state(self, stage: int, kind: int = NORMAL) -> State:
        s = State(len(self.states), stage, kind)
        self.states.append(s)
        return s

    def _stop(self, i: int) -> State:
        if i not in self.stops:
            s = self._state(i, STOP)
            s.edges.append((TAKE, s.id, ("C", i)))
            self.stops[i] = s
        return self.stops[i]

    def _copy(self, s: State) -> State:
        c = self._state(s.stage, s.kind)
        c.edges = list(s.edges)
        return c

    def _greedy(self, s: State, take: Cond) -> None:
        """Flink's updateWithGreedyCondition: the state after a greedy loop may not act on what it takes."""
        s.edges = [(a, t, _and(c, _not(take))) for a, t, c in s.edges]

    def _convert(self, i: int, sink: State) -> State:
        st = self.stages[i]
        cond: Cond = ("C", i)
        take = _and(_not(("U", i)), cond) if st.until else cond
        # the head of a group: entered with the group's contiguity on its first repeat and the group's inner
        # contiguity on the others; its own repeats use the group's inner contiguity (as Flink); optional
        # when the group's repeat is (its skip edge is added by _group_copy)
        head = self.in_group is not None and self.in_group[0].start == i
        entering, inner_of, optional, exit_ok = st.contiguity, st.inner, st.optional, True
        if head:
            assert self.in_group is not None
            g, first_repeat, optional = self.in_group
            entering = g.contiguity if first_repeat else g.inner
            inner_of, exit_ok = g.inner, False
        inner: Cond | None = {"strict": None, "relaxed": _not(cond), "any": TRUE}[inner_of]
        if st.until and inner is not None:
            inner = _and(_not(("U", i)), inner)
        entry: Cond | None = {"strict": None, "relaxed": _not(cond), "any": TRUE}[entering]
        # not_followed_by right after a quantified stage: once the stage has taken an event, a negated event
        # ends the partial match (Flink's addStopStateToLooping, on the same states as Flink)
        # negations before this stage: stop edges on its entry (and, when optional, on the state it skips
        # into); when optional and single, what it takes goes on without them (Flink's transitive nots)
        nots = self._current_nots(i)
        take_to = self._without(sink, {self._stop(j).id for j in nots}, {}) \
            if nots and optional and not st.quantified else None
        nxt = self.stages[i + 1] if i + 1 < len(self.stages) else None
        stop = (self._stop(i + 1).id, ("C", i + 1)) if nxt is not None and nxt.contiguity == "not_relaxed" \
            and st.quantified else None
        if st.max is None:
            loop = self._state(i)
            if st.greedy:
                if st.until:
                    copy = self._copy(sink)
                    loop.edges.append((PROCEED, copy.id, ("U", i)))
                    loop.edges.append((PROCEED, sink.id, _not(("U", i))))
                else:
                    loop.edges.append((PROCEED, sink.id, TRUE))
                self._greedy(sink, cond)
            else:
                loop.edges.append((PROCEED, sink.id, TRUE))
            loop.edges.append((TAKE, loop.id, take))
            if stop is not None:
                loop.edges.append((PROCEED, *stop))
            if inner is not None:
                ig = self._state(i)
                ig.edges.append((TAKE, loop.id, take))
                ig.edges.append((IGNORE, ig.id, inner))
                if stop is not None:
                    ig.edges.append((PROCEED, *stop))
                loop.edges.append((IGNORE, ig.id, inner))
            first = self._times(i, loop, sink, st.min, st.min, take, inner, entry, optional, exit_ok, stop, nots)
        else:
            if st.greedy and st.min != st.max:
                self._greedy(sink, take)
            first = self._times(i, sink, sink, st.min, st.max, take, inner, entry, optional, exit_ok, stop, nots,
                                take_to)
        for j in nots:
            first.edges.append((PROCEED, self._stop(j).id, ("C", j)))
        return first

    def _current_nots(self, i: int) -> list[int]:
        """The not_followed_by stages that hold when stage i is entered: right before it, or before the
        optional stages right before it (Flink's getCurrentNotCondition)."""
        out = []
        j = i - 1
        while j >= 0 and (self.stages[j].contiguity == "not_relaxed" or self.stages[j].optional):
            if self.stages[j].contiguity == "not_relaxed":
                out.append(j)
            j -= 1
        return out

    def _without(self, s: State, stops: set[int], memo: dict[int, State]) -> State:
        """A copy of state s (and of what it proceeds to) without PROCEED edges into the given STOP states:
        the target of an optional stage's TAKE, as taking an event ends the negations before it (Flink's
        copyWithoutTransitiveNots)."""
        if s.kind == FINAL:
            return s
        if s.id in memo:
            return memo[s.id]
        c = self._state(s.stage, s.kind)
        memo[s.id] = c
        for a, t, cond in s.edges:
            if a == PROCEED:
                if t in stops:
                    continue
                tgt = self.states[t]
                c.edges.append((a, t if tgt.kind == STOP else self._without(tgt, stops, memo).id, cond))
            else:
                c.edges.append((a, c.id if t == s.id else t, cond))
        return c

    def _times(self, i: int, sink: State, proceed: State, lo: int, hi: int, take: Cond, inner: Cond | None,
               entry: Cond | None, optional: bool, exit_ok: bool, stop: tuple[int, Cond] | None = None,
               nots: list[int] | None = None, take_to: State | None = None) -> State:
        last = sink
        for _ in range(lo, hi):  # as Flink, the negations before the stage also guard its optional repeats'
            last = self._single(i, last, proceed, take, inner, True, nots)  # skip states
            if stop is not None:
                last.edges.append((PROCEED, *stop))
        for _ in range(lo - 1):
            last = self._single(i, last, None, take, inner, False)
            if stop is not None:
                last.edges.append((PROCEED, *stop))
        return self._single(i, take_to or last, proceed if exit_ok else None, take, entry, optional, nots or [])

    def _single(self, i: int, sink: State, proceed: State | None, take: Cond, ignore: Cond | None,
                optional: bool, nots: list[int] | None = None) -> State:
        s = self._state(i)
        s.edges.append((TAKE, sink.id, take))
        if optional and proceed is not None:
            s.edges.append((PROCEED, proceed.id, TRUE))
        if ignore is not None:
            if optional:
                ig = self._state(i)
                ig.edges.append((TAKE, sink.id, take))
                ig.edges.append((IGNORE, ig.id, ignore))
                for j in nots or []:  # a skipped event does not end the negations before this stage
                    ig.edges.append((PROCEED, self._stop(j).id, ("C", j)))
                s.edges.append((IGNORE, ig.id, ignore))
            else:
                s.edges.append((IGNORE, s.id, ignore))
        return s


# --- evaluation ------------------------------------------------------------------------------------
Ctx = Callable[[], dict[str, list[dict[str, Any]]]]
Test = Callable[[dict[str, Any], dict[str, Any], Ctx], bool]


def compile_condition(c: Cond, stages: tuple[Stage, ...], cols: dict[tuple[str, int], str]) -> Test:
    """A condition as a function of (row, event, context). Expression conditions were evaluated for the
    whole batch: a stage's expressions are one boolean column `cols[("C", stage)]`; Python functions of
    (event, matched) are called here."""
    tag = c[0]
    if tag == "T":
        return lambda row, ev, ctx: True
    if tag == "not":
        inner = compile_condition(c[1], stages, cols)
        return lambda row, ev, ctx: not inner(row, ev, ctx)
    if tag == "and":
        a, b = compile_condition(c[1], stages, cols), compile_condition(c[2], stages, cols)
        return lambda row, ev, ctx: a(row, ev, ctx) and b(row, ev, ctx)
    k = c[1]
    conds = stages[k].conditions if tag == "C" else stages[k].until
    found = cols.get((tag, k))
    fns = [f for f in conds if not isinstance(f, pl.Expr)]
    if found is None:
        if tag == "C":
            return lambda row, ev, ctx: all(f(ev, ctx()) for f in fns)
        return lambda row, ev, ctx: any(f(ev, ctx()) for f in fns)
    col: str = found
    if not fns:
        return lambda row, ev, ctx: bool(row[col])
    if tag == "C":  # a stage's conditions: all of them
        return lambda row, ev, ctx: bool(row[col]) and all(f(ev, ctx()) for f in fns)
    return lambda row, ev, ctx: bool(row[col]) or any(f(ev, ctx()) for f in fns)  # until: any of them


def condition_columns(stages: tuple[Stage, ...]) -> tuple[dict[tuple[str, int], str], list[pl.Expr]]:
    """One boolean column per stage for its expression conditions (all of them), one for its expression
    until conditions (any of them)."""
    cols: dict[tuple[str, int], str] = {}
    exprs: list[pl.Expr] = []
    for k, st in enumerate(stages):
        ex = [c.fill_null(False) for c in st.conditions if isinstance(c, pl.Expr)]
        if ex or not st.conditions:
            cols[("C", k)] = f"__sl_c{k}"
            exprs.append((pl.all_horizontal(ex) if ex else pl.lit(True)).alias(f"__sl_c{k}"))
        ux = [c.fill_null(False) for c in st.until if isinstance(c, pl.Expr)]
        if ux:
            cols[("U", k)] = f"__sl_u{k}"
            exprs.append(pl.any_horizontal(ux).alias(f"__sl_u{k}"))
    return cols, exprs


def may_take_part(stages: tuple[Stage, ...], cols: dict[tuple[str, int], str]) -> pl.Expr:
    """True where an event can change some partial match: it may satisfy a stage (Python conditions:
    maybe), an until condition or a negation. Other events are skipped by every waiting point."""
    parts = [pl.col(cols[("C", k)]) if ("C", k) in cols else pl.lit(True) for k in range(len(stages))]
    parts += [pl.col(c) for (tag, _), c in cols.items() if tag == "U"]
    if any(not isinstance(u, pl.Expr) for st in stages for u in st.until):
        parts.append(pl.lit(True))
    return pl.any_horizontal(parts)


def needs_every_event(pattern: Pattern) -> bool:
    """Strict contiguity anywhere (next, consecutive, not_next) makes every event of the key count; so does
    greedy(), whose guard sits on the next stage's entry state only (an event that satisfies nothing still
    moves a partial match past it, as in Flink), and not_followed_by after times(n, m): an ignored event moves
    a partial match waiting for an optional repeat to a state without the negation's stop edge."""
    return any((i > 0 and s.contiguity in ("strict", "not_strict")) or (s.quantified and s.inner == "strict")
               or s.greedy for i, s in enumerate(pattern.stages)) or any(g.inner == "strict" for g in pattern.groups) \
        or any(s.max is not None and s.min < s.max and ((i + 1 < len(pattern.stages) and pattern.stages[i + 1]
               .contiguity == "not_relaxed") or (i > 0 and pattern.stages[i - 1].contiguity == "not_relaxed"))
               for i, s in enumerate(pattern.stages))
