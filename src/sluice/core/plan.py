"""A pipeline is a plan: immutable data naming every step. Nothing runs until a runtime gets it.

Every front end (the Python `Flow` builder, SQL, CEP, CDC helpers) produces these steps. Stateful steps
(read, window, write) carry the stable name under which their state and metrics are found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import polars as pl

from sluice.core.errors import PlanError
from sluice.core.exprs import row_wise_problem
from sluice.core.schema import Schema
from sluice.core.show import show

OnError = str  # "fail" | "dead_letter"
ON_ERROR_CHOICES = ("fail", "dead_letter")


@dataclass(frozen=True)
class Ref:
    """An output port of a step: `out` is the main stream; others are `late`, `dead_letters`, branch labels."""

    step: str
    port: str = "out"

    def __str__(self) -> str:
        return self.step if self.port == "out" else f"{self.step}.{self.port}"


@dataclass(frozen=True, eq=False)
class Step:
    name: str
    inputs: tuple[Ref, ...]

    kind = "step"
    stateful = False

    def ports(self) -> tuple[str, ...]:
        return ("out",)

    def describe(self) -> str:
        parts = []
        for f in fields(self):
            if f.name in ("name", "inputs"):
                continue
            parts.append(f"{f.name}={_show(getattr(self, f.name))}")
        return ", ".join(parts)


def _show(value: Any) -> str:
    return show(value)


@dataclass(frozen=True, eq=False)
class Read(Step):
    source: Any
    schema: Schema | None
    on_error: OnError = "fail"
    kind = "read"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "dead_letters")


@dataclass(frozen=True, eq=False)
class Filter(Step):
    predicate: pl.Expr
    kind = "filter"


@dataclass(frozen=True, eq=False)
class Select(Step):
    exprs: tuple[pl.Expr, ...]
    kind = "select"


@dataclass(frozen=True, eq=False)
class WithColumns(Step):
    exprs: tuple[pl.Expr, ...]
    kind = "with_columns"


@dataclass(frozen=True, eq=False)
class Map(Step):
    fn: Callable[[dict[str, Any]], Any]
    flat: bool
    schema: Schema | None
    on_error: OnError = "fail"
    kind = "map"

    def ports(self) -> tuple[str, ...]:
        return ("out", "dead_letters")


@dataclass(frozen=True, eq=False)
class KeyBy(Step):
    keys: tuple[pl.Expr, ...]
    kind = "key_by"


@dataclass(frozen=True, eq=False)
class EventTime(Step):
    column: pl.Expr
    watermark: Any  # time.watermark.BoundedOutOfOrderness
    on_error: OnError = "fail"
    kind = "event_time"

    def ports(self) -> tuple[str, ...]:
        return ("out", "dead_letters")


@dataclass(frozen=True, eq=False)
class Window(Step):
    keys: tuple[pl.Expr, ...]
    window: Any  # time.windows.Tumbling | Sliding | Session
    aggregates: Mapping[str, Any]  # output column → time.aggregates.Aggregate
    kind = "window"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late")


@dataclass(frozen=True, eq=False)
class Process(Step):
    keys: tuple[pl.Expr, ...]
    fn: Any  # operators.process.KeyedProcessFunction
    schema: Schema | None
    side_outputs: tuple[str, ...] = ()
    on_error: OnError = "fail"
    kind = "process"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late", "dead_letters", *self.side_outputs)


@dataclass(frozen=True, eq=False)
class AsofJoin(Step):
    by: tuple[str, ...]
    tolerance_ms: int | None  # None: any age (a table's latest version)
    strict: bool = True
    how: str = "inner"
    right_order: str | None = None
    suffix: str = "_right"
    deleted: pl.Expr | None = None  # right rows where this holds are deletions (changelog tables)
    kind = "asof_join"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late")


@dataclass(frozen=True, eq=False)
class TemporalJoin(AsofJoin):
    """An as-of join against a changelog table: the table row as of the record's time, at any age."""

    kind = "temporal_join"


@dataclass(frozen=True, eq=False)
class IntervalJoin(Step):
    by: tuple[str, ...]
    lower_ms: int
    upper_ms: int
    how: str = "inner"
    suffix: str = "_right"
    kind = "interval_join"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late")


@dataclass(frozen=True, eq=False)
class DetectAnomalies(Step):
    keys: tuple[pl.Expr, ...]
    value: pl.Expr
    window_ms: int
    threshold: float = 3.0
    min_count: int = 10
    only_anomalies: bool = False
    kind = "detect_anomalies"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late")


@dataclass(frozen=True, eq=False)
class Match(Step):
    keys: tuple[pl.Expr, ...]
    pattern: Any  # cep.pattern.Pattern
    skip: str = "no_skip"
    kind = "match"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "timeouts", "late")


@dataclass(frozen=True, eq=False)
class WindowJoin(Step):
    by: tuple[str, ...]
    window: Any  # time.windows.Tumbling | Sliding
    suffix: str = "_right"
    kind = "window_join"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late")


@dataclass(frozen=True, eq=False)
class LookupJoin(Step):
    by: str
    lookup: Any  # connectors.lookup.RedisLookup
    how: str = "left"
    cache_ttl_s: float | None = 60.0
    cache_size: int = 100_000
    kind = "lookup_join"


@dataclass(frozen=True, eq=False)
class Union(Step):
    kind = "union"


@dataclass(frozen=True, eq=False)
class Branch(Step):
    routes: Mapping[str, pl.Expr]  # label → predicate; a row takes the first label that matches
    kind = "branch"

    def ports(self) -> tuple[str, ...]:
        return (*self.routes.keys(), "other")


@dataclass(frozen=True, eq=False)
class Write(Step):
    sink: Any
    kind = "write"
    stateful = True


def row_wise_exprs(step: Step) -> tuple[pl.Expr, ...]:
    """The expressions a step evaluates on each micro-batch as it comes: they must be row-wise."""
    if isinstance(step, Filter):
        return (step.predicate,)
    if isinstance(step, Select | WithColumns):
        return step.exprs
    if isinstance(step, Branch):
        return tuple(step.routes.values())
    if isinstance(step, KeyBy):
        return step.keys
    if isinstance(step, EventTime):
        return (step.column,)
    if isinstance(step, DetectAnomalies):
        return (step.value,)
    return ()


def check_row_wise(step: Step) -> None:
    """A PlanError if one of the step's per-batch expressions looks at other rows (DESIGN.md §3)."""
    for expr in row_wise_exprs(step):
        problem = row_wise_problem(expr)
        if problem is not None:
            raise PlanError(f"{step.kind} step {step.name!r}: {show(expr)} {problem}")


@dataclass(frozen=True)
class Plan:
    """The steps of one flow, in the order they were declared (which is a topological order)."""

    name: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise PlanError(f"flow {self.name!r} has no step {name!r}; steps: {', '.join(s.name for s in self.steps)}")

    def consumers(self, ref: Ref) -> list[Step]:
        return [s for s in self.steps if ref in s.inputs]

    def set_aside(self) -> list[Ref]:
        """The streams on which steps put records aside: every `late` stream, and `dead_letters` where
        the step has on_error="dead_letter"."""
        refs = []
        for s in self.steps:
            if "late" in s.ports():
                refs.append(Ref(s.name, "late"))
            if "dead_letters" in s.ports() and getattr(s, "on_error", "fail") == "dead_letter":
                refs.append(Ref(s.name, "dead_letters"))
        return refs

    def unrouted(self) -> list[Ref]:
        """Set-aside streams that no step reads: their records are counted, not kept."""
        read = {ref for s in self.steps for ref in s.inputs}
        return [ref for ref in self.set_aside() if ref not in read]

    def validate(self) -> None:
        seen: set[str] = set()
        for s in self.steps:
            if s.name in seen:
                raise PlanError(f"two steps are named {s.name!r}; step names must be unique in a flow")
            for ref in s.inputs:
                if ref.step not in seen:
                    raise PlanError(f"step {s.name!r} reads {ref} which is not declared before it")
                if ref.port not in self.step(ref.step).ports():
                    raise PlanError(f"step {s.name!r} reads port {ref.port!r} that {ref.step!r} does not have")
            check_row_wise(s)
            seen.add(s.name)
        if not any(isinstance(s, Write) for s in self.steps):
            raise PlanError(f"flow {self.name!r} writes nowhere; end it with .write(name, sink)")

    def explain(self) -> str:
        lines = [f"flow {self.name!r}: {len(self.steps)} steps"]
        for s in self.steps:
            src = ", ".join(str(r) for r in s.inputs)
            mark = " [stateful]" if s.stateful else ""
            arrow = f" <- {src}" if src else ""
            lines.append(f"  {s.name}: {s.kind}{mark}{arrow}")
            detail = s.describe()
            if detail:
                lines.append(f"      {detail}")
        return "\n".join(lines)
