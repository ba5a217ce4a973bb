"""JSON records ↔ columns, vectorized by Polars' NDJSON reader.

The fast path parses a whole block at once. When the block has a bad record, bisection finds it
(O(bad · log n) re-parses) so that one malformed line costs little and is reported by position.
Fields not in the schema are ignored: declaring only the fields you use is also the fastest way to parse.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from sluice.core.errors import WrongJsonType
from sluice.core.schema import Schema
from sluice.formats import json_native
from sluice.formats.api import BadRecord, Codec, Decoded, Format, LineCodec
from sluice.formats.json_check import (
    all_strings,
    drop_record_boms,
    explain,
    lone_surrogate,
    shallow,
    string_columns,
    suspects,
)
from sluice.formats.records import decode_records, missing_required

__all__ = ["BadRecord", "Json"]

_PARSE_ERRORS = (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.InvalidOperationError)


@dataclass(frozen=True)
class Json(Format, Codec, LineCodec):
    """JSON objects, one per record (JSON Lines in files; one object per message in a log).

    JSON needs nothing from the topic, so the format is its own codec, and its own line codec."""

    def sluice_schema(self) -> None:
        return None

    def bind(self, topic: str, reading: bool) -> Json:
        return self

    @property
    def lines(self) -> Json:
        return self

    def decode_block(self, blob: bytes | bytearray | memoryview, schema: Schema) -> Decoded:
        """Decode newline-separated records.

        Returns the good rows, the bad records, and for every good row its record index in the block
        (only computed when something was bad; otherwise rows map one to one and the list is empty).
        The native decoder (json_native.py) answers first when it is sure that every record is good; it reads
        any byte buffer in place. The Polars path works on a bytes copy of the exact block (none if `blob` is
        bytes already), so nothing it returns refers to a buffer the caller reuses.
        """
        if json_native.ENABLED and (df := json_native.decode(blob, schema)) is not None:
            return Decoded(df, [], [])
        blob = bytes(blob)
        try:
            df = pl.read_ndjson(io.BytesIO(blob), schema=schema.wire)
        except _PARSE_ERRORS:
            return self._slow(blob, schema)
        if schema.maps or schema.json_text:
            lines = [ln for ln in blob.split(b"\n") if ln.strip()]
            if len(lines) != df.height:
                return self._slow(blob, schema)
            df = _with_free_form(df, lines, schema)
            if df[_REASON].null_count() == df.height:
                df = df.drop(_REASON)
            else:
                return self._slow(blob, schema)
        if (missing_required(df, schema) is None and _strings_hold_strings(df, None, blob, schema)
                and not lone_surrogate(blob, schema.wire, (*schema.maps, *schema.json_text))):
            return Decoded(df, [], [])
        return self._slow(blob, schema)

    def _slow(self, blob: bytes, schema: Schema) -> Decoded:
        lines = [ln for ln in blob.split(b"\n") if ln.strip()]

        def parse(chunk: Sequence[bytes]) -> pl.DataFrame:
            try:
                df = pl.read_ndjson(io.BytesIO(b"\n".join(chunk)), schema=schema.wire)
            except _PARSE_ERRORS as exc:
                # nested deeper than the reader goes: read the record by its declared fields, if it is valid
                reduced = shallow(chunk[0], schema.names) if len(chunk) == 1 and "DepthLimit" in str(exc) else None
                if reduced is None or reduced == chunk[0]:
                    raise
                return parse([reduced])
            if df.height != len(chunk):
                return df
            if not _strings_hold_strings(df, chunk, b"", schema):
                raise WrongJsonType
            if lone_surrogate(b"\n".join(chunk), schema.wire, (*schema.maps, *schema.json_text)):
                raise WrongJsonType  # the reader turned half a character into "\x00"
            return _with_free_form(df, chunk, schema)

        def validate(df: pl.DataFrame) -> tuple[pl.DataFrame, list[str | None] | None]:
            if _REASON not in df.columns:
                return df, missing_required(df, schema)
            free_form = df[_REASON].to_list()
            df = df.drop(_REASON)
            required = missing_required(df, schema)
            reasons = [f if f is not None else (required[i] if required else None) for i, f in enumerate(free_form)]
            return df, reasons if any(r is not None for r in reasons) else None

        skip = (*schema.maps, *schema.json_text)

        def reason(raw: bytes, exc: Exception) -> str:
            return explain(raw, schema.wire, skip, fallback=_reason(exc))

        frames, bad, index = decode_records(lines, parse, validate, (*_PARSE_ERRORS, WrongJsonType), reason,
                                            "not a JSON object")
        good = pl.concat(frames) if frames else pl.DataFrame(schema=schema.polars)
        return Decoded(good, bad, index)

    def decode_messages(self, blob: bytes, schema: Schema) -> Decoded:
        """Newline-joined message values: a UTF-8 byte order mark starting a value is dropped (as Jackson and
        Python's json do; .NET and Windows producers write one), and a bad value's raw bytes keep it."""
        stripped = drop_record_boms(blob)
        decoded = self.decode_block(stripped, schema)
        if stripped is blob or not decoded.bad:
            return decoded
        # the same records at the same places (a BOM became three blanks, never a whole record)
        lines = [ln for ln in blob.split(b"\n") if ln.strip()]
        return decoded._replace(bad=[BadRecord(b.index, b.reason, lines[b.index]) for b in decoded.bad])

    def decode_values(self, values: list[bytes], schema: Schema) -> Decoded:
        """One JSON object per value (a message); bad values are reported by their index in `values`."""
        blob = b"\n".join(values)
        if blob.count(b"\n") != len(values) - 1:  # pretty-printed values: a raw newline is only whitespace
            blob = b"\n".join(v.replace(b"\n", b" ").replace(b"\r", b" ") for v in values)
        return self.decode_messages(blob + b"\n", schema)

    def encode_values(self, df: pl.DataFrame) -> list[bytes]:
        """Each row as one JSON value."""
        return self.encode(df).split(b"\n")[: df.height]

    def encode(self, df: pl.DataFrame) -> bytes:
        """Rows as JSON Lines (each record followed by a newline)."""
        buf = io.BytesIO()
        df.write_ndjson(buf)
        return buf.getvalue()


_REASON = "__sl_reason"


def _strings_hold_strings(df: pl.DataFrame, lines: Sequence[bytes] | None, blob: bytes, schema: Schema) -> bool:
    """Whether no String value of `df` is the text of a non-string (json_check.py). `lines` are its records,
    or None: then they are the non-blank lines of `blob`, split only when a row is a suspect."""
    columns = string_columns(schema.wire, (*schema.maps, *schema.json_text))
    rows = suspects(df, schema.wire, columns)
    if not rows:
        return True
    if lines is None:
        lines = [ln for ln in blob.split(b"\n") if ln.strip()]
    return all_strings([lines[i] for i in rows], schema.wire, columns)


def _with_free_form(df: pl.DataFrame, lines: Sequence[bytes], schema: Schema) -> pl.DataFrame:
    """Fill the Map and JsonValue fields from each record's own JSON (one Python parse per record, only for
    schemas that declare them), plus a column with why a record's value does not fit (null when it does)."""
    if not schema.maps and not schema.json_text:
        return df
    values: dict[str, list[Any]] = {n: [] for n in (*schema.maps, *schema.json_text)}
    reasons: list[str | None] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record, why = {}, "not a JSON object"
        else:
            why = None
        for name in schema.json_text:
            v = record.get(name)
            values[name].append(None if v is None else json.dumps(v, ensure_ascii=False, separators=(",", ":")))
        for name in schema.maps:
            entries, problem = _entries(record.get(name), name, schema.polars[name])
            values[name].append(entries)
            why = why or problem
        reasons.append(why)
    columns = [pl.Series(n, v, dtype=schema.polars[n], strict=False) for n, v in values.items()]
    return df.with_columns(*columns, pl.Series(_REASON, reasons, dtype=pl.String))


def _entries(value: Any, name: str, dtype: pl.DataType) -> tuple[list[dict[str, Any]] | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, f"field {name!r} is declared a map but holds {json.dumps(value)[:60]}, not a JSON object"
    assert isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
    want = dtype.inner.fields[1].dtype
    for k, v in value.items():
        if v is not None and not _fits(v, want):
            return None, f"field {name!r}: the value of key {k!r} is {json.dumps(v)[:60]}, not {want}"
    return [{"key": k, "value": v} for k, v in value.items()], None


def _fits(v: Any, dtype: Any) -> bool:
    if dtype == pl.String:
        return isinstance(v, str)
    if dtype == pl.Boolean:
        return isinstance(v, bool)
    if dtype.is_integer():
        return isinstance(v, int) and not isinstance(v, bool)
    if dtype.is_float():
        return isinstance(v, int | float) and not isinstance(v, bool)
    return True  # nested values: Polars converts what fits and nulls the rest


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"malformed or wrongly typed JSON: {text}"
