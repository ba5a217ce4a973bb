"""The Nexmark event streams (persons, auctions, bids), vectorized, seeded and deterministic.

The model follows the generator of the Flink-based Nexmark (github.com/nexmark/nexmark, nexmark-flink
`generator/`), itself Beam's (`sdks/java/testing/nexmark`):

- Event *n* (0, 1, 2, …) gets the id `first_event_id + n'`, where `n'` is `n` shuffled inside groups of
  `out_of_order_group_size` events (`(n // g) * g + (n * 953) % g`, Beam's `nextAdjustedEventNumber`), and
  the event time `base_time + floor(n' * 1e6 / events_per_second) // 1000` ms. The id says the kind:
  `id % 50` < 1 is a person, < 4 an auction, else a bid (proportions 1 : 3 : 46).
- Person and auction ids grow with the event id; auctions go to "hot" sellers (the first of the last
  100 persons) with probability 3/4, bids to hot auctions with probability 1/2 and come from hot bidders
  with probability 3/4; other ids are drawn among the last 1,000 persons / 100 auctions plus 10 not yet
  created. Prices are `round(10 ** (6u) * 100)` cents; an auction expires uniformly within twice the time
  100 auctions take to be generated; 5 categories, 6 US states, channels 4 hot + 10,000 others; the
  `extra` padding makes persons, auctions and bids 200, 500 and 100 bytes on average.
- Arrival order: Beam's unbounded source holds an event back with probability `prob_delayed` by a
  uniform 1 … `max_delay_ms` ms of wall-clock time (its defaults 0.1 and 3 s); events arrive in order of
  their release time (`proc_time` column: event time of the un-shuffled number, plus the delay), held-back
  events first on ties, then by `n`. Flink's source delays nothing (`prob_delayed=0`).
  A record is at most `max_delay_ms` plus the shuffle's spread behind the newest event time seen, so a
  watermark delay above that (Flink's DDL uses 4 s) sees no late record.

Randomness is a counter-based hash of (seed, event number, field), so every event is a function of its
number alone: any chunk size and any order of generation give the same rows. It is not Java's
SplittableRandom, so the values are not Flink's byte for byte; their distributions are.

Rows come as one flat table in arrival order: `event_type` (0 person, 1 auction, 2 bid), `date_time`
(event time, epoch ms), `proc_time`, then `person_*`, `auction_*` and `bid_*` columns (null in the other
kinds' rows), as in Flink's `datagen` table (its `person`, `auction` and `bid` ROWs, flattened).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["SCHEMA", "NexmarkConfig", "chunks", "frame", "write_parquet"]

PERSON, AUCTION, BID = 0, 1, 2
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
HOT_RATIO = 100  # hot sellers / bidders / auctions: the first of the last 100
ID_LEAD = 10  # ids not yet created that may be referenced
US_STATES = ["AZ", "CA", "ID", "OR", "WA", "WY"]
US_CITIES = ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent",
             "Cheyenne"]
FIRST_NAMES = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"]
LAST_NAMES = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"]
HOT_CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]
CHANNELS = 10_000
REUSABLE_BYTES = 1 << 20

SCHEMA = pa.schema([
    ("event_type", pa.int64()), ("date_time", pa.int64()), ("proc_time", pa.int64()),
    ("person_id", pa.int64()), ("person_name", pa.string()), ("person_email", pa.string()),
    ("person_credit_card", pa.string()), ("person_city", pa.string()), ("person_state", pa.string()),
    ("person_extra", pa.string()),
    ("auction_id", pa.int64()), ("auction_item_name", pa.string()), ("auction_description", pa.string()),
    ("auction_initial_bid", pa.int64()), ("auction_reserve", pa.int64()), ("auction_expires", pa.int64()),
    ("auction_seller", pa.int64()), ("auction_category", pa.int64()), ("auction_extra", pa.string()),
    ("bid_auction", pa.int64()), ("bid_bidder", pa.int64()), ("bid_price", pa.int64()),
    ("bid_channel", pa.string()), ("bid_url", pa.string()), ("bid_extra", pa.string()),
])


@dataclass(frozen=True)
class NexmarkConfig:
    """What to generate. The defaults are Nexmark's (NexmarkConfiguration), with Flink's benchmark rate."""

    events: int
    seed: int = 0
    events_per_second: float = 10_000_000  # Flink's suite: 10M events/s, so 10M events span 1 s of event time
    base_time: int = 1_700_000_000_000  # epoch ms of event 0
    first_event_id: int = 1
    out_of_order_group_size: int = 1
    prob_delayed: float = 0.1
    max_delay_ms: int = 3_000
    person_proportion: int = 1
    auction_proportion: int = 3
    bid_proportion: int = 46
    num_in_flight_auctions: int = 100
    num_active_people: int = 1_000
    hot_auction_ratio: int = 2
    hot_sellers_ratio: int = 4
    hot_bidders_ratio: int = 4
    avg_person_bytes: int = 200
    avg_auction_bytes: int = 500
    avg_bid_bytes: int = 100

    def __post_init__(self) -> None:
        checks = [("events", self.events >= 0, "0 or more"),
                  ("events_per_second", self.events_per_second > 0, "above 0"),
                  ("out_of_order_group_size", self.out_of_order_group_size >= 1, "1 or more"),
                  ("prob_delayed", 0.0 <= self.prob_delayed <= 1.0, "between 0 and 1"),
                  ("max_delay_ms", self.max_delay_ms >= 0, "0 or more")]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"NexmarkConfig: {name} must be {want}, got {getattr(self, name)!r}")

    @property
    def total_proportion(self) -> int:
        return self.person_proportion + self.auction_proportion + self.bid_proportion

    def timestamp(self, number: np.ndarray) -> np.ndarray:
        """Event time (epoch ms) of an event number (GeneratorConfig.timestampForEvent)."""
        delay_us = 1_000_000.0 / self.events_per_second
        return self.base_time + (number.astype(np.float64) * delay_us).astype(np.int64) // 1000

    def adjusted(self, number: np.ndarray) -> np.ndarray:
        g = self.out_of_order_group_size
        out: np.ndarray = (number // g) * g + (number * 953) % g
        return out


# --- counter-based randomness ------------------------------------------------------------------

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over uint64 (wrapping arithmetic)."""
    z = x + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class _Rand:
    """Random values as a function of (seed, field, event number)."""

    def __init__(self, seed: int, numbers: np.ndarray) -> None:
        self.seed = seed
        self.n = numbers.astype(np.uint64)

    def bits(self, field: int, n: np.ndarray | None = None) -> np.ndarray:
        key = _mix(np.array([(self.seed << 8) ^ field], dtype=np.uint64))[0]
        return _mix((self.n if n is None else n) ^ key)

    def below(self, field: int, bound: np.ndarray | int) -> np.ndarray:
        """Uniform in [0, bound)."""
        return ((self.bits(field) >> np.uint64(11)) % np.asarray(bound, dtype=np.uint64)).astype(np.int64)

    def unit(self, field: int) -> np.ndarray:
        return (self.bits(field) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _java_round(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.int64)


def _strings(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data)))


def _random_strings(rand: _Rand, field: int, max_length: int, special: str = " ") -> pa.Array:
    """StringsGenerator.nextString: 3 … max_length-1 letters, each 1/13 `special`, trimmed."""
    lengths = 3 + rand.below(field, max_length - 3)
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    h = rand.bits(field + 1, rand.n[owner] * np.uint64(128) + pos.astype(np.uint64))
    letters = (np.uint8(ord("a")) + ((h >> np.uint64(11)) % np.uint64(26)).astype(np.uint8))
    letters[((h >> np.uint64(40)) % np.uint64(13)) == 0] = ord(special)
    out = _strings(letters, lengths)
    return pc.utf8_trim(out, special) if special == " " else out


_REUSABLE: np.ndarray | None = None


def _reusable() -> np.ndarray:
    global _REUSABLE
    if _REUSABLE is None:
        rng = np.random.default_rng(20_240_101)
        _REUSABLE = (ord("a") + rng.integers(0, 26, REUSABLE_BYTES)).astype(np.uint8)
    return _REUSABLE


def _extra(rand: _Rand, field: int, current: np.ndarray, average: int) -> pa.Array:
    """StringsGenerator.nextExtra: padding so that the record is `average` bytes on average."""
    desired = average - current
    delta = _java_round(desired * 0.2)
    size = desired - delta + np.where(delta > 0, rand.below(field, np.maximum(2 * delta, 1)), 0)
    size = np.where(current > average, 0, size)
    reusable = _reusable()
    start = rand.below(field + 1, len(reusable) - np.maximum(size, 1))
    total = int(size.sum())
    idx = np.arange(total, dtype=np.int64) + np.repeat(start - (np.cumsum(size) - size), size)
    return _strings(reusable[idx], size)


def _lengths(arr: pa.Array) -> np.ndarray:
    out: np.ndarray = pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    return out


def _channel_urls() -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(7)

    def base_url() -> str:
        parts = []
        for _ in range(3):
            n = 3 + int(rng.integers(2))
            parts.append("".join("_" if rng.integers(13) == 0 else chr(97 + int(rng.integers(26))) for _ in range(n)))
        return "https://www.nexmark.com/" + "/".join(parts) + "/item.htm?query=1"

    hot = [base_url() for _ in HOT_CHANNELS]
    cache = []
    for i in range(CHANNELS):
        url = base_url()
        if rng.integers(10) > 0:
            rev = int(f"{i:032b}"[::-1], 2)
            url += f"&channel_id={abs(rev - (1 << 32) if rev >= 1 << 31 else rev)}"
        cache.append(url)
    return hot, cache


_URLS: tuple[list[str], list[str]] | None = None


# --- ids ----------------------------------------------------------------------------------------


def _last_person(cfg: NexmarkConfig, eid: np.ndarray) -> np.ndarray:
    epoch, offset = eid // cfg.total_proportion, eid % cfg.total_proportion
    out: np.ndarray = epoch * cfg.person_proportion + np.minimum(offset, cfg.person_proportion - 1)
    return out


def _last_auction(cfg: NexmarkConfig, eid: np.ndarray) -> np.ndarray:
    p, a = cfg.person_proportion, cfg.auction_proportion
    epoch, offset = eid // cfg.total_proportion, eid % cfg.total_proportion
    before = offset < p
    epoch = np.where(before, epoch - 1, epoch)
    offset = np.where(before | (offset >= p + a), a - 1, offset - p)
    out: np.ndarray = epoch * a + offset
    return out


def _next_person(cfg: NexmarkConfig, eid: np.ndarray, rand: _Rand, field: int) -> np.ndarray:
    people = _last_person(cfg, eid) + 1
    active = np.minimum(people, cfg.num_active_people)
    out: np.ndarray = people - active + rand.below(field, active + ID_LEAD)
    return out


def _next_auction(cfg: NexmarkConfig, eid: np.ndarray, rand: _Rand, field: int) -> np.ndarray:
    last = _last_auction(cfg, eid)
    low = np.maximum(last - cfg.num_in_flight_auctions, 0)
    out: np.ndarray = low + rand.below(field, last - low + 1 + ID_LEAD)
    return out


def _price(rand: _Rand, field: int) -> np.ndarray:
    return _java_round(np.power(10.0, rand.unit(field) * 6.0) * 100.0)


# --- the three kinds ----------------------------------------------------------------------------


def _persons(cfg: NexmarkConfig, n: np.ndarray, eid: np.ndarray, ts: np.ndarray) -> dict[str, pa.Array]:
    r = _Rand(cfg.seed, n)
    first, last = r.below(10, len(FIRST_NAMES)), r.below(11, len(LAST_NAMES))
    names = pa.array([f"{a} {b}" for a in FIRST_NAMES for b in LAST_NAMES]).take(pa.array(first * len(LAST_NAMES) + last))
    email = pc.binary_join_element_wise(_random_strings(r, 20, 7), _random_strings(r, 22, 5), pa.scalar("@"))
    email = pc.binary_join_element_wise(email, pa.scalar(".com"), pa.scalar(""))
    digits = pa.array([f"{i:04d}" for i in range(10_000)])
    card = pc.binary_join_element_wise(*[digits.take(pa.array(r.below(30 + i, 10_000))) for i in range(4)], pa.scalar(" "))
    city = pa.array(US_CITIES).take(pa.array(r.below(12, len(US_CITIES))))
    state = pa.array(US_STATES).take(pa.array(r.below(13, len(US_STATES))))
    size = 8 + _lengths(names) + _lengths(email) + _lengths(card) + _lengths(city) + _lengths(state)
    return {"person_id": pa.array(_last_person(cfg, eid) + FIRST_PERSON_ID), "person_name": names,
            "person_email": email, "person_credit_card": card, "person_city": city, "person_state": state,
            "person_extra": _extra(r, 40, size, cfg.avg_person_bytes)}


def _auctions(cfg: NexmarkConfig, n: np.ndarray, eid: np.ndarray, ts: np.ndarray) -> dict[str, pa.Array]:
    r = _Rand(cfg.seed, n)
    hot = r.below(50, cfg.hot_sellers_ratio) > 0
    seller = np.where(hot, (_last_person(cfg, eid) // HOT_RATIO) * HOT_RATIO, _next_person(cfg, eid, r, 51))
    category = FIRST_CATEGORY_ID + r.below(52, NUM_CATEGORIES)
    initial = _price(r, 53)
    ahead = cfg.num_in_flight_auctions * cfg.total_proportion // cfg.auction_proportion
    horizon = cfg.timestamp(cfg.adjusted(n) + ahead) - ts
    expires = ts + 1 + r.below(54, np.maximum(horizon * 2, 1))
    item = _random_strings(r, 60, 20)
    desc = _random_strings(r, 62, 100)
    reserve = initial + _price(r, 55)
    size = 8 + _lengths(item) + _lengths(desc) + 40
    return {"auction_id": pa.array(_last_auction(cfg, eid) + FIRST_AUCTION_ID), "auction_item_name": item,
            "auction_description": desc, "auction_initial_bid": pa.array(initial), "auction_reserve": pa.array(reserve),
            "auction_expires": pa.array(expires), "auction_seller": pa.array(seller + FIRST_PERSON_ID),
            "auction_category": pa.array(category), "auction_extra": _extra(r, 70, size, cfg.avg_auction_bytes)}


def _bids(cfg: NexmarkConfig, n: np.ndarray, eid: np.ndarray, ts: np.ndarray) -> dict[str, pa.Array]:
    global _URLS
    if _URLS is None:
        _URLS = _channel_urls()
    hot_urls, urls = _URLS
    r = _Rand(cfg.seed, n)
    hot = r.below(80, cfg.hot_auction_ratio) > 0
    auction = np.where(hot, (_last_auction(cfg, eid) // HOT_RATIO) * HOT_RATIO, _next_auction(cfg, eid, r, 81))
    hot = r.below(82, cfg.hot_bidders_ratio) > 0
    bidder = np.where(hot, (_last_person(cfg, eid) // HOT_RATIO) * HOT_RATIO + 1, _next_person(cfg, eid, r, 83))
    price = _price(r, 84)
    hot_channel = r.below(85, 2) > 0
    which = np.where(hot_channel, r.below(86, len(HOT_CHANNELS)), len(HOT_CHANNELS) + r.below(87, CHANNELS))
    channel = pa.array([*HOT_CHANNELS, *(f"channel-{i}" for i in range(CHANNELS))]).take(pa.array(which))
    url = pa.array([*hot_urls, *urls]).take(pa.array(which))
    return {"bid_auction": pa.array(auction + FIRST_AUCTION_ID), "bid_bidder": pa.array(bidder + FIRST_PERSON_ID),
            "bid_price": pa.array(price), "bid_channel": channel, "bid_url": url,
            "bid_extra": _extra(r, 90, np.full(len(n), 32), cfg.avg_bid_bytes)}


# --- arrival order and output -------------------------------------------------------------------


def arrival_order(cfg: NexmarkConfig) -> tuple[np.ndarray, np.ndarray]:
    """Event numbers in arrival order, and each one's release (processing) time in ms."""
    n = np.arange(cfg.events, dtype=np.int64)
    release = cfg.timestamp(n)
    if cfg.prob_delayed <= 0 or cfg.max_delay_ms <= 0:
        return n, release
    r = _Rand(cfg.seed, n)
    delayed = r.unit(1) < cfg.prob_delayed
    release = release + np.where(delayed, 1 + r.below(2, cfg.max_delay_ms), 0)
    order = np.lexsort((n, ~delayed, release))
    return order, release[order]


def _kinds(cfg: NexmarkConfig, eid: np.ndarray) -> np.ndarray:
    rem = eid % cfg.total_proportion
    return np.where(rem < cfg.person_proportion, PERSON,
                    np.where(rem < cfg.person_proportion + cfg.auction_proportion, AUCTION, BID)).astype(np.int64)


def _table(cfg: NexmarkConfig, n: np.ndarray, release: np.ndarray) -> pa.Table:
    """The rows of these event numbers, in this order."""
    adj = cfg.adjusted(n)
    eid = cfg.first_event_id + adj
    ts = cfg.timestamp(adj)
    kind = _kinds(cfg, eid)
    columns: dict[str, pa.Array] = {"event_type": pa.array(kind), "date_time": pa.array(ts), "proc_time": pa.array(release)}
    for k, make in ((PERSON, _persons), (AUCTION, _auctions), (BID, _bids)):
        rows = np.flatnonzero(kind == k)
        made = make(cfg, n[rows], eid[rows], ts[rows])
        # scatter into full-length columns: rows of other kinds are null
        slot = np.full(len(n), len(rows), dtype=np.int64)
        slot[rows] = np.arange(len(rows))
        take = pa.array(slot, mask=kind != k)
        for name, values in made.items():
            columns[name] = values.take(take)
    return pa.table([columns[f.name].cast(f.type) for f in SCHEMA], schema=SCHEMA)


def chunks(cfg: NexmarkConfig, rows: int = 1 << 20) -> Iterator[pa.Table]:
    """The stream in arrival order, `rows` events at a time (the same rows whatever `rows` is)."""
    order, release = arrival_order(cfg)
    for start in range(0, cfg.events, rows):
        yield _table(cfg, order[start:start + rows], release[start:start + rows])


def frame(cfg: NexmarkConfig) -> pl.DataFrame:
    """The whole stream as one DataFrame (for sl.MemorySource)."""
    tables = list(chunks(cfg))
    out = pl.from_arrow(pa.concat_tables(tables) if tables else SCHEMA.empty_table())
    assert isinstance(out, pl.DataFrame)
    return out


def write_parquet(cfg: NexmarkConfig, path: str | Path, rows: int = 1 << 20) -> Path:
    """Write the stream to one Parquet file (one row group per `rows` events), in arrival order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, SCHEMA, compression="snappy") as writer:
        for table in chunks(cfg, rows):
            writer.write_table(table, row_group_size=rows)
    tmp.replace(path)
    return path
