"""A pipeline is a plan: immutable data naming every step. Nothing runs until a runtime gets it.

Every front end (the Python `Flow` builder, SQL, CEP, CDC helpers) produces these steps. Stateful steps
(read, window, write) carry the stable name under which their state and metrics are found.

A step kind is a frozen dataclass here plus an operator factory registered in `sluice.runtime.registry`.
It says what its checkpointed state depends on (`state_fields`, fingerprinted by `state_fingerprint`),
which columns key it (`key_columns`), and shows itself as plain data (`to_dict`). See docs/design/plan.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import polars as pl

from sluice.core.errors import PlanError
from sluice.core.exprs import row_wise_problem
from sluice.core.plain import canonical, code_hash, fingerprint_value, plain
from sluice.core.schema import Schema
from sluice.core.show import show

OnError = str  # "fail" | "dead_letter"
ON_ERROR_CHOICES = ("fail", "dead_letter")
ALL_KEY = "__sl_all"  # the key column of a window over all records (no key_by before it)
PLAN_FORMAT = "sluice.plan/1"


def key_names(keys: tuple[pl.Expr, ...]) -> list[str]:
    """The output column names of key expressions."""
    return [k.meta.output_name() for k in keys]


def _keys(keys: tuple[pl.Expr, ...]) -> list[str]:
    return [str(k) for k in keys]


@dataclass(frozen=True)
class Ref:
    """An output port of a step: `out` is the main stream; others are `late`, `dead_letters`, branch labels."""

    step: str
    port: str = "out"

    def __str__(self) -> str:
        return self.step if self.port == "out" else f"{self.step}.{self.port}"


@dataclass(frozen=True, eq=False)
class Step:
    """One step of a plan: its stable `name` and the output ports of other steps it reads (`inputs`)."""

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

    def state_fields(self) -> dict[str, Any] | None:
        """Every parameter that shapes this step's checkpointed state, as named JSON values (see
        `core.plain.fingerprint_value`). None: the step keeps no state whose meaning can change."""
        return None

    def state_fingerprint(self) -> str:
        """`state_fields` with the kind, as canonical JSON; "" for a step with nothing to check. A resume
        restores a step's state only if the fingerprint saved with it equals this one."""
        found = self.state_fields()
        return "" if found is None else canonical({"kind": self.kind, **found})

    def key_columns(self) -> tuple[str, ...] | None:
        """The columns this step's state is keyed by, resolved; () when it keeps one state for all
        records; None when keys do not apply to it."""
        return None

    def params(self) -> dict[str, Any]:
        """The step's own fields as plain data (secrets redacted)."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("name", "inputs")}

    def to_dict(self) -> dict[str, Any]:
        fp = self.state_fingerprint()
        keys = self.key_columns()
        return {
            "name": self.name,
            "kind": self.kind,
            "inputs": [{"step": r.step, "port": r.port} for r in self.inputs],
            "ports": list(self.ports()),
            "stateful": self.stateful,
            "key_columns": None if keys is None else list(keys),
            "fingerprint": json.loads(fp) if fp else None,
            "params": self.params(),
        }


class _Keyed(Step):
    """A step whose state is kept per value of its `keys` expressions."""

    keys: tuple[pl.Expr, ...]

    def key_columns(self) -> tuple[str, ...] | None:
        return tuple(n for n in key_names(self.keys) if n != ALL_KEY)


class _Joined(Step):
    """A step whose state is kept per value of its `by` columns."""

    by: tuple[str, ...]

    def key_columns(self) -> tuple[str, ...] | None:
        return tuple(self.by)


def _show(value: Any) -> str:
    return show(value)


@dataclass(frozen=True, eq=False)
class Read(Step):
    """Records from `source`, decoded to `schema`; undecodable ones fail the run or go to `dead_letters`."""

    source: Any
    schema: Schema | None
    on_error: OnError = "fail"
    kind = "read"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "dead_letters")


@dataclass(frozen=True, eq=False)
class Filter(Step):
    """The rows where `predicate` holds."""

    predicate: pl.Expr
    kind = "filter"


@dataclass(frozen=True, eq=False)
class ToChangelog(Step):
    """Declares the stream a changelog of a table keyed by `keys`: each row gets its kind in `_op`
    (core/changelog.py) from `op`, an expression giving +I / -U / +U / -D."""

    keys: tuple[str, ...]
    op: pl.Expr
    kind = "changelog"

    def key_columns(self) -> tuple[str, ...] | None:
        return self.keys


@dataclass(frozen=True, eq=False)
class Select(Step):
    """Only the columns `exprs` give."""

    exprs: tuple[pl.Expr, ...]
    kind = "select"


@dataclass(frozen=True, eq=False)
class WithColumns(Step):
    """Every column, with those `exprs` give added or replaced."""

    exprs: tuple[pl.Expr, ...]
    kind = "with_columns"


@dataclass(frozen=True, eq=False)
class Map(Step):
    """A Python function per record (a dict): it returns the new record, or with `flat` any number of them."""

    fn: Callable[[dict[str, Any]], Any]
    flat: bool
    schema: Schema | None
    on_error: OnError = "fail"
    kind = "map"

    def ports(self) -> tuple[str, ...]:
        return ("out", "dead_letters")


@dataclass(frozen=True, eq=False)
class KeyBy(_Keyed):
    """Names the key columns the stateful steps after it keep their state by."""

    keys: tuple[pl.Expr, ...]
    kind = "key_by"


@dataclass(frozen=True, eq=False)
class EventTime(Step):
    """Each record's event time from `column`, and the watermark that follows it (`watermark`)."""

    column: pl.Expr
    watermark: Any  # time.watermark.BoundedOutOfOrderness
    on_error: OnError = "fail"
    kind = "event_time"

    def ports(self) -> tuple[str, ...]:
        return ("out", "dead_letters")

    def state_fields(self) -> dict[str, Any] | None:
        # its state is the largest event time per source partition; the watermark derives from it
        return {"column": fingerprint_value(self.column), "watermark": fingerprint_value(self.watermark)}


@dataclass(frozen=True, eq=False)
class Window(_Keyed):
    """Aggregates per key and window. With the defaults each window is emitted once, when the watermark
    passes its end. An `emit` that fires early (time.windows.Emit) or an allowed lateness makes the output
    an upsert changelog keyed by (keys, window_start): see `emits_updates` and docs/design/time.md."""

    keys: tuple[pl.Expr, ...]
    window: Any  # time.windows.Tumbling | Sliding | Session
    aggregates: Mapping[str, Any]  # output column → time.aggregates.Aggregate
    emit: Any = None  # time.windows.Emit; None: once, on close
    allowed_lateness_ms: int = 0  # windows stay open for late records until W ≥ end + this
    kind = "window"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late")

    @property
    def emits_early(self) -> bool:
        return bool(getattr(self.emit, "early", False))

    @property
    def emits_updates(self) -> bool:
        """Whether a window may come out more than once (its output is then a changelog, or deltas)."""
        return self.emits_early or self.allowed_lateness_ms > 0

    @property
    def emits_deltas(self) -> bool:
        """Whether a window's later rows carry the change since its last row (Emit(updates="deltas"))."""
        return self.emits_updates and bool(getattr(self.emit, "deltas", False))

    def _defaults(self) -> set[str]:
        out = set()
        if not self.emits_early and not self.emits_deltas:
            out.add("emit")
        if self.allowed_lateness_ms == 0:
            out.add("allowed_lateness_ms")
        return out

    def describe(self) -> str:
        skip = self._defaults()
        return ", ".join(f"{f.name}={_show(getattr(self, f.name))}" for f in fields(self)
                         if f.name not in ("name", "inputs", *skip))

    def params(self) -> dict[str, Any]:
        skip = self._defaults()
        return {k: v for k, v in super().params().items() if k not in skip}

    def state_fields(self) -> dict[str, Any] | None:
        # emission and lateness only when set: a default window's fingerprint is what it always was
        found = {"keys": _keys(self.keys), "window": fingerprint_value(self.window),
                 "aggregates": {k: fingerprint_value(a) for k, a in sorted(self.aggregates.items())}}
        if self.emits_early or self.emits_deltas:
            interval = getattr(self.emit, "interval_ms", None)
            found["emit"] = {"mode": self.emit.mode, **({"interval_ms": interval} if interval is not None else {}),
                             **({"updates": "deltas"} if self.emits_deltas else {})}
        if self.allowed_lateness_ms:
            found["allowed_lateness_ms"] = self.allowed_lateness_ms
        return found

    def changelog_columns(self) -> tuple[str, ...] | None:
        """The key of its output changelog, when it emits updates: its key columns and window_start. Deltas
        are no changelog: each row adds to the window's row, it does not replace it."""
        keys = self.key_columns() or ()
        return (*keys, "window_start") if self.emits_updates and not self.emits_deltas else None


@dataclass(frozen=True, eq=False)
class Process(_Keyed):
    """A keyed process function (`fn`) with its own state and timers per key."""

    keys: tuple[pl.Expr, ...]
    fn: Any  # operators.process.KeyedProcessFunction
    schema: Schema | None
    side_outputs: tuple[str, ...] = ()
    on_error: OnError = "fail"
    kind = "process"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late", "dead_letters", *self.side_outputs)

    def state_fields(self) -> dict[str, Any] | None:
        # the function's class and its code: what its state handles hold is whatever that code puts there
        # (by qualified name without the module: `python pipeline.py` and `sluice run pipeline.py` load
        # the same file as different modules)
        cls = type(self.fn)
        return {"keys": _keys(self.keys), "function": cls.__qualname__, "code": code_hash(cls),
                "schema": fingerprint_value(self.schema), "side_outputs": list(self.side_outputs)}


@dataclass(frozen=True, eq=False)
class AsofJoin(_Joined):
    """Each record with the latest right record of the same `by` key at most `tolerance_ms` earlier."""

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

    def state_fields(self) -> dict[str, Any] | None:
        return {"by": list(self.by), "tolerance_ms": self.tolerance_ms, "strict": self.strict, "how": self.how,
                "right_order": self.right_order, "deleted": fingerprint_value(self.deleted)}


@dataclass(frozen=True, eq=False)
class TemporalJoin(AsofJoin):
    """An as-of join against a changelog table: the table row as of the record's time, at any age."""

    kind = "temporal_join"


@dataclass(frozen=True, eq=False)
class IntervalJoin(_Joined):
    """Each record with every right record of the same `by` key whose time is in [time + lower_ms, time + upper_ms]."""

    by: tuple[str, ...]
    lower_ms: int
    upper_ms: int
    how: str = "inner"
    suffix: str = "_right"
    kind = "interval_join"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late")

    def state_fields(self) -> dict[str, Any] | None:
        return {"by": list(self.by), "lower_ms": self.lower_ms, "upper_ms": self.upper_ms, "how": self.how}


@dataclass(frozen=True, eq=False)
class DetectAnomalies(_Keyed):
    """Per key, each record's `value` against the key's records in the preceding `window_ms` (mean, stddev, z-score)."""

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

    def state_fields(self) -> dict[str, Any] | None:
        return {"keys": _keys(self.keys), "value": fingerprint_value(self.value), "window_ms": self.window_ms,
                "threshold": self.threshold, "min_count": self.min_count}


@dataclass(frozen=True, eq=False)
class Match(_Keyed):
    """The matches of a CEP `pattern` per key."""

    keys: tuple[pl.Expr, ...]
    pattern: Any  # cep.pattern.Pattern
    skip: str = "no_skip"
    order_by: tuple[str, ...] = ()  # tie-breaker for equal event times, before arrival order
    time: str = "event"  # "processing": arrival order, within on the wall clock
    kind = "match"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "timeouts", "late")

    def state_fields(self) -> dict[str, Any] | None:
        # stages with their contiguity, conditions (expressions, or functions by name and code) and
        # quantifiers, and `within`: partial matches are positions in this pattern
        return {"keys": _keys(self.keys), "pattern": fingerprint_value(self.pattern), "skip": self.skip,
                "order_by": list(self.order_by), "time": self.time, "nfa": 2}


@dataclass(frozen=True, eq=False)
class WindowJoin(_Joined):
    """The pairs of records of the same `by` key that fall in the same `window`, when the window closes."""

    by: tuple[str, ...]
    window: Any  # time.windows.Tumbling | Sliding
    suffix: str = "_right"
    kind = "window_join"
    stateful = True

    def ports(self) -> tuple[str, ...]:
        return ("out", "late")

    def state_fields(self) -> dict[str, Any] | None:
        return {"by": list(self.by), "window": fingerprint_value(self.window)}


@dataclass(frozen=True, eq=False)
class LookupJoin(Step):
    """Each record enriched from an external store (`lookup`) by its `by` value, through a cache."""

    by: str
    lookup: Any  # connectors.lookup.RedisLookup
    how: str = "left"
    cache_ttl_s: float | None = 60.0
    cache_size: int = 100_000
    kind = "lookup_join"  # its cache is not checkpointed: no state to check

    def key_columns(self) -> tuple[str, ...] | None:
        return (self.by,)


@dataclass(frozen=True, eq=False)
class Union(Step):
    """The records of all its inputs, which have the same columns."""

    kind = "union"

    def state_fields(self) -> dict[str, Any] | None:
        return {"inputs": len(self.inputs)}  # its state is one watermark per input


@dataclass(frozen=True, eq=False)
class Branch(Step):
    """Each record to the port of the first of `routes` whose predicate it meets, else to `other`."""

    routes: Mapping[str, pl.Expr]  # label → predicate; a row takes the first label that matches
    kind = "branch"

    def ports(self) -> tuple[str, ...]:
        return (*self.routes.keys(), "other")


@dataclass(frozen=True, eq=False)
class Write(Step):
    """Its input, written to `sink`."""

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

    def changelog_key(self, ref: Ref) -> tuple[str, ...] | None:
        """The primary key if the stream at `ref` is a changelog (a `changelog` step, a window that emits
        updates, or a source that reads one, upstream through steps that keep rows as they are), else None."""
        step = self.step(ref.step)
        if isinstance(step, ToChangelog):
            return step.keys
        if isinstance(step, Read):
            key = getattr(step.source, "changelog_key", None)
            return key() if callable(key) else None
        if isinstance(step, Window):
            return step.changelog_columns() if ref.port == "out" else None
        if isinstance(step, Filter | WithColumns | KeyBy | EventTime) and ref.port == "out":
            return self.changelog_key(step.inputs[0])
        if isinstance(step, Branch):
            return self.changelog_key(step.inputs[0])
        return None

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

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what `sluice explain --json` prints; see docs/design/plan.md)."""
        return {"format": PLAN_FORMAT, "flow": self.name, "steps": [s.to_dict() for s in self.steps]}
