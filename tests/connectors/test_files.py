"""Files in and out: JSON Lines, CSV, Parquet; Parquet and JSONL partitioned by date/hour; atomic files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from sluice import testing

T0 = int(datetime(2026, 3, 1, 22, 30, tzinfo=UTC).timestamp() * 1000)
ROWS = [{"ts": T0 + i * 60_000, "user": f"u{i % 2}", "amount": float(i)} for i in range(120)]  # 2 hours


def test_parquet_partitioned_by_hour_of_window_start(tmp_path: Path) -> None:
    flow = sl.Flow("t")
    win = (flow.read("in", testing.rows(ROWS)).event_time("ts", timedelta(0)).key_by("user")
           .window("w", sl.Tumbling(timedelta(minutes=10)), n=sl.agg.count(), total=sl.agg.sum("amount")))
    win.write("out", sl.ParquetSink(tmp_path / "out", partition_by="hour", time_column="window_start"))
    sl.run(flow, batch_size=16)
    dirs = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").glob("date=*/hour=*"))
    assert dirs == ["date=2026-03-01/hour=22", "date=2026-03-01/hour=23", "date=2026-03-02/hour=0"]
    back = pl.read_parquet(tmp_path / "out" / "**" / "*.parquet", hive_partitioning=False)
    assert back.height == 24 and back["n"].sum() == 120
    assert not list((tmp_path / "out").rglob(".*"))  # no staging files left visible


def test_jsonl_partitioned_by_date_uses_event_time_by_default(tmp_path: Path) -> None:
    flow = sl.Flow("t")
    flow.read("in", testing.rows(ROWS)).event_time("ts", timedelta(0)).write(
        "out", sl.JsonLinesSink(tmp_path / "out", partition_by="date"))
    sl.run(flow)
    files = sorted((tmp_path / "out").rglob("*.jsonl"))
    assert [f.parent.name for f in files] == ["date=2026-03-01", "date=2026-03-02"]
    back = pl.concat([pl.read_ndjson(f) for f in files])
    assert back.columns == ["ts", "user", "amount"]  # internal columns never reach a file
    assert back.height == 120


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    sinks = {"csv": sl.CsvSink, "parquet": sl.ParquetSink, "jsonl": sl.JsonLinesSink}
    sources = {"csv": sl.CsvSource, "parquet": sl.ParquetSource, "jsonl": sl.JsonLinesSource}
    path = tmp_path / f"data.{fmt}"
    w = sl.Flow("w")
    w.read("in", testing.rows(ROWS)).write("out", sinks[fmt](path))
    sl.run(w)
    r = sl.Flow("r")
    out = testing.collect(r.read("in", sources[fmt](path), schema={"ts": pl.Int64, "user": pl.String, "amount": pl.Float64}))
    sl.run(r, batch_size=50)
    assert out.frame().equals(pl.DataFrame(ROWS))


def test_glob_reads_each_file_as_a_partition(tmp_path: Path) -> None:
    pl.DataFrame(ROWS[:60]).write_ndjson(tmp_path / "a.jsonl")
    pl.DataFrame(ROWS[60:]).write_ndjson(tmp_path / "b.jsonl")
    flow = sl.Flow("t")
    win = (flow.read("in", sl.JsonLinesSource(tmp_path / "*.jsonl"), schema={"ts": int, "user": str, "amount": float})
           .event_time("ts", timedelta(0)).window("w", sl.Tumbling(timedelta(hours=1)), n=sl.agg.count()))
    out, late = testing.collect(win), testing.collect(win.late)
    sl.run(flow)
    # b.jsonl's watermark does not make a.jsonl late: the watermark is the minimum over partitions
    assert late.frame().height == 0
    assert out.frame()["n"].sum() == 120


def test_missing_input_is_a_plan_error(tmp_path: Path) -> None:
    flow = sl.Flow("t")
    testing.collect(flow.read("in", sl.JsonLinesSource(tmp_path / "nothing-*.jsonl")))
    with pytest.raises(sl.PlanError, match="no input files"):
        sl.run(flow)


def test_datetime_event_time_keeps_its_type(tmp_path: Path) -> None:
    df = pl.DataFrame(ROWS).with_columns(pl.from_epoch("ts", "ms").dt.replace_time_zone("UTC").alias("at"))
    flow = sl.Flow("t")
    out = testing.collect(flow.read("in", testing.rows(df)).event_time("at", timedelta(0))
                          .window("w", sl.Tumbling(timedelta(hours=1)), n=sl.agg.count()))
    sl.run(flow)
    assert out.frame().schema["window_start"] == pl.Datetime("us", "UTC")
    assert out.frame()["window_start"][0] == datetime(2026, 3, 1, 22, 0, tzinfo=UTC)


def test_lines_longer_than_a_block(tmp_path: Path) -> None:
    rows = [{"ts": i, "user": "u" * (50 + 37 * i), "amount": float(i)} for i in range(40)]
    pl.DataFrame(rows).write_ndjson(tmp_path / "long.jsonl")
    flow = sl.Flow("t")
    src = sl.JsonLinesSource(tmp_path / "long.jsonl", block_bytes=64)
    out = testing.collect(flow.read("in", src, schema={"ts": int, "user": str, "amount": float}))
    sl.run(flow, batch_size=3)
    assert out.frame().equals(pl.DataFrame(rows))


SOURCES = {"jsonl": sl.JsonLinesSource, "csv": sl.CsvSource, "parquet": sl.ParquetSource}


def read_flow(source: object) -> sl.Flow:
    flow = sl.Flow("t")
    testing.collect(flow.read("orders", source, schema={"ts": int, "user": str, "amount": float}))
    return flow


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_a_nonexistent_input_file_is_named_before_the_run(tmp_path: Path, fmt: str) -> None:
    missing = tmp_path / f"nope.{fmt}"
    with pytest.raises(sl.PlanError) as err:
        sl.run(read_flow(SOURCES[fmt](missing)))
    msg = str(err.value)
    assert "'orders'" in msg and str(missing) in msg and "does not exist" in msg and "Fix:" in msg


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_a_directory_given_as_a_file_says_to_use_a_glob(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(sl.PlanError) as err:
        sl.run(read_flow(SOURCES[fmt](tmp_path / "in")))
    msg = str(err.value)
    assert "'orders'" in msg and "is a directory" in msg and f"{tmp_path / 'in'}/*.{fmt}" in msg


def test_a_glob_that_matches_nothing_fails_unless_the_source_may_start_empty(tmp_path: Path) -> None:
    pattern = tmp_path / "landing" / "*.jsonl"
    with pytest.raises(sl.PlanError) as err:
        sl.run(read_flow(sl.JsonLinesSource(pattern)))
    msg = str(err.value)
    assert "'orders'" in msg and "matches no files" in msg and "allow_empty=True" in msg
    flow = sl.Flow("t")
    out = testing.collect(flow.read("orders", sl.JsonLinesSource(pattern, allow_empty=True), schema={"ts": int}))
    sl.run(flow)
    assert out.frame().height == 0


def test_a_recursive_glob_reaches_nested_files_and_skips_directories(tmp_path: Path) -> None:
    for sub in ("date=2026-03-01/hour=22", "date=2026-03-01/hour=23"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        pl.DataFrame(ROWS[:10]).write_ndjson(tmp_path / "in" / sub / "part.jsonl")
    flow = sl.Flow("t")
    out = testing.collect(flow.read("in", sl.JsonLinesSource(tmp_path / "in" / "**" / "*.jsonl"), schema={"ts": int}))
    sl.run(flow)
    assert out.frame().height == 20


# --- running again: replace by default, mode="append" to add ---------------------------------------

SINKS = {"csv": sl.CsvSink, "parquet": sl.ParquetSink, "jsonl": sl.JsonLinesSink}
READERS = {"csv": pl.read_csv, "parquet": pl.read_parquet, "jsonl": pl.read_ndjson}
LAYOUTS = [(fmt, layout) for fmt in sorted(SINKS) for layout in ("file", "dir", "hour")]


def target(tmp_path: Path, fmt: str, layout: str) -> Path:
    return tmp_path / (f"out.{fmt}" if layout == "file" else "out")


def write_rows(tmp_path: Path, fmt: str, layout: str, rows: list[dict], fail_at: int | None = None,
               ckpt: Path | None = None, **sink: object) -> None:
    def check(row: dict) -> dict:
        if fail_at is not None and row["amount"] == fail_at:
            raise RuntimeError("the run fails here")
        return row

    flow = sl.Flow("t")
    part = {"partition_by": "hour"} if layout == "hour" else {}
    stream = flow.read("in", testing.rows(rows)).event_time("ts", timedelta(0)).map(check, name="check")
    stream.write("out", SINKS[fmt](target(tmp_path, fmt, layout), rows_per_file=10, **part, **sink))  # type: ignore[arg-type]
    sl.run(flow, batch_size=7, checkpoint_dir=ckpt, checkpoint_interval=0)


def read_back(tmp_path: Path, fmt: str, layout: str) -> pl.DataFrame:
    out = target(tmp_path, fmt, layout)
    files = [out] if layout == "file" else sorted(out.rglob(f"*.{fmt}"))
    return pl.concat([READERS[fmt](f).select("ts", "user", "amount") for f in files]).sort("ts", "amount")


@pytest.mark.parametrize(("fmt", "layout"), LAYOUTS)
def test_running_again_replaces_the_output(tmp_path: Path, fmt: str, layout: str) -> None:
    write_rows(tmp_path, fmt, layout, ROWS)
    write_rows(tmp_path, fmt, layout, ROWS[:50])
    assert read_back(tmp_path, fmt, layout).equals(pl.DataFrame(ROWS[:50]))


@pytest.mark.parametrize(("fmt", "layout"), [c for c in LAYOUTS if c != ("parquet", "file")])
def test_mode_append_adds_to_the_output(tmp_path: Path, fmt: str, layout: str) -> None:
    write_rows(tmp_path, fmt, layout, ROWS[:50], mode="append")
    write_rows(tmp_path, fmt, layout, ROWS[50:], mode="append")
    assert read_back(tmp_path, fmt, layout).equals(pl.DataFrame(ROWS))


def test_a_single_parquet_file_cannot_be_appended_to(tmp_path: Path) -> None:
    with pytest.raises(sl.PlanError, match="directory"):
        write_rows(tmp_path, "parquet", "file", ROWS, mode="append")


@pytest.mark.parametrize(("fmt", "layout"), LAYOUTS)
def test_a_failed_run_leaves_the_old_output_in_place(tmp_path: Path, fmt: str, layout: str) -> None:
    write_rows(tmp_path, fmt, layout, ROWS)
    with pytest.raises(sl.UserFunctionError):
        write_rows(tmp_path, fmt, layout, ROWS[:50], fail_at=45)  # after part files were staged
    assert read_back(tmp_path, fmt, layout).equals(pl.DataFrame(ROWS))


@pytest.mark.parametrize(("fmt", "layout"), [c for c in LAYOUTS if c != ("parquet", "file")])
def test_a_checkpointed_run_replaces_once_and_resumes_exactly_once(tmp_path: Path, fmt: str, layout: str) -> None:
    write_rows(tmp_path, fmt, layout, ROWS[:30])  # an earlier run's output
    with pytest.raises(sl.UserFunctionError):
        write_rows(tmp_path, fmt, layout, ROWS, fail_at=80, ckpt=tmp_path / "ckpt")
    committed = read_back(tmp_path, fmt, layout)
    assert committed.height < 80 and committed.equals(pl.DataFrame(ROWS[: committed.height]))  # old rows gone
    write_rows(tmp_path, fmt, layout, ROWS, ckpt=tmp_path / "ckpt")  # resumed: keeps what was committed
    assert read_back(tmp_path, fmt, layout).equals(pl.DataFrame(ROWS))


def test_partitioned_parquet_reads_back_the_same_in_polars_duckdb_and_pyarrow(tmp_path: Path) -> None:
    import duckdb
    import pyarrow.dataset as ds

    flow = sl.Flow("t")
    win = (flow.read("in", testing.rows(ROWS)).event_time("ts", timedelta(0)).key_by("user")
           .window("w", sl.Tumbling(timedelta(minutes=10)), n=sl.agg.count()))
    win.write("out", sl.ParquetSink(tmp_path / "out", partition_by="hour", time_column="window_start"))
    sl.run(flow)
    out = tmp_path / "out"
    order = ["window_start", "user"]
    readers = {
        "polars dir": pl.read_parquet(out),
        "polars glob": pl.read_parquet(out / "**" / "*.parquet"),
        "polars hive scan": pl.scan_parquet(out / "**" / "*.parquet", hive_partitioning=True).collect(),
        "duckdb": duckdb.sql(f"select * from read_parquet('{out}/**/*.parquet')").pl(),
        "pyarrow": pl.DataFrame(ds.dataset(out, format="parquet").to_table()),
    }
    frames = {name: df.select(sorted(df.columns)).sort(order) for name, df in readers.items()}
    first = frames["polars dir"]
    assert first.schema["date"] == pl.Date and first.schema["hour"] == pl.Int64
    assert first.height == 24 and sorted(first["hour"].unique().to_list()) == [0, 22, 23]
    for name, df in frames.items():
        assert df.schema == first.schema, name
        assert df.equals(first), name


def test_a_stream_with_its_own_hour_column_is_refused_by_a_partitioned_parquet_sink(tmp_path: Path) -> None:
    flow = sl.Flow("t")
    rows = [{**r, "hour": 1} for r in ROWS]
    flow.read("in", testing.rows(rows)).event_time("ts", timedelta(0)).write(
        "out", sl.ParquetSink(tmp_path / "out", partition_by="hour"))
    with pytest.raises(sl.PlanError, match="already has a column 'hour'"):
        sl.run(flow)


def test_the_first_records_come_before_a_whole_block_is_read(tmp_path: Path) -> None:
    """Progress from the start: the first blocks are small (256 kB, doubling to block_bytes), so the first
    batch reaches the flow long before 8 MB are parsed."""
    from sluice.connectors.api import SourceContext
    from sluice.connectors.files import FIRST_BLOCK_BYTES
    from sluice.core.schema import resolve_schema

    line = b'{"ts": 1, "user": "' + b"u" * 200 + b'"}\n'
    path = tmp_path / "big.jsonl"
    path.write_bytes(line * (12 * (1 << 20) // len(line)))
    reader = sl.JsonLinesSource(path).open(SourceContext("in", resolve_schema({"ts": int, "user": str}), 1 << 20, "fail"))
    heights = [b.height for port, b in reader.batches() if port == "out" and b.height]
    assert heights[0] <= FIRST_BLOCK_BYTES // len(line) + 1
    assert heights[1] <= 2 * FIRST_BLOCK_BYTES // len(line) + 1  # growing
    assert sum(heights) == path.stat().st_size // len(line)


@pytest.mark.parametrize("stop_after", [1, 5, 40, 200])
def test_a_resumed_read_continues_exactly_where_it_stopped(tmp_path: Path, stop_after: int) -> None:
    """Positions are (block start, rows consumed): a reader resumed inside one of the small first blocks
    or a later one goes on with the next record, whatever the block sizes of either read."""
    from sluice.connectors.api import SourceContext
    from sluice.core.schema import resolve_schema

    line = b'{"i": %d, "pad": "' + b"x" * 100 + b'"}\n'
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(line % i for i in range(40_000)))
    ctx = SourceContext("in", resolve_schema({"i": int}), 997, "fail")
    first = sl.JsonLinesSource(path).open(ctx)
    seen: list[int] = []
    for n, (_port, batch) in enumerate(b for b in first.batches() if b[0] == "out" and b[1].height):
        seen += batch.df["i"].to_list()
        if n + 1 == stop_after:
            break
    resumed = sl.JsonLinesSource(path).open(ctx)
    resumed.seek(first.position())
    seen += [i for port, b in resumed.batches() if port == "out" and b.height for i in b.df["i"].to_list()]
    assert seen == list(range(40_000))


# --- the writing thread: staged writes run in the background, in order ------------------------------------
MANY = [{"ts": T0 + i * 1000, "user": f"u{i % 3}", "amount": float(i)} for i in range(500)]


@pytest.mark.parametrize("batch_size", [1, 7, 65536])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_single_file_appended_on_the_writing_thread_keeps_every_row_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int, fmt: str) -> None:
    import sluice.connectors.files as files

    monkeypatch.setattr(files, "APPEND_ROWS", 5)  # many appends in flight, checkpoints between them
    flow = sl.Flow("t")
    sink = sl.JsonLinesSink(tmp_path / "out.jsonl") if fmt == "jsonl" else sl.CsvSink(tmp_path / "out.csv")
    flow.read("in", testing.rows(MANY)).write("out", sink)
    sl.run(flow, batch_size=batch_size, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    path = tmp_path / f"out.{fmt}"
    back = pl.read_ndjson(path) if fmt == "jsonl" else pl.read_csv(path)
    assert back.to_dicts() == MANY  # each row once, in input order (CSV: one header)
    assert not list(tmp_path.glob(".out*"))  # no stage left


@pytest.mark.parametrize("rows", [3, 500])  # the error at the checkpoint's wait, or at a write handed over before
@pytest.mark.parametrize("layout", ["file", "dir"])
def test_a_failed_write_on_the_writing_thread_names_the_step_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int, layout: str) -> None:
    import sluice.connectors.files as files

    monkeypatch.setattr(files, "APPEND_ROWS", 5)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    flow = sl.Flow("t")
    target = blocker / "out.jsonl" if layout == "file" else blocker / "out"
    flow.read("in", testing.rows(MANY[:rows])).write("results", sl.JsonLinesSink(target, rows_per_file=5))
    with pytest.raises(sl.SinkError, match=r"write step 'results': writing into .*not-a-dir.* failed.*Fix: make"):
        sl.run(flow, batch_size=7)
    assert blocker.read_text().startswith("a file")
