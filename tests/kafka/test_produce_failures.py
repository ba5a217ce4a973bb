"""Records a sink cannot write: with a dead-letter topic, records the format cannot serialize and records
the cluster rejects for good go there with the reason, are counted, and nothing else is lost; without
one, the run stops naming the step, the record and the fix. `on_delivery` gets every delivery report."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

import sluice as sl
from kafka_util import create_topic, read_committed
from sluice.connectors.kafka import DeliveryReport, read_all_committed

ORDER = {"type": "record", "name": "Order", "fields": [{"name": "id", "type": "string"}, {"name": "qty", "type": "int"}]}


def orders(n: int, bad_every: int) -> list[dict]:
    return [{"id": f"o{i}", "qty": None if i % bad_every == 3 else i} for i in range(n)]


def avro(tmp_path: Path) -> sl.Avro:
    return sl.Avro(ORDER, registry=sl.LocalRegistry(tmp_path / "registry.json"))


def test_unserializable_records_go_to_the_dead_letter_topic(kafka_bootstrap: str, tmp_path: Path) -> None:
    for t in ("pf-out", "pf-dlq"):
        create_topic(kafka_bootstrap, t, 2)
    reports: list[DeliveryReport] = []
    flow = sl.Flow("send")
    flow.read("rows", sl.MemorySource(orders(1000, 100))).write("out", sl.KafkaSink(
        "pf-out", kafka_bootstrap, key="id", format=avro(tmp_path), dead_letters=sl.DeadLetterTopic("pf-dlq", kafka_bootstrap),
        on_delivery=reports.append))
    result = sl.run(flow, batch_size=128)
    assert result.stats["out"].metrics == {"produced": 990, "delivered": 990, "failed": 0, "dead_lettered": 10}
    out = read_all_committed(kafka_bootstrap, "pf-out")
    assert len(out) == 990
    dead = read_committed(kafka_bootstrap, "pf-dlq")
    assert sorted(v.decode() for v, _ in dead) == sorted(f'{{"id":"o{i}","qty":null}}' for i in range(3, 1000, 100))
    for _, h in dead:
        assert h["sluice.step"] == b"out" and h["sluice.target.topic"] == b"pf-out"
        assert b"cannot be serialized" in h["sluice.reason"] and h["sluice.position"].startswith(b"record ")
    # one report per record written, saying where it is
    assert len(reports) == 990 and all(r.error is None for r in reports)
    assert {(r.key, r.partition, r.offset) for r in reports} == {(m.key(), m.partition(), m.offset()) for m in out}


def test_without_a_dead_letter_topic_an_unserializable_record_stops_the_run(kafka_bootstrap: str, tmp_path: Path) -> None:
    create_topic(kafka_bootstrap, "pf-stop", 1)
    flow = sl.Flow("send")
    flow.read("rows", sl.MemorySource(orders(300, 100))).write(
        "out", sl.KafkaSink("pf-stop", kafka_bootstrap, format=avro(tmp_path)))
    with pytest.raises(sl.StepError) as info:
        sl.run(flow)
    text = str(info.value)
    assert "'out'" in text and "record 3" in text and "dead_letters=sl.DeadLetterTopic" in text and '"o3"' in text


def test_records_the_cluster_rejects_go_to_the_dead_letter_topic(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic("pf-small", 1, 1, config={"max.message.bytes": "2000"})])["pf-small"].result(30)
    create_topic(kafka_bootstrap, "pf-small-dlq", 1)
    big = [{"id": f"b{i}", "blob": base64.b64encode(os.urandom(3000)).decode()} for i in range(20)]
    reports: list[DeliveryReport] = []
    flow = sl.Flow("send")
    flow.read("rows", sl.MemorySource(big)).write("out", sl.KafkaSink(
        "pf-small", kafka_bootstrap, key="id", dead_letters=sl.DeadLetterTopic("pf-small-dlq", kafka_bootstrap),
        on_delivery=reports.append))
    result = sl.run(flow)
    assert result.stats["out"].metrics["dead_lettered"] == 20
    dead = read_committed(kafka_bootstrap, "pf-small-dlq")
    assert sorted(v for v, _ in dead) == sorted(f'{{"id":"{r["id"]}","blob":"{r["blob"]}"}}'.encode() for r in big)
    assert all(b"MSG_SIZE_TOO_LARGE" in h["sluice.reason"] or b"too large" in h["sluice.reason"].lower() for _, h in dead)
    assert read_committed(kafka_bootstrap, "pf-small") == []
    assert len(reports) == 20 and all(r.error and r.dead_lettered for r in reports)


def test_under_the_kafka_runtime_unserializable_records_go_to_the_dlq_in_the_transaction(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    for t in ("pfx-in", "pfx-out", "pfx-dlq"):
        create_topic(kafka_bootstrap, t, 3)
    load = sl.Flow("load")
    load.read("rows", sl.MemorySource(orders(3000, 50))).write("in", sl.KafkaSink("pfx-in", kafka_bootstrap, key="id"))
    sl.run(load)
    reports: list[DeliveryReport] = []
    flow = sl.Flow("pfx")
    flow.read("in", sl.KafkaSource("pfx-in", kafka_bootstrap, key="id"), schema={"id": str, "qty": sl.Optional(int)}).write(
        "out", sl.KafkaSink("pfx-out", kafka_bootstrap, key="id", format=avro(tmp_path),
                            dead_letters=sl.DeadLetterTopic("pfx-dlq", kafka_bootstrap), on_delivery=reports.append))
    sl.run_worker(flow, sl.KafkaRuntime(app_id="pfx", until_end=True, batch_size=200))
    bad = {f"o{i}" for i in range(3, 3000, 50)}
    out = read_all_committed(kafka_bootstrap, "pfx-out")
    dead = read_committed(kafka_bootstrap, "pfx-dlq")
    assert len(out) == 3000 - len(bad) and len({m.key() for m in out}) == len(out)
    assert sorted(h["sluice.position"] != b"" and v.decode() for v, h in dead) == sorted(
        f'{{"id":"{k}","qty":null}}' for k in bad)
    assert len(reports) >= len(out)  # at least once: a report is for the open transaction


def test_under_the_kafka_runtime_a_rejected_record_aborts_then_goes_to_the_dlq(kafka_bootstrap: str) -> None:
    """The transaction holding a rejected record cannot commit: it aborts, the worker replays from the
    last commit, and the record, remembered, goes to the dead-letter topic; every record once."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic("pfr-out", 2, 1, config={"max.message.bytes": "2000"})])["pfr-out"].result(30)
    for t in ("pfr-in", "pfr-dlq"):
        create_topic(kafka_bootstrap, t, 2)
    rows = [{"id": f"r{i}", "blob": base64.b64encode(os.urandom(3000 if i % 10 == 4 else 10)).decode()} for i in range(200)]
    load = sl.Flow("load")
    load.read("rows", sl.MemorySource(rows)).write("in", sl.KafkaSink("pfr-in", kafka_bootstrap, key="id"))
    sl.run(load)
    flow = sl.Flow("pfr")
    flow.read("in", sl.KafkaSource("pfr-in", kafka_bootstrap, key="id"), schema={"id": str, "blob": str}).filter(
        sl.col("blob").str.len_bytes() > 1000).write(  # only the big ones: batches never mix good and bad
        "out", sl.KafkaSink("pfr-out", kafka_bootstrap, key="id", dead_letters=sl.DeadLetterTopic("pfr-dlq", kafka_bootstrap)))
    result = sl.run_worker(flow, sl.KafkaRuntime(app_id="pfr", until_end=True))
    assert result.rewinds >= 1
    dead = read_committed(kafka_bootstrap, "pfr-dlq")
    assert sorted(json.loads(v)["id"] for v, _ in dead) == sorted(f"r{i}" for i in range(4, 200, 10))
    assert all(h["sluice.target.topic"] == b"pfr-out" and h["sluice.step"] == b"out" for _, h in dead)
    assert read_committed(kafka_bootstrap, "pfr-out") == []
