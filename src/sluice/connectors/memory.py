"""In-memory sources and sinks: the test harness's input and output, and handy in notebooks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sluice.connectors.api import SinkContext, SourceContext
from sluice.core.batch import OFFSET, Batch, Origin, user_columns


def to_frame(data: pl.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]], schema: Any = None) -> pl.DataFrame:
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, Mapping):
        return pl.DataFrame(data, schema=schema)
    return pl.DataFrame(list(data), schema=schema, orient="row") if data and not isinstance(data[0], Mapping) else pl.from_dicts(list(data), schema=schema)


@dataclass(frozen=True, eq=False)
class MemorySource:
    """Rows held in memory, one partition per frame in `partitions` (or one frame).

    Partitions are read in turn, one batch from each, which is how a multi-partition log is read.
    """

    data: Any = None
    partitions_data: tuple[Any, ...] = ()

    def frames(self, schema: Any) -> list[pl.DataFrame]:
        parts = self.partitions_data or (self.data,)
        return [to_frame(p, schema) for p in parts]

    def output_schema(self) -> pl.Schema | None:
        """The columns of its rows (without a declared schema)."""
        frames = [f for f in self.frames(None) if f.width]
        return frames[0].schema if frames else None

    def open(self, ctx: SourceContext) -> _MemoryReader:
        return _MemoryReader(self, ctx)


class _MemoryReader:
    def __init__(self, spec: MemorySource, ctx: SourceContext) -> None:
        schema = ctx.schema.polars if ctx.schema is not None else None
        self.frames = spec.frames(schema)
        self.ctx = ctx
        self.cursors = [0] * len(self.frames)
        self.live = set(range(len(self.frames)))

    def position(self) -> dict[str, Any]:
        return {"cursors": list(self.cursors), "live": sorted(self.live)}

    def seek(self, position: dict[str, Any]) -> None:
        self.cursors = [int(c) for c in position["cursors"]]
        self.live = {int(p) for p in position["live"]}

    def partitions(self) -> int:
        return len(self.frames)

    def close(self) -> None:
        pass

    def batches(self) -> Iterator[tuple[str, Batch]]:
        size = self.ctx.batch_size
        cursors, live = self.cursors, self.live
        while live:
            for p in sorted(live):
                frame = self.frames[p]
                origin = Origin(self.ctx.step, p, f"memory[{p}]", unit="record")
                start = cursors[p]
                if start >= frame.height:
                    live.discard(p)
                    yield "out", Batch(pl.DataFrame(), origin=origin, end_of_partition=True)
                    continue
                piece = frame.slice(start, size)
                cursors[p] = start + piece.height
                piece = piece.with_columns(pl.int_range(start, start + piece.height, dtype=pl.Int64).alias(OFFSET))
                yield "out", Batch(piece, origin=origin)


@dataclass(frozen=True, eq=False)
class CollectSink:
    """Keeps every written row in memory; `frame()` returns them in arrival order."""

    frames_written: list[pl.DataFrame] = field(default_factory=list)
    schema_seen: dict[str, pl.Schema] = field(default_factory=dict)  # "stream": its columns, when known

    def open(self, ctx: SinkContext) -> _CollectWriter:
        self.frames_written.clear()
        self.schema_seen.clear()
        if ctx.schema is not None:
            self.schema_seen["stream"] = ctx.schema
        return _CollectWriter(self)

    def frame(self) -> pl.DataFrame:
        """Every row written; with none, an empty frame with the stream's columns (when the plan says them:
        a declared or in-memory source schema, through filters, selects and declared map/process schemas)."""
        frames = [f for f in self.frames_written if f.width]
        if frames:
            return pl.concat(frames, how="diagonal_relaxed")
        return pl.DataFrame(schema=self.schema_seen.get("stream"))

    def rows(self) -> list[dict[str, Any]]:
        return self.frame().to_dicts()


@dataclass
class _CollectWriter:
    spec: CollectSink
    pending: list[pl.DataFrame] = field(default_factory=list)

    def write(self, df: pl.DataFrame) -> None:
        if df.height:
            self.pending.append(user_columns(df))

    def prepare(self, epoch: int) -> dict[str, Any]:
        return {}

    def commit(self, txn: dict[str, Any]) -> None:
        self.spec.frames_written.extend(self.pending)
        self.pending = []

    def abort(self, txn: dict[str, Any]) -> None:
        self.pending = []

    def recover(self, txn: dict[str, Any] | None) -> None:
        self.pending = []

    def close(self) -> None:
        pass
