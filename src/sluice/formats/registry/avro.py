"""`sl.Avro`: Avro values in the Confluent wire format, their schemas in a registry.

A sink registers its writer schema when it opens (an incompatible change fails then, with the reasons);
a source reads each record with the writer schema its id names, resolved into the reader schema by
Avro's rules. A block whose records share one writer schema is decoded in columns (`avro_columnar.py`);
otherwise, or when that fails, record by record with fastavro, which also finds the bad records.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from sluice.core.errors import RejectedRecord, SchemaRegistryError
from sluice.core.schema import Optional, Schema, resolve_schema
from sluice.formats.api import BadRecord, Codec, Decoded, Format
from sluice.formats.registry.compatibility import avro_type
from sluice.formats.registry.wire import (
    MAGIC,
    NOT_WIRE_FORMAT,
    Registered,
    Registry,
    header,
    is_framed,
    plain,
)


def strip_logical(schema: Any) -> Any:
    """The schema without logical types: timestamps stay epoch numbers, as the engine keeps them."""
    if isinstance(schema, list):
        return [strip_logical(s) for s in schema]
    if isinstance(schema, dict):
        out = {k: strip_logical(v) for k, v in schema.items() if k != "logicalType"}
        if "logicalType" in schema and isinstance(schema.get("type"), str) and schema["type"] in (
                "int", "long", "bytes", "string", "fixed") and set(out) == {"type"}:
            return out["type"]
        return out
    return schema



_AVRO_PRIMITIVE: dict[str, pl.DataType] = {
    "boolean": pl.Boolean(), "int": pl.Int32(), "long": pl.Int64(), "float": pl.Float32(), "double": pl.Float64(),
    "bytes": pl.Binary(), "string": pl.String(), "null": pl.Null()}


def avro_to_polars(schema: Any, names: dict[str, Any] | None = None) -> Any:
    """The Polars type of an Avro schema; a top-level record gives a field mapping (nullable unions
    become Optional). Maps become List(Struct(key, value)); declare a struct of the keys you read instead."""
    names = {} if names is None else names
    if isinstance(schema, str):
        if schema in _AVRO_PRIMITIVE:
            return _AVRO_PRIMITIVE[schema]
        return avro_to_polars(names[schema], names)
    if isinstance(schema, list):
        branches = [s for s in schema if s != "null"]
        inner = avro_to_polars(branches[0], names) if len(branches) == 1 else pl.String()
        return Optional(inner) if "null" in schema else inner
    t = schema["type"]
    if t in ("record", "error"):
        names[schema["name"]] = schema
        fields = {f["name"]: avro_to_polars(f["type"], names) for f in schema["fields"]}
        return fields
    if t == "enum":
        names[schema["name"]] = schema
        return pl.String()
    if t == "fixed":
        return pl.Binary()
    if t == "array":
        return pl.List(plain(avro_to_polars(schema["items"], names)))
    if t == "map":
        return pl.List(pl.Struct({"key": pl.String(), "value": plain(avro_to_polars(schema["values"], names))}))
    return avro_to_polars(t, names)


@dataclass(frozen=True)
class Avro(Registered, Format):
    """Avro values in the Confluent wire format. `schema` is the writer schema of a sink and the reader
    schema of a source (each record is read with the schema its id names, then resolved into this one)."""

    schema: Any
    registry: Registry | None = None  # RegistryClient | LocalRegistry; None: LocalRegistry() (the embedded default)
    subject: str | None = None  # default: by `strategy`
    strategy: str = "topic"
    compatibility: str | None = None  # set the subject's level before registering
    auto_register: bool = True
    is_key: bool = False
    schema_type: str = field(default="AVRO", init=False)

    def _schema_obj(self) -> Any:
        return json.loads(self.schema) if isinstance(self.schema, str) else self.schema

    def _record_name(self) -> str | None:
        s = self._schema_obj()
        if isinstance(s, dict) and s.get("type") == "record":
            ns = s.get("namespace")
            return s["name"] if "." in s["name"] or not ns else f"{ns}.{s['name']}"
        return None

    def sluice_schema(self) -> Schema:
        fields = avro_to_polars(self._schema_obj())
        if not isinstance(fields, dict):
            raise SchemaRegistryError("an Avro source needs a record schema")
        return resolve_schema(fields)

    def bind(self, topic: str, reading: bool) -> AvroCodec:
        return AvroCodec(self, topic, reading)



class AvroCodec(Codec):
    """An `Avro` format bound to a topic: the parsed reader schema, the writer schemas met so far by id, and
    when writing the header (magic byte and schema id) every value starts with."""

    lines = None  # binary values

    def __init__(self, spec: Avro, topic: str, reading: bool) -> None:
        import fastavro

        self.spec, self.topic = spec, topic
        self.fastavro = fastavro
        self.reader = fastavro.parse_schema(strip_logical(spec._schema_obj()))
        self.writers: dict[int, Any] = {}
        self.projected: dict[tuple[str, ...], Any] = {}
        self.columnar: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.header = b""
        if not reading:
            self.header = header(spec.writer_id(topic))

    def _writer(self, sid: int) -> Any:
        w = self.writers.get(sid)
        if w is None:
            kind, text = self.spec._registry().schema(sid)
            if kind != "AVRO":
                raise SchemaRegistryError(f"schema id {sid} is {kind}, not Avro")
            w = self.writers[sid] = self.fastavro.parse_schema(strip_logical(json.loads(text)))
        return w

    def encode_values(self, df: pl.DataFrame) -> list[bytes]:
        dt = [c for c, t in df.schema.items() if isinstance(t, pl.Datetime | pl.Date)]
        if dt:
            df = df.with_columns(pl.col(c).dt.epoch("ms") for c in dt)
        write, header, schema = self.fastavro.schemaless_writer, self.header, self.reader
        maps = [f["name"] for f in (schema.get("fields", []) if isinstance(schema, dict) else []) if avro_type(f["type"]) == "map"
                or (isinstance(f["type"], list) and any(avro_type(b) == "map" for b in f["type"]))]
        out = []
        for i, row in enumerate(df.iter_rows(named=True)):
            for m in maps:  # a struct column written as an Avro map: absent keys are left out
                v = row.get(m)
                if isinstance(v, dict):
                    row[m] = {k: x for k, x in v.items() if x is not None}
            buf = io.BytesIO()
            buf.write(header)
            try:
                write(buf, schema, row)
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
                raise RejectedRecord(i, f"the record does not match the Avro schema ({exc}); it reads "
                                        f"{orjson.dumps(row, default=str)[:200].decode()}") from exc
            out.append(buf.getvalue())
        return out

    def _projection(self, names: list[str]) -> Any:
        """The reader schema cut to the top-level fields the flow reads: fastavro then skips the rest
        instead of building Python objects for them (~15% faster on StreamEvent)."""
        key = tuple(names)
        if key not in self.projected:
            full = strip_logical(self.spec._schema_obj())
            if isinstance(full, dict) and full.get("type") == "record":
                fields = [f for f in full["fields"] if f["name"] in set(names)]
                full = {**full, "fields": fields} if fields else full
            self.projected[key] = self.fastavro.parse_schema(full)
        return self.projected[key]

    def _columnar(self, sid: int, schema: Schema) -> Any:
        """The columnar decoder for writer schema `sid` and these columns, or None if its shape is not handled."""
        from sluice.core.errors import Unsupported
        from sluice.formats.avro_columnar import ColumnarReader

        key = (sid, tuple(schema.names))
        if key not in self.columnar:
            kind, text = self.spec._registry().schema(sid)
            try:
                self.columnar[key] = ColumnarReader(strip_logical(json.loads(text)), schema.polars) if kind == "AVRO" else None
            except Unsupported:
                self.columnar[key] = None
        return self.columnar[key]

    def decode_values(self, values: list[bytes], schema: Schema) -> Decoded:
        if values and all(v[:1] == MAGIC for v in values):
            head = values[0][1:5]
            if all(v[1:5] == head for v in values):  # one writer schema: decode the block in columns
                try:
                    fast = self._columnar(int.from_bytes(head, "big"), schema)
                    if fast is not None:
                        return Decoded(fast.decode(values, 5), [], [])
                except Exception:  # anything unexpected: the record-by-record path finds the bad records
                    pass
        return self._decode_records(values, schema)

    def _decode_records(self, values: list[bytes], schema: Schema) -> Decoded:
        read = self.fastavro.schemaless_reader
        reader = self._projection(schema.names)
        rows: list[dict[str, Any]] = []
        bad: list[BadRecord] = []
        index: list[int] = []
        last_id, writer = -1, None
        for i, v in enumerate(values):
            if not is_framed(v):
                bad.append(BadRecord(i, NOT_WIRE_FORMAT, v[:200]))
                continue
            sid = int.from_bytes(v[1:5], "big")
            try:
                if sid != last_id:
                    writer, last_id = self._writer(sid), sid
                buf = io.BytesIO(v)
                buf.seek(5)
                rows.append(read(buf, writer, reader))  # type: ignore[arg-type]
                index.append(i)
            except SchemaRegistryError as exc:
                bad.append(BadRecord(i, str(exc), v[:200]))
                last_id = -1
            except Exception as exc:  # a datum that does not match its schema
                bad.append(BadRecord(i, f"cannot be read as Avro with schema id {sid}: {type(exc).__name__}: {exc}", v[:200]))
        maps = [c for c, t in schema.polars.items() if isinstance(t, pl.List) and isinstance(t.inner, pl.Struct)
                and [f.name for f in t.inner.fields] == ["key", "value"]]
        for c in maps:
            for r in rows:
                m = r.get(c)
                if isinstance(m, dict):
                    r[c] = [{"key": k, "value": x} for k, x in m.items()]
        df = pl.from_dicts(rows, schema=schema.polars) if rows else pl.DataFrame(schema=schema.polars)
        if not bad:
            index = []
        return Decoded(df, bad, index)
