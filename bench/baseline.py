#!/usr/bin/env python3
"""A plain-Python streaming baseline: orjson + dicts, one record at a time, with the same watermark and
emission rules as Sluice (delay 5 s, emit when W ≥ end). What a careful hand-written consumer does.

    python bench/baseline.py w1 --input events.jsonl --output out.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import orjson

DELAY = 5000


def w1(lines, out):
    size = 60_000
    state: dict[tuple[str, int], list[float]] = {}
    maxt = -(2**62)
    emitted_upto = -(2**62)
    for line in lines:
        r = orjson.loads(line)
        t = r["timestamp"]
        v = r["metrics"]["value"]
        start = t - t % size
        wm = maxt - DELAY
        if start + size > wm:
            s = state.get((r["user_id"], start))
            if s is None:
                state[(r["user_id"], start)] = [1, v, v, v]
            else:
                s[0] += 1
                s[1] += v
                s[2] = min(s[2], v)
                s[3] = max(s[3], v)
        if t > maxt:
            maxt = t
            wm = maxt - DELAY
            if wm - wm % size > emitted_upto:
                emitted_upto = wm - wm % size
                for key in [k for k in state if k[1] + size <= wm]:
                    c, sm, mn, mx = state.pop(key)
                    out.append({"user_id": key[0], "window_start": key[1], "window_end": key[1] + size,
                                "count": c, "sum": sm, "min": mn, "max": mx})
    for key, (c, sm, mn, mx) in sorted(state.items(), key=lambda kv: kv[0][1]):
        out.append({"user_id": key[0], "window_start": key[1], "window_end": key[1] + size,
                    "count": c, "sum": sm, "min": mn, "max": mx})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=["w1"])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    start = time.perf_counter()
    out: list[dict] = []
    n = 0

    def lines():
        nonlocal n
        with open(a.input, "rb") as f:
            for line in f:
                n += 1
                yield line

    w1(lines(), out)
    with open(a.output, "wb") as f:
        for row in out:
            f.write(orjson.dumps(row) + b"\n")
    seconds = time.perf_counter() - start
    print(json.dumps({"workload": f"{a.workload}-baseline", "events": n, "seconds": round(seconds, 3),
                      "events_per_s": round(n / seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
