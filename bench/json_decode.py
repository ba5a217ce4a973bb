"""JSON decoders side by side, as the file reader uses them (8 MB blocks cut at line ends): the CPU and wall
time of each over a JSON Lines file of events, and (`--strictness`) which bad records each raw decoder
accepts that Sluice refuses.

    python bench/gen_events.py events --n 1000000 --out /tmp/ev1m.jsonl
    python bench/json_decode.py /tmp/ev1m.jsonl                    # Sluice's decoder (Json.decode_block)
    python bench/json_decode.py /tmp/ev1m.jsonl --engine duckdb    # or polars, pyarrow: the raw parsers
    python bench/json_decode.py --strictness
    farm-bench -n 7 -- python bench/json_decode.py /tmp/ev1m.jsonl # A/B of the decode path (PYTHONPATH)

Engines (the fields w1 reads, `--fields all` for every field of the events):
  sluice   Json().decode_block: Polars' NDJSON reader plus the strict checks (json_check.py)
  polars   pl.read_ndjson(block, schema=...), no checks
  duckdb   DuckDB's read_json(columns=...) on the block (written to a file in /dev/shm: it reads files),
           to Arrow; duckdb is a dev dependency only
  pyarrow  pyarrow.json.read_json with an explicit schema. pyarrow 26.0.1 crashes the process (segfault)
           on a line that is `null`, so it is never given untrusted input, and left out of --strictness
"""

from __future__ import annotations

import argparse
import atexit
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl

from sluice.core.schema import resolve_schema
from sluice.formats.json import Json

FIELDS: dict[str, dict[str, Any]] = {
    "w1": {"timestamp": pl.Int64, "user_id": pl.String, "metrics": {"value": pl.Float64}},
    "all": {"event_id": str, "event_type": str, "timestamp": int, "user_id": str, "properties": {"country": str},
            "metrics": {"value": pl.Float64, "response_time": pl.Float64}},
}
_DUCK = {pl.Int64: "BIGINT", pl.String: "VARCHAR", pl.Float64: "DOUBLE"}


def blocks(path: str, size: int = 8 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        rest = b""
        while chunk := f.read(size):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            yield data[:cut]
        if rest:
            yield rest


def _duck_type(t: Any) -> str:
    if isinstance(t, pl.Struct):
        return "STRUCT(" + ", ".join(f"{f.name} {_duck_type(f.dtype)}" for f in t.fields) + ")"
    return _DUCK[t]


def decoder(engine: str, wire: pl.Schema) -> Callable[[bytes], int]:
    """A function decoding one block into columns, returning its row count."""
    if engine == "sluice":
        schema = resolve_schema(dict(wire))
        fmt = Json()
        return lambda blob: fmt.decode_block(blob, schema).rows.height
    if engine == "polars":
        return lambda blob: pl.read_ndjson(io.BytesIO(blob), schema=wire).height
    if engine == "duckdb":
        import duckdb

        con = duckdb.connect()
        fd, name = tempfile.mkstemp(suffix=".jsonl", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.close(fd)
        atexit.register(os.unlink, name)
        cols = "{" + ", ".join(f"{n}: '{_duck_type(t)}'" for n, t in wire.items()) + "}"
        query = f"select * from read_json('{name}', columns={cols}, format='newline_delimited')"

        def duck(blob: bytes) -> int:
            with open(name, "wb") as f:
                f.write(blob)
            return int(con.sql(query).arrow().read_all().num_rows)
        return duck
    if engine == "pyarrow":
        import pyarrow as pa
        import pyarrow.json as pj

        options = pj.ParseOptions(explicit_schema=pl.DataFrame(schema=wire).to_arrow().schema,
                                  unexpected_field_behavior="ignore")
        return lambda blob: int(pj.read_json(pa.py_buffer(blob), parse_options=options).num_rows)
    raise SystemExit(f"unknown engine {engine!r}: choose sluice, polars, duckdb or pyarrow")


# --- strictness: what each raw decoder accepts that Sluice refuses ----------------------------------

STRICT_SCHEMA = {"id": pl.Int64, "name": pl.String, "v": pl.Float64}
CASES = [  # each a record Sluice dead-letters (tests/test_poison_fuzz.py, tests/test_bad_input.py)
    b'{"id":"7","name":"a","v":1}', b'{"id":1.5,"name":"a","v":1}', b'{"id":true,"name":"a","v":1}',
    b'{"id":1e2,"name":"a","v":1}', b'{"id":1,"name":900002,"v":1}', b'{"id":1,"name":{"id":3},"v":1}',
    b'{"id":1,"name":"a","v":"1.0"}', b'{"id":1,"name":"a","v":false}', b'{"id":1,"name":"a","v":NaN}',
    b'{"id":1,"name":"a","v":Infinity}', b'{"id":1,"name":"a","v":1e400}', b'null', b'{"id":1,"name":"a",}',
    b'{"id":1,"name":"a","v":1,"v":2}', b'{"id":1,"name":"\\ud83d","v":1}', b'\xef\xbb\xbf{"id":1,"name":"a","v":1}',
    b'{"id":1,"name":"\xff"}', b'{"id":1,"name":"a","v":1}}', b'[1]',
]


def strictness() -> int:
    import duckdb

    schema = resolve_schema(STRICT_SCHEMA)
    con = duckdb.connect()
    cols = "{" + ", ".join(f"{n}: '{_DUCK[t]}'" for n, t in schema.wire.items()) + "}"
    print(f"{'record':<42}{'Sluice':<10}{'Polars (no checks)':<28}DuckDB read_json")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "one.jsonl")
        for raw in CASES:
            # the second line of a block, so that a byte order mark is not the file's first bytes
            blob = b'{"id":0,"name":"ok","v":0}\n' + raw + b"\n"
            sluice = "refused" if Json().decode_block(blob, schema).bad else "ACCEPTED"
            try:
                got = pl.read_ndjson(io.BytesIO(blob), schema=schema.wire).rows()[1:]
                polars = f"accepts {got}"
            except pl.exceptions.PolarsError:
                polars = "refuses"
            with open(path, "wb") as f:
                f.write(blob)
            try:
                got = con.sql(f"select * from read_json('{path}', columns={cols}, "
                              "format='newline_delimited')").fetchall()[1:]
                duck = f"accepts {got}"
            except duckdb.Error:
                duck = "refuses"
            print(f"{raw.decode('utf-8', 'backslashreplace')[:40]:<42}{sluice:<10}{polars[:27]:<28}{duck}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?")
    ap.add_argument("--engine", default="sluice")
    ap.add_argument("--fields", default="w1", choices=sorted(FIELDS))
    ap.add_argument("--block-mb", type=int, default=8)
    ap.add_argument("--strictness", action="store_true", help="which bad records each decoder accepts")
    a = ap.parse_args()
    if a.strictness:
        return strictness()
    if not a.path:
        ap.error("give a JSON Lines file (or --strictness)")
    decode = decoder(a.engine, resolve_schema(FIELDS[a.fields]).wire)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = sum(decode(blob) for blob in blocks(a.path, a.block_mb << 20))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"engine": a.engine, "fields": a.fields, "rows": rows, "seconds": round(wall, 3),
                      "cpu_s": round(cpu, 3), "events_per_s": round(rows / wall)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
