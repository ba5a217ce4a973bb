"""Single-process execution of a plan: sources are polled in turn, batches are pushed depth-first
through the operators, so a slow sink slows the sources (backpressure without queues)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sluice.connectors.api import SinkContext, SinkWriter, SourceContext, SourceReader
from sluice.core.batch import Batch
from sluice.core.errors import PlanError
from sluice.core.plan import (
    Branch,
    EventTime,
    Filter,
    KeyBy,
    Map,
    Plan,
    Read,
    Select,
    Step,
    Union,
    Window,
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

DEFAULT_BATCH_SIZE = 65_536


@dataclass
class StepStats:
    rows_in: int = 0
    rows_out: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0


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
            lines.append(f"  {name}: in {st.rows_in:,}" + (f" → {outs}" if outs else ""))
        return "\n".join(lines)


class _WriteOperator(Operator):
    def __init__(self, name: str, writer: SinkWriter) -> None:
        self.name = name
        self.writer = writer

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if batch.height:
            self.writer.write(batch.df)
        return []

    def on_end(self) -> Emitted:
        self.writer.close()
        return []


Progress = Callable[[int, float], None]


class Executor:
    def __init__(self, plan: Plan, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None) -> None:
        if batch_size < 1:
            raise PlanError(f"batch_size must be at least 1, got {batch_size}")
        plan.validate()
        self.plan = plan
        self.batch_size = batch_size
        self.progress = progress
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
            return _WriteOperator(step.name, step.sink.open(SinkContext(step.name)))
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
        raise PlanError(f"step {step.name!r}: no operator for {type(step).__name__}")

    def _push(self, step: str, port: str, batch: Batch) -> None:
        self.stats[step].rows_out[port] += batch.height
        for consumer, index in self.routes.get((step, port), ()):
            st = self.stats[consumer]
            st.rows_in += batch.height
            st.batches += 1
            for out_port, out in self.ops[consumer].on_batch(index, batch):
                self._push(consumer, out_port, out)

    def run(self) -> RunResult:
        start = time.perf_counter()
        rows_read = 0
        last_report = start
        streams: dict[str, Iterator[tuple[str, Batch]]] = {n: r.batches() for n, r in self.readers.items()}
        try:
            while streams:
                for name in list(streams):
                    try:
                        port, batch = next(streams[name])
                    except StopIteration:
                        del streams[name]
                        continue
                    if port == "out":
                        rows_read += batch.height
                    self._push(name, port, batch)
                    if self.progress is not None and time.perf_counter() - last_report >= 1.0:
                        last_report = time.perf_counter()
                        self.progress(rows_read, last_report - start)
            for step in self.plan.steps:
                for port, out in self.ops[step.name].on_end():
                    self._push(step.name, port, out)
        finally:
            for reader in self.readers.values():
                reader.close()
        seconds = time.perf_counter() - start
        return RunResult(self.plan.name, seconds, rows_read, self.stats)


def run(flow: object, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None) -> RunResult:
    """Run a flow (or a plan) to the end of its input."""
    plan = flow.plan() if hasattr(flow, "plan") else flow
    if not isinstance(plan, Plan):
        raise PlanError(f"run() takes a Flow or a Plan, got {type(flow).__name__}")
    return Executor(plan, batch_size, progress).run()
