"""Window shapes, and when a window's result is emitted (`Emit`): the shape says which records a window
holds, the emission when its result comes out. See docs/design/time.md."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from sluice.core.errors import PlanError
from sluice.time.watermark import to_ms


@dataclass(frozen=True)
class Tumbling:
    """Fixed, non-overlapping windows [k·size + offset, (k+1)·size + offset), epoch-aligned."""

    size: timedelta
    offset: timedelta = timedelta(0)

    @property
    def size_ms(self) -> int:
        return _positive(self.size, "tumbling window size")

    @property
    def slide_ms(self) -> int:
        return self.size_ms

    @property
    def offset_ms(self) -> int:
        return to_ms(self.offset, "window offset") % self.size_ms


@dataclass(frozen=True)
class Sliding:
    """Hopping windows of `size` starting every `slide` (slide need not divide size), epoch-aligned."""

    size: timedelta
    slide: timedelta
    offset: timedelta = timedelta(0)

    @property
    def size_ms(self) -> int:
        return _positive(self.size, "sliding window size")

    @property
    def slide_ms(self) -> int:
        slide = _positive(self.slide, "sliding window slide")
        if slide > self.size_ms:
            raise PlanError(f"slide {self.slide} is longer than size {self.size}: records between windows would be dropped")
        return slide

    @property
    def offset_ms(self) -> int:
        return to_ms(self.offset, "window offset") % self.slide_ms


@dataclass(frozen=True)
class Session:
    """Per-key sessions: two records are in one session when their times differ by at most `gap`,
    directly or through a chain. A session [first, last] is reported with window_end = last + gap and
    closes when the watermark passes last + gap."""

    gap: timedelta

    @property
    def gap_ms(self) -> int:
        return _positive(self.gap, "session gap")


@dataclass(frozen=True)
class Emit:
    """When a window emits its result. Build one with `Emit.on_close()`, `Emit.every(interval)` or
    `Emit.each_batch()`.

    - on_close (the default): once, when the watermark passes the window's end.
    - every(interval): early results too, for the windows that changed, whenever `interval` of processing
      time has passed since the last early firing (Flink's ContinuousProcessingTimeTrigger, Spark's
      trigger interval); checked when a batch reaches the step.
    - each_batch: early results at the end of every micro-batch that changed the window (Spark's
      update output mode).

    Any mode but on_close, or an allowed lateness, makes the window's output an upsert changelog keyed
    by (keys, window_start): column `_op` (+I the first row of a window, +U every later one) and
    `is_final` (true on its last row). Each row is the window's whole current result, not a delta.
    """

    mode: str = "on_close"
    interval: timedelta | None = None

    @staticmethod
    def on_close() -> Emit:
        return Emit("on_close")

    @staticmethod
    def every(interval: timedelta) -> Emit:
        if to_ms(interval, "Emit.every interval") <= 0:
            raise PlanError(f"Emit.every needs a positive interval, got {interval}")
        return Emit("every", interval)

    @staticmethod
    def each_batch() -> Emit:
        return Emit("each_batch")

    @property
    def interval_ms(self) -> int | None:
        return None if self.interval is None else to_ms(self.interval, "Emit.every interval")

    @property
    def early(self) -> bool:
        """Whether windows are emitted before the watermark reaches their end."""
        return self.mode != "on_close"


ON_CLOSE = Emit()


FixedWindow = Tumbling | Sliding
WindowShape = Tumbling | Sliding | Session


def pane_ms(w: FixedWindow) -> int:
    """The widest slice such that every window is a whole number of slices."""
    return math.gcd(w.size_ms, w.slide_ms)


def _positive(d: timedelta, what: str) -> int:
    ms = to_ms(d, what)
    if ms <= 0:
        raise PlanError(f"{what} must be positive, got {d}")
    return ms
