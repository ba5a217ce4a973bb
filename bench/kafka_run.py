#!/usr/bin/env python3
"""w1 from Kafka to Kafka with exactly-once on, as N worker processes.

    python bench/kafka_run.py w1 --bootstrap HOST:PORT --input events.jsonl --output out.jsonl
                              [--workers N] [--partitions P] [--format json|avro] [--registry URL]

Loads the input into a fresh topic keyed by user_id (not timed), runs w1 from it to an output topic with
N workers of one consumer group (each commits output + state + offsets in Kafka transactions), reads the
committed output (read_committed) into --output, and prints one JSON line last:
{"workload", "events", "seconds", "events_per_s", "workers", "partitions", "format", "startup_s", ...}.

`seconds` runs from the first partition assignment to the last worker's final commit; `startup_s` is
the time before that (process start, joining the group). Make input with
python bench/gen_events.py events --n 1000000 --out events.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

EVENT_SCHEMA = {"timestamp": "int", "user_id": "str", "metrics": {"value": "float"}}


def make_formats(fmt: str, registry: str | None, topic: str) -> tuple[object, object]:
    """(input format, output format)."""
    import sluice as sl

    if fmt == "json":
        return sl.Json(), sl.Json()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from stream_events_avro import STREAM_EVENT, W1_RESULT

    client = sl.RegistryClient(registry) if registry else None
    return (sl.Avro(STREAM_EVENT, registry=client, subject=f"{topic}-value"),
            sl.Avro(W1_RESULT, registry=client, subject=f"{topic}-out-value"))


def load(bootstrap: str, path: str, topic: str, fmt: str, registry: str | None) -> int:
    import sluice as sl

    in_fmt, _ = make_formats(fmt, registry, topic)
    flow = sl.Flow("load")
    schema = None
    if fmt != "json":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
        from stream_events_avro import INPUT_FIELDS

        schema = INPUT_FIELDS
    flow.read("file", sl.JsonLinesSource(path), schema=schema).write(
        "topic", sl.KafkaSink(topic, bootstrap, key="user_id", format=in_fmt))
    return sl.run(flow).rows_read


def worker(bootstrap: str, inp: str, out: str, app: str, name: str, fmt: str, registry: str | None,
           batch_size: int, results: mp.Queue) -> None:
    import sluice as sl
    from workloads import build

    in_fmt, out_fmt = make_formats(fmt, registry, inp)
    flow = build("w1", sl.KafkaSource(inp, bootstrap, key="user_id", format=in_fmt),
                 sl.KafkaSink(out, bootstrap, key="user_id", format=out_fmt))
    r = sl.run_worker(flow, sl.KafkaRuntime(app_id=app, until_end=True, instance=name, batch_size=batch_size))
    results.put({"worker": name, "records": r.records, "first_assigned": r.first_assigned, "finished": r.finished,
                 "commits": r.commits})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=["w1"])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT of the Kafka broker (make kafka-up prints it)")
    ap.add_argument("--input", required=True, help="JSON Lines events file")
    ap.add_argument("--output", required=True, help="the committed results, as JSON Lines")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--format", choices=["json", "avro"], default="json")
    ap.add_argument("--registry", help="schema registry URL for Avro (default: schemas travel with the job)")
    ap.add_argument("--batch-size", type=int, default=65_536)
    a = ap.parse_args(argv)

    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    import sluice as sl

    run_id = uuid.uuid4().hex[:8]
    inp, out, app = f"bench-{run_id}-events", f"bench-{run_id}-w1", f"bench-{run_id}"
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    for topic in (inp, out):
        admin.create_topics([NewTopic(topic, a.partitions, 1)])[topic].result(30)
    t = time.perf_counter()
    events = load(a.bootstrap, a.input, inp, a.format, a.registry)
    print(f"loaded {events:,} events into {inp} ({a.partitions} partitions) in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)

    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    start = time.time()
    procs = [ctx.Process(target=worker, args=(a.bootstrap, inp, out, app, f"w{i}", a.format, a.registry,
                                               a.batch_size, results)) for i in range(a.workers)]
    for p in procs:
        p.start()
    got = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        print("a worker failed", file=sys.stderr)
        return 1
    first = min(r["first_assigned"] for r in got if r["first_assigned"])
    last = max(r["finished"] for r in got)
    seconds = last - first

    _, out_fmt = make_formats(a.format, a.registry, inp)
    msgs = sl.connectors.kafka.read_all_committed(a.bootstrap, out)
    if a.format == "json":
        Path(a.output).write_bytes(b"".join(m.value() + b"\n" for m in msgs))
    else:

        codec = out_fmt.bind(out, reading=True)  # type: ignore[attr-defined]
        df, _, _ = codec.decode_values([m.value() for m in msgs], out_fmt.sluice_schema())  # type: ignore[attr-defined]
        df.write_ndjson(a.output)
    print(json.dumps({
        "workload": a.workload, "events": events, "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds), "workers": a.workers, "partitions": a.partitions,
        "format": a.format, "startup_s": round(first - start, 2), "results": len(msgs),
        "commits": sum(r["commits"] for r in got), "input_topic": inp,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
