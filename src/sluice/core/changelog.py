"""Changelog streams: rows that say what happened to a row of a table, keyed by the table's primary key.

A changelog stream has the column `_op` with one of Flink's row kinds:

    +I  insert          a new row for the key
    -U  update before   the row as it was, before an update (a retraction; may be absent)
    +U  update after    the row as it is now
    -D  delete          the key's row is gone (its other columns may be null, e.g. a Kafka tombstone)

It is produced by `Stream.changelog(key=..., op=...)` (from any stream that says what happened, e.g.
Debezium's c/u/d/r), by Kafka sources with `changelog=True` (a tombstone is a delete, any other message an
upsert), by windows that emit updates (+I then +U per (keys, window_start), each row the window's whole
result; docs/design/time.md), and consumed by the temporal join (the table as of each record's time: -U rows are ignored, -D
rows end a key's row) and by sinks (Kafka sinks write a tombstone for -D and skip -U: upsert semantics;
file sinks keep `_op` as a column; the database sinks to come apply them as upserts and deletes).
"""

from __future__ import annotations

import polars as pl

OP = "_op"
INSERT, UPDATE_BEFORE, UPDATE_AFTER, DELETE = "+I", "-U", "+U", "-D"
KINDS = (INSERT, UPDATE_BEFORE, UPDATE_AFTER, DELETE)

# Debezium's envelope `op`: c(reate), r(ead, a snapshot row), u(pdate), d(elete), t(runcate, not a row)
DEBEZIUM_OPS = {"c": INSERT, "r": INSERT, "u": UPDATE_AFTER, "d": DELETE}


def is_delete() -> pl.Expr:
    return pl.col(OP) == DELETE


def is_retraction() -> pl.Expr:
    """Rows that take something back without stating a new version: update-before."""
    return pl.col(OP) == UPDATE_BEFORE


def from_debezium(op: pl.Expr) -> pl.Expr:
    """Debezium's c/r/u/d as row kinds (anything else becomes null, which the changelog step refuses)."""
    return op.replace_strict(DEBEZIUM_OPS, default=None, return_dtype=pl.String)
