"""One oversized bad record: a 10 MB malformed record dead-lettered to a topic with the default (1 MB)
message limit. It goes to the dead-letter topic truncated, with its original size and SHA-256 digest in
headers; every good record is processed once; the job ends normally (under the Kafka runtime with two
workers, and in the embedded runtime)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from confluent_kafka import Producer

import sluice as sl
from kafka_util import create_topic, frame, read_committed

BIG = 10 << 20
BIG_LIMITS = {"max.message.bytes": str(20 << 20)}


def bad_record() -> bytes:
    return b'{"user": "u3", "amount": "' + b"x" * BIG  # malformed: the string never ends


def check_dead_letters(dead: list[tuple[bytes, dict]], bad: bytes, limit: int) -> None:
    assert len(dead) == 1  # once: not lost, not twice
    value, headers = dead[0]
    assert headers["sluice.truncated"] == b"true"
    assert int(headers["sluice.original.size"]) == len(bad)
    assert headers["sluice.original.sha256"].decode() == hashlib.sha256(bad).hexdigest()
    assert 0 < len(value) < limit and bad.startswith(value)  # its head, as much as fits
    assert len(value) > limit // 2
    assert headers["sluice.step"]


def load_input(bootstrap: str, inp: str, n: int) -> bytes:
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 20 << 20, "enable.idempotence": True})
    bad = bad_record()
    for i in range(n):
        user = f"u{i % 23}"
        p.produce(inp, key=user.encode(), value=json.dumps({"user": user, "amount": i}).encode())
        if i == n // 2:
            p.produce(inp, key=b"u3", value=bad)
    assert p.flush(60) == 0
    return bad


def flow_for(source: sl.KafkaSource | sl.JsonLinesSource, out: str, dlq: str, bootstrap: str) -> sl.Flow:
    flow = sl.Flow("big-bad")
    orders = flow.read("orders", source, schema={"user": str, "amount": int}, on_error="dead_letter")
    orders.write("out", sl.KafkaSink(out, bootstrap, key="user"))
    orders.dead_letters.write("dlq", sl.DeadLetterTopic(dlq, bootstrap))
    return flow


def test_oversized_dead_letter_under_the_kafka_runtime(kafka_bootstrap: str) -> None:
    inp, out, dlq = "big-bad-in", "big-bad-out", "big-bad-dlq"
    create_topic(kafka_bootstrap, inp, 2, topic_config=BIG_LIMITS)
    create_topic(kafka_bootstrap, out, 2)
    create_topic(kafka_bootstrap, dlq, 1)  # the default limit: 1 MB
    n = 2000
    bad = load_input(kafka_bootstrap, inp, n)
    source = sl.KafkaSource(inp, kafka_bootstrap, key="user")
    results: list[sl.WorkerResult] = []
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results.append(sl.run_worker(flow_for(source, out, dlq, kafka_bootstrap),
                                         sl.KafkaRuntime(app_id="big-bad", until_end=True, instance=name, batch_size=256)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    good = frame(read_committed(kafka_bootstrap, out))
    assert sorted(good["amount"].to_list()) == list(range(n))  # every good record once
    check_dead_letters(read_committed(kafka_bootstrap, dlq), bad, 1_000_000)


def test_oversized_dead_letter_in_the_embedded_runtime(kafka_bootstrap: str, tmp_path: Path) -> None:
    out, dlq = "big-bad-emb-out", "big-bad-emb-dlq"
    create_topic(kafka_bootstrap, out, 1)
    create_topic(kafka_bootstrap, dlq, 1)
    bad = bad_record()
    path = tmp_path / "in.jsonl"
    with path.open("wb") as f:
        for i in range(500):
            f.write(json.dumps({"user": f"u{i % 7}", "amount": i}).encode() + b"\n")
            if i == 250:
                f.write(bad + b"\n")
    for checkpoint in (None, tmp_path / "ckpt"):
        o, d = f"{out}-{checkpoint is not None}", f"{dlq}-{checkpoint is not None}"
        create_topic(kafka_bootstrap, o, 1)
        create_topic(kafka_bootstrap, d, 1)
        flow = flow_for(sl.JsonLinesSource(path), o, d, kafka_bootstrap)
        sl.run(flow, checkpoint_dir=checkpoint) if checkpoint else sl.run(flow)
        good = frame(read_committed(kafka_bootstrap, o))
        assert sorted(good["amount"].to_list()) == list(range(500))
        check_dead_letters(read_committed(kafka_bootstrap, d), bad, 1_000_000)


def test_a_dead_letter_topic_too_small_even_for_the_head_is_a_clear_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Even cut short the dead letter does not fit (the topic takes 2,000 bytes): the run stops with an
    error naming the step, the record's position, the topic and the setting to raise."""
    out, dlq = "big-bad-tiny-out", "big-bad-tiny-dlq"
    create_topic(kafka_bootstrap, out, 1)
    create_topic(kafka_bootstrap, dlq, 1, topic_config={"max.message.bytes": "2000"})
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"user": "u1", "amount": 1}\n' + bad_record() + b"\n")
    flow = flow_for(sl.JsonLinesSource(path), out, dlq, kafka_bootstrap)
    with pytest.raises(sl.KafkaError) as info:
        sl.run(flow)
    text = str(info.value)
    assert "'dlq'" in text and "in.jsonl:2" in text and repr(dlq) in text and "max.message.bytes" in text, text
