#!/usr/bin/env python3
"""One event-time timer per key, at millions of keys: the cost of keeping timers, per record.

    python bench/timers.py KEYS {0,1} DATA_DIR      # e.g. 5000000 1 /tmp/timers; 0: the same job without timers

K keys, K + K/10 records shuffled (every key once, a tenth again), through a keyed process function that
counts per key in value state, emits one record per input record and, with timers, registers one timer
per key when the key is first seen, at the end of time (it never fires: the registration and the
keeping are what is measured). Prints one JSON line: CPU µs per record up to the end of input, wall µs,
peak RSS (VmHWM). Run it under PYTHONPATH=<a checkout>/src to compare engines.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import sluice as sl
from sluice.core.batch import END_OF_TIME
from sluice.operators import process


def main() -> int:
    keys, timers, data = int(sys.argv[1]), sys.argv[2] == "1", Path(sys.argv[3])
    data.mkdir(parents=True, exist_ok=True)
    inp = data / f"keys-{keys}.parquet"
    if not inp.exists():
        rng = np.random.default_rng(3)
        k = np.concatenate([np.arange(keys, dtype=np.int64), rng.integers(0, keys, keys // 10)])
        rng.shuffle(k)
        pl.DataFrame({"k": k, "ts": np.arange(len(k), dtype=np.int64)}).write_parquet(inp, row_group_size=65_536)

    class Count(sl.KeyedProcessFunction):
        def open(self, ctx: Any) -> None:
            self.n = ctx.value_state("n")

        def process(self, record: dict[str, Any], ctx: Any) -> Any:
            n = self.n.value()
            if n is None and timers:
                ctx.timers.event_time(END_OF_TIME)  # never fires
            self.n.update((n or 0) + 1)
            yield {"k": ctx.key}

    at_end: dict[str, float] = {}
    on_end = process.ProcessOperator.on_end

    def timed_end(self: Any) -> Any:
        at_end.setdefault("cpu", time.process_time())
        at_end.setdefault("wall", time.perf_counter())
        return on_end(self)

    process.ProcessOperator.on_end = timed_end  # type: ignore[method-assign]
    flow = sl.Flow("timers")
    (flow.read("in", sl.ParquetSource(str(inp)), schema={"k": int, "ts": int}).event_time("ts", timedelta(0))
         .key_by("k").process("p", Count(), schema={"k": int}).write("out", sl.ParquetSink(str(data / "out"))))
    c0, w0 = time.process_time(), time.perf_counter()
    r = sl.run(flow)
    n = r.rows_read
    hwm = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    print(json.dumps({"keys": keys, "timers": timers, "records": n, "cpu_s": round(time.process_time() - c0, 2),
                      "run_cpu_us_per_record": round((at_end["cpu"] - c0) / n * 1e6, 2),
                      "run_wall_us_per_record": round((at_end["wall"] - w0) / n * 1e6, 2), "peak_mb": hwm // 1024}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
