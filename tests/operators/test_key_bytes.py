"""Stored keys take their own size: orjson's bytes keep a 4 kB buffer, which made the memory state
backend hold 4 GB for a million keys."""

from __future__ import annotations

import tracemalloc

import orjson

from sluice.operators.base import key_bytes


def test_a_stored_key_takes_its_own_size() -> None:
    tracemalloc.start()
    try:
        keys = [key_bytes(["user", i]) for i in range(20_000)]
        per_key = tracemalloc.get_traced_memory()[0] / len(keys)
    finally:
        tracemalloc.stop()
    assert per_key < 200, per_key
    assert keys[7] == orjson.dumps(["user", 7]) and orjson.loads(keys[7]) == ["user", 7]
