"""The native JSON fast path: a strict, columnar decoder in Rust (native/, the `sluice_native` module).

`decode(blob, schema)` returns the block's columns only when every record in it is good, exactly as the
Polars path (json.py) would return them; otherwise None ("not sure"), and the Polars path runs, finds the
bad records and explains them. The native decoder refuses rather than guesses: any syntax error, wrong type,
duplicate declared key, lone surrogate, control character, overflow, deep nesting, or a missing
required field makes it answer None. It handles top-level and nested-struct fields of Int64, Int32, UInt32,
UInt64, Float64, String and Boolean; for any other schema it is not called.

It is off when the module is not installed (Sluice works without it) or when SLUICE_NATIVE_JSON=0.
The Rust code parses with the GIL released, so the file source's background parse runs beside the operators.
Its columns reach Polars through the Arrow C data interface (a PyCapsule), moved, not copied, and without
pyarrow or numpy.
"""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from sluice.core.schema import Schema

try:
    import sluice_native as _native
except ImportError:  # not built: the Polars path does all the work
    _native = None

ENABLED = _native is not None and os.environ.get("SLUICE_NATIVE_JSON", "1") != "0"

_KINDS: dict[Any, str] = {
    pl.Int64: "i64", pl.Int32: "i32", pl.UInt32: "u32", pl.UInt64: "u64", pl.Float64: "f64", pl.String: "str",
    pl.Boolean: "bool",
}


class _Field:
    __slots__ = ("children", "kind", "name")

    def __init__(self, name: str, kind: str, children: list[_Field]) -> None:
        self.name, self.kind, self.children = name, kind, children


def _field(name: str, dtype: Any) -> _Field | None:
    if isinstance(dtype, pl.Struct):
        children = [_field(f.name, f.dtype) for f in dtype.fields]
        if not children or len(children) > 64 or any(c is None for c in children):
            return None
        return _Field(name, "struct", [c for c in children if c is not None])
    base = dtype.base_type() if isinstance(dtype, pl.DataType) else dtype
    if base not in _KINDS:
        return None
    return _Field(name, _KINDS[base], [])


class _Plan:
    def __init__(self, fields: list[_Field], required: tuple[str, ...], schema: pl.Schema) -> None:
        self.fields = fields
        self.schema = schema

        def spec(f: _Field) -> tuple[Any, ...]:
            return (f.name, f.kind, f.name in required, [spec(c) for c in f.children])

        assert _native is not None
        self.native = _native.Plan([spec(f) for f in fields])


_PLANS: dict[tuple[Any, ...], _Plan | None] = {}


def _plan(schema: Schema) -> _Plan | None:
    key = (repr(list(schema.polars.items())), schema.required, schema.maps, schema.json_text)
    if key in _PLANS:
        return _PLANS[key]
    plan = None
    if not schema.maps and not schema.json_text and 0 < len(schema.polars) <= 64:
        fields = [_field(n, t) for n, t in schema.polars.items()]
        if all(f is not None for f in fields):
            plan = _Plan([f for f in fields if f is not None], schema.required, schema.polars)
    if len(_PLANS) > 256:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def supports(schema: Schema) -> bool:
    """Whether the native decoder handles this schema (and is installed)."""
    return _native is not None and _plan(schema) is not None


def decode(blob: bytes | bytearray | memoryview, schema: Schema) -> pl.DataFrame | None:
    """The block's rows when every record is good (in `schema.wire`'s types and order), else None.

    `blob` is read in place (any contiguous byte buffer, not copied) with the GIL released: the caller must
    not change it during the call. The rows keep no reference to it."""
    if not ENABLED:
        return None
    plan = _plan(schema)
    if plan is None:
        return None
    assert _native is not None
    got = _native.decode_arrow(blob, plan.native)
    if got is None:
        return None
    df = pl.Series(got).struct.unnest()
    if df.schema != plan.schema:
        df = df.cast(plan.schema)  # the native side makes these types; a safety net
    return df
