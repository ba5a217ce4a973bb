"""The seams between the engine and the outside world.

A `Source` is a spec (frozen data in the plan); `open` gives a `SourceReader` that yields
`(port, Batch)` pairs: ("out", rows) or ("dead_letters", rejected records). A `Sink` opens a
`SinkWriter` that takes DataFrames without the engine's internal columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import polars as pl

from sluice.core.batch import Batch
from sluice.core.schema import Schema


@dataclass(frozen=True)
class SourceContext:
    step: str
    schema: Schema | None
    batch_size: int
    on_error: str  # "fail" | "dead_letter"


class SourceReader(Protocol):
    def partitions(self) -> int: ...

    def batches(self) -> Iterator[tuple[str, Batch]]: ...

    def close(self) -> None: ...


class Source(Protocol):
    def open(self, ctx: SourceContext) -> SourceReader: ...


@dataclass(frozen=True)
class SinkContext:
    step: str


class SinkWriter(Protocol):
    def write(self, df: pl.DataFrame) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    def open(self, ctx: SinkContext) -> SinkWriter: ...
