"""`foreach_batch`: hand each epoch's rows to a function of yours (Spark's foreachBatch), for quick jobs.

At-least-once: the function is called when the epoch is prepared, before the runtime records it, so after
a crash the same epoch (the same `epoch` number, the same rows) may be passed again. Make the function
idempotent by that number (e.g. `INSERT … ON CONFLICT` keyed by it) or accept repeats. For exactly-once,
write a sink with the two-phase protocol instead (docs/sinks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sluice.connectors.api import SinkContext, UntransactedWriter
from sluice.core.batch import user_columns
from sluice.core.errors import UserFunctionError


@dataclass(frozen=True)
class ForeachBatch:
    """A sink that calls `fn(rows, epoch)` once per epoch that has rows (without a checkpoint directory the
    whole run is one epoch; under the Kafka runtime each task's commit is one)."""

    fn: Callable[[pl.DataFrame, int], Any]

    def open(self, ctx: SinkContext) -> _ForeachWriter:
        return _ForeachWriter(self, ctx)


@dataclass
class _ForeachWriter(UntransactedWriter):
    spec: ForeachBatch
    ctx: SinkContext
    pending: list[pl.DataFrame] = field(default_factory=list)

    def write(self, df: pl.DataFrame) -> None:
        if df.height:
            self.pending.append(user_columns(df))

    def prepare(self, epoch: int) -> dict[str, Any]:
        if not self.pending:
            return {}
        rows, self.pending = pl.concat(self.pending, how="diagonal_relaxed"), []
        try:
            self.spec.fn(rows, epoch)
        except Exception as exc:
            raise UserFunctionError(self.ctx.step, f"epoch {epoch} ({rows.height} rows)", f"{type(exc).__name__}: {exc}",
                                    "fix the function; the epoch is passed again when the run resumes from its "
                                    "checkpoint directory") from exc
        return {}

    def abort(self, txn: dict[str, Any]) -> None:
        self.pending = []

    def recover(self, txn: dict[str, Any] | None) -> None:
        self.pending = []
