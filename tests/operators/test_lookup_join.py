"""Lookup join against a real Redis server: enrichment, the cache, and errors that keep secrets out."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
import redis

import sluice as sl
from sluice import testing
from sluice.operators.lookup import LookupJoinOperator


def test_enrich_from_redis_with_a_cache(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.hset("user:u1", mapping={"name": "Ada", "tier": "gold"})
    r.hset("user:u2", mapping={"name": "Bob", "tier": "silver"})
    flow = sl.Flow("lk")
    orders = testing.rows({"user_id": ["u1", "u2", "u1", "u3", "u1"] * 200, "amount": [1.0, 2.0, 3.0, 4.0, 5.0] * 200})
    lookup = sl.RedisLookup(redis_url, fields=("name", "tier"), prefix="user:")
    enriched = flow.read("orders", orders).lookup_join("users", lookup, by="user_id", cache_ttl=timedelta(minutes=5))
    out = testing.collect(enriched)
    calls_before = r.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
    sl.run(flow, batch_size=50)
    got = out.frame()
    assert got.height == 1000 and got["user_id"].to_list()[:5] == ["u1", "u2", "u1", "u3", "u1"]  # order kept
    assert got.head(4).select("name", "tier").rows() == [("Ada", "gold"), ("Bob", "silver"), ("Ada", "gold"), (None, None)]
    calls = r.info("commandstats")["cmdstat_hmget"]["calls"] - calls_before
    assert calls == 3  # three distinct keys, each fetched once: the other 997 lookups came from the cache


def test_inner_drops_records_without_a_row(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).hset("acct:7", mapping={"owner": "Cy"})
    flow = sl.Flow("lk")
    src = flow.read("in", testing.rows({"acct": [7, 8, 7]}))
    out = testing.collect(src.lookup_join("accts", sl.RedisLookup(redis_url, fields=("owner",), prefix="acct:"),
                                          by="acct", how="inner"))
    sl.run(flow)
    assert out.frame().select("acct", "owner").rows() == [(7, "Cy"), (7, "Cy")]


def test_errors_name_the_store_but_never_the_password(redis_url: str) -> None:
    wrong = redis_url.replace("s3cret-pass", "not-the-password")
    flow = sl.Flow("lk")
    testing.collect(flow.read("in", testing.rows({"k": ["a"]})).lookup_join(
        "users", sl.RedisLookup(wrong, fields=("name",)), by="k"))
    with pytest.raises(sl.StepError) as err:
        sl.run(flow)
    msg = str(err.value)
    assert "step 'users'" in msg and "redis redis://:***@127.0.0.1" in msg
    assert "not-the-password" not in msg and "s3cret" not in msg
    assert err.value.__cause__ is None  # the driver's exception (which may quote the URL) is not chained


def test_cache_entries_expire() -> None:
    class Counting:
        fields = ("v",)

        def __init__(self) -> None:
            self.calls = 0

        def connect(self):
            return self

        def fetch(self, keys):
            self.calls += len(keys)
            return [[f"v-{k}"] for k in keys]

        def describe(self):
            return "counting"

        def close(self):
            pass

    store = Counting()
    op = LookupJoinOperator("lk", "k", store, "left", cache_ttl_s=0.0, cache_size=10)
    from sluice.core.batch import Batch

    op.on_batch(0, Batch(pl.DataFrame({"k": ["a", "b"]})))
    op.on_batch(0, Batch(pl.DataFrame({"k": ["a"]})))
    assert store.calls == 3  # a ttl of zero: every batch asks again
