"""CSV records → columns against a declared schema, with the same checks as JSON.

Polars reads every cell as text (structural problems only: a row with more fields than the header, a
quote that never closes); the cells are then converted to the declared types column by column, so a bad
value is named by field and value rather than by Polars' byte offset. Required fields must be non-empty.
A block that fails is split by the shared bisection (`records.py`) to find its bad records.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from sluice.core.errors import HeaderError, PlanError
from sluice.core.schema import Schema
from sluice.formats.api import Decoded
from sluice.formats.records import decode_records, missing_required

_PARSE_ERRORS = (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.ShapeError)
_BLANK_LINE = re.compile(rb"(^|\n)[ \t\r]*(\n|$)")


@dataclass(frozen=True)
class CsvFile:
    """A decoded file: its records decoded, and each record's 1-based line (only computed when a record
    was bad)."""

    decoded: Decoded
    lines: list[int]


@dataclass(frozen=True)
class Csv:
    """CSV with a header row; `separator` between fields, `"` quotes (a quoted field may hold newlines)."""

    separator: str = ","

    def check(self, schema: Schema, step: str) -> None:
        """CSV cells are flat values: refuse nested declared types before the run starts."""
        for name, dtype in schema.polars.items():
            if _kind(dtype) is None:
                raise PlanError(
                    f"step {step!r}: field {name!r} is declared as {dtype}, which a CSV cell cannot hold. "
                    f"Fix: declare it as str (or sl.JsonValue for JSON text) and convert it with .with_columns, or use JSON Lines"
                )

    def infer(self, data: bytes) -> Schema:
        """A schema from the first rows, for a source declared without one (no field is required)."""
        sample = pl.read_csv(io.BytesIO(data), separator=self.separator, n_rows=1000, infer_schema_length=1000)
        return Schema(sample.schema, ())

    def decode_file(self, data: bytes, schema: Schema) -> CsvFile:
        header, _, body = data.partition(b"\n")
        names = self._header(header)
        missing = [f for f in schema.required if f not in names]
        if missing:
            raise HeaderError(f"the header has no column {missing[0]!r} (it has: {', '.join(names)})")

        def parse(records: Sequence[bytes]) -> pl.DataFrame:
            blob = header + b"\n" + b"\n".join(records) + b"\n"
            return pl.read_csv(io.BytesIO(blob), separator=self.separator, infer_schema=False, has_header=True)

        def validate(df: pl.DataFrame) -> tuple[pl.DataFrame, list[str | None] | None]:
            return _convert(df, schema)

        if not _BLANK_LINE.search(body):
            try:
                df, reasons = validate(pl.read_csv(io.BytesIO(data), separator=self.separator, infer_schema=False))
            except _PARSE_ERRORS:
                reasons = []
            if reasons is None:
                return CsvFile(Decoded(df, [], []), [])
        records, lines = self._records(body)
        frames, bad, index = decode_records(records, parse, validate, _PARSE_ERRORS,
                                            lambda raw, exc: self._reason(raw, exc, len(names)), "not a CSV row")
        good = pl.concat(frames) if frames else pl.DataFrame(schema=schema.polars)
        return CsvFile(Decoded(good, bad, index), lines)

    def _header(self, header: bytes) -> list[str]:
        return pl.read_csv(io.BytesIO(header + b"\n"), separator=self.separator, infer_schema=False).columns

    def _records(self, body: bytes) -> tuple[list[bytes], list[int]]:
        """Non-blank records and their 1-based lines (the header is line 1); a quoted newline is data."""
        records: list[bytes] = []
        lines: list[int] = []
        pending: list[bytes] = []
        quotes = 0
        for i, line in enumerate(body.split(b"\n")):
            if not pending and not line.strip():
                continue
            if not pending:
                lines.append(i + 2)
            pending.append(line)
            quotes += line.count(b'"')
            if quotes % 2 == 0:
                records.append(b"\n".join(pending).rstrip(b"\r"))
                pending, quotes = [], 0
        if pending:  # a quote that never closes: the rest of the file is one bad record
            records.append(b"\n".join(pending))
        return records, lines

    def _reason(self, raw: bytes, exc: Exception, width: int) -> str:
        try:
            fields = next(csv.reader([raw.decode("utf-8", "replace")], delimiter=self.separator, strict=True))
        except (csv.Error, StopIteration):
            return "malformed CSV: a quoted field is not closed"
        if len(fields) > width:
            return f"malformed CSV: {len(fields)} fields where the header has {width}"
        return "malformed CSV: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- cells → declared types ---------------------------------------------------------------------------


def _kind(dtype: pl.DataType) -> str | None:
    """How a cell is converted to `dtype` and what a bad one is called; None: not a flat type."""
    if dtype == pl.String:
        return "text"
    if dtype.is_integer():
        return "an integer"
    if dtype.is_float() or dtype.is_decimal():
        return "a number"
    if dtype == pl.Boolean:
        return "true or false"
    if isinstance(dtype, pl.Datetime):
        return "a date-time (ISO 8601)"
    if dtype == pl.Date:
        return "a date (YYYY-MM-DD)"
    return None


def _cast(cells: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.Boolean:
        low = cells.str.to_lowercase()
        return pl.when(low == "true").then(True).when(low == "false").then(False).otherwise(None)
    if isinstance(dtype, pl.Datetime):
        tz = dtype.time_zone
        parsed = cells.str.to_datetime(time_unit=dtype.time_unit, strict=False)
        return parsed.dt.convert_time_zone(tz) if tz else parsed
    if dtype == pl.Date:
        return cells.str.to_date(strict=False)
    return cells.cast(dtype, strict=False)


def _convert(df: pl.DataFrame, schema: Schema) -> tuple[pl.DataFrame, list[str | None] | None]:
    """Text cells → declared types; per row the first bad cell or missing required field."""
    converted: list[pl.Expr] = []
    failed: list[pl.Expr] = []
    for name, dtype in schema.polars.items():
        if name not in df.columns:
            converted.append(pl.lit(None, dtype).alias(name))
            continue
        cells = pl.col(name).str.strip_chars()
        cells = pl.when(cells == "").then(None).otherwise(cells) if dtype != pl.String else pl.col(name)
        value = cells if dtype == pl.String else _cast(cells, dtype)
        converted.append(value.cast(dtype).alias(name))
        if dtype != pl.String:
            failed.append((cells.is_not_null() & value.is_null()).alias(name))
    typed = df.select(converted)
    bad = df.select(failed) if failed else None
    reasons: list[str | None] | None = None
    if bad is not None and bad.select(pl.any_horizontal(pl.all()).any()).item():
        reasons = [None] * df.height
        for name in bad.columns:
            for i in bad.with_row_index().filter(pl.col(name))["index"].to_list():
                if reasons[i] is None:
                    value = df[name][i]
                    reasons[i] = f"field {name!r}: {value!r} is not {_kind(schema.polars[name])}"
    required = missing_required(typed, schema)
    if required is not None:
        reasons = reasons or [None] * df.height
        reasons = [r if r is not None else q for r, q in zip(reasons, required, strict=True)]
    if reasons is not None and all(r is None for r in reasons):
        reasons = None
    return typed, reasons
