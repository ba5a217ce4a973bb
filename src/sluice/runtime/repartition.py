"""Repartitioning under the Kafka runtime: a `key_by` on another key than the input topics' goes through
an internal topic, as in Kafka Streams, with event time carried across (as in Flink).

The flow is cut at that `key_by`. The upstream part writes each batch to `<app>-<step>-repartition`,
one Arrow IPC message per destination partition (murmur2 of the key text: where KafkaSink, the Java
client and Kafka Streams put the key, so the internal topic is co-partitioned with topics they write),
with the records' event time and per-record watermark, and the writing task in a header. The downstream
part reads it; each downstream task keeps the newest watermark of every upstream task and a record's
watermark is the minimum of those: the same rule as for the partitions of one source. Upstream tasks
send their watermark to every partition at each commit (so idle keys do not hold windows open) and an
end marker when their input ends. All of it is written in the worker's transaction, so the internal
topic is exactly-once like the rest.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from sluice.connectors.api import UntransactedWriter
from sluice.core.batch import END_OF_TIME, NO_WATERMARK, OFFSET, TIME, WATERMARK, Batch, Origin
from sluice.core.errors import PlanError
from sluice.core.plan import KeyBy, Plan, Read, Ref, Step, Write

SRC, KIND, WM = "sl.src", "sl.kind", "sl.wm"


@dataclass(frozen=True)
class RepartitionSink:
    topic: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class RepartitionSource:
    topic: str
    keys: tuple[str, ...]


def key_names(step: KeyBy) -> list[str]:
    from sluice.operators.window import key_names as names

    return names(step.keys)


def _descendants(plan: Plan, name: str) -> set[str]:
    found = {name}
    for st in plan.steps:
        if any(r.step in found for r in st.inputs):
            found.add(st.name)
    return found


def split(plan: Plan, source_key: str | None, app_id: str) -> tuple[Plan, Plan | None]:
    """(upstream plan, downstream plan or None). The cut is the first key_by on another key."""
    boundary = next((st for st in plan.steps if isinstance(st, KeyBy) and key_names(st) != [source_key]), None)
    if boundary is None:
        return plan, None
    below = _descendants(plan, boundary.name)
    for st in plan.steps:
        if st.name in below and st.name != boundary.name and any(r.step not in below for r in st.inputs):
            raise PlanError(f"step {st.name!r} joins the stream re-keyed at {boundary.name!r} with one that is not; "
                            "under the Kafka runtime both sides must be keyed the same way: key_by the other side by "
                            f"{key_names(boundary)} too")
    again = [st.name for st in plan.steps if st.name in below and isinstance(st, KeyBy) and st is not boundary
             and key_names(st) != key_names(boundary)]
    if again:
        raise PlanError(f"steps {again} re-key the stream a second time; the Kafka runtime repartitions once per flow")
    topic = f"{app_id}-{boundary.name}-repartition"
    up_steps: list[Step] = [st for st in plan.steps if st.name not in below]
    up_steps.append(Write(f"{boundary.name}__repartition", (boundary.inputs[0],),
                          RepartitionSink(topic, tuple(key_names(boundary)))))
    read = Read(f"{boundary.name}__source", (), RepartitionSource(topic, tuple(key_names(boundary))), None, "fail")
    down_steps: list[Step] = [read]
    from dataclasses import replace

    for st in plan.steps:
        if st.name == boundary.name:
            down_steps.append(replace(st, inputs=(Ref(read.name),)))
        elif st.name in below:
            down_steps.append(st)
    return Plan(plan.name, tuple(up_steps)), Plan(plan.name, tuple(down_steps))


def destinations(df: pl.DataFrame, keys: tuple[str, ...], partitions: int) -> np.ndarray:
    from sluice.connectors.kafka import murmur2_partitions

    if len(keys) == 1:
        return murmur2_partitions(df[keys[0]], partitions)
    joined = df.select(pl.concat_str([pl.col(k).cast(pl.String).fill_null("") for k in keys], separator="\x1f"))
    return murmur2_partitions(joined.to_series(), partitions)


class RepartitionWriter(UntransactedWriter):
    """Upstream side: batches to the internal topic, one IPC message per destination partition."""

    def __init__(self, spec: RepartitionSink, partitions: int, producer: Any) -> None:
        self.spec, self.partitions, self.producer = spec, partitions, producer
        self.task = -1  # the writing task, set by the worker before it feeds one

    def write(self, df: pl.DataFrame) -> None:
        """Rows with the engine's event-time columns (the upstream source offsets are dropped)."""
        df = df.drop(OFFSET) if OFFSET in df.columns else df
        if df.height == 0:
            return
        where = destinations(df, self.spec.keys, self.partitions)
        order = np.argsort(where, kind="stable")
        cuts = np.flatnonzero(np.diff(where[order])) + 1
        for group in np.split(order, cuts):
            buf = io.BytesIO()
            df[group].write_ipc(buf, compression="lz4")
            self._send(int(where[group[0]]), buf.getvalue(), "data")

    def marker(self, kind: str, watermark: int) -> None:
        """A watermark ("wm") or end ("end") marker from the current task to every partition."""
        for p in range(self.partitions):
            self._send(p, b"", kind, watermark)

    def _send(self, partition: int, value: bytes, kind: str, watermark: int | None = None) -> None:
        headers = [(SRC, str(self.task).encode()), (KIND, kind.encode())]
        if watermark is not None:
            headers.append((WM, str(watermark).encode()))
        while True:
            try:
                self.producer.produce(self.spec.topic, value=value, partition=partition, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)


class RepartitionReader:
    """Downstream side: messages of one internal partition → batches with the merged watermark."""

    def __init__(self, spec: RepartitionSource, step: str, partition: int, upstream_tasks: int) -> None:
        self.spec = spec
        self.origin = Origin(step, 0, f"kafka:{spec.topic}/{partition}")
        self.latest = dict.fromkeys(range(upstream_tasks), NO_WATERMARK)

    def state(self) -> dict[str, Any]:
        return {str(u): w for u, w in self.latest.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self.latest = {int(u): int(w) for u, w in state.items()}

    @property
    def ended(self) -> bool:
        return all(w >= END_OF_TIME for w in self.latest.values())

    def current(self) -> int:
        return min(self.latest.values())

    def decode(self, msgs: list[Any]) -> list[Batch]:
        out: list[Batch] = []
        for m in msgs:
            h = dict(m.headers() or [])
            u, kind = int(h[SRC]), h[KIND].decode()
            if kind in ("wm", "end"):
                before = self.current()
                self.latest[u] = END_OF_TIME if kind == "end" else max(self.latest[u], int(h[WM]))
                if self.current() > before:
                    out.append(Batch(pl.DataFrame(), watermark=self.current(), origin=self.origin))
                continue
            df = pl.read_ipc(io.BytesIO(m.value()))
            if WATERMARK in df.columns:
                others = min((w for v, w in self.latest.items() if v != u), default=END_OF_TIME)
                own = np.maximum.accumulate(np.maximum(df[WATERMARK].to_numpy(), self.latest[u]))
                self.latest[u] = int(own[-1])
                df = df.with_columns(pl.Series(WATERMARK, np.minimum(own, others), dtype=pl.Int64))
            df = df.with_columns(pl.lit(int(m.offset()), dtype=pl.Int64).alias(OFFSET))
            wm = self.current() if TIME in df.columns else None
            out.append(Batch(df, watermark=wm, origin=self.origin))
        return out
