"""Declared schemas: what a source promises its records look like.

A schema is a mapping of field name to a Polars data type; a nested mapping is a struct. Fields are
required unless wrapped in `Optional(...)`. Undeclared fields in the input are ignored, which is also
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

    @property
    def names(self) -> list[str]:
        return list(self.polars.names())

    def describe(self) -> str:
        return ", ".join(f"{n}: {t}" for n, t in self.polars.items())


def _dtype(value: Any, where: str) -> pl.DataType:
    if isinstance(value, Optional):
        return _dtype(value.dtype, where)
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
    return Schema(pl.Schema(fields), required)


def column(ref: str | pl.Expr) -> pl.Expr:
    """A column reference; `"metrics.value"` reaches into the struct column `metrics`."""
    if isinstance(ref, pl.Expr):
        return ref
    head, *rest = ref.split(".")
    expr = pl.col(head)
    for part in rest:
        expr = expr.struct.field(part)
    return expr
