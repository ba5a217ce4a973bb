#!/usr/bin/env python3
"""CEP benchmark: patterns over transactions (bench/gen_events.py transactions), JSON parsing included.

    python bench/cep.py small_large --input tx.jsonl --output out.jsonl [--count-partials]
    python bench/cep.py loop --input tx.jsonl --output out.jsonl

small_large: a transaction under 10 followed by one over 1000 of the same user, within 10 minutes.
loop:        under 10, then one or more between 200 and 1000, then over 1000, within 10 minutes, with
             skip="skip_past_last_event" (without a skip strategy every mid-size transaction in the 10 minutes
             after a small one ends a match: the output grows with the square of the window).
--count-partials also reports the peak number of partial matches held (a slower, instrumented run).
The last line printed is JSON: {"workload", "events", "matches", "seconds", "cpu_s", "events_per_s",
"peak_rss_mb", ["peak_partials"]}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

import sluice as sl

TX = {"tx_id": pl.String, "user_id": pl.String, "amount": pl.Float64, "timestamp": pl.Int64}


def pattern(workload: str) -> sl.Pattern:
    small = sl.Pattern.begin("small").where(pl.col("amount") < 10)
    if workload == "small_large":
        p = small.followed_by("large").where(pl.col("amount") > 1000)
    else:
        p = (small.followed_by("mid").where((pl.col("amount") > 200) & (pl.col("amount") < 1000)).one_or_more()
             .followed_by("large").where(pl.col("amount") > 1000))
    return p.within(timedelta(minutes=10))


def flow(workload: str, src: str, out: str) -> sl.Flow:
    f = sl.Flow(f"cep_{workload}")
    tx = f.read("transactions", sl.JsonLinesSource(src), schema=TX).event_time("timestamp", timedelta(seconds=5))
    skip = "no_skip" if workload == "small_large" else "skip_past_last_event"
    m = tx.key_by("user_id").match("m", pattern(workload), skip=skip)
    m.select("user_id", "match_start", "match_end", small_tx_id=pl.col("small").struct.field("tx_id"),
             large_tx_id=pl.col("large").struct.field("tx_id")).write("alerts", sl.JsonLinesSink(out))
    return f


def count_partials() -> dict[str, int]:
    """Instrument the match operator: the peak number of partial matches it holds after a batch."""
    from sluice.operators import match

    peak = {"peak_partials": 0}
    advance = match.MatchOperator._advance

    def counted(self: Any, watermark: int) -> Any:
        out = advance(self, watermark)
        held = getattr(self, "comps", None) or getattr(self, "partials", {})
        n = sum(len(v) for v in held.values())
        seq = getattr(self, "seq", None)  # the vectorized path keeps its partial matches in one frame
        if seq is not None and seq.partials is not None:
            n += seq.partials.height
        peak["peak_partials"] = max(peak["peak_partials"], n)
        return out

    match.MatchOperator._advance = counted  # type: ignore[method-assign]
    return peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=["small_large", "loop"])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--batch-size", type=int, default=65_536)
    ap.add_argument("--count-partials", action="store_true")
    a = ap.parse_args(argv)
    peak = count_partials() if a.count_partials else None
    start, cpu = time.perf_counter(), time.process_time()
    result = sl.run(flow(a.workload, a.input, a.output), batch_size=a.batch_size)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    matches = Path(a.output).read_bytes().count(b"\n") if Path(a.output).exists() else 0
    report = {"workload": a.workload, "events": result.rows_read, "matches": matches, "seconds": round(seconds, 3),
              "cpu_s": round(cpu_s, 3), "events_per_s": round(result.rows_read / seconds),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if peak is not None:
        report.update(peak)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
