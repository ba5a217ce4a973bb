"""Failures while committing a transaction, injected into a real run: a timeout is fatal for the producer
(librdkafka lacks KIP-890), so a new one fences the old and the tasks rewind; an abortable error aborts
and rewinds. Either way the committed output equals the oracle: nothing lost, nothing twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

import oracle
import sluice as sl
from kafka_util import create_topic, frame, load, read_committed
from sluice.runtime.kafka.transactions import Transactions
from workloads import build


@pytest.mark.parametrize("failure", ["timeout", "abortable"])
def test_a_failed_commit_rewinds_and_nothing_is_lost_or_doubled(failure: str, kafka_bootstrap: str, events_medium: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    inp, out = f"txn-{failure}-in", f"txn-{failure}-out"
    create_topic(kafka_bootstrap, inp, 3)
    create_topic(kafka_bootstrap, out, 3)
    load(kafka_bootstrap, events_medium, inp)
    real = Transactions.commit_transaction
    calls = {"n": 0}

    def flaky(self: Transactions) -> None:
        calls["n"] += 1
        if calls["n"] in (2, 4):  # the second and fourth commits fail before reaching the broker
            if failure == "timeout":
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected: commit timed out"))
            raise KafkaException(KafkaError(KafkaError._STATE, "injected: abortable", txn_requires_abort=True))
        real(self)

    monkeypatch.setattr(Transactions, "commit_transaction", flaky)
    flow = build("w1", sl.KafkaSource(inp, kafka_bootstrap, key="user_id"), sl.KafkaSink(out, kafka_bootstrap, key="user_id"))
    result = sl.run_worker(flow, sl.KafkaRuntime(app_id=f"txn-{failure}", until_end=True, batch_size=500,
                                                 commit_interval_s=0.05, poll_records=2000))
    assert result.rewinds == 2
    assert result.producer_restarts == (2 if failure == "timeout" else 0)
    got = frame(read_committed(kafka_bootstrap, out))
    oracle.assert_frames_match(got, oracle.w1(oracle.flat_events(str(events_medium))), ["user_id", "window_start"])
