"""What every operator is: batches in, (port, batch) pairs out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import polars as pl

from sluice.core.batch import END_OF_TIME, INTERNAL_PREFIX, TIME, WATERMARK, Batch

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

    def reopen(self, watermark: int) -> None:
        """The input had ended (the watermark jumped to +∞ and everything held was emitted, as final) and
        a resumed run brings more: event time goes on from `watermark`, the last real one. Operators whose
        results depend on more than their watermark override this."""
        if getattr(self, "watermark", None) == END_OF_TIME:
            setattr(self, "watermark", watermark)  # noqa: B010 (not every operator has one)
        wms = getattr(self, "wms", None)
        if isinstance(wms, list):
            setattr(self, "wms", [watermark if w == END_OF_TIME else w for w in wms])  # noqa: B010


def nonempty(pairs: Sequence[tuple[str, Batch]]) -> Emitted:
    """Drop empty batches, except those that carry watermark progress downstream."""
    return [(port, b) for port, b in pairs if b.height > 0 or b.watermark is not None]


SEQ = "__sl_seq"


class ArrivalBuffer:
    """Records waiting until their event time is complete (the watermark has passed it), stamped with
    their arrival order so that equal times are released in arrival order. Used by every operator that
    must see records in event-time order (process functions, patterns, anomaly detection)."""

    def __init__(self) -> None:
        self.frame: pl.DataFrame | None = None
        self.seq = 0

    def stamp(self, df: pl.DataFrame) -> pl.DataFrame:
        out = df.with_columns(pl.int_range(self.seq, self.seq + df.height, dtype=pl.Int64).alias(SEQ))
        self.seq += df.height
        return out

    @staticmethod
    def split_late(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(on time, late): a record behind the watermark when it arrived can no longer be put in order."""
        behind = pl.col(TIME) < pl.col(WATERMARK)
        return df.filter(~behind), df.filter(behind)

    def add(self, df: pl.DataFrame) -> None:
        self.frame = df if self.frame is None else pl.concat([self.frame, df], how="diagonal_relaxed")

    def release(self, watermark: int) -> pl.DataFrame | None:
        """The records whose time is complete (t < watermark), in (time, arrival) order."""
        if self.frame is None or self.frame.height == 0:
            return None
        due = pl.col(TIME) < watermark
        ready = self.frame.filter(due).sort([TIME, SEQ])
        self.frame = self.frame.filter(~due)
        return ready if ready.height else None

    def snapshot(self, state: dict[str, Any]) -> None:
        state["seq"] = self.seq
        if self.frame is not None:
            state["buffer"] = self.frame

    def restore(self, state: dict[str, Any]) -> None:
        self.seq = int(state["seq"])
        self.frame = state.get("buffer")


def require_event_time(kind: str, name: str, batch: Batch) -> None:
    """Order-sensitive steps need the columns an event_time step adds."""
    if TIME not in batch.df.columns:
        from sluice.core.errors import PlanError

        raise PlanError(f"{kind} {name!r} needs event time: call .event_time(...) before it (on every input)")


def check_columns(kind: str, name: str, batch: Batch, reads: Mapping[str, pl.Expr | None]) -> None:
    """Every column the step's expressions read (`reads`: what reads it → expression) is in the stream;
    checked on the first batch, so a misspelt column is named with the columns there are."""
    from sluice.core.errors import PlanError
    from sluice.core.show import show_expr

    have = [c for c in batch.df.columns if not c.startswith(INTERNAL_PREFIX)]
    if not have:
        return  # an empty frame without columns says nothing yet
    for what, expr in reads.items():
        if expr is None:
            continue
        missing = [c for c in expr.meta.root_names() if c not in have and not c.startswith(INTERNAL_PREFIX)]
        if missing:
            raise PlanError(f"{kind} {name!r}: {what} ({show_expr(expr)}) reads column {missing[0]!r}, which the "
                            f"stream does not have; its columns are: {', '.join(have)}. Fix: use one of those "
                            f"columns, or add {missing[0]!r} before this step (e.g. with .with_columns)")


class TwoInputState:
    """The state the joins keep: buffered left and right rows, each input's watermark, arrival count."""

    left: pl.DataFrame | None
    right: pl.DataFrame | None
    wms: list[int]
    watermark: int
    seq: int
    time_dtype: pl.DataType | None

    def _init_inputs(self) -> None:
        from sluice.core.batch import NO_WATERMARK

        self.left = None
        self.right = None
        self.wms = [NO_WATERMARK, NO_WATERMARK]
        self.watermark = NO_WATERMARK
        self.seq = 0
        self.time_dtype = None

    def _append(self, index: int, rows: pl.DataFrame) -> None:
        """Buffer rows of input `index` (0: left, 1: right)."""
        if index == 0:
            self.left = rows if self.left is None else pl.concat([self.left, rows], how="diagonal_relaxed")
        else:
            self.right = rows if self.right is None else pl.concat([self.right, rows], how="diagonal_relaxed")

    def _input_watermark(self, index: int, batch: Batch) -> int:
        """Record input `index`'s watermark; the operator's is the minimum of both."""
        if batch.watermark is not None:
            self.wms[index] = max(self.wms[index], batch.watermark)
        return min(self.wms)

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"wms": self.wms, "watermark": self.watermark, "seq": self.seq}
        if self.left is not None:
            state["left"] = self.left
        if self.right is not None:
            state["right"] = self.right
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.wms = [int(w) for w in state["wms"]]
        self.watermark = int(state["watermark"])
        self.seq = int(state["seq"])
        self.left = state.get("left")
        self.right = state.get("right")


def key_bytes(value: Any) -> bytes:
    """A key as stored bytes (keyed state, timers, partial matches). orjson's bytes keep its 4 kB write
    buffer (4 GB for a million keys), so the key is copied to its own size."""
    return bytes(memoryview(orjson.dumps(value)))

