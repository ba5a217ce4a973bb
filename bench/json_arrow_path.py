"""Per 8 MB block: old output path (native decode -> PyBytes, pyarrow from_buffers, numpy narrowing,
pl.from_arrow) vs the Arrow C data interface (decode_arrow, pl.Series(...).struct.unnest()).
Process CPU time per block (the parse thread's cost), medians of interleaved repetitions."""
import statistics, sys, time
import numpy as np, pyarrow as pa, polars as pl
sys.path.insert(0, "src")
from sluice.formats import json_native as jn
from sluice.core.schema import Schema

path, which, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "rb") as f:
    blob = f.read(8 << 20)
blob = blob[: blob.rindex(b"\n") + 1]
W1 = {"timestamp": pl.Int64, "user_id": pl.String, "metrics": pl.Struct({"value": pl.Float64})}
ALL = {"event_id": pl.String, "event_type": pl.String, "timestamp": pl.Int64, "user_id": pl.String,
       "properties": pl.Struct({"country": pl.String}),
       "metrics": pl.Struct({"value": pl.Float64, "response_time": pl.Float64})}
spec = W1 if which == "w1" else ALL
schema = Schema(pl.Schema(spec), ("timestamp",))
plan = jn._plan(schema)
ARROW = {"i64": pa.int64(), "i32": pa.int32(), "u32": pa.uint32(), "u64": pa.uint64(), "f64": pa.float64(),
         "str": pa.string_view(), "bool": pa.bool_()}

def arrow_type(f):
    if f.kind == "struct":
        return pa.struct([pa.field(c.name, arrow_type(c)) for c in f.children])
    return ARROW[f.kind]

def old_array(f, n, cols, at):
    validity, *bufs = cols[at[0]]
    at[0] += 1
    valid = None if validity is None else pa.py_buffer(validity)
    if f.kind == "struct":
        children = [old_array(c, n, cols, at) for c in f.children]
        return pa.Array.from_buffers(arrow_type(f), n, [valid], children=children)
    if f.kind in ("i32", "u32"):
        narrow = np.frombuffer(bufs[0], dtype=np.int64).astype(np.int32 if f.kind == "i32" else np.uint32)
        return pa.Array.from_buffers(arrow_type(f), n, [valid, pa.py_buffer(narrow)])
    return pa.Array.from_buffers(arrow_type(f), n, [valid, *(pa.py_buffer(b) for b in bufs)])

def old():
    n, cols = jn._native.decode(blob, plan.native)
    at = [0]
    arrays = [old_array(f, n, cols, at) for f in plan.fields]
    return pl.from_arrow(pa.RecordBatch.from_arrays(arrays, names=[f.name for f in plan.fields]))

def new():
    return pl.Series(jn._native.decode_arrow(blob, plan.native)).struct.unnest()

def parse_only():
    return jn._native.Plan  # placeholder

a, b = old(), new()
assert a.equals(b) and a.schema == b.schema, (a.schema, b.schema)
t = {"old": [], "new": []}
for _ in range(reps):
    for name, fn in (("old", old), ("new", new)):
        c0 = time.process_time(); w0 = time.perf_counter()
        fn()
        t[name].append((time.process_time() - c0, time.perf_counter() - w0))
print(f"{which}: {a.height} rows, {len(blob)/1e6:.1f} MB")
for name, xs in t.items():
    print(f"  {name}: cpu median {statistics.median(x[0] for x in xs)*1e3:.2f} ms  wall median {statistics.median(x[1] for x in xs)*1e3:.2f} ms")
print(f"  new/old cpu ratio {statistics.median(x[0] for x in t['new'])/statistics.median(x[0] for x in t['old']):.3f}")
