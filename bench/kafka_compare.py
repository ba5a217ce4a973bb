#!/usr/bin/env python3
"""Side by side on one broker, in one run: the bare confluent-kafka consume loop (the limit), Sluice w1
Kafka→Kafka exactly-once (JSON and Avro, 1 and 2 workers) and, if it is installed, Quix Streams w1.

    python bench/kafka_compare.py --bootstrap HOST:PORT --input events.jsonl [--registry URL]
                                  [--rounds 3] [--quix-python /tmp/quixenv/bin/python]

Each figure is the median of --rounds runs (events/s); the table is printed at the end, and one JSON
line with every run last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent


def last_json(args: list[str]) -> dict:
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--registry", help="Confluent-compatible registry for the Avro runs (default: the embedded one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--quix-python", help="a Python with quixstreams installed")
    a = ap.parse_args(argv)
    py = sys.executable
    runs: dict[str, list[dict]] = {}

    def sluice(fmt: str, workers: int) -> dict:
        args = [py, str(HERE / "kafka_run.py"), "w1", "--bootstrap", a.bootstrap, "--input", a.input,
                "--output", f"/tmp/kafka-compare-{uuid.uuid4().hex[:6]}.jsonl", "--workers", str(workers),
                "--partitions", str(a.partitions), "--format", fmt]
        if fmt == "avro" and a.registry:
            args += ["--registry", a.registry]
        return last_json(args)

    # a loaded topic for the consume loops and Quix: the one the first Sluice JSON run made
    for r in range(a.rounds):
        first = sluice("json", 1)
        runs.setdefault("sluice json, 1 worker", []).append(first)
        topic = first["input_topic"]
        runs.setdefault("bare consume loop, librdkafka defaults", []).append(
            last_json([py, str(HERE / "kafka_consume.py"), "--bootstrap", a.bootstrap, "--topic", topic, "--default-fetch"]))
        runs.setdefault("bare consume loop, Sluice's fetch settings", []).append(
            last_json([py, str(HERE / "kafka_consume.py"), "--bootstrap", a.bootstrap, "--topic", topic]))
        runs.setdefault("sluice json, 2 workers", []).append(sluice("json", 2))
        runs.setdefault("sluice avro, 1 worker", []).append(sluice("avro", 1))
        runs.setdefault("sluice avro, 2 workers", []).append(sluice("avro", 2))
        if a.quix_python:
            runs.setdefault("quix streams w1, exactly-once", []).append(last_json(
                [a.quix_python, str(HERE / "quix_w1.py"), "--bootstrap", a.bootstrap, "--topic", topic,
                 "--events", str(first["events"]), "--exactly-once"]))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    print(f"{'':48} {'events/s (median)':>18} {'runs':>30}")
    for name, rs in runs.items():
        rates = [x["events_per_s"] for x in rs]
        print(f"{name:48} {statistics.median(rates):>18,.0f} {', '.join(f'{x:,}' for x in rates):>30}")
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
