"""Single-process execution of a plan: sources are polled in turn, batches are pushed depth-first
through the operators, so a slow sink slows the sources (backpressure without queues)."""

from __future__ import annotations

import errno
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.checkpoint.store import CheckpointStore, IncompatibleCheckpointError
from sluice.connectors.api import SinkContext, SinkWriter, SourceContext, SourceReader
from sluice.core.batch import Batch
from sluice.core.errors import ENCODE_FIX, DiskFullError, EncodeError, PlanError, RejectedRecord
from sluice.core.failpoints import failpoint
from sluice.core.plan import (
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
    Select,
    Step,
    Union,
    Window,
    WindowJoin,
    WithColumns,
    Write,
)
from sluice.operators.base import Emitted, Operator
from sluice.operators.stateless import (
    BranchOperator,
    EventTimeOperator,
    FilterOperator,
    MapOperator,
    PassThrough,
    SelectOperator,
    UnionOperator,
)
from sluice.operators.window import window_operator
from sluice.runtime.schemas import stream_schema

DEFAULT_BATCH_SIZE = 65_536
log = logging.getLogger("sluice.runtime")


@dataclass
class StepStats:
    rows_in: int = 0
    rows_out: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    metrics: dict[str, int] = field(default_factory=dict)  # a sink's own counters (e.g. Kafka delivery reports)


@dataclass
class RunResult:
    """What a run did: per-step row counts, wall time, and rows read from the sources."""

    flow: str
    seconds: float
    rows_read: int
    stats: dict[str, StepStats]

    def rows(self, step: str, port: str = "out") -> int:
        return self.stats[step].rows_out.get(port, 0) if step in self.stats else 0

    def summary(self) -> str:
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        lines = [f"flow {self.flow!r}: {self.rows_read:,} records read in {self.seconds:.2f} s ({rate:,.0f}/s)"]
        for name, st in self.stats.items():
            outs = ", ".join(f"{p} {n:,}" for p, n in st.rows_out.items() if n)
            extra = ", ".join(f"{k} {v:,}" for k, v in st.metrics.items())
            lines.append(f"  {name}: in {st.rows_in:,}" + (f" → {outs}" if outs else "") + (f" ({extra})" if extra else ""))
        return "\n".join(lines)


class _WriteOperator(Operator):
    def __init__(self, name: str, writer: SinkWriter) -> None:
        self.name = name
        self.writer = writer

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if batch.height:
            try:
                self.writer.write(batch.df)
            except RejectedRecord as exc:
                raise EncodeError(self.name, batch.position_of(exc.index), exc.detail, ENCODE_FIX) from exc
        return []



Progress = Callable[[int, float], None]


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how often to checkpoint. `drop_state` names steps whose old state may be discarded."""

    directory: str | Path
    interval_s: float | None = 10.0
    keep: int = 3
    drop_state: tuple[str, ...] = ()


def fingerprint(step: Step) -> str:
    """What a step's state depends on: if this changes, old state cannot be reused."""
    if isinstance(step, Window):
        aggs = ",".join(f"{k}:{type(a).__name__}:{getattr(a, 'of', None)}:{getattr(a, 'q', '')}"
                        for k, a in sorted(step.aggregates.items()))
        return f"window|{step.window!r}|{[str(k) for k in step.keys]}|{aggs}"
    if isinstance(step, Match):
        return f"match|{step.pattern.describe()}|{step.skip}|{[str(k) for k in step.keys]}"
    if isinstance(step, Process):
        return f"process|{type(step.fn).__module__}.{type(step.fn).__qualname__}|{[str(k) for k in step.keys]}"
    if isinstance(step, AsofJoin):
        return "asof_join"  # temporal joins too: checkpoints from before they had their own kind stay usable
    return step.kind


class Executor:
    def __init__(self, plan: Plan, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                 checkpoints: CheckpointSettings | None = None, state_backend: str = "memory",
                 state_dir: str | Path | None = None) -> None:
        if batch_size < 1:
            raise PlanError(f"batch_size must be at least 1, got {batch_size}")
        plan.validate()
        self.plan = plan
        self.batch_size = batch_size
        self.progress = progress
        self.checkpoints = checkpoints
        self.state_backend = state_backend
        self.state_dir = state_dir
        self.store = CheckpointStore(checkpoints.directory, checkpoints.keep) if checkpoints else None
        self.writers: dict[str, SinkWriter] = {}
        self.next_checkpoint = 1
        self.restored_from: int | None = None
        self.rows_read = 0
        self.routes: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
        for step in plan.steps:
            for i, ref in enumerate(step.inputs):
                self.routes[(ref.step, ref.port)].append((step.name, i))
        self.readers: dict[str, SourceReader] = {}
        self.ops: dict[str, Operator] = {}
        self.stats: dict[str, StepStats] = {s.name: StepStats() for s in plan.steps}
        for step in plan.steps:
            self.ops[step.name] = self._compile(step)
        for step in plan.steps:
            if isinstance(step, EventTime):
                op = self.ops[step.name]
                assert isinstance(op, EventTimeOperator)
                op.declare({r: self.readers[r].partitions() for r in self._upstream_reads(step)})

    def _upstream_reads(self, step: Step) -> list[str]:
        found: list[str] = []
        todo = [r.step for r in step.inputs]
        while todo:
            s = self.plan.step(todo.pop())
            if isinstance(s, Read):
                found.append(s.name)
            todo.extend(r.step for r in s.inputs)
        return found

    def _compile(self, step: Step) -> Operator:
        if isinstance(step, Read):
            ctx = SourceContext(step.name, step.schema, self.batch_size, step.on_error)
            self.readers[step.name] = step.source.open(ctx)
            return PassThrough(step.name)
        if isinstance(step, Write):
            writer = step.sink.open(SinkContext(step.name, exactly_once=self.checkpoints is not None,
                                                schema=stream_schema(self.plan, step.inputs[0])))
            self.writers[step.name] = writer
            return _WriteOperator(step.name, writer)
        if isinstance(step, Filter):
            return FilterOperator(step)
        if isinstance(step, Select | WithColumns):
            return SelectOperator(step)
        if isinstance(step, Map):
            return MapOperator(step)
        if isinstance(step, EventTime):
            return EventTimeOperator(step)
        if isinstance(step, Window):
            return window_operator(step)
        if isinstance(step, Union):
            return UnionOperator(step)
        if isinstance(step, Branch):
            return BranchOperator(step)
        if isinstance(step, KeyBy):
            return PassThrough(step.name)
        if isinstance(step, DetectAnomalies):
            from sluice.operators.anomaly import ZScoreOperator
            from sluice.operators.window import key_names

            return ZScoreOperator(step.name, list(step.keys), key_names(step.keys), step.value, step.window_ms,
                                  step.threshold, step.min_count, step.only_anomalies)
        if isinstance(step, LookupJoin):
            from sluice.operators.lookup import LookupJoinOperator

            return LookupJoinOperator(step.name, step.by, step.lookup, step.how, step.cache_ttl_s, step.cache_size)
        if isinstance(step, WindowJoin):
            from sluice.operators.window_join import WindowJoinOperator

            return WindowJoinOperator(step.name, list(step.by), step.window, step.suffix)
        if isinstance(step, Match):
            from sluice.operators.match import MatchOperator
            from sluice.operators.window import key_names

            return MatchOperator(step.name, key_names(step.keys), list(step.keys), step.pattern, step.skip)
        if isinstance(step, IntervalJoin):
            from sluice.operators.interval import IntervalJoinOperator

            return IntervalJoinOperator(step.name, list(step.by), step.lower_ms, step.upper_ms, step.how, step.suffix)
        if isinstance(step, AsofJoin):
            from sluice.operators.asof import AsofJoinOperator

            return AsofJoinOperator(step.name, list(step.by), step.tolerance_ms, step.strict, step.how,
                                    step.right_order, step.suffix, step.deleted)
        if isinstance(step, Process):
            from sluice.operators.process import ProcessOperator
            from sluice.operators.window import key_names
            from sluice.state.backends import make_backend

            state_dir = Path(self.state_dir) / self.plan.name / step.name if self.state_dir else None
            backend = make_backend(self.state_backend, state_dir)
            schema = step.schema.polars if step.schema is not None else None
            return ProcessOperator(step.name, key_names(step.keys), list(step.keys), step.fn, schema,
                                   step.side_outputs, backend, step.on_error)
        raise PlanError(f"step {step.name!r}: no operator for {type(step).__name__}")

    def _push(self, step: str, port: str, batch: Batch) -> None:
        self.stats[step].rows_out[port] += batch.height
        for consumer, index in self.routes.get((step, port), ()):
            st = self.stats[consumer]
            st.rows_in += batch.height
            st.batches += 1
            for out_port, out in self.ops[consumer].on_batch(index, batch):
                self._push(consumer, out_port, out)

    def apply_state(self, saved: dict[str, Any], load: Callable[[str], dict[str, Any] | None], where: str) -> None:
        """Restore every step from saved state: `saved` maps step names to entries with a "fingerprint";
        `load(name)` gives the step's state. Changed steps raise unless their state may be dropped."""
        drop = self.checkpoints.drop_state if self.checkpoints else ()
        removed = [n for n in saved if n not in {s.name for s in self.plan.steps}]
        if removed:
            log.warning("%s has state for steps no longer in the flow, ignored: %s", where, ", ".join(removed))
        for step in self.plan.steps:
            entry = saved.get(step.name)
            if entry is None:
                continue
            if entry["fingerprint"] != fingerprint(step) and not isinstance(step, Read | Write):
                if step.name in drop:
                    log.warning("step %r changed; its checkpointed state is dropped as asked", step.name)
                    continue
                raise IncompatibleCheckpointError(
                    f"step {step.name!r} changed since {where} "
                    f"(was {entry['fingerprint']}, now {fingerprint(step)}); its state cannot be reused. "
                    f"Rename the step to start it empty, or drop its state explicitly (drop_state=[{step.name!r}], "
                    f"sluice run --drop-state {step.name})")
            state = load(step.name)
            assert state is not None
            if isinstance(step, Read):
                self.readers[step.name].seek(state["position"])
            elif not isinstance(step, Write):
                self.ops[step.name].restore(state)
        self._reopen_after_end()

    def _reopen_after_end(self) -> None:
        """State saved after the input ended: if the sources have grown, event time goes on from the last
        real watermark (never from the +∞ of the end), and what was emitted at the end stays final."""
        ended = [op for op in self.ops.values() if isinstance(op, EventTimeOperator) and op.resumed_after_end is not None]
        if not ended:
            return
        real = min(int(op.resumed_after_end) for op in ended)  # type: ignore[arg-type]
        for op in self.ops.values():
            if isinstance(op, EventTimeOperator):
                op.resumed_after_end = None
            else:
                op.reopen(real)

    def snapshot_state(self) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """Every stateful step's (kind, fingerprint, state), source positions included."""
        steps: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for step in self.plan.steps:
            if isinstance(step, Read):
                steps[step.name] = (step.kind, fingerprint(step), {"position": self.readers[step.name].position()})
                continue
            state = self.ops[step.name].snapshot()
            if state is not None:
                steps[step.name] = (step.kind, fingerprint(step), state)
        return steps

    def feed(self, step: str, port: str, batch: Batch) -> None:
        """Push a batch that a source step produced through the flow (used by runtimes that read themselves)."""
        if port == "out":
            self.rows_read += batch.height
        self._push(step, port, batch)

    def finish(self) -> None:
        """All input has ended: let every operator emit what it still holds."""
        for step in self.plan.steps:
            for port, out in self.ops[step.name].on_end():
                self._push(step.name, port, out)

    # --- checkpoints ------------------------------------------------------------------------------
    def _restore(self) -> None:
        assert self.store is not None and self.checkpoints is not None
        cp = self.store.latest()
        if cp is None:
            for writer in self.writers.values():
                writer.recover(None)
            return
        self.apply_state(cp.manifest["steps"], cp.state, f"checkpoint {cp.id} in {self.store.dir}")
        for name, writer in self.writers.items():
            writer.recover(cp.manifest["sinks"].get(name))
        self.next_checkpoint = cp.id + 1
        self.restored_from = cp.id
        log.info("restored from checkpoint %d in %s", cp.id, self.store.dir)

    def _checkpoint(self) -> None:
        """Between batches: positions, state and staged output under one manifest, then publish."""
        cid = self.next_checkpoint
        self.next_checkpoint += 1
        sinks = {name: w.prepare(cid) for name, w in self.writers.items()}
        failpoint("after_prepare")
        if self.store is None:
            for name, w in self.writers.items():
                w.commit(sinks[name])
            return
        steps = self.snapshot_state()
        self.store.write(cid, self.plan.name, steps, sinks)
        failpoint("after_manifest")
        for name, w in self.writers.items():
            w.commit(sinks[name])
            failpoint("after_sink_commit")
        self.store.prune()

    def run(self) -> RunResult:
        start = time.perf_counter()
        if self.store is not None:
            self._restore()
        else:
            for writer in self.writers.values():
                writer.recover(None)
        self.rows_read = 0
        streams: dict[str, Iterator[tuple[str, Batch]]] = {n: r.batches() for n, r in self.readers.items()}
        try:
            self._loop(streams, start)
        except OSError as exc:
            # Polars reports a full disk as an OSError without errno: "(os error 28)"
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and "os error 28" not in str(exc):
                raise
            where = exc.filename or "the output or checkpoint directory"
            done = self.store.ids() if self.store else []
            resume = (f"run again with the same checkpoint directory ({self.store.dir}) to resume from "
                      + (f"checkpoint {done[-1]}" if done else "the start")) if self.store else "run again"
            raise DiskFullError(f"no space left on the device while writing {where}. Everything committed before is "
                                f"intact and nothing half-written is visible. Free some space, then {resume}.") from exc
        finally:
            for reader in self.readers.values():
                reader.close()
            for name, writer in self.writers.items():
                writer.close()
                metrics = getattr(writer, "metrics", None)
                if callable(metrics):
                    self.stats[name].metrics = dict(metrics())
            for op in self.ops.values():
                op.close()
        seconds = time.perf_counter() - start
        return RunResult(self.plan.name, seconds, self.rows_read, self.stats)

    def _loop(self, streams: dict[str, Iterator[tuple[str, Batch]]], start: float) -> None:
        last_report = last_checkpoint = start
        interval = self.checkpoints.interval_s if self.checkpoints else None
        while streams:
            for name in list(streams):
                try:
                    port, batch = next(streams[name])
                except StopIteration:
                    del streams[name]
                    continue
                if port == "out":
                    self.rows_read += batch.height
                self._push(name, port, batch)
                now = time.perf_counter()
                if interval is not None and now - last_checkpoint >= interval:
                    self._checkpoint()
                    last_checkpoint = time.perf_counter()
                if self.progress is not None and now - last_report >= 1.0:
                    last_report = now
                    self.progress(self.rows_read, now - start)
        self.finish()
        self._checkpoint()


def run(flow: object, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
        checkpoint_dir: str | Path | None = None, checkpoint_interval: float | None = 10.0,
        keep_checkpoints: int = 3, drop_state: tuple[str, ...] = (), state: str = "memory",
        state_dir: str | Path | None = None) -> RunResult:
    """Run a flow (or a plan) to the end of its input.

    With `checkpoint_dir`, a checkpoint is taken every `checkpoint_interval` seconds and at the end, and a
    run started again with the same directory resumes from the newest one: file sinks then hold exactly
    what one uninterrupted run writes.

    `state="rocksdb"` keeps keyed process-function state in RocksDB (under `state_dir`, or a temporary
    directory) instead of memory.
    """
    plan = flow.plan() if hasattr(flow, "plan") else flow
    if not isinstance(plan, Plan):
        raise PlanError(f"run() takes a Flow or a Plan, got {type(flow).__name__}")
    settings = None
    if checkpoint_dir is not None:
        settings = CheckpointSettings(checkpoint_dir, checkpoint_interval, keep_checkpoints, tuple(drop_state))
    return Executor(plan, batch_size, progress, settings, state, state_dir).run()
