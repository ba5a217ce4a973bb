"""Map and JsonValue in declared schemas: payloads whose keys are not known in advance, decoded from JSON
Lines, written to Parquet and read back by pyarrow and DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

import sluice as sl
from sluice import testing

EVENTS = [
    {"id": 1, "properties": {"page": "/home", "ref": "ad"}, "metrics": {"cpu": 0.5, "mem": 7}, "extra": {"a": [1, 2]}},
    {"id": 2, "properties": {}, "metrics": {"latency_ms": 12.25}, "extra": "text"},
    {"id": 3, "properties": None, "metrics": {"x": -1.0, "y": 0.0, "z": 1e300}, "extra": 3.5},
    {"id": 4, "properties": {"only": "one"}, "metrics": {}, "extra": None},
    {"id": 5, "properties": {"k": "v"}, "metrics": {"a": 1.0}},
]
SCHEMA = {"id": int, "properties": sl.Optional(sl.Map(str, str)), "metrics": sl.Map(str, float),
          "extra": sl.Optional(sl.JsonValue)}


def test_map_and_json_value_decode_write_parquet_and_read_back(tmp_path: Path) -> None:
    src = tmp_path / "events.jsonl"
    src.write_text("\n".join(json.dumps(e) for e in EVENTS) + "\n")
    flow = sl.Flow("t")
    stream = flow.read("in", sl.JsonLinesSource(src), schema=SCHEMA)
    out = testing.collect(stream)
    stream.write("out", sl.ParquetSink(tmp_path / "out.parquet"))
    sl.run(flow, batch_size=2)

    got = out.frame()
    assert got.schema["metrics"] == pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))
    assert got.schema["extra"] == pl.String
    # the oracle: Python's own reading of the same lines
    for row, event in zip(got.to_dicts(), EVENTS, strict=True):
        props = event["properties"]
        assert row["properties"] == (None if props is None else [{"key": k, "value": v} for k, v in props.items()])
        assert row["metrics"] == [{"key": k, "value": float(v)} for k, v in event["metrics"].items()]
        extra = event.get("extra")
        assert row["extra"] == (None if extra is None else json.dumps(extra, separators=(",", ":")))
        assert row["extra"] is None or json.loads(row["extra"]) == extra

    table = pq.read_table(tmp_path / "out.parquet")
    assert str(table.schema.field("metrics").type) == "large_list<element: struct<key: large_string, value: double>>"
    assert pl.DataFrame(table).equals(got)
    con = duckdb.connect()
    rows = con.sql(f"""select id, map_from_entries(metrics)['cpu'] as cpu, cardinality(map_from_entries(properties)) as n,
                              json_extract(extra::json, '$.a[1]')::int as a1
                       from read_parquet('{tmp_path / "out.parquet"}') order by id""").fetchall()
    assert rows == [(1, 0.5, 2, 2), (2, None, 0, None), (3, None, None, None), (4, None, 1, None), (5, None, 1, None)]


@pytest.mark.parametrize(("line", "reason"), [
    (b'{"id": 9, "metrics": {"cpu": "high"}}', "field 'metrics': the value of key 'cpu' is \"high\", not Float64"),
    (b'{"id": 9, "metrics": [1, 2]}', "field 'metrics' is declared a map but holds [1, 2], not a JSON object"),
    (b'{"id": 9, "properties": {"a": "b"}}', "required field 'metrics' is missing or null"),
])
def test_a_value_that_does_not_fit_the_map_is_named(tmp_path: Path, line: bytes, reason: str) -> None:
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\n".join([json.dumps(EVENTS[0]).encode(), line, json.dumps(EVENTS[1]).encode()]) + b"\n")
    flow = sl.Flow("t")
    stream = flow.read("in", sl.JsonLinesSource(src), schema=SCHEMA, on_error="dead_letter")
    out, dead = testing.collect(stream), testing.collect(stream.dead_letters)
    sl.run(flow)
    assert out.frame()["id"].to_list() == [1, 2]
    assert dead.frame()["position"].to_list() == [f"{src}:2"]
    assert reason in dead.frame()["reason"][0]


def test_map_inside_a_struct_is_refused_with_a_fix() -> None:
    flow = sl.Flow("t")
    with pytest.raises(sl.PlanError, match="top level only"):
        flow.read("in", testing.rows([{"id": 1}]), schema={"payload": {"props": sl.Map(str, str)}})
