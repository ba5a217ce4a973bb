#!/usr/bin/env python3
"""The limit: a bare confluent-kafka consume loop over a topic, touching every value, no processing.

    python bench/kafka_consume.py --bootstrap HOST:PORT --topic TOPIC [--isolation read_committed]

Prints one JSON line: {"events", "seconds", "events_per_s"}; the clock starts at the first message.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from sluice.connectors.kafka import FETCH_TUNING as FETCH


def consume(bootstrap: str, topic: str, isolation: str = "read_committed", tuned: bool = True) -> dict[str, float]:
    conf = {"bootstrap.servers": bootstrap, "group.id": f"bare-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "isolation.level": isolation, **(FETCH if tuned else {})}
    c = Consumer(conf)
    parts = sorted(c.list_topics(topic, timeout=30).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    n = size = 0
    eof: set[int] = set()
    start = None
    while len(eof) < len(parts):
        for m in c.consume(20_000, 1.0):
            if m.error():
                eof.add(m.partition())
                continue
            if start is None:
                start = time.perf_counter()
            size += len(m.value())
            n += 1
    seconds = time.perf_counter() - (start or time.perf_counter())
    c.close()
    return {"events": n, "seconds": round(seconds, 3), "events_per_s": round(n / seconds), "bytes": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--isolation", default="read_committed", choices=["read_committed", "read_uncommitted"])
    ap.add_argument("--default-fetch", action="store_true", help="librdkafka's default fetch sizes")
    a = ap.parse_args(argv)
    print(json.dumps(consume(a.bootstrap, a.topic, a.isolation, not a.default_fetch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
