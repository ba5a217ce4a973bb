"""DuckDB batch oracles: what a streaming run must produce, computed over the whole input at once.

`late_free` inputs (disorder ≤ watermark delay) are assumed: every record counts. For inputs with late
records, tests mark them with `reference_lateness` first and give the oracle only the on-time ones.
"""

from __future__ import annotations

import duckdb
import polars as pl


def _con(events: pl.DataFrame) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("ev", events.to_arrow())
    return con


def w1(events: pl.DataFrame) -> pl.DataFrame:
    """events: timestamp, user_id, value."""
    return _con(events).sql("""
        select user_id, (timestamp // 60000) * 60000 as window_start, (timestamp // 60000) * 60000 + 60000 as window_end,
               count(*) as count, sum(value) as sum, min(value) as min, max(value) as max
        from ev group by all order by window_end, user_id
    """).pl()


def w2(events: pl.DataFrame) -> pl.DataFrame:
    """events: timestamp, event_type, response_time. Exact nearest-rank p99."""
    return _con(events).sql("""
        with w as (
            select event_type, response_time, (timestamp // 60000) * 60000 - j * 60000 as window_start
            from ev, range(5) t(j)
        )
        select event_type, window_start, window_start + 300000 as window_end, count(*) as count,
               avg(response_time) as avg_response_time,
               list_sort(list(response_time))[cast(ceil(0.99 * count(*)) as bigint)] as p99_response_time
        from w group by all order by window_end, event_type
    """).pl()


def w3(events: pl.DataFrame, gap_ms: int = 60000) -> pl.DataFrame:
    """events: timestamp, user_id. Sessions chain records at most gap_ms apart."""
    return _con(events).sql(f"""
        with o as (
            select user_id, timestamp,
                   case when timestamp - lag(timestamp) over (partition by user_id order by timestamp) <= {gap_ms}
                        then 0 else 1 end as brk
            from ev
        ), s as (
            select user_id, timestamp, sum(brk) over (partition by user_id order by timestamp
                   rows between unbounded preceding and current row) as sid
            from o
        )
        select user_id, count(*) as count, min(timestamp) as session_start, max(timestamp) + {gap_ms} as session_end
        from s group by user_id, sid order by session_end, user_id
    """).pl()


def flat_events(path: str) -> pl.DataFrame:
    """The benchmark events file as flat columns."""
    return duckdb.sql(f"""
        select timestamp, user_id, event_type, metrics.value as value, metrics.response_time as response_time
        from read_json('{path}', format='newline_delimited',
             columns={{timestamp: 'BIGINT', user_id: 'VARCHAR', event_type: 'VARCHAR',
                       metrics: 'STRUCT(value DOUBLE, response_time DOUBLE)'}})
    """).pl()


def assert_frames_match(actual: pl.DataFrame, expected: pl.DataFrame, keys: list[str], rel: float = 1e-9,
                        approx: dict[str, float] | None = None) -> None:
    """Same rows (in any order), floats equal to `rel`, columns in `approx` to their own relative bound."""
    approx = approx or {}
    assert sorted(actual.columns) == sorted(expected.columns), (actual.columns, expected.columns)
    a = actual.select(expected.columns).sort(keys)
    e = expected.sort(keys)
    assert a.height == e.height, f"{a.height} rows, expected {e.height}"
    for col in expected.columns:
        x, y = a[col], e[col]
        # nulls must sit in the same rows: comparisons with null are null, and sum()/max() skip them
        null_rows = (x.is_null() != y.is_null()).sum()
        assert null_rows == 0, f"column {col}: null in {null_rows} rows where the other frame has a value"
        if x.dtype.is_float() or y.dtype.is_float():
            bound = approx.get(col, rel)
            diff = ((x.cast(pl.Float64) - y.cast(pl.Float64)).abs() / y.cast(pl.Float64).abs().clip(lower_bound=1e-12))
            worst = diff.max()
            assert worst is None or worst <= bound, f"column {col}: worst relative error {worst} > {bound}"
        else:
            mismatch = (~x.eq_missing(y)).sum()
            assert mismatch == 0, f"column {col}: {mismatch} rows differ"


def assert_same_output(a: pl.DataFrame, b: pl.DataFrame, rel: float = 1e-12) -> None:
    """Same rows in the same order; non-float columns bit-identical, floats equal up to rounding
    (float addition is not associative, so partial sums over other batch cuts differ in the last bits)."""
    assert a.columns == b.columns and a.height == b.height, (a.shape, b.shape)
    for col in a.columns:
        x, y = a[col], b[col]
        if x.dtype.is_float():
            assert (x.is_null() == y.is_null()).all(), col
            scale = y.abs().clip(lower_bound=1e-300)
            worst = ((x - y).abs() / scale).max()
            assert worst is None or worst <= rel, f"column {col}: relative difference {worst}"
        else:
            assert x.equals(y), f"column {col} differs"


def w4(path: str) -> pl.DataFrame:
    """Large (> 1000) after small (< 10) of the same user, at most 600,000 ms earlier, strictly earlier;
    the latest small one, ties to the larger tx_id."""
    return duckdb.sql(f"""
        with tx as (select * from read_json('{path}', format='newline_delimited',
                    columns={{tx_id: 'VARCHAR', user_id: 'VARCHAR', amount: 'DOUBLE', timestamp: 'BIGINT'}})),
             l as (select * from tx where amount > 1000), s as (select * from tx where amount < 10)
        select l.user_id, arg_max(s.tx_id, (s.timestamp, s.tx_id)) as small_tx_id, l.tx_id as large_tx_id,
               max(s.timestamp) as small_ts, l.timestamp as large_ts
        from l join s on l.user_id = s.user_id and s.timestamp < l.timestamp and l.timestamp - s.timestamp <= 600000
        group by l.user_id, l.tx_id, l.timestamp
    """).pl()


def w5(path: str) -> pl.DataFrame:
    """Searches paired with clicks of the same user 0–10 s after them."""
    return duckdb.sql(f"""
        with ev as (select * from read_json('{path}', format='newline_delimited',
                    columns={{event_id: 'VARCHAR', event_type: 'VARCHAR', timestamp: 'BIGINT', user_id: 'VARCHAR'}}))
        select s.user_id, s.event_id as search_id, c.event_id as click_id, s.timestamp, c.timestamp as click_ts
        from ev s join ev c on s.user_id = c.user_id and s.event_type = 'search' and c.event_type = 'click'
             and c.timestamp between s.timestamp and s.timestamp + 10000
    """).pl()
