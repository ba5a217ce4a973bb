#!/usr/bin/env python3
"""How the native JSON decoder's columns reach Polars, per 8 MB block (the parse thread's cost):

  old  sluice_native.decode → bytes per buffer, pyarrow Array.from_buffers (numpy narrows Int32/UInt32),
       pl.from_arrow
  new  sluice_native.decode_arrow → the Arrow C data interface (buffers moved, not copied),
       pl.Series(export).struct.unnest()

Both decode the same block (the first 8 MB of FILE cut at a line end); the frames are checked equal first.
Then they run in turn, REPS times each; prints median CPU (process time) and wall per block and the ratio.

    python bench/json_arrow_path.py bench/data/events-1m.jsonl w1 25     # the fields w1 reads
    python bench/json_arrow_path.py bench/data/events-1m.jsonl all 25    # every field of the events
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.core.schema import Schema
from sluice.formats import json_native as jn

W1 = {"timestamp": pl.Int64, "user_id": pl.String, "metrics": pl.Struct({"value": pl.Float64})}
ALL = {"event_id": pl.String, "event_type": pl.String, "timestamp": pl.Int64, "user_id": pl.String,
       "properties": pl.Struct({"country": pl.String}),
       "metrics": pl.Struct({"value": pl.Float64, "response_time": pl.Float64})}
ARROW = {"i64": pa.int64(), "i32": pa.int32(), "u32": pa.uint32(), "u64": pa.uint64(), "f64": pa.float64(),
         "str": pa.string_view(), "bool": pa.bool_()}


def _type(f: Any) -> pa.DataType:
    if f.kind == "struct":
        return pa.struct([pa.field(c.name, _type(c)) for c in f.children])
    return ARROW[f.kind]


def _old_array(f: Any, n: int, cols: list[tuple[Any, ...]], at: list[int]) -> pa.Array:
    validity, *bufs = cols[at[0]]
    at[0] += 1
    valid = None if validity is None else pa.py_buffer(validity)
    if f.kind == "struct":
        return pa.Array.from_buffers(_type(f), n, [valid], children=[_old_array(c, n, cols, at) for c in f.children])
    if f.kind in ("i32", "u32"):
        narrow = np.frombuffer(bufs[0], dtype=np.int64).astype(np.int32 if f.kind == "i32" else np.uint32)
        return pa.Array.from_buffers(_type(f), n, [valid, pa.py_buffer(narrow)])
    return pa.Array.from_buffers(_type(f), n, [valid, *(pa.py_buffer(b) for b in bufs)])


def main() -> None:
    path, which, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(path, "rb") as f:
        blob = f.read(8 << 20)
    blob = blob[: blob.rindex(b"\n") + 1]
    plan = jn._plan(Schema(pl.Schema(W1 if which == "w1" else ALL), ("timestamp",)))
    assert plan is not None and jn._native is not None
    native = jn._native

    def old() -> Any:
        n, cols = native.decode(blob, plan.native)
        at = [0]
        arrays = [_old_array(f, n, cols, at) for f in plan.fields]
        return pl.from_arrow(pa.RecordBatch.from_arrays(arrays, names=[f.name for f in plan.fields]))

    def new() -> Any:
        return pl.Series(native.decode_arrow(blob, plan.native)).struct.unnest()

    a, b = old(), new()
    assert a.equals(b) and a.schema == b.schema, (a.schema, b.schema)
    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for _ in range(reps):
        for name, fn in (("old", old), ("new", new)):
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    print(f"{which}: {a.height} rows, {len(blob) / 1e6:.1f} MB block, medians of {reps}")
    med = {name: [statistics.median(x[i] for x in xs) for i in (0, 1)] for name, xs in times.items()}
    for name, (cpu, wall) in med.items():
        print(f"  {name}: cpu {cpu * 1e3:.2f} ms  wall {wall * 1e3:.2f} ms")
    print(f"  new/old: cpu {med['new'][0] / med['old'][0]:.3f}  wall {med['new'][1] / med['old'][1]:.3f}")


if __name__ == "__main__":
    main()
