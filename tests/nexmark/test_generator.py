"""The Nexmark generator: the 1:3:46 proportions, ids, determinism whatever the chunking, and arrival
order (out of order within the configured bounds, release times non-decreasing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.testing import nexmark as nx


def _events(cfg: nx.NexmarkConfig, rows: int = 1 << 20) -> pl.DataFrame:
    out = pl.from_arrow(pa.concat_tables(list(nx.chunks(cfg, rows))))
    assert isinstance(out, pl.DataFrame)
    return out


def test_proportions_and_ids() -> None:
    cfg = nx.NexmarkConfig(50_000, events_per_second=1_000, prob_delayed=0.0)
    df = _events(cfg)
    counts = dict(df.group_by("event_type").len().iter_rows())
    assert counts == {0: 1_000, 1: 3_000, 2: 46_000}
    persons = df.filter(pl.col("event_type") == 0)["person_id"].to_list()
    auctions = df.filter(pl.col("event_type") == 1)["auction_id"].to_list()
    # without delays the stream is in generation order: ids are consecutive (the first event id is 1,
    # so person 1000 would have been event 0)
    assert persons == list(range(1001, 1001 + 1000))
    assert auctions == list(range(1000, 1000 + 3000))
    bids = df.filter(pl.col("event_type") == 2)
    # every bid refers to an auction at most ID_LEAD ahead of the newest, every seller to a person likewise
    assert bids["bid_auction"].max() <= max(auctions) + nx.ID_LEAD
    assert df.filter(pl.col("event_type") == 1)["auction_seller"].max() <= max(persons) + nx.ID_LEAD
    # the kinds' own columns are set, the others' null
    assert bids.select(pl.col("^person_.*$", "^auction_.*$")).null_count().to_numpy().min() == bids.height
    assert bids.select(pl.col("^bid_.*$")).null_count().to_numpy().max() == 0


def test_field_distributions() -> None:
    df = _events(nx.NexmarkConfig(100_000, events_per_second=10_000, seed=3))
    bids = df.filter(pl.col("event_type") == 2)
    auctions = df.filter(pl.col("event_type") == 1)
    persons = df.filter(pl.col("event_type") == 0)
    assert set(auctions["auction_category"].unique()) == {10, 11, 12, 13, 14}
    assert set(persons["person_state"].unique()) == set(nx.US_STATES)
    # the padding makes the average sizes Nexmark's: a bid's extra is 54..81 bytes (avg 100 - 32 fixed)
    extra = bids["bid_extra"].str.len_bytes()
    assert extra.min() == 54 and extra.max() == 81
    # hot auctions (1/2 of the bids) and hot bidders (3/4): the most frequent ones dominate
    assert bids["bid_auction"].value_counts().sort("count")["count"].tail(60).sum() / bids.height > 0.4
    assert (auctions["auction_expires"] > auctions["date_time"]).all()
    assert (auctions["auction_reserve"] > auctions["auction_initial_bid"]).all()
    # half the bids on the 4 hot channels
    hot = bids["bid_channel"].is_in(nx.HOT_CHANNELS).mean()
    assert hot is not None and 0.45 < float(hot) < 0.55  # type: ignore[arg-type]
    assert persons["person_email"].str.ends_with(".com").all()


def test_deterministic_whatever_the_chunks() -> None:
    cfg = nx.NexmarkConfig(30_000, events_per_second=2_000, out_of_order_group_size=5, seed=11)
    whole = _events(cfg)
    assert whole.equals(_events(cfg, rows=4_099))
    assert whole.equals(nx.frame(cfg))
    other = _events(nx.NexmarkConfig(30_000, events_per_second=2_000, out_of_order_group_size=5, seed=12))
    assert not whole.equals(other)
    # the seed changes the values, not the model's kinds and times when nothing is held back
    flat = {"events_per_second": 2_000, "prob_delayed": 0.0}
    a, b = _events(nx.NexmarkConfig(3_000, seed=1, **flat)), _events(nx.NexmarkConfig(3_000, seed=2, **flat))
    assert a.select("event_type", "date_time").equals(b.select("event_type", "date_time"))
    assert not a["bid_price"].equals(b["bid_price"])


def test_out_of_order_within_bounds() -> None:
    cfg = nx.NexmarkConfig(60_000, events_per_second=1_000, out_of_order_group_size=10, prob_delayed=0.1,
                           max_delay_ms=3_000, seed=5)
    df = _events(cfg)
    t = df["date_time"].to_numpy()
    behind = np.maximum.accumulate(t) - t
    # held back events arrive behind newer ones, up to the delay plus the group shuffle (10 events, 10 ms)
    assert behind.max() > 2_000
    assert behind.max() <= cfg.max_delay_ms + 10
    held = _events(nx.NexmarkConfig(20_000, events_per_second=1_000, prob_delayed=0.1, seed=5))["date_time"].to_numpy()
    assert 0.05 < (np.maximum.accumulate(held) > held).mean() < 0.3  # about the held-back tenth
    assert (np.diff(df["proc_time"].to_numpy()) >= 0).all()
    # each event exactly once: with the shuffle the ids are a permutation
    n = np.sort(np.concatenate([df["person_id"].drop_nulls().to_numpy()]))
    assert (np.diff(n) == 1).all()
    # no delay, no shuffle: event time is non-decreasing in arrival order (Flink's source)
    flink = _events(nx.NexmarkConfig(10_000, prob_delayed=0.0))
    assert (np.diff(flink["date_time"].to_numpy()) >= 0).all()


def test_rate_sets_event_time() -> None:
    df = _events(nx.NexmarkConfig(10_000, events_per_second=1_000, prob_delayed=0.0, base_time=0))
    # event n at floor(n * 1000 us) // 1000 ms, i.e. n ms (ids start at 1, generation order)
    assert df["date_time"].to_list() == list(range(10_000))


def test_parquet_round_trip(tmp_path: Path) -> None:
    cfg = nx.NexmarkConfig(5_000, events_per_second=1_000, seed=2)
    path = nx.write_parquet(cfg, tmp_path / "nexmark.parquet", rows=1_000)
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    assert pl.read_parquet(path).equals(nx.frame(cfg))


def test_tiny_and_bad_configs() -> None:
    assert nx.frame(nx.NexmarkConfig(1)).height == 1
    assert nx.frame(nx.NexmarkConfig(0)).height == 0
    for bad, what in [({"events": -1}, "events"), ({"out_of_order_group_size": 0}, "out_of_order_group_size"),
                      ({"events_per_second": 0}, "events_per_second"), ({"prob_delayed": 1.5}, "prob_delayed")]:
        with pytest.raises(ValueError, match=what):
            nx.NexmarkConfig(**{"events": 10, **bad})
