"""The pattern builder: immutable data, like every other part of a plan.

    Pattern.begin("small").where(pl.col("amount") < 10)
           .followed_by("large").where(pl.col("amount") > 1000)
           .within(timedelta(minutes=10))

Contiguity says what may come between the previous stage's event and this one:
  next            nothing (strict): any other event of the key breaks the partial match
  followed_by     anything; the first matching event is taken (skip till next match)
  followed_by_any anything; every matching event is taken, each in its own partial match
A quantified stage (`times`, `one_or_more`, `optional`) repeats with the contiguity it was entered with.
A condition is a Polars expression over the event (vectorized), or a Python function
`(event, matched) -> bool` where `matched` maps earlier stage names to their events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import polars as pl

from sluice.core.errors import PlanError
from sluice.core.show import show_expr

Condition = pl.Expr | Callable[[dict[str, Any], dict[str, list[dict[str, Any]]]], bool]
CONTIGUITY = ("strict", "relaxed", "any")


@dataclass(frozen=True, eq=False)
class Stage:
    name: str
    contiguity: str  # how this stage follows the previous one: strict | relaxed | any
    conditions: tuple[Condition, ...] = ()
    min: int = 1
    max: int | None = 1  # None: unbounded


@dataclass(frozen=True, eq=False)
class Pattern:
    stages: tuple[Stage, ...]
    within_ms: int | None = None

    @staticmethod
    def begin(name: str) -> Pattern:
        return Pattern((Stage(name, "relaxed"),))

    def _add(self, name: str, contiguity: str) -> Pattern:
        if any(s.name == name for s in self.stages):
            raise PlanError(f"pattern stage {name!r} is named twice")
        return replace(self, stages=(*self.stages, Stage(name, contiguity)))

    def next(self, name: str) -> Pattern:
        return self._add(name, "strict")

    def followed_by(self, name: str) -> Pattern:
        return self._add(name, "relaxed")

    def followed_by_any(self, name: str) -> Pattern:
        return self._add(name, "any")

    def _last(self, **changes: Any) -> Pattern:
        return replace(self, stages=(*self.stages[:-1], replace(self.stages[-1], **changes)))

    def where(self, condition: Condition) -> Pattern:
        """Add a condition to the last stage (several conditions must all hold)."""
        return self._last(conditions=(*self.stages[-1].conditions, condition))

    def times(self, n: int, m: int | None = None) -> Pattern:
        hi = n if m is None else m
        if n < 1 or hi < n:
            raise PlanError(f"times({n}, {m}): need 1 ≤ n ≤ m")
        return self._last(min=n, max=hi)

    def one_or_more(self) -> Pattern:
        return self._last(min=1, max=None)

    def optional(self) -> Pattern:
        if len(self.stages) == 1:
            raise PlanError("the first stage of a pattern cannot be optional")
        return self._last(min=0)

    def within(self, duration: timedelta) -> Pattern:
        """The whole match must span at most `duration` of event time."""
        return replace(self, within_ms=duration // timedelta(milliseconds=1))

    def __str__(self) -> str:
        """The pattern as the builder calls that make it, quantifiers and `within` included."""
        verbs = {"strict": "next", "relaxed": "followed_by", "any": "followed_by_any"}
        calls = []
        for i, s in enumerate(self.stages):
            calls.append(f"begin({s.name!r})" if i == 0 else f"{verbs[s.contiguity]}({s.name!r})")
            calls += [f"where({show_expr(c) if isinstance(c, pl.Expr) else getattr(c, '__qualname__', 'fn')})"
                      for c in s.conditions]
            calls += _quantifier(s.min, s.max)
        if self.within_ms is not None:
            calls.append(f"within({timedelta(milliseconds=self.within_ms)!r})".replace("datetime.", ""))
        return "Pattern." + ".".join(calls)

    def describe(self) -> str:
        parts = []
        for s in self.stages:
            q = "" if (s.min, s.max) == (1, 1) else f"{{{s.min},{'' if s.max is None else s.max}}}"
            parts.append(f"{s.contiguity}:{s.name}{q}[{', '.join(str(c) if isinstance(c, pl.Expr) else getattr(c, '__name__', 'fn') for c in s.conditions)}]")
        return " → ".join(parts) + (f" within {self.within_ms} ms" if self.within_ms is not None else "")


def _quantifier(lo: int, hi: int | None) -> list[str]:
    """The builder calls that give a stage min `lo` and max `hi` occurrences."""
    if (lo, hi) == (1, 1):
        return []
    if hi is None:
        return ["one_or_more()"] + (["optional()"] if lo == 0 else [])
    if lo == 0:
        return ([] if hi == 1 else [f"times(1, {hi})"]) + ["optional()"]
    return [f"times({lo})" if lo == hi else f"times({lo}, {hi})"]
