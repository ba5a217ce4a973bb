"""The columnar Avro decoder reads exactly what fastavro reads, record by record, on random data."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.schema import Optional, resolve_schema
from sluice.formats.avro_columnar import ColumnarReader, Unsupported

WRITER = {"type": "record", "name": "E", "fields": [
    {"name": "id", "type": "string"},
    {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["a", "b", "c"]}},
    {"name": "ts", "type": "long"},
    {"name": "n", "type": "int"},
    {"name": "user", "type": ["null", "string"]},
    {"name": "score", "type": ["double", "null"]},
    {"name": "ok", "type": "boolean"},
    {"name": "ratio", "type": "float"},
    {"name": "blob", "type": "bytes"},
    {"name": "props", "type": {"type": "map", "values": "string"}},
    {"name": "metrics", "type": {"type": "map", "values": "double"}},
    {"name": "inner", "type": {"type": "record", "name": "I", "fields": [{"name": "x", "type": "long"},
                                                                          {"name": "y", "type": ["null", "string"]}]}},
]}
WANTED = resolve_schema({"id": pl.String, "kind": pl.String, "ts": pl.Int64, "n": pl.Int64, "user": Optional(pl.String),
                         "score": Optional(pl.Float64), "ok": pl.Boolean, "ratio": pl.Float64, "blob": pl.Binary,
                         "props": {"country": pl.String}, "metrics": {"value": pl.Float64, "rt": pl.Float64},
                         "inner": {"x": pl.Int64, "y": pl.String}})
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
record = st.fixed_dictionaries({
    "id": text, "kind": st.sampled_from(["a", "b", "c"]), "ts": st.integers(-2**63, 2**63 - 1),
    "n": st.integers(-2**31, 2**31 - 1), "user": st.none() | text,
    "score": st.none() | st.floats(allow_nan=False), "ok": st.booleans(),
    "ratio": st.floats(width=32, allow_nan=False), "blob": st.binary(max_size=8),
    "props": st.dictionaries(st.sampled_from(["country", "page", "x"]), text, max_size=3),
    "metrics": st.dictionaries(st.sampled_from(["value", "rt", "other"]), st.floats(allow_nan=False), max_size=3),
    "inner": st.fixed_dictionaries({"x": st.integers(-2**40, 2**40), "y": st.none() | text}),
})


def encode(records: list[dict[str, Any]]) -> list[bytes]:
    parsed = fastavro.parse_schema(WRITER)
    out = []
    for r in records:
        buf = io.BytesIO()
        buf.write(b"\x00\x00\x00\x00\x07")
        fastavro.schemaless_writer(buf, parsed, r)
        out.append(buf.getvalue())
    return out


def expected(records: list[dict[str, Any]]) -> pl.DataFrame:
    rows = []
    for r in records:
        rows.append({**r, "props": {"country": r["props"].get("country")},
                     "metrics": {"value": r["metrics"].get("value"), "rt": r["metrics"].get("rt")}})
    return pl.DataFrame(rows, schema=WANTED.polars)


@settings(max_examples=150, deadline=None)
@given(st.lists(record, min_size=1, max_size=40))
def test_columnar_equals_record_by_record(records: list[dict[str, Any]]) -> None:
    got = ColumnarReader(WRITER, WANTED.polars).decode(encode(records), 5)
    assert got.equals(expected(records)), (got, expected(records))


def test_block_with_a_map_in_blocks_of_negative_count() -> None:
    """Writers may split a map into blocks; a negative count is followed by the block's size in bytes."""
    import struct

    head = {**WRITER, "fields": WRITER["fields"][:10]}  # id … props
    tail = WRITER["fields"][11]["type"]  # inner
    buf = io.BytesIO()
    buf.write(b"\x00\x00\x00\x00\x07")
    fastavro.schemaless_writer(buf, fastavro.parse_schema(head), {
        "id": "x", "kind": "a", "ts": 1, "n": 2, "user": None, "score": None, "ok": True, "ratio": 0.5, "blob": b"",
        "props": {"country": "NL"}})
    entry = b"\x0avalue" + struct.pack("<d", 2.0)
    buf.write(b"\x01" + bytes([len(entry) * 2]) + entry)  # count -1 (zig-zag 1), size, one entry
    buf.write(b"\x02" + b"\x04rt" + struct.pack("<d", 3.5))  # a second block: count 1
    buf.write(b"\x00")  # end of the map
    fastavro.schemaless_writer(buf, fastavro.parse_schema(tail), {"x": 9, "y": "z"})
    got = ColumnarReader(WRITER, WANTED.polars).decode([buf.getvalue()], 5)
    assert got["metrics"].to_list() == [{"value": 2.0, "rt": 3.5}]
    assert got["props"].to_list() == [{"country": "NL"}] and got["inner"].to_list() == [{"x": 9, "y": "z"}]
    buf.seek(5)  # and fastavro reads the same bytes the same way
    assert fastavro.schemaless_reader(buf, fastavro.parse_schema(WRITER))["metrics"] == {"value": 2.0, "rt": 3.5}


def test_garbage_is_refused_not_misread() -> None:
    values = encode([{"id": "x", "kind": "a", "ts": 1, "n": 2, "user": None, "score": None, "ok": True, "ratio": 0.5,
                      "blob": b"", "props": {}, "metrics": {}, "inner": {"x": 1, "y": None}}])
    with pytest.raises(Unsupported):
        ColumnarReader(WRITER, WANTED.polars).decode([values[0] + b"\x02"], 5)  # a trailing byte
    with pytest.raises(Unsupported):
        ColumnarReader({"type": "record", "name": "A", "fields": [{"name": "a", "type": {"type": "array", "items": "int"}}]},
                       pl.Schema({"a": pl.List(pl.Int64)}))
