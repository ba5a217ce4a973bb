"""Lookup join: enrich each record with values fetched from an external store by key, through a cache.

The store is a spec with `fields` and `connect()`, giving a client with `fetch(keys)` (values per key, in
`fields` order, or None) and optionally `dtypes` (field → Polars type; strings otherwise): RedisLookup,
PostgresLookup (connectors/lookup.py). Per batch: the distinct keys not in the cache (or older than `cache_ttl`) are fetched in one round trip,
then the batch is joined with the cache in columns. A failing store stops the step with an error that
names the store without its password.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import polars as pl

from sluice.core.batch import Batch
from sluice.core.errors import StepError
from sluice.operators.base import Emitted, Operator


class LookupJoinOperator(Operator):
    def __init__(self, name: str, by: str, lookup: Any, how: str, cache_ttl_s: float | None, cache_size: int) -> None:
        self.name, self.by, self.lookup, self.how = name, by, lookup, how
        self.ttl, self.size = cache_ttl_s, cache_size
        self.cache: OrderedDict[str, tuple[list[Any] | None, float]] = OrderedDict()
        self.client: Any = None
        self.fetched = 0  # keys asked of the store (for tests and metrics)

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if batch.height == 0:
            return [("out", batch)]
        keys = batch.df[self.by].cast(pl.String).unique().drop_nulls().to_list()
        now = time.monotonic()
        missing = [k for k in keys if k not in self.cache or (self.ttl is not None and now - self.cache[k][1] > self.ttl)]
        if missing:
            self._fetch(missing, now, batch)
        fields = list(self.lookup.fields)
        rows = {self.by: keys, **{f: [] for f in fields}}
        for k in keys:
            values, _ = self.cache[k]
            self.cache.move_to_end(k)
            for i, f in enumerate(fields):
                rows[f].append(values[i] if values else None)
        # a store that knows its types says them (PostgreSQL); Redis values are strings
        types = getattr(self.client, "dtypes", None) or dict.fromkeys(fields, pl.String)
        table = pl.DataFrame(rows, schema={self.by: pl.String, **{f: types[f] for f in fields}})
        df = batch.df.with_columns(pl.col(self.by).cast(pl.String).alias("__sl_lookup_key"))
        joined = df.join(table.rename({self.by: "__sl_lookup_key"}), on="__sl_lookup_key", how="left",
                         maintain_order="left").drop("__sl_lookup_key")
        if self.how == "inner":
            joined = joined.filter(pl.any_horizontal([pl.col(f).is_not_null() for f in fields]))
        return [("out", batch.with_df(joined))]

    def _fetch(self, keys: list[str], now: float, batch: Batch) -> None:
        try:
            if self.client is None:
                self.client = self.lookup.connect()
            found = self.client.fetch(keys)
        except Exception as exc:
            raise StepError(self.name, f"a batch starting at {batch.position_of(0)}",
                            f"the lookup in {self.lookup.describe()} failed: {type(exc).__name__}",
                            "check that the store is reachable and the credentials are right") from None
        self.fetched += len(keys)
        for k, values in zip(keys, found, strict=True):
            present = values if values and any(v is not None for v in values) else None
            self.cache[k] = (present, now)
        while len(self.cache) > self.size:
            self.cache.popitem(last=False)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
