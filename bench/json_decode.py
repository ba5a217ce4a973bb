"""JSON decoders side by side, as the file reader uses them (8 MB blocks cut at line ends): the CPU and wall
time of each decoding a JSON Lines file of events (read into memory first), and (`--strictness`) which bad records each raw decoder
accepts that Sluice refuses.

    python bench/gen_events.py events --n 1000000 --out /tmp/ev1m.jsonl
    python bench/json_decode.py /tmp/ev1m.jsonl                    # Sluice's decoder (Json.decode_block)
    SLUICE_NATIVE_JSON=0 python bench/json_decode.py /tmp/ev1m.jsonl   # ... without its native fast path
    python bench/json_decode.py --make-bids 1000000 /tmp/bids1m.jsonl  # Nexmark bids as JSON Lines
    python bench/json_decode.py --ab --runs 5 /tmp/ev1m.jsonl:w1 /tmp/bids1m.jsonl:bid
                                  # native on/off, whole processes alternating, medians of CPU and wall
    python bench/json_decode.py /tmp/ev1m.jsonl --engine duckdb    # or polars, pyarrow: the raw parsers
    python bench/json_decode.py --strictness
    farm-bench -n 7 -- python bench/json_decode.py /tmp/ev1m.jsonl # A/B of the decode path (PYTHONPATH)

Engines (the fields w1 reads, `--fields all` for every field of the events):
  sluice   Json().decode_block: the native decoder (native/, json_native.py) when it is sure every record
           of the block is good, else Polars' NDJSON reader plus the strict checks (json_check.py)
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
    "bid": {"auction": int, "bidder": int, "price": int, "channel": str, "url": str, "date_time": int, "extra": str},
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


def make_bids(n: int, path: str) -> int:
    from sluice.testing.nexmark import BID, NexmarkConfig, frame

    df = frame(NexmarkConfig(events=n * 50 // 46 + 100))
    bids = df.filter(pl.col("event_type") == BID).head(n).select(
        auction="bid_auction", bidder="bid_bidder", price="bid_price", channel="bid_channel", url="bid_url",
        date_time="date_time", extra="bid_extra")
    bids.write_ndjson(path)
    print(f"{bids.height} bids, {os.path.getsize(path) / bids.height:.0f} bytes each, to {path}")
    return 0


def ab(cases: list[str], runs: int, block_mb: int) -> int:
    """Each case with the native decoder on and off, whole processes alternating; medians and ratios."""
    import statistics
    import subprocess

    for case in cases:
        path, _, fields = case.rpartition(":")
        got: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
        for _ in range(runs):
            for mode in ("on", "off"):
                env = {**os.environ, "SLUICE_NATIVE_JSON": "1" if mode == "on" else "0"}
                out = subprocess.run([sys.executable, __file__, path, "--fields", fields, "--block-mb", str(block_mb)],
                                     env=env, capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                got[mode].append((r["cpu_s"] * 1e6 / r["rows"], r["seconds"] * 1e6 / r["rows"]))
        med = {m: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for m, v in got.items()}
        print(f"{fields}: per 1M events, medians of {runs} — native CPU {med['on'][0]:.3f} s, wall {med['on'][1]:.3f} s;"
              f" Polars path CPU {med['off'][0]:.3f} s, wall {med['off'][1]:.3f} s;"
              f" ratio CPU {med['off'][0] / med['on'][0]:.2f}x, wall {med['off'][1] / med['on'][1]:.2f}x")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?")
    ap.add_argument("--engine", default="sluice")
    ap.add_argument("--fields", default="w1", choices=sorted(FIELDS))
    ap.add_argument("--block-mb", type=int, default=8)
    ap.add_argument("--strictness", action="store_true", help="which bad records each decoder accepts")
    ap.add_argument("--make-bids", type=int, metavar="N", help="write N Nexmark bids as JSON Lines to PATH")
    ap.add_argument("--ab", nargs="+", metavar="PATH:FIELDS", help="native on/off, alternating processes")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if a.strictness:
        return strictness()
    if a.make_bids:
        return make_bids(a.make_bids, a.path)
    if a.ab:
        return ab(a.ab, a.runs, a.block_mb)
    if not a.path:
        ap.error("give a JSON Lines file (or --strictness)")
    decode = decoder(a.engine, resolve_schema(FIELDS[a.fields]).wire)
    data = list(blocks(a.path, a.block_mb << 20))  # read first: the decoding alone is timed
    wall, cpu = time.perf_counter(), time.process_time()
    rows = sum(decode(blob) for blob in data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    from sluice.formats import json_native

    print(json.dumps({"engine": a.engine, "native": a.engine == "sluice" and json_native.ENABLED, "fields": a.fields, "rows": rows, "seconds": round(wall, 3),
                      "cpu_s": round(cpu, 3), "events_per_s": round(rows / wall)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
