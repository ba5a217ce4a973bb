"""A broker-free harness for testing flows: in-memory input with explicit timestamps, every output
stream (late and dead-letter streams too) collected as a DataFrame, and runs at several batch sizes.

    flow = sl.Flow("t")
    src = flow.read("in", testing.rows([{"ts": 1000, "user": "a"}, ...]))
    win = src.event_time("ts", timedelta(seconds=5)).key_by("user").window("w", sl.Tumbling(...), n=sl.agg.count())
    out, late = testing.collect(win), testing.collect(win.late)
    sl.run(flow, batch_size=7)
    out.frame()  # a polars DataFrame
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

from sluice.connectors.memory import CollectSink, MemorySource
from sluice.flow import Flow, Stream
from sluice.runtime.executor import run

__all__ = ["CollectSink", "collect", "partitions", "rows", "run_batch_sizes"]

BATCH_SIZES = (1, 7, 1000, 65536)


def rows(data: pl.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> MemorySource:
    """A one-partition source of these rows, in this order."""
    return MemorySource(data)


def partitions(*parts: pl.DataFrame | Sequence[Mapping[str, Any]]) -> MemorySource:
    """A source with one partition per argument, read in turn a batch at a time."""
    return MemorySource(None, tuple(parts))


def collect(stream: Stream, name: str | None = None) -> CollectSink:
    """Write `stream` to a new in-memory sink and return the sink."""
    sink = CollectSink()
    stream.write(name or f"collect_{stream.ref.step}_{stream.ref.port}", sink)
    return sink


def run_batch_sizes(build: Callable[[], tuple[Flow, Sequence[CollectSink]]],
                    sizes: Sequence[int] = BATCH_SIZES) -> dict[int, list[pl.DataFrame]]:
    """Build and run the flow once per batch size; returns each run's collected outputs."""
    results: dict[int, list[pl.DataFrame]] = {}
    for size in sizes:
        flow, sinks = build()
        run(flow, batch_size=size)
        results[size] = [s.frame() for s in sinks]
    return results
