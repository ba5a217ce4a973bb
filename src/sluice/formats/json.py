"""JSON records ↔ columns, vectorized by Polars' NDJSON reader.

The fast path parses a whole block at once. When the block has a bad record, bisection finds it
(O(bad · log n) re-parses) so that one malformed line costs little and is reported by position.
Fields not in the schema are ignored: declaring only the fields you use is also the fastest way to parse.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from sluice.core.schema import Schema
from sluice.formats.records import BadRecord, decode_records, missing_required

__all__ = ["BadRecord", "Json"]

_PARSE_ERRORS = (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.InvalidOperationError)


@dataclass(frozen=True)
class Json:
    """JSON objects, one per record (JSON Lines in files; one object per message in a log)."""

    def decode_block(self, blob: bytes, schema: Schema) -> tuple[pl.DataFrame, list[BadRecord], list[int]]:
        """Decode newline-separated records.

        Returns the good rows, the bad records, and for every good row its record index in the block
        (only computed when something was bad; otherwise rows map one to one and the list is empty).
        """
        try:
            df = pl.read_ndjson(io.BytesIO(blob), schema=schema.polars)
        except _PARSE_ERRORS:
            return self._slow(blob, schema)
        if missing_required(df, schema) is None:
            return df, [], []
        return self._slow(blob, schema)

    def _slow(self, blob: bytes, schema: Schema) -> tuple[pl.DataFrame, list[BadRecord], list[int]]:
        lines = [ln for ln in blob.split(b"\n") if ln.strip()]

        def parse(chunk: Sequence[bytes]) -> pl.DataFrame:
            return pl.read_ndjson(io.BytesIO(b"\n".join(chunk)), schema=schema.polars)

        def validate(df: pl.DataFrame) -> tuple[pl.DataFrame, list[str | None] | None]:
            return df, missing_required(df, schema)

        frames, bad, index = decode_records(lines, parse, validate, _PARSE_ERRORS, lambda _raw, exc: _reason(exc),
                                            "not a JSON object")
        good = pl.concat(frames) if frames else pl.DataFrame(schema=schema.polars)
        return good, bad, index

    def decode_values(self, values: list[bytes], schema: Schema) -> tuple[pl.DataFrame, list[BadRecord], list[int]]:
        """One JSON object per value (a message); bad values are reported by their index in `values`."""
        blob = b"\n".join(values)
        if blob.count(b"\n") != len(values) - 1:  # pretty-printed values: a raw newline is only whitespace
            blob = b"\n".join(v.replace(b"\n", b" ").replace(b"\r", b" ") for v in values)
        return self.decode_block(blob + b"\n", schema)

    def encode_values(self, df: pl.DataFrame) -> list[bytes]:
        """Each row as one JSON value."""
        return self.encode(df).split(b"\n")[: df.height]

    def encode(self, df: pl.DataFrame) -> bytes:
        """Rows as JSON Lines (each record followed by a newline)."""
        buf = io.BytesIO()
        df.write_ndjson(buf)
        return buf.getvalue()


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"malformed or wrongly typed JSON: {text}"
