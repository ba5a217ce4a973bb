"""Decode a JSON Lines file with the JSON format's block decoder, as the file reader does (8 MB blocks cut at
line ends), and print events/s. Whole-process timing of it (farm-bench, A/B against another checkout via
PYTHONPATH) measures the cost of the decode path's checks:

    python bench/gen_events.py events --n 1000000 --out /tmp/ev1m.jsonl
    farm-bench -n 7 -- python bench/json_decode.py /tmp/ev1m.jsonl
"""

from __future__ import annotations

import json
import sys
import time

import polars as pl

from sluice.core.schema import resolve_schema
from sluice.formats.json import Json

SCHEMA = {"event_id": str, "event_type": str, "timestamp": int, "user_id": str,
          "properties": {"country": str}, "metrics": {"value": pl.Float64, "response_time": pl.Float64}}


def blocks(path: str, size: int = 8 << 20):
    with open(path, "rb") as f:
        rest = b""
        while chunk := f.read(size):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            yield data[:cut]
        if rest:
            yield rest


def main() -> int:
    schema = resolve_schema(SCHEMA)
    fmt = Json()
    t = time.perf_counter()
    rows = bad = 0
    for blob in blocks(sys.argv[1]):
        d = fmt.decode_block(blob, schema)
        rows += d.rows.height
        bad += len(d.bad)
    s = time.perf_counter() - t
    print(json.dumps({"rows": rows, "bad": bad, "seconds": round(s, 3), "events_per_s": round(rows / s)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
