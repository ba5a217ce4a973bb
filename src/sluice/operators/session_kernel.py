"""The native session kernel (native/src/sessions.rs) as the session window operator sees it.

Profiling w3 showed the Polars work of sessions (sort the batch by key and time, group it into sessions,
merge them with the open ones: about 14 whole-column passes a batch) as most of the operator's time; the
kernel does the same per record with one hash look-up. It covers one key column of text or integers with
no nulls and only row counts (`sl.agg.count()`); `fits` says so once per operator, `takes` once per batch.
Anything else stays on the Polars path, which the operator switches to for good, handing the state over.

State goes in and out as the Polars path's own frames (keys, WS, LAST, partials, WE and the emitted
sessions' keys, LAST), so a checkpoint of either path restores into the other.

Off when the module is not installed or when SLUICE_NATIVE_SESSIONS=0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.time.aggregates import Count

try:
    import sluice_native as _native
except ImportError:  # not built: the Polars path does all the work
    _native = None

ENABLED = _native is not None and hasattr(_native, "SessionKernel") and os.environ.get("SLUICE_NATIVE_SESSIONS", "1") != "0"

WS, WE, LAST = "__sl_ws", "__sl_we", "__sl_last"
COMPACT_AT = 65_536  # keys seen before the kernel forgets those it holds nothing for (then twice those left)
_INTS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)


def fits(key_cols: list[str], aggregates: Mapping[str, object]) -> bool:
    """Whether the kernel can run this step at all: one key, only row counts."""
    return (ENABLED and len(key_cols) == 1 and bool(aggregates)
            and all(isinstance(a, Count) and a.of is None for a in aggregates.values()))


def _kind(dtype: pl.DataType) -> str | None:
    if dtype == pl.String:
        return "str"
    if any(dtype == t for t in _INTS):
        return "int"
    return None


@dataclass(frozen=True)
class Closed:
    """Sessions the kernel closed: keys, start, last record's time, count, and the watermark that closed them."""

    keys: pl.Series
    ws: np.ndarray
    last: np.ndarray
    n: np.ndarray
    round: np.ndarray

    @staticmethod
    def none(key: str, dtype: pl.DataType) -> Closed:
        empty = np.zeros(0, dtype=np.int64)
        return Closed(pl.Series(key, [], dtype=dtype), empty, empty, empty, empty)

    def __len__(self) -> int:
        return len(self.ws)

    def slice(self, a: int, b: int) -> Closed:
        return Closed(self.keys.slice(a, b - a), self.ws[a:b], self.last[a:b], self.n[a:b], self.round[a:b])


class SessionKernel:
    """One operator's open sessions in the native kernel, for keys of one dtype."""

    def __init__(self, gap_ms: int, key: str, dtype: pl.DataType, counts: list[str]) -> None:
        kind = _kind(dtype)
        assert _native is not None and kind is not None
        self.key, self.dtype, self.counts, self.gap = key, dtype, counts, gap_ms
        self.kernel = _native.SessionKernel(gap_ms, kind == "str", COMPACT_AT)

    @staticmethod
    def takes_dtype(dtype: pl.DataType) -> bool:
        return _kind(dtype) is not None

    def takes(self, keys: pl.Series) -> bool:
        """Whether this batch's keys fit: the same dtype as before, no nulls."""
        return keys.dtype == self.dtype and keys.null_count() == 0

    def _key_buffers(self, keys: pl.Series) -> tuple[np.ndarray, np.ndarray | None]:
        if self.dtype == pl.String:
            arr = keys.to_arrow(compat_level=pl.CompatLevel.oldest())
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            _, offsets, data = arr.buffers()
            off = np.frombuffer(offsets, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
            return off, (np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8))
        return keys.cast(pl.Int64).to_numpy(), None

    def ingest(self, keys: pl.Series, times: np.ndarray, wms: np.ndarray) -> tuple[np.ndarray, Closed]:
        """Records in arrival order → (positions of the late ones, sessions closed by records behind the
        watermark, with the watermark of the record that closed them as `round`)."""
        a, b = self._key_buffers(keys)
        late, closed = self.kernel.ingest(a, b, np.ascontiguousarray(times, dtype=np.int64),
                                          np.ascontiguousarray(wms, dtype=np.int64))
        return np.frombuffer(late, dtype=np.uint32), self._closed(closed)

    def compact(self, since: int) -> None:
        """Forget keys without open sessions whose newest emitted session's last record is before `since`."""
        self.kernel.compact(since)

    def keys_held(self) -> int:
        return int(self.kernel.keys_seen())

    def close(self, watermark: int) -> Closed:
        """The sessions that ended by `watermark`, now closed, sorted by end, key, start."""
        return self._closed(self.kernel.close(watermark))

    def held_end(self) -> int | None:
        end = self.kernel.held_end()
        return None if end is None else int(end)

    def _keys(self, n: int, a: bytes, b: bytes | None) -> pl.Series:
        if b is None:
            return pl.Series(self.key, np.frombuffer(a, dtype=np.int64), dtype=pl.Int64).cast(self.dtype)
        arr = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(a), pa.py_buffer(b)])
        return pl.Series(self.key, arr)

    def _closed(self, rows: tuple[Any, ...]) -> Closed:
        n, a, b, ws, last, count, rnd = rows
        if n == 0:
            return Closed.none(self.key, self.dtype)
        return Closed(self._keys(n, a, b), np.frombuffer(ws, dtype=np.int64), np.frombuffer(last, dtype=np.int64),
                      np.frombuffer(count, dtype=np.int64), np.frombuffer(rnd, dtype=np.int64))

    def _frame(self, closed: Closed) -> pl.DataFrame:
        """Sessions as the Polars path's state rows: keys, WS, LAST, partials, WE."""
        counts = pl.Series(closed.n, dtype=pl.Int64)
        return pl.DataFrame([closed.keys, pl.Series(WS, closed.ws, dtype=pl.Int64),
                             pl.Series(LAST, closed.last, dtype=pl.Int64),
                             *[counts.alias(f"{c}.n") for c in self.counts],
                             pl.Series(WE, closed.last + (self.gap + 1), dtype=pl.Int64)])

    # --- state as the Polars path keeps it ---------------------------------------------------------
    def export(self, since: int) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        """(open sessions as the Polars path's state, emitted sessions' LAST per key with LAST ≥ since)."""
        state = self._frame(self._closed(self.kernel.export_open())) if self.kernel.open_sessions() else None
        n, a, b, _, last, _, _ = self.kernel.export_emitted(since)
        emitted = None
        if n:
            emitted = pl.DataFrame([self._keys(n, a, b), pl.Series(LAST, np.frombuffer(last, dtype=np.int64))])
        return state, emitted

    def load(self, state: pl.DataFrame | None, emitted: pl.DataFrame | None) -> None:
        if state is not None and state.height:
            a, b = self._key_buffers(state[self.key])
            n = state[f"{self.counts[0]}.n"]
            self.kernel.load_open(a, b, *(np.ascontiguousarray(s.cast(pl.Int64).to_numpy(), dtype=np.int64)
                                          for s in (state[WS], state[LAST], n)))
        if emitted is not None and emitted.height:
            a, b = self._key_buffers(emitted[self.key])
            self.kernel.load_emitted(a, b, np.ascontiguousarray(emitted[LAST].cast(pl.Int64).to_numpy(), dtype=np.int64))

    @staticmethod
    def loadable(key: str, counts: list[str], state: pl.DataFrame | None, emitted: pl.DataFrame | None) -> bool:
        """Whether a restored state fits the kernel: the columns it expects, keys without nulls, one dtype."""
        dtypes = set()
        for frame, cols in ((state, [key, WS, LAST, *[f"{c}.n" for c in counts]]), (emitted, [key, LAST])):
            if frame is None:
                continue
            if any(c not in frame.columns for c in cols) or frame[key].null_count():
                return False
            if any(frame[f"{c}.n"].null_count() for c in counts if frame is state):
                return False
            dtypes.add(frame.schema[key])
        return len(dtypes) <= 1 and all(_kind(d) is not None for d in dtypes)
