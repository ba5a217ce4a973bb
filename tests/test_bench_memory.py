"""bench/memory.py's scalable oracles (as-of and bucketed equi-joins) equal the tests' oracles (w4, w5) and
the relaxed-contiguity CEP query of tests/cep, on skewed, out-of-order generated input."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

import oracle
from conftest import generate
from memory import HASH_SEED, KEYS, W5_SCHEMA, _w5, check_w5, oracle_of, w5_chunks

CEP_PAIRS = """
    with tx as (select * from read_json('{f}', format='newline_delimited',
                columns={{tx_id: 'VARCHAR', user_id: 'VARCHAR', amount: 'DOUBLE', timestamp: 'BIGINT'}})),
         s as (select * from tx where amount < 10), l as (select * from tx where amount > 1000)
    select user_id, small_tx_id, large_tx_id from (
        select s.user_id, s.tx_id as small_tx_id, arg_min(l.tx_id, (l.timestamp, l.tx_id)) as large_tx_id,
               min(l.timestamp) as large_ts, any_value(s.timestamp) as small_ts
        from s join l on s.user_id = l.user_id and (l.timestamp, l.tx_id) > (s.timestamp, s.tx_id)
        group by s.user_id, s.tx_id)
    where large_ts - small_ts <= 600000"""


@pytest.fixture(scope="module")
def transactions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # few users and a short span: many ties in event time and many pairs per user
    return generate("transactions", 40_000, tmp_path_factory.mktemp("mem") / "tx.jsonl", users=50, span_s=1800)


def test_w4_oracle_equals_the_quadratic_one(transactions: Path) -> None:
    got, want = oracle_of("w4", transactions), oracle.w4(str(transactions))
    assert want.height > 500
    assert got.sort(KEYS["w4"]).equals(want.select(got.columns).sort(KEYS["w4"]))


def test_cep_oracle_equals_the_pairwise_query(transactions: Path) -> None:
    got, want = oracle_of("cep", transactions), duckdb.sql(CEP_PAIRS.format(f=transactions)).pl()
    assert want.height > 500
    assert got.sort(KEYS["cep"]).equals(want.select(got.columns).sort(KEYS["cep"]))


def test_w5_oracle_equals_the_quadratic_one(events_medium: Path) -> None:
    got, want = oracle_of("w5", events_medium), oracle.w5(str(events_medium))
    assert want.height > 100
    assert got.sort(KEYS["w5"]).equals(want.select(got.columns).sort(KEYS["w5"]))


def test_oracles_at_their_boundaries(tmp_path: Path) -> None:
    t0 = 1767225600000
    rows = [  # (tx_id, user, amount, ms after t0), in arrival order
        ("t000000000", "a", 5.0, 0), ("t000000001", "a", 2000.0, 600_000),  # exactly 10 minutes: a pair
        ("t000000002", "b", 5.0, 0), ("t000000003", "b", 2000.0, 600_001),  # 1 ms more: none
        ("t000000004", "c", 5.0, 1000), ("t000000005", "c", 2000.0, 1000),  # same time, small first: a pair
        ("t000000006", "c", 2000.0, 2000),
        ("t000000007", "d", 3.0, 500), ("t000000008", "d", 4.0, 500), ("t000000009", "d", 1500.0, 900),
    ]
    path = tmp_path / "tx.jsonl"
    pl.DataFrame(rows, schema=["tx_id", "user_id", "amount", "timestamp"], orient="row").with_columns(
        pl.col("timestamp") + t0).write_ndjson(path)
    cep = oracle_of("cep", path).sort("small_tx_id").rows()
    assert cep == [("a", "t000000000", "t000000001"), ("c", "t000000004", "t000000005"),
                   ("d", "t000000007", "t000000009"), ("d", "t000000008", "t000000009")]
    assert cep == duckdb.sql(CEP_PAIRS.format(f=path)).pl().sort("small_tx_id").rows()
    w4 = oracle_of("w4", path).sort("large_tx_id").select("small_tx_id", "large_tx_id").rows()
    # c: the small at the large's own time is not before it, but is before the next large; d: ties, larger id
    assert w4 == [("t000000000", "t000000001"), ("t000000004", "t000000006"), ("t000000008", "t000000009")]
    assert w4 == oracle.w4(str(path)).sort("large_tx_id").select("small_tx_id", "large_tx_id").rows()


# --- w5 in streaming: the pairs chunk by chunk of search time, and the check by digests --------------------
def _pairs(frames: object) -> pl.DataFrame:
    return pl.concat([f for _, f in frames]).sort(KEYS["w5"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("chunk_ms", [7_000, 10_000, 60_000, 3_600_000])
def test_w5_streaming_oracle_equals_the_whole_one(events_medium: Path, chunk_ms: int) -> None:
    # chunks shorter than the 10 s a click may follow its search, as long, longer, and one chunk for all
    want = _w5(events_medium).select(list(W5_SCHEMA)).sort(KEYS["w5"])
    assert want.height > 10_000
    got = _pairs(w5_chunks(events_medium, chunk_ms))
    assert got.equals(want)
    c = [k for k, _ in w5_chunks(events_medium, chunk_ms)]
    assert c == sorted(set(c))


def _edge_events(path: Path, edge: int) -> Path:
    """Searches and clicks around a chunk edge (edge: a multiple of the chunk length), out of order."""
    rows = [  # (event_id, type, user, ms)
        ("e01", "search", "a", edge - 1), ("e02", "click", "a", edge - 1),  # 0 s, before the edge: a pair
        ("e03", "click", "a", edge - 1 + 10_000),  # exactly 10 s after, in the next chunk: a pair
        ("e04", "click", "a", edge + 10_000),  # 1 ms more: none
        ("e05", "search", "b", edge), ("e06", "click", "b", edge),  # 0 s, at the edge: a pair
        ("e07", "click", "b", edge - 1),  # 1 ms before the search: none
        ("e08", "click", "b", edge + 10_000),  # 10 s: a pair
        ("e09", "click", "c", edge + 5),  # another user: none
        ("e10", "search", "a", edge + 9_999),  # a's clicks e03 (at 0 s) and e04 (1 ms later): pairs
        ("e11", "page_view", "a", edge + 1),
    ]
    rows = [rows[i] for i in (10, 3, 7, 0, 9, 5, 1, 8, 2, 6, 4)]
    pl.DataFrame(rows, schema=["event_id", "event_type", "user_id", "timestamp"], orient="row").write_ndjson(path)
    return path


@pytest.mark.parametrize("chunk_ms", [7_000, 10_000, 60_000])
def test_w5_streaming_oracle_at_the_bounds_and_chunk_edges(tmp_path: Path, chunk_ms: int) -> None:
    edge = (1767225600000 // chunk_ms + 3) * chunk_ms
    path = _edge_events(tmp_path / "ev.jsonl", edge)
    got = _pairs(w5_chunks(path, chunk_ms))
    assert got.select("search_id", "click_id").rows() == [("e01", "e02"), ("e01", "e03"), ("e05", "e06"),
                                                          ("e05", "e08"), ("e10", "e03"), ("e10", "e04")]
    assert got.equals(_w5(path).select(list(W5_SCHEMA)).sort(KEYS["w5"]))
    assert got.equals(oracle.w5(str(path)).select(list(W5_SCHEMA)).sort(KEYS["w5"]))
    out = tmp_path / "out.jsonl"
    got.write_ndjson(out)
    assert check_w5(path, out, chunk_ms, sample=2).startswith("ok (6 rows")
    got.slice(1).write_ndjson(out)
    assert check_w5(path, out, chunk_ms, sample=2).startswith("DIFFERS: 5 rows, expected 6")
    out.write_bytes(b"")
    assert check_w5(path, out, chunk_ms, sample=2).startswith("DIFFERS: 0 rows, expected 6")


def _doctored(pairs: pl.DataFrame, how: str) -> pl.DataFrame:
    i = pairs.height // 2
    if how == "dropped":
        return pl.concat([pairs.head(i), pairs.slice(i + 1)])
    if how == "duplicated":
        return pl.concat([pairs, pairs.slice(i, 1)])
    if how == "dropped and another duplicated":  # the same row count
        return pl.concat([pairs.head(i), pairs.slice(i + 1), pairs.slice(i + 1, 1)])
    changed = pl.int_range(pl.len()) == i
    if how == "click_ts + 1 ms":
        return pairs.with_columns(click_ts=pl.when(changed).then(pl.col("click_ts") + 1).otherwise("click_ts"))
    if how == "click_id swapped":  # two rows' clicks exchanged: the same columns' multisets
        j = pairs.filter(pl.col("search_id") != pairs["search_id"][i]).head(1)
        return pairs.with_columns(click_id=pl.when(changed).then(pl.lit(j["click_id"][0])).otherwise("click_id"))
    if how == "user_id changed":
        return pairs.with_columns(user_id=pl.when(changed).then(pl.lit("u99999")).otherwise("user_id"))
    raise AssertionError(how)


@pytest.fixture(scope="module")
def w5_output(events_medium: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    pairs = _w5(events_medium).select(list(W5_SCHEMA)).sample(fraction=1.0, shuffle=True, seed=5)  # any order
    return tmp_path_factory.mktemp("w5out") / "out.jsonl", pairs


@pytest.mark.parametrize("chunk_ms", [7_000, 3_600_000])
def test_w5_check_accepts_the_oracles_rows_in_any_order(events_medium: Path, w5_output: tuple[Path, pl.DataFrame],
                                                        chunk_ms: int) -> None:
    out, pairs = w5_output
    pairs.write_ndjson(out)
    assert check_w5(events_medium, out, chunk_ms, sample=7) == (
        f"ok ({pairs.height:,} rows; digests of {len(list(w5_chunks(events_medium, chunk_ms)))} chunks and "
        f"{pairs.filter(pl.col('search_id').hash(seed=HASH_SEED) % 7 == 0).height:,} sampled rows equal)")


@pytest.mark.parametrize("how", ["dropped", "duplicated", "dropped and another duplicated", "click_ts + 1 ms",
                                 "click_id swapped", "user_id changed"])
def test_w5_check_rejects_one_row_missing_extra_or_changed(events_medium: Path, w5_output: tuple[Path, pl.DataFrame],
                                                           how: str) -> None:
    out, pairs = w5_output
    _doctored(pairs, how).write_ndjson(out)
    # the sample cannot catch it alone (a 1-in-10^9 sample holds nothing): the digests must
    verdict = check_w5(events_medium, out, 60_000, sample=1_000_000_000)
    assert verdict.startswith("DIFFERS:"), verdict
    assert ("1 missing" in verdict) == (how != "duplicated"), verdict
    assert ("1 extra" in verdict) == (how != "dropped"), verdict
