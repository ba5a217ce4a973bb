"""The seams between the engine and the outside world.

A `Source` is a spec (frozen data in the plan); `open` gives a `SourceReader` that yields
`(port, Batch)` pairs: ("out", rows) or ("dead_letters", rejected records). A followed source with
nothing new yields `(IDLE, empty batch)` after each empty poll, so that the run keeps control while the
input is quiet (its timed checkpoints, and so its sinks' commits, go on). A `Sink` opens a
`SinkWriter` that takes DataFrames without the engine's internal columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from sluice.core.batch import Batch
from sluice.core.schema import Schema

IDLE = "idle"  # the port of a followed source's "nothing new yet" (an empty batch, pushed nowhere)


@dataclass(frozen=True)
class SourceContext:
    """What a source is opened with: its read step's name, the declared schema, rows per batch, and `on_error`."""

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
    """What a sink writer knows about where it runs: enough to name its transactions and to fence a
    zombie (an older instance of the same task that has not noticed it was replaced)."""

    step: str
    exactly_once: bool = False  # a checkpointed run: stage until commit
    schema: pl.Schema | None = None  # the written stream's columns, when the plan says them
    flow: str = ""
    task: int | None = None  # the Kafka runtime's task (partition number) this writer serves; None: all input
    instance: str = ""  # the worker (Kafka runtime) or run that owns the writer
    staging_dir: str | None = None  # a checkpointed sl.run: where sinks may stage an epoch (under the checkpoints)
    changelog_key: tuple[str, ...] | None = None  # the input is a changelog (column _op) of a table with this key
    txn_name: str | None = None  # a step renamed with allow_rename: the name its transactions keep

    @property
    def txn_prefix(self) -> str:
        """A stable name for this writer's transactions: flow, step and task (not the instance, which
        changes when a task moves to another worker; the new owner recovers the same transactions)."""
        task = "" if self.task is None else f"-t{self.task}"
        return f"{self.flow}-{self.txn_name or self.step}{task}"


def staging_lineage(staging_dir: str) -> str:
    """An id made once per checkpoint directory (kept in its staging directory): a sink that keeps a marker
    of its last committed epoch in the target keys it by this too, since a new directory is a new job
    whose epochs start again at 1."""
    import os
    import uuid
    from pathlib import Path

    staging = Path(staging_dir)
    path = staging / "lineage"
    if not path.exists():
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f".lineage-{uuid.uuid4().hex}"
        tmp.write_text(uuid.uuid4().hex[:12])
        os.replace(tmp, path)
    return path.read_text().strip()


class SinkWriter(Protocol):
    """A participant in the epoch commit (runtime/commit.py; docs/design/commit.md).

    Rows written during an epoch are staged. `prepare(epoch)` makes them durable and returns the
    transaction (JSON) that the runtime records with the epoch's state (the checkpoint manifest under
    `sl.run`, the task's snapshot in the Kafka transaction under the Kafka runtime). Once that record is
    durable, `commit(txn)` publishes the epoch; it must be idempotent, because after a crash `recover(txn)`
    commits the recorded transaction again and then drops whatever was staged after it. `abort(txn)`
    drops a prepared transaction that was never recorded (the record failed)."""

    def write(self, df: pl.DataFrame) -> None: ...

    def prepare(self, epoch: int) -> dict[str, Any]: ...

    def commit(self, txn: dict[str, Any]) -> None: ...

    def abort(self, txn: dict[str, Any]) -> None: ...

    def recover(self, txn: dict[str, Any] | None) -> None: ...

    def close(self) -> None: ...


class UntransactedWriter:
    """A writer whose output is not staged by Sluice's checkpoints (it is sent at once, or the runtime
    makes it transactional): nothing to prepare, commit or recover."""

    def prepare(self, epoch: int) -> dict[str, Any]:
        return {}

    def commit(self, txn: dict[str, Any]) -> None:
        pass

    def abort(self, txn: dict[str, Any]) -> None:
        pass

    def recover(self, txn: dict[str, Any] | None) -> None:
        pass

    def close(self) -> None:
        pass


class Sink(Protocol):
    def open(self, ctx: SinkContext) -> SinkWriter: ...
