"""Bad records, one way for every source: the file readers, the embedded log and Kafka all decode a block
of records, then hand the result here, which keeps the good rows and either stops the run with a
`DecodeError` naming the step, the first bad record's position, what is wrong and the fix, or (with
`on_error="dead_letter"`) sets the bad records aside as dead letters with their reason, position and raw
bytes. Nothing is dropped silently.

    decoded = decode_values(codec, values, schema, empty="the message has no value (a tombstone)")
    rows, records, dead = split(decoded, step, on_error, lambda i: origin.position(first + i))
    if dead is not None:
        yield "dead_letters", dead          # before the good rows of the block
    rows = rows.with_columns(OFFSET = first + records)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import polars as pl

from sluice.core.batch import Batch
from sluice.core.deadletter import dead_letters
from sluice.core.errors import DEAD_LETTER_FIX, DecodeError
from sluice.core.schema import Schema
from sluice.formats.api import BadRecord, Codec, Decoded

if TYPE_CHECKING:
    import numpy as np


class Split(NamedTuple):
    rows: pl.DataFrame  # the good rows
    records: np.ndarray  # each good row's record index in the block (int64)
    dead_letters: Batch | None  # the bad records set aside; None when there are none


def decode_values(codec: Codec, values: list[bytes], schema: Schema, empty: str | None = None) -> Decoded:
    """`values` (one per record) decoded by `codec`. With `empty`, an empty value is not given to the codec:
    it is a bad record for that reason (a Kafka tombstone is not a record of the schema)."""
    if empty is None or all(values):
        return codec.decode_values(values, schema) if values else Decoded(pl.DataFrame(schema=schema.polars), [], [])
    keep = [i for i, v in enumerate(values) if v]
    decoded = decode_values(codec, [values[i] for i in keep], schema)
    bad = [BadRecord(i, empty, b"") for i, v in enumerate(values) if not v]
    bad += [BadRecord(keep[b.index], b.reason, b.raw) for b in decoded.bad]
    bad.sort(key=lambda b: b.index)
    return Decoded(decoded.rows, bad, [keep[int(j)] for j in record_indexes(decoded)])


def split(decoded: Decoded, step: str, on_error: str, position: Callable[[int], str], unit: str = "record") -> Split:
    """The good rows with their record indexes, and the bad records as dead letters; raises the
    `DecodeError` for the first bad record unless `on_error` is "dead_letter". `position(i)` names record i
    (`topic/partition offset n`, `file:line`); `unit` is what the message calls a record ("line" in files)."""
    return Split(decoded.rows, record_indexes(decoded), set_aside(decoded.bad, step, on_error, position, unit))


def set_aside(bad: list[BadRecord], step: str, on_error: str, position: Callable[[int], str],
              unit: str = "record") -> Batch | None:
    """Bad records as a batch of dead letters (None when there are none), or the error that stops the run."""
    if not bad:
        return None
    positions = [position(b.index) for b in bad]
    if on_error != "dead_letter":
        first = bad[0]
        raise DecodeError(step, positions[0], f"{first.reason}; the {unit} reads {first.raw[:200]!r}", DEAD_LETTER_FIX)
    return dead_letters(step, positions, [b.reason for b in bad], [b.raw for b in bad])


def record_indexes(decoded: Decoded) -> np.ndarray:
    """Each good row's record index in its block."""
    import numpy as np  # loaded by the sources that number records so (the log, Kafka)

    if decoded.kept:
        return np.asarray(decoded.kept, dtype=np.int64)
    return np.arange(decoded.rows.height, dtype=np.int64)


def record_numbers(decoded: Decoded, first: int, name: str) -> pl.Series:
    """Each good row's record number: `first` plus its index in the block (Int64, without numpy)."""
    if decoded.kept:
        return pl.Series(name, decoded.kept, dtype=pl.Int64) + first
    return pl.int_range(first, first + decoded.rows.height, dtype=pl.Int64, eager=True).alias(name)
