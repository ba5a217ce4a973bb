"""Dead-letter topics under the Kafka runtime (exactly-once): records that fail to decode or to process
go to a DLQ topic with the reason, the step and the source topic/partition/offset in headers; every
other record is processed once."""

from __future__ import annotations

import json

from confluent_kafka import Producer

import sluice as sl
from kafka_util import create_topic, frame, read_committed


def test_bad_records_go_to_the_dlq_topic_with_their_origin(kafka_bootstrap: str) -> None:
    inp, out, dlq = "orders-dlq-in", "orders-dlq-out", "orders-dlq"
    for t in (inp, out, dlq):
        create_topic(kafka_bootstrap, t, 3)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent: list[tuple[str, bytes | None]] = []
    for i in range(3000):
        user = f"u{i % 37}"
        if i % 500 == 7:
            value: bytes | None = b'{"user": "' + user.encode() + b'", "amount": '  # cut off
        elif i % 500 == 9:
            value = json.dumps({"user": user, "amount": "twelve"}).encode()  # wrong type
        elif i % 1000 == 11:
            value = None  # a tombstone
        else:
            value = json.dumps({"user": user, "amount": -1 if i % 400 == 3 else i}).encode()
        p.produce(inp, key=user.encode(), value=value)
        sent.append((user, value))
    assert p.flush(30) == 0

    def checked(row: dict) -> dict:
        if row["amount"] < 0:
            raise ValueError(f"negative amount {row['amount']}")
        return row

    flow = sl.Flow("orders")
    orders = flow.read("orders", sl.KafkaSource(inp, kafka_bootstrap, key="user"),
                       schema={"user": str, "amount": int}, on_error="dead_letter")
    valid = orders.map(checked, name="check", schema={"user": str, "amount": int}, on_error="dead_letter")
    valid.write("out", sl.KafkaSink(out, kafka_bootstrap, key="user"))
    orders.dead_letters.union(valid.dead_letters, name="all_bad").write("dlq", sl.DeadLetterTopic(dlq, kafka_bootstrap))
    result = sl.run_worker(flow, sl.KafkaRuntime(app_id="orders-dlq", until_end=True, batch_size=256))
    assert result.commits >= 1

    good = frame(read_committed(kafka_bootstrap, out))
    dead = read_committed(kafka_bootstrap, dlq)
    bad_decode = [i for i in range(3000) if i % 500 in (7, 9) or i % 1000 == 11]
    bad_process = [i for i in range(3000) if i % 400 == 3 and i not in bad_decode]
    assert len(dead) == len(bad_decode) + len(bad_process)
    assert good.height == 3000 - len(dead)  # nothing lost, nothing twice
    assert sorted(good["amount"].to_list()) == sorted(
        json.loads(v)["amount"] for i, (_, v) in enumerate(sent) if i not in bad_decode and i not in bad_process)
    by_step = {}
    for value, headers in dead:
        step = headers["sluice.step"].decode()
        by_step[step] = by_step.get(step, 0) + 1
        assert headers["sluice.reason"]
        assert headers["sluice.source.topic"] == inp.encode()
        partition, offset = int(headers["sluice.source.partition"]), int(headers["sluice.source.offset"])
        assert 0 <= partition < 3 and offset >= 0
        if step == "check":
            assert b"negative amount" in headers["sluice.reason"] and json.loads(value)["amount"] == -1
    assert by_step == {"orders": len(bad_decode), "check": len(bad_process)}
    reasons = {h["sluice.reason"].decode().split(":")[0] for _, h in dead}
    assert any("tombstone" in r for r in reasons)
    origins = {(h["sluice.source.partition"], h["sluice.source.offset"]) for _, h in dead}
    assert len(origins) == len(dead)  # each bad record once
