"""The producer of our scope, on Sluice: StreamEvent records as Avro (Confluent wire format, schema in a
registry), keyed by user, with headers and the event time as the Kafka timestamp.

    python examples/stream_events_avro.py events.jsonl --bootstrap HOST:PORT --topic events \\
        [--registry http://HOST:PORT/apis/ccompat/v7]

Without --registry the schema goes to the embedded registry (.sluice/registry.json). The producer
registers the schema when it starts, so a change that breaks the subject's compatibility (BACKWARD by
default) fails there, before a single record is sent.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import polars as pl

import sluice as sl

STREAM_EVENT: dict[str, Any] = {
    "type": "record", "name": "StreamEvent", "namespace": "sluice.events",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "event_type", "type": "string"},
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "user_id", "type": ["null", "string"], "default": None},
        {"name": "properties", "type": {"type": "map", "values": "string"}, "default": {}},
        {"name": "metrics", "type": {"type": "map", "values": "double"}, "default": {}},
    ],
}

W1_RESULT: dict[str, Any] = {
    "type": "record", "name": "UserMinute", "namespace": "sluice.results",
    "fields": [{"name": "user_id", "type": "string"}, {"name": "window_start", "type": "long"},
               {"name": "window_end", "type": "long"}, {"name": "count", "type": "long"},
               {"name": "sum", "type": ["null", "double"]}, {"name": "min", "type": ["null", "double"]},
               {"name": "max", "type": ["null", "double"]}],
}

# what the JSON Lines input holds (properties and metrics are objects; Avro maps on the wire)
INPUT_FIELDS = {"event_id": pl.String, "event_type": pl.String, "timestamp": pl.Int64,
                "user_id": sl.Optional(pl.String), "properties": sl.Optional({"country": pl.String}),
                "metrics": sl.Optional({"value": pl.Float64, "response_time": pl.Float64})}


def producer(path: str, bootstrap: str, topic: str, registry: Any = None) -> sl.Flow:
    flow = sl.Flow("stream-events")
    events = flow.read("events", sl.JsonLinesSource(path), schema=INPUT_FIELDS)
    events.write("to_kafka", sl.KafkaSink(
        topic, bootstrap, key="user_id", timestamp="timestamp",
        headers={"producer": "sluice-example"}, header_columns=("event_type",),
        format=sl.Avro(STREAM_EVENT, registry=registry)))
    return flow


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="events")
    ap.add_argument("--registry", help="a Confluent-compatible registry URL (default: the embedded one)")
    a = ap.parse_args(argv)
    registry = sl.RegistryClient(a.registry) if a.registry else None
    result = sl.run(producer(a.input, a.bootstrap, a.topic, registry))
    print(f"sent {result.rows_read:,} StreamEvents to {a.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
