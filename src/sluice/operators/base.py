"""What every operator is: batches in, (port, batch) pairs out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sluice.core.batch import Batch

Emitted = list[tuple[str, Batch]]


class Operator:
    """One step at run time. `on_batch` gets a batch from input `index`; `on_end` flushes at end of input."""

    name: str

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        raise NotImplementedError

    def on_end(self) -> Emitted:
        return []

    def snapshot(self) -> dict[str, Any] | None:
        """The operator's state for a checkpoint: JSON scalars and polars DataFrames; None if stateless."""
        return None

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what `snapshot` returned."""

    def close(self) -> None:
        """Release resources (files, databases); called once, whether the run ended or failed."""


def nonempty(pairs: Sequence[tuple[str, Batch]]) -> Emitted:
    """Drop empty batches, except those that carry watermark progress downstream."""
    return [(port, b) for port, b in pairs if b.height > 0 or b.watermark is not None]
