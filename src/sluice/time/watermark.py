"""Watermarks, computed per record in input order (DESIGN.md §3).

On one source partition, the watermark after record i is max(t_0..t_i) − delay. A record is judged
against the watermark *before* it, W_prev(i) = max(t_0..t_{i-1}) − delay. Both are running maxima, so a
whole batch is one cumulative maximum, and the result does not depend on where batches are cut.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from sluice.core.batch import NO_WATERMARK
from sluice.core.errors import PlanError


def to_ms(d: timedelta, what: str) -> int:
    if not isinstance(d, timedelta):
        raise PlanError(f"{what} must be a datetime.timedelta, got {d!r}")
    ms = d // timedelta(milliseconds=1)
    if ms < 0:
        raise PlanError(f"{what} must not be negative, got {d}")
    return int(ms)


@dataclass(frozen=True)
class BoundedOutOfOrderness:
    """Watermark = largest event time seen − `delay`. Records up to `delay` out of order are never late.

    `idle_timeout`: a source partition that has delivered nothing for this long (processing time)
    stops holding the watermark back.
    """

    delay: timedelta
    idle_timeout: timedelta | None = None

    @property
    def delay_ms(self) -> int:
        return to_ms(self.delay, "watermark delay")


Times = pl.Series | Sequence[int]  # epoch ms, int64 (a numpy array too)


def running_watermarks(times: Times, prev_max: int, delay_ms: int) -> tuple[pl.Series, int]:
    """The watermark before each record (Int64), and the new largest event time."""
    t = times if isinstance(times, pl.Series) else pl.Series(times, dtype=pl.Int64)
    run = t.cast(pl.Int64).cum_max().clip(lower_bound=prev_max)
    before = run.shift(1, fill_value=prev_max)
    wm = (before - delay_ms).clip(lower_bound=NO_WATERMARK)
    return wm, int(run[-1])


try:  # the same in one native pass (native/src/wm.rs), when the module is built
    from sluice_native import watermarks as _wm_pass

    _NATIVE = os.environ.get("SLUICE_NATIVE_WATERMARKS", "1") != "0"
except ImportError:
    _NATIVE = False


def _native_watermarks(times: pl.Series, prev_max: int, delay_ms: int, floor: int, current: int) -> tuple[pl.Series, int]:
    """`PartitionWatermarks.advance`'s per-record watermarks (clipped to `floor` and `current`) in one pass."""
    from sluice_native import buffers, frame

    n = len(times)
    out, new_max = _wm_pass(buffers(times.rechunk())[0], prev_max, delay_ms, floor, current, NO_WATERMARK)
    wm = pl.Series(frame([("wm", "l", n, [None, out])], n)).struct.unnest().to_series()
    return wm, new_max


class PartitionWatermarks:
    """The watermark of a multi-partition input: the minimum over its live partitions."""

    def __init__(self, delay_ms: int, idle_timeout_s: float | None) -> None:
        self.delay_ms = delay_ms
        self.idle_timeout_s = idle_timeout_s
        self.max_time: dict[int, int] = {}
        self.last_active: dict[int, float] = {}
        self.finished: set[int] = set()
        self.current = NO_WATERMARK

    def declare(self, partitions: int, now: float) -> None:
        for p in range(partitions):
            self.max_time.setdefault(p, NO_WATERMARK)
            self.last_active.setdefault(p, now)

    def _floor_excluding(self, partition: int, now: float) -> int:
        """Min over the other live partitions of (max time − delay); +inf when there are none."""
        floor = 2**62
        for p, mx in self.max_time.items():
            if p == partition or p in self.finished:
                continue
            if self.idle_timeout_s is not None and now - self.last_active[p] > self.idle_timeout_s:
                continue
            floor = min(floor, mx - self.delay_ms if mx > NO_WATERMARK else NO_WATERMARK)
        return floor

    def advance(self, partition: int, times: Times, now: float) -> tuple[pl.Series, int]:
        """Per-record watermarks for a batch from `partition`, and the watermark after it."""
        self.max_time.setdefault(partition, NO_WATERMARK)
        self.last_active[partition] = now
        floor = self._floor_excluding(partition, now)
        if _NATIVE and isinstance(times, pl.Series) and times.dtype == pl.Int64 and len(times) and not times.has_nulls():
            wm, new_max = _native_watermarks(times, self.max_time[partition], self.delay_ms, floor, self.current)
        else:
            own, new_max = running_watermarks(times, self.max_time[partition], self.delay_ms)
            wm = own.clip(upper_bound=floor) if floor < 2**62 else own
            # The watermark never goes back, even when a partition wakes up from idleness.
            wm = wm.clip(lower_bound=self.current)
        self.max_time[partition] = new_max
        after = max(self.current, min(new_max - self.delay_ms, floor))
        self.current = after
        return wm, after

    def finish(self, partition: int, now: float) -> int:
        self.finished.add(partition)
        floor = self._floor_excluding(-1, now)
        if floor < 2**62:
            self.current = max(self.current, floor)
        return self.current
