"""A slow sink slows the source: the engine pulls a batch only when the last one has been written, so
what is in flight stays within one batch whatever the speeds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import polars as pl

import sluice as sl
from sluice.connectors.api import SinkContext, SourceContext, UntransactedWriter
from sluice.core.batch import OFFSET, Batch, Origin


class CountingSource:
    def __init__(self, total: int) -> None:
        self.total = total
        self.read = 0

    def open(self, ctx: SourceContext) -> CountingSource:
        self.ctx = ctx
        return self

    def partitions(self) -> int:
        return 1

    def position(self) -> dict[str, Any]:
        return {"read": self.read}

    def seek(self, position: dict[str, Any]) -> None:
        self.read = position["read"]

    def close(self) -> None:
        pass

    def batches(self) -> Iterator[tuple[str, Batch]]:
        origin = Origin(self.ctx.step, 0, "counting")
        while self.read < self.total:
            n = min(self.ctx.batch_size, self.total - self.read)
            df = pl.DataFrame({"i": range(self.read, self.read + n)}).with_columns(pl.col("i").alias(OFFSET))
            self.read += n
            yield "out", Batch(df, origin=origin)


class SlowSink(UntransactedWriter):
    def __init__(self, source: CountingSource) -> None:
        self.source = source
        self.written = 0
        self.max_in_flight = 0

    def open(self, ctx: SinkContext) -> SlowSink:
        return self

    def write(self, df: pl.DataFrame) -> None:
        time.sleep(0.002)
        self.written += df.height
        self.max_in_flight = max(self.max_in_flight, self.source.read - self.written)


def test_slow_sink_holds_the_source_back() -> None:
    source = CountingSource(20_000)
    sink = SlowSink(source)
    flow = sl.Flow("bp")
    flow.read("src", source).filter(pl.col("i") >= 0).write("slow", sink)
    sl.run(flow, batch_size=100)
    assert sink.written == 20_000
    assert sink.max_in_flight == 0  # the source never ran ahead of the sink by even one batch
