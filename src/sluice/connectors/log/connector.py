"""Source and sink on the embedded log."""

from __future__ import annotations

import io
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sluice.connectors.api import IDLE, SinkContext, SourceContext
from sluice.connectors.log.segment import NEWLINE_JOINED
from sluice.connectors.log.store import Log, LogSettings, Partition
from sluice.core.batch import OFFSET, TIME, Batch, Origin, user_columns
from sluice.core.errors import PlanError
from sluice.core.schema import Schema
from sluice.formats.api import Format
from sluice.formats.decode import decode_values, split
from sluice.formats.json import Json

DEFAULT_ROOT = ".sluice/log"


@dataclass(frozen=True)
class LogSource:
    """Read a topic of the embedded log. Bounded by default: it reads what is there when the run starts;
    `follow=True` keeps reading new records until stopped."""

    topic: str
    root: str | Path = DEFAULT_ROOT
    format: Format = field(default_factory=Json)  # Json, or a registry format (sl.Avro, sl.JsonSchema)
    start: str = "earliest"  # "earliest" | "latest"
    follow: bool = False
    block_bytes: int = 8 << 20
    poll_interval_s: float = 0.1

    def open(self, ctx: SourceContext) -> _LogReader:
        schema = ctx.schema or self.format.sluice_schema()
        if schema is None:
            raise PlanError(f"read step {ctx.step!r}: a log source needs schema= (the fields of its JSON records)")
        return _LogReader(self, ctx, schema)


class _LogReader:
    def __init__(self, spec: LogSource, ctx: SourceContext, schema: Schema) -> None:
        self.spec = spec
        self.ctx = ctx
        self.schema = schema
        self.codec = spec.format.bind(spec.topic, reading=True)
        self.lines = self.codec.lines  # values that are lines of text are stored newline-joined: read blocks
        log = Log(spec.root)
        self.parts = [log.partition(spec.topic, p) for p in range(log.partition_count(spec.topic))]
        self.positions = [p.end_offset if spec.start == "latest" else p.start_offset for p in self.parts]
        self.ends = None if spec.follow else [p.end_offset for p in self.parts]
        self.live = set(range(len(self.parts)))

    def position(self) -> dict[str, Any]:
        return {"offsets": list(self.positions), "live": sorted(self.live)}

    def seek(self, position: dict[str, Any]) -> None:
        self.positions = [int(o) for o in position["offsets"]]
        self.live = {int(p) for p in position["live"]}

    def partitions(self) -> int:
        return len(self.parts)

    def close(self) -> None:
        for p in self.parts:
            p.close()

    def _block(self, p: int) -> tuple[bytes, int, int]:
        """Up to block_bytes of newline-joined values from partition p: (blob, first offset, records)."""
        part = self.parts[p]
        until = self.ends[p] if self.ends is not None else None
        blobs: list[bytes] = []
        size = count = 0
        first = self.positions[p]
        for batch, skip in part.read(first, until):
            stop = batch.count if until is None else min(batch.count, until - batch.base_offset)
            if stop <= skip:
                break
            if stop == batch.count:
                blob = batch.newline_blob(skip)
            elif batch.flags & NEWLINE_JOINED:
                blob = batch.values[int(batch.value_offsets[skip]) : int(batch.value_offsets[stop])]
            else:
                blob = b"".join(batch.value(i) + b"\n" for i in range(skip, stop))
            blobs.append(blob)
            size += len(blob)
            count += stop - skip
            if size >= self.spec.block_bytes:
                break
        return b"".join(blobs), first, count

    def _values(self, p: int) -> tuple[list[bytes], int, int]:
        """Up to block_bytes of values from partition p, one per record: (values, first offset, records)."""
        part = self.parts[p]
        until = self.ends[p] if self.ends is not None else None
        values: list[bytes] = []
        size = 0
        first = self.positions[p]
        for batch, skip in part.read(first, until):
            stop = batch.count if until is None else min(batch.count, until - batch.base_offset)
            if stop <= skip:
                break
            values.extend(batch.value(i) for i in range(skip, stop))
            size += int(batch.value_offsets[stop]) - int(batch.value_offsets[skip])
            if size >= self.spec.block_bytes:
                break
        return values, first, len(values)

    def batches(self) -> Iterator[tuple[str, Batch]]:
        live = self.live
        while live:
            progressed = False
            for p in sorted(live):
                origin = Origin(self.ctx.step, p, f"log:{self.spec.topic}/{p}")
                if self.ends is None:
                    self.parts[p].refresh()
                if self.lines is not None:
                    blob, first, count = self._block(p)
                else:
                    values, first, count = self._values(p)
                if count == 0:
                    if self.ends is not None:
                        live.discard(p)
                        yield "out", Batch(pl.DataFrame(), origin=origin, end_of_partition=True)
                    continue
                progressed = True
                if self.lines is not None:
                    decoded = self.lines.decode_messages(blob, self.schema)
                else:
                    decoded = decode_values(self.codec, values, self.schema)
                df, records, dead = split(decoded, self.ctx.step, self.ctx.on_error,
                                          lambda i: origin.position(first + i))  # noqa: B023 (called at once)
                if dead is not None:
                    yield "dead_letters", dead
                offsets = first + records
                df = df.with_columns(pl.Series(OFFSET, offsets, dtype=pl.Int64))
                size = self.ctx.batch_size
                for start in range(0, df.height, size):
                    after = start + size
                    self.positions[p] = int(offsets[after]) if after < df.height else first + count
                    yield "out", Batch(df.slice(start, size), origin=origin)
                self.positions[p] = first + count
            if not progressed and self.ends is None:
                time.sleep(self.spec.poll_interval_s)
                yield IDLE, Batch(pl.DataFrame())  # hand control back: the run's timed checkpoints go on


@dataclass(frozen=True)
class LogSink:
    """Append to a topic of the embedded log (created with `partitions` if missing).

    With `key`, records with equal keys go to the same partition (CRC-32 of the key's UTF-8 text,
    stable across versions); without, each write goes to the next partition in turn.
    """

    topic: str
    root: str | Path = DEFAULT_ROOT
    partitions: int = 1
    key: str | None = None
    format: Format = field(default_factory=Json)  # Json, or a registry format (sl.Avro, sl.JsonSchema)
    settings: LogSettings = field(default_factory=LogSettings)

    def open(self, ctx: SinkContext) -> _LogWriter:
        log = Log(self.root, self.settings)
        log.create_topic(self.topic, self.partitions)
        parts = [log.partition(self.topic, p, writable=True) for p in range(self.partitions)]
        if ctx.task is not None:
            raise PlanError(f"sink {ctx.step!r}: the embedded log is written by one process; under the Kafka runtime "
                            "write to a Kafka topic instead (sl.Topic, or KafkaSink)")
        return _LogWriter(self, parts, ctx.step if ctx.exactly_once else None)


def partition_of(keys: pl.Series, partitions: int) -> np.ndarray:
    """Partition per key: CRC-32 of the key text, computed once per distinct key."""
    text = keys.cast(pl.String).fill_null("")
    uniq = text.unique()
    table = {k: zlib.crc32(k.encode()) % partitions for k in uniq.to_list()}
    return text.replace_strict(table, return_dtype=pl.Int64).to_numpy()


class _LogWriter:
    """Appends as rows come; in a checkpointed run (`staging_name` set) it is exactly-once instead: an
    epoch's rows are staged as Arrow next to the topic at prepare, and commit cuts each partition back to
    its end at prepare time and appends them, so a commit interrupted by a crash is simply redone."""

    def __init__(self, spec: LogSink, parts: list[Partition], staging_name: str | None) -> None:
        self.spec = spec
        self.parts = parts
        # a registry format registers its schema now, so an incompatible change fails at startup
        self.codec = spec.format.bind(spec.topic, reading=False)
        self.lines = self.codec.lines  # values that are lines of text are appended newline-joined
        self.turn = 0
        self.records = 0
        self.staging_name = staging_name
        self.pending: list[pl.DataFrame] = []
        self.staging = Path(spec.root) / spec.topic / ".staging"

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        if self.staging_name is not None:
            if self.lines is None:  # a record the schema rejects fails now, at its position, not at commit
                self.codec.encode_values(user_columns(df))
            keep = [c for c in df.columns if not c.startswith("__sl_") or c == TIME]
            self.pending.append(df.select(keep))
            return
        self._append_rows(df)

    def _append_rows(self, df: pl.DataFrame) -> None:
        ts = df[TIME].to_numpy() if TIME in df.columns else np.full(df.height, int(time.time() * 1000), dtype=np.int64)
        rows = user_columns(df)
        # a registry format encodes every row before any is appended: a rejected record stops the write whole
        encoded = self.codec.encode_values(rows) if self.lines is None else None
        if self.spec.key is None:
            self._append(self.parts[self.turn % len(self.parts)], rows, ts, None, encoded)
            self.turn += 1
            return
        where = partition_of(rows[self.spec.key], len(self.parts))
        for p in np.unique(where):
            sel = np.flatnonzero(where == p)
            sub = rows[sel]
            values = [encoded[i] for i in sel] if encoded is not None else None
            self._append(self.parts[int(p)], sub, ts[sel], sub[self.spec.key].cast(pl.String).fill_null(""), values)

    def _append(self, part: Partition, rows: pl.DataFrame, ts: np.ndarray, keys: pl.Series | None,
                values: list[bytes] | None) -> None:
        flags = NEWLINE_JOINED
        if self.lines is None:  # a registry format: binary values
            assert values is not None
            blob = b"".join(values)
            voffs = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.uint32)
            flags = 0
        else:
            blob = self.lines.encode(rows)
            ends = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 10).astype(np.uint32) + 1
            voffs = np.concatenate([np.zeros(1, dtype=np.uint32), ends])
        kblob, koffs = b"", None
        if keys is not None:
            encoded = [k.encode() for k in keys.to_list()]
            kblob = b"".join(encoded)
            koffs = np.concatenate([[0], np.cumsum([len(k) for k in encoded])]).astype(np.uint32)
        part.append(np.ascontiguousarray(ts, dtype=np.int64), blob, voffs, kblob, koffs, flags)
        self.records += rows.height

    def close(self) -> None:
        for p in self.parts:
            p.close()

    def prepare(self, epoch: int) -> dict[str, Any]:
        if self.staging_name is None:
            for p in self.parts:
                p.sync()
            return {}
        ends = [p.end_offset for p in self.parts]
        if not self.pending:
            return {"ends": ends}
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / f"{self.staging_name}-{epoch:06d}.arrow"
        pl.concat(self.pending, how="diagonal_relaxed").write_ipc(path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        self.pending = []
        return {"ends": ends, "staged": str(path)}

    def commit(self, txn: dict[str, Any]) -> None:
        staged = txn.get("staged")
        if not staged or not os.path.exists(staged):
            return  # nothing to publish, or published already
        for part, end in zip(self.parts, txn["ends"], strict=True):
            part.truncate(int(end))  # take back a commit a crash interrupted
        self._append_rows(pl.read_ipc(io.BytesIO(Path(staged).read_bytes())))
        for part in self.parts:
            part.sync()
        os.unlink(staged)

    def abort(self, txn: dict[str, Any]) -> None:
        if txn.get("staged"):
            Path(txn["staged"]).unlink(missing_ok=True)

    def recover(self, txn: dict[str, Any] | None) -> None:
        if self.staging_name is None:
            return
        if txn:
            self.commit(txn)
            for part, end in zip(self.parts, txn["ends"], strict=True):
                if "staged" not in txn:
                    part.truncate(int(end))
        if self.staging.exists():
            for stray in self.staging.glob(f"{self.staging_name}-*.arrow"):
                stray.unlink()
