"""SASL/PLAIN over TLS against the real broker: settings pass through to librdkafka, exactly-once works
over it, and no password reaches a log line, an error message or a printed plan."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import oracle
import sluice as sl
from kafka_util import create_topic, frame, read_committed
from workloads import build


def test_w1_exactly_once_over_sasl_ssl(kafka_sasl_ssl: tuple[str, dict[str, str]], events_medium: Path,
                                      caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    bootstrap, config = kafka_sasl_ssl
    secret = config["sasl.password"]
    inp, out = "secure-events", "secure-w1"
    for t in (inp, out):
        create_topic(bootstrap, t, 2, config)
    load = sl.Flow("load")
    load.read("file", sl.JsonLinesSource(events_medium)).write(
        "topic", sl.KafkaSink(inp, bootstrap, key="user_id", config=config))
    assert sl.run(load).rows_read == 60_000
    flow = build("w1", sl.KafkaSource(inp, bootstrap, key="user_id", config=config),
                 sl.KafkaSink(out, bootstrap, key="user_id", config=config))
    assert secret not in flow.explain() and secret not in repr(flow.plan())
    sl.run_worker(flow, sl.KafkaRuntime(app_id="secure-w1", until_end=True, config=config))
    got = frame(read_committed(bootstrap, out, config))
    oracle.assert_frames_match(got, oracle.w1(oracle.flat_events(str(events_medium))), ["user_id", "window_start"])
    logged = caplog.text + "".join(capfd.readouterr())
    assert secret not in logged


def test_a_wrong_password_is_a_clear_error_without_it(kafka_sasl_ssl: tuple[str, dict[str, str]],
                                                     caplog: pytest.LogCaptureFixture,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    bootstrap, config = kafka_sasl_ssl
    wrong = {**config, "sasl.password": "not-the-password-9f3k"}
    flow = sl.Flow("x")
    flow.read("src", sl.KafkaSource("secure-events", bootstrap, config=wrong, connect_timeout_s=5),
              schema={"a": int}).write("out", sl.CollectSink())
    with pytest.raises(sl.KafkaError, match="cannot get metadata") as info:
        sl.run(flow)
    text = str(info.value) + caplog.text + "".join(capfd.readouterr())
    assert "not-the-password-9f3k" not in text and config["sasl.password"] not in text
