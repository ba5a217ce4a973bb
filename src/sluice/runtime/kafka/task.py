"""A task: one partition number of every input topic, with its own executors, state, watermark and
sinks (the Kafka-runtime counterpart of a Kafka Streams task)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from sluice.checkpoint.store import IncompatibleCheckpointError, pack_state, unpack_state
from sluice.connectors.api import SourceContext
from sluice.connectors.kafka import Decoder
from sluice.core.batch import END_OF_TIME, NO_WATERMARK, Batch, Origin
from sluice.core.plan import Read, Write
from sluice.operators.stateless import EventTimeOperator
from sluice.runtime.commit import EpochCommit
from sluice.runtime.executor import Executor, sink_txns
from sluice.runtime.repartition import RepartitionReader

if TYPE_CHECKING:
    from sluice.runtime.kafka.worker import Worker


class Task:
    """One partition number: the upstream part reads that partition of every input topic, the downstream
    part (if the flow repartitions) that partition of the internal topic. Each part has its executor."""

    def __init__(self, worker: Worker, partition: int, saved: bytes | None = None) -> None:
        """`saved`: the task's newest snapshot, restored by `restore()`. Its record of the plan says the names
        its write steps' transactions keep (a step renamed with allow_rename keeps its old one), which the
        sinks need when they open."""
        self.p = partition
        self.worker = worker
        self.saved = unpack_state(saved) if saved is not None else None
        meta = self.saved[0] if self.saved is not None else {}
        kept: dict[str, str] = {}  # write step → the name its transactions keep
        for record in meta.get("plan") or []:
            kept.update({name: e["txn_name"] for name, e in record.items() if e.get("txn_name")})
        renames = worker.renames
        for old, new in renames.items():
            if any(old in record for record in meta.get("plan") or []) or old in (meta.get("sinks") or {}):
                kept[new] = kept.pop(old, old)
        self.parts = [Executor(plan, worker.rt.batch_size, task=partition, instance=worker.instance, exactly_once=True,
                               renames={o: n for o, n in renames.items() if n in {st.name for st in plan.steps}},
                               txn_names={n: t for n, t in kept.items() if n in {st.name for st in plan.steps}})
                      for plan in worker.task_plans]
        # the task's own sinks (files, databases …): participants in the epoch commit whose prepared
        # transactions travel in the task's snapshot, inside the Kafka transaction (runtime/commit.py)
        self.commit = EpochCommit({name: w for ex in self.parts for name, w in ex.writers.items()
                                   if name not in worker.writers},
                                  worker.rt.sink_commit_attempts, worker.rt.sink_commit_backoff_s)
        self.prepared: dict[str, dict[str, Any]] = {}
        self.restored_sinks: dict[str, Any] | None = None
        self.decoders: dict[str, tuple[str, Decoder, Origin]] = {}
        for name, spec in worker.reads.items():
            step = worker.plan.step(name)
            assert isinstance(step, Read)
            ctx = SourceContext(name, step.schema, worker.rt.batch_size, step.on_error)
            self.decoders[spec.topic] = (name, Decoder(spec, ctx, spec.schema_for(ctx)),
                                         Origin(name, 0, f"kafka:{spec.topic}/{partition}"))
        self.shuffle: RepartitionReader | None = None
        if worker.shuffle_read is not None:
            step = worker.shuffle_read
            self.shuffle = RepartitionReader(step.source, step.name, partition, worker.partitions)
        self.positions: dict[str, int] = {}
        self.ended: set[str] = set()
        self.finished_up = False
        self.finished = False
        self.sent_wm = NO_WATERMARK
        self.sid = 0
        self.dirty = False

    def _check(self, topic: str, msgs: list[Any]) -> list[Any]:
        start = self.positions.get(topic, 0)
        if msgs[0].offset() < start:  # fetched before a rewind: already in the state
            msgs = [m for m in msgs if m.offset() >= start]
        return msgs

    def feed(self, topic: str, msgs: list[Any]) -> None:
        msgs = self._check(topic, msgs)
        if not msgs:
            return
        if self.shuffle is not None and topic == self.shuffle.spec.topic:
            name = self.worker.shuffle_read.name  # type: ignore[union-attr]
            for batch in self.shuffle.decode(msgs):
                self.parts[1].feed(name, "out", batch)
            if self.shuffle.ended and not self.finished:
                self.parts[1].finish()
                self.finished = self.finished_up
        else:
            self.worker.aim_shuffle(self.p)
            name, decoder, origin = self.decoders[topic]
            for port, batch in decoder.decode(origin, msgs):
                self.parts[0].feed(name, port, batch)
        self.positions[topic] = msgs[-1].offset() + 1
        self.dirty = True

    def at_least(self, topic: str, offset: int) -> None:
        """The consumer reached `offset` (end of partition): offsets past transaction markers count as read."""
        if offset > self.positions.get(topic, 0):
            self.positions[topic] = offset
            self.dirty = True

    def upstream_watermark(self) -> int | None:
        """The watermark where the upstream part hands records to the internal topic."""
        wms = [op.wms.current for op in self.parts[0].ops.values() if isinstance(op, EventTimeOperator)]
        return min(wms) if wms else None

    def end(self, topic: str) -> None:
        if topic in self.ended or self.finished_up:
            return
        self.ended.add(topic)
        name, _, origin = self.decoders[topic]
        self.worker.aim_shuffle(self.p)
        self.parts[0].feed(name, "out", Batch(pl.DataFrame(), origin=origin, end_of_partition=True))
        if self.ended == set(self.decoders):
            self.parts[0].finish()
            self.finished_up = True
            if self.shuffle is not None:
                self.worker.shuffle_marker(self.p, "end", END_OF_TIME)
                self.finished = self.shuffle.ended
            else:
                self.finished = True
        self.dirty = True

    def records(self) -> int:
        return self.parts[0].rows_read

    def prepare(self) -> None:
        """Phase one for the task's own sinks: stage the epoch durably (recorded by `snapshot`)."""
        self.prepared = self.commit.prepare(self.sid + 1) if self.commit.writers else {}

    def commit_sinks(self) -> None:
        """Phase two, once the Kafka transaction holding the snapshot has committed."""
        if self.prepared:
            self.commit.commit(self.prepared)
        self.prepared = {}

    def abort_sinks(self) -> None:
        if self.prepared:
            self.commit.abort(self.prepared)
        self.prepared = {}

    def recover_sinks(self) -> None:
        """The task starts (restored or new): commit its last recorded epoch again, drop later staging."""
        if self.commit.writers:
            self.commit.recover(self.restored_sinks)

    def close(self) -> None:
        for ex in self.parts:
            for name, writer in ex.writers.items():
                if name in self.commit.writers:
                    writer.close()
            for op in ex.ops.values():
                op.close()

    def _check_renames(self, meta: dict[str, Any], steps: dict[str, Any], where: str) -> None:
        """Each allow_rename pair's old name must be in this task's snapshot, or its new one (a task already
        restored once with the rename); a snapshot from before the plan was recorded is not checked."""
        record = meta.get("plan")
        if record is None or not self.worker.renames:
            return
        names = {n for part in record for n in part} | {k.split("/", 1)[1] for k in steps} | set(meta.get("sinks") or {})
        for old, new in self.worker.renames.items():
            if old not in names and new not in names:
                raise IncompatibleCheckpointError(
                    f"allow_rename {old}={new}: {where} has no step {old!r} (nothing to carry over)")

    def snapshot(self) -> bytes:
        self.sid += 1
        meta = {"partition": self.p, "sid": self.sid, "positions": self.positions, "ended": sorted(self.ended),
                "finished_up": self.finished_up, "finished": self.finished, "flow": self.worker.plan.name,
                "sent_wm": self.sent_wm, "shuffle": self.shuffle.state() if self.shuffle is not None else None,
                "sinks": self.prepared,
                # each part's closed plan (kind, fingerprint, parameters, the name a renamed sink's
                # transactions keep): what a restore checks renames and changed sinks against
                "plan": [ex.plan_record() for ex in self.parts]}
        steps = {f"{i}/{name}": v for i, ex in enumerate(self.parts) for name, v in ex.snapshot_state().items()}
        return pack_state(steps, meta)

    def restore(self) -> None:
        """Restore the snapshot given to the constructor: renames applied (allow_rename), a renamed step
        without one refused, each task sink's recorded transaction under its (new) name."""
        assert self.saved is not None
        meta, steps, load = self.saved
        self.saved = None  # the decoded frames: not kept past the restore
        where = f"the state of task {self.p} in topic {self.worker.state_topic}"
        self._check_renames(meta, steps, where)
        for i, ex in enumerate(self.parts):
            mine = {k.split("/", 1)[1]: v for k, v in steps.items() if k.startswith(f"{i}/")}
            prefix = f"{i}/"
            ex.apply_state(mine, lambda name, prefix=prefix: load(prefix + name),  # type: ignore[misc]
                           where)
        self.sid = int(meta["sid"])
        self.positions = {t: int(o) for t, o in meta["positions"].items()}
        self.ended = set(meta["ended"])
        self.finished_up = bool(meta["finished_up"])
        self.finished = bool(meta["finished"])
        self.sent_wm = int(meta["sent_wm"])
        saved_plan: dict[str, Any] = {}
        for record in meta.get("plan") or []:
            saved_plan.update(record)
        writes = [st for ex in self.parts for st in ex.plan.steps if isinstance(st, Write) and st.name in self.commit.writers]
        self.restored_sinks = sink_txns(writes, meta.get("sinks") or {}, saved_plan, self.worker.renames, (), where) or None
        if self.shuffle is not None and meta["shuffle"] is not None:
            self.shuffle.restore(meta["shuffle"])
        if self.shuffle is None and self.finished:
            # the input had ended (until_end); the topic may have gained records since: go on with them,
            # event time from the last real watermark (Executor.apply_state reopened the operators)
            self.ended, self.finished_up, self.finished = set(), False, False
