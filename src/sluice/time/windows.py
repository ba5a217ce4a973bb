"""Window shapes. How windows are emitted is the window operator's business, not the shape's."""

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
