"""Columnar decoding of Avro datums: every record of a block at once, field by field, with numpy.

Avro binary is sequential inside a record (varints, length-prefixed strings), but records of one writer
schema have the same shape, so each field can be decoded for all records together: a vector of
positions, one per record, advances field by field. Strings become Arrow buffers directly (one gather),
numbers come from byte gathers. This is several times faster than decoding record by record in Python
(fastavro), which stays the fallback for schema shapes not handled here and for blocks with anything
unexpected: it is also the path that pins down which record is bad.

Handled: null, boolean, int, long, float, double, string, bytes, enum, unions of null and one of those,
nested records, and maps of those values (read as a struct of the declared keys). Arrays, fixed, and
unions of several non-null types fall back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from sluice.core.errors import Unsupported

PAD = 16


def _varint(data: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zig-zag varints at `pos`: (values, byte lengths)."""
    value = np.zeros(pos.shape[0], dtype=np.uint64)
    length = np.zeros(pos.shape[0], dtype=np.int64)
    active = np.ones(pos.shape[0], dtype=bool)
    for k in range(10):
        b = data[pos + k].astype(np.uint64)
        value |= np.where(active, (b & np.uint64(0x7F)) << np.uint64(7 * k), np.uint64(0))
        stop = active & (b < 0x80)
        length[stop] = k + 1
        active &= ~stop
        if not active.any():
            break
    else:
        raise Unsupported("a varint longer than 10 bytes")
    signed = (value >> np.uint64(1)).astype(np.int64) ^ -(value & np.uint64(1)).astype(np.int64)
    return signed, length


def _fixed(data: np.ndarray, pos: np.ndarray, width: int, dtype: str) -> np.ndarray:
    raw = data[pos[:, None] + np.arange(width)]
    return np.ascontiguousarray(raw).view(dtype).ravel()


def _strings(data: np.ndarray, pos: np.ndarray, binary: bool = False) -> tuple[pa.Array, np.ndarray]:
    """Length-prefixed strings at `pos`: (Arrow array, new positions)."""
    n, k = _varint(data, pos)
    if (n < 0).any():
        raise Unsupported("a negative string length")
    starts = pos + k
    if n.size and int((starts + n).max()) > data.shape[0] - PAD:
        raise Unsupported("a string runs past the end of the block")
    offsets = np.zeros(pos.shape[0] + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    total = int(offsets[-1])
    idx = np.repeat(starts - offsets[:-1], n) + np.arange(total, dtype=np.int64)
    values = data[idx]
    kind = pa.large_binary() if binary else pa.large_string()
    arr = pa.Array.from_buffers(kind, pos.shape[0], [None, pa.py_buffer(offsets), pa.py_buffer(values)])
    if not binary:
        try:
            arr.validate(full=True)  # UTF-8
        except pa.ArrowInvalid as exc:
            raise Unsupported("a string that is not UTF-8") from exc
    return arr, starts + n


@dataclass
class _Field:
    name: str
    kind: str  # primitive name | enum | union | record | map
    schema: Any


_PRIMS = {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        if schema in _PRIMS:
            return schema
        raise Unsupported(f"named type reference {schema}")
    if isinstance(schema, list):
        others = [s for s in schema if s != "null"]
        if len(schema) == 2 and len(others) == 1 and _kind(others[0]) in _PRIMS | {"enum"}:
            return "union"
        raise Unsupported("a union other than [null, T]")
    t = schema.get("type")
    if t in ("record", "enum", "map"):
        if t == "map" and _kind(schema["values"]) not in _PRIMS | {"union", "enum"}:
            raise Unsupported("a map of complex values")
        if t == "record":
            for f in schema["fields"]:
                _kind(f["type"])
        return str(t)
    if isinstance(t, str | list | dict):
        return _kind(t)
    raise Unsupported(f"type {t}")


class ColumnarReader:
    """Decodes datums of one writer record schema into the columns a declared schema asks for."""

    def __init__(self, writer: dict[str, Any], wanted: pl.Schema) -> None:
        if not isinstance(writer, dict) or writer.get("type") != "record":
            raise Unsupported("not a record")
        _kind(writer)
        self.writer = writer
        self.wanted = wanted
        names = {f["name"] for f in writer["fields"]}
        missing = [n for n in wanted.names() if n not in names]
        if missing:
            raise Unsupported(f"fields {missing} are not in the writer schema (reader defaults)")

    def decode(self, values: list[bytes], header: int) -> pl.DataFrame:
        """`values` are whole messages; each datum starts after `header` bytes."""
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        ends = np.cumsum(lengths)
        starts = ends - lengths + header
        data = np.frombuffer(b"".join(values) + bytes(PAD + 16), dtype=np.uint8)
        pos, cols = self._record(self.writer, data, starts, self.wanted)
        if not np.array_equal(pos, ends):
            raise Unsupported("records do not end where their messages do")
        return pl.DataFrame(cols, schema=self.wanted) if cols else pl.DataFrame(schema=self.wanted)

    def _record(self, schema: dict[str, Any], data: np.ndarray, pos: np.ndarray,
                wanted: pl.Schema | None) -> tuple[np.ndarray, dict[str, pl.Series]]:
        cols: dict[str, pl.Series] = {}
        limit = data.shape[0] - PAD
        for f in schema["fields"]:
            want = wanted.get(f["name"]) if wanted is not None else None
            pos, col = self._value(f["type"], data, pos, want, f["name"])
            if pos.size and int(pos.max()) > limit:
                raise Unsupported("a record runs past the end of the block")
            if col is not None:
                cols[f["name"]] = col
        return pos, cols

    def _value(self, schema: Any, data: np.ndarray, pos: np.ndarray, want: Any,
               name: str) -> tuple[np.ndarray, pl.Series | None]:
        kind = _kind(schema)
        n = pos.shape[0]
        if kind == "null":
            return pos, (pl.Series(name, [None] * n, dtype=want) if want is not None else None)
        if kind == "boolean":
            v = data[pos] != 0
            return pos + 1, _series(name, v, want)
        if kind in ("int", "long"):
            v, k = _varint(data, pos)
            return pos + k, _series(name, v, want)
        if kind == "float":
            return pos + 4, _series(name, _fixed(data, pos, 4, "<f4"), want)
        if kind == "double":
            return pos + 8, _series(name, _fixed(data, pos, 8, "<f8"), want)
        if kind in ("string", "bytes"):
            arr, after = _strings(data, pos, binary=kind == "bytes")
            return after, (_series(name, pl.from_arrow(arr), want) if want is not None else None)
        if kind == "enum":
            v, k = _varint(data, pos)
            symbols = schema["symbols"] if isinstance(schema, dict) else []
            if v.size and (v.min() < 0 or v.max() >= len(symbols)):
                raise Unsupported("an enum index out of range")
            out = pl.Series(name, np.asarray(symbols, dtype=object)[v], dtype=pl.String) if want is not None else None
            return pos + k, out
        if kind == "union":
            branch, k = _varint(data, pos)
            null_at = schema.index("null")
            other = schema[1 - null_at]
            if branch.size and (branch.min() < 0 or branch.max() > 1):
                raise Unsupported("a union branch out of range")
            pos = pos + k
            present = branch != null_at
            after, col = self._value(other, data, pos[present], want, name)
            pos[present] = after
            if want is None:
                return pos, None
            assert col is not None
            full = pl.Series(name, [None] * n, dtype=col.dtype)
            if present.any():
                full = full.scatter(np.flatnonzero(present), col)
            return pos, full
        if kind == "record":
            inner = want if isinstance(want, pl.Struct) else None
            after, cols = self._record(schema, data, pos, pl.Schema({f.name: f.dtype for f in inner.fields})
                                       if inner is not None else None)
            if want is None:
                return after, None
            return after, pl.DataFrame(cols).to_struct(name).cast(want)
        if kind == "map":
            return self._map(schema, data, pos, want, name)
        raise Unsupported(kind)

    def _map(self, schema: dict[str, Any], data: np.ndarray, pos: np.ndarray, want: Any,
             name: str) -> tuple[np.ndarray, pl.Series | None]:
        """Map blocks; the declared struct's keys are picked out (the last entry of a key wins)."""
        keys = [f.name for f in want.fields] if isinstance(want, pl.Struct) else []
        if want is not None and not isinstance(want, pl.Struct):
            raise Unsupported("a map read as anything but a struct of keys")
        n = pos.shape[0]
        found: dict[str, tuple[np.ndarray, list[pl.Series], list[np.ndarray]]] = {
            k: (np.zeros(n, dtype=bool), [], []) for k in keys}
        rows = np.arange(n)
        pos = pos.copy()
        while rows.size:
            count, k = _varint(data, pos[rows])
            pos[rows] += k
            neg = count < 0
            if neg.any():  # a negative count is followed by the block's byte size
                _, k2 = _varint(data, pos[rows[neg]])
                pos[rows[neg]] += k2
                count = np.abs(count)
            live = count > 0
            rows, count = rows[live], count[live]
            j = 0
            while (count > j).any():
                sub = rows[count > j]
                karr, after = _strings(data, pos[sub])
                pos[sub] = after
                vtype = want.fields[0].dtype if keys and want is not None else None
                after, vals = self._value(schema["values"], data, pos[sub], vtype if keys else None, name)
                pos[sub] = after
                if keys:
                    kseries = pl.from_arrow(karr)
                    assert isinstance(kseries, pl.Series)
                    for key in keys:
                        hit = (kseries == key).to_numpy()
                        if hit.any():
                            assert vals is not None
                            found[key][1].append(vals.filter(pl.Series(hit)))
                            found[key][2].append(sub[hit])
                j += 1
        if want is None:
            return pos, None
        fields = {}
        for f in want.fields:
            col = pl.Series(f.name, [None] * n, dtype=f.dtype)
            _, parts, where = found[f.name]
            for vals, at in zip(parts, where, strict=True):
                col = col.scatter(at, vals.cast(f.dtype))
            fields[f.name] = col
        return pos, pl.DataFrame(fields).to_struct(name)


def _series(name: str, values: Any, want: Any) -> pl.Series | None:
    if want is None:
        return None
    s = values if isinstance(values, pl.Series) else pl.Series(name, values)
    return s.alias(name).cast(want)
