"""The seam between connectors and formats.

A `Format` is what a user passes as `format=` to a topic's source or sink (`sl.Json()`, `sl.Avro(...)`,
`sl.JsonSchema(...)`); bound to one topic, for reading or for writing, it gives a `Codec`:

    schema = ctx.schema or fmt.sluice_schema()      # a registry format declares its own
    codec = fmt.bind(topic, reading=True)           # a registry format registers its schema when writing
    rows, bad, kept = codec.decode_values(values, schema)
    values = codec.encode_values(frame)             # RejectedRecord(i, why) for a row that does not fit

A codec whose values are single lines of text (JSON) also has a `lines` form that decodes and encodes a
whole newline-joined block at once: the embedded log stores such values joined, and files are such
blocks, so they are parsed without being split into values first. Binary codecs have `lines = None`.

Connectors decode through `sluice.formats.decode`, the one place where bad records become dead letters
or the error that stops the run. CSV is a file format (a header per file), read by `CsvSource` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import polars as pl

from sluice.core.schema import Schema


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be decoded: its index among the block's records, why, and its bytes."""

    index: int
    reason: str
    raw: bytes


class Decoded(NamedTuple):
    """What decoding a block of records gives."""

    rows: pl.DataFrame  # the good records, in order, in the declared schema
    bad: list[BadRecord]  # sorted by index
    kept: list[int]  # each good row's record index; empty when no record was bad (rows map one to one)


class LineCodec(Protocol):
    """A block of newline-separated records ↔ rows (blank lines are not records)."""

    def decode_block(self, blob: bytes, schema: Schema) -> Decoded:
        """The good rows, the bad records, and each good row's record index (as `Decoded` says)."""
        ...

    def decode_messages(self, blob: bytes, schema: Schema) -> Decoded:
        """A block whose records are message values (a log's, a Kafka topic's): as `decode_block`, but a
        UTF-8 byte order mark at the start of any record is the producer's marker, not data, and is dropped."""
        ...

    def encode(self, df: pl.DataFrame) -> bytes:
        """Rows as one block, each record followed by a newline."""
        ...


class Codec(Protocol):
    """A format bound to one topic: values (one per record) ↔ rows."""

    @property
    def lines(self) -> LineCodec | None:
        """The newline-joined form of this codec, when each value is one line of text; None otherwise."""
        ...

    def decode_values(self, values: list[bytes], schema: Schema) -> Decoded:
        """Bad values are reported by their index in `values`."""
        ...

    def encode_values(self, df: pl.DataFrame) -> list[bytes]:
        """One value per row; raises `RejectedRecord` (or the encoder's own error) for a row that does not fit."""
        ...


class Format(Protocol):
    """What a topic's source or sink takes as `format=`."""

    def sluice_schema(self) -> Schema | None:
        """The schema the format declares (a registry format's reader schema), used when the read step
        declares none; None when the records carry no schema of their own (JSON)."""
        ...

    def bind(self, topic: str, reading: bool) -> Codec:
        """The codec for `topic`. A registry format writing registers its schema here, so an incompatible
        change fails when the sink opens, not at the first record."""
        ...
