"""Decoding a block of text records when some of them are bad: shared by the JSON and CSV formats.

A format parses a whole block at once (the fast path). When the parser rejects the block, bisection
re-parses halves until each bad record stands alone: one malformed record costs O(log n) re-parses and
is reported by its index in the block. Records that parse are then validated (types, required fields),
which names the exact field and value without any re-parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

from sluice.core.schema import Schema
from sluice.formats.api import BadRecord

# parse(records) -> rows, one per record; raises one of `errors` when a record cannot be parsed
Parse = Callable[[Sequence[bytes]], pl.DataFrame]
# validate(rows) -> (rows in their declared types, per row the reason it is bad or None; None when all are good)
Validate = Callable[[pl.DataFrame], tuple[pl.DataFrame, list[str | None] | None]]


def decode_records(
    records: Sequence[bytes],
    parse: Parse,
    validate: Validate,
    errors: tuple[type[Exception], ...],
    reason: Callable[[bytes, Exception], str],
    not_a_record: str,
) -> tuple[list[pl.DataFrame], list[BadRecord], list[int]]:
    """Good rows (as frames, in order), bad records (sorted by index) and each good row's record index.

    `not_a_record` is the reason given to a record the parser accepts without producing a row for it."""
    bad: list[BadRecord] = []
    frames: list[pl.DataFrame] = []
    index: list[int] = []

    def split(lo: int, hi: int, why: str) -> None:
        if hi - lo == 1:
            bad.append(BadRecord(lo, why, records[lo]))
            return
        mid = (lo + hi) // 2
        visit(lo, mid)
        visit(mid, hi)

    def visit(lo: int, hi: int) -> None:
        try:
            df = parse(records[lo:hi])
        except errors as exc:
            split(lo, hi, reason(records[lo], exc) if hi - lo == 1 else "")
            return
        if df.height != hi - lo:
            split(lo, hi, not_a_record)
            return
        df, reasons = validate(df)
        if reasons is None:
            index.extend(range(lo, hi))
        else:
            for i, why in enumerate(reasons):
                if why is not None:
                    bad.append(BadRecord(lo + i, why, records[lo + i]))
            df = df.filter(pl.Series([why is None for why in reasons]))
            index.extend(lo + i for i, why in enumerate(reasons) if why is None)
        frames.append(df)

    if records:
        visit(0, len(records))
    bad.sort(key=lambda b: b.index)
    return frames, bad, index


def missing_required(df: pl.DataFrame, schema: Schema) -> list[str | None] | None:
    """Per row, why it lacks a required field (None for a complete row); None when every row is complete."""
    required = [f for f in schema.required if f in df.columns]
    if not required or not any(df[f].has_nulls() for f in required):
        return None
    nulls = df.select([pl.col(f).is_null() for f in required]).rows()
    return [
        next((f"required field {f!r} is missing or null" for f, null in zip(required, row, strict=True) if null), None)
        for row in nulls
    ]
