"""A brute-force CEP matcher, written from Flink CEP's rules and independent of the engine's NFA.

It enumerates, per key, every sequence of events (in (time, arrival) order) that the pattern accepts,
stated as conditions on the events *between* taken ones (what each waiting point may skip), then applies
the after-match skip strategy as Flink's NFA does: with a skip strategy a completed match waits while a
partial match that started earlier is alive, matches are emitted in order of their start (then of their
events), and each emitted match discards what started at or before (to_next, past_last) or before
(to_first, to_last) its pruning event.

Rules, for a run that took event p last (at stage k, c times) and takes event j next:
- repeat k (c < max): every event y in (p, j) is skipped by k's inner contiguity: strict none; relaxed
  ¬cond_k(y) ∧ ¬until_k(y); any ¬until_k(y). j must satisfy cond_k ∧ ¬until_k.
- enter a later stage k2 (c ≥ min, every stage between optional): every y in (p, j) is skipped by k2's
  entry contiguity (strict none, relaxed ¬cond_k2(y), any); greedy: at y = p+1, ¬cond of each greedy stage
  in [k, k2); later y in (p+1, j] ¬cond_{k2-1} if k2-1 is greedy and k2 is not optional.
- not_next between k and k2: event p+1 must not satisfy it; not_followed_by: no y in (p, j].
- a negation right after a quantified stage k also ends its repeats (see `killed`).
- a run whose taken event meets a negation that ends it (the not_followed_by before the stage it enters,
  or `killed` for a repeat) is doomed: it goes no further, but the match the take completes stands (Flink's
  NFA keeps the final states a path reaches with an event that also reaches a stop state), unless the
  pattern ends in a negation (a pending or not_next state is no final state).
- a negation before optional stages holds until the next taken event, whichever stage takes it (Flink's
  transitive negations): a run entering k2 checks the negation between k and k2, if any.
- within: every taken event less than W after the first (or after the previous one).
A run completes when taken at a stage with all later stages optional (greedy stages on the way: the taken
event must not satisfy them); a trailing not_next completes at the next event if that event does not
satisfy it; a trailing not_followed_by completes when within runs out with no satisfying event.

Group patterns with quantifiers are written out as flat patterns, one per repeat count (`expansions`); the
runs of all of them are enumerated together, a match found by several counts once, and a partial match
alive in any of them holds back later ones under a skip strategy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from sluice.cep.pattern import Pattern, Stage


@dataclass(frozen=True)
class Run:
    taken: tuple[tuple[int, int], ...]  # (event position, stage index)
    k: int
    c: int
    doomed: bool = False  # its last event satisfied a negation: only a match made by it survives

    @property
    def p(self) -> int:
        return self.taken[-1][0]

    @property
    def start(self) -> int:
        return self.taken[0][0]


class Oracle:
    def __init__(self, pattern: Pattern, events: list[dict[str, Any]], frame: pl.DataFrame,
                 original: Pattern | None = None) -> None:
        self.pat = pattern
        self.pat_orig = original or pattern  # the pattern with groups this one is an expansion of
        self.st: tuple[Stage, ...] = pattern.stages
        self.ev = events
        self.n = len(events)
        self.t = [e["t"] for e in events]
        self.W = pattern.within_ms
        self.prev_gap = pattern.within_between == "previous_and_current"
        # expression conditions evaluated once over the key's events
        self.vals: dict[int, list[bool]] = {}
        for c in {id(c): c for s in self.st for c in (*s.conditions, *s.until)}.values():
            if isinstance(c, pl.Expr):
                self.vals[id(c)] = frame.select(c.fill_null(False))[:, 0].to_list()
        self.pos = [i for i, s in enumerate(self.st) if not s.negative]
        self.last_pos = self.pos[-1]
        self.trailing = self.st[-1] if self.st[-1].negative else None

    # --- conditions ------------------------------------------------------------------------------
    def _all(self, conds: tuple[Any, ...], y: int, ctx: dict[str, list[dict[str, Any]]]) -> bool:
        for c in conds:
            ok = self.vals[id(c)][y] if isinstance(c, pl.Expr) else c(self.ev[y], ctx)
            if not ok:
                return False
        return True

    def cond(self, k: int, y: int, ctx: dict[str, list[dict[str, Any]]]) -> bool:
        return self._all(self.st[k].conditions, y, ctx)

    def until(self, k: int, y: int, ctx: dict[str, list[dict[str, Any]]]) -> bool:
        return any(self._all((u,), y, ctx) for u in self.st[k].until)

    def take(self, k: int, y: int, ctx: dict[str, list[dict[str, Any]]]) -> bool:
        return self.cond(k, y, ctx) and not self.until(k, y, ctx)

    def ctx(self, run: Run) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for y, k in run.taken:
            out.setdefault(self.st[k].name, []).append(self.ev[y])
        return out

    def in_time(self, run: Run, j: int) -> bool:
        if self.W is None:
            return True
        ref = self.t[run.p] if self.prev_gap else self.t[run.start]
        return self.t[j] - ref < self.W

    # --- the shape of the pattern ----------------------------------------------------------------
    def neg_between(self, k: int, k2: int) -> Stage | None:
        """The negation a run at stage k passes on its way to stage k2 (through skipped optional stages)."""
        return next((self.st[g] for g in range(k + 1, k2) if self.st[g].negative), None)

    def later(self, k: int) -> list[int]:
        """Positive stages a run at stage k may enter next (through optional ones)."""
        out = []
        for k2 in self.pos:
            if k2 <= k:
                continue
            out.append(k2)
            if not self.st[k2].optional:
                break
        return out

    def firsts(self) -> list[int]:
        out = []
        for k in self.pos:
            out.append(k)
            if not self.st[k].optional:
                break
        return out

    def killed(self, run: Run, y: int, ctx: dict[str, list[dict[str, Any]]]) -> bool:
        """Does event y end a run that took p last at quantified stage k, negated right before (times(n, m):
        while it waits for an optional repeat, after skipping an event) or right after it? not_next: the
        event right after p, once the stage may be left (c ≥ min). not_followed_by: any event while the stage
        waits for a required repeat or loops; while it waits for an optional repeat of times(n, m), only the
        event right after p (Flink puts the stop edge on that state, not on the state it ignores into)."""
        k, c, p = run.k, run.c, run.p
        s = self.st[k]
        # a not_followed_by right before times(n, m) guards the state its optional repeats skip into
        before = self.st[k - 1] if k > 0 and self.st[k - 1].contiguity == "not_relaxed" else None
        if before is not None and s.max is not None and s.min <= c < s.max and y > p + 1 \
                and self._all(before.conditions, y, ctx):
            return True
        neg = self.st[k + 1] if k + 1 < len(self.st) and self.st[k + 1].negative else None
        if neg is None or not s.quantified or not self._all(neg.conditions, y, ctx):
            return False
        if neg.contiguity == "not_strict":
            return y == p + 1 and c >= s.min
        if c < s.min or s.max is None:
            return True
        return y == p + 1

    def inner_skips(self, run: Run, y: int, ctx: dict[str, list[dict[str, Any]]]) -> bool:
        """May the run, waiting for its next repeat of stage k, skip event y?"""
        if self.killed(run, y, ctx):
            return False
        k = run.k
        inner = self.st[k].inner
        if inner == "strict":
            return False
        if inner == "relaxed":
            return not self.cond(k, y, ctx) and not self.until(k, y, ctx)
        return not self.until(k, y, ctx)

    def entry_skips(self, run: Run, k2: int, y: int, ctx: dict[str, list[dict[str, Any]]]) -> bool:
        """May a run that took p last skip event y while waiting to enter stage k2?"""
        s2 = self.st[k2]
        if s2.contiguity == "strict":
            return False
        if s2.contiguity == "relaxed" and self.cond(k2, y, ctx):
            return False
        return self.entry_guards(run, k2, y, ctx)

    def entry_guards(self, run: Run, k2: int, y: int, ctx: dict[str, list[dict[str, Any]]],
                     taking: bool = False) -> bool:
        """Greedy and negation guards on event y (skipped or taken) between run.p and stage k2's first.
        A taken event that satisfies a not_followed_by is checked by the caller (the run is doomed)."""
        p, k = run.p, run.k
        if y == p + 1:
            if any(self.st[g].greedy and self.cond(g, y, ctx) for g in self.pos if k <= g < k2):
                return False
        else:
            prev = max(g for g in self.pos if g < k2)
            if self.st[prev].greedy and not self.st[k2].optional and self.cond(prev, y, ctx):
                return False
        neg = self.neg_between(k, k2)
        if neg is not None:
            if neg.contiguity == "not_strict" and y == p + 1 and self._all(neg.conditions, y, ctx):
                return False
            if neg.contiguity == "not_relaxed" and not taking and self._all(neg.conditions, y, ctx):
                return False
        return True

    def doomed(self, k: int, k2: int, y: int, ctx: dict[str, list[dict[str, Any]]]) -> bool:
        neg = self.neg_between(k, k2)
        return neg is not None and neg.contiguity == "not_relaxed" and self._all(neg.conditions, y, ctx)

    # --- enumeration -----------------------------------------------------------------------------
    def runs(self) -> list[Run]:
        out: list[Run] = []

        def extend(run: Run) -> None:
            out.append(run)
            if run.doomed:
                return
            k, c, p = run.k, run.c, run.p
            ctx = self.ctx(run)
            s = self.st[k]
            if s.max is None or c < s.max:
                for j in range(p + 1, self.n):
                    if j > p + 1 and not self.inner_skips(run, j - 1, ctx):
                        break
                    if self.take(k, j, ctx) and self.in_time(run, j):
                        # a repeat taken while a negation ends the run: Flink discards the partial match
                        # but keeps a match the take completes (doProcess keeps final states of a stopped path)
                        extend(Run((*run.taken, (j, k)), k, c + 1, self.killed(run, j, ctx)))
            if c >= s.min:
                for k2 in self.later(k):
                    for j in range(p + 1, self.n):
                        if j > p + 1 and not self.entry_skips(run, k2, j - 1, ctx):
                            break
                        if self.take(k2, j, ctx) and self.entry_guards(run, k2, j, ctx, taking=True) \
                                and self.in_time(run, j):
                            extend(Run((*run.taken, (j, k2)), k2, 1, self.doomed(k, k2, j, ctx)))

        for k in self.firsts():
            for j in range(self.n):
                # a skipped greedy stage's successor may not act on what the greedy stage could take
                if any(self.st[g].greedy and self.cond(g, j, {}) for g in self.pos if g < k):
                    continue
                if self.take(k, j, {}):
                    extend(Run(((j, k),), k, 1))
        return out

    def completes(self, run: Run) -> tuple[str, int] | None:
        """("at", position) or ("deadline", time) when the run is a match; None if it is not."""
        k, c, p = run.k, run.c, run.p
        s = self.st[k]
        if c < s.min or any(not self.st[g].optional for g in self.pos if g > k):
            return None
        if run.doomed and self.trailing is not None:
            return None  # a trailing negation is no final state: a stopped path reaches none
        if self.trailing is None:
            ctx = self.ctx(Run(run.taken[:-1], k, c)) if len(run.taken) > 1 else {}
            # completing through skipped optional stages evaluates the way there with the taken event itself
            # (Flink's findFinalStateAfterProceed), a not_next on the way included
            neg = self.neg_between(k, len(self.st))
            if neg is not None and neg.contiguity == "not_strict" and self._all(neg.conditions, p, self.ctx(run)):
                return None
            if any(self.st[g].greedy and self.cond(g, p, ctx) for g in self.pos if g >= k and g < self.last_pos):
                return None
            return ("at", p)
        if k != self.last_pos:
            return None
        ctx = self.ctx(run)
        if self.trailing.contiguity == "not_strict":
            j = p + 1
            if j < self.n and self.in_time(run, j) and not self._all(self.trailing.conditions, j, ctx):
                return ("at", j)
            return None
        assert self.W is not None
        deadline = (self.t[p] if self.prev_gap else self.t[run.start]) + self.W
        for y in range(p + 1, self.n):
            if self.t[y] >= deadline:
                break
            if self._all(self.trailing.conditions, y, ctx):
                return None
        return ("deadline", deadline)

    def partial(self, run: Run) -> bool:
        """Is there a non-final computation for this run right after it took its last event?"""
        if run.doomed:
            return False
        s = self.st[run.k]
        return s.max is None or run.c < s.max or run.k != self.last_pos or self.trailing is not None

    def alive(self, run: Run, i: int) -> bool:
        """Does a partial computation for `run` exist after event i has been handled (i ≥ run.p)?"""
        if not self.partial(run):
            return False
        if i == run.p:
            return True
        if not self.in_time(run, i):
            return False
        ctx = self.ctx(run)
        k, c, p = run.k, run.c, run.p
        s = self.st[k]
        if k == self.last_pos and self.trailing is not None and c >= s.min:
            if self.trailing.contiguity == "not_strict":
                return False
            if all(not self._all(self.trailing.conditions, y, ctx) for y in range(p + 1, i + 1)):
                return True
        if (s.max is None or c < s.max) and all(self.inner_skips(run, y, ctx) for y in range(p + 1, i + 1)):
            return True
        if c >= s.min:
            for k2 in self.later(k):
                if all(self.entry_skips(run, k2, y, ctx) for y in range(p + 1, i + 1)):
                    return True
        return False

    def matches(self, skip: str) -> list[tuple[Run, int]]:
        """(run, match_end) of every match emitted, in emission order."""
        return [(r, end) for _o, r, end in combined_matches([self], skip)]

    def _not_timed_out(self, run: Run, i: int, now: int) -> bool:
        if self.W is None:
            return True
        ref = self.t[run.p] if self.prev_gap else self.t[run.start]
        return now - ref < self.W

    def prune_bound(self, m: Run, skip: str) -> int:
        positions = [y for y, _ in m.taken]
        if skip == "skip_to_next":
            return min(positions) + 1
        if skip == "skip_past_last_event":
            return max(positions) + 1
        kind, _, stage = skip.partition(":")
        ks = [y for y, k in m.taken if self.st[k].name == stage]
        if not ks:
            return -1
        return ks[0] if kind == "skip_to_first" else ks[-1]


# --- the matches and the skip strategy, over the runs of one or more flat patterns --------------------------
def combined_matches(oracles: list[Oracle], skip: str) -> list[tuple[Oracle, Run, int]]:
    """(oracle, run, match_end) of every match emitted, in emission order. Several oracles (the flat
    expansions of a pattern with groups) share the events; a match found by several counts once, a partial
    match alive in any of them holds back later ones."""
    if not oracles:
        return []
    o0 = oracles[0]
    t, n = o0.t, o0.n
    runs: list[tuple[Oracle, Run]] = [(o, r) for o in oracles for r in o.runs()]
    done: list[tuple[Oracle, Run, tuple[str, int]]] = []
    seen: set[tuple[Any, ...]] = set()
    for o, r in runs:
        d = o.completes(r)
        if d is None:
            continue
        label = tuple((y, o.st[k].name) for y, k in r.taken)
        if label in seen:
            continue
        seen.add(label)
        done.append((o, r, d))
    if skip == "no_skip":
        return [(o, r, t[d[1]] if d[0] == "at" else d[1]) for o, r, d in done]
    at: dict[int, list[tuple[Oracle, Run]]] = {}
    deadline: list[tuple[int, Oracle, Run]] = []
    ends: dict[int, int] = {}
    for o, r, d in done:
        if d[0] == "at":
            at.setdefault(d[1], []).append((o, r))
            ends[id(r)] = t[d[1]]
        else:
            deadline.append((d[1], o, r))
            ends[id(r)] = d[1]
    emitted: list[tuple[Oracle, Run, int]] = []
    held: list[tuple[Oracle, Run]] = []
    thr = -1  # starts below thr are pruned
    partials = [(o, r) for o, r in runs if o.partial(r)]

    index = {s.name: k for k, s in enumerate(o0.pat_orig.stages)}

    def order(item: tuple[Oracle, Run]) -> tuple[Any, ...]:
        """By start, then events, then the (pattern's) stages that took them."""
        o, r = item
        return (r.start, tuple(y for y, _ in r.taken), tuple(index[o.st[k].name] for _, k in r.taken))

    def emit_loop(alive_starts: list[int]) -> None:
        nonlocal thr, held
        while True:
            held = [x for x in held if x[1].start >= thr]
            if not held:
                return
            m = min(held, key=order)
            live = [s for s in alive_starts if s >= thr]
            if live and min(live) < m[1].start:
                return
            held.remove(m)
            emitted.append((m[0], m[1], ends[id(m[1])]))
            thr = max(thr, m[0].prune_bound(m[1], skip))

    pending_done: set[int] = set()
    for i in range(n):
        for d, o, r in deadline:
            if d <= t[i] and id(r) not in pending_done:
                pending_done.add(id(r))
                if r.start >= thr:
                    held.append((o, r))
        alive_before = [r.start for o, r in partials if i > 0 and r.p <= i - 1 and o.alive(r, i - 1)
                        and o._not_timed_out(r, i - 1, t[i])]
        emit_loop(alive_before)
        held.extend(x for x in at.get(i, []) if x[1].start >= thr)
        emit_loop([r.start for o, r in partials if r.p <= i and o.alive(r, i)])
    for _d, o, r in deadline:
        if id(r) not in pending_done and r.start >= thr:
            held.append((o, r))
    emit_loop([])
    return emitted


def expansions(pattern: Pattern, n: int) -> list[Pattern]:
    """Flat patterns (no groups) whose matches together are the pattern's: each group written out r times
    for every count r it allows (0 too when optional; at most n, as every repeat takes an event of its own).
    The group's first stage is entered with the group's contiguity on the first repeat, with its inner
    contiguity on the others, and repeats itself with the group's inner contiguity (Flink's rules)."""
    choices: list[list[tuple[Any, int]]] = []
    for g in pattern.groups:
        hi = n if g.max is None else min(g.max, n)
        counts = ([0] if g.optional else []) + list(range(g.min, hi + 1))
        choices.append([(g, r) for r in counts])
    out = []
    for combo in itertools.product(*choices):
        by_start = {g.start: (g, r) for g, r in combo}
        stages: list[Stage] = []
        k = 0
        while k < len(pattern.stages):
            if k not in by_start:
                stages.append(pattern.stages[k])
                k += 1
                continue
            g, r = by_start[k]
            for c in range(r):
                head = pattern.stages[g.start]
                stages.append(replace(head, contiguity=g.contiguity if c == 0 else g.inner, inner=g.inner))
                stages.extend(pattern.stages[g.start + 1:g.end + 1])
            k = g.end + 1
        if any(not s.negative for s in stages):
            out.append(Pattern(tuple(stages), pattern.within_ms, pattern.within_between))
    return out


def oracle_matches(pattern: Pattern, frame: pl.DataFrame, key: str, skip: str = "no_skip",
                   order: tuple[str, ...] = ("t", "i")) -> list[tuple[Any, ...]]:
    """Every match as (key, {stage: ids}, match_end), sorted. `frame` has columns t, i (arrival), key."""
    out = []
    for (kv,), part in frame.sort(*order).group_by([key], maintain_order=True):
        events = part.to_dicts()
        flat = expansions(pattern, len(events)) if pattern.groups else [pattern]
        for o, run, end in combined_matches([Oracle(p, events, part, pattern) for p in flat], skip):
            out.append(canon(kv, _ids(o, run, events), end))
    return sorted(out)


def _ids(o: Oracle, run: Run, events: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    ids: dict[str, list[int]] = {}
    for y, k in run.taken:
        ids.setdefault(o.st[k].name, []).append(events[y]["i"])
    return {k: tuple(v) for k, v in ids.items()}


def canon(key: Any, ids: dict[str, tuple[int, ...]], end: int) -> tuple[Any, ...]:
    return (key, tuple(sorted(ids.items())), end)
