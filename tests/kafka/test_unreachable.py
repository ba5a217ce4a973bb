"""A wrong broker address: a sink fails within its connect timeout with an error that names the step,
the address and the cause; librdkafka's own log lines go through Python logging, each distinct line at
most once per interval (with the count of the ones left out), not to stderr."""

from __future__ import annotations

import logging
import socket
import time

import pytest

import sluice as sl
from sluice.connectors.kafka import ClientLog


def unused_address() -> str:
    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_sink_with_a_wrong_address_fails_fast_naming_it_and_the_cause(capfd: pytest.CaptureFixture[str]) -> None:
    address = unused_address()
    flow = sl.Flow("x")
    flow.read("rows", sl.MemorySource([{"n": 1}])).write("out", sl.KafkaSink("t", address, connect_timeout_s=5))
    started = time.monotonic()
    with pytest.raises(sl.KafkaError) as info:
        sl.run(flow)
    assert time.monotonic() - started < 15
    text = str(info.value)
    assert "'out'" in text and address in text and "Connection refused" in text and "bootstrap" in text
    assert "Connection refused" not in capfd.readouterr().err  # librdkafka's lines went to logging, not stderr


def test_a_source_with_a_wrong_address_logs_through_python_logging_rate_limited(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    address = unused_address()
    flow = sl.Flow("x")
    flow.read("src", sl.KafkaSource("t", address, connect_timeout_s=4), schema={"a": int}).write("c", sl.CollectSink())
    with pytest.raises(sl.KafkaError, match="cannot get metadata"):
        sl.run(flow)
    err = capfd.readouterr().err
    assert "Connection refused" not in err, err[:500]
    refused = [r for r in caplog.records if r.name == "sluice.kafka.client" and "Connection refused" in r.getMessage()]
    assert 1 <= len(refused) <= 2  # librdkafka tried dozens of times in those 4 s


def test_client_log_says_how_many_lines_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sluice.kafka.client")
    log = ClientLog(every_s=0.2)
    for _ in range(50):
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
                "b:1/bootstrap: Connect to ipv4#b:1 failed: Connection refused (after 0ms in state CONNECT)")
    log.log(logging.WARNING, "%s [%s] %s", "OTHER", "rdkafka#producer-1", "sasl.password=hunter2 something else")
    time.sleep(0.25)
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
            "b:1/bootstrap: Connect to ipv4#b:1 failed: Connection refused (after 1ms in state CONNECT)")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "49 more like it" in lines[2]
    assert "hunter2" not in lines[1]
