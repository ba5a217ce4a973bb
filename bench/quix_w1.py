#!/usr/bin/env python3
"""w1 in Quix Streams on the same broker and topic, for a side-by-side figure (run from its own venv:
uv venv /tmp/quixenv && VIRTUAL_ENV=/tmp/quixenv uv pip install quixstreams).

    /tmp/quixenv/bin/python bench/quix_w1.py --bootstrap HOST:PORT --topic TOPIC --events N [--exactly-once]

Per-user 1-minute tumbling windows (grace 5 s, as Sluice's watermark delay) with count/sum/min/max of
metrics.value, final results to an output topic. The clock runs from the first message processed to the
last (Quix's own callback), so start-up and the idle timeout that ends the run are not counted.
Prints one JSON line: {"events", "seconds", "events_per_s", "results"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import uuid


def main(argv: list[str] | None = None) -> int:
    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Max, Min, Sum

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--exactly-once", action="store_true")
    a = ap.parse_args(argv)
    rid = uuid.uuid4().hex[:6]
    marks: list[float] = []
    seen = [0]

    def processed(topic: str, partition: int, offset: int) -> None:
        seen[0] += 1
        if not marks:
            marks.append(time.perf_counter())
        if seen[0] >= a.events:
            marks.append(time.perf_counter())

    app = Application(broker_address=a.bootstrap, consumer_group=f"quix-w1-{rid}", auto_offset_reset="earliest",
                      state_dir=tempfile.mkdtemp(), loglevel=logging.WARNING, on_message_processed=processed,
                      processing_guarantee="exactly-once" if a.exactly_once else "at-least-once", commit_interval=1.0)
    src = app.topic(a.topic, value_deserializer="json", key_deserializer="string",
                    timestamp_extractor=lambda value, headers, ts, kind: int(value["timestamp"]))
    out = app.topic(f"quix-w1-out-{rid}", value_serializer="json")
    sdf = app.dataframe(src)
    sdf = sdf.apply(lambda v: float(v["metrics"]["value"]))
    sdf = sdf.tumbling_window(duration_ms=60_000, grace_ms=5_000).agg(
        count=Count(), sum=Sum(), min=Min(), max=Max()).final()
    results = [0]
    sdf = sdf.update(lambda v: results.__setitem__(0, results[0] + 1))
    sdf.to_topic(out)
    app.run(sdf, timeout=5.0)
    seconds = marks[-1] - marks[0] if len(marks) == 2 else float("nan")
    print(json.dumps({"events": seen[0], "seconds": round(seconds, 3), "events_per_s": round(seen[0] / seconds),
                      "results": results[0], "exactly_once": a.exactly_once}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
