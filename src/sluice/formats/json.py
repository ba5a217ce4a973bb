"""JSON records ↔ columns, vectorized by Polars' NDJSON reader.

The fast path parses a whole block at once. When the block has a bad record, bisection finds it
(O(bad · log n) re-parses) so that one malformed line costs little and is reported by position.
Fields not in the schema are ignored: declaring only the fields you use is also the fastest way to parse.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import polars as pl

from sluice.core.schema import Schema

_PARSE_ERRORS = (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.InvalidOperationError)


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be decoded: its index among the block's records, why, and its bytes."""

    index: int
    reason: str
    raw: bytes


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
        missing = _missing_required(df, schema)
        if missing is None:
            return df, [], []
        return self._slow(blob, schema)

    def _slow(self, blob: bytes, schema: Schema) -> tuple[pl.DataFrame, list[BadRecord], list[int]]:
        lines = [ln for ln in blob.split(b"\n") if ln.strip()]
        bad: list[BadRecord] = []
        frames: list[pl.DataFrame] = []
        index: list[int] = []

        def parse(lo: int, hi: int) -> None:
            chunk = b"\n".join(lines[lo:hi])
            try:
                df = pl.read_ndjson(io.BytesIO(chunk), schema=schema.polars)
            except _PARSE_ERRORS as exc:
                if hi - lo == 1:
                    bad.append(BadRecord(lo, _reason(exc), lines[lo]))
                    return
                mid = (lo + hi) // 2
                parse(lo, mid)
                parse(mid, hi)
                return
            if df.height != hi - lo:  # a record that is not an object, or blank-ish; split to find it
                if hi - lo == 1:
                    bad.append(BadRecord(lo, "not a JSON object", lines[lo]))
                    return
                mid = (lo + hi) // 2
                parse(lo, mid)
                parse(mid, hi)
                return
            missing = _missing_required(df, schema)
            if missing is not None:
                ok = pl.Series(missing).not_()
                for i in range(df.height):
                    if missing[i]:
                        field = next(f for f in schema.required if df[f][i] is None)
                        bad.append(BadRecord(lo + i, f"required field {field!r} is missing or null", lines[lo + i]))
                df = df.filter(ok)
                index.extend(lo + i for i in range(hi - lo) if not missing[i])
            else:
                index.extend(range(lo, hi))
            frames.append(df)

        if lines:
            parse(0, len(lines))
        good = pl.concat(frames) if frames else pl.DataFrame(schema=schema.polars)
        bad.sort(key=lambda b: b.index)
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


def _missing_required(df: pl.DataFrame, schema: Schema) -> list[bool] | None:
    """Per row, whether a required field is null; None when every row is complete."""
    required = [f for f in schema.required if f in df.columns]
    if not required or not any(df[f].has_nulls() for f in required):
        return None
    mask = df.select(pl.any_horizontal([pl.col(f).is_null() for f in required])).to_series()
    return mask.to_list()


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"malformed or wrongly typed JSON: {text}"
