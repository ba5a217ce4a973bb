"""The pattern builder: immutable data, like every other part of a plan. Semantics are Flink CEP's
(docs/cep.md states them):

    Pattern.begin("small").where(pl.col("amount") < 10)
           .followed_by("large").where(pl.col("amount") > 1000)
           .within(timedelta(minutes=10))

Contiguity says what may come between the previous stage's last event and this stage's first:
  next               nothing (strict): any other event of the key breaks the partial match
  followed_by        anything that does not satisfy this stage (skip till next match)
  followed_by_any    anything (skip till any match): every satisfying event starts its own branch
  not_next           the next event must not satisfy this (negative) stage
  not_followed_by    no event before the next stage's first may satisfy this (negative) stage
A quantifier (`times`, `times_or_more`, `one_or_more`, `optional`) repeats a stage; between its repeats
the contiguity is relaxed unless `consecutive()` (strict) or `allow_combinations()` (any). A loop or an
optional stage branches at every point where it may be left; `greedy()` stops it from leaving while it
can take the event, `until(cond)` ends it at an event satisfying `cond`.
A condition is a Polars expression over the event (vectorized), or a Python function
`(event, matched) -> bool` where `matched` maps earlier stage names to their events.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import polars as pl

from sluice.core.errors import PlanError
from sluice.core.show import show_expr

Condition = pl.Expr | Callable[[dict[str, Any], dict[str, list[dict[str, Any]]]], bool]
CONTIGUITY = ("strict", "relaxed", "any", "not_strict", "not_relaxed")
VERBS = {"strict": "next", "relaxed": "followed_by", "any": "followed_by_any", "not_strict": "not_next",
         "not_relaxed": "not_followed_by"}
INNER = {"strict": "consecutive()", "any": "allow_combinations()"}
WITHIN_BETWEEN = ("first_and_last", "previous_and_current")
SKIPS = ("no_skip", "skip_to_next", "skip_past_last_event")
SKIP_TO = ("skip_to_first", "skip_to_last")


@dataclass(frozen=True)
class AnyOf:
    """Python-function conditions joined by or_where: true when all of some option's conditions hold."""
    options: tuple[tuple[Any, ...], ...]

    def __call__(self, event: dict[str, Any], matched: dict[str, list[dict[str, Any]]]) -> bool:
        return any(all(c(event, matched) for c in option) for option in self.options)


@dataclass(frozen=True, eq=False)
class Stage:
    name: str
    contiguity: str  # how this stage follows the previous one (CONTIGUITY)
    conditions: tuple[Condition, ...] = ()
    min: int = 1
    max: int | None = 1  # None: unbounded
    optional: bool = False  # none, or min…max occurrences
    inner: str = "relaxed"  # contiguity between repeats: strict | relaxed | any
    greedy: bool = False
    until: tuple[Condition, ...] = ()

    @property
    def negative(self) -> bool:
        return self.contiguity.startswith("not_")

    @property
    def quantified(self) -> bool:
        return (self.min, self.max) != (1, 1)


@dataclass(frozen=True)
class Group:
    """A group pattern with a quantifier: stages start…end (inclusive) repeat as one unit (Flink's
    GroupPattern). Its first stage is entered with `contiguity` the first time, with `inner` on repeats."""
    start: int
    end: int
    contiguity: str
    min: int = 1
    max: int | None = 1
    optional: bool = False
    inner: str = "relaxed"

    @property
    def quantified(self) -> bool:
        return (self.min, self.max) != (1, 1)


@dataclass(frozen=True, eq=False)
class Pattern:
    stages: tuple[Stage, ...]
    within_ms: int | None = None
    within_between: str = "first_and_last"
    group: int = 0  # > 0: the last `group` stages were added as one group pattern
    groups: tuple[Group, ...] = ()  # the quantified or optional groups, in stage order

    @staticmethod
    def begin(name: str | Pattern) -> Pattern:
        """Start a pattern with a stage, or with a group (a pattern whose stages come first)."""
        if isinstance(name, Pattern):
            return Pattern((), group=0)._add(name, "relaxed")
        return Pattern((Stage(name, "relaxed"),))

    def _add(self, name: str | Pattern, contiguity: str) -> Pattern:
        if isinstance(name, Pattern):  # a group: its stages, the first one entered with `contiguity`
            if name.within_ms is not None:
                raise PlanError("a group pattern cannot have its own within(); put within() on the whole pattern")
            if name.groups:
                raise PlanError("a group pattern inside a group pattern: only one level of quantified groups is "
                                "supported. Fix: quantify the inner group's stages, or flatten it")
            first = name.stages[0]
            if first.negative:
                raise PlanError(f"group pattern starting with {first.name!r}: a group cannot begin with a negation")
            inner = (replace(first, contiguity=contiguity), *name.stages[1:])
            out = self
            for st in inner:
                out = out._add(st.name, st.contiguity)
                out = replace(out, stages=(*out.stages[:-1], st))
            return replace(out, group=len(inner))
        if not isinstance(name, str):
            raise PlanError(f"pattern stage {name!r}: a stage is a name (str) or a group (sl.Pattern)")
        if any(s.name == name for s in self.stages):
            raise PlanError(f"pattern stage {name!r} is named twice")
        return replace(self, stages=(*self.stages, Stage(name, contiguity)), group=0)

    def next(self, name: str) -> Pattern:
        return self._add(name, "strict")

    def followed_by(self, name: str) -> Pattern:
        return self._add(name, "relaxed")

    def followed_by_any(self, name: str) -> Pattern:
        return self._add(name, "any")

    def not_next(self, name: str) -> Pattern:
        """The event right after the previous stage must not satisfy this stage's conditions."""
        return self._add(name, "not_strict")

    def not_followed_by(self, name: str) -> Pattern:
        """No event between the previous stage and the next one may satisfy this stage's conditions. Last in
        a pattern it needs `within`: the match is emitted when `within` runs out without such an event."""
        return self._add(name, "not_relaxed")

    def _last(self, what: str, **changes: Any) -> Pattern:
        if self.group:
            raise PlanError(f"{what}() after a group pattern: a group pattern takes times / times_or_more / "
                            "one_or_more / optional / consecutive / allow_combinations only (as Flink's "
                            "GroupPattern). Fix: apply it to the group's own stages")
        return replace(self, stages=(*self.stages[:-1], replace(self.stages[-1], **changes)))

    def _the_group(self, what: str) -> Group:
        """The group just added (a fresh one if it has no quantifier yet), checked for what this engine runs."""
        start = len(self.stages) - self.group
        if self.groups and self.groups[-1].start == start:
            return self.groups[-1]
        head = self.stages[start]
        for st in self.stages[start:]:
            bad = ("a negative stage" if st.negative else "greedy()" if st.greedy else
                   "an optional first stage" if st is head and st.optional else None)
            if bad:
                raise PlanError(f"{what} on a group pattern with {bad} ({st.name!r}) is not supported. Fix: "
                                "move it out of the group")
        return Group(start, len(self.stages) - 1, head.contiguity)

    def _set_group(self, g: Group) -> Pattern:
        keep = tuple(x for x in self.groups if x.start != g.start)
        return replace(self, groups=(*keep, g))

    def _quantify(self, what: str, lo: int, hi: int | None, optional: bool = False) -> Pattern:
        if self.group:
            g = self._the_group(what)
            if g.quantified:
                raise PlanError(f"the group pattern already has a quantifier; {what} would replace it")
            return self._set_group(replace(g, min=lo, max=hi, optional=g.optional or optional))
        st = self.stages[-1]
        if st.negative:
            raise PlanError(f"pattern stage {st.name!r}: {what} cannot be applied to a negative stage "
                            f"({VERBS[st.contiguity]})")
        if st.quantified:
            raise PlanError(f"pattern stage {st.name!r} already has a quantifier; {what} would replace it. Fix: "
                            "use one of times / times_or_more / one_or_more per stage")
        return self._last(what, min=lo, max=hi, optional=st.optional or optional)

    def where(self, condition: Condition) -> Pattern:
        """Add a condition to the last stage (several conditions must all hold)."""
        return self._last("where", conditions=(*self.stages[-1].conditions, condition))

    def or_where(self, condition: Condition) -> Pattern:
        """Flink's `or()`: the last stage's conditions so far, or this one. `where(a).where(b).or_where(c)`
        is (a and b) or c; a `where` after it applies to the whole. Expressions and Python functions are not
        mixed in one or_where."""
        if self.group:
            self._last("or_where")
        st = self.stages[-1]
        if not st.conditions:
            raise PlanError(f"pattern stage {st.name!r}: or_where() needs a where() before it (a stage without "
                            "conditions takes every event)")
        kinds = {isinstance(c, pl.Expr) for c in (*st.conditions, condition)}
        if len(kinds) > 1:
            raise PlanError(f"pattern stage {st.name!r}: or_where() joins a Polars expression and a Python "
                            "function; write both sides as expressions, or both as functions")
        if isinstance(condition, pl.Expr):
            # Kleene logic and a null taken as false at the end equal nulls taken as false first: and/or are
            # monotone, so the expression shows as the user wrote it
            exprs = [c for c in st.conditions if isinstance(c, pl.Expr)]
            joined: Condition = functools.reduce(operator.and_, exprs) | condition
        else:
            joined = AnyOf((tuple(st.conditions), (condition,)))
        return self._last("or_where", conditions=(joined,))

    def times(self, n: int, m: int | None = None) -> Pattern:
        """Exactly n occurrences, or n to m; times(0, m) is times(1, m).optional()."""
        hi = n if m is None else m
        if n < 0 or hi < max(n, 1):
            raise PlanError(f"times({n}, {m}): need 0 ≤ n ≤ m and m ≥ 1")
        return self._quantify(f"times({n}, {m})", max(n, 1), hi, optional=n == 0)

    def times_or_more(self, n: int) -> Pattern:
        if n < 1:
            raise PlanError(f"times_or_more({n}): need n ≥ 1 (times_or_more(0) is one_or_more().optional())")
        return self._quantify(f"times_or_more({n})", n, None)

    def one_or_more(self) -> Pattern:
        return self._quantify("one_or_more()", 1, None)

    def optional(self) -> Pattern:
        if self.group:
            return self._set_group(replace(self._the_group("optional()"), optional=True))
        st = self.stages[-1]
        if st.negative:
            raise PlanError(f"pattern stage {st.name!r}: a negative stage cannot be optional")
        return self._last("optional", optional=True)

    def _group_inner(self, what: str, inner: str) -> Pattern:
        g = self._the_group(what)
        if not g.quantified:
            raise PlanError(f"{what} on a group pattern needs a quantifier before it (times, times_or_more, "
                            "one_or_more)")
        return self._set_group(replace(g, inner=inner))

    def _quantified(self, what: str) -> Stage:
        if self.group:
            self._last(what)
        st = self.stages[-1]
        if not st.quantified:
            raise PlanError(f"pattern stage {st.name!r}: {what} needs a quantifier before it (times, "
                            "times_or_more, one_or_more)")
        return st

    def consecutive(self) -> Pattern:
        """The repeats of this stage follow each other strictly (no other event of the key between)."""
        if self.group:
            return self._group_inner("consecutive()", "strict")
        self._quantified("consecutive()")
        return self._last("consecutive", inner="strict")

    def allow_combinations(self) -> Pattern:
        """Between the repeats of this stage anything may come, and every combination is a match."""
        if self.group:
            return self._group_inner("allow_combinations()", "any")
        self._quantified("allow_combinations()")
        return self._last("allow_combinations", inner="any")

    def greedy(self) -> Pattern:
        """Repeat as often as possible: the next stage may not take (or skip) an event this stage could take."""
        st = self._quantified("greedy()")
        if st.max == st.min:
            raise PlanError(f"pattern stage {st.name!r}: greedy() needs a range of repeats (times(n, m) with "
                            "n < m, times_or_more, one_or_more)")
        return self._last("greedy", greedy=True)

    def until(self, condition: Condition) -> Pattern:
        """End this looping stage at an event that satisfies `condition` (that event is not taken)."""
        if self.group:
            self._last("until")
        st = self.stages[-1]
        if st.max is not None:
            raise PlanError(f"pattern stage {st.name!r}: until() applies to a looping stage (one_or_more or "
                            "times_or_more) only")
        return self._last("until", until=(*st.until, condition))

    def within(self, duration: timedelta, *, between: str = "first_and_last") -> Pattern:
        """A match's last event must come less than `duration` after its first (between="first_and_last",
        Flink's rule), or each event less than `duration` after the one before it ("previous_and_current")."""
        if between not in WITHIN_BETWEEN:
            raise PlanError(f"within(between={between!r}): choose one of {WITHIN_BETWEEN}")
        ms = duration // timedelta(milliseconds=1)
        if ms <= 0:
            raise PlanError(f"within({duration!r}): the duration must be positive")
        return replace(self, within_ms=ms, within_between=between)

    def group_of(self, k: int) -> Group | None:
        """The quantified or optional group stage k belongs to."""
        return next((g for g in self.groups if g.start <= k <= g.end), None)

    def repeats(self, k: int) -> bool:
        """May stage k take more than one event of a match?"""
        g = self.group_of(k)
        return self.stages[k].max != 1 or (g is not None and g.max != 1)

    def skippable(self, k: int) -> bool:
        g = self.group_of(k)
        return self.stages[k].optional or (g is not None and g.optional)

    def check(self, step: str) -> None:
        """Reject shapes this engine cannot run, naming the stage and the fix."""
        first, last = self.stages[0], self.stages[-1]
        if first.negative:
            raise PlanError(f"match {step!r}: a pattern cannot begin with a negative stage")
        for i, st in enumerate(self.stages):
            if not st.negative:
                continue
            before = self.stages[i - 1]
            if i + 1 < len(self.stages) and self.group_of(i + 1) is not None:
                raise PlanError(f"match {step!r}: negative stage {st.name!r} right before a quantified group "
                                "pattern is not supported. Fix: put a single stage between them")
            if self.group_of(i - 1) is not None:
                raise PlanError(f"match {step!r}: negative stage {st.name!r} right after a quantified group "
                                "pattern is not supported. Fix: put a single stage between them")
            if before.negative or before.optional:
                raise PlanError(f"match {step!r}: negative stage {st.name!r} cannot follow an optional or negative "
                                f"stage ({before.name!r}), as in Flink. Fix: write the pattern twice, with and "
                                "without the optional stage")
            for after in self.stages[i + 1:]:
                if not after.optional:
                    break
                if after.quantified:
                    raise PlanError(f"match {step!r}: negative stage {st.name!r} before the optional, quantified "
                                    f"stage {after.name!r} is not supported. Fix: make it a single optional stage, "
                                    "or write the pattern twice, with and without it")
        if last.contiguity == "not_relaxed" and len(self.stages) > 1 and self.stages[-2].quantified:
            raise PlanError(f"match {step!r}: a pattern that ends in not_followed_by right after a quantified stage "
                            f"({self.stages[-2].name!r}) is not supported: in Flink's NFA such a partial match "
                            "only becomes pending at the next event. Fix: end with a single stage before the "
                            "negation")
        if last.contiguity == "not_relaxed" and self.within_ms is None:
            raise PlanError(f"match {step!r}: a pattern that ends in not_followed_by needs within(...): the match "
                            "is emitted when that time has passed without the negated event")
        if all(self.skippable(k) or s.negative for k, s in enumerate(self.stages)):
            raise PlanError(f"match {step!r}: every stage is optional, so the empty sequence would match")

    def __str__(self) -> str:
        """The pattern as the builder calls that make it, quantifiers and `within` included."""
        calls = []
        i = 0
        while i < len(self.stages):
            s = self.stages[i]
            g = next((g for g in self.groups if g.start == i), None)
            if g is not None:
                head = replace(s, contiguity="relaxed")
                inner = str(Pattern((head, *self.stages[i + 1:g.end + 1])))
                calls.append(f"begin({inner})" if i == 0 else f"{VERBS[g.contiguity]}({inner})")
                calls += _quantifier(g)
                i = g.end + 1
                continue
            calls.append(f"begin({s.name!r})" if i == 0 else f"{VERBS[s.contiguity]}({s.name!r})")
            calls += [f"where({_show_condition(c)})" for c in s.conditions]
            calls += _quantifier(s)
            calls += [f"until({_show_condition(c)})" for c in s.until]
            i += 1
        if self.within_ms is not None:
            w = f"within({timedelta(milliseconds=self.within_ms)!r}".replace("datetime.", "")
            calls.append(w + (")" if self.within_between == "first_and_last" else f", between={self.within_between!r})"))
        return "Pattern." + ".".join(calls)

    def describe(self) -> str:
        parts = []
        for k, s in enumerate(self.stages):
            q = "" if not s.quantified else f"{{{s.min},{'' if s.max is None else s.max}}}"
            q += "?" if s.optional else ""
            part = f"{s.contiguity}:{s.name}{q}[{', '.join(_show_condition(c) for c in s.conditions)}]"
            for g in self.groups:
                if g.start == k:
                    part = "(" + part
                if g.end == k:
                    part += ")" + ("" if not g.quantified else f"{{{g.min},{'' if g.max is None else g.max}}}") \
                        + ("?" if g.optional else "")
            parts.append(part)
        return " → ".join(parts) + (f" within {self.within_ms} ms" if self.within_ms is not None else "")


def _show_condition(c: Condition) -> str:
    if isinstance(c, AnyOf):
        return " or ".join("(" + " and ".join(_show_condition(x) for x in o) + ")" for o in c.options)
    return show_expr(c) if isinstance(c, pl.Expr) else getattr(c, "__qualname__", "fn")


def _quantifier(s: Stage | Group) -> list[str]:
    """The builder calls that give a stage its quantifier."""
    out = []
    if s.max is None:
        out.append("one_or_more()" if s.min == 1 else f"times_or_more({s.min})")
    elif s.quantified:
        out.append(f"times({s.min})" if s.min == s.max else f"times({s.min}, {s.max})")
    if s.inner != "relaxed":
        out.append(INNER[s.inner])
    if isinstance(s, Stage) and s.greedy:
        out.append("greedy()")
    if s.optional:
        out.append("optional()")
    return out


def check_skip(name: str, skip: str, pattern: Pattern) -> None:
    if skip in SKIPS:
        return
    kind, _, stage = skip.partition(":")
    if kind in SKIP_TO:
        if stage not in {s.name for s in pattern.stages if not s.negative}:
            raise PlanError(f"match {name!r}: skip={skip!r} names stage {stage!r}, which the pattern does not "
                            f"have; its stages: {', '.join(s.name for s in pattern.stages if not s.negative)}")
        return
    raise PlanError(f"match {name!r}: skip must be one of {SKIPS} or 'skip_to_first:<stage>' / "
                    f"'skip_to_last:<stage>', got {skip!r}")
