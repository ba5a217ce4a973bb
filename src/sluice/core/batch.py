"""The unit that flows between steps: a Polars DataFrame (Arrow memory) plus its time and origin.

Internal columns carry what the engine needs per row; sinks never write them:
  __sl_off   the record's position in its source partition (offset or record ordinal)
  __sl_time  event time, epoch milliseconds (after an event_time step)
  __sl_wm    the watermark at the moment the record arrived, before it (after an event_time step)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

OFFSET = "__sl_off"
TIME = "__sl_time"
WATERMARK = "__sl_wm"
INTERNAL_PREFIX = "__sl_"

NO_WATERMARK = -(2**62)  # "no watermark yet"; far below any epoch-ms time, safe from overflow
END_OF_TIME = 2**62  # the watermark at the end of a bounded input


@dataclass(frozen=True)
class Origin:
    """Where a batch's rows came from: the source step and one of its partitions."""

    step: str
    partition: int
    label: str  # human-readable partition: a file path or topic/partition
    unit: str = "offset"  # what __sl_off counts: "offset" in a log, "record" (0-based) in a file

    def position(self, offset: int | None) -> str:
        if offset is None:
            return f"{self.label} (position unknown)"
        return f"{self.label} {self.unit} {offset}"


@dataclass(frozen=True)
class Batch:
    """Rows that travel together. `watermark` is the watermark after the last row (None before event time)."""

    df: pl.DataFrame
    watermark: int | None = None
    origin: Origin | None = None
    end_of_partition: bool = False
    time_dtype: pl.DataType | None = None  # the event-time column's type when it was not epoch ms

    @property
    def height(self) -> int:
        return self.df.height

    def with_df(self, df: pl.DataFrame) -> Batch:
        return replace(self, df=df)

    def position_of(self, row: int) -> str:
        offset = None
        if OFFSET in self.df.columns and 0 <= row < self.df.height:
            offset = self.df[OFFSET][row]
        if self.origin is None:
            return f"row {row} of a derived batch" if offset is None else f"offset {offset}"
        return self.origin.position(offset)


def user_columns(df: pl.DataFrame) -> pl.DataFrame:
    """The frame without the engine's internal columns."""
    names = df.columns
    kept = [c for c in names if not c.startswith(INTERNAL_PREFIX)]
    # df[names] selects directly; df.drop runs a lazy query on Polars' thread pool (~4x the time, and a wait
    # for a pool thread while the parse threads hold the cores)
    if len(kept) == len(names):
        return df
    return df[kept] if kept else df.drop(names)


def with_series(df: pl.DataFrame, columns: list[pl.Series]) -> pl.DataFrame:
    """`df.with_columns(columns)` for ready Series: appended directly when their names are new (a
    with_columns is a lazy query that waits for a thread of Polars' pool, at every batch)."""
    names = set(df.columns)
    if any(s.name in names for s in columns):
        return df.with_columns(columns)
    return df.hstack(columns)


def column_picks(exprs: list[pl.Expr]) -> list[tuple[str, tuple[str, ...], str]] | None:
    """(source column, struct fields within it, output name) of each expression when every one is a plain
    column or a struct field of one (`pl.col("m").struct.field("v")`), perhaps renamed, and the output names
    differ; else None. `with_picks` then adds them without a Polars query."""
    import json

    picks = []
    for e in exprs:
        try:
            node = json.loads(e.meta.undo_aliases().meta.serialize(format="json"))
        except pl.exceptions.PolarsError:  # an expression Polars cannot serialize (a Python function): a query
            return None
        fields: list[str] = []
        while isinstance(node, dict) and "Function" in node:
            fn = node["Function"]
            field = fn.get("function", {}).get("StructExpr", {}) if isinstance(fn.get("function"), dict) else {}
            if not isinstance(field, dict) or not isinstance(field.get("FieldByName"), str) or len(fn["input"]) != 1:
                return None
            fields.insert(0, field["FieldByName"])
            node = fn["input"][0]
        if not (isinstance(node, dict) and isinstance(node.get("Column"), str)):
            return None
        picks.append((node["Column"], tuple(fields), e.meta.output_name()))
    outs = [out for _, _, out in picks]
    return picks if len(set(outs)) == len(outs) else None


def with_picks(df: pl.DataFrame, picks: list[tuple[str, tuple[str, ...], str]], exprs: list[pl.Expr]) -> pl.DataFrame:
    """`df.with_columns(exprs)` for the `column_picks` of `exprs`: the columns are appended directly (a
    with_columns is a lazy query that waits for a thread of Polars' pool, at every batch). Anything else (a
    missing source or field, an output replacing another column) goes through
    with_columns, with its errors."""
    names = set(df.columns)
    added = []
    for source, fields, out in picks:
        if source not in names or (out in names and (out != source or fields)):
            return df.with_columns(exprs)
        s = df.get_column(source)
        for field in fields:  # unnest: direct (a null struct row gives null fields, as struct.field does)
            if s.dtype != pl.Struct or field not in s.struct.fields:
                return df.with_columns(exprs)
            s = s.struct.unnest().get_column(field)
        if out != source or fields:
            added.append(s.alias(out))
    return with_series(df, added) if added else df
