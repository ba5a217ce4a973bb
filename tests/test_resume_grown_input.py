"""A checkpointed run resumed after its input grew (a glob gains a file): event time goes on from the last
real watermark, not from the +∞ of the end of the first run. What the first run emitted at its end is
final: a new record for one of those windows is late; every later window is exact."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest

import sluice as sl


def write(path: Path, times_s: range) -> pl.DataFrame:
    rows = [{"ts": t * 1000 + k * 7, "k": f"k{k}"} for t in times_s for k in range(3)]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return pl.DataFrame(rows)


def flow(inputs: Path, out: Path, late: Path, window: sl.Tumbling | sl.Sliding) -> sl.Flow:
    f = sl.Flow("grow")
    w = (f.read("in", sl.JsonLinesSource(str(inputs / "*.jsonl")), schema={"ts": int, "k": str})
          .event_time("ts", timedelta(seconds=5)).key_by("k")
          .window("w", window, n=sl.agg.count()))
    w.write("out", sl.JsonLinesSink(out))
    w.late.write("late", sl.JsonLinesSink(late))
    return f


def oracle(rows: pl.DataFrame, size_s: int, slide_s: int) -> pl.DataFrame:
    """Counts per key and window over `rows` (DuckDB: every window on the slide grid that holds the row)."""
    fan = size_s // slide_s
    return duckdb.sql(f"""
        SELECT k, ws AS window_start, ws + {size_s * 1000} AS window_end, count(*) AS n FROM (
          SELECT k, (floor(ts / {slide_s * 1000}) - j) * {slide_s * 1000} AS ws
          FROM rows, range({fan}) AS r(j)) GROUP BY ALL ORDER BY ALL""").pl()


@pytest.mark.parametrize(("size_s", "slide_s"), [(60, 60), (60, 30)])
@pytest.mark.parametrize("batch_size", [1, 7, 65536])
def test_resumed_run_over_grown_input_is_not_late(tmp_path: Path, size_s: int, slide_s: int, batch_size: int) -> None:
    window = sl.Tumbling(timedelta(seconds=size_s)) if size_s == slide_s else \
        sl.Sliding(timedelta(seconds=size_s), timedelta(seconds=slide_s))
    inputs = tmp_path / "in"
    inputs.mkdir()
    first = write(inputs / "a.jsonl", range(0, 300))
    out, late_out = tmp_path / "out.jsonl", tmp_path / "late.jsonl"
    sl.run(flow(inputs, out, late_out, window), checkpoint_dir=tmp_path / "ck", batch_size=batch_size)
    assert not late_out.exists() or late_out.read_bytes() == b""
    got1 = pl.read_ndjson(out).sort("k", "window_start")
    assert got1.equals(oracle(first, size_s, slide_s).select(got1.columns).sort("k", "window_start"))
    emitted_upto = int(got1["window_end"].max())  # type: ignore[arg-type]

    second = write(inputs / "b.jsonl", range(280, 600))  # some records fall in windows emitted at the end
    sl.run(flow(inputs, out, late_out, window), checkpoint_dir=tmp_path / "ck", batch_size=batch_size)
    got2 = pl.read_ndjson(out).slice(got1.height).sort("k", "window_start")  # what the second run added
    want2 = oracle(second, size_s, slide_s).cast({"window_start": pl.Int64, "window_end": pl.Int64}).filter(pl.col("window_end") > emitted_upto)
    assert got2.height > 0 and got2.equals(want2.select(got2.columns).sort("k", "window_start"))
    # every window of the new records that had already been emitted is on the late stream, once
    late = pl.read_ndjson(late_out)
    missed = oracle(second, size_s, slide_s).filter(pl.col("window_end") <= emitted_upto)
    assert late.height == int(missed["n"].sum())
    assert late.group_by("k", "missed_window_start").len().sort("k", "missed_window_start")["len"].to_list() == \
        missed.sort("k", "window_start")["n"].to_list()


def test_resumed_run_without_new_input_writes_nothing_new(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "a.jsonl", range(0, 300))
    window = sl.Tumbling(timedelta(seconds=60))
    out, late = tmp_path / "o.jsonl", tmp_path / "l.jsonl"
    sl.run(flow(inputs, out, late, window), checkpoint_dir=tmp_path / "ck")
    before = out.read_bytes()
    assert before
    sl.run(flow(inputs, out, late, window), checkpoint_dir=tmp_path / "ck")
    assert out.read_bytes() == before and (not late.exists() or late.read_bytes() == b"")
