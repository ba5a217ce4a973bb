"""Steps that look at one batch at a time: filter, select, with_columns, map, branch, union, event_time."""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from sluice.core.batch import INTERNAL_PREFIX, OFFSET, TIME, WATERMARK, Batch, user_columns, with_series
from sluice.core.deadletter import dead_letters, rows_as_json
from sluice.core.errors import (
    DEAD_LETTER_FIX,
    MissingTimestampError,
    PlanError,
    StepError,
    UserFunctionError,
    polars_detail,
)
from sluice.core.plan import Branch, EventTime, Filter, Map, Select, Union, WithColumns
from sluice.operators.base import Emitted, Operator
from sluice.time.watermark import PartitionWatermarks


def _internal(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(INTERNAL_PREFIX)]


def _expression_error(step: str, batch: Batch, exc: Exception) -> StepError:
    first = batch.position_of(0)
    return StepError(step, f"a batch starting at {first}", f"an expression failed: {polars_detail(exc)}",
                     "check the expression against the stream's columns and their types")


class FilterOperator(Operator):
    def __init__(self, step: Filter) -> None:
        self.name = step.name
        self.predicate = step.predicate

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if batch.height == 0:
            return [("out", batch)]
        try:
            return [("out", batch.with_df(batch.df.filter(self.predicate)))]
        except pl.exceptions.PolarsError as exc:
            raise _expression_error(self.name, batch, exc) from exc


class SelectOperator(Operator):
    def __init__(self, step: Select | WithColumns) -> None:
        self.name = step.name
        self.exprs = step.exprs
        self.keep_all = isinstance(step, WithColumns)

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if batch.height == 0:
            return [("out", batch)]
        df = batch.df
        try:
            if self.keep_all:
                out = df.with_columns(*self.exprs)
            else:
                out = df.select(*self.exprs, *[pl.col(c) for c in _internal(df)])
        except pl.exceptions.PolarsError as exc:
            raise _expression_error(self.name, batch, exc) from exc
        return [("out", batch.with_df(out))]


class MapOperator(Operator):
    """The per-record escape hatch: a Python function per row (map) or per row to many (flat_map)."""

    def __init__(self, step: Map) -> None:
        self.name = step.name
        self.fn = step.fn
        self.flat = step.flat
        self.schema = step.schema.polars if step.schema is not None else None
        self.on_error = step.on_error

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if batch.height == 0:
            return [("out", batch)]
        rows = user_columns(batch.df).to_dicts()
        results: list[dict[str, Any]] = []
        source_rows: list[int] = []
        bad: list[int] = []
        reasons: list[str] = []
        for i, row in enumerate(rows):
            try:
                produced = self.fn(row)
                items = list(produced) if self.flat else [produced]
            except Exception as exc:
                if self.on_error != "dead_letter":
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    raise UserFunctionError(
                        self.name,
                        batch.position_of(i),
                        f"{type(exc).__name__}: {exc} (in {where.filename}:{where.lineno}); the record is {row!r}",
                        f"fix the function or {DEAD_LETTER_FIX}",
                    ) from exc
                bad.append(i)
                reasons.append(f"{type(exc).__name__}: {exc}")
                continue
            for item in items:
                if not isinstance(item, dict):
                    raise UserFunctionError(
                        self.name, batch.position_of(i), f"the function returned {type(item).__name__}, not a dict",
                        "return a dict of column name to value",
                    )
                results.append(item)
                source_rows.append(i)
        out_df = pl.from_dicts(results, schema=self.schema) if results else pl.DataFrame(schema=self.schema)
        internal = batch.df.select(_internal(batch.df))
        if internal.width:
            out_df = pl.concat([out_df, internal[pl.Series(source_rows, dtype=pl.Int64)]], how="horizontal")
        emitted: Emitted = [("out", batch.with_df(out_df))]
        if bad:
            failed = batch.df[bad]
            emitted.append(
                ("dead_letters", dead_letters(self.name, [batch.position_of(i) for i in bad], reasons, rows_as_json(user_columns(failed))))
            )
        return emitted


class BranchOperator(Operator):
    """Each row goes to the first route whose predicate holds, or to `other`."""

    def __init__(self, step: Branch) -> None:
        self.name = step.name
        self.labels = list(step.routes)
        route = pl.lit(len(self.labels))
        for i in reversed(range(len(self.labels))):
            route = pl.when(step.routes[self.labels[i]].fill_null(False)).then(pl.lit(i)).otherwise(route)
        self.route = route.alias("__sl_route")

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        ports = [*self.labels, "other"]
        if batch.height == 0:
            return [(p, batch) for p in ports]
        routed = batch.df.with_columns(self.route)
        return [(p, batch.with_df(routed.filter(pl.col("__sl_route") == i).drop("__sl_route"))) for i, p in enumerate(ports)]


Columns = Mapping[str, pl.DataType]


def union_mismatch(step: str, inputs: Sequence[tuple[str, Columns]]) -> str | None:
    """What differs between a union's inputs (column names and types; order does not matter), as the
    error to raise, or None. A union never widens a type or fills in a column: later steps would see
    values change type (int → float, a struct gaining fields) depending on which input a batch came from."""
    (first, cols0), *rest = inputs
    for other, cols in rest:
        diffs = [f"{c!r} is {t} in {first!r} but {cols[c]} in {other!r}" for c, t in cols0.items()
                 if c in cols and cols[c] != t]
        diffs += [f"{c!r} is only in {first!r}" for c in cols0 if c not in cols]
        diffs += [f"{c!r} is only in {other!r}" for c in cols if c not in cols0]
        if diffs:
            def show(cs: Columns) -> str:
                return "{" + ", ".join(f"{c}: {t}" for c, t in cs.items()) + "}"

            return (f"union step {step!r}: its inputs have different columns: {'; '.join(diffs)}. {first!r} has "
                    f"{show(cols0)}, {other!r} has {show(cols)}. A union needs the same column names and types on "
                    "every input (in any order). Fix: cast with .with_columns(pl.col(name).cast(type)) or select "
                    "the same columns on every input before the union")
    return None


def user_schema(df: pl.DataFrame) -> dict[str, pl.DataType]:
    return {c: t for c, t in df.schema.items() if not c.startswith(INTERNAL_PREFIX)}


class UnionOperator(Operator):
    """Merges streams. Its watermark is the minimum over its inputs; each row keeps the watermark its own
    input had just before it, by which downstream steps judge whether it is late. Every input must have
    the same columns (names and types); rows come out in the column order of the first input seen."""

    wms: list[int | None]

    def snapshot(self) -> dict[str, Any]:
        return {"watermarks": self.wms}

    def restore(self, state: dict[str, Any]) -> None:
        self.wms = list(state["watermarks"])

    def __init__(self, step: Union) -> None:
        self.name = step.name
        self.inputs = len(step.inputs)
        self.wms = [None] * self.inputs
        self.input_names = [str(ref) for ref in step.inputs]
        self.columns: list[dict[str, pl.DataType] | None] = [None] * self.inputs  # each input's, as first seen
        self.order: list[str] | None = None

    def _same_columns(self, index: int, batch: Batch) -> Batch:
        """The batch with its columns in the union's order; an error if they differ from another input's."""
        cols = user_schema(batch.df)
        if self.columns[index] is None:
            self.columns[index] = cols
        for i, seen in enumerate(self.columns):
            if seen is not None and i != index:  # the inputs seen before were checked against each other
                problem = union_mismatch(self.name, [(self.input_names[i], seen), (self.input_names[index], cols)])
                if problem is not None:
                    raise PlanError(problem)
                break
        if self.order is None:
            self.order = list(cols)
        if list(cols) != self.order:
            batch = batch.with_df(batch.df.select(*self.order, *_internal(batch.df)))
        return batch

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if batch.height:
            batch = self._same_columns(index, batch)
        if batch.watermark is None:
            return [("out", batch)]
        from sluice.core.batch import NO_WATERMARK

        self.wms[index] = batch.watermark
        others = [w if w is not None else NO_WATERMARK for i, w in enumerate(self.wms) if i != index]
        floor = min(others) if others else None
        if floor is None:
            return [("out", batch)]
        # Rows keep their own input's watermark (the one just before each): it is never below the union's,
        # so no row enters a window that has closed, and it does not depend on how the inputs interleave.
        from dataclasses import replace

        return [("out", replace(batch, watermark=min(batch.watermark, floor)))]


LATEST_TIME = 2**61  # |event time| must stay below this: every window end then stays below END_OF_TIME (2^62)


class EventTimeOperator(Operator):
    """Sets each record's event time and the watermark before it (DESIGN.md §3)."""

    partitions: dict[tuple[str, int], int]
    wms: PartitionWatermarks
    ended_at: int | None  # the last real watermark, once the input has ended
    plain: str | None  # the time column's name, when the event time is a plain column
    resumed_after_end: int | None  # restored from a checkpoint taken after the input ended

    def snapshot(self) -> dict[str, Any]:
        w = self.wms
        if self.ended_at is not None:
            # The input ended and the watermark jumped to +∞. Sources can grow (a glob gains a file, a topic
            # gains records): a resumed run continues from the last real watermark, not from +∞.
            return {
                "partitions": [[step, p, pid] for (step, p), pid in self.partitions.items()],
                "max_time": {str(k): v for k, v in w.max_time.items()},
                "finished_partitions": [], "current": self.ended_at, "expected": self.expected, "finished": 0,
                "ended_at": self.ended_at,
            }
        return {
            "partitions": [[step, p, pid] for (step, p), pid in self.partitions.items()],
            "max_time": {str(k): v for k, v in w.max_time.items()},
            "finished_partitions": sorted(w.finished),
            "current": w.current,
            "expected": self.expected,
            "finished": self.finished,
        }

    def restore(self, state: dict[str, Any]) -> None:
        now = time.monotonic()
        declared = list(self.partitions)  # this run's partitions: a source may have grown since
        self.partitions = {(step, int(p)): int(pid) for step, p, pid in state["partitions"]}
        self.wms.max_time = {int(k): int(v) for k, v in state["max_time"].items()}
        self.wms.last_active = dict.fromkeys(self.wms.max_time, now)
        self.wms.finished = {int(x) for x in state["finished_partitions"]}
        self.wms.current = int(state["current"])
        self.expected = int(state["expected"])
        self.finished = int(state["finished"])
        self.resumed_after_end = state.get("ended_at")
        self.ended_at = None
        for key in declared:
            pid = self._pid(*key)
            self.wms.max_time.setdefault(pid, self.wms.current)
            self.wms.last_active.setdefault(pid, now)
        self.expected = max(self.expected, len(self.partitions))

    def __init__(self, step: EventTime) -> None:
        self.name = step.name
        self.column = step.column
        # a plain column is read directly (a select is a lazy query on Polars' pool, every batch)
        self.plain = step.column.meta.output_name() if step.column.meta.is_column() else None
        self.on_error = step.on_error
        wm = step.watermark
        idle = wm.idle_timeout.total_seconds() if wm.idle_timeout is not None else None
        self.wms = PartitionWatermarks(wm.delay_ms, idle)
        self.partitions = {}
        self.expected = 0
        self.finished = 0
        self.ended_at = None
        self.resumed_after_end = None

    def declare(self, sources: dict[str, int]) -> None:
        """The source partitions upstream: each holds the watermark back until it delivers or ends."""
        now = time.monotonic()
        for step, count in sources.items():
            for p in range(count):
                self._pid(step, p)
        self.expected = len(self.partitions)
        self.wms.declare(0, now)
        for pid in self.partitions.values():
            self.wms.max_time.setdefault(pid, self.wms.current)
            self.wms.last_active.setdefault(pid, now)

    def _pid(self, step: str, partition: int) -> int:
        return self.partitions.setdefault((step, partition), len(self.partitions))

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        from dataclasses import replace

        from sluice.core.batch import END_OF_TIME, NO_WATERMARK

        origin = batch.origin
        pid = self._pid(origin.step, origin.partition) if origin is not None else 0
        now = time.monotonic()
        if batch.end_of_partition:
            before = self.wms.current
            self.finished += 1
            wm = self.wms.finish(pid, now)
            if self.finished >= max(self.expected, len(self.partitions)):
                if self.ended_at is None:
                    self.ended_at = max(before, NO_WATERMARK)
                wm = END_OF_TIME
                self.wms.current = wm
            return [("out", replace(batch, df=pl.DataFrame(), watermark=wm))]
        if batch.height == 0:
            return [("out", replace(batch, watermark=self.wms.current))]
        df = batch.df
        try:
            plain = self.plain is not None and self.plain in df.columns
            ts = df.get_column(self.plain) if plain else df.select(self.column).to_series()  # type: ignore[arg-type]
        except pl.exceptions.PolarsError as exc:
            raise PlanError(f"event_time step {self.name!r}: cannot read the time column: {exc}") from exc
        time_dtype = None
        if ts.dtype == pl.Datetime or isinstance(ts.dtype, pl.Datetime):
            time_dtype = ts.dtype
            ms = ts.dt.epoch("ms")
        elif ts.dtype.is_integer():
            ms = ts.cast(pl.Int64)
        else:
            raise PlanError(
                f"event_time step {self.name!r}: column {ts.name!r} is {ts.dtype}; it must be epoch milliseconds "
                "(an integer) or a Datetime. Parse strings first, e.g. .with_columns(pl.col(c).str.to_datetime())"
            )
        emitted: Emitted = []
        if ms.has_nulls():
            missing = ms.is_null()
            bad_rows = missing.arg_true()
            if self.on_error != "dead_letter":
                raise MissingTimestampError(
                    self.name, batch.position_of(int(bad_rows[0])), f"the event-time column {ts.name!r} is null or missing",
                    f"make the producer set it, or {DEAD_LETTER_FIX}",
                )
            failed = df[bad_rows]
            emitted.append(("dead_letters", dead_letters(
                self.name, [batch.position_of(int(i)) for i in bad_rows],
                [f"event-time column {ts.name!r} is null or missing"] * len(bad_rows), rows_as_json(user_columns(failed)),
            )))
            keep = ~missing
            df = df.filter(keep)
            ms = ms.filter(keep)
        if ms.len() and (ms.max() >= LATEST_TIME or ms.min() <= -LATEST_TIME):  # type: ignore[operator]
            far = (ms >= LATEST_TIME) | (ms <= -LATEST_TIME)
            bad_rows = far.arg_true()
            reason = (f"event time {int(ms[int(bad_rows[0])])} ms in column {ts.name!r} lies beyond ±2^61 ms (about "
                      "73 million years from 1970): a window or pattern deadline there would end past the "
                      "end-of-input watermark (2^62) and never be emitted")
            if self.on_error != "dead_letter":
                raise MissingTimestampError(
                    self.name, batch.position_of(int(bad_rows[0])), reason,
                    "check the column's unit (epoch milliseconds: divide microseconds by 1,000 and nanoseconds by "
                    f"1,000,000), or {DEAD_LETTER_FIX}",
                )
            emitted.append(("dead_letters", dead_letters(
                self.name, [batch.position_of(int(i)) for i in bad_rows], [reason] * len(bad_rows),
                rows_as_json(user_columns(df[bad_rows])),
            )))
            df = df.filter(~far)
            ms = ms.filter(~far)
        if df.height == 0:
            emitted.append(("out", replace(batch, df=df, watermark=self.wms.current)))
            return emitted
        times = ms.cast(pl.Int64)
        row_wm, after = self.wms.advance(pid, times, now)
        after = max(after, NO_WATERMARK)
        df = with_series(df, [times.alias(TIME), row_wm.alias(WATERMARK)])  # replaces an earlier event_time's
        emitted.append(("out", replace(batch, df=df, watermark=after, time_dtype=time_dtype or batch.time_dtype)))
        return emitted


class PassThrough(Operator):
    def __init__(self, name: str) -> None:
        self.name = name

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        return [("out", batch)]


__all__ = [
    "OFFSET",
    "BranchOperator",
    "EventTimeOperator",
    "FilterOperator",
    "MapOperator",
    "PassThrough",
    "SelectOperator",
    "UnionOperator",
]
