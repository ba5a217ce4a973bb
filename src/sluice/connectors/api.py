"""The seams between the engine and the outside world.

A `Source` is a spec (frozen data in the plan); `open` gives a `SourceReader` that yields
`(port, Batch)` pairs: ("out", rows) or ("dead_letters", rejected records). A `Sink` opens a
`SinkWriter` that takes DataFrames without the engine's internal columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

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
    """Yields batches; `position()` after a batch says where to resume so that it is not read again."""

    def partitions(self) -> int: ...

    def batches(self) -> Iterator[tuple[str, Batch]]: ...

    def position(self) -> dict[str, Any]: ...

    def seek(self, position: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    def open(self, ctx: SourceContext) -> SourceReader: ...


@dataclass(frozen=True)
class SinkContext:
    step: str
    exactly_once: bool = False  # a checkpointed run: stage until commit
    schema: pl.Schema | None = None  # the written stream's columns, when the plan says them


class SinkWriter(Protocol):
    """Two-phase: rows written during an epoch are staged; `prepare` makes them durable and returns the
    transaction (JSON) that the checkpoint records; `commit` publishes it (and must be idempotent, since
    recovery commits the last checkpoint's transaction again); `recover` also drops whatever was staged
    after that checkpoint."""

    def write(self, df: pl.DataFrame) -> None: ...

    def prepare(self, epoch: int) -> dict[str, Any]: ...

    def commit(self, txn: dict[str, Any]) -> None: ...

    def recover(self, txn: dict[str, Any] | None) -> None: ...

    def close(self) -> None: ...


class UntransactedWriter:
    """A writer whose output is not staged by Sluice's checkpoints (it is sent at once, or the runtime
    makes it transactional): nothing to prepare, commit or recover."""

    def prepare(self, epoch: int) -> dict[str, Any]:
        return {}

    def commit(self, txn: dict[str, Any]) -> None:
        pass

    def recover(self, txn: dict[str, Any] | None) -> None:
        pass

    def close(self) -> None:
        pass


class Sink(Protocol):
    def open(self, ctx: SinkContext) -> SinkWriter: ...
