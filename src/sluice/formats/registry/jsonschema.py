"""`sl.JsonSchema`: JSON values in the Confluent wire format, described by a JSON Schema in a registry.

Producers validate every record (jsonschema-rs) and register the schema when the sink opens; consumers
decode the JSON after the 5-byte header with the JSON format (so the declared types are checked as for
any JSON), validating against the JSON Schema first when `validate=True`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from sluice.core.errors import RejectedRecord
from sluice.core.schema import Optional, Schema, resolve_schema
from sluice.formats.api import BadRecord, Codec, Decoded, Format
from sluice.formats.json import Json
from sluice.formats.registry.wire import NOT_WIRE_FORMAT, Registered, Registry, header, is_framed, plain


@dataclass(frozen=True)
class JsonSchema(Registered, Format):
    """JSON values in the Confluent wire format, described by a JSON Schema in the registry. Producers
    validate every record (jsonschema-rs); consumers validate when `validate=True` (invalid records are
    bad records: an error, or dead letters)."""

    schema: dict[str, Any]
    registry: Registry | None = None
    subject: str | None = None
    strategy: str = "topic"
    compatibility: str | None = None
    auto_register: bool = True
    is_key: bool = False
    validate: bool = False
    schema_type: str = field(default="JSON", init=False)

    def _schema_obj(self) -> Any:
        return self.schema

    def _record_name(self) -> str | None:
        return self.schema.get("title")

    def sluice_schema(self) -> Schema:
        return resolve_schema(_json_schema_fields(self.schema))

    def bind(self, topic: str, reading: bool) -> JsonSchemaCodec:
        return JsonSchemaCodec(self, topic, reading)



_JSON_TYPES: dict[str, pl.DataType] = {"string": pl.String(), "integer": pl.Int64(), "number": pl.Float64(),
                                       "boolean": pl.Boolean()}


def _json_schema_fields(schema: dict[str, Any]) -> dict[str, Any]:
    required = set(schema.get("required", []))
    out: dict[str, Any] = {}
    for name, s in schema.get("properties", {}).items():
        t = s.get("type")
        nullable = isinstance(t, list) and "null" in t
        t = next((x for x in t if x != "null"), "string") if isinstance(t, list) else t
        if t == "object":
            dtype: Any = pl.Struct({k: plain(v) for k, v in _json_schema_fields(s).items()})
        elif t == "array":
            inner = s.get("items", {}).get("type", "string")
            dtype = pl.List(_JSON_TYPES.get(inner, pl.String()))
        else:
            dtype = _JSON_TYPES.get(t or "string", pl.String())
        out[name] = dtype if name in required and not nullable else Optional(dtype)
    return out



class JsonSchemaCodec(Codec):
    """A `JsonSchema` format bound to a topic: the compiled validator and, when writing, the header."""

    lines = None  # values start with a binary header

    def __init__(self, spec: JsonSchema, topic: str, reading: bool) -> None:
        import jsonschema_rs

        self.spec = spec
        self.validator = jsonschema_rs.validator_for(spec.schema)
        self.header = b"" if reading else header(spec.writer_id(topic))
        self.json = Json()

    def encode_values(self, df: pl.DataFrame) -> list[bytes]:
        out = []
        for i, row in enumerate(df.iter_rows(named=True)):
            errors = [e.message for e in self.validator.iter_errors(row)]
            if errors:
                raise RejectedRecord(i, f"the record does not match the JSON Schema ({errors[0]}); it reads "
                                        f"{orjson.dumps(row, default=str)[:200].decode()}")
            out.append(self.header + orjson.dumps(row, default=str))
        return out

    def decode_values(self, values: list[bytes], schema: Schema) -> Decoded:
        bodies: list[bytes] = []
        keep: list[int] = []
        bad: list[BadRecord] = []
        for i, v in enumerate(values):
            if not is_framed(v):
                bad.append(BadRecord(i, NOT_WIRE_FORMAT, v[:200]))
                continue
            body = v[5:]
            if self.spec.validate:
                try:
                    errors = [e.message for e in self.validator.iter_errors(orjson.loads(body))]
                except orjson.JSONDecodeError as exc:
                    errors = [f"malformed JSON: {exc}"]
                if errors:
                    bad.append(BadRecord(i, f"does not match the JSON Schema: {errors[0]}", v[:200]))
                    continue
            bodies.append(body)
            keep.append(i)
        df, more, index = self.json.decode_values(bodies, schema) if bodies else (pl.DataFrame(schema=schema.polars), [], [])
        bad += [BadRecord(keep[b.index], b.reason, b.raw) for b in more]
        if not bad:
            return Decoded(df, [], [])
        rows = [keep[j] for j in (index if more else range(len(keep)))]
        bad.sort(key=lambda b: b.index)
        return Decoded(df, bad, rows)
