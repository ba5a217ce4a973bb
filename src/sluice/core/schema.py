"""Declared schemas: what a source promises its records look like.

A schema is a mapping of field name to a Polars data type; a nested mapping is a struct. Fields are
required unless wrapped in `Optional(...)`. Two types are for payloads whose keys are not known in
advance: `Map(str, float)`, a JSON object with any keys (kept as the Arrow map layout, a list of
`{key, value}` structs), and `JsonValue`, any JSON value kept as its JSON text (a string column). Undeclared fields in the input are ignored, which is also
how a pipeline reads only the columns it needs (parsing dominates the cost of a JSON pipeline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import polars as pl

from sluice.core.errors import PlanError


@dataclass(frozen=True)
class Optional:
    """Marks a field that may be missing or null."""

    dtype: Any


@dataclass(frozen=True)
class Map:
    """A JSON object with arbitrary keys, e.g. `Map(str, float)` for `{"cpu": 0.5, "mem": 0.7}`.

    In columns it is a list of `{key, value}` structs (the Arrow map layout): Parquet stores it as
    list<struct<key, value>>, which polars, pyarrow and DuckDB read back as such (DuckDB's
    `map_from_entries(col)` makes it a MAP). Keys stay in input order; a null map is null."""

    key: Any
    value: Any

    def dtype(self, where: str) -> pl.DataType:
        return pl.List(pl.Struct({"key": _dtype(self.key, f"{where}.key"), "value": _dtype(self.value, f"{where}.value")}))


class _JsonValue:
    """Any JSON value (object, array, string, number, boolean) kept as its JSON text in a string column,
    e.g. `'{"a": [1, 2]}'`, `'"text"'`, `'3.5'`; JSON null is null. Parse it later with
    `pl.col(...).str.json_decode(...)`."""

    def __repr__(self) -> str:
        return "sl.JsonValue"


JsonValue = _JsonValue()

SchemaLike: TypeAlias = Mapping[str, Any] | pl.Schema

_PY_TYPES: dict[Any, pl.DataType] = {
    int: pl.Int64(),
    float: pl.Float64(),
    str: pl.String(),
    bool: pl.Boolean(),
    bytes: pl.Binary(),
    datetime: pl.Datetime("ms", "UTC"),
}


@dataclass(frozen=True)
class Schema:
    """A resolved schema: Polars types plus the names of required top-level fields."""

    polars: pl.Schema
    required: tuple[str, ...]
    maps: tuple[str, ...] = ()  # top-level fields declared Map(...): JSON objects with any keys
    json_text: tuple[str, ...] = ()  # top-level fields declared JsonValue: kept as JSON text

    @property
    def wire(self) -> pl.Schema:
        """The schema a JSON reader parses with: maps and JSON values read as text, converted afterwards."""
        if not self.maps and not self.json_text:
            return self.polars
        return pl.Schema({n: pl.String() if n in self.maps or n in self.json_text else t for n, t in self.polars.items()})

    @property
    def names(self) -> list[str]:
        return list(self.polars.names())

    def describe(self) -> str:
        return ", ".join(f"{n}: {t}" for n, t in self.polars.items())


def _dtype(value: Any, where: str) -> pl.DataType:
    if isinstance(value, Optional):
        return _dtype(value.dtype, where)
    if isinstance(value, Map):
        return value.dtype(where)
    if value is JsonValue:
        return pl.String()
    if isinstance(value, Mapping):
        return pl.Struct({k: _dtype(v, f"{where}.{k}") for k, v in value.items()})
    if isinstance(value, pl.DataType):
        return value
    if isinstance(value, type) and issubclass(value, pl.DataType):
        return value()
    if value in _PY_TYPES:
        return _PY_TYPES[value]
    raise PlanError(f"schema field {where!r}: {value!r} is not a type; use a Polars type such as pl.Int64")


def resolve_schema(schema: SchemaLike | Schema) -> Schema:
    """Turn what a user wrote into a `Schema`."""
    if isinstance(schema, Schema):
        return schema
    if isinstance(schema, pl.Schema):
        return Schema(schema, tuple(schema.names()))
    fields = {name: _dtype(t, name) for name, t in schema.items()}
    required = tuple(name for name, t in schema.items() if not isinstance(t, Optional))
    bare = {name: t.dtype if isinstance(t, Optional) else t for name, t in schema.items()}
    for name, t in bare.items():
        if isinstance(t, Mapping):
            _refuse_nested(t, name)
    maps = tuple(n for n, t in bare.items() if isinstance(t, Map))
    json_text = tuple(n for n, t in bare.items() if t is JsonValue)
    return Schema(pl.Schema(fields), required, maps, json_text)


def _refuse_nested(struct: Mapping[str, Any], where: str) -> None:
    for name, t in struct.items():
        t = t.dtype if isinstance(t, Optional) else t
        if isinstance(t, Map) or t is JsonValue:
            raise PlanError(f"schema field '{where}.{name}': Map and JsonValue are read at the top level only. "
                            f"Fix: declare {where!r} itself as sl.JsonValue and decode it with .with_columns")
        if isinstance(t, Mapping):
            _refuse_nested(t, f"{where}.{name}")


def column(ref: str | pl.Expr) -> pl.Expr:
    """A column reference; `"metrics.value"` reaches into the struct column `metrics`."""
    if isinstance(ref, pl.Expr):
        return ref
    head, *rest = ref.split(".")
    expr = pl.col(head)
    for part in rest:
        expr = expr.struct.field(part)
    return expr
