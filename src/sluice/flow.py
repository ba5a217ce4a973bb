"""The Python front end: build a plan step by step.

    flow = sl.Flow("clicks")
    (flow.read("events", sl.JsonLinesSource("events.jsonl"), schema={"ts": int, "user": str})
         .event_time("ts", watermark=timedelta(seconds=5))
         .key_by("user")
         .window("per_minute", sl.Tumbling(timedelta(minutes=1)), clicks=sl.agg.count())
         .write("out", sl.ConsoleSink()))

Stateful steps (read, window, write) take a name: it is how their state and metrics are found.
Stateless steps are named automatically unless you pass name= (step= for select and with_columns, whose
other keywords are output columns, so that select(name=pl.col("user")) makes a column called name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

import polars as pl

from sluice.core.changelog import OP, is_delete, is_retraction
from sluice.core.errors import PlanError
from sluice.core.plan import (
    ON_ERROR_CHOICES,
    AsofJoin,
    Branch,
    DetectAnomalies,
    EventTime,
    Filter,
    IntervalJoin,
    KeyBy,
    LookupJoin,
    Map,
    Match,
    Plan,
    Process,
    Read,
    Ref,
    Select,
    Step,
    TemporalJoin,
    ToChangelog,
    Union,
    Window,
    WindowJoin,
    WithColumns,
    Write,
    check_row_wise,
)
from sluice.core.schema import Schema, SchemaLike, column, resolve_schema
from sluice.time.aggregates import Aggregate, Percentile
from sluice.time.watermark import BoundedOutOfOrderness, to_ms
from sluice.time.windows import Emit, Session, Sliding, Tumbling


def _on_error(value: str) -> str:
    if value not in ON_ERROR_CHOICES:
        raise PlanError(f"on_error must be one of {ON_ERROR_CHOICES}, got {value!r}")
    return value


def _exprs(exprs: Iterable[str | pl.Expr], named: Mapping[str, str | pl.Expr]) -> tuple[pl.Expr, ...]:
    out = [column(e) for e in exprs]
    out += [column(e).alias(k) for k, e in named.items()]
    return tuple(out)


class Flow:
    """A pipeline under construction. `plan()` freezes it; `run()` runs it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._steps: list[Step] = []
        self._counts: dict[str, int] = {}

    def _name(self, kind: str, name: str | None) -> str:
        if name is not None:
            return name
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return f"{kind}_{self._counts[kind]}"

    def _add(self, step: Step, keys: tuple[pl.Expr, ...] = ()) -> Stream:
        if any(s.name == step.name for s in self._steps):
            raise PlanError(f"flow {self.name!r} already has a step named {step.name!r}")
        check_row_wise(step)  # at the line that declares it
        self._steps.append(step)
        return Stream(self, Ref(step.name), keys)

    def read(self, name: str, source: Any, *, schema: SchemaLike | Schema | None = None, on_error: str = "fail") -> Stream:
        """Read from a source. `schema` maps field → type; undeclared fields are not read."""
        resolved = resolve_schema(schema) if schema is not None else None
        return self._add(Read(name, (), source, resolved, _on_error(on_error)))

    def plan(self) -> Plan:
        plan = Plan(self.name, tuple(self._steps))
        plan.validate()
        return plan

    def plan_so_far(self) -> Plan:
        """The steps declared until now (not validated: the flow may not be written anywhere yet)."""
        return Plan(self.name, tuple(self._steps))

    def explain(self) -> str:
        return self.plan().explain()

    def run(self, **kwargs: Any) -> Any:
        from sluice.runtime.executor import run

        return run(self, **kwargs)


class Stream:
    """A handle on one output of a step; every method adds a step and returns the new stream."""

    def __init__(self, flow: Flow, ref: Ref, keys: tuple[pl.Expr, ...] = ()) -> None:
        self.flow = flow
        self.ref = ref
        self.keys = keys

    def __repr__(self) -> str:
        return f"<Stream {self.ref} of flow {self.flow.name!r}>"

    def _port(self, port: str) -> Stream:
        step = next(s for s in self.flow._steps if s.name == self.ref.step)
        if port not in step.ports():
            raise PlanError(f"step {step.name!r} ({step.kind}) has no {port!r} stream; it has {', '.join(step.ports())}")
        return Stream(self.flow, Ref(step.name, port), self.keys)

    @property
    def late(self) -> Stream:
        """Records that arrived after their window closed: one row per missed window."""
        return self._port("late")

    @property
    def dead_letters(self) -> Stream:
        """Records this step set aside, with columns step, position, reason, raw."""
        return self._port("dead_letters")

    # stateless ------------------------------------------------------------------------------
    def filter(self, predicate: pl.Expr, *, name: str | None = None) -> Stream:
        return self.flow._add(Filter(self.flow._name("filter", name), (self.ref,), predicate), self.keys)

    def select(self, *exprs: str | pl.Expr, step: str | None = None, **named: str | pl.Expr) -> Stream:
        """Keep these columns; keywords make new ones (`name=pl.col("first")` is a column called name).
        `step` names the step."""
        return self.flow._add(Select(self.flow._name("select", step), (self.ref,), _exprs(exprs, named)), self.keys)

    def with_columns(self, *exprs: str | pl.Expr, step: str | None = None, **named: str | pl.Expr) -> Stream:
        """Add or replace columns; keywords name them (any name, `name` too). `step` names the step."""
        added = WithColumns(self.flow._name("with_columns", step), (self.ref,), _exprs(exprs, named))
        return self.flow._add(added, self.keys)

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]], *, name: str | None = None,
            schema: SchemaLike | None = None, on_error: str = "fail") -> Stream:
        """Apply a Python function to each record (a dict); it returns the new record (a dict)."""
        resolved = resolve_schema(schema) if schema is not None else None
        step = Map(self.flow._name("map", name), (self.ref,), fn, False, resolved, _on_error(on_error))
        return self.flow._add(step, self.keys)

    def flat_map(self, fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]], *, name: str | None = None,
                 schema: SchemaLike | None = None, on_error: str = "fail") -> Stream:
        """Apply a Python function to each record; it returns any number of records."""
        resolved = resolve_schema(schema) if schema is not None else None
        step = Map(self.flow._name("flat_map", name), (self.ref,), fn, True, resolved, _on_error(on_error))
        return self.flow._add(step, self.keys)

    def key_by(self, *keys: str | pl.Expr, name: str | None = None) -> Stream:
        """Partition by these columns: windows after this aggregate per key."""
        exprs = tuple(column(k) for k in keys)
        if not exprs:
            raise PlanError("key_by needs at least one column")
        return self.flow._add(KeyBy(self.flow._name("key_by", name), (self.ref,), exprs), exprs)

    def event_time(self, column_ref: str | pl.Expr, watermark: BoundedOutOfOrderness | timedelta, *,
                   name: str | None = None, on_error: str = "fail") -> Stream:
        """Declare the event-time column (epoch ms or Datetime) and how the watermark follows it."""
        if isinstance(watermark, timedelta):
            watermark = BoundedOutOfOrderness(watermark)
        _ = watermark.delay_ms  # validates the delay now, at the declaring line
        step = EventTime(self.flow._name("event_time", name), (self.ref,), column(column_ref), watermark, _on_error(on_error))
        return self.flow._add(step, self.keys)

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        refs = (self.ref, *(o.ref for o in others))
        return self.flow._add(Union(self.flow._name("union", name), refs), self.keys)

    def branch(self, name: str, **routes: pl.Expr) -> Branches:
        """Split by predicates: each row goes to the first route that matches, else to `.other`."""
        if not routes:
            raise PlanError("branch needs at least one route, e.g. branch('split', big=pl.col('amount') > 1000)")
        step = self.flow._add(Branch(name, (self.ref,), dict(routes)), self.keys)
        return Branches(step, list(routes))

    # stateful -------------------------------------------------------------------------------
    def window(self, name: str, shape: Tumbling | Sliding | Session, *, emit: Emit | None = None,
               allowed_lateness: timedelta | None = None, **aggregates: Aggregate | Percentile) -> Stream:
        """Aggregate per key and window. Output: keys, window_start, window_end, one column per aggregate.

        By default each window is emitted once, when the watermark passes its end, and a record that
        arrives after that goes to `.late`. `emit=sl.Emit.every(interval)` or `sl.Emit.each_batch()` also
        emits early results; `allowed_lateness` keeps windows open until the watermark passes
        end + allowed_lateness, and a late record within it updates its windows, which are emitted
        again. Either makes the output an upsert changelog keyed by (keys, window_start), with `_op`
        (+I, then +U) and `is_final` (true on a window's last row); with `updates="deltas"`
        (`sl.Emit.each_batch(updates="deltas")`) each row is instead the change since the window's last
        row, for an accumulating MERGE; see docs/design/time.md."""
        if not isinstance(shape, Tumbling | Sliding | Session):
            raise PlanError(f"window {name!r}: shape must be Tumbling, Sliding or Session, got {shape!r}")
        if not aggregates:
            raise PlanError(f"window {name!r}: name at least one aggregate, e.g. count=sl.agg.count()")
        _ = shape.gap_ms if isinstance(shape, Session) else (shape.size_ms, shape.slide_ms)  # validates now
        if emit is not None and not isinstance(emit, Emit):
            raise PlanError(f"window {name!r}: emit must be sl.Emit.on_close(), sl.Emit.every(timedelta) or "
                            f"sl.Emit.each_batch(), got {emit!r}")
        lateness = 0 if allowed_lateness is None else to_ms(allowed_lateness, f"window {name!r}: allowed_lateness")
        if isinstance(shape, Session) and (lateness or (emit is not None and emit.early)):
            raise PlanError(
                f"window {name!r}: session windows are emitted once, when they close; they take neither "
                "allowed_lateness nor an early emit (a late or early session can merge with one already "
                "emitted under another window_start). Route `.late` to a sink, or widen the session gap "
                "or the watermark delay")
        keys = self.keys or (pl.lit(0).alias("__sl_all"),)
        keep = emit is not None and (emit.early or emit.deltas)
        return self.flow._add(Window(name, (self.ref,), keys, shape, dict(aggregates), emit if keep else None, lateness))

    def process(self, name: str, fn: Any, *, schema: SchemaLike | None = None,
                side_outputs: Iterable[str] = (), on_error: str = "fail") -> Stream:
        """Run a KeyedProcessFunction per key, in event-time order, with state and timers.

        Its records come out of the returned stream; `.side(tag)` gives a side output; `.late` the
        records that arrived too late to be put in order.

        When `process` or `on_timer` raises, or returns something that is not dicts of consistent column
        types, the run stops with an error naming the record (or timer) — unless on_error="dead_letter":
        then that record goes to `.dead_letters` with the exception as reason and nothing it produced is
        kept; for a timer, the dead letter's raw is {"key": ..., "timer": ms} and the timer is not retried.
        State it changed before raising stays changed (state is not rolled back per record)."""
        if not self.keys:
            raise PlanError(f"process {name!r} needs keys: call .key_by(...) before it")
        tags = tuple(side_outputs)
        reserved = [t for t in tags if t in ("out", "late", "dead_letters")]
        if reserved:
            raise PlanError(f"process {name!r}: side output {reserved[0]!r} is a name the step uses itself; pick another")
        resolved = resolve_schema(schema) if schema is not None else None
        step = Process(name, (self.ref,), self.keys, fn, resolved, tags, _on_error(on_error))
        return self.flow._add(step, self.keys)

    def asof_join(self, name: str, right: Stream, *, by: str | Iterable[str], tolerance: timedelta,
                  strict: bool = True, how: str = "inner", right_order: str | None = None,
                  suffix: str = "_right") -> Stream:
        """Pair each record with the latest `right` record of the same key at most `tolerance` earlier
        (strictly earlier unless strict=False; ties between equal right times go to the largest
        `right_order`, else the last to arrive). how="left" keeps unmatched records."""
        if how not in ("inner", "left"):
            raise PlanError(f"asof_join {name!r}: how must be 'inner' or 'left', got {how!r}")
        keys = (by,) if isinstance(by, str) else tuple(by)
        step = AsofJoin(name, (self.ref, right.ref), keys, to_ms(tolerance, "tolerance"), strict, how, right_order, suffix)
        return self.flow._add(step, self.keys)

    def changelog(self, key: str | Iterable[str], *, op: pl.Expr | None = None, name: str | None = None) -> Stream:
        """Declare this stream a changelog of a table with primary key `key`: each row gets its kind in the
        column `_op` (+I insert, -U update-before, +U update-after, -D delete) from `op` (default: the
        stream's own `_op` column). For Debezium's c/r/u/d: `op=sl.changelog.from_debezium(pl.col("op"))`.
        Temporal joins and sinks then apply rows as inserts, updates and deletes."""
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys:
            raise PlanError("changelog(): give the table's primary key, key='id' or key=['a', 'b']")
        return self.flow._add(ToChangelog(self.flow._name("changelog", name), (self.ref,), keys,
                                          op if op is not None else pl.col(OP)), self.keys)

    def temporal_join(self, name: str, table: Stream, *, by: str | Iterable[str], deleted: pl.Expr | None = None,
                      how: str = "left", suffix: str = "_right") -> Stream:
        """Enrich each record from a table kept from a changelog stream: the table's row for the key as
        it stood at the record's event time (its latest version at or before it). Rows of `table` where
        `deleted` holds are deletions; when `table` is a changelog stream (`.changelog(...)`, a Kafka
        source with changelog=True) its -D rows are, and its -U rows are not versions of the row.
        how="left" keeps records without a row (right columns null)."""
        if how not in ("inner", "left"):
            raise PlanError(f"temporal_join {name!r}: how must be 'inner' or 'left', got {how!r}")
        if deleted is None and self.flow.plan_so_far().changelog_key(table.ref) is not None:
            table = table.filter(~is_retraction(), name=f"{name}_versions")
            deleted = is_delete()
        keys = (by,) if isinstance(by, str) else tuple(by)
        step = TemporalJoin(name, (self.ref, table.ref), keys, None, False, how, None, suffix, deleted)
        return self.flow._add(step, self.keys)

    def lookup_join(self, name: str, lookup: Any, *, by: str, how: str = "left",
                    cache_ttl: timedelta | None = timedelta(minutes=1), cache_size: int = 100_000) -> Stream:
        """Enrich records from an external store (e.g. sl.RedisLookup) by key, with a cache of up to
        `cache_size` keys kept for `cache_ttl`. Values are the store's current ones (processing time)."""
        if how not in ("inner", "left"):
            raise PlanError(f"lookup_join {name!r}: how must be 'inner' or 'left', got {how!r}")
        ttl = cache_ttl.total_seconds() if cache_ttl is not None else None
        return self.flow._add(LookupJoin(name, (self.ref,), by, lookup, how, ttl, cache_size), self.keys)

    def interval_join(self, name: str, right: Stream, *, by: str | Iterable[str], lower: timedelta,
                      upper: timedelta, how: str = "inner", suffix: str = "_right") -> Stream:
        """Pair records with `right` records of the same key whose time is within
        [time + lower, time + upper] (lower may be negative). how="left" also emits unpaired records."""
        if how not in ("inner", "left"):
            raise PlanError(f"interval_join {name!r}: how must be 'inner' or 'left', got {how!r}")
        keys = (by,) if isinstance(by, str) else tuple(by)
        lo, hi = lower // timedelta(milliseconds=1), upper // timedelta(milliseconds=1)
        if lo > hi:
            raise PlanError(f"interval_join {name!r}: lower {lower} is above upper {upper}")
        return self.flow._add(IntervalJoin(name, (self.ref, right.ref), keys, lo, hi, how, suffix), self.keys)

    def detect_anomalies(self, name: str, value: str | pl.Expr, *, window: timedelta, threshold: float = 3.0,
                         min_count: int = 10, only_anomalies: bool = False) -> Stream:
        """Per key, compare each record's `value` with the key's records in the preceding `window`:
        adds mean, stddev, zscore and is_anomaly (|z| > threshold with at least min_count records)."""
        if not self.keys:
            raise PlanError(f"detect_anomalies {name!r} needs keys: call .key_by(...) before it")
        step = DetectAnomalies(name, (self.ref,), self.keys, column(value), to_ms(window, "window"), threshold,
                               min_count, only_anomalies)
        return self.flow._add(step, self.keys)

    def match(self, name: str, pattern: Any, *, skip: str = "no_skip", order_by: str | Iterable[str] = (),
              time: str = "event") -> Stream:
        """Find `pattern` (sl.Pattern) per key, in event-time order, with Flink CEP's semantics
        (docs/cep.md). One row per match: the keys, match_start, match_end and a column per stage with its
        event (a list for repeating stages). `.timeouts` has partial matches that ran out of `within`.
        skip: "no_skip" (every match), "skip_to_next", "skip_past_last_event", "skip_to_first:<stage>",
        "skip_to_last:<stage>" (Flink's after-match skip strategies). order_by: columns that order events
        of equal time (then arrival order). time="processing": events in arrival order, as they come
        (no event_time step needed), `within` and the times in the output on the wall clock."""
        if not self.keys:
            raise PlanError(f"match {name!r} needs keys: call .key_by(...) before it")
        from sluice.cep.pattern import Pattern, check_skip

        if not isinstance(pattern, Pattern):
            raise PlanError(f"match {name!r}: pattern must be an sl.Pattern, got {type(pattern).__name__}")
        check_skip(name, skip, pattern)
        pattern.check(name)
        if time not in ("event", "processing"):
            raise PlanError(f"match {name!r}: time must be 'event' or 'processing', got {time!r}")
        order = (order_by,) if isinstance(order_by, str) else tuple(order_by)
        return self.flow._add(Match(name, (self.ref,), self.keys, pattern, skip, order, time), self.keys)

    @property
    def timeouts(self) -> Stream:
        """Partial matches of a match step that ran out of time."""
        return self._port("timeouts")

    def window_join(self, name: str, right: Stream, *, by: str | Iterable[str], window: Tumbling | Sliding,
                    suffix: str = "_right") -> Stream:
        """Pair records of the same key that fall in the same window, when the window closes. Output:
        both records' columns (clashing right names get `suffix`), window_start and window_end."""
        if not isinstance(window, Tumbling | Sliding):
            raise PlanError(f"window_join {name!r}: window must be Tumbling or Sliding")
        _ = (window.size_ms, window.slide_ms)
        keys = (by,) if isinstance(by, str) else tuple(by)
        return self.flow._add(WindowJoin(name, (self.ref, right.ref), keys, window, suffix), self.keys)

    def side(self, tag: str) -> Stream:
        """A side output of a process step."""
        return self._port(tag)

    def write(self, name: str, sink: Any) -> None:
        """End the stream in a sink: a built-in one, or your own (`sl.Sink`, docs/sinks.md)."""
        self.flow._add(Write(name, (self.ref,), sink))

    def foreach_batch(self, name: str, fn: Callable[[pl.DataFrame, int], Any]) -> None:
        """Call `fn(rows, epoch)` with each epoch's rows, as Spark's foreachBatch: at-least-once (after a
        crash an epoch may be passed again, with the same number). See sl.ForeachBatch."""
        from sluice.connectors.foreach import ForeachBatch

        self.write(name, ForeachBatch(fn))


class Branches:
    """The outputs of `branch`: one attribute per route, plus `other`."""

    def __init__(self, stream: Stream, labels: list[str]) -> None:
        self._stream = stream
        self._labels = labels

    def __getattr__(self, label: str) -> Stream:
        if label.startswith("_"):
            raise AttributeError(label)
        return self._stream._port(label)

    def __getitem__(self, label: str) -> Stream:
        return self._stream._port(label)
