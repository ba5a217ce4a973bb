#!/usr/bin/env python3
"""Run one benchmark workload over a JSON Lines file of events and report its speed.

    python bench/run.py w1 --input events.jsonl --output out.jsonl [--batch-size N]
                           [--checkpoint-dir DIR [--checkpoint-interval SECONDS]]

With --checkpoint-dir the run checkpoints (every second by default, and at the end) and, started again
with the same arguments after a crash (kill -9 included), resumes from DIR: the output is then exactly
what an uninterrupted run writes. Output not yet committed is staged under hidden names.

The last line printed is JSON: {"workload", "events", "seconds", "events_per_s", "peak_rss_mb"}.
Make input with: python bench/gen_events.py events --n 1000000 --out events.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sluice as sl
from workloads import WORKLOADS, file_flow

try:
    from sluice.runtime.ending import skip_exit_collections
except ImportError:  # an older Sluice (batch_limit.py --before-src): it ended with the interpreter's collections
    def skip_exit_collections() -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=WORKLOADS)
    ap.add_argument("--input", required=True, help="JSON Lines events file")
    ap.add_argument("--output", required=True, help="results as JSON Lines")
    ap.add_argument("--batch-size", type=int, default=65_536, help="rows per micro-batch (default 65536)")
    ap.add_argument("--checkpoint-dir", help="checkpoint here and resume from here")
    ap.add_argument("--checkpoint-interval", type=float, default=1.0, help="seconds between checkpoints (default 1)")
    ap.add_argument("--state", choices=["memory", "rocksdb"], default="memory", help="keyed state backend (risk)")
    a = ap.parse_args(argv)
    out = Path(a.output)
    start = time.perf_counter()
    try:
        result = sl.run(file_flow(a.workload, a.input, out), batch_size=a.batch_size,
                        checkpoint_dir=a.checkpoint_dir, checkpoint_interval=a.checkpoint_interval, state=a.state,
                        state_dir=Path(a.checkpoint_dir) / "state" if a.checkpoint_dir else None)
    except sl.SluiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    skip_exit_collections()  # as the `sluice` command does once its flow has ended
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not out.exists():
        out.touch()
    print(json.dumps({
        "workload": a.workload, "events": result.rows_read, "seconds": round(seconds, 3),
        "events_per_s": round(result.rows_read / seconds), "peak_rss_mb": round(rss_mb),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
