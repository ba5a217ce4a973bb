"""Dead letters cut to what their Kafka topic takes (connectors/kafka.py DeadLetterFit): the head is kept,
the original size and SHA-256 go into headers, and records that fit are left alone (boundary included)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.connectors.kafka import BIG_RECORD, RECORD_OVERHEAD, DeadLetterFit
from sluice.core.errors import KafkaError

HEADERS = [("sluice.reason", b"malformed JSON"), ("sluice.step", b"orders"), ("sluice.position", b"kafka:in/0 offset 7")]


def fit(limit: int) -> DeadLetterFit:
    f = DeadLetterFit("dlq", "dead", "127.0.0.1:1", {})
    f.limit = limit  # as read from the topic (max.message.bytes) and the producer (message.max.bytes)
    return f


def framing(key: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    return len(key or b"") + sum(len(k) + len(v) for k, v in headers)


def test_a_record_that_fits_exactly_is_left_alone_one_more_byte_is_cut() -> None:
    limit = 200_000
    size = limit - RECORD_OVERHEAD - framing(b"k", HEADERS)
    value = b"x" * size
    assert fit(limit).fit(b"k", value, HEADERS) == (value, HEADERS)
    cut, headers = fit(limit).fit(b"k", value + b"y", HEADERS)
    assert len(cut) < size and (value + b"y").startswith(cut)
    assert dict(headers)["sluice.original.size"] == str(size + 1).encode()


def test_small_records_are_never_looked_at() -> None:
    f = DeadLetterFit("dlq", "dead", "127.0.0.1:1", {})  # no limit known: asking would need the cluster
    value = b"x" * (BIG_RECORD - framing(None, HEADERS) - 1)
    assert f.fit(None, value, HEADERS) == (value, HEADERS)
    assert f.limit is None


@settings(deadline=None, max_examples=60)
@given(size=st.integers(BIG_RECORD, 3_000_000), limit=st.integers(20_000, 1_100_000), key=st.binary(max_size=40))
def test_a_cut_dead_letter_fits_and_says_what_it_was(size: int, limit: int, key: bytes) -> None:
    value = (bytes(range(251)) * (size // 251 + 1))[:size]
    out, headers = fit(limit).fit(key, value, HEADERS)
    assert len(out) + framing(key, headers) + RECORD_OVERHEAD <= limit  # it fits the topic
    assert value.startswith(out)  # its head
    if out != value:
        marks = dict(headers)
        assert marks["sluice.truncated"] == b"true"
        assert int(marks["sluice.original.size"]) == size
        assert marks["sluice.original.sha256"].decode() == hashlib.sha256(value).hexdigest()
        assert headers[:len(HEADERS)] == HEADERS  # the reason, step and position stay
        assert len(out) >= limit - RECORD_OVERHEAD - framing(key, headers) - 1  # as much as fits


def test_no_room_even_for_the_headers_is_a_clear_error() -> None:
    with pytest.raises(KafkaError, match=r"step 'dlq'.*kafka:in/0 offset 7.*'dead'.*max.message.bytes"):
        fit(4_200).fit(None, b"x" * 100_000, HEADERS)
