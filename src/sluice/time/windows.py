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


UPDATES = ("full", "deltas")


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

    `updates` says what each row of a window that comes out more than once holds:
    - "full" (the default; Beam's accumulating panes, Spark's update mode): the window's whole current
      result. Any mode but on_close, or an allowed lateness, makes the output an upsert changelog keyed by
      (keys, window_start): column `_op` (+I the first row of a window, +U every later one) and `is_final`
      (true on its last row). Apply it by replacing rows.
    - "deltas" (Beam's discarding panes): the change since the window's last row, for a MERGE that
      accumulates (`event_count = target.event_count + source.event_count`). count and sum: of the records
      since the last row; mean: their mean (so a count-weighted average of target and source is exact);
      min and max: the window's current value (exact with LEAST/GREATEST, or assigned); every other
      aggregate (percentile, count_distinct, first/last, variance, collect_list, your own): the window's
      whole current value, to be assigned (`p99 = source.p99`). A row comes out only when records came in
      since the window's last row; the output is a plain stream of increments (no `_op`, no `is_final`).
      See docs/design/time.md, "Deltas".
    """

    mode: str = "on_close"
    interval: timedelta | None = None
    updates: str = "full"

    def __post_init__(self) -> None:
        if self.updates not in UPDATES:
            raise PlanError(f"Emit: updates must be 'full' (each row the window's whole result) or 'deltas' (each "
                            f"row the change since the window's last row), got {self.updates!r}")

    @staticmethod
    def on_close(updates: str = "full") -> Emit:
        """Once on close; with an allowed lateness, again for late records (as `updates` says)."""
        return Emit("on_close", updates=updates)

    @staticmethod
    def every(interval: timedelta, updates: str = "full") -> Emit:
        if to_ms(interval, "Emit.every interval") <= 0:
            raise PlanError(f"Emit.every needs a positive interval, got {interval}")
        return Emit("every", interval, updates)

    @staticmethod
    def each_batch(updates: str = "full") -> Emit:
        return Emit("each_batch", updates=updates)

    @property
    def deltas(self) -> bool:
        """Whether a window's later rows carry the change since its last row, not its whole result."""
        return self.updates == "deltas"

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
