"""A worker's consumer close is bounded: librdkafka's close was seen blocking for good after a rebalance
(tests/kafka/test_scale_out_churn.py: a finished until-end worker that never exited)."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from sluice.runtime.kafka import worker as worker_module
from sluice.runtime.kafka.worker import Worker


class Consumer:
    def __init__(self, block: bool = False, fail: bool = False) -> None:
        self.block, self.fail, self.closed = block, fail, 0
        self.release = threading.Event()

    def close(self) -> None:
        self.closed += 1
        if self.block:
            self.release.wait(30)
        if self.fail:
            raise RuntimeError("revoke failed")


def fake(consumer: Consumer) -> SimpleNamespace:
    w = SimpleNamespace(consumer=consumer, instance="w1", rt=SimpleNamespace(session_timeout_ms=0))
    w._bounded = lambda *args: Worker._bounded(w, *args)  # type: ignore[arg-type]
    return w


def test_a_close_that_blocks_is_left_after_the_bound(monkeypatch, caplog) -> None:
    monkeypatch.setattr(worker_module, "CONSUMER_CLOSE_S", 0.3)
    c = Consumer(block=True)
    t = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sluice.kafka"):
        Worker._close_consumer(fake(c))  # type: ignore[arg-type]
    took = time.monotonic() - t
    c.release.set()
    assert c.closed == 1 and 0.3 <= took < 10, took
    assert "did not close within" in caplog.text and "w1" in caplog.text


def test_a_close_that_returns_or_raises_is_waited_for(monkeypatch) -> None:
    monkeypatch.setattr(worker_module, "CONSUMER_CLOSE_S", 5.0)
    c = Consumer()
    Worker._close_consumer(fake(c))  # type: ignore[arg-type]
    assert c.closed == 1
    with pytest.raises(RuntimeError, match="revoke failed"):
        Worker._close_consumer(fake(Consumer(fail=True)))  # type: ignore[arg-type]
