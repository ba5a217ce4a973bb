"""Single-process execution of a plan: sources are polled in turn, batches are pushed depth-first
through the operators, so a slow sink slows the sources (backpressure without queues)."""

from __future__ import annotations

import errno
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.connectors.api import IDLE, SinkContext, SinkWriter, SourceContext, SourceReader
from sluice.core.batch import INTERNAL_PREFIX, Batch
from sluice.core.errors import (
    ENCODE_FIX,
    DiskFullError,
    EncodeError,
    IncompatibleCheckpointError,
    PlanError,
    RejectedRecord,
)
from sluice.core.failpoints import failpoint
from sluice.core.plain import canonical, describe_changes
from sluice.core.plan import EventTime, Match, Plan, Process, Read, Ref, Step, Union, Window, Write
from sluice.operators.base import Emitted, Operator
from sluice.operators.stateless import EventTimeOperator, PassThrough, union_mismatch
from sluice.runtime.commit import SINK_COMMIT_ATTEMPTS, SINK_COMMIT_BACKOFF_S, EpochCommit, sink_call
from sluice.runtime.registry import BuildContext, build
from sluice.runtime.schemas import stream_schema

if TYPE_CHECKING:  # the store loads only for a run that checkpoints
    from sluice.checkpoint.store import Checkpoint, CheckpointStore, Damage

DEFAULT_BATCH_SIZE = 65_536
log = logging.getLogger("sluice.runtime")


@dataclass
class StepStats:
    """What one step did in a run: rows in, rows out per port, batches."""

    rows_in: int = 0
    rows_out: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: int = 0
    metrics: dict[str, int] = field(default_factory=dict)  # a sink's own counters (e.g. Kafka delivery reports)


@dataclass
class RunResult:
    """What a run did: per-step row counts, wall time, and rows read from the sources. `unwritten` are
    the late and dead-letter streams that no step reads: their records are counted here, not kept."""

    flow: str
    seconds: float
    rows_read: int
    stats: dict[str, StepStats]
    unwritten: tuple[Ref, ...] = ()

    def rows(self, step: str, port: str = "out") -> int:
        return self.stats[step].rows_out.get(port, 0) if step in self.stats else 0

    @property
    def late(self) -> dict[str, int]:
        """Rows put on each step's late stream (a window puts one per window a record missed)."""
        return {name: st.rows_out["late"] for name, st in self.stats.items() if st.rows_out.get("late")}

    @property
    def dead_letters(self) -> dict[str, int]:
        """Records each step set aside as dead letters."""
        return {name: st.rows_out["dead_letters"] for name, st in self.stats.items() if st.rows_out.get("dead_letters")}

    def summary(self) -> str:
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        lines = [f"flow {self.flow!r}: {self.rows_read:,} records read in {self.seconds:.2f} s ({rate:,.0f}/s)"]
        for name, st in self.stats.items():
            outs = ", ".join(f"{p} {n:,}" + (" (not written anywhere)" if Ref(name, p) in self.unwritten else "")
                             for p, n in st.rows_out.items() if n)
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
                sink_call(self.name, self.writer, f"writing {batch.height} rows", lambda: self.writer.write(batch.df))
            except RejectedRecord as exc:
                raise EncodeError(self.name, batch.position_of(exc.index), exc.detail, ENCODE_FIX) from exc
        return []



Progress = Callable[[int, float], None]


def warn_unrouted(plan: Plan) -> None:
    """A warning per late or dead-letter stream that goes nowhere: its records would only be counted."""
    for ref in plan.unrouted():
        step = plan.step(ref.step)
        what = "late records" if ref.port == "late" else 'records set aside by on_error="dead_letter"'
        logging.getLogger("sluice").warning(
            "step %r (%s): its %s go nowhere, they are only counted in the run summary. To keep them, write "
            "them on the stream the step returned: stream.%s.write(%r, sink)",
            step.name, step.kind, what, ref.port, f"{step.name}_{ref.port}")


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how often to checkpoint. `drop_state` names steps whose old state may be discarded."""

    directory: str | Path
    interval_s: float | None = 10.0
    keep: int = 3
    drop_state: tuple[str, ...] = ()
    allow_rename: tuple[tuple[str, str], ...] = ()  # (old, new): a step renamed since the checkpoint


def _legacy_fingerprint(step: Step) -> str | None:
    """The fingerprint string checkpoints carried before fingerprints became JSON (Sluice ≤ the plan
    rework); only window, match and process steps had one that said more than their kind."""
    if isinstance(step, Window):
        aggs = ",".join(f"{k}:{type(a).__name__}:{getattr(a, 'of', None)}:{getattr(a, 'q', '')}"
                        for k, a in sorted(step.aggregates.items()))
        return f"window|{step.window!r}|{[str(k) for k in step.keys]}|{aggs}"
    if isinstance(step, Match):
        return f"match|{step.pattern.describe()}|{step.skip}|{[str(k) for k in step.keys]}"
    if isinstance(step, Process):
        return f"process|{type(step.fn).__module__}.{type(step.fn).__qualname__}|{[str(k) for k in step.keys]}"
    if isinstance(step, EventTime | Union):
        # their state is watermarks (per partition / per input), valid whatever the delay: an old checkpoint
        # of nearly every flow stays usable; the new fingerprint is checked from the next checkpoint on
        return step.kind
    return None


def _check_unions(plan: Plan) -> None:
    """Before any record: a union whose inputs' columns are known from the plan must have the same ones
    (the union operator checks the others at their first batches)."""
    for step in plan.steps:
        if not isinstance(step, Union):
            continue
        known = [(str(ref), schema) for ref in step.inputs if (schema := stream_schema(plan, ref)) is not None]
        if len(known) > 1:
            problem = union_mismatch(step.name, [(name, {c: t for c, t in s.items() if not c.startswith(INTERNAL_PREFIX)})
                                                 for name, s in known])
            if problem is not None:
                raise PlanError(problem)


def _open_store(checkpoints: CheckpointSettings) -> CheckpointStore:
    from sluice.checkpoint.store import CheckpointStore

    return CheckpointStore(checkpoints.directory, checkpoints.keep)


class Executor:
    def __init__(self, plan: Plan, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                 checkpoints: CheckpointSettings | None = None, state_backend: str = "memory",
                 state_dir: str | Path | None = None, task: int | None = None, instance: str = "",
                 exactly_once: bool | None = None, sink_commit_attempts: int = SINK_COMMIT_ATTEMPTS,
                 sink_commit_backoff: float = SINK_COMMIT_BACKOFF_S, renames: Mapping[str, str] | None = None,
                 txn_names: Mapping[str, str] | None = None) -> None:
        """`renames` (old → new) and `txn_names` (write step → the name its transactions keep) are the Kafka
        runtime's, whose tasks restore from their snapshots (runtime/kafka/task.py); under sl.run they come
        from `checkpoints` and its newest checkpoint."""
        if batch_size < 1:
            raise PlanError(f"batch_size must be at least 1, got {batch_size}")
        plan.validate()
        _check_unions(plan)
        self.plan = plan
        self.task = task  # the Kafka runtime's task this executor serves (None: the whole input)
        self.instance = instance
        # sinks stage until commit in a checkpointed run, and under the Kafka runtime (whose tasks commit)
        self.exactly_once = checkpoints is not None if exactly_once is None else exactly_once
        self.batch_size = batch_size
        self.progress = progress
        self.checkpoints = checkpoints
        self.state_backend = state_backend
        self.state_dir = state_dir
        self.store = _open_store(checkpoints) if checkpoints else None
        self.renames = dict(checkpoints.allow_rename) if checkpoints else dict(renames or {})
        self._recoverable: tuple[Checkpoint | None, list[Damage]] = (None, [])
        if self.store is not None:
            self._recoverable = self.store.recoverable()
        self.txn_names = dict(txn_names) if txn_names is not None else self._txn_names(plan, self._recoverable[0])
        self._plan_record: dict[str, Any] | None = None
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
        # computed once: a process function's code is hashed from its source file
        self.fingerprints = {s.name: s.state_fingerprint() for s in plan.steps}
        for step in plan.steps:
            self.ops[step.name] = self._compile(step)
        self.commit = EpochCommit(self.writers, sink_commit_attempts, sink_commit_backoff)
        for step in plan.steps:
            if isinstance(step, EventTime):
                op = self.ops[step.name]
                assert isinstance(op, EventTimeOperator)
                op.declare({r: self.readers[r].partitions() for r in self._upstream_reads(step)})

    def _txn_names(self, plan: Plan, cp: Checkpoint | None) -> dict[str, str]:
        """Write steps renamed with allow_rename keep the name their transactions had (a database sink's
        marker is keyed by it), also in every later checkpoint."""
        saved = (cp.manifest.get("plan") or {}) if cp is not None else {}
        back = {new: old for old, new in self.renames.items()}
        names: dict[str, str] = {}
        for step in plan.steps:
            if isinstance(step, Write):
                was = back.get(step.name, step.name)
                entry = saved.get(was) or {}
                txn_name = entry.get("txn_name") or (was if was != step.name else None)
                if txn_name:
                    names[step.name] = txn_name
        return names

    def plan_record(self) -> dict[str, Any]:
        """What the manifest keeps of the closed plan: each step's kind, fingerprint and parameters."""
        if self._plan_record is None:
            self._plan_record = self._make_plan_record()
        return self._plan_record

    def _make_plan_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in self.plan.steps:
            fp = self.fingerprints[step.name]
            entry: dict[str, Any] = {"kind": step.kind, "fingerprint": json.loads(fp) if fp else None,
                                     "params": json.loads(json.dumps(step.params(), default=str))}
            if step.name in self.txn_names:
                entry["txn_name"] = self.txn_names[step.name]
            out[step.name] = entry
        return out

    def _staging_dir(self) -> str | None:
        return str(Path(self.checkpoints.directory) / "staging") if self.checkpoints is not None else None

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
            writer = sink_call(step.name, step.sink, "opening", lambda: step.sink.open(SinkContext(step.name, exactly_once=self.exactly_once,
                                                schema=stream_schema(self.plan, step.inputs[0]),
                                                flow=self.plan.name, task=self.task, instance=self.instance,
                                                staging_dir=self._staging_dir(),
                                                txn_name=self.txn_names.get(step.name),
                                                changelog_key=self.plan.changelog_key(step.inputs[0]))))
            self.writers[step.name] = writer
            return _WriteOperator(step.name, writer)
        return build(step, BuildContext(self.plan.name, self.batch_size, self.state_backend, self.state_dir))

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
        `load(name)` gives the step's state. A step whose fingerprint differs raises (naming the step and
        what changed) unless its state may be dropped; see docs/design/plan.md."""
        drop = self.checkpoints.drop_state if self.checkpoints else ()
        saved = self._renamed(saved, where)
        problems: list[str] = self._suspected_renames(saved, where, drop)
        step_names = {s.name for s in self.plan.steps}
        removed = [n for n in saved if n not in step_names and n not in drop]
        if removed:
            log.warning("%s has state for steps no longer in the flow, ignored: %s", where, ", ".join(removed))
        predate: list[Step] = []
        restore: list[Step] = []
        for step in self.plan.steps:
            entry = saved.get(step.name)
            if entry is None:
                continue
            now = self.fingerprints[step.name]
            was = entry["fingerprint"]
            if not now:  # reads, writes and stateless steps: nothing to check
                restore.append(step)
                continue
            if isinstance(was, str):  # written before fingerprints were JSON
                legacy = _legacy_fingerprint(step)
                if legacy is None:
                    predate.append(step)
                    continue
                changed = [f"was {was}, now {legacy}"] if was != legacy else []
            else:
                changed = describe_changes(was, json.loads(now)) if canonical(was) != now else []
            if not changed:
                restore.append(step)
            elif step.name in drop:
                log.warning("step %r changed (%s); its checkpointed state is dropped as asked",
                            step.name, "; ".join(changed))
            else:
                problems.append(
                    f"step {step.name!r} changed since {where} ({'; '.join(changed)}); its state cannot be reused. "
                    f"Rename the step to start it empty, or drop its state explicitly (drop_state=[{step.name!r}], "
                    f"sluice run --drop-state {step.name})")
        kept = [s for s in predate if s.name not in drop]
        for step in predate:
            if step.name in drop:
                log.warning("step %r: its state in %s predates fingerprints; dropped as asked", step.name, where)
        if kept:
            names = ", ".join(f"{s.name!r} ({s.kind})" for s in kept)
            problems.append(
                f"{where} was written before Sluice fingerprinted the parameters of {names}, so it cannot tell "
                "whether they changed since. Start them empty with "
                f"drop_state=[{', '.join(repr(s.name) for s in kept)}] "
                f"({' '.join(f'--drop-state {s.name}' for s in kept)}), or start the flow afresh with a new "
                "checkpoint directory")
        if problems:
            raise IncompatibleCheckpointError("\n".join(problems))
        back = {new: old for old, new in self.renames.items()}
        for step in restore:
            state = load(back.get(step.name, step.name))
            assert state is not None
            if isinstance(step, Read):
                self.readers[step.name].seek(state["position"])
            elif not isinstance(step, Write):
                self.ops[step.name].restore(state)
        self._reopen_after_end()

    def _renamed(self, saved: dict[str, Any], where: str) -> dict[str, Any]:
        """`saved` with the steps renamed by allow_rename under their new names."""
        if not self.renames:
            return saved
        self._check_renames()  # (that each old name is in the checkpoint, steps or sinks: checked by _restore)
        out = dict(saved)
        for old, new in self.renames.items():
            if old in out:
                out[new] = out.pop(old)
        return out

    def _check_renames(self, *saved: dict[str, Any]) -> None:
        """Each allow_rename pair names a step of the checkpoint that the flow no longer has, and one it has."""
        names = {s.name for s in self.plan.steps}
        for old, new in self.renames.items():
            if new not in names:
                raise IncompatibleCheckpointError(f"allow_rename {old}={new}: the flow has no step {new!r}")
            if old in names:
                raise IncompatibleCheckpointError(
                    f"allow_rename {old}={new}: the flow still has a step {old!r}; rename it or drop the option")
            if saved and not any(old in s for s in saved):
                raise IncompatibleCheckpointError(
                    f"allow_rename {old}={new}: the checkpoint has no step {old!r} (nothing to carry over)")

    def _suspected_renames(self, saved: dict[str, Any], where: str, drop: tuple[str, ...]) -> list[str]:
        """A step gone from the flow while a new one of the same kind (and, for state, the same parameters)
        has nothing saved looks like a rename: its state (or a read's position) would be lost. Refused."""
        names = {s.name for s in self.plan.steps}
        gone = [n for n in saved if n not in names and n not in drop]
        problems = []
        for old in gone:
            kind, was = saved[old].get("kind"), saved[old].get("fingerprint")
            for step in self.plan.steps:
                if step.name in saved or step.kind != kind or not (isinstance(step, Read) or self.fingerprints[step.name]):
                    continue
                if not isinstance(step, Read) and canonical(was) != self.fingerprints[step.name]:
                    continue
                lost = ("it would read its input again from the start" if isinstance(step, Read) else
                        f"it would start empty and the state of {old!r} would be lost")
                problems.append(
                    f"step {old!r} ({kind}) is in {where} but not in the flow, and {step.name!r}, a {kind} step like "
                    f"it, is new: renamed? Resumed as it is, {lost}. Fix: carry the state over with "
                    f"allow_rename={{{old!r}: {step.name!r}}} (sluice run --allow-rename {old}={step.name}), or "
                    f"discard it with drop_state=[{old!r}] (--drop-state {old})")
                break
        return problems

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

    def _saved_fingerprint(self, step: Step) -> dict[str, Any]:
        fp = self.fingerprints[step.name]
        return json.loads(fp) if fp else {"kind": step.kind}

    def snapshot_state(self) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
        """Every stateful step's (kind, fingerprint as JSON, state), source positions included."""
        steps: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
        for step in self.plan.steps:
            if isinstance(step, Read):
                steps[step.name] = (step.kind, self._saved_fingerprint(step), {"position": self.readers[step.name].position()})
                continue
            state = self.ops[step.name].snapshot()
            if state is not None:
                steps[step.name] = (step.kind, self._saved_fingerprint(step), state)
        return steps

    def take_set_aside(self, late: dict[str, int], dead_letters: dict[str, int]) -> None:
        """Add the rows each step put on its late and dead-letter streams since the last call (step → count)."""
        for name, st in self.stats.items():
            for port, into in (("late", late), ("dead_letters", dead_letters)):
                n = st.rows_out.pop(port, 0)
                if n:
                    into[name] = into.get(name, 0) + n

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
        cp, damaged = self._recoverable
        if cp is None:
            self.commit.recover(None)
            if damaged:
                self.store.set_aside(damaged)
            return
        where = f"checkpoint {cp.id} in {self.store.dir}"
        self._check_renames(cp.manifest["steps"], cp.manifest["sinks"])
        txns = self._sink_txns(cp, where)
        self.apply_state(cp.manifest["steps"], cp.state, where)
        # every sink back to exactly this checkpoint: its epoch again, anything later dropped or cut back
        # (a sink that applied a later epoch it cannot undo refuses, naming the epochs)
        self.commit.recover(txns)
        if damaged:
            self.store.set_aside(damaged)
            log.warning("recovered from checkpoint %d after skipping damaged checkpoint(s) %s; every sink was "
                        "restored to checkpoint %d and the input is read again from its positions", cp.id,
                        ", ".join(str(d.id) for d in damaged), cp.id)
        self.next_checkpoint = cp.id + 1
        self.restored_from = cp.id
        log.info("restored from checkpoint %d in %s", cp.id, self.store.dir)

    def _sink_txns(self, cp: Checkpoint, where: str) -> dict[str, Any]:
        return sink_txns([s for s in self.plan.steps if isinstance(s, Write)], cp.manifest["sinks"],
                         cp.manifest.get("plan") or {}, self.renames, self.checkpoints.drop_state if self.checkpoints
                         else (), where)

    def _checkpoint(self) -> None:
        """Between batches: positions, state and staged output under one manifest, then publish."""
        cid = self.next_checkpoint
        self.next_checkpoint += 1
        txns = self.commit.prepare(cid)
        if self.store is None:
            self.commit.commit(txns)
            return
        steps = self.snapshot_state()
        try:
            self.store.write(cid, self.plan.name, steps, txns, self.plan_record())  # the epoch's one durable record
        except BaseException:
            self.commit.abort(txns)
            raise
        failpoint("after_manifest")
        self.commit.commit(txns)
        self.store.prune()

    def run(self) -> RunResult:
        warn_unrouted(self.plan)
        start = time.perf_counter()
        if self.store is not None:
            self._restore()
        else:
            self.commit.recover(None)
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
                sink_call(name, writer, "closing", writer.close)
                metrics = getattr(writer, "metrics", None)
                if callable(metrics):
                    self.stats[name].metrics = dict(metrics())
            for op in self.ops.values():
                op.close()
        seconds = time.perf_counter() - start
        return RunResult(self.plan.name, seconds, self.rows_read, self.stats, tuple(self.plan.unrouted()))

    def _loop(self, streams: dict[str, Iterator[tuple[str, Batch]]], start: float) -> None:
        last_report = last_checkpoint = start
        interval = self.checkpoints.interval_s if self.checkpoints else None
        pushed = False  # a batch went in since the last checkpoint
        while streams:
            for name in list(streams):
                try:
                    port, batch = next(streams[name])
                except StopIteration:
                    del streams[name]
                    continue
                if port == IDLE:  # a followed source with nothing new: checkpoint what is pending, if due
                    if not pushed:
                        continue
                else:
                    if port == "out":
                        self.rows_read += batch.height
                    self._push(name, port, batch)
                    pushed = True
                now = time.perf_counter()
                if interval is not None and now - last_checkpoint >= interval:
                    self._checkpoint()
                    last_checkpoint = time.perf_counter()
                    pushed = False
                if self.progress is not None and now - last_report >= 1.0:
                    last_report = now
                    self.progress(self.rows_read, now - start)
        self.finish()
        self._checkpoint()


def sink_txns(writes: list[Write], sinks: Mapping[str, Any], saved_plan: Mapping[str, Any],
              renames: Mapping[str, str], drop: tuple[str, ...], where: str) -> dict[str, Any]:
    """The recorded transaction of each write step (renames applied, dropped sinks start afresh); a sink
    renamed without allow_rename (same parameters, or the same path) is refused: as a new sink it would
    replace the committed output. `writes`: the write steps that take part; `saved_plan`: the plan record
    kept with `sinks` (each step's kind and parameters)."""
    saved: dict[str, Any] = dict(sinks)
    for old, new in renames.items():
        if old in saved:
            saved[new] = saved.pop(old)
    names = {s.name for s in writes}
    problems = []
    for old in [n for n in saved if n not in names and n not in drop]:
        was = (saved_plan.get(old) or {}).get("params", {}).get("sink")
        if not isinstance(was, dict):
            continue
        for step in writes:
            if step.name in saved:
                continue
            now = json.loads(json.dumps(step.params(), default=str)).get("sink")
            same_path = isinstance(now, dict) and was.get("path") is not None and was.get("path") == now.get("path")
            if now == was or same_path:
                target = f" (both write {was['path']})" if same_path else ""
                problems.append(
                    f"write step {old!r} is in {where} but not in the flow, and {step.name!r} is a new sink like "
                    f"it{target}: renamed? Resumed as it is, {step.name!r} would start as a new sink and its "
                    f"first commit would replace or repeat the output committed so far. Fix: "
                    f"allow_rename={{{old!r}: {step.name!r}}} (sluice run --allow-rename {old}={step.name}), or "
                    f"drop_state=[{old!r}] (--drop-state {old}) to forget the old sink")
                break
    if problems:
        raise IncompatibleCheckpointError("\n".join(problems))
    return {n: (None if n in drop else t) for n, t in saved.items()}


def run(flow: object, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
        checkpoint_dir: str | Path | None = None, checkpoint_interval: float | None = 10.0,
        keep_checkpoints: int = 3, drop_state: tuple[str, ...] = (), state: str = "memory",
        state_dir: str | Path | None = None, allow_rename: dict[str, str] | None = None,
        sink_commit_attempts: int = SINK_COMMIT_ATTEMPTS, sink_commit_backoff: float = SINK_COMMIT_BACKOFF_S) -> RunResult:
    """Run a flow (or a plan) to the end of its input.

    With `checkpoint_dir`, a checkpoint is taken every `checkpoint_interval` seconds and at the end, and a
    run started again with the same directory resumes from the newest one: file sinks then hold exactly
    what one uninterrupted run writes.

    A resumed run refuses a flow whose steps changed in a way their checkpointed state cannot follow
    (docs/guarantees.md). `drop_state` names steps (or sinks) to start empty; `allow_rename={"old": "new"}`
    carries a renamed step's state, a read's position or a sink's transactions over to its new name.

    A sink whose commit (publishing an epoch) fails is tried `sink_commit_attempts` times in all, pausing
    `sink_commit_backoff` seconds after the first failure and twice as long after each next one, before the
    run stops with a SinkError (docs/guarantees.md "Sink and file-system failures").

    `state="rocksdb"` keeps keyed process-function state in RocksDB (under `state_dir`, or a temporary
    directory) instead of memory.
    """
    plan = flow.plan() if hasattr(flow, "plan") else flow
    if not isinstance(plan, Plan):
        raise PlanError(f"run() takes a Flow or a Plan, got {type(flow).__name__}")
    settings = None
    if checkpoint_dir is not None:
        settings = CheckpointSettings(checkpoint_dir, checkpoint_interval, keep_checkpoints, tuple(drop_state),
                                      tuple((allow_rename or {}).items()))
    elif allow_rename:
        raise PlanError("allow_rename applies to a resumed run: give checkpoint_dir too")
    return Executor(plan, batch_size, progress, settings, state, state_dir, sink_commit_attempts=sink_commit_attempts,
                    sink_commit_backoff=sink_commit_backoff).run()
