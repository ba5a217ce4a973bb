"""A deterministic, rate-controlled generator of the shapes in shared/bench/gen_events.py.

    events:       event_id, event_type, timestamp (ms), user_id, properties{country}, metrics{value, response_time}
    transactions: tx_id, user_id, amount, timestamp (ms), location

Columns are drawn in blocks from one random stream per column, so the same seed gives the same
records whatever the batch size. Event time advances by span/n per record and is jittered back by up
to `disorder`, so a watermark delay of `disorder` loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from sluice.connectors.api import SourceContext
from sluice.core.batch import OFFSET, Batch, Origin
from sluice.core.errors import PlanError

EVENT_TYPES = ["page_view", "click", "search", "add_to_cart", "checkout", "login", "logout", "purchase", "error", "api_call"]
COUNTRIES = ["US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "AU", "NL"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BLOCK = 65_536


@dataclass(frozen=True)
class GeneratorSource:
    kind: str = "events"  # "events" | "transactions"
    n: int | None = 1_000_000  # None: unbounded
    rate: float | None = None  # records per second of wall time; None: as fast as possible
    users: int = 2000
    span: timedelta = timedelta(hours=2)  # event time covered by n records (unbounded: by 1M records)
    disorder: timedelta = timedelta(seconds=5)
    start: datetime = T0
    seed: int = 7

    def __post_init__(self) -> None:
        if self.kind not in ("events", "transactions"):
            raise PlanError(f"GeneratorSource kind must be 'events' or 'transactions', got {self.kind!r}")

    def open(self, ctx: SourceContext) -> _GeneratorReader:
        return _GeneratorReader(self, ctx)


class _GeneratorReader:
    def __init__(self, spec: GeneratorSource, ctx: SourceContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.produced = 0

    def position(self) -> dict[str, Any]:
        return {"produced": self.produced}

    def seek(self, position: dict[str, Any]) -> None:
        self.produced = int(position["produced"])

    def _streams(self, block: int) -> dict[str, np.random.Generator]:
        """One random stream per column and block: any block can be made again on its own."""
        names = ["ts", "user", "a", "b", "c", "d", "e"]
        seeds = np.random.SeedSequence(self.spec.seed, spawn_key=(block,)).spawn(len(names))
        return {n: np.random.default_rng(s) for n, s in zip(names, seeds, strict=True)}

    def partitions(self) -> int:
        return 1

    def close(self) -> None:
        pass

    def _block(self, first: int, count: int) -> pl.DataFrame:
        s, r = self.spec, self._streams(first // BLOCK)
        i = np.arange(first, first + count, dtype=np.int64)
        span_ms = int(s.span / timedelta(milliseconds=1))
        per = s.n if s.n is not None else 1_000_000
        t0 = int(s.start.timestamp() * 1000)
        ts = t0 + (i * span_ms) // per - r["ts"].integers(0, int(s.disorder / timedelta(milliseconds=1)) + 1, count)
        users = (r["user"].zipf(1.3, count) - 1) % s.users
        user_id = pl.Series("u", users).cast(pl.String).str.zfill(5)
        if s.kind == "events":
            et = r["a"].integers(0, len(EVENT_TYPES), count)
            val = np.round(r["b"].gamma(2.0, 50.0, count), 3)
            rt = np.round(r["c"].lognormal(3.0, 0.6, count), 3)
            ctry = r["d"].integers(0, len(COUNTRIES), count)
            return pl.DataFrame({
                "event_id": pl.Series(i).cast(pl.String).str.zfill(9),
                "event_type": pl.Series(np.asarray(EVENT_TYPES)[et]),
                "timestamp": ts,
                "user_id": user_id,
                "country": pl.Series(np.asarray(COUNTRIES)[ctry]),
                "value": val,
                "response_time": rt,
            }).select(
                ("e" + pl.col("event_id")).alias("event_id"), "event_type", "timestamp",
                ("u" + pl.col("user_id")).alias("user_id"),
                pl.struct("country").alias("properties"),
                pl.struct("value", "response_time").alias("metrics"),
            )
        small = r["a"].random(count) < 0.08
        large = r["b"].random(count) < 0.05
        amt = np.round(np.where(small, r["c"].uniform(1, 9.99, count),
                                np.where(large, r["d"].uniform(1000.01, 5000, count), r["e"].gamma(2.0, 40.0, count))), 2)
        loc = r["d"].integers(0, len(COUNTRIES), count)
        return pl.DataFrame({
            "tx_id": "t" + pl.Series(i).cast(pl.String).str.zfill(9),
            "user_id": "u" + user_id,
            "amount": amt,
            "timestamp": ts,
            "location": pl.Series(np.asarray(COUNTRIES)[loc]),
        })

    def batches(self) -> Iterator[tuple[str, Batch]]:
        origin = Origin(self.ctx.step, 0, f"generator:{self.spec.kind}", unit="record")
        started = time.perf_counter()
        resumed_at = self.produced
        block_start = (self.produced // BLOCK) * BLOCK
        while self.spec.n is None or block_start < self.spec.n:
            count = BLOCK if self.spec.n is None else min(BLOCK, self.spec.n - block_start)
            block = self._block(block_start, count)
            block = block.with_columns(pl.int_range(block_start, block_start + count, dtype=pl.Int64).alias(OFFSET))
            for start in range(self.produced - block_start, count, self.ctx.batch_size):
                piece = block.slice(start, self.ctx.batch_size)
                if self.spec.rate:
                    due = started + (block_start + start + piece.height - resumed_at) / self.spec.rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                self.produced = block_start + start + piece.height
                yield "out", Batch(piece, origin=origin)
            block_start += count
        yield "out", Batch(pl.DataFrame(), origin=origin, end_of_partition=True)
