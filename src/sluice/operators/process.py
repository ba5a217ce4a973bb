"""Keyed process functions, in the spirit of Flink's KeyedProcessFunction.

Records reach `process` in event-time order per the whole stream (ties in arrival order): the operator
buffers them until the watermark has passed their time. Time T is complete once W > T; then every
buffered record with t ≤ T and every event-time timer with ts ≤ T is handled, in time order, records
before timers at equal times. A record with t < W_prev (behind the watermark when it arrived) could no
longer be put in order: it goes to the `late` port. State lives in the state backend behind typed
handles bound to the current key; TTL is checked when an entry is read.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import orjson
import polars as pl

from sluice.core.batch import END_OF_TIME, NO_WATERMARK, OFFSET, TIME, WATERMARK, Batch, user_columns
from sluice.core.deadletter import dead_letters
from sluice.core.errors import PlanError, UserFunctionError, polars_detail
from sluice.operators.base import SEQ, ArrivalBuffer, Emitted, Operator, key_bytes, require_event_time
from sluice.operators.timers import TimerQueue
from sluice.state.backends import StateBackend

T = TypeVar("T")
Place = tuple[Any, ...]  # (offset, key, event time) of a record, or (None, key, time, "timer") of a timer
Output = tuple[dict[str, Any], int, Place]  # a produced record, its event time, where it came from


def _misfit(records: list[dict[str, Any]], schema: pl.Schema | None) -> tuple[int, str] | None:
    """The first record that does not fit the declared schema or, without one, the other records' types
    (ints and floats mix); None when every record fits."""
    if schema is not None:
        for i, r in enumerate(records):
            try:
                pl.from_dicts([r], schema=schema)
            except pl.exceptions.PolarsError as one:
                return i, f"does not fit the declared schema: {polars_detail(one)}"
        return None
    seen: dict[str, tuple[type, Any]] = {}
    for i, r in enumerate(records):
        for k, v in r.items():
            if v is None:
                continue
            t0, v0 = seen.setdefault(k, (type(v), v))
            if t0 is not type(v) and {t0, type(v)} != {int, float}:
                return i, (f"has {k}={v!r} ({type(v).__name__}), but earlier records have {t0.__name__} there "
                           f"(e.g. {v0!r}): a column holds one type")
    return None


def _place(where: Place) -> str:
    """The position of a record or timer in words (built only for an error or a dead letter)."""
    if len(where) == 4:
        return f"the timer at {where[2]} of key {where[1]!r}"
    return f"offset {where[0]} (key {where[1]!r}, event time {where[2]})"


def _dicts(produced: Any, what: str) -> list[dict[str, Any]]:
    """The records a process function returned or yielded; anything but dicts is a TypeError."""
    if type(produced) is list:
        items: list[dict[str, Any]] = produced
    elif isinstance(produced, dict | str | bytes):
        raise TypeError(f"{what} returned a {type(produced).__name__}; return a list of dicts or yield them")
    else:
        items = list(produced)
    for item in items:
        if type(item) is not dict and not isinstance(item, dict):
            raise TypeError(f"{what} produced a {type(item).__name__} ({item!r:.80}), not a dict")
    return items


def _ms(value: int | datetime | timedelta) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, timedelta):
        return value // timedelta(milliseconds=1)
    return int(value)


class _Scope:
    """What the handles need to know about 'now': the current key and time."""

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        self.key: bytes = b""
        self.event_time = NO_WATERMARK

    def now_ms(self, processing: bool) -> int:
        return int(time.time() * 1000) if processing else self.event_time


class _Handle(Generic[T]):
    def __init__(self, scope: _Scope, name: str, ttl: timedelta | None, ttl_processing_time: bool) -> None:
        self.scope = scope
        self.name = name
        self.ttl_ms = _ms(ttl) if ttl is not None else None
        self.processing = ttl_processing_time

    def _get(self) -> Any:
        entry = self.scope.backend.get(self.name, self.scope.key)
        if entry is None:
            return None
        value, written = entry
        if self.ttl_ms is not None and self.scope.now_ms(self.processing) - written > self.ttl_ms:
            self.scope.backend.delete(self.name, self.scope.key)
            return None
        return value

    def _put(self, value: Any) -> None:
        self.scope.backend.put(self.name, self.scope.key, value, self.scope.now_ms(self.processing))

    def clear(self) -> None:
        self.scope.backend.delete(self.name, self.scope.key)


class ValueState(_Handle[T]):
    """One value per key. Both backends store it pickled, so `value()` is a copy: changing it in place
    changes the state only once it is passed to `update`."""

    def value(self, default: T | None = None) -> T | None:
        v = self._get()
        return default if v is None else v

    def update(self, value: T) -> None:
        self._put(value)


class ListState(_Handle[T]):
    """A list per key."""

    def get(self) -> list[T]:
        return list(self._get() or [])

    def add(self, value: T) -> None:
        self._put([*self.get(), value])

    def update(self, values: Iterable[T]) -> None:
        self._put(list(values))


class MapState(_Handle[T]):
    """A dict per key."""

    def get(self, k: Any, default: T | None = None) -> T | None:
        return (self._get() or {}).get(k, default)

    def put(self, k: Any, value: T) -> None:
        d = dict(self._get() or {})
        d[k] = value
        self._put(d)

    def remove(self, k: Any) -> None:
        d = dict(self._get() or {})
        d.pop(k, None)
        self._put(d)

    def items(self) -> list[tuple[Any, T]]:
        return list((self._get() or {}).items())


class StateContext:
    """Given to `open`: declares the function's state."""

    def __init__(self, scope: _Scope) -> None:
        self._scope = scope
        self.names: set[str] = set()

    def _name(self, name: str) -> str:
        if name in self.names:
            raise PlanError(f"state {name!r} is declared twice")
        self.names.add(name)
        return name

    def value_state(self, name: str, ttl: timedelta | None = None, ttl_processing_time: bool = False) -> ValueState[Any]:
        return ValueState(self._scope, self._name(name), ttl, ttl_processing_time)

    def list_state(self, name: str, ttl: timedelta | None = None, ttl_processing_time: bool = False) -> ListState[Any]:
        return ListState(self._scope, self._name(name), ttl, ttl_processing_time)

    def map_state(self, name: str, ttl: timedelta | None = None, ttl_processing_time: bool = False) -> MapState[Any]:
        return MapState(self._scope, self._name(name), ttl, ttl_processing_time)


class Timers:
    def __init__(self, op: ProcessOperator) -> None:
        self._op = op

    def event_time(self, at: int | datetime) -> None:
        """Call on_timer once the watermark passes `at` (epoch ms or datetime), for the current key."""
        self._op.add_timer("event", _ms(at))

    def processing_time(self, at: int | datetime) -> None:
        """Call on_timer once the wall clock reaches `at` (checked between batches)."""
        self._op.add_timer("processing", _ms(at))

    def delete_event_time(self, at: int | datetime) -> None:
        self._op.delete_timer("event", _ms(at))


class ProcessContext:
    """Given to `process` and `on_timer`."""

    def __init__(self, op: ProcessOperator) -> None:
        self._op = op
        self.timers = Timers(op)

    @property
    def key(self) -> Any:
        return self._op.current_key

    @property
    def timestamp(self) -> int:
        """The event time (ms) of the record or timer being handled."""
        return self._op.scope.event_time

    @property
    def watermark(self) -> int:
        return self._op.watermark

    def output(self, tag: str, record: dict[str, Any]) -> None:
        """Send a record to the side output `tag` (declared in .process(..., side_outputs=[...]))."""
        if tag not in self._op.side_tags:
            raise PlanError(f"process step {self._op.name!r}: side output {tag!r} is not declared; "
                            f"declared: {sorted(self._op.side_tags)}")
        self._op.side[tag].append((record, self._op.scope.event_time, self._op.where))


class KeyedProcessFunction:
    """Subclass and override: `open` declares state, `process` handles a record, `on_timer` a timer.
    Both return (or yield) output records as dicts."""

    def open(self, ctx: StateContext) -> None:
        pass

    def process(self, record: dict[str, Any], ctx: ProcessContext) -> Iterable[dict[str, Any]] | None:
        raise NotImplementedError

    def on_timer(self, timestamp: int, ctx: ProcessContext) -> Iterable[dict[str, Any]] | None:
        return None


def own_instance(fn: KeyedProcessFunction) -> KeyedProcessFunction:
    """A copy of the user's function for one operator instance, as Flink gives every parallel instance
    its own: a function keeps state handles (bound to this operator's backend) on itself in `open`, so
    two tasks of one worker must never share it. Attributes that cannot be deep-copied (clients,
    locks) are shared by a shallow copy instead."""
    try:
        return copy.deepcopy(fn)
    except Exception:  # e.g. a client object with a socket; the instance itself is still a new one
        return copy.copy(fn)


class ProcessOperator(Operator):
    def __init__(self, name: str, key_cols: list[str], keys: list[pl.Expr], fn: KeyedProcessFunction,
                 schema: pl.Schema | None, side_outputs: tuple[str, ...], backend: StateBackend,
                 on_error: str = "fail") -> None:
        self.name = name
        self.on_error = on_error
        self.where: Place = ()  # the record or timer being handled (_place puts it in words)
        self.dead: list[tuple[str, str, str]] = []  # (position, reason, raw) set aside since the last emit
        self.key_cols = key_cols
        self.keys = keys
        self.fn = own_instance(fn)
        self.schema = schema
        self.side_tags = set(side_outputs)
        self.side: dict[str, list[Output]] = {t: [] for t in side_outputs}
        self.backend = backend
        self.scope = _Scope(backend)
        self.fn.open(StateContext(self.scope))
        self.ctx = ProcessContext(self)
        self.pending = ArrivalBuffer()
        self.timers = TimerQueue()  # event time
        self.ptimers = TimerQueue()  # processing time
        self.timer_seq = 0  # registrations so far: ties at one time fire in registration order
        self.watermark = NO_WATERMARK
        self.current_key: Any = None
        self.time_dtype: pl.DataType | None = None

    # timers ----------------------------------------------------------------------------------
    def add_timer(self, kind: str, at: int) -> None:
        queue = self.timers if kind == "event" else self.ptimers
        if queue.add(at, self.timer_seq + 1, self.scope.key, orjson.dumps(self.current_key)):
            self.timer_seq += 1  # (a second one for this key and time is no new timer, as in Flink)

    def delete_timer(self, kind: str, at: int) -> None:
        (self.timers if kind == "event" else self.ptimers).delete(at, self.scope.key)

    # records ---------------------------------------------------------------------------------
    def on_batch(self, index: int, batch: Batch) -> Emitted:
        emitted: Emitted = []
        if batch.height:
            require_event_time("process", self.name, batch)
            if batch.time_dtype is not None:
                self.time_dtype = batch.time_dtype
            df, late = ArrivalBuffer.split_late(self.pending.stamp(batch.df.with_columns(*self.keys)))
            if late.height:
                emitted.append(("late", Batch(late.drop(SEQ), watermark=batch.watermark, origin=batch.origin,
                                              time_dtype=batch.time_dtype)))
            self.pending.add(df)
        wm = batch.watermark if batch.watermark is not None else self.watermark
        return self._advance(max(self.watermark, wm), batch) + emitted

    def on_end(self) -> Emitted:
        return self._advance(END_OF_TIME, None)

    def _advance(self, watermark: int, batch: Batch | None) -> Emitted:
        start_wm = self.watermark
        self.watermark = watermark
        out: list[Output] = []
        released = self.pending.release(watermark)
        records: list[dict[str, Any]] = []
        if released is not None and released.height:
            # once per batch: the user's columns as dicts, and times, offsets and keys as plain lists
            times: list[int] = released[TIME].to_list()
            offsets: list[Any] = (released[OFFSET].to_list() if OFFSET in released.columns
                                  else [None] * released.height)
            if len(self.key_cols) == 1:
                kvs: list[Any] = released[self.key_cols[0]].to_list()
            else:
                kvs = [list(r) for r in released.select(self.key_cols).iter_rows()]
            records = user_columns(released).to_dicts()
        n = len(records)
        i = 0
        timers = self.timers
        while True:
            next_rec = times[i] if i < n else None
            next_timer = timers.next_time()
            if next_timer is not None and next_timer >= watermark:
                next_timer = None
            if next_rec is None and next_timer is None:
                break
            if next_timer is None or (next_rec is not None and next_rec <= next_timer):
                self._call_process(records[i], kvs[i], times[i], offsets[i], out)
                i += 1
            else:
                ts, key, key_json = timers.pop()
                self._call_timer(ts, key, orjson.loads(key_json), out)
        now = int(time.time() * 1000)
        while (due := self.ptimers.next_time()) is not None and due <= now:
            ts, key, key_json = self.ptimers.pop()
            self._call_timer(ts, key, orjson.loads(key_json), out)
        return self._emit(out, start_wm, watermark, batch)

    def _call_process(self, record: dict[str, Any], kv: Any, ts: int, offset: Any, out: list[Output]) -> None:
        scope = self.scope
        scope.key, self.current_key, scope.event_time = key_bytes(kv), kv, ts
        self.where = where = (offset, kv, ts)  # put in words only when something fails (_place)
        try:
            produced = self.fn.process(record, self.ctx)
            if produced is None:
                return
            items = _dicts(produced, "process")
        except Exception as exc:
            self._failed(exc, "process", record)
            return
        out.extend((item, ts, where) for item in items)

    def _call_timer(self, ts: int, key: bytes, kv: Any, out: list[Output]) -> None:
        self.scope.key, self.current_key, self.scope.event_time = key, kv, ts
        self.where = where = (None, kv, ts, "timer")
        try:
            produced = self.fn.on_timer(ts, self.ctx)
            if produced is None:
                return
            items = _dicts(produced, "on_timer")
        except Exception as exc:
            self._failed(exc, "on_timer", {"key": kv, "timer": ts})
            return
        out.extend((item, ts, where) for item in items)

    def _failed(self, exc: Exception, what: str, raw: dict[str, Any]) -> None:
        """The user's function raised (or produced something other than dicts): a dead letter, or stop."""
        reason = f"{type(exc).__name__}: {exc}"
        where = _place(self.where)
        if self.on_error == "dead_letter":
            self.dead.append((where, reason, orjson.dumps(raw, default=str).decode()))
            return
        raise UserFunctionError(self.name, where, f"{what} raised {reason}",
                                "fix the process function, or set aside the records it fails on with "
                                '.process(..., on_error="dead_letter") and write the step\'s .dead_letters') from exc

    def _frame(self, rows: list[Output], schema: pl.Schema | None, start_wm: int) -> pl.DataFrame:
        """The records as columns. A record whose values do not fit the others' (or the declared schema's)
        types stops the run, naming it, or is a dead letter."""
        if not rows:
            return pl.DataFrame(schema=schema) if schema is not None else pl.DataFrame()
        while True:
            records = [r for r, _, _ in rows]
            try:
                df = pl.from_dicts(records, schema=schema)
                break
            except pl.exceptions.PolarsError as exc:
                found = _misfit(records, schema)
                if found is None and schema is None:  # e.g. ints in the first 100 records, floats after
                    df = pl.from_dicts(records, infer_schema_length=None)
                    break
                i, detail = found or (0, polars_detail(exc))
                record, _, place = rows[i]
                where = _place(place)
                reason = f"its output record {orjson.dumps(record, default=str).decode()[:200]} {detail}"
                if self.on_error != "dead_letter":
                    fix = ("declare the output types with .process(..., schema={...}) and return values of those "
                           'types, or set aside such records with .process(..., on_error="dead_letter")')
                    raise UserFunctionError(self.name, where, reason, fix) from exc
                self.dead.append((where, reason, orjson.dumps(record, default=str).decode()))
                rows = rows[:i] + rows[i + 1:]
                if not rows:
                    return pl.DataFrame(schema=schema) if schema is not None else pl.DataFrame()
        return df.with_columns(pl.Series(TIME, [t for _, t, _ in rows], dtype=pl.Int64),
                               pl.lit(start_wm, pl.Int64).alias(WATERMARK))

    def _emit(self, out: list[Output], start_wm: int, watermark: int, batch: Batch | None) -> Emitted:
        emitted: Emitted = [("out", Batch(self._frame(out, self.schema, start_wm), watermark=watermark,
                                          time_dtype=self.time_dtype))]
        for tag, rows in self.side.items():
            if rows:
                emitted.append((tag, Batch(self._frame(rows, None, start_wm), watermark=watermark, time_dtype=self.time_dtype)))
            self.side[tag] = []
        if self.dead:
            where, reasons, raws = zip(*self.dead, strict=True)
            emitted.append(("dead_letters", dead_letters(self.name, where, reasons, raws)))
            self.dead = []
        return emitted

    def close(self) -> None:
        self.backend.close()

    # checkpoints -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "watermark": self.watermark, "timer_seq": self.timer_seq,
            "timers": [[t, s, k.hex(), j.decode()] for t, s, k, j in self.timers],
            "ptimers": [[t, s, k.hex(), j.decode()] for t, s, k, j in self.ptimers],
            "backend": self.backend.snapshot(),
        }
        self.pending.snapshot(state)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.watermark = int(state["watermark"])
        self.timer_seq = int(state["timer_seq"])
        self.timers = TimerQueue.of([(int(t), int(s), bytes.fromhex(k), j.encode()) for t, s, k, j in state["timers"]])
        self.ptimers = TimerQueue.of([(int(t), int(s), bytes.fromhex(k), j.encode()) for t, s, k, j in state["ptimers"]])
        self.backend.restore(state["backend"])
        self.pending.restore(state)


def iter_records(items: Iterable[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    yield from items or ()


__all__ = ["KeyedProcessFunction", "ListState", "MapState", "ProcessContext", "StateContext", "ValueState", "user_columns"]
